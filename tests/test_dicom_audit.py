"""A DICOM audit set end to end: MONOCHROME1, 12-bit with rescale, windowed, compressed (RLE and JPEG
2000) and one multi-frame file, written with pydicom inside the test, audited through the manifest path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.examples.dicom import write_dicom, write_dicom_seg
from audit.pipeline import run_audit
from tests.conftest import write_config

VARIANTS = ("windowed", "monochrome1", "rescaled", "rle", "jpeg2000")


def twelve_bit(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), np.uint16) * 16  # 0..4080


def write_variant(out: Path, grey: np.ndarray, kind: str) -> None:
    if kind == "windowed":
        write_dicom(out, grey, window=(2048, 4096))
    elif kind == "monochrome1":  # stored inverted (the window's centre mirrored: 4096 - 2048); read back upright
        write_dicom(out, 4095 - grey, photometric="MONOCHROME1", window=(2048, 4096))
    elif kind == "rescaled":  # stored s, modality value 2 s - 1024 = grey; the window is in modality units
        write_dicom(out, grey // 2 + 512, rescale=(2.0, -1024.0), window=(2048, 4096))
    else:
        write_dicom(out, grey, compress=kind, window=(2048, 4096))


@pytest.fixture(scope="module")
def dicom_set(tiny_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny set's images as 12-bit DICOM, cycling through the variants, plus one 3-frame file."""
    root = tmp_path_factory.mktemp("dicom_set")
    shutil.copytree(tiny_set.parent, root, dirs_exist_ok=True)
    df = pd.read_csv(root / "manifest.csv")
    (root / "dicom").mkdir()
    for i, rel in enumerate(df["image_path"]):
        write_variant(root / "dicom" / f"{i:03d}.dcm", twelve_bit(root / rel), VARIANTS[i % len(VARIANTS)])
    df["image_path"] = [f"dicom/{i:03d}.dcm" for i in range(len(df))]
    frames = np.stack([twelve_bit(tiny_set.parent / rel) for rel in pd.read_csv(tiny_set)["image_path"][:3]])
    write_dicom(root / "dicom" / "cine.dcm", frames)
    multi = {**df.iloc[1].to_dict(), "image_id": "cine", "image_path": "dicom/cine.dcm"}
    pd.concat([df, pd.DataFrame([multi])], ignore_index=True).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_dicom_audit_set_end_to_end(dicom_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "d.yaml", dicom_set, tiny_model, run_name="dicom", **{"sanity.enabled": False})
    run = run_audit(config).run_dir
    images = pd.read_parquet(run / "images.parquet")
    exclusions = pd.read_csv(run / "exclusions.csv", keep_default_na=False)
    assert len(images) == 24 and exclusions["image_id"].tolist() == ["cine"]
    assert "multi-frame DICOM (3 frames)" in exclusions["reason"][0] and "data.dicom_frame" in exclusions["hint"][0]
    formats = images["image_format"]
    assert formats.str.contains("DICOM").all() and formats.str.contains("MONOCHROME1").sum() == 5
    assert images["mass_in"].between(0, 1).all() and images["explained_probability"].notna().all()

    # naming the frame audits the multi-frame file too
    framed = write_config(
        tmp_path / "f.yaml", dicom_set, tiny_model, run_name="framed",
        **{"sanity.enabled": False, "data.dicom_frame": 2},
    )  # fmt: skip
    images = pd.read_parquet(run_audit(framed).run_dir / "images.parquet").set_index("image_id")
    assert len(images) == 25 and "frame 2 of 3" in images.loc["cine", "image_format"]


