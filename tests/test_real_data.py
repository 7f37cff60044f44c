"""Real dermoscopy through the normal manifest path: PH2 (200 images with lesion masks) and HAM10000
samples with sex and age, read from ../shared/data in place (never copied into the repository)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from audit.models import build_torchvision
from audit.pipeline import run_audit
from tests.conftest import SHARED_DATA, write_config

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "ph2" / "ph2_labels.csv").is_file(),
    reason=f"real test material not found at {SHARED_DATA} (see DEVELOPERS.md: ../shared/data)",
)


def _model(tmp_path: Path, outputs: int) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"model{outputs}.pt"
    torch.save(build_torchvision("mobilenet_v3_small", outputs).state_dict(), path)
    return path


def test_ph2_with_its_lesion_masks(tmp_path: Path) -> None:
    labels = pd.read_csv(SHARED_DATA / "ph2" / "ph2_labels.csv", dtype=str)
    manifest = pd.DataFrame(
        {
            "image_id": labels["image_id"],
            "file": "ph2/images_384/" + labels["image_id"] + ".jpg",
            "mask_path": "ph2/masks_384/" + labels["image_id"] + "_lesion.png",
            "clinical_diagnosis": labels["clinical_diagnosis"],
            "asymmetry": labels["asymmetry"],
        }
    )
    manifest.to_csv(tmp_path / "ph2.csv", index=False)
    config = write_config(
        tmp_path / "ph2.yaml", tmp_path / "ph2.csv", _model(tmp_path, 3), run_name="ph2",
        **{"model.num_classes": 3, "data.classes": ["common_nevus", "atypical_nevus", "melanoma"],
           "data.positive_class": "melanoma", "data.root": str(SHARED_DATA), "data.subgroups": ["asymmetry"],
           "data.columns": {"image_path": "file", "label": "clinical_diagnosis"}, "preprocessing.size": [96, 96],
           "sanity.enabled": False, "explain.batch_size": 25, "explain.shard_size": 100},
    )  # fmt: skip
    run = run_audit(config).run_dir
    images = pd.read_parquet(run / "images.parquet")
    assert len(images) == 200 and images["image_sha256"].nunique() == 200
    # the masks are the PH2 lesion segmentations: their area at the model's size matches the table's
    fraction = labels.set_index("image_id")["mask_fraction"].astype(float)
    assert (images.set_index("image_id")["area"] - fraction).abs().max() < 0.03
    assert set(pd.read_csv(run / "subgroups.csv")["group"].astype(str)) >= {"0", "1", "2"}


def test_ham10000_samples_with_sex_and_binned_age(tmp_path: Path) -> None:
    meta = pd.read_csv(SHARED_DATA / "ham10000" / "ham10000_metadata_subset.csv", dtype=str)
    have = sorted(p.stem for p in (SHARED_DATA / "ham10000" / "images").glob("ISIC_*.jpg"))
    meta = meta[meta["image_id"].isin(have)].copy()
    meta["image_path"] = "ham10000/images/" + meta["image_id"] + ".jpg"
    meta["mask_path"] = "ham10000/masks/" + meta["image_id"] + ".png"
    meta.loc[meta.index[0], "sex"] = ""  # an incomplete record stays, in the group 'missing'
    meta.to_csv(tmp_path / "ham.csv", index=False)
    config = write_config(
        tmp_path / "ham.yaml", tmp_path / "ham.csv", _model(tmp_path, 2), run_name="ham",
        **{"data.classes": ["bkl", "nv"], "data.root": str(SHARED_DATA), "data.subgroups": ["sex", "age"],
           "data.bins": {"age": [0, 40, 65, 75, 120]}, "data.columns": {"label": "dx"},
           "preprocessing.size": [96, 128], "sanity.enabled": False, "thresholds.min_group_size": 2},
    )  # fmt: skip
    run = run_audit(config).run_dir
    images = pd.read_parquet(run / "images.parquet").set_index("image_id")
    assert len(images) == len(have) == 5
    expected_bands = {"40": "[40, 65)", "55": "[40, 65)", "60": "[40, 65)", "75": "[75, 120)"}
    raw = meta.set_index("image_id")["age"]
    assert all(images.loc[i, "age"] == expected_bands[raw[i]] for i in images.index)
    assert images.loc[meta["image_id"].iloc[0], "sex"] == "missing"
