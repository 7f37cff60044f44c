"""The flow's task runner comes from the config, shards run in parallel with the same results, shard
outputs are written whole, and the Prefect UI gets progress, verdict, subgroup and report artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_config


def _outputs(run: Path) -> tuple[bytes, bytes]:
    return (run / "images.parquet").read_bytes(), (run / "subgroups.csv").read_bytes()


def test_parallel_runners_give_the_results_of_one_thread(
    prefect_harness: None, tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from flows.audit_flow import run_flow

    runs = {}
    for name, orchestration in {
        "serial": {"runner": "threads", "workers": 1},
        "threads": {"runner": "threads", "workers": 3},
        "processes": {"runner": "processes", "workers": 2},
    }.items():
        config = write_config(
            tmp_path / f"{name}.yaml", tiny_set, tiny_model, run_name=name,
            **{"orchestration": orchestration, "explain.shard_size": 6, "sanity.enabled": False},
        )  # fmt: skip
        result = run_flow(config)
        run = tmp_path / "reports" / name
        runs[name] = _outputs(run)
        assert result["verdict"] in ("pass", "warn", "fail")
        assert not list((run / "work").glob(".*.tmp")), "a temporary shard file was left behind"
        assert len(list((run / "work").glob("shard_????.layer.json"))) == 4  # one per shard, none shared
    assert runs["threads"] == runs["serial"] and runs["processes"] == runs["serial"]


def test_the_prefect_ui_gets_progress_verdict_subgroups_and_report(
    prefect_harness: None, tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.audit_flow import run_flow

    config = write_config(tmp_path / "a.yaml", tiny_set, tiny_model, run_name="Art_1", **{"sanity.enabled": False})
    result = run_flow(config)
    with get_client(sync_client=True) as client:
        found = {
            a.key: a
            for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="audit-art-1")))
        }
    assert {"audit-art-1-progress", "audit-art-1-verdict", "audit-art-1-subgroups", "audit-art-1-report"} <= set(found)
    assert float(found["audit-art-1-progress"].data) == pytest.approx(100.0)
    assert result["verdict"].upper() in found["audit-art-1-verdict"].data


def test_dask_without_prefect_dask_is_a_config_error(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from audit.config import ConfigError, load_config
    from flows.audit_flow import task_runner

    config = write_config(tmp_path / "d.yaml", tiny_set, tiny_model, **{"orchestration": {"runner": "dask"}})
    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install prefect-dask"):
            task_runner(load_config(config))
    else:
        assert type(task_runner(load_config(config))).__name__ == "DaskTaskRunner"
