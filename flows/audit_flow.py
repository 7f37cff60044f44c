"""The audit as a Prefect flow: one task per shard of images, never per image.

Tasks receive the config *path* and shard *paths* (cheap to hash, safe to persist) and call the plain
stage functions in :mod:`audit.pipeline`; the model is loaded once per worker and reused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from audit import pipeline
from audit.config import load_config


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(config_path: str, overwrite: bool) -> list[str]:
    return [str(p) for p in pipeline.prepare(load_config(config_path), overwrite)]


@task(name="explain-shard", cache_policy=NO_CACHE, retries=1)
def explain_task(config_path: str, shard: str) -> str:
    return str(pipeline.explain_shard(load_config(config_path), Path(shard)))


@task(name="sanity-check", cache_policy=NO_CACHE)
def sanity_task(config_path: str) -> str:
    return str(pipeline.sanity_check(load_config(config_path)))


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate_task(config_path: str, results: list[str]) -> dict:
    return pipeline.aggregate(load_config(config_path), [Path(r) for r in results])


@task(name="render", cache_policy=NO_CACHE)
def render_task(config_path: str, started: str) -> dict[str, str]:
    return pipeline.render(load_config(config_path), Path(config_path), datetime.fromisoformat(started))


@flow(name="focus-audit", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def audit_flow(config_path: str, overwrite: bool = False) -> dict:
    """Load -> Grad-CAM per shard -> sanity check -> aggregate -> render. Returns verdict and output paths.
    ``overwrite``: replace an earlier run of the same run_name (otherwise it is refused)."""
    started = datetime.now(UTC).isoformat()
    shards = prepare_task(config_path, overwrite)
    futures = explain_task.map(unmapped(config_path), shards)
    results = [f.result() for f in futures]
    sanity_task(config_path)
    summary = aggregate_task(config_path, results)
    outputs = render_task(config_path, started)
    return {"verdict": summary["verdict"], "reasons": summary["reasons"], "checks": summary["checks"], **outputs}
