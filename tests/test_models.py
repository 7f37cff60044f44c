"""Model loading refuses pickled code and names what does not fit."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from audit.config import ModelSource
from audit.models import ModelError, build_torchvision, load_model


class Payload:
    def __reduce__(self) -> tuple:
        return (print, ("code ran while loading",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ModelError, match="not a loadable state_dict"):
        load_model(ModelSource(arch="resnet18", checkpoint=path, num_classes=2))


def test_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(build_torchvision("resnet18", 2).state_dict(), path)
    with pytest.raises(ModelError, match="do not fit resnet18"):
        load_model(ModelSource(arch="resnet18", checkpoint=path, num_classes=3))
    with pytest.raises(ModelError, match="not a torchvision classification architecture"):
        load_model(ModelSource(arch="resnet1800", checkpoint=path))
    with pytest.raises(ModelError, match="model file not found"):
        load_model(ModelSource(arch="resnet18", checkpoint=tmp_path / "none.pt"))


def test_state_dict_wrappers_are_accepted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 2)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = load_model(ModelSource(arch="resnet18", checkpoint=path, num_classes=2))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert not loaded.training
