"""The shipped ONNX file is explained directly: its maps equal the torch original's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from audit.cam import METHODS, ClassIndex, GradCAM, find_target_layer
from audit.cam.onnx import OnnxModel
from audit.config import ModelSource
from audit.models import ModelError, build_torchvision, load_model


def _export(model: nn.Module, path: Path, x: torch.Tensor, dynamic: bool = True) -> OnnxModel:
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"], dynamic_axes=axes
    )
    return OnnxModel(path)


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer4"),
        ("densenet121", "features"),  # relu_ after the layer
        ("mobilenet_v3_small", "features.8"),  # a nested layer, and an MLP head (linear-hardswish-linear)
        ("squeezenet1_1", "features"),  # head is dropout + 1x1 conv + relu + pooling, not GAP-linear
    ],
)
def test_onnx_maps_and_predictions_equal_torch(tmp_path: Path, arch: str, layer: str) -> None:
    torch.manual_seed(0)
    model = build_torchvision(arch, 4).eval()
    x = torch.randn(3, 3, 64, 64)
    onnx_model = _export(model, tmp_path / "m.onnx", x)
    with torch.no_grad():
        target = ClassIndex(model(x).argsort(dim=1)[:, -2].tolist())
    ref, got = GradCAM(model, layer)(x, target), GradCAM(onnx_model, layer)(x, target)
    torch.testing.assert_close(got.layer_maps, ref.layer_maps, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-3)
    assert torch.equal(got.logits.argmax(1), ref.logits.argmax(1))


def test_every_method_runs_on_onnx_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 3).eval()
    x = torch.randn(2, 3, 64, 64)
    onnx_model = _export(model, tmp_path / "m.onnx", x)
    for name, cls in METHODS.items():
        ref, got = cls(model, "layer4")(x), cls(onnx_model, "layer4")(x)
        torch.testing.assert_close(got.layer_maps, ref.layer_maps, atol=1e-4, rtol=1e-3, msg=name)


def test_grayscale_any_size_fixed_batch_and_auto_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 2)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # a 1-channel (X-ray-like) model
    model.eval()
    x = torch.randn(1, 1, 80, 112)
    onnx_model = _export(model, tmp_path / "gray.onnx", x, dynamic=False)  # batch fixed to 1
    assert onnx_model.fixed_batch == 1
    assert find_target_layer(onnx_model, x) == "layer4" == find_target_layer(model, x)
    batch = torch.randn(3, 1, 80, 112)
    torch.testing.assert_close(
        GradCAM(onnx_model, "layer4")(batch).maps, GradCAM(model, "layer4")(batch).maps, atol=1e-4, rtol=1e-3
    )


def test_onnx_model_source_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 2).eval()
    _export(model, tmp_path / "m.onnx", torch.randn(1, 3, 64, 64))
    loaded = load_model(ModelSource(kind="onnx", checkpoint=tmp_path / "m.onnx"))
    assert isinstance(loaded, OnnxModel)
    with pytest.raises(KeyError, match="layer9"):
        GradCAM(loaded, "layer9")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="not a usable ONNX classifier"):
        load_model(ModelSource(kind="onnx", checkpoint=tmp_path / "bad.onnx"))
