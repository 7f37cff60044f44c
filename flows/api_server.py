"""The temporary Prefect API a plain ``audit run`` starts: a generous start-up wait, and none left behind.

Prefect starts its ephemeral API as a child process and stops it at exit. A run killed outright
(SIGKILL, the machine's OOM killer) never reaches that, and the server lives on. Each server this
command starts carries the pid of the ``audit`` process that started it in its environment; the next
``audit`` command stops every such server whose owner is gone (Linux, same user). SIGTERM is turned
into a normal exit, so ``kill`` stops the server with the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

OWNER = "AUDIT_API_OWNER_PID"  # set in this process's environment, inherited by the server it starts
STARTUP = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
APP = "prefect.server.api.server:create_app"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):  # a zombie has exited
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def orphaned_servers() -> list[int]:
    """Pids of this user's ephemeral Prefect servers started by an ``audit`` process that is gone."""
    proc, found = Path("/proc"), []
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            if entry.stat().st_uid != os.getuid() or APP not in command:
                continue
            owner = _environ(int(entry.name)).get(OWNER, "")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner)):
            found.append(int(entry.name))
    return sorted(found)


def stop_orphaned_servers(wait: float = 5.0) -> list[int]:
    """Stop (TERM, then KILL) every orphaned server; returns their pids."""
    pids = orphaned_servers()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return pids


def _exit_on_term(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # runs atexit, where Prefect stops its server


def prepare(startup_seconds: int) -> None:
    """Before Prefect is imported: the start-up wait, the owner mark, ``PREFECT_HOME`` created, no
    orphans, SIGTERM as an exit."""
    os.environ.setdefault(STARTUP, str(startup_seconds))
    os.environ[OWNER] = str(os.getpid())
    if home := os.environ.get("PREFECT_HOME"):  # Prefect's server cannot open its database in a missing folder
        with contextlib.suppress(OSError):
            Path(home).expanduser().mkdir(parents=True, exist_ok=True)
    stop_orphaned_servers()
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, _exit_on_term)


def startup_failure(err: BaseException) -> str | None:
    """A one-line explanation when ``err`` is Prefect's ephemeral API not coming up, else None."""
    text = str(err)
    if "ephemeral Prefect API server" not in text:
        return None
    waited = os.environ.get(STARTUP, "?")
    return (
        f"Prefect's temporary API server did not answer within {waited} s (a loaded machine?). Raise "
        "orchestration.api_startup_seconds, or start one server for all runs (`prefect server start`) and set "
        f"PREFECT_API_URL. Prefect said: {' '.join(text.split())[:300]}"
    )
