"""The audit as a Prefect flow: one task per shard of images, never per image.

Tasks receive the config *path* and shard *paths* (cheap to hash, safe to persist) and call the plain
stage functions in :mod:`audit.pipeline`; the model is loaded once per worker and reused. The task
runner comes from the config's ``orchestration`` block (:func:`task_runner`); :func:`run_flow` runs the
flow with it. Progress shows in the terminal (rich, when it is one) and in the Prefect UI (a progress
artifact per shard; the verdict, the subgroup table and a link to the report at the end).
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from prefect import flow, task, unmapped
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from audit import pipeline
from audit.config import AuditConfig, ConfigError, load_config
from audit.runfolder import RunFolder
from audit.tables import read_csv


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(config_path: str, overwrite: bool) -> list[str]:
    return [str(p) for p in pipeline.prepare(load_config(config_path), overwrite)]


@task(name="explain-shard", cache_policy=NO_CACHE, retries=1)
def explain_task(config_path: str, shard: str, fresh: bool) -> str:
    # resume is the library's content-keyed shard cache (audit.shardcache), not Prefect's result
    # cache: it keys on the files' bytes and the model's, and works the same without Prefect
    return str(pipeline.explain_shard(load_config(config_path), Path(shard), fresh))


@task(name="sanity-check", cache_policy=NO_CACHE)
def sanity_task(config_path: str) -> str:
    return str(pipeline.sanity_check(load_config(config_path)))


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate_task(config_path: str, results: list[str]) -> dict:
    return pipeline.aggregate(load_config(config_path), [Path(r) for r in results])


@task(name="render", cache_policy=NO_CACHE)
def render_task(config_path: str, started: str) -> dict[str, str]:
    return pipeline.render(load_config(config_path), Path(config_path), datetime.fromisoformat(started))


def dated_config(config_path: Path, when: datetime) -> Path:
    """A copy of the config (paths resolved) whose run_name carries the time, beside the runs."""
    cfg = load_config(config_path)
    cfg = cfg.model_copy(update={"run_name": f"{cfg.run_name}-{when:%Y%m%dT%H%M%SZ}"})
    path = cfg.output_dir / ".scheduled" / f"{cfg.run_name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def task_runner(cfg: AuditConfig) -> TaskRunner:
    """The task runner ``orchestration`` asks for."""
    o = cfg.orchestration
    if o.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=o.workers)
    if o.runner == "processes":
        return ProcessPoolTaskRunner(max_workers=o.workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("orchestration.runner: 'dask' needs prefect-dask (pip install prefect-dask)") from None
    if o.address:
        return DaskTaskRunner(address=o.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": o.workers, "threads_per_worker": 1, "processes": True})


def _artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "audit"


def _explain_all(config_path: str, shards: list[str], key: str, fresh: bool) -> list[str]:
    """Run the shard tasks and follow them: terminal progress bar, Prefect progress artifact."""
    sizes = {s: pq.read_metadata(s).num_rows for s in shards}
    total = sum(sizes.values()) or 1
    artifact = create_progress_artifact(progress=0.0, key=f"{key}-progress", description="images explained")
    futures = explain_task.map(unmapped(config_path), shards, unmapped(fresh))
    shard_of = {f.task_run_id: s for f, s in zip(futures, shards, strict=True)}
    done, results, start = 0, {}, time.perf_counter()
    columns = (TextColumn("explaining"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, disable=not sys.stderr.isatty(), transient=True) as bar:
        job = bar.add_task("explain", total=total, rate="")
        for future in as_completed(futures):
            shard = shard_of[future.task_run_id]
            results[shard] = future.result()
            done += sizes[shard]
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(job, completed=done, rate=f"{rate:.1f} images/s")
            update_progress_artifact(artifact, progress=100.0 * done / total)
    return [results[s] for s in shards]


@flow(name="focus-audit", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def audit_flow(config_path: str, overwrite: bool = False, fresh: bool = False, dated: bool = False) -> dict:
    """Load -> Grad-CAM per shard -> sanity check -> aggregate -> render. Returns verdict and output paths.
    ``overwrite``: replace an earlier finished run of the same run_name (otherwise it is refused; an
    unfinished one is resumed). ``fresh``: recompute every shard instead of reusing cached ones.
    ``dated``: write this run to ``<run_name>-<UTC time>`` (scheduled runs: each keeps its own folder)."""
    now = datetime.now(UTC)
    started = now.isoformat()
    if dated:
        config_path = str(dated_config(Path(config_path), now))
    cfg = load_config(config_path)
    key = _artifact_key(f"audit-{cfg.run_name}")
    shards = prepare_task(config_path, overwrite)
    results = _explain_all(config_path, shards, key, fresh)
    sanity_task(config_path)
    summary = aggregate_task(config_path, results)
    outputs = render_task(config_path, started)
    reasons = "\n".join(f"- {r}" for r in summary["reasons"]) or "- no rule was met"
    create_markdown_artifact(
        f"# Verdict: {summary['verdict'].upper()}\n\n{reasons}\n", key=f"{key}-verdict", description="verdict"
    )
    table = read_csv(Path(cfg.run_dir) / "subgroups.csv", dtype={"group": str}, keep_default_na=False)
    keep = [
        c for c in ("column", "group", "n", "focus_mean", "accuracy", "outside_dependent_share", "status") if c in table
    ]
    create_table_artifact(table[keep].to_dict("records"), key=f"{key}-subgroups", description="subgroups")
    create_link_artifact(Path(outputs["html"]).resolve().as_uri(), link_text="HTML report", key=f"{key}-report")
    shards_info = json.loads(RunFolder(cfg.run_dir).info.read_text())["shards"]
    return {
        "verdict": summary["verdict"], "reasons": summary["reasons"], "checks": summary["checks"],
        "run_dir": str(cfg.run_dir), "shards": shards_info, **outputs,
    }  # fmt: skip


def run_flow(config_path: str | Path, overwrite: bool = False, fresh: bool = False, dated: bool = False) -> dict:
    """The flow on the task runner the config asks for."""
    cfg = load_config(config_path)
    return audit_flow.with_options(task_runner=task_runner(cfg))(str(config_path), overwrite, fresh, dated)


@flow(name="scheduled-focus-audit", log_prints=True)
def scheduled_audit(config_path: str) -> dict:
    """What a deployment runs: the audit as a subflow on the config's task runner, into a new dated
    run folder (``<run_name>-<UTC time>``), so no scheduled run replaces another."""
    return run_flow(config_path, dated=True)
