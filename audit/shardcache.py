"""Finished shards kept by content, so a killed or repeated run recomputes only what changed.

A shard's key is the SHA-256 of everything its outputs depend on: the model (checkpoint and, for a
factory, its source file), the shard's rows (ids, labels, attributes, row numbers), the SHA-256 of
every file those rows name, the config sections the explain stage reads, this package's source code,
the versions of the libraries it computes with, torch's thread count (it changes summation order)
and the runtime the backend chose, with the ONNX file's SHA-256. Equal keys mean equal outputs (the
explain stage is deterministic), so a cached shard is copied, not recomputed; any change to one of
these gives a new key. A shard whose files changed while it was being computed (its recorded image
hashes differ from the key's) is not stored. Entries are written to a temporary folder and renamed
into place, so a run killed while storing leaves no half entry.
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
import torch

from audit.config import AuditConfig, ModelSource
from audit.inputs import InputError, RowReader
from audit.provenance import sha256_file, versions
from audit.runfolder import atomic, shard_output

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
def _file_sha256(path: Path, identity: tuple[int, ...]) -> str:  # a changed file (see below) is hashed again
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered while its inode, size, mtime and ctime stay the same (ctime cannot
    be set back by a copy tool that restores mtime)."""
    st = path.stat()
    return _file_sha256(path, (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def model_files(src: ModelSource) -> list[Path]:
    """The files that make the model: its checkpoint or source, and a factory's source beside its checkpoint."""
    files = [src.identity_file]
    if src.kind == "factory" and src.checkpoint is not None:
        files.append(src.model_copy(update={"checkpoint": None}).identity_file)
    return files


def _files_of(reader: RowReader, row: dict) -> dict[str, str]:
    """The SHA-256 of every file the row names; a row whose files cannot be found keys on its error
    (it is excluded, and the same error gives the same exclusion)."""
    try:
        paths = reader.paths(row)
        return {column: file_sha256(path) for column, path in paths.items()}
    except (InputError, OSError) as err:
        return {"error": f"{type(err).__name__}: {err}"}


@dataclass(frozen=True)
class ShardKey:
    """A shard's content key, and the image hashes it was computed from (row -> SHA-256)."""

    key: str
    image_sha256: dict[int, str]


def shard_key(cfg: AuditConfig, rows: pd.DataFrame, runtime: dict | None = None) -> ShardKey:
    """The content key of one shard under ``cfg`` in this process (see the module docstring);
    ``runtime``: the backend the explainer chose (``explain.backend: auto`` may resolve either way)."""
    settings = json.loads(cfg.model_dump_json(exclude=set(NOT_IN_KEY)))
    reader = RowReader(cfg)
    files = [_files_of(reader, r) for r in rows.to_dict("records")]
    content = {
        "code": code_sha256(),
        "versions": {k: v for k, v in versions().items() if k != "platform"},
        "torch_threads": torch.get_num_threads(),
        "runtime": runtime,
        "model": [file_sha256(p) for p in model_files(cfg.model)],
        "coco": file_sha256(cfg.data.mask.coco) if cfg.data.mask.coco else None,
        "settings": settings,
        "rows": json.loads(rows.to_json(orient="records", date_format="iso", double_precision=15)),
        "files": files,
    }
    key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    images = {int(r): f["image_path"] for r, f in zip(rows["row"], files, strict=True) if "image_path" in f}
    return ShardKey(key, images)


@dataclass(frozen=True)
class ShardCache:
    """A folder of finished shards, one sub-folder per key."""

    root: Path

    @classmethod
    def of(cls, cfg: AuditConfig) -> ShardCache:
        return cls(cfg.orchestration.cache_dir or cfg.output_dir / ".shard-cache")

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def restore(self, key: ShardKey, shard: Path) -> bool:
        """Copy a finished shard's outputs beside ``shard`` (result last); False when not cached."""
        entry = self.entry(key.key)
        if not all((entry / kind).is_file() for kind in SHARD_FILES):
            return False
        for kind in SHARD_FILES:
            with atomic(shard_output(shard, kind)) as tmp:
                shutil.copyfile(entry / kind, tmp)
        return True

    def store(self, key: ShardKey, shard: Path) -> bool:
        """Keep the finished outputs of ``shard`` under ``key``, unless the images it read are not the ones
        the key was computed from (a file changed meanwhile); False when not stored."""
        result = pd.read_parquet(shard_output(shard, "result.parquet"))
        if len(result):
            read = dict(zip(result["row"].astype(int), result["image_sha256"], strict=True))
            if any(key.image_sha256.get(row) != sha for row, sha in read.items()):
                return False
        entry = self.entry(key.key)
        if entry.is_dir():
            return True
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{key.key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for kind in SHARD_FILES:
            shutil.copyfile(shard_output(shard, kind), tmp / kind)
        try:
            os.rename(tmp, entry)
        except OSError:  # stored meanwhile by a parallel run: theirs is equal by construction
            shutil.rmtree(tmp, ignore_errors=True)
        return True
