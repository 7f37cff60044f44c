"""The reader seam: every raster mode at its bit depth, every mask kind, and hostile paths kept out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.config import Intensity, MaskSource, Preprocessing
from audit.inputs import InputError, Picture, to_tensor
from audit.inputs.masks import (
    check_region,
    fit_region,
    region_from_box,
    region_from_coco,
    region_from_image,
    region_from_labelmap,
)
from audit.inputs.paths import DataRoot
from audit.inputs.raster import decode_raster, raster_size
from audit.tables import neutralise, read_csv, write_csv

AUTO = Intensity()


# ------------------------------------------------------------------ rasters
def test_16_bit_greyscale_keeps_its_depth(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256 * 64).astype(np.uint16).reshape(64, 256)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")
    for name in ("ramp.png", "ramp.tif"):
        pic = decode_raster(tmp_path / name, AUTO)
        assert pic.array.dtype == np.float32 and "16-bit" in pic.description
        np.testing.assert_allclose(pic.array[..., 0], ramp / 65535.0, atol=1e-6)
        assert len(np.unique(pic.array)) > 10000  # not saturated into two values
    x = to_tensor(
        decode_raster(tmp_path / "ramp.png", AUTO), Preprocessing(size=(8, 32), channels=1, mean=(0.0,), std=(1.0,))
    )
    assert x.shape == (1, 8, 32) and float(x.max() - x.min()) > 0.85 and len(x.unique()) == 8 * 32


def test_window_and_minmax_on_16_bit_values(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "v.png")
    windowed = decode_raster(tmp_path / "v.png", Intensity(mode="window", window=(2000, 2000)))
    np.testing.assert_allclose(windowed.array[0, :, 0], [0, 0, 0.5, 1])
    np.testing.assert_allclose(
        decode_raster(tmp_path / "v.png", Intensity(mode="minmax")).array[0, :, 0], [0, 1 / 3, 2 / 3, 1], atol=1e-6
    )


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "LA"])
def test_8_bit_modes_become_grey_or_rgb_uint8(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8))
    img = rgb.convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    pic = decode_raster(path, AUTO)
    assert pic.array.dtype == np.uint8 and pic.array.shape[:2] == (12, 16)
    assert pic.array.shape[2] == (1 if mode in ("1", "L", "LA") else 3)
    if mode == "RGBA":  # alpha is dropped, colours kept
        np.testing.assert_array_equal(pic.array, np.asarray(rgb))


def test_bmp_and_jpeg_match_pillows_own_decoding(tmp_path: Path) -> None:
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    for name in ("x.bmp", "x.jpg"):
        rgb.save(tmp_path / name)
        np.testing.assert_array_equal(
            decode_raster(tmp_path / name, AUTO).array, np.asarray(Image.open(tmp_path / name).convert("RGB"))
        )


def test_decompression_bomb_and_truncated_files_are_input_errors(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx claimed, a few kB on disk
    with pytest.raises(InputError, match="decompression-bomb") as err:
        raster_size(bomb)
    assert "downscale" in err.value.hint
    good = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])
    assert raster_size(cut) == (64, 64)  # the header is intact ...
    with pytest.raises(OSError):  # ... the pixels are not: the reader turns this into the row's exclusion
        decode_raster(cut, AUTO)


# ------------------------------------------------------------------ masks
def test_mask_in_any_colour_channel_counts(tmp_path: Path) -> None:
    red = np.zeros((10, 10, 3), np.uint8)
    red[2:5, 2:5, 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    region = region_from_image(tmp_path / "red.png", 127)
    assert region.sum() == 9 and region[3, 3]


def test_label_map_region_is_the_listed_values(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 2, 1]], np.uint16)
    Image.fromarray(labels).save(tmp_path / "l.png")
    np.testing.assert_array_equal(region_from_labelmap(tmp_path / "l.png", (2, 3)), [[0, 0, 1], [1, 1, 0]])


def test_coco_polygons_and_rle(tmp_path: Path) -> None:
    from pycocotools import mask as coco_mask

    blob = np.zeros((20, 30), np.uint8, order="F")
    blob[10:15, 20:25] = 1
    rle = coco_mask.encode(blob)
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": 7, "file_name": "imgs/case_07.png", "height": 20, "width": 30}],
        "categories": [{"id": 1, "name": "lesion"}, {"id": 2, "name": "ruler"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]},
            {"id": 2, "image_id": 7, "category_id": 2, "segmentation": rle},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    lesion = region_from_coco(path, "case_07", ("lesion",))
    assert lesion.shape == (20, 30) and lesion[5, 5] and not lesion[12, 22]
    both = region_from_coco(path, "7", ())
    assert both[12, 22] and both[5, 5]
    with pytest.raises(InputError, match="no COCO image"):
        region_from_coco(path, "case_08", ())
    with pytest.raises(InputError, match=r"categories \['tumour'\]"):
        region_from_coco(path, "case_07", ("tumour",))


def test_boxes_and_their_errors() -> None:
    cols = ("x0", "y0", "x1", "y1")
    region = region_from_box({"x0": "2", "y0": "1", "x1": "4.5", "y1": "3"}, cols, (6, 5))
    assert region.sum() == 3 * 2 and region[1, 2] and region[2, 4]
    for bad, match in (({"x0": "4", "y0": "1", "x1": "2", "y1": "3"}, "empty or outside"),
                       ({"x0": "0", "y0": "0", "x1": "9", "y1": "3"}, "outside the 6x5 image"),
                       ({"x0": "a", "y0": "0", "x1": "1", "y1": "1"}, "must hold numbers"),
                       ({"x0": "nan", "y0": "0", "x1": "1", "y1": "1"}, "not finite")):  # fmt: skip
        with pytest.raises(InputError, match=match):
            region_from_box(bad, cols, (6, 5))


def test_region_geometry_and_coverage_rules() -> None:
    small = np.zeros((5, 5), bool)
    small[1:3, 1:3] = True
    assert fit_region(small, (10, 10), "mask").sum() == 16  # nearest neighbour, same field of view
    with pytest.raises(InputError, match="different aspect ratio"):
        fit_region(small, (20, 10), "mask")
    spec = MaskSource()
    with pytest.raises(InputError, match="empty mask") as err:
        check_region(np.zeros((4, 4), bool), spec, 127)
    assert "mask_threshold: 0" in err.value.hint
    with pytest.raises(InputError, match=r"covers 100\.0% of the image"):
        check_region(np.ones((4, 4), bool), spec, 127)


# ------------------------------------------------------------------ paths
def test_paths_stay_inside_the_data_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    (root / "img" / "ok.png").write_bytes(b"x")
    (outside / "secret.png").write_bytes(b"x")
    (root / "img" / "escape.png").symlink_to(outside / "secret.png")
    (root / "img" / "inner.png").symlink_to(root / "img" / "ok.png")
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")
    dr = DataRoot(root)
    assert dr.resolve("img/ok.png", "image_path") == (root / "img" / "ok.png").resolve()
    assert dr.resolve(str(root / "img" / "ok.png"), "image_path").name == "ok.png"
    assert dr.resolve("img/inner.png", "image_path").name == "ok.png"  # a symlink inside stays inside
    cases = {
        "../outside/secret.png": "leads outside the data root",
        str(outside / "secret.png"): "leads outside the data root",
        "img/escape.png": "symlink that leads outside",
        "loop_a": "symlink loop",
        "img/\x00.png": "NUL byte",
        "img/" + "a" * 300 + ".png": "too long",
        "img": "not a regular file",
        "img/none.png": "file not found",
    }
    for value, reason in cases.items():
        with pytest.raises(InputError, match=reason):
            dr.resolve(value, "image_path")


# ------------------------------------------------------------------ exported tables
def test_csv_cells_never_run_as_formulas(tmp_path: Path) -> None:
    df = pd.DataFrame({"group": ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "-0.5", "ok"],
                       "value": [-1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})  # fmt: skip
    write_csv(df, tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert back["group"].tolist() == [
        '\'=HYPERLINK("http://x")',
        "'+cmd|' /C calc'!A0",
        "'-2+3",
        "'@SUM(A1)",
        "-0.5",
        "ok",
    ]
    assert back["value"].tolist() == [-1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert neutralise("\t=1") == "'\t=1" and neutralise(3) == 3
    assert read_csv(tmp_path / "t.csv", keep_default_na=False)["group"].tolist() == df["group"].tolist()  # as given


def test_picture_rejects_what_the_pipeline_cannot_use() -> None:
    with pytest.raises(ValueError, match="Picture needs"):
        Picture(np.zeros((4, 4), np.uint8))


def test_truncated_images_stay_refused_after_weasyprint_is_imported(tmp_path: Path) -> None:
    """WeasyPrint switches Pillow's LOAD_TRUNCATED_IMAGES on at import; the reader must not inherit it."""
    import weasyprint  # noqa: F401
    from PIL import ImageFile

    good = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:300])
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as weasyprint leaves it
    with pytest.raises(OSError, match="truncated"):
        decode_raster(tmp_path / "cut.png", AUTO)


