"""A run folder (``<output_dir>/<run_name>``): its layout, who may replace it, and how to read it.

This module is the one place that knows the file names of a run. The pipeline writes through
:class:`RunFolder`; the report, the CLI and comparisons read a finished run with :func:`load_run`, so a
report can be rendered again from the folder alone (no model, no images, no shard files).

An audit's outputs can be evidence in a compliance file, so a second run never silently replaces the
first: the same ``run_name`` is refused unless the caller asks to overwrite, and even then only a
folder this tool wrote (it carries a marker file) is cleared, and only of the files it wrote: each
finished run lists them in ``written.json`` (written atomically as its last step); a run killed before
that is cleared of the files its stages name (shards, per-shard outputs, gallery images). Anything else
in the folder, ``cases/`` and ``work/`` is kept, and named.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import AuditConfig, parse_config
from audit.tables import read_csv

MARKER = ".audit-run"
WORK = "work"
WRITTEN = "written.json"
# what a run's stages write under work/ and cases/ (a run killed before written.json is cleared of these)
OWN_PATTERNS = (
    f"{WORK}/shard_[0-9][0-9][0-9][0-9].*",
    f"{WORK}/counts.json",
    f"{WORK}/timings.json",
    f"{WORK}/.owner.json",
    f"{WORK}/.kept.json",
    f"{WORK}/exclusions_manifest.csv",
    f"{WORK}/sanity.csv",
    f"{WORK}/sanity.json",
    f"{WORK}/.*.tmp",
    "cases/row_[0-9][0-9][0-9][0-9][0-9][0-9].jpg",
    "cases/.*.tmp",
    ".*.tmp",
)


def shard_output(shard: Path, kind: str) -> Path:
    """``work/shard_0003.parquet`` -> ``work/shard_0003.<kind>`` (result.parquet, exclusions.csv, maps.npz ...)."""
    return shard.with_name(shard.name.split(".")[0] + "." + kind)


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """Write to a temporary file beside ``path`` and rename it into place only when writing succeeded."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RunFolderError(ValueError):
    """The run folder cannot be (re)used or read."""


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run's files."""

    path: Path

    @property
    def work(self) -> Path:  # intermediate files of the stages (shards, per-shard outputs)
        return self.path / WORK

    images = property(lambda self: self.path / "images.parquet")  # one row per audited image
    subgroups = property(lambda self: self.path / "subgroups.csv")  # the disaggregated table
    disparities = property(lambda self: self.path / "disparities.csv")  # every subgroup test
    exclusions = property(lambda self: self.path / "exclusions.csv")  # every row not audited, with why
    summary = property(lambda self: self.path / "summary.json")  # verdict, reasons, overall numbers
    info = property(lambda self: self.path / "run.json")  # provenance: config, hashes, versions, times
    config = property(lambda self: self.path / "config.json")  # the config as run (paths resolved)
    maps = property(lambda self: self.path / "maps.npz")  # every image's map at the layer's resolution
    cases = property(lambda self: self.path / "cases")  # gallery images (image | map | region)
    cases_index = property(lambda self: self.path / "cases.json")  # gallery sections and their rows
    sanity = property(lambda self: self.path / "sanity.csv")  # the randomisation cascade, one row per step
    discovery = property(lambda self: self.path / "discovery.csv")  # shortcut candidates found without annotations
    html = property(lambda self: self.path / "report.html")
    pdf = property(lambda self: self.path / "report.pdf")

    def included_rows(self) -> pd.DataFrame:
        """The manifest rows the run let through, with their file paths, from its shard files."""
        shards = sorted(self.work.glob("shard_????.parquet"))
        return pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)

    def case_image(self, row: int) -> Path:
        return self.cases / f"row_{row:06d}.jpg"

    @property
    def written(self) -> Path:  # every file this run wrote, relative paths: what --overwrite may remove
        return self.path / WRITTEN

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every file an audit writes at the top of the folder."""
        return (self.images, self.subgroups, self.disparities, self.exclusions, self.summary, self.info,
                self.config, self.maps, self.cases_index, self.sanity, self.discovery, self.html,
                self.pdf)  # fmt: skip

    @property
    def timings(self) -> Path:  # seconds per stage, for run.json: {"prepare", "sanity", "aggregate"}
        return self.work / "timings.json"

    def record_time(self, stage: str, seconds: float) -> None:
        """Add one stage's wall time (the stages run one after another; shards keep their own). Never
        raises: a timing must not replace the error of the stage it timed."""
        try:
            times = json.loads(self.timings.read_text()) if self.timings.is_file() else {}
            times[stage] = round(seconds, 2)
            with atomic(self.timings) as tmp:
                tmp.write_text(json.dumps(times))
        except (OSError, ValueError):
            return

    @property
    def owner(self) -> Path:  # which process is writing the run: {"pid", "host"}
        return self.work / ".owner.json"

    def unfinished(self) -> bool:
        """An audit started here and never finished (killed, crashed): it has the marker but no run.json."""
        return (self.path / MARKER).is_file() and not self.info.is_file()

    def running_elsewhere(self) -> int | None:
        """The pid of another live process on this machine that is writing this run, else None."""
        try:
            owner = json.loads(self.owner.read_text())
        except (OSError, ValueError):
            return None
        pid = owner.get("pid")
        if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
            return None
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def check_reuse(self, overwrite: bool) -> None:
        """Refuse to reuse the folder unless it is empty, holds an unfinished audit run that no live process
        on this machine is writing (started again, it resumes: finished shards come from the shard
        cache), or holds a finished one (it carries the marker) and ``overwrite`` is asked for. A folder
        without the marker was not written by an audit, whatever files it holds (a stray ``run.json``
        included)."""
        if self.unfinished() and (pid := self.running_elsewhere()) is not None:
            raise RunFolderError(f"{self.path} is being written by a run in progress (process {pid} on this machine)")
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a folder; choose another run_name or output_dir")
        if not self.path.exists() or not any(self.path.iterdir()) or self.unfinished():
            return
        if not (self.path / MARKER).is_file():
            raise RunFolderError(
                f"{self.path} exists and was not written by an audit run (it has no {MARKER} marker); choose "
                "another run_name or output_dir"
            )
        if not overwrite:
            raise RunFolderError(
                f"{self.path} already holds an audit run; pass --overwrite to replace it, or choose another run_name"
            )

    def _files(self) -> list[str]:
        """Every file (and symlink) under the folder, relative, POSIX-style; symlinked folders not entered."""
        out = []
        for top, dirs, files in os.walk(self.path):
            base = Path(top).relative_to(self.path)
            out += [(base / f).as_posix() for f in files]
            out += [(base / d).as_posix() for d in dirs if (Path(top) / d).is_symlink()]
        return sorted(out)

    def own_files(self) -> list[str]:
        """The files an earlier run wrote here: those its ``written.json`` lists, else (a run killed
        before it finished) those its stages name (``OWN_PATTERNS``) and the top-level outputs."""
        try:
            listed = json.loads(self.written.read_text())["files"]
            if isinstance(listed, list) and all(isinstance(f, str) for f in listed):
                return sorted({*listed, WRITTEN})
        except (OSError, ValueError, KeyError, TypeError):
            pass
        names = {f.name for f in self.outputs} | {MARKER, WRITTEN}
        return [f for f in self._files() if f in names or any(fnmatch.fnmatchcase(f, p) for p in OWN_PATTERNS)]

    def foreign_files(self) -> list[str]:
        """What is in the folder that no audit run wrote: kept by :meth:`claim`, and named."""
        own = set(self.own_files()) if (self.path / MARKER).is_file() else set()
        return [f for f in self._files() if f not in own] if self.path.is_dir() else []

    def claim(self, overwrite: bool) -> list[str]:
        """Make the folder this run's: create it, or remove an earlier run's own files from it when it is
        unfinished or ``overwrite`` is asked for; refuse otherwise (:meth:`check_reuse`). Returns the
        files kept because no audit wrote them (recorded in ``work/.kept.json``)."""
        self.check_reuse(overwrite)
        root = self.path.resolve() if self.path.exists() else None
        for rel in self.own_files() if root is not None else []:
            target = self.path / rel
            inside = target.parent.resolve()
            if (inside == root or root in inside.parents) and (target.is_file() or target.is_symlink()):
                target.unlink()
        for folder in (self.cases, self.work):
            with contextlib.suppress(OSError):  # kept when something the audit did not write is in it
                folder.rmdir()
        kept = self.foreign_files()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / ".kept.json").write_text(json.dumps(kept))
        self.owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        (self.path / MARKER).write_text("written by the focus audit; `audit run --overwrite` may replace its files\n")
        return kept

    def record_written(self) -> None:
        """List every file this run wrote (all but those kept at the claim), atomically: the run's last
        step, and what the next ``--overwrite`` may remove."""
        try:
            kept = set(json.loads((self.work / ".kept.json").read_text()))
        except (OSError, ValueError):
            kept = set()
        files = [f for f in self._files() if f not in kept and f != WRITTEN]
        with atomic(self.written) as tmp:
            tmp.write_text(json.dumps({"files": files}, indent=0))


@dataclass
class Run:
    """A finished run, read from its folder."""

    folder: RunFolder
    config: AuditConfig
    summary: dict
    info: dict
    images: pd.DataFrame
    subgroups: pd.DataFrame
    disparities: pd.DataFrame
    exclusions: pd.DataFrame
    sanity: pd.DataFrame | None
    discovery: pd.DataFrame | None = None
    cases: list[dict] = field(default_factory=list)

    @cached_property
    def maps(self) -> dict[int, np.ndarray]:
        """Maps keyed by manifest row, at the explained layer's resolution."""
        with np.load(self.folder.maps) as z:
            return dict(zip(z["rows"].tolist(), z["maps"].astype(np.float32), strict=True))


