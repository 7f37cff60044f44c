"""Load the classifier under audit, safely, in eval mode.

Checkpoints are read with ``torch.load(weights_only=True)``: a ``state_dict`` is tensors, and an
audit tool must never execute code hidden in a pickle it was handed.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from audit.config import ModelSource


class ModelError(ValueError):
    """The model cannot be built or its weights do not fit."""


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for bad files
        raise ModelError(f"{path}: not a loadable state_dict checkpoint ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state_dict (mapping of names to tensors), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_weights(model: nn.Module, src: ModelSource) -> None:
    path = src.checkpoint
    assert path is not None
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    what = src.arch or src.factory
    try:
        result = model.load_state_dict(_state_dict(path), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ModelError(f"{path}: weights do not fit {what} (num_classes={src.num_classes}): {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{path}: weights do not fit {what} (num_classes={src.num_classes}): "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def build_torchvision(arch: str, num_classes: int | None) -> nn.Module:
    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError:
        raise ModelError(f"model.arch: {arch!r} is not a torchvision classification architecture") from None
    kwargs: dict[str, object] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return builder(**kwargs)


def build_from_factory(spec: str) -> nn.Module:
    """Call ``file.py:function`` or ``package.module:function``; it must return an ``nn.Module``."""
    target, func = spec.rsplit(":", 1)
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ModelError(f"{path}: factory file not found")
            module_spec = importlib.util.spec_from_file_location(f"audit_factory_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        model = getattr(module, func)()
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"model.factory {spec!r} failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_model(src: ModelSource, device: str = "cpu") -> nn.Module:
    if src.kind == "factory":
        model = build_from_factory(src.factory or "")
        if src.checkpoint is not None:
            _load_weights(model, src)
        return model.eval().to(device)
    path = src.checkpoint
    assert path is not None
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if src.kind == "onnx":
        from audit.cam.onnx import OnnxModel

        try:
            return OnnxModel(path).to(device)
        except Exception as err:  # onnx raises DecodeError, ValidationError, ...
            raise ModelError(f"{path}: not a usable ONNX classifier ({type(err).__name__}: {err})") from None
    if src.kind == "torchscript":
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise ModelError(f"{path}: not a TorchScript file ({err})") from None
    else:
        model = build_torchvision(src.arch or "", src.num_classes)
        _load_weights(model, src)
    return model.eval().to(device)