def test_float_images_with_non_finite_pixels_are_refused(tmp_path: Path) -> None:
    values = np.linspace(0, 5, 64, dtype=np.float32).reshape(8, 8)
    values[2, 3] = np.nan
    Image.fromarray(values).save(tmp_path / "f.tif")
    with pytest.raises(InputError, match="1 non-finite pixel"):
        decode_raster(tmp_path / "f.tif", AUTO)


def test_coco_ids_win_over_file_names_and_ambiguous_names_are_refused(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a/2.png", "height": 4, "width": 4},
                   {"id": 2, "file_name": "x.png", "height": 4, "width": 4},
                   {"id": 3, "file_name": "a/dup.png", "height": 4, "width": 4},
                   {"id": 4, "file_name": "b/dup.png", "height": 4, "width": 4}],
        "categories": [{"id": 1, "name": "lesion"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "segmentation": [[0, 0, i, 0, i, i, 0, i]]}
                        for i in (1, 2, 3, 4)],
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    by_id = region_from_coco(tmp_path / "c.json", "2", ())
    np.testing.assert_array_equal(by_id, region_from_coco(tmp_path / "c.json", "x", ()))  # image 2 either way
    with pytest.raises(InputError, match="several COCO images have the file name 'dup'"):
        region_from_coco(tmp_path / "c.json", "dup", ())


