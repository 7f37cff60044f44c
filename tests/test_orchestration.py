"""The flow's task runner comes from the config, shards run in parallel with the same results, shard
outputs are written whole, and the Prefect UI gets progress, verdict, subgroup and report artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

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
        "dask": {"runner": "dask", "workers": 2},  # prefect-dask's DaskTaskRunner on a LocalCluster
    }.items():
        config = write_config(
            tmp_path / f"{name}.yaml", tiny_set, tiny_model, run_name=name,
            **{"orchestration": orchestration, "explain.shard_size": 6, "explain.threads": 1, "sanity.enabled": False},
        )  # fmt: skip
        result = run_flow(config, fresh=True)  # computed by this runner, not copied from the shard cache
        run = tmp_path / "reports" / name
        runs[name] = _outputs(run)
        assert result["verdict"] in ("pass", "warn", "fail")
        assert not list((run / "work").glob(".*.tmp")), "a temporary shard file was left behind"
        assert len(list((run / "work").glob("shard_????.layer.json"))) == 4  # one per shard, none shared
        assert result["shards"]["computed"] == 4
    assert runs["threads"] == runs["serial"] and runs["processes"] == runs["serial"] and runs["dask"] == runs["serial"]


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


def test_a_dask_address_in_the_config_goes_to_the_task_runner(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from prefect_dask import DaskTaskRunner

    from audit.config import load_config
    from flows.audit_flow import task_runner

    orchestration = {"runner": "dask", "address": "tcp://10.0.0.5:8786"}
    config = write_config(tmp_path / "d.yaml", tiny_set, tiny_model, **{"orchestration": orchestration})
    runner = task_runner(load_config(config))
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://10.0.0.5:8786"


def _cached_shards(cache: Path) -> int:
    return len(list(cache.glob("??/" + "[0-9a-f]" * 64)))


def test_a_killed_run_started_again_recomputes_only_unfinished_shards(
    prefect_harness: None, tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from audit.pipeline import run_audit
    from flows.cli import app

    # threads pinned: the subprocess and this test process then compute with the same arithmetic (the
    # thread count is part of the shard key; other tests change this process's count)
    settings = {"explain.shard_size": 1, "explain.batch_size": 1, "explain.threads": 1, "sanity.enabled": False}
    config = write_config(tmp_path / "k.yaml", tiny_set, tiny_model, run_name="killed", **settings)
    run, cache = tmp_path / "reports" / "killed", tmp_path / "reports" / ".shard-cache"
    cli = [sys.executable, "-c", "from flows.cli import app; app()", "run", str(config)]
    started = time.monotonic()
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while _cached_shards(cache) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up, no atexit: as if the machine died
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    finished_before_kill = _cached_shards(cache)
    assert 2 <= finished_before_kill < 24 and not (run / "run.json").exists()

    again = CliRunner().invoke(app, ["run", str(config)])  # the same command: no --overwrite needed
    assert again.exit_code == 0, again.output
    info = json.loads((run / "run.json").read_text())["shards"]
    assert info["total"] == 24 and info["reused"] >= finished_before_kill and info["computed"] >= 1
    seconds = json.loads((run / "run.json").read_text())["seconds"]  # where the time went, per stage
    assert set(seconds) == {"prepare", "explain_sum_over_shards", "restored_shards", "sanity", "aggregate"}
    assert seconds["explain_sum_over_shards"] > 0 and seconds["aggregate"] > 0
    assert sum(seconds.values()) < time.monotonic() - started  # stage times, not clock readings
    assert f"reused {info['reused']} of 24 shards" in again.output

    reference = write_config(tmp_path / "r.yaml", tiny_set, tiny_model, run_name="uninterrupted", **settings)
    run_audit(reference, fresh=True)  # every shard computed
    assert _outputs(run) == _outputs(tmp_path / "reports" / "uninterrupted")


def test_fresh_recomputes_and_a_changed_file_is_not_reused(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from audit.config import load_config
    from audit.pipeline import explain_shard, prepare
    from audit.runfolder import shard_output

    data = tmp_path / "data"
    shutil.copytree(tiny_set.parent, data)
    cfg = load_config(write_config(tmp_path / "c.yaml", data / "manifest.csv", tiny_model))

    def explain_all(fresh: bool = False) -> list[bool]:
        shards = prepare(cfg, overwrite=True)
        results = [explain_shard(cfg, s, fresh) for s in shards]
        assert all(r.is_file() for r in results)
        return [json.loads(shard_output(s, "cache.json").read_text())["reused"] for s in shards]

    assert explain_all() == [False, False, False]
    first = pd.read_parquet(tmp_path / "reports" / "t" / "work" / "shard_0000.result.parquet")
    assert explain_all() == [True, True, True]
    assert first.equals(pd.read_parquet(tmp_path / "reports" / "t" / "work" / "shard_0000.result.parquet"))
    assert explain_all(fresh=True) == [False, False, False]
    image = pd.read_csv(data / "manifest.csv")["image_path"].iloc[12]  # a file of the second shard changes
    Image.open(data / image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(data / image)
    assert explain_all() == [True, False, True]
    cfg = cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"top_k": 0.1})})  # a setting changes
    assert explain_all() == [False, False, False]
    cfg = cfg.model_copy(update={"report": cfg.report.model_copy(update={"max_cases": 3})})  # one the stage ignores
    assert explain_all() == [True, True, True]


def test_a_run_in_progress_is_refused_and_a_dead_one_resumed(tmp_path: Path) -> None:
    from audit.runfolder import RunFolder, RunFolderError

    folder = RunFolder(tmp_path / "run")
    folder.claim(overwrite=False)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = json.loads(folder.owner.read_text())
        folder.owner.write_text(json.dumps({**owner, "pid": live.pid}))  # another process on this machine
        with pytest.raises(RunFolderError, match=f"run in progress \\(process {live.pid}"):
            folder.check_reuse(overwrite=False)
    finally:
        live.kill()
        live.wait()
    folder.check_reuse(overwrite=False)  # its writer is gone: resumable
    folder.info.write_text("{}")  # finished: needs --overwrite
    with pytest.raises(RunFolderError, match="pass --overwrite"):
        folder.check_reuse(overwrite=False)


def test_statistics_side_by_side_give_one_threads_tables(
    tiny_set: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subgroup CIs, disparity tests and overall CIs run on a thread pool: the tables must not move."""
    from audit import stats
    from audit.config import load_config
    from audit.pipeline import aggregate, explain_shard, prepare
    from audit.runfolder import RunFolder

    cfg = load_config(write_config(tmp_path / "s.yaml", tiny_set, tiny_model, **{"sanity.enabled": False}))
    results = [explain_shard(cfg, s) for s in prepare(cfg, overwrite=True)]
    tables = []
    for cpus in (1, 4):
        monkeypatch.setattr(stats, "usable_cpus", lambda cpus=cpus: cpus)
        summary = aggregate(cfg, results)
        folder = RunFolder(cfg.run_dir)
        tables.append((folder.subgroups.read_bytes(), folder.disparities.read_bytes(), summary["overall"]))
    assert tables[0] == tables[1]
