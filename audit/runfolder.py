"""A run folder (``<output_dir>/<run_name>``) and who may replace it.

An audit's outputs can be evidence in a compliance file, so a second run never silently replaces the
first: the same ``run_name`` is refused unless the caller asks to overwrite, and even then only a
folder this tool wrote (it carries a marker file) is cleared, and only of the files it writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MARKER = ".audit-run"
WORK = "work"
OUTPUTS = (
    "images.parquet",
    "subgroups.csv",
    "disparities.csv",
    "exclusions.csv",
    "run.json",
    "report.html",
    "report.pdf",
)


class RunFolderError(ValueError):
    """The run folder cannot be (re)used."""


def claim(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` this run's: create it, or clear a previous run's files from it when
    ``overwrite``; refuse otherwise."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / MARKER).is_file():
            raise RunFolderError(
                f"{run_dir} exists and was not written by an audit run; choose another run_name or output_dir"
            )
        if not overwrite:
            raise RunFolderError(
                f"{run_dir} already holds an audit run; pass --overwrite to replace it, or choose another run_name"
            )
        shutil.rmtree(run_dir / WORK, ignore_errors=True)
        for name in OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
    (run_dir / WORK).mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).write_text("written by the focus audit; `audit run --overwrite` may replace its files\n")
