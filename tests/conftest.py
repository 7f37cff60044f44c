"""Shared fixtures: a tiny generated audit set and a small seeded model, built in seconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from audit.examples.synth import generate
from audit.models import build_torchvision

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user-level cache (ONNX exports, audit/backend.py) in a folder of this session, shared by its
    tests (and the audits they start in subprocesses), never the user's own."""
    path = tmp_path_factory.mktemp("xdg_cache")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    yield path
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One embedded Prefect server for the whole session (starting one costs about 10 s)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    @flow
    def warm_up() -> None:
        """Prefect binds its log handlers to the stream current at the first flow run; do that here,
        not inside a CliRunner whose captured stream is closed after the call."""

    with prefect_test_harness():
        warm_up()
        yield


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 generated 64-px images (8 per site) with masks and counterfactuals; returns the manifest path."""
    root = tmp_path_factory.mktemp("tiny_set")
    generate(root, 24, seed=5, size=64)
    return root / "manifest.csv"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_torchvision("mobilenet_v3_small", 2)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


def write_config(path: Path, manifest: Path, model: Path, **overrides: object) -> Path:
    cfg: dict = {
        "run_name": "t",
        "output_dir": str(path.parent / "reports"),
        "model": {"kind": "torchvision", "arch": "mobilenet_v3_small", "checkpoint": str(model), "num_classes": 2},
        "preprocessing": {"size": [64, 64]},
        "explain": {"target_layer": "features.8", "batch_size": 5, "shard_size": 10},
        "data": {"manifest": str(manifest), "classes": ["nevus", "melanoma"], "subgroups": ["site", "sex"]},
        "thresholds": {"min_group_size": 5},
        "stats": {"n_boot": 200, "seed": 1},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path
