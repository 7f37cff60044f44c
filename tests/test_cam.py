"""The Grad-CAM engine against hand-computed cases and its hygiene (no weight grads, no hooks left)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audit.cam import ClassIndex, GradCAM, PredictedClass, find_target_layer
from audit.models import build_torchvision


class GapLinear(nn.Module):
    """features (identity) -> global average pool -> linear: Grad-CAM has a closed form here."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_gradcam_equals_hand_computed_map() -> None:
    # Two channels on a 2x2 grid. With GAP + linear, dS_c/dA_k[i,j] = W[c,k] / (h*w), so
    # alpha_k = W[c,k] / 4 and L = ReLU(sum_k alpha_k A_k).
    a0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a1 = torch.tensor([[4.0, 0.0], [0.0, 8.0]])
    x = torch.stack([a0, a1])[None]
    model = GapLinear(torch.tensor([[2.0, -1.0], [0.5, 0.5]])).eval()
    out = GradCAM(model, "features")(x, ClassIndex(0))
    # class 0: alpha = (0.5, -0.25): 0.5*a0 - 0.25*a1 = [[-0.5, 1.0], [1.5, 0.0]] -> ReLU
    expected = torch.tensor([[0.0, 1.0], [1.5, 0.0]])
    torch.testing.assert_close(out.layer_maps[0], expected)
    out1 = GradCAM(model, "features")(x, ClassIndex(1))
    # class 1: alpha = (0.125, 0.125): 0.125*(a0 + a1) = [[0.625, 0.25], [0.375, 1.5]]
    torch.testing.assert_close(out1.layer_maps[0], torch.tensor([[0.625, 0.25], [0.375, 1.5]]))
    # maps at input size = the layer map upsampled bilinearly, align_corners=False
    up = F.interpolate(expected[None, None], size=(2, 2), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(out.maps[0], up)


def test_gradcam_matches_full_autograd_on_a_nonlinear_head() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()
    x = torch.randn(4, 3, 16, 16)
    out = GradCAM(model, "2")(x)
    # reference: the textbook computation with a full graph and retained activation
    store = {}
    h = model[2].register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    logits = model(x)
    h.remove()
    a = store["a"]
    idx = logits.argmax(1)
    grads = torch.autograd.grad(logits.gather(1, idx[:, None]).sum(), a)[0]
    ref = F.relu((grads.mean((2, 3), keepdim=True) * a).sum(1))
    torch.testing.assert_close(out.layer_maps, ref.detach())
    ref_up = F.interpolate(ref[:, None].detach(), size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out.maps, ref_up)
    assert torch.equal(out.target_index, idx)


def test_no_weight_gradients_and_no_hooks_left_behind() -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 3).eval()
    layer = model.layer4
    GradCAM(model, "layer4")(torch.randn(2, 3, 64, 64))
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters()), "requires_grad must be restored"
    assert not layer._forward_hooks


def test_hooks_removed_even_when_the_forward_fails() -> None:
    model = GapLinear(torch.ones(2, 2)).eval()
    cam = GradCAM(model, "features")
    with pytest.raises(RuntimeError):
        cam(torch.randn(1, 3, 2, 2))  # 3 channels into a 2-input linear layer
    assert not model.features._forward_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_inplace_op_after_the_target_layer_is_safe() -> None:
    # DenseNet applies relu_ to its features output; the captured activation must not be a leaf in it
    torch.manual_seed(0)
    model = build_torchvision("densenet121", 2).eval()
    out = GradCAM(model, "features")(torch.randn(1, 3, 64, 64))
    assert out.layer_maps.shape == (1, 2, 2)
    assert torch.isfinite(out.maps).all()


@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer4"), ("mobilenet_v3_small", "features")])
def test_auto_target_layer_is_the_last_spatial_feature_map(arch: str, layer: str) -> None:
    model = build_torchvision(arch, 2).eval()
    assert find_target_layer(model, torch.zeros(1, 3, 64, 64)) == layer


def test_unknown_layer_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="layer9"):
        GradCAM(build_torchvision("resnet18", 2), "layer9")


def test_targets() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    score, idx = PredictedClass()(logits)
    assert idx.tolist() == [1, 0] and score.tolist() == [2.0, 3.0]
    score, idx = ClassIndex([2, 1])(logits)
    assert idx.tolist() == [2, 1] and score.tolist() == [-1.0, 0.0]
    with pytest.raises(ValueError, match="3 target indices"):
        ClassIndex([0, 1, 2])(logits)


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer4"), ("densenet121", "features")])
def test_torchscript_maps_equal_the_eager_model(tmp_path, how: str, arch: str, layer: str) -> None:
    torch.manual_seed(0)
    model = build_torchvision(arch, 3).eval()
    x = torch.randn(2, 3, 64, 64)
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    torch.jit.save(scripted, tmp_path / "m.ts")
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    assert find_target_layer(loaded, x[:1]) == layer
    eager, compiled = GradCAM(model, layer)(x), GradCAM(loaded, layer)(x)
    torch.testing.assert_close(compiled.layer_maps, eager.layer_maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in loaded.parameters())
