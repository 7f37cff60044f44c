"""Scheduled audits against a real Prefect server: `audit schedule` creates the deployment, a worker
runs a triggered run, and the run lands in its own dated folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import write_config

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`prefect server start` on 127.0.0.1 with its own SQLite database; yields the environment that
    points a shell at it."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    env.pop("PREFECT_API_KEY", None)
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"prefect server did not start: {server.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    yield env
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


def _sh(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_scheduled_audit_runs_on_a_real_server(
    prefect_server: dict[str, str], tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    settings = {"sanity.enabled": False}
    config = write_config(tmp_path / "weekly.yaml", tiny_set, tiny_model, run_name="weekly", **settings)
    made = _sh([str(BIN / "audit"), "schedule", str(config), "--cron", "0 3 * * 1", "--pool", "audits"], prefect_server)
    assert made.returncode == 0, made.stderr
    assert "deployment scheduled-focus-audit/weekly" in made.stdout

    inspected = _sh([str(BIN / "prefect"), "deployment", "inspect", "scheduled-focus-audit/weekly"], prefect_server)
    assert "0 3 * * 1" in inspected.stdout and str(config) in inspected.stdout, inspected.stdout

    triggered = _sh([str(BIN / "prefect"), "deployment", "run", "scheduled-focus-audit/weekly"], prefect_server)
    assert triggered.returncode == 0, triggered.stderr
    worked = _sh([str(BIN / "prefect"), "worker", "start", "--pool", "audits", "--run-once"], prefect_server)
    assert worked.returncode == 0, worked.stderr[-3000:]

    runs = sorted((tmp_path / "reports").glob("weekly-*T*Z"))
    assert len(runs) == 1, worked.stderr[-3000:]
    assert (runs[0] / "report.pdf").is_file() and (runs[0] / "run.json").is_file()
    assert '"verdict"' in (runs[0] / "summary.json").read_text()


def test_a_schedule_without_a_server_says_how_to_start_one(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from typer.testing import CliRunner

    from flows.cli import app

    config = write_config(tmp_path / "c.yaml", tiny_set, tiny_model)
    with temporary_settings(updates={PREFECT_API_URL: None}):  # the embedded server only: it cannot schedule
        result = CliRunner().invoke(app, ["schedule", str(config), "--cron", "0 3 * * 1"])
    assert result.exit_code == 2 and "prefect server start" in result.output, result.output
