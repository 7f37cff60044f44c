"""The temporary Prefect API of a plain ``audit run``: slow to start is waited for, killed leaves none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import api_server
from tests.conftest import write_config

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux's /proc")


def _env(**extra: str) -> dict[str, str]:
    """The user's environment without a Prefect API or wait (PREFECT_HOME kept: its database is migrated)."""
    keep = ("PREFECT_HOME",)
    env = {k: v for k, v in os.environ.items() if (not k.startswith("PREFECT_") or k in keep) and k != api_server.OWNER}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _cli(config: Path, env: dict[str, str]) -> subprocess.Popen:
    cli = [sys.executable, "-c", "from flows.cli import app; app()", "run", str(config)]
    return subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _servers_of(owner: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            server = entry.name.isdigit() and api_server.APP in (entry / "cmdline").read_text(errors="replace")
            if server and api_server._environ(int(entry.name)).get(api_server.OWNER) == str(owner):
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def test_an_api_that_starts_slowly_is_waited_for(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The server is made to take 21 s before it even imports (Prefect's own wait is 20 s): the run
    still completes, because the audit waits ``orchestration.api_startup_seconds``."""
    slow = tmp_path / "slow_site"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import os, time\nif os.environ.get('PREFECT__SERVER_EPHEMERAL') == '1':\n    time.sleep(21)\n"
    )
    config = write_config(tmp_path / "slow.yaml", tiny_set, tiny_model, run_name="slow", **{"sanity.enabled": False})
    env = _env(PYTHONPATH=os.pathsep.join([str(slow), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = _cli(config, env)
    output = proc.communicate(timeout=540)[0].decode()
    assert proc.returncode == 0, output[-3000:]
    assert (tmp_path / "reports" / "slow" / "run.json").is_file()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_run_leaves_no_server(how: str, tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "k.yaml", tiny_set, tiny_model, run_name="k", **{"sanity.enabled": False})
    proc = _cli(config, _env())
    deadline = time.monotonic() + 240
    while not _servers_of(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    servers = _servers_of(proc.pid)
    assert servers, f"no server seen: {proc.communicate()[0].decode()[-2000:]}"
    os.kill(proc.pid, getattr(signal, how))  # the run only, not its process group
    proc.wait(timeout=60)
    if how == "SIGKILL":  # nothing in the run could react: the next audit command finds the orphan
        assert api_server.orphaned_servers() == servers
        assert api_server.stop_orphaned_servers() == servers
    deadline = time.monotonic() + 30
    while _servers_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _servers_of(proc.pid) == [] and api_server.orphaned_servers() == []
