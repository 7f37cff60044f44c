"""Every way a team stores its regions gives the same audit where it describes the same region:
label maps and COCO RLE reproduce the PNG masks' numbers exactly; boxes give their own, coarser region."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from audit.config import load_config
from audit.inputs import RowReader
from audit.pipeline import explain_batch, explainer, measure, read_rows, run_audit
from tests.conftest import write_config


@pytest.fixture(scope="module")
def regions(tiny_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny set with its lesion masks also as label maps (lesion 2, artifact 3), COCO RLE and boxes."""
    root = tmp_path_factory.mktemp("regions")
    shutil.copytree(tiny_set.parent, root, dirs_exist_ok=True)
    df = pd.read_csv(root / "manifest.csv")
    (root / "labels").mkdir()
    images, annotations, boxes = [], [], []
    for i, r in df.iterrows():
        lesion = np.asarray(Image.open(root / r["mask_path"]).convert("L")) > 127
        labels = np.zeros(lesion.shape, np.uint8)
        if isinstance(r.get("artifact_mask_path"), str):
            labels[np.asarray(Image.open(root / r["artifact_mask_path"]).convert("L")) > 127] = 3
        labels[lesion] = 2
        Image.fromarray(labels).save(root / "labels" / f"{i}.png")
        h, w = lesion.shape
        images.append({"id": int(i) + 100, "file_name": f"images/{r['image_id']}.png", "height": h, "width": w})
        rle = coco_mask.encode(np.asfortranarray(lesion.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        annotations.append({"id": int(i), "image_id": int(i) + 100, "category_id": 1, "segmentation": rle})
        ys, xs = np.nonzero(lesion)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "lesion"}]}
    (root / "coco.json").write_text(json.dumps(coco))
    df["label_map"] = [f"labels/{i}.png" for i in df.index]
    df[["bx0", "by0", "bx1", "by1"]] = np.asarray(boxes)
    df.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def _audit(manifest: Path, model: Path, tmp: Path, name: str, **keys: object) -> pd.DataFrame:
    config = write_config(tmp / f"{name}.yaml", manifest, model, run_name=name, **{"sanity.enabled": False}, **keys)
    return pd.read_parquet(run_audit(config).run_dir / "images.parquet").set_index("image_id")


def test_label_maps_coco_and_boxes(regions: Path, tiny_model: Path, tmp_path: Path) -> None:
    png = _audit(regions, tiny_model, tmp_path, "png")
    pd.read_csv(regions).drop(columns="mask_path").to_csv(regions.with_name("labels.csv"), index=False)
    labelmap = _audit(
        regions.with_name("labels.csv"), tiny_model, tmp_path, "labelmap",
        **{"data.mask": {"kind": "labelmap", "values": [2]}, "data.columns": {"mask_path": "label_map"}},
    )  # fmt: skip
    coco = _audit(
        regions,
        tiny_model,
        tmp_path,
        "coco",
        **{"data.mask": {"kind": "coco", "coco": str(regions.with_name("coco.json"))}},
    )
    box = _audit(
        regions,
        tiny_model,
        tmp_path,
        "box",
        **{"data.mask": {"kind": "box", "box_columns": ["bx0", "by0", "bx1", "by1"]}},
    )
    for other in (labelmap, coco):
        for col in ("area", "mass_in", "focus", "outside_delta"):
            np.testing.assert_allclose(other.loc[png.index, col], png[col], atol=1e-6, err_msg=col)
    assert (box["area"] >= png.loc[box.index, "area"] - 1e-9).all()  # a box holds its lesion
    assert (box["area"] > png.loc[box.index, "area"]).any() and box["mass_in"].between(0, 1).all()
    assert box["mask_sha256"].str.len().eq(64).all() and box["mask_sha256"].nunique() == len(box)


def test_the_explain_steps_run_alone(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    """read -> explain -> measure, each callable on its own (no shard files, no orchestrator)."""
    cfg = load_config(write_config(tmp_path / "s.yaml", tiny_set, tiny_model, run_name="steps"))
    rows = pd.read_csv(tiny_set).head(4).assign(row=[1, 2, 3, 4]).to_dict("records")
    rows[2]["image_path"] = "images/nope.png"
    kept, samples, excluded = read_rows(RowReader(cfg), rows)
    assert [r["row"] for r in kept] == [1, 2, 4] and excluded[0]["row"] == 3 and "not found" in excluded[0]["reason"]
    assert samples[0].image.array.shape == (64, 64, 3) and samples[0].region.dtype == bool
    e = explain_batch(cfg, explainer(cfg), kept, samples)
    assert e.cam.maps.shape == (3, 64, 64) and e.masks.shape == (3, 64, 64)
    records = measure(cfg, explainer(cfg), kept, samples, e)
    assert [r["row"] for r in records] == [1, 2, 4] and all(0 <= r["mass_in"] <= 1 for r in records)
    assert all(len(r["image_sha256"]) == 64 for r in records)


def test_reading_ahead_gives_the_shard_of_reading_in_turn(
    tiny_set: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next batch read on a thread while this one is explained: same results, maps and exclusions."""
    from audit import pipeline
    from audit.runfolder import shard_output

    cfg = load_config(write_config(tmp_path / "a.yaml", tiny_set, tiny_model, run_name="ahead"))
    rows = pd.read_csv(tiny_set).head(12).assign(row=range(12)).to_dict("records")
    rows[6]["image_path"] = "images/nope.png"  # an exclusion in a batch read ahead
    outputs = {}
    for ahead in (False, True):
        monkeypatch.setattr(pipeline, "reads_ahead", lambda cfg, ahead=ahead: ahead)
        shard = tmp_path / f"{ahead}" / "shard_0000.parquet"
        shard.parent.mkdir()
        pipeline.compute_shard(cfg, shard, rows)
        outputs[ahead] = [
            shard_output(shard, name).read_bytes() for name in ("result.parquet", "maps.npz", "exclusions.csv")
        ]
    assert outputs[True] == outputs[False]
    assert b"nope.png" in outputs[True][2]


def test_reads_ahead_only_where_a_core_is_free(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from audit import pipeline
    from audit.stats import usable_cpus

    def cfg(name: str, **settings: object) -> object:
        return load_config(write_config(tmp_path / f"{name}.yaml", tiny_set, tiny_model, **settings))

    cpus = usable_cpus()
    assert pipeline.reads_ahead(cfg("one", **{"explain.threads": 1})) == (cpus > 1)
    assert not pipeline.reads_ahead(cfg("all", **{"explain.threads": cpus}))
    assert not pipeline.reads_ahead(cfg("workers", **{"explain.threads": 1, "orchestration.workers": cpus}))
    assert not pipeline.reads_ahead(cfg("unpinned"))  # torch's default takes every core
    assert pipeline.reads_ahead(cfg("gpu", **{"explain.device": "cuda"}))
