"""Every manifest row ends up included or excluded with a reason; file-level problems are errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from audit.config import parse_config
from audit.manifest import ManifestError, load_manifest


def _cfg(manifest: Path, subgroups: tuple[str, ...] = ("site", "sex")) -> object:
    data = {
        "run_name": "m",
        "model": {"arch": "resnet18", "checkpoint": "m.pt"},
        "data": {"manifest": str(manifest), "classes": ["nevus", "melanoma"], "subgroups": list(subgroups)},
    }
    return parse_config(data, manifest.parent)


@pytest.fixture
def broken_set(tiny_set: Path, tmp_path: Path) -> Path:
    """The tiny set plus one row for every kind of problem."""
    root = tmp_path / "set"
    shutil.copytree(tiny_set.parent, root)
    df = pd.read_csv(root / "manifest.csv").head(6)
    (root / "images" / "garbage.png").write_bytes(b"not a png at all")
    Image.new("L", (10, 10), 255).save(root / "masks" / "small.png")
    Image.new("L", (64, 64), 0).save(root / "masks" / "empty.png")
    good = df.iloc[0].to_dict()
    bad = [
        {**good, "image_id": "missing_image", "image_path": "images/nope.png"},
        {**good, "image_id": "missing_mask", "mask_path": "masks/nope.png"},
        {**good, "image_id": "unreadable", "image_path": "images/garbage.png"},
        {**good, "image_id": "size_mismatch", "mask_path": "masks/small.png"},
        {**good, "image_id": "empty_mask", "mask_path": "masks/empty.png"},
        {**good, "image_id": "bad_label", "label": "eczema"},
        {**good, "image_id": "no_sex", "sex": ""},
        {**good},  # duplicate of row 1's image_id
    ]
    out = pd.concat([df, pd.DataFrame(bad)], ignore_index=True)
    out.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_each_problem_row_is_excluded_with_its_reason(broken_set: Path) -> None:
    m = load_manifest(_cfg(broken_set))
    assert m.rows_read == 14
    assert len(m.included) + len(m.exclusions) == m.rows_read
    assert len(m.included) == 6
    reasons = dict(zip(m.exclusions["image_id"], m.exclusions["reason"], strict=True))
    assert "image not found" in reasons["missing_image"]
    assert "mask not found" in reasons["missing_mask"]
    assert "unreadable image" in reasons["unreadable"]
    assert "mask is 10x10 but image is 64x64" in reasons["size_mismatch"]
    assert "empty mask" in reasons["empty_mask"]
    assert "unknown label 'eczema'" in reasons["bad_label"]
    assert "missing value for subgroup column 'sex'" in reasons["no_sex"]
    dup = m.exclusions[m.exclusions["reason"].str.startswith("duplicate")]
    assert dup["row"].tolist() == [14] and "first at row 1" in dup["reason"].iloc[0]
    assert m.exclusions["row"].between(7, 14).all()
    assert Path(m.included["image_path"].iloc[0]).is_absolute()


def test_parquet_manifest_reads_the_same(broken_set: Path) -> None:
    pq = broken_set.with_suffix(".parquet")
    pd.read_csv(broken_set, dtype=str, keep_default_na=False).to_parquet(pq)
    a, b = load_manifest(_cfg(broken_set)), load_manifest(_cfg(pq))
    assert a.exclusions.equals(b.exclusions)
    assert a.included["image_id"].tolist() == b.included["image_id"].tolist()


def test_missing_columns_and_files_are_errors(tiny_set: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['skin_tone'\]"):
        load_manifest(_cfg(tiny_set, ("site", "skin_tone")))
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(_cfg(tmp_path / "none.csv"))
    txt = tmp_path / "m.txt"
    txt.write_text("x")
    with pytest.raises(ManifestError, match=r"\.csv or \.parquet"):
        load_manifest(_cfg(txt))