def test_a_data_root_reached_through_a_symlink_accepts_absolute_paths_through_it(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.png").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    dr = DataRoot(tmp_path / "link")
    assert dr.resolve(str(tmp_path / "link" / "x.png"), "image_path").name == "x.png"
    with pytest.raises(InputError, match="outside the data root"):
        dr.resolve(str(tmp_path / "x.png"), "image_path")


def test_restore_is_the_exact_inverse_of_neutralise() -> None:
    from audit.tables import restore

    for value in ("'=x", "''", "'", "=1+1", "-0.5", "plain", "@a", "'quoted'"):
        assert restore(neutralise(value)) == value


def test_chart_labels_are_text_not_math() -> None:
    from audit.charts import focus_by_group

    groups = pd.DataFrame({"column": ["site"], "group": ["$\\foo$"], "focus_mean": [1.0], "focus_ci_low": [0.9],
                           "focus_ci_high": [1.1], "status": ["ok"]})  # fmt: skip
    assert focus_by_group(groups, 1.0, ()).startswith("data:image/svg+xml;base64,")


def test_log_axis_labels_are_plain_numbers_not_raw_mathtext(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    from audit import charts

    monkeypatch.setitem(charts.RC, "svg.fonttype", "none")  # keep text as text, to read the tick labels
    images = pd.DataFrame({"site": ["a"] * 4 + ["b"] * 4, "focus": [0.01, 0.2, 1.0, 3.0, 0.05, 0.5, 2.0, 9.0]})
    svg = base64.b64decode(charts.focus_distributions(images, ["site"]).split(",", 1)[1]).decode()
    assert "mathdefault" not in svg and "$" not in svg
    assert ">0.01<" in svg and ">1<" in svg
    narrow = pd.DataFrame({"site": ["a"] * 4, "focus": [1.2, 1.5, 2.5, 3.0]})  # less than a decade
    svg = base64.b64decode(charts.focus_distributions(narrow, ["site"]).split(",", 1)[1]).decode()
    assert ">1<" in svg and ">2<" in svg and "$" not in svg
