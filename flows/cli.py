"""The ``audit`` command line: ``audit run CONFIG.yaml``, ``audit check``, ``audit report RUN_DIR``, ``audit demo``.

It lives beside the flows (not in the library) because running an audit means running its flow;
the ``audit`` package itself never imports Prefect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Audit whether an image classifier looks at the region that should matter.",
)


def _run(config: Path, overwrite: bool, fresh: bool = False) -> dict:
    """Validate everything that can be checked up front (config, model against config, run folder),
    then run the flow. A problem found up front is one message and exit code 2, with no traceback."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from audit.config import ConfigError, load_config
    from audit.manifest import ManifestError
    from audit.models import ModelError
    from audit.pipeline import preflight
    from audit.runfolder import RunFolder, RunFolderError

    problems = (ConfigError, ManifestError, ModelError, RunFolderError)
    try:
        cfg = load_config(config)
        preflight(cfg)
        RunFolder(cfg.run_dir).check_reuse(overwrite)
    except problems as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    from flows.audit_flow import run_flow

    try:
        result = run_flow(config, overwrite, fresh)
    except problems as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    shards = result["shards"]
    if shards["reused"]:
        typer.echo(
            f"reused {shards['reused']} of {shards['total']} shards from the shard cache {shards['cache']} "
            "(same model, files, settings and code; --fresh recomputes them)"
        )
    return result


def _explain(result: dict) -> None:
    for reason in result["reasons"]:
        typer.echo(f"  - {reason}")
    for check in result.get("checks", []):
        typer.echo(f"  ok: {check}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="audit config (YAML)")],
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run with the same run_name")] = False,
) -> None:
    """Run the audit flow and print the verdict and report paths."""
    result = _run(config, overwrite)
    typer.echo(f"verdict: {result['verdict'].upper()}")
    _explain(result)
    typer.echo(f"HTML report: {result['html']}")
    typer.echo(f"PDF packet:  {result['pdf']}")


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="audit config (YAML)")],
    strict: Annotated[bool, typer.Option(help="treat 'warn' as failing")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run with the same run_name")] = False,
) -> None:
    """Run the audit as a release gate: exit 0 pass, 1 fail, 2 could not run ('warn' is 0 unless --strict)."""
    try:
        result = _run(config, overwrite)
    except typer.Exit:
        raise
    except Exception as err:  # anything that stops the audit means "could not run", never "pass"
        typer.echo(f"error: the audit could not run: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from None
    verdict = result["verdict"]
    typer.echo(f"verdict: {verdict.upper()}")
    _explain(result)
    typer.echo(f"HTML report: {result['html']}")
    failing = verdict == "fail" or (strict and verdict == "warn")
    raise typer.Exit(1 if failing else 0)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a finished run folder, e.g. reports/<run_name>")]) -> None:
    """Render report.html and report.pdf again from a finished run folder alone (no model, no images)."""
    from audit.report import render_report
    from audit.runfolder import RunFolderError

    try:
        outputs = render_report(run_dir)
    except RunFolderError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"HTML report: {outputs['html']}")
    typer.echo(f"PDF packet:  {outputs['pdf']}")


@app.command()
def demo(
    cache: Annotated[Path, typer.Option(help="where generated data and the models are cached")] = Path(".cache/demo"),
    reports: Annotated[Path, typer.Option(help="output folder")] = Path("reports"),
    twin: Annotated[str, typer.Option(help="planted, clean, or both")] = "both",
) -> None:
    """Audit the planted-shortcut model and its clean twin on the same generated audit set (the first
    run generates the data and trains both models), print verdicts and report paths."""
    from audit.examples.demo import TWINS, prepare_demo
    from audit.examples.evidence import counterfactual_summary

    if twin not in (*TWINS, "both"):
        raise typer.BadParameter(f"--twin must be one of {', '.join((*TWINS, 'both'))}")
    for name in TWINS if twin == "both" else (twin,):
        title = {
            "planted": "model trained where ink marks melanoma",
            "clean": "clean twin: ink independent of the label",
        }
        typer.echo(f"\n=== {name}: {title[name]}")
        config = prepare_demo(cache, reports, twin=name)
        typer.echo(f"config: {config}")
        run(config, overwrite=True)  # the demo's own folders, regenerated on every call
        typer.echo("\ncounterfactual check (the same audit images with the ink removed):")
        typer.echo(counterfactual_summary(reports / TWINS[name][3] / "images.parquet"))
