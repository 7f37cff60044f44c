"""Multi-label (sigmoid) models: each (image, finding) row is explained against its own mask."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from audit.inputs import Picture, to_tensor
from audit.models import build_torchvision
from audit.pipeline import run_audit
from tests.conftest import write_config


def test_each_finding_is_explained_against_its_own_mask(tiny_set: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(tiny_set.parent, root)
    Image.fromarray(np.pad(np.full((24, 24), 255, np.uint8), ((0, 40), (0, 40)))).save(root / "corner.png")
    base = pd.read_csv(root / "manifest.csv").head(6)
    lesion = base.assign(label="lesion")
    corner = base.assign(label="marker", mask_path="corner.png")
    dup = lesion.head(1)  # the same (image, finding) twice is an error; the same image twice is not
    pd.concat([lesion, corner, dup], ignore_index=True).to_csv(root / "manifest.csv", index=False)

    torch.manual_seed(0)
    model = build_torchvision("mobilenet_v3_small", 3).eval()
    torch.save(model.state_dict(), tmp_path / "ml.pt")
    config = write_config(
        tmp_path / "ml.yaml", root / "manifest.csv", tmp_path / "ml.pt",
        **{"model.num_classes": 3, "explain.output": "sigmoid", "explain.target": "label",
           "data.classes": ["lesion", "marker", "effusion"]},
    )  # fmt: skip
    result = run_audit(config)
    images = pd.read_parquet(result.run_dir / "images.parquet")
    exclusions = pd.read_csv(result.run_dir / "exclusions.csv")
    assert len(images) == 12 and exclusions["reason"].str.contains("duplicate image_id and label").tolist() == [True]
    assert (images["explained"] == images["label"]).all()

    first = images.iloc[0]
    pixels = np.asarray(Image.open(root / base["image_path"].iloc[0]).convert("RGB"))
    x = to_tensor(Picture(pixels), _pre(config))[None]
    with torch.no_grad():
        expected = torch.sigmoid(model(x))[0, 0].item()
    assert abs(first["probability"] - expected) < 1e-5 and first["explained_probability"] == first["probability"]
    by_image = images.pivot(index="image_id", columns="label", values="area")
    assert (by_image["lesion"] != by_image["marker"]).all()  # each finding scored on its own mask


def _pre(config: Path):
    from audit.config import load_config

    return load_config(config).preprocessing


def test_methods_smoothing_and_fusion_run_through_the_pipeline(
    tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    for name, extra in {
        "gg": {"explain.method": "guided-gradcam"},
        "sm": {"explain.method": "gradcam++", "explain.smooth": {"n": 2, "sigma": 0.1}},
        "fu": {"explain.method": "layercam", "explain.target_layer": ["features.8", "features.6"]},
    }.items():
        config = write_config(tmp_path / f"{name}.yaml", tiny_set, tiny_model, run_name=name, **extra)
        images = pd.read_parquet(run_audit(config).run_dir / "images.parquet")
        assert len(images) == 24 and images["mass_in"].between(0, 1).all()
