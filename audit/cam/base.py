"""The shared CAM pipeline: hooks, frozen weights, targets, post-processing.

Design (after torchcam / pytorch-grad-cam): this base owns everything common to class-activation
methods; a method only says how its map is formed from the target layer's activation ``A`` and the
gradient ``dS/dA`` of the explained score ``S``.

Speed and exactness choices:
* Model weights are frozen (``requires_grad=False``) for the call and the target activation is
  replaced by a detached leaf that requires grad. Autograd therefore records nothing before the target
  layer and computes no weight gradients: backward runs only through the head.
* The leaf is cloned before it flows on, so in-place ops after the layer (DenseNet's ``relu_``) are safe.
* Post-processing order: ReLU -> bilinear upsampling (``align_corners=False``) to the input size.
  The raw (un-normalised) map is returned; min-max normalisation is a display choice applied only
  when drawing, never before metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from audit.cam.onnx import LeafForward, OnnxModel
from audit.cam.targets import PredictedClass, Target
from audit.cam.torchscript import forward_with_activation, top_level_layers


@dataclass
class CAMOutput:
    """One batch of explanations; all tensors stay on the model's device."""

    maps: torch.Tensor  # (B, H, W) raw map at input resolution, >= 0
    layer_maps: torch.Tensor  # (B, h, w) raw map at the target layer's resolution, >= 0
    logits: torch.Tensor  # (B, C)
    target_index: torch.Tensor  # (B,) explained class per image


@dataclass
class Context:
    """What a method may need besides activation and gradient (Score-CAM re-scores masked inputs)."""

    x: torch.Tensor
    index: torch.Tensor
    score: torch.Tensor


def find_target_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last module whose output is a spatial feature map (4-D, more than 1x1).

    This is "the last convolutional layer" in the Grad-CAM sense: the deepest feature map before
    global pooling. Found by one dry forward pass, so it works for any architecture.
    """
    if isinstance(model, OnnxModel):
        return _last_spatial(model.top_level_shapes(example), f"top-level module of {model.path.name}")
    if isinstance(model, torch.jit.ScriptModule):
        return _last_spatial(_scripted_shapes(model, example), "top-level module of this TorchScript model")
    finished: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                finished.append((name, tuple(out.shape)))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return _last_spatial(finished, "module")


def _last_spatial(shapes: list[tuple[str, tuple[int, ...]]], what: str) -> str:
    """The rule every model source shares: the last output that is 4-D with more than 1x1 positions."""
    spatial = [name for name, shape in shapes if len(shape) == 4 and shape[2] * shape[3] > 1]
    if not spatial:
        raise ValueError(f"no {what} produces a spatial (N, C, H, W) feature map; name a target layer")
    return spatial[-1]


def _scripted_shapes(model: torch.jit.ScriptModule, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(module, output shape) for each top-level module of a TorchScript model."""
    shapes = []
    with torch.no_grad():
        for name in top_level_layers(model):
            try:
                _, activation = forward_with_activation(model, name)(example)
            except (KeyError, RuntimeError):
                continue
            shapes.append((name, tuple(activation.shape)))
    return shapes


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if n and name.split(".")[0] in n][:8]
        raise KeyError(f"target layer {name!r} not found in the model; candidates: {close}")
    return modules[name]


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Temporarily stop autograd from tracking the weights (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def captured(layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the layer's output as a grad-requiring leaf; the hook is always removed."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)  # autograd records nothing before this point
        store["activation"] = leaf
        return leaf.clone()  # in-place ops downstream (DenseNet's relu_) act on the copy

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def activation_source(model: nn.Module, layer: str) -> LeafForward:
    """``(x, needs_grad) -> (logits, activation)`` for an eager, TorchScript or ONNX model.

    The activation is the layer's output as the layer produced it, in the logits' autograd graph
    (when gradients are needed). In-place ops after the layer (DenseNet applies ``relu_`` to its
    features) act on a copy, as in captum; torchcam's stored reference is modified by them instead.
    """
    if isinstance(model, OnnxModel):
        return model.forward_with_activation(layer)
    if isinstance(model, torch.jit.ScriptModule):  # no hooks in compiled graphs: rewrite the graph
        scripted = forward_with_activation(model, layer)
        return lambda x, needs_grad: scripted(x.detach().requires_grad_(needs_grad))
    module = resolve_layer(model, layer)

    def hooked(x: torch.Tensor, needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with captured(module) as store:
            logits = model(x)
        if "activation" not in store:
            raise RuntimeError(f"target layer {layer!r} was not run by the forward pass")
        return logits, store["activation"]

    return hooked


class CAM:
    """Base class. Subclasses implement :meth:`layer_map` (activation, gradient -> raw map).

    ``needs_gradient = False`` (Score-CAM) skips autograd entirely.
    """

    needs_gradient = True

    def __init__(self, model: nn.Module, target_layer: str) -> None:
        self.model = model
        self.target_layer = target_layer
        self._forward_fn = activation_source(model, target_layer)

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, context: Context) -> torch.Tensor:
        """(B, K, h, w) activation and gradient -> (B, h, w) map before ReLU."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward_fn(x, self.needs_gradient)

    def __call__(self, x: torch.Tensor, target: Target | None = None) -> CAMOutput:
        target = target or PredictedClass()
        with frozen(self.model), torch.set_grad_enabled(self.needs_gradient):
            logits, activation = self._forward(x)
            score, index = target(logits)
            gradient = torch.autograd.grad(score.sum(), activation)[0] if self.needs_gradient else None
        with torch.no_grad():
            activation = activation.detach()
            context = Context(x=x, index=index, score=score.detach())
            layer_maps = F.relu(self.layer_map(activation, gradient, context))
            maps = upsample(layer_maps, tuple(x.shape[-2:]))
        return CAMOutput(maps=maps, layer_maps=layer_maps, logits=logits.detach(), target_index=index)


def upsample(layer_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, ``align_corners=False`` (equal to cv2.resize on float32), batched."""
    return F.interpolate(layer_maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