def test_every_encoding_of_one_picture_reaches_the_model_identically(
    tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    root = tmp_path / "enc"
    shutil.copytree(tiny_set.parent, root)
    row = pd.read_csv(root / "manifest.csv").head(1)
    grey = twelve_bit(root / row["image_path"][0])
    rows = []
    for kind in VARIANTS:
        write_variant(root / f"{kind}.dcm", grey, kind)
        rows.append(row.assign(image_id=kind, image_path=f"{kind}.dcm"))
    Image.fromarray((grey // 16).astype(np.uint8)).save(root / "png8.png")  # the same picture as 8-bit PNG
    rows.append(row.assign(image_id="png8", image_path="png8.png"))
    pd.concat(rows, ignore_index=True).to_csv(root / "manifest.csv", index=False)
    config = write_config(
        tmp_path / "e.yaml", root / "manifest.csv", tiny_model, run_name="enc",
        **{"sanity.enabled": False, "thresholds.min_group_size": 2},
    )  # fmt: skip
    images = pd.read_parquet(run_audit(config).run_dir / "images.parquet").set_index("image_id")
    # lossless encodings, MONOCHROME1 and the rescale all decode to the same [0, 1] picture: same map
    for col in ("mass_in", "focus", "pixel_auroc", "explained_probability"):
        assert np.ptp(images.loc[list(VARIANTS), col].to_numpy()) < 1e-6, col
    # 12-bit grey through the window vs 8-bit grey / 255 differ by < 0.5 %: nearly the same map
    assert abs(images.loc["png8", "mass_in"] - images.loc["windowed", "mass_in"]) < 0.01


def test_dicom_seg_masks(dicom_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    """Regions from DICOM Segmentation files (highdicom), one per image, segment 1 = the lesion."""
    root = dicom_set.parent
    df = pd.read_csv(dicom_set).iloc[:12]
    df = df[df["image_id"] != "cine"].copy()
    (root / "seg").mkdir(exist_ok=True)
    for i, r in df.iterrows():
        lesion = np.asarray(Image.open(root / r["mask_path"]).convert("L")) > 127
        corner = np.zeros_like(lesion)
        corner[:8, :8] = True
        write_dicom_seg(root / "seg" / f"{i:03d}.dcm", root / r["image_path"], {1: lesion, 2: corner})
    df["mask_path"] = [f"seg/{i:03d}.dcm" for i in df.index]
    df.to_csv(root / "seg_manifest.csv", index=False)
    config = write_config(
        tmp_path / "s.yaml", root / "seg_manifest.csv", tiny_model, run_name="seg",
        **{"sanity.enabled": False, "data.mask": {"kind": "dicom-seg", "segments": [1]},
           "thresholds.min_group_size": 2},
    )  # fmt: skip
    seg = pd.read_parquet(run_audit(config).run_dir / "images.parquet").set_index("image_id")
    png = write_config(
        tmp_path / "p.yaml", root / "manifest.csv", tiny_model, run_name="png", **{"sanity.enabled": False}
    )
    ref = pd.read_parquet(run_audit(png).run_dir / "images.parquet").set_index("image_id").loc[seg.index]
    assert len(seg) == len(df) == 12  # segment 1 is the PNG lesion mask: the same region, the same numbers
    np.testing.assert_allclose(seg["mass_in"], ref["mass_in"], atol=1e-6)  # batches differ: float order
    np.testing.assert_allclose(seg["area"], ref["area"], atol=1e-9)


def test_nothing_usable_stops_the_run_and_says_why(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from audit.manifest import ManifestError

    root = tmp_path / "none"
    shutil.copytree(tiny_set.parent, root)
    pd.read_csv(root / "manifest.csv").head(3).assign(label="eczema").to_csv(root / "manifest.csv", index=False)
    config = write_config(tmp_path / "n.yaml", root / "manifest.csv", tiny_model, run_name="none")
    with pytest.raises(ManifestError, match="all 3 rows were excluded"):
        run_audit(config)
    exclusions = pd.read_csv(tmp_path / "reports" / "none" / "exclusions.csv")
    assert len(exclusions) == 3 and exclusions["reason"].str.contains("unknown label 'eczema'").all()


def test_audit_init_on_a_dicom_set_writes_a_config_that_runs(dicom_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "dicom.yaml"
    args = ["init", str(dicom_set), "--model", str(tiny_model), "--arch", "mobilenet_v3_small", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "DICOM 64x64" in out.read_text() and "1 excluded" in result.output  # the 3-frame file, as the run will
    assert yaml.safe_load(out.read_text())["data"]["subgroups"]
    run = run_audit(out).run_dir  # unchanged
    assert len(pd.read_parquet(run / "images.parquet")) == 24
