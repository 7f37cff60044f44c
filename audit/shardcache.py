"""Finished shards kept by content, so a killed or repeated run recomputes only what changed.

A shard's key is the SHA-256 of everything its outputs depend on: the model file, the shard's rows
(ids, labels, attributes, row numbers), the SHA-256 of every file those rows name, the config
sections the explain stage reads, and this package's own source code. Equal keys mean equal
outputs (the explain stage is deterministic), so a cached shard is copied, not recomputed; any
change to a file, a row, the model, the settings or the code gives a new key. Entries are written
to a temporary folder and renamed into place, so a run killed while storing leaves no half entry.
The cache only grows: delete the folder to reclaim space (it is never needed for correctness).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audit.config import AuditConfig
from audit.inputs import InputError, RowReader
from audit.provenance import sha256_file
from audit.runfolder import shard_output

# Per-shard outputs of the explain stage, in the order they are written: the result last, because
# its presence is what marks a shard complete.
SHARD_FILES = ("layer.json", "maps.npz", "exclusions.csv", "result.parquet")
# Config sections the explain stage does not read: changing them must not invalidate finished shards.
NOT_IN_KEY = ("run_name", "output_dir", "orchestration", "report", "stats", "sanity", "context", "thresholds")
PACKAGE = Path(__file__).resolve().parent


@functools.cache
def code_sha256() -> str:
    """SHA-256 over this package's Python sources: new code, new keys."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _file_sha256(path, st.st_size, st.st_mtime_ns)


def _files_of(reader: RowReader, row: dict) -> dict[str, str]:
    """The SHA-256 of every file the row names; a row whose files cannot be found keys on its error
    (it is excluded, and the same error gives the same exclusion)."""
    try:
        paths = reader.paths(row)
        return {column: file_sha256(path) for column, path in paths.items()}
    except (InputError, OSError) as err:
        return {"error": f"{type(err).__name__}: {err}"}


def shard_key(cfg: AuditConfig, rows: pd.DataFrame) -> str:
    """The content key of one shard under ``cfg`` (see the module docstring)."""
    settings = json.loads(cfg.model_dump_json(exclude=set(NOT_IN_KEY)))
    reader = RowReader(cfg)
    records = rows.to_dict("records")
    content = {
        "code": code_sha256(),
        "model": file_sha256(cfg.model.identity_file),
        "coco": file_sha256(cfg.data.mask.coco) if cfg.data.mask.coco else None,
        "settings": settings,
        "rows": json.loads(rows.to_json(orient="records", date_format="iso", double_precision=15)),
        "files": [_files_of(reader, r) for r in records],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.copy.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardCache:
    """A folder of finished shards, one sub-folder per key."""

    root: Path

    @classmethod
    def of(cls, cfg: AuditConfig) -> ShardCache:
        return cls(cfg.orchestration.cache_dir or cfg.output_dir / ".shard-cache")

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def restore(self, key: str, shard: Path) -> bool:
        """Copy a finished shard's outputs beside ``shard`` (result last); False when not cached."""
        entry = self.entry(key)
        if not all((entry / kind).is_file() for kind in SHARD_FILES):
            return False
        for kind in SHARD_FILES:
            _copy_atomic(entry / kind, shard_output(shard, kind))
        return True

    def store(self, key: str, shard: Path) -> None:
        """Keep the finished outputs of ``shard`` under ``key`` (a no-op when another run stored them first)."""
        entry = self.entry(key)
        if entry.is_dir():
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for kind in SHARD_FILES:
            shutil.copyfile(shard_output(shard, kind), tmp / kind)
        try:
            os.rename(tmp, entry)
        except OSError:  # stored meanwhile by a parallel run: theirs is equal by construction
            shutil.rmtree(tmp, ignore_errors=True)
