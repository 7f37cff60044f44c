"""Which runtime runs the model: torch eager, or onnxruntime on a one-time ONNX export of it.

Why: on a CPU, onnxruntime runs the same network about 2-4x faster than torch eager (``bench/engine.py``),
and every forward of the audit (the explained pass and the counterfactual ones) goes through the
runtime chosen here. Why a check: an export can be wrong without failing (data-dependent control flow
frozen at export time, an op traced as a constant), so an export is used only when its explanation
of a probe batch equals torch's: maps within ``TOLERANCE`` of their peak, logits within ``TOLERANCE``
of their largest magnitude, the same explained classes. Otherwise ``auto`` falls back to torch and
says why; ``onnx`` refuses. Exports are cached by the SHA-256 of the model's files and the export
settings, written atomically, so parallel workers and later runs export once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from audit.cam import CAMOutput, PredictedClass
from audit.cam.onnx import OnnxModel
from audit.config import ConfigError, Explain, ModelSource, Preprocessing
from audit.provenance import sha256_file
from audit.runfolder import atomic
from audit.shardcache import file_sha256, model_files

log = logging.getLogger("audit")

TOLERANCE = 1e-4
PROBE_BATCH = 4
PROBE_SEED = 0
# What the export depends on besides the weights (part of the cache key).
EXPORT_SETTINGS = {"exporter": "torchscript", "opset": 17, "batch": "dynamic", "format": 1}

Method = Callable[..., CAMOutput]
_EXPORTING = threading.Lock()


@dataclass(frozen=True)
class Choice:
    """The runtime a run used and why (recorded in the run's summary and report)."""

    backend: str  # "torch" or "onnx"
    reason: str
    probe_difference: float | None = None  # largest map difference on the probe, relative to the peak
    export_sha256: str | None = None  # the ONNX file that ran

    def as_dict(self) -> dict:
        return asdict(self)


def export_cache(configured: Path | None) -> Path:
    """Where exports are kept: ``<orchestration.cache_dir>/onnx`` when set, else the user's cache
    (``$XDG_CACHE_HOME/audit/onnx``, by default ``~/.cache/audit/onnx``): an export depends on the
    model and input size only, so every run on the machine shares it."""
    if configured is not None:
        return configured / "onnx"
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home folder (a container user without a passwd entry)
        base = Path(tempfile.gettempdir()) / f"audit-{os.getuid()}"
    return base / "audit" / "onnx"


def probe(pre: Preprocessing, device: str = "cpu") -> torch.Tensor:
    """A fixed, seeded batch at the model's input size (standard-normal: the range of normalised images)."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(PROBE_BATCH, pre.channels, *pre.size, generator=g).to(device)


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the loaded weights and buffers: covers what the files do not (a factory that
    builds or loads its weights itself)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode() + b"\0" + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export_key(model: nn.Module, src: ModelSource, pre: Preprocessing) -> str:
    content = {
        "model": [file_sha256(p) for p in model_files(src)],
        "weights": weights_sha256(model),
        "source": src.model_dump(mode="json", exclude={"checkpoint"}),
        "input": [pre.channels, *pre.size],
        "versions": {name: metadata.version(name) for name in ("torch", "torchvision", "onnx")},
        "settings": EXPORT_SETTINGS,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def exported(
    model: nn.Module, src: ModelSource, pre: Preprocessing, cache: Path, again: bool = False
) -> tuple[Path, bool]:
    """The model as an ONNX file, exported on first use and then read from ``cache`` (``again``:
    export anew, replacing a cached file that failed the check); and whether it came from the cache."""
    path = cache / f"{export_key(model, src, pre)}.onnx"
    with _EXPORTING:  # torch's exporter keeps global state: one export at a time in a process
        if path.is_file() and not again:
            return path, True
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        _export(model, pre, path)
    return path, False


def _export(model: nn.Module, pre: Preprocessing, path: Path) -> None:
    example = probe(pre)[:1]
    with atomic(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is deprecated
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=EXPORT_SETTINGS["opset"],
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest magnitude of ``a``."""
    scale = float(a.abs().max())
    return float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max())


def difference(reference: CAMOutput, candidate: CAMOutput) -> tuple[float, str | None]:
    """Largest map difference relative to the reference's peak, and what fails the check (None: passes)."""
    maps = relative_difference(reference.maps, candidate.maps)
    if not torch.equal(reference.target_index, candidate.target_index):
        return maps, "explained classes differ on the probe batch"
    logits = relative_difference(reference.logits, candidate.logits)
    if not logits <= TOLERANCE:
        return maps, f"logits differ by {logits:.1e} of their largest value (tolerance {TOLERANCE:g})"
    if not maps <= TOLERANCE:  # also catches NaN
        return maps, f"maps differ by {maps:.1e} of their peak (tolerance {TOLERANCE:g})"
    return maps, None


def _checked(
    model: nn.Module,
    src: ModelSource,
    pre: Preprocessing,
    build: Callable[[nn.Module], Method],
    cache: Path,
    again: bool,
) -> tuple[float | None, str | None, OnnxModel | None, bool]:
    """(map difference, what fails or None, the twin, whether the file came from the cache)."""
    cached = False
    try:
        path, cached = exported(model, src, pre, cache, again)
        twin = OnnxModel(path)
        x = probe(pre)
        gap, failure = difference(build(model)(x, PredictedClass()), build(twin)(x, PredictedClass()))
        with torch.no_grad():  # the counterfactuals' forwards run the whole graph: the same logits too
            whole = relative_difference(model(x), twin(x))
        if failure is None and not whole <= TOLERANCE:
            failure = f"the whole graph's logits differ by {whole:.1e} of their largest value"
        return gap, failure, twin, cached
    except Exception as err:  # unsupported ops, layers the export names differently, methods needing modules
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", None, cached


def choose(
    model: nn.Module,
    src: ModelSource,
    pre: Preprocessing,
    explain: Explain,
    build: Callable[[nn.Module], Method],
    cache: Path,
) -> tuple[nn.Module, Choice]:
    """The model to explain with (``model`` itself or its ONNX twin) and why.

    ``build`` turns a model into the configured explanation method, so the check compares exactly
    what the run will compute."""
    if isinstance(model, OnnxModel):
        if explain.backend == "torch":
            raise ConfigError("explain.backend: torch cannot run an ONNX file; use auto or onnx")
        return model, Choice("onnx", "the model is an ONNX file")
    if explain.backend == "torch":
        return model, Choice("torch", "explain.backend: torch")
    if explain.device != "cpu":
        if explain.backend == "onnx":
            raise ConfigError(f"explain.backend: onnx runs on CPU only, not on explain.device {explain.device}")
        return model, Choice("torch", f"torch on {explain.device} (onnxruntime runs on CPU here)")
    gap, failure, twin, cached = _checked(model, src, pre, build, cache, again=False)
    if failure is not None and cached:  # a cached file may be stale or damaged: export anew once
        gap, failure, twin, _ = _checked(model, src, pre, build, cache, again=True)
    if failure is None and twin is not None:
        sha = sha256_file(twin.path)
        return twin, Choice("onnx", "ONNX export of the torch model, equal to torch on the probe batch", gap, sha)
    if explain.backend == "onnx":
        raise ConfigError(f"explain.backend: onnx: the ONNX export cannot be used: {failure}")
    log.warning("explain.backend auto: running torch, the ONNX export cannot be used: %s", failure)
    return model, Choice("torch", f"auto: the ONNX export cannot be used ({failure})", gap)
