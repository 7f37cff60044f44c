"""Methods built on other methods: guided backpropagation, guided Grad-CAM, noise averaging, fusion.

Each returns the same :class:`CAMOutput` as the CAM methods, so the pipeline treats them alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from audit.cam.base import CAM, CAMOutput, frozen, upsample
from audit.cam.targets import ClassIndex, PredictedClass, Target


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Guided backpropagation's rule on every ``nn.ReLU``: pass back only positive gradients, where
    the input was positive: ``dL/dx = ReLU(dL/dy) * 1[x > 0]``. In-place ReLUs are made out-of-place
    for the call (backward hooks need it) and restored. Functional ``F.relu`` calls are not affected,
    as in captum."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    inplace = [m.inplace for m in relus]
    handles = []
    for m in relus:
        m.inplace = False
        handles.append(m.register_full_backward_hook(lambda _m, grad_in, _out: (F.relu(grad_in[0]),)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(relus, inplace, strict=True):
            m.inplace = flag


class GuidedBackprop:
    """Guided backpropagation (Springenberg et al. 2015): the input gradient of the score under the
    guided ReLU rule. ``attribute`` returns (B, C, H, W); as a map, ``sum_c |attribution|``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(
        self, x: torch.Tensor, target: Target | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        target = target or PredictedClass()
        leaf = x.detach().requires_grad_(True)
        with frozen(self.model), guided_relus(self.model), torch.enable_grad():
            logits = self.model(leaf)
            score, index = target(logits)
            grad = torch.autograd.grad(score.sum(), leaf)[0]
        return grad, logits.detach(), index

    def __call__(self, x: torch.Tensor, target: Target | None = None) -> CAMOutput:
        grad, logits, index = self.attribute(x, target)
        maps = grad.abs().sum(dim=1)
        return CAMOutput(maps=maps, layer_maps=maps, logits=logits, target_index=index)


class GuidedGradCAM:
    """Guided Grad-CAM (Selvaraju et al. 2017): ``guided backprop * up(Grad-CAM)`` per pixel and
    channel; as a map, ``sum_c |.|``. Upsampling is bilinear (captum's GuidedGradCam uses nearest)."""

    def __init__(self, cam: CAM) -> None:
        self.cam = cam
        self.guided = GuidedBackprop(cam.model)

    def __call__(self, x: torch.Tensor, target: Target | None = None) -> CAMOutput:
        out = self.cam(x, target)
        grad, _, _ = self.guided.attribute(x, ClassIndex(out.target_index.tolist()))
        maps = (grad * out.maps[:, None]).abs().sum(dim=1)
        return CAMOutput(maps=maps, layer_maps=out.layer_maps, logits=out.logits, target_index=out.target_index)


class NoiseAveraged:
    """SmoothGrad-style averaging for any method: the mean raw map over ``n`` copies of the input with
    Gaussian noise of standard deviation ``sigma * (max(x) - min(x))`` per image. The explained class is
    fixed from the clean input, so noise never changes *what* is explained; seeded, so repeatable."""

    def __init__(self, method: CAM | GuidedBackprop | GuidedGradCAM, n: int = 8, sigma: float = 0.15, seed: int = 0):
        self.method, self.n, self.sigma, self.seed = method, n, sigma, seed

    def __call__(self, x: torch.Tensor, target: Target | None = None) -> CAMOutput:
        clean = self.method(x, target)
        fixed = ClassIndex(clean.target_index.tolist())
        span = (x.flatten(1).amax(dim=1) - x.flatten(1).amin(dim=1)).view(-1, *([1] * (x.dim() - 1)))
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        maps = torch.zeros_like(clean.maps)
        layer_maps = torch.zeros_like(clean.layer_maps)
        for _ in range(self.n):
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * self.sigma * span
            out = self.method(x + noise, fixed)
            maps += out.maps / self.n
            layer_maps += out.layer_maps / self.n
        return CAMOutput(maps=maps, layer_maps=layer_maps, logits=clean.logits, target_index=clean.target_index)


class FusedLayers:
    """Several layers fused (as Layer-CAM proposes): each layer's map is upsampled to the input,
    scaled to [0, 1] per image (raw scales differ between layers), and the element-wise maximum kept."""

    def __init__(self, cams: Sequence[CAM]) -> None:
        if not cams:
            raise ValueError("FusedLayers needs at least one CAM")
        self.cams = list(cams)

    def __call__(self, x: torch.Tensor, target: Target | None = None) -> CAMOutput:
        first = self.cams[0](x, target)
        fixed = ClassIndex(first.target_index.tolist())
        outs = [first] + [cam(x, fixed) for cam in self.cams[1:]]
        size = tuple(x.shape[-2:])
        scaled = []
        for out in outs:
            m = upsample(out.layer_maps, size)
            peak = m.flatten(1).amax(dim=1).clamp_min(torch.finfo(m.dtype).tiny).view(-1, 1, 1)
            scaled.append(m / peak)
        maps = torch.stack(scaled).amax(dim=0)
        return CAMOutput(maps=maps, layer_maps=maps, logits=first.logits, target_index=first.target_index)
