"""Guided backprop, guided Grad-CAM, noise averaging and layer fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from audit.cam import ClassIndex, GradCAM, LayerCAM
from audit.cam.wrappers import FusedLayers, GuidedBackprop, GuidedGradCAM, NoiseAveraged
from audit.models import build_torchvision

captum_attr = pytest.importorskip("captum.attr")


def _setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 4).eval()
    x = torch.randn(2, 3, 64, 64)
    return model, x, torch.tensor([1, 2])


def test_guided_backprop_equals_captum_and_restores_the_model() -> None:
    model, x, target = _setup()
    grad, _, _ = GuidedBackprop(model).attribute(x, ClassIndex(target.tolist()))
    ref = captum_attr.GuidedBackprop(model).attribute(x, target=target).detach()
    torch.testing.assert_close(grad, ref, atol=1e-5, rtol=1e-4)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert all(m.inplace for m in relus) and not any(m._backward_hooks for m in relus)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam() -> None:
    model, x, target = _setup()
    t = ClassIndex(target.tolist())
    out = GuidedGradCAM(GradCAM(model, "layer4"))(x, t)
    grad, _, _ = GuidedBackprop(model).attribute(x, t)
    cam = F.interpolate(GradCAM(model, "layer4")(x, t).layer_maps[:, None], size=(64, 64), mode="bilinear")
    torch.testing.assert_close(out.maps, (grad * cam).abs().sum(dim=1))


def test_noise_averaging_is_seeded_keeps_the_class_and_changes_the_map() -> None:
    model, x, _ = _setup()
    cam = GradCAM(model, "layer4")
    a, b = NoiseAveraged(cam, n=4, seed=3)(x), NoiseAveraged(cam, n=4, seed=3)(x)
    torch.testing.assert_close(a.maps, b.maps)
    clean = cam(x)
    assert torch.equal(a.target_index, clean.target_index)
    assert not torch.allclose(a.maps, clean.maps)
    zero = NoiseAveraged(cam, n=2, sigma=0.0)(x)
    torch.testing.assert_close(zero.maps, clean.maps)


def test_fused_layers_take_the_maximum_of_scaled_maps() -> None:
    model, x, target = _setup()
    t = ClassIndex(target.tolist())
    fused = FusedLayers([LayerCAM(model, "layer4"), LayerCAM(model, "layer3")])(x, t)
    assert fused.maps.shape == (2, 64, 64)
    assert torch.allclose(fused.maps.flatten(1).amax(dim=1), torch.ones(2))
    single = FusedLayers([LayerCAM(model, "layer4")])(x, t)
    assert (fused.maps >= single.maps - 1e-6).all()
