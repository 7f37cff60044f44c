"""The ``audit`` command line: ``audit run CONFIG.yaml``, ``audit check``, ``audit report RUN_DIR``, ``audit demo``.

It lives beside the flows (not in the library) because running an audit means running its flow;
the ``audit`` package itself never imports Prefect.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

MAX_MESSAGE = 2000  # an error line quotes the input at fault, never megabytes of it


class _Audit(typer.Typer):
    """The command line's last line of defence: whatever a command did not expect becomes one line on
    stderr and exit code 2 ("could not run"), never a traceback."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as err:
            message = " ".join(f"{type(err).__name__}: {err}".split())
            if len(message) > MAX_MESSAGE:
                message = message[:MAX_MESSAGE] + f"... ({len(message) - MAX_MESSAGE} more characters)"
            typer.echo(f"error: {message}", err=True)
            raise SystemExit(2) from None


app = _Audit(
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
        folder = RunFolder(cfg.run_dir)
        folder.check_reuse(overwrite)
    except problems as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    from flows import api_server

    api_server.prepare(cfg.orchestration.api_startup_seconds)
    kept = folder.foreign_files()
    if kept:
        shown = ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
        typer.echo(f"kept {len(kept)} file(s) in {folder.path} that no audit wrote (never removed): {shown}")
    from flows.audit_flow import run_flow

    try:
        result = run_flow(config, overwrite, fresh)
    except problems as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except RuntimeError as err:
        if (why := api_server.startup_failure(err)) is None:
            raise
        typer.echo(f"error: {why}", err=True)
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
    fresh: Annotated[bool, typer.Option(help="recompute every shard instead of reusing cached ones")] = False,
) -> None:
    """Run the audit flow and print the verdict and report paths. A run that was killed is resumed by
    running the same command again: finished shards are reused."""
    result = _run(config, overwrite, fresh)
    typer.echo(f"verdict: {result['verdict'].upper()}")
    _explain(result)
    typer.echo(f"HTML report: {result['html']}")
    typer.echo(f"PDF packet:  {result['pdf']}")


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="audit config (YAML)")],
    strict: Annotated[bool, typer.Option(help="treat 'warn' as failing")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run with the same run_name")] = False,
    fresh: Annotated[bool, typer.Option(help="recompute every shard instead of reusing cached ones")] = False,
    baseline: Annotated[
        Path | None, typer.Option(help="a finished run to compare with: fail when any subgroup got significantly worse")
    ] = None,
) -> None:
    """Run the audit as a release gate: exit 0 pass, 1 fail, 2 could not run ('warn' is 0 unless --strict).
    With --baseline, also 1 when any subgroup is significantly worse than in the baseline run."""
    if baseline is not None:  # a wrong baseline is found before the audit runs, not after
        _check_baseline(baseline, config)
    try:
        result = _run(config, overwrite, fresh)
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
    if baseline is not None:
        failing = _against_baseline(baseline, Path(result["run_dir"])) or failing
    raise typer.Exit(1 if failing else 0)


def _finished_run(path: Path) -> object:
    from audit.runfolder import load_run

    try:
        return load_run(path)
    except Exception as err:  # not a run, or one this version cannot read: "could not run", never "worse"
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _check_baseline(baseline: Path, config: Path) -> None:
    from audit.config import load_config

    _finished_run(baseline)
    try:
        run_dir = load_config(config).run_dir
    except Exception:
        return  # the audit itself reports a broken config
    if run_dir.resolve() == baseline.resolve():
        typer.echo(f"error: --baseline {baseline} is this audit's own run folder: it would be replaced", err=True)
        raise typer.Exit(2)


def _comparison_dir(a: Path, b: Path) -> Path:
    return b.resolve().parent / f"{b.resolve().name}-vs-{a.resolve().name}"


def _compare(a: Path, b: Path, out: Path | None) -> tuple[object, dict[str, str]]:
    from audit.comparison import compare_runs
    from audit.report import render_comparison

    comparison = compare_runs(_finished_run(a), _finished_run(b))
    files = render_comparison(comparison, out or _comparison_dir(a, b))
    s = comparison.summary()
    typer.echo(f"verdict: {s['verdict_a'].upper()} -> {s['verdict_b'].upper()}")
    pairing = "paired by image (same audit set)" if s["same_images"] else "unpaired (different audit sets)"
    typer.echo(f"compared per subgroup, {pairing}; {s['correction']}-adjusted, alpha {s['alpha']} one-sided")
    for w in s["worse"]:
        typer.echo(f"  worse: {w['measure']} in {w['column']} = {w['group']}: change {w['change']:+.3f} "
                   f"(adjusted p {w['p_worse_adjusted']:.2g})")  # fmt: skip
    for b_ in s["better"]:
        typer.echo(f"  better: {b_['measure']} in {b_['column']} = {b_['group']}: change {b_['change']:+.3f}")
    typer.echo(f"  images: {s['became_flagged']} became flagged, {s['no_longer_flagged']} no longer flagged")
    typer.echo(f"comparison: {files['html']}")
    typer.echo(f"table:      {files['table']}")
    return comparison, files


