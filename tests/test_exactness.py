"""Our maps equal the reference libraries' on randomly initialised torchvision models.

References (test-only dependencies): captum's LayerGradCam and torchcam's GradCAM, LayerCAM,
ScoreCAM and GradCAMpp. Raw maps (before normalisation) at the layer's resolution, max abs diff 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from audit.cam import ClassIndex, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from audit.models import build_torchvision

captum_attr = pytest.importorskip("captum.attr")
torchcam_methods = pytest.importorskip("torchcam.methods")

ARCHS = [
    ("resnet18", "layer4"),
    ("resnet50", "layer4"),
    ("densenet121", "features"),
    ("vgg16", "features.29"),
    ("efficientnet_b0", "features"),
    ("mobilenet_v3_small", "features"),
    ("convnext_tiny", "features"),
]


def _model_and_input(arch: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_torchvision(arch, 5).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        target = model(x).argsort(dim=1)[:, -2]  # not the argmax: a class with mixed-sign evidence
    return model, x, target


def _torchcam(
    cls: type, model: torch.nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor, **kw
) -> torch.Tensor:
    with cls(model, layer, input_shape=tuple(x.shape[1:]), **kw) as extractor:
        scores = model(x)
        return extractor(target.tolist(), scores, normalized=False)[0].detach()


@pytest.mark.parametrize(("arch", "layer"), ARCHS)
def test_gradcam_equals_captum_and_torchcam(arch: str, layer: str) -> None:
    model, x, target = _model_and_input(arch)
    ours = GradCAM(model, layer)(x, ClassIndex(target.tolist())).layer_maps
    module = dict(model.named_modules())[layer]
    captum = captum_attr.LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    torch.testing.assert_close(ours, captum[:, 0].detach(), atol=1e-5, rtol=1e-4)
    torchcam = _torchcam(torchcam_methods.GradCAM, model, layer, x, target)
    if arch != "densenet121":
        torch.testing.assert_close(ours, torchcam, atol=1e-5, rtol=1e-4)


def test_torchcam_explains_relu_of_densenet_features() -> None:
    """DenseNet's forward applies relu_ to the `features` output. torchcam keeps a reference to that
    output, which relu_ then modifies: it explains ReLU(features) (values and gradient after the ReLU),
    while captum and we explain the layer's own output. Pin the difference and its cause."""
    model, x, target = _model_and_input("densenet121")
    torchcam = _torchcam(torchcam_methods.GradCAM, model, "features", x, target)
    store: dict[str, torch.Tensor] = {}
    handle = model.features.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    logits = model(x)
    handle.remove()
    relu_a = store["a"]  # modified in place: ReLU(features)
    grad = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), relu_a)[0]
    expected = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * relu_a).sum(dim=1)).detach()
    torch.testing.assert_close(torchcam, expected, atol=1e-5, rtol=1e-4)
    ours = GradCAM(model, "features")(x, ClassIndex(target.tolist())).layer_maps
    assert (ours - torchcam).abs().max() > 1e-3


@pytest.mark.parametrize(("arch", "layer"), [ARCHS[0], ARCHS[4]])
def test_layercam_equals_torchcam(arch: str, layer: str) -> None:
    model, x, target = _model_and_input(arch)
    ours = LayerCAM(model, layer)(x, ClassIndex(target.tolist())).layer_maps
    torch.testing.assert_close(
        ours, _torchcam(torchcam_methods.LayerCAM, model, layer, x, target), atol=1e-5, rtol=1e-4
    )


def test_scorecam_equals_torchcam() -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 5).eval()
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([1, 3])
    ours = ScoreCAM(model, "layer4")(x, ClassIndex(target.tolist())).layer_maps
    ref = _torchcam(torchcam_methods.ScoreCAM, model, "layer4", x, target, batch_size=64)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_gradcampp_differs_from_torchcam_only_by_its_alpha_no_op() -> None:
    """torchcam 0.5 computes alpha = G^2 and 'divides' a boolean-indexed copy, so its weights are
    sum_ij G^2 ReLU(G). Ours follows the paper. Dropping our denominator must reproduce torchcam."""
    model, x, target = _model_and_input("resnet18")
    ref = _torchcam(torchcam_methods.GradCAMpp, model, "layer4", x, target)

    class NoDenominator(GradCAMPlusPlus):
        def layer_map(self, activation, gradient, context):  # type: ignore[override]
            weights = (gradient.pow(2) * gradient.clamp_min(0)).sum(dim=(2, 3), keepdim=True)
            return (weights * activation).sum(dim=1)

    torch.testing.assert_close(NoDenominator(model, "layer4")(x, ClassIndex(target.tolist())).layer_maps, ref)
    ours = GradCAMPlusPlus(model, "layer4")(x, ClassIndex(target.tolist())).layer_maps
    assert not torch.allclose(ours / ours.amax(), ref / ref.amax(), atol=1e-3)
