"""Every manifest row ends up included or excluded with a reason; file-level problems are errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from audit.config import parse_config
from audit.manifest import ManifestError, load_manifest


def _cfg(manifest: Path, subgroups: tuple[str, ...] = ("site", "sex"), **data_keys: object) -> object:
    data = {
        "run_name": "m",
        "model": {"arch": "resnet18", "checkpoint": "m.pt"},
        "data": {
            "manifest": str(manifest),
            "classes": ["nevus", "melanoma"],
            "subgroups": list(subgroups),
            **data_keys,
        },
    }
    return parse_config(data, manifest.parent)


@pytest.fixture
def broken_set(tiny_set: Path, tmp_path: Path) -> Path:
    """The tiny set plus one row for every kind of problem."""
    root = tmp_path / "set"
    shutil.copytree(tiny_set.parent, root)
    df = pd.read_csv(root / "manifest.csv").head(6)
    (root / "images" / "garbage.png").write_bytes(b"not a png at all")
    Image.new("L", (10, 20), 255).save(root / "masks" / "small.png")
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
    m = load_manifest(_cfg(broken_set, missing={"sex": "exclude"}))
    assert m.rows_read == 14
    assert len(m.included) + len(m.exclusions) == m.rows_read
    assert len(m.included) == 6
    by_id = m.exclusions.set_index("image_id")
    reasons = by_id["reason"].to_dict()
    assert "image_path: file not found" in reasons["missing_image"]
    assert by_id.loc["missing_image", "file"] == "images/nope.png"
    assert "mask_path: file not found" in reasons["missing_mask"]
    assert "not an image Pillow can read" in reasons["unreadable"]
    assert by_id.loc["unreadable", "column"] == "image_path"
    assert "mask is 10x20 but the image is 64x64" in reasons["size_mismatch"]
    assert "empty mask" in reasons["empty_mask"] and "mask_threshold" in by_id.loc["empty_mask", "hint"]
    assert "unknown label 'eczema'" in reasons["bad_label"] and by_id.loc["bad_label", "column"] == "label"
    assert "missing value for subgroup column 'sex'" in reasons["no_sex"]
    dup = m.exclusions[m.exclusions["reason"].str.startswith("duplicate")]
    assert dup["row"].tolist() == [14] and "first at row 1" in dup["reason"].iloc[0]
    assert m.exclusions["row"].between(7, 14).all()
    assert Path(m.included["image_path"].iloc[0]).is_absolute()


def test_missing_subgroup_values_are_kept_in_their_own_group_by_default(broken_set: Path) -> None:
    m = load_manifest(_cfg(broken_set))
    assert len(m.included) == 7 and "no_sex" not in set(m.exclusions["image_id"])
    assert m.included.set_index("image_id").loc["no_sex", "sex"] == "missing"


def test_numeric_columns_are_binned_and_values_outside_the_bins_excluded(tiny_set: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(tiny_set.parent, root)
    df = pd.read_csv(root / "manifest.csv").head(6)
    df["age"] = ["12", "40", "64.5", "75", "130", "old"]
    df.to_csv(root / "manifest.csv", index=False)
    m = load_manifest(_cfg(root / "manifest.csv", ("site", "age"), bins={"age": [0, 40, 65, 75, 120]}))
    assert m.included["age"].tolist() == ["[0, 40)", "[40, 65)", "[40, 65)", "[75, 120)"]
    reasons = m.exclusions["reason"].tolist()
    assert "outside the bins' range [0, 120)" in reasons[0] and "'old' is not a number" in reasons[1]


def test_column_mapping_and_json_lines(tiny_set: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(tiny_set.parent, root)
    df = pd.read_csv(root / "manifest.csv").head(5).rename(columns={"image_path": "file", "label": "dx"})
    df.to_json(root / "manifest.jsonl", orient="records", lines=True)
    cfg = _cfg(root / "manifest.jsonl", columns={"image_path": "file", "label": "dx"})
    m = load_manifest(cfg)
    assert len(m.included) == 5 and set(m.included["label"]) <= {"nevus", "melanoma"}
    with pytest.raises(ManifestError, match=r"data.columns names \['path'\]"):
        load_manifest(_cfg(root / "manifest.jsonl", columns={"image_path": "path", "label": "dx"}))


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
    with pytest.raises(ManifestError, match=r"manifest must be \.csv, \.jsonl"):
        load_manifest(_cfg(txt))


def test_a_malformed_record_is_its_rows_exclusion_not_the_files_error(tiny_set: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(tiny_set.parent, root)
    lines = (root / "manifest.csv").read_bytes().splitlines()
    header, good = lines[0], lines[1:4]
    extra = good[0].replace(b"img00000", b"extra") + b",surplus"
    latin1 = good[1].replace(b"img00001", b"caf\xe9")  # not UTF-8
    (root / "manifest.csv").write_bytes(b"\n".join([header, good[0], extra, latin1, good[2]]) + b"\n")
    m = load_manifest(_cfg(root / "manifest.csv"))
    assert m.rows_read == 4 and m.included["row"].tolist() == [1, 4]
    reasons = m.exclusions.set_index("row")["reason"]
    assert "11 fields, the header has 10" in reasons[2] and "not UTF-8" in reasons[3]

    import json

    records = pd.read_csv(tiny_set).head(3).to_dict("records")
    text = "\n".join([json.dumps(records[0]), json.dumps(records[1])[:-9], "[1, 2]", json.dumps(records[2])])
    (root / "m.jsonl").write_text(text + "\n")
    m = load_manifest(_cfg(root / "m.jsonl"))
    assert m.rows_read == 4 and m.included["row"].tolist() == [1, 4]
    assert m.exclusions["reason"].str.startswith("malformed JSON Lines record").all()