def _against_baseline(baseline: Path, run_dir: Path) -> bool:
    """True when any subgroup measure is significantly worse than in the baseline run."""
    typer.echo(f"\nagainst the baseline {baseline}:")
    try:
        comparison, _ = _compare(baseline, run_dir, None)
    except typer.Exit:
        raise
    except Exception as err:  # a comparison that cannot be made is "could not run", never "pass"
        typer.echo(f"error: the comparison with {baseline} could not run: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from None
    return bool(len(comparison.worse))


@app.command()
def diff(
    run_a: Annotated[Path, typer.Argument(help="the baseline run folder (e.g. model v1)")],
    run_b: Annotated[Path, typer.Argument(help="the run folder to compare with it (e.g. model v2)")],
    out: Annotated[Path | None, typer.Option(help="output folder (default: <RUN_B>-vs-<RUN_A> beside RUN_B)")] = None,
) -> None:
    """Compare two finished runs per subgroup: change in focus, accuracy, outside dependence and flagged
    share with CIs and tests (paired by image on the same audit set), flag changes, verdict change.
    Writes comparison.csv/.json, flag_changes.csv, comparison.html and comparison.pdf; exit 1 when any
    subgroup got significantly worse, else 0 (2: a folder is not a finished run)."""
    try:
        comparison, _ = _compare(run_a, run_b, out)
    except typer.Exit:
        raise
    except Exception as err:  # exit 1 means "worse": a comparison that failed is 2
        typer.echo(f"error: the comparison could not run: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(1 if len(comparison.worse) else 0)


def _deployments() -> ModuleType:
    """flows.deployments, imported only for the commands that need Prefect's client."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows import deployments

    return deployments


@app.command()
def schedule(
    config: Annotated[Path, typer.Argument(help="audit config (YAML)")],
    cron: Annotated[str, typer.Option(help='when to run, a cron line, e.g. "0 3 * * 1" (Mondays 03:00)')],
    pool: Annotated[str, typer.Option(help="Prefect work pool (a process pool is created if missing)")] = "audit",
    name: Annotated[str | None, typer.Option(help="deployment name (default: the config's run_name)")] = None,
    timezone: Annotated[str, typer.Option(help="time zone of the cron line")] = "UTC",
) -> None:
    """Create or update a Prefect deployment that runs this audit on a schedule (needs a Prefect server;
    a worker on the pool runs it: `prefect worker start --pool audit`). Each run writes its own folder,
    <run_name>-<UTC time>."""
    d = _deployments()
    try:
        full = d.schedule(config, cron, pool, name, timezone)
    except d.ScheduleError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"deployment {full} runs {config} on '{cron}' ({timezone}) in work pool '{pool}'")
    typer.echo(f"start a worker to run it:   prefect worker start --pool {pool}")
    typer.echo(f"run it once now:            prefect deployment run '{full}'")


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="audit config (YAML)")],
    cron: Annotated[str, typer.Option(help='when to run, a cron line, e.g. "0 3 * * 1"')],
    name: Annotated[str | None, typer.Option(help="deployment name (default: the config's run_name)")] = None,
    timezone: Annotated[str, typer.Option(help="time zone of the cron line")] = "UTC",
) -> None:
    """Run this audit on a schedule from this process (no work pool or worker; needs a Prefect server);
    stops with Ctrl-C."""
    d = _deployments()
    try:
        d.serve(config, cron, name, timezone)
    except d.ScheduleError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def accept(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder, e.g. reports/<run_name>")],
    candidate: Annotated[int, typer.Argument(help="the discovered candidate's number (report, discovery.csv)")],
    out: Annotated[Path, typer.Option(help="a new, empty folder inside the data root for the masks")],
) -> None:
    """Write a discovered candidate's derived regions as artifact masks (one PNG per member image and
    artifact_masks.csv), so the next audit tests it as an annotated artifact."""
    from audit.discovery import accept as write_masks

    try:
        table = write_masks(run_dir, candidate, out)
    except Exception as err:  # not a run, no such candidate, unreadable images: one line, exit 2
        typer.echo(f"error: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"artifact masks: {table} (merge its artifact_mask_path column into the manifest by image_id)")


@app.command()
def init(
    manifest: Annotated[Path, typer.Argument(help="the audit set's manifest (CSV, Parquet or JSON Lines)")],
    model: Annotated[Path, typer.Option(help="the model file: .onnx, TorchScript, or a state_dict with --arch")],
    arch: Annotated[str | None, typer.Option(help="torchvision architecture of a state_dict checkpoint")] = None,
    out: Annotated[Path, typer.Option(help="where to write the config")] = Path("audit.yaml"),
    run_name: Annotated[str, typer.Option(help="the run folder's name under reports/")] = "my-audit",
    force: Annotated[bool, typer.Option(help="replace an existing config file")] = False,
) -> None:
    """Write a commented starter config from what the manifest and the model show, then check it as
    `audit run` would (config, model against config, every row's headers) without running the model."""
    from audit.config import ConfigError, load_config
    from audit.manifest import ManifestError, load_manifest
    from audit.models import ModelError
    from audit.pipeline import preflight
    from audit.starter import StarterError, starter_config

    if out.exists() and not force:
        typer.echo(f"error: {out} exists; pass --force to replace it, or --out another file", err=True)
        raise typer.Exit(2)
    try:
        text = starter_config(manifest, model, arch, run_name)
    except StarterError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    out.write_text(text)
    typer.echo(f"wrote {out}:\n")
    typer.echo(text)
    try:
        cfg = load_config(out)
        preflight(cfg)
        checked = load_manifest(cfg)
    except (ConfigError, ManifestError, ModelError) as err:
        typer.echo(f"error: the starter config does not check yet (edit {out}): {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"checked as `audit run` would: {checked.rows_read} rows, {len(checked.included)} to audit, "
               f"{len(checked.exclusions)} excluded")  # fmt: skip
    for reason, n in checked.exclusions["reason"].value_counts().head(5).items():
        typer.echo(f"  {n:5d}  {reason[:110]}")
    typer.echo(f"next: .venv/bin/audit run {out}")


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
