"""The runtime choice: a torch model runs on its checked ONNX export, or on torch with the reason why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from audit import backend
from audit.cam import GradCAM
from audit.cam.onnx import OnnxModel
from audit.config import ConfigError, Explain, ModelSource, Preprocessing, load_config
from audit.models import load_model
from audit.pipeline import aggregate, build_method, explain_shard, prepare, sanity_check
from audit.provenance import sha256_file
from tests.conftest import write_config

PRE = Preprocessing(size=(64, 64))

FACTORY = '''
import torch
from torch import nn


class BatchDependent(nn.Module):
    """Tracing freezes the branch taken for the export's one-image example: the export is wrong."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.fc(self.features(x).mean(dim=(2, 3)))
        return y * 2 if x.shape[0] > 1 else y


def build():
    torch.manual_seed(0)
    return BatchDependent()
'''


def _tiny(tiny_model: Path) -> tuple[nn.Module, ModelSource]:
    src = ModelSource(kind="torchvision", arch="mobilenet_v3_small", checkpoint=tiny_model, num_classes=2)
    return load_model(src), src


def _choose(model: nn.Module, src: ModelSource, tmp_path: Path, layer: str = "features.8", **explain: object):
    ex = Explain(target_layer=layer, **explain)
    return backend.choose(model, src, PRE, ex, lambda m: build_method(ex, m, (layer,)), tmp_path / "onnx")


def test_auto_runs_a_torch_model_on_its_checked_onnx_export_exported_once(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, src = _tiny(tiny_model)
    runner, choice = _choose(model, src, tmp_path)
    assert isinstance(runner, OnnxModel) and choice.backend == "onnx"
    assert choice.probe_difference is not None and choice.probe_difference <= backend.TOLERANCE
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [runner.path.name]
    # the maps it gives on other inputs are the torch path's (the check is not a one-batch accident)
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours, reference = GradCAM(runner, "features.8")(x), GradCAM(model, "features.8")(x)
    assert torch.equal(ours.target_index, reference.target_index)
    assert float((ours.maps - reference.maps).abs().max()) <= 1e-4 * float(reference.maps.max())
    # a second choice reads the cached export: exporting again would fail here
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(AssertionError("exported twice")))
    again, choice2 = _choose(model, src, tmp_path)
    assert choice2.backend == "onnx" and again.path == runner.path


def test_the_export_cache_keys_on_the_weights(tiny_model: Path, tmp_path: Path) -> None:
    model, src = _tiny(tiny_model)
    first, _ = _choose(model, src, tmp_path)
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, other)
    src2 = src.model_copy(update={"checkpoint": other})
    second, _ = _choose(load_model(src2), src2, tmp_path)
    assert first.path != second.path and len(list((tmp_path / "onnx").iterdir())) == 2


def test_a_damaged_cached_export_is_exported_again_and_the_key_covers_the_input(
    tiny_model: Path, tmp_path: Path
) -> None:
    model, src = _tiny(tiny_model)
    first, _ = _choose(model, src, tmp_path)
    first.path.write_bytes(b"not an onnx file")
    again, choice = _choose(model, src, tmp_path)
    assert choice.backend == "onnx" and again.path == first.path and first.path.stat().st_size > 1000
    assert choice.export_sha256 == sha256_file(first.path)
    key = backend.export_key(model, src, PRE)
    assert key != backend.export_key(model, src, Preprocessing(size=(32, 32)))
    assert key != backend.export_key(model, src, Preprocessing(size=(64, 64), channels=1, mean=(0.5,), std=(0.5,)))


def test_an_export_that_differs_from_torch_falls_back_with_the_reason(tmp_path: Path) -> None:
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY)
    src = ModelSource(kind="factory", factory=f"{factory}:build")
    model = load_model(src)
    runner, choice = _choose(model, src, tmp_path, layer="features")
    assert runner is model and choice.backend == "torch"
    assert "logits differ" in choice.reason
    with pytest.raises(ConfigError, match=r"backend: onnx.*logits differ"):
        _choose(model, src, tmp_path, layer="features", backend="onnx")


def test_a_method_the_export_cannot_run_stays_on_torch(tiny_model: Path, tmp_path: Path) -> None:
    model, src = _tiny(tiny_model)
    runner, choice = _choose(model, src, tmp_path, method="guided-backprop")
    assert runner is model and choice.backend == "torch" and "cannot be used" in choice.reason


def test_forced_backends(tiny_model: Path, tmp_path: Path) -> None:
    model, src = _tiny(tiny_model)
    runner, choice = _choose(model, src, tmp_path, backend="torch")
    assert runner is model and choice.reason == "explain.backend: torch"
    runner, choice = _choose(model, src, tmp_path, backend="onnx")
    assert isinstance(runner, OnnxModel)
    with pytest.raises(ConfigError, match="cannot run an ONNX file"):
        _choose(runner, src, tmp_path, backend="torch")


def _audit(cfg_path: Path) -> tuple[pd.DataFrame, dict]:
    cfg = load_config(cfg_path)
    results = [explain_shard(cfg, s, fresh=True) for s in prepare(cfg, overwrite=True)]
    sanity_check(cfg)
    summary = aggregate(cfg, results)
    return pd.read_parquet(cfg.run_dir / "images.parquet"), summary


def test_an_audit_on_the_onnx_backend_measures_what_torch_measures(
    tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    on_onnx, summary = _audit(write_config(tmp_path / "a.yaml", tiny_set, tiny_model, run_name="a"))
    on_torch, summary_torch = _audit(
        write_config(tmp_path / "b.yaml", tiny_set, tiny_model, run_name="b", **{"explain.backend": "torch"})
    )
    assert summary["backend"]["backend"] == "onnx" and summary_torch["backend"]["backend"] == "torch"
    assert "steps" in summary["sanity"]  # the sanity check still re-initialises the torch model's weights
    assert summary["verdict"] == summary_torch["verdict"]
    assert list(on_onnx["row"]) == list(on_torch["row"])
    assert (on_onnx["predicted"] == on_torch["predicted"]).all()
    for column in ("explained_probability", "mass_in", "energy_pointing", "outside_delta", "counterfactual_delta"):
        np.testing.assert_allclose(on_onnx[column], on_torch[column], atol=1e-4, err_msg=column)