def load_run(path: Path | str) -> Run:
    """Read a finished run; names the files that are missing when it is not one."""
    folder = RunFolder(Path(path))
    if not folder.path.is_dir():
        raise RunFolderError(f"{folder.path}: no such run folder")
    needed = (folder.images, folder.subgroups, folder.exclusions, folder.summary, folder.info, folder.config)
    missing = [f.name for f in needed if not f.is_file()]
    if missing:
        raise RunFolderError(f"{folder.path} is not a finished audit run: missing {', '.join(missing)}")
    config = parse_config(json.loads(folder.config.read_text()), folder.path, str(folder.config))
    text = {c: str for c in ("column", "group", "reference", "explained", "status", "note")}
    try:
        disparities = read_csv(folder.disparities, dtype=text, keep_default_na=False, na_values=[""])
    except (pd.errors.EmptyDataError, FileNotFoundError):  # no group could be compared with a reference
        disparities = pd.DataFrame()
    subgroups = read_csv(folder.subgroups, dtype=text, keep_default_na=False, na_values=[""])
    if "note" in subgroups:
        subgroups["note"] = subgroups["note"].fillna("")
    return Run(
        folder=folder,
        config=config,
        summary=json.loads(folder.summary.read_text()),
        info=json.loads(folder.info.read_text()),
        images=pd.read_parquet(folder.images),
        subgroups=subgroups,
        disparities=disparities,
        exclusions=read_csv(folder.exclusions, dtype=str, keep_default_na=False),
        sanity=pd.read_csv(folder.sanity) if folder.sanity.is_file() else None,
        discovery=_read_discovery(folder.discovery),
        cases=json.loads(folder.cases_index.read_text()) if folder.cases_index.is_file() else [],
    )


def _read_discovery(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return read_csv(path, dtype={"what": str, "concentrated_in": str, "exemplar_rows": str}, keep_default_na=False,
                        na_values=[""])  # fmt: skip
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
