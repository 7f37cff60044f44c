"""Scheduled audits as Prefect deployments: ``audit schedule`` registers one, a worker (or ``audit serve``) runs it.

A schedule needs a Prefect server (``prefect server start``, or a team's server with PostgreSQL): the
embedded ephemeral server cannot schedule. Each scheduled run writes a new run folder,
``<run_name>-<UTC time>``, so last week's evidence is never overwritten; unchanged shards (same model,
images and settings) come from the shard cache, so a weekly audit of an unchanged model costs little.
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from audit.config import load_config
from flows.audit_flow import scheduled_audit

PROJECT = Path(__file__).resolve().parent.parent
ENTRYPOINT = "flows/audit_flow.py:scheduled_audit"


class ScheduleError(RuntimeError):
    """The deployment cannot be created (no server, bad cron)."""


def require_server() -> str:
    url = PREFECT_API_URL.value()
    if not url:
        raise ScheduleError(
            "a schedule needs a Prefect server: start one (`prefect server start`) and point this shell at it "
            "(`export PREFECT_API_URL=http://127.0.0.1:4200/api`)"
        )
    return url


def ensure_pool(name: str) -> None:
    """Create a process work pool named ``name`` unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deployment_name(config: Path) -> str:
    return load_config(config).run_name


def parameters(config: Path) -> dict:
    return {"config_path": str(config.resolve())}


def cron_schedule(cron: str, timezone: str) -> object:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValueError as err:
        raise ScheduleError(f"--cron {cron!r} / --timezone {timezone!r}: {err}") from None


def schedule(config: Path, cron: str, pool: str = "audit", name: str | None = None, timezone: str = "UTC") -> str:
    """Register (or update) the deployment ``scheduled-focus-audit/<name>`` that audits ``config`` on ``cron`` in work
    pool ``pool``; returns its full name. The flow's code is taken from this project folder."""
    require_server()
    name = name or deployment_name(config)
    when = cron_schedule(cron, timezone)
    ensure_pool(pool)
    flow = scheduled_audit.from_source(source=str(PROJECT), entrypoint=ENTRYPOINT)
    flow.deploy(
        name=name,
        work_pool_name=pool,
        schedules=[when],
        parameters=parameters(config),
        description=f"Focus audit of {config.resolve()} on '{cron}' ({timezone})",
        tags=["focus-audit"],
        print_next_steps=False,
        ignore_warnings=True,  # the advice to use .serve for local development: `audit serve` is that
        build=False,
        push=False,
    )
    return f"{scheduled_audit.name}/{name}"


def serve(config: Path, cron: str, name: str | None = None, timezone: str = "UTC") -> None:
    """Register the deployment and run it from this process until interrupted (no work pool, no worker)."""
    require_server()
    scheduled_audit.serve(
        name=name or deployment_name(config),
        schedules=[cron_schedule(cron, timezone)],
        parameters=parameters(config),
        tags=["focus-audit"],
    )
