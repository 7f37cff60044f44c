"""The audit set's manifest: read it, check every row, and account for every row.

Every row read ends in exactly one of two tables: ``included`` (usable, with resolved paths and its
subgroup values as groups) or ``exclusions`` (1-based row number, the column and file at fault, the
reason and a hint). Problems with the manifest as a whole (missing file or columns) are errors;
problems with one row never stop the run.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audit.config import AuditConfig
from audit.inputs import InputError, RowReader, blank

EXCLUSION_COLUMNS = ["row", "image_id", "stage", "column", "file", "reason", "hint"]
MISSING_GROUP = "missing"
FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet", ".jsonl": "JSON Lines", ".ndjson": "JSON Lines"}


class ManifestError(ValueError):
    """The manifest file as a whole cannot be used."""


@dataclass
class Manifest:
    rows_read: int
    included: pd.DataFrame
    exclusions: pd.DataFrame


SHOWN_ID = 200  # an exclusion quotes at most this much of a row's image_id (the row number is exact)


def shown_id(image_id: object) -> str:
    if blank(image_id):
        return ""
    text = str(image_id)
    return text if len(text) <= SHOWN_ID else f"{text[:SHOWN_ID]}... ({len(text)} characters)"


def exclusion(row: int, image_id: object, stage: str, err: InputError) -> dict:
    """One exclusions.csv record."""
    return {
        "row": row,
        "image_id": shown_id(image_id),
        "stage": stage,
        "column": err.column,
        "file": err.file,
        "reason": err.reason,
        "hint": err.hint,
    }


def _as_text(value: object) -> object:
    if blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else (json.dumps(value) if isinstance(value, dict | list) else str(value))


MALFORMED = "__malformed__"  # the reason a record could not be parsed (None for a well-formed one)


def _bad_text(value: str) -> bool:
    """Text that came from bytes that are not UTF-8 (decoded with surrogateescape)."""
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _read_csv_records(path: Path) -> pd.DataFrame:
    """CSV records one by one (the csv module handles quoting): a record with the wrong number of
    fields, or with bytes that are not UTF-8, is kept as a malformed row, never the file's error."""
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    # the csv module's own cell limit (131,072 characters) would fail the whole file for one long cell;
    # the file is in memory anyway, so lift it here and judge long cells per row (data.max_cell_chars)
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(max(limit, len(text) + 1))
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:  # e.g. a NUL byte: the file as a whole
        raise ValueError(f"not a CSV file the csv module can parse: {err}") from None
    finally:
        csv.field_size_limit(limit)
    if not records:
        return pd.DataFrame()
    header, rows = records[0], []
    for fields in records[1:]:
        if not fields:  # a blank line is not a record
            continue
        reason = None
        if len(fields) != len(header):
            reason = f"malformed CSV record: {len(fields)} fields, the header has {len(header)}"
        elif any(_bad_text(f) for f in fields):
            reason = "malformed CSV record: bytes that are not UTF-8"
        row = dict(zip(header, fields, strict=False)) if reason is None else {}
        rows.append({**{h: row.get(h, "") for h in header}, MALFORMED: reason})
    return pd.DataFrame(rows, columns=[*header, MALFORMED])


def _read_json_lines(path: Path) -> pd.DataFrame:
    """JSON Lines records one by one: a line that is not a JSON object is kept as a malformed row."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    rows, columns = [], {}
    for line in text.splitlines():
        if not line.strip():
            continue
        reason, record = None, {}
        try:
            record = json.loads(line) if not _bad_text(line) else None
            if not isinstance(record, dict):
                reason, record = "malformed JSON Lines record: not a JSON object (or not UTF-8)", {}
        except ValueError as err:
            reason = f"malformed JSON Lines record: {err}"
        columns.update(dict.fromkeys(record))
        rows.append({**record, MALFORMED: reason})
    return pd.DataFrame(rows, columns=[*columns, MALFORMED])


def read_table(path: Path, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """The manifest as text cells (None where blank), with ``columns`` (standard name -> the
    manifest's name) renamed to the standard names. A record that cannot be parsed stays a row, with
    its reason in the ``MALFORMED`` column (None for the others)."""
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ManifestError(f"{path}: manifest must be {', '.join(sorted(FORMATS))}, not {suffix!r}")
    try:
        if suffix == ".csv":
            df = _read_csv_records(path)
        elif FORMATS[suffix] == "Parquet":
            df = pd.read_parquet(path)
        else:
            df = _read_json_lines(path)
    except (OSError, ValueError) as err:  # the file as a whole (not Parquet, unreadable)
        raise ManifestError(f"{path}: cannot read the {FORMATS[suffix]} manifest: {err}") from None
    if MALFORMED not in df:
        df[MALFORMED] = None
    reasons = df[MALFORMED].astype(object).where(df[MALFORMED].notna(), None)
    df = df.drop(columns=MALFORMED)
    df = df.astype(object).map(_as_text) if len(df.columns) else df
    df[MALFORMED] = reasons
    mapping = columns or {}
    clash = [std for std, theirs in mapping.items() if std in df.columns and std != theirs]
    if clash:
        raise ManifestError(f"{path}: data.columns renames another column to {clash}, which the manifest already has")
    absent = [theirs for theirs in mapping.values() if theirs not in df.columns]
    if absent:
        raise ManifestError(f"{path}: data.columns names {absent}, not in the manifest (found {list(df.columns)})")
    return df.rename(columns={theirs: std for std, theirs in mapping.items()})


def required_columns(cfg: AuditConfig) -> list[str]:
    cols = ["image_id", "image_path", "label"]
    if cfg.data.mask.kind in ("image", "labelmap", "dicom-seg"):
        cols.append("mask_path")
    if cfg.data.mask.kind == "box":
        cols.extend(cfg.data.mask.box_columns)
    return cols + list(cfg.data.subgroups)


def bin_label(lo: float, hi: float) -> str:
    return f"[{lo:g}, {hi:g})"


def subgroup_value(cfg: AuditConfig, column: str, raw: object) -> str:
    """The group a row belongs to in ``column``: its value, its bin, or ``missing``."""
    if blank(raw):
        if cfg.data.missing.get(column, "keep") == "keep":
            return MISSING_GROUP
        raise InputError(
            f"missing value for subgroup column {column!r}",
            column=column,
            hint=f"data.missing.{column}: keep puts such rows in a group named '{MISSING_GROUP}'",
        )
    edges = cfg.data.bins.get(column)
    if edges is None:
        return str(raw).strip()
    try:
        value = float(str(raw))
    except ValueError:
        raise InputError(
            f"{column} {raw!r} is not a number (data.bins.{column} cuts it into bands)", column=column
        ) from None
    if not math.isfinite(value) or not edges[0] <= value < edges[-1]:
        raise InputError(
            f"{column} {raw!r} is outside the bins' range {bin_label(edges[0], edges[-1])}",
            column=column,
            hint=f"widen data.bins.{column}",
        )
    i = next(k for k in range(len(edges) - 1) if value < edges[k + 1])
    return bin_label(edges[i], edges[i + 1])


def _check_lengths(row: dict, limit: int) -> None:
    """A cell longer than ``limit`` characters is this row's exclusion: a path, label or group name is
    short, and one megabyte-long group name would otherwise be copied into every table and page."""
    for column, value in row.items():
        if isinstance(value, str) and len(value) > limit:
            raise InputError(
                f"cell in column {str(column)[:80]!r} is {len(value)} characters long (limit {limit})",
                column=str(column)[:80],
                hint="data.max_cell_chars raises the limit",
            )


def _check_row(row: dict, reader: RowReader, cfg: AuditConfig) -> dict:
    label = row["label"]
    if blank(label):
        raise InputError("missing label", column="label", hint=f"one of: {', '.join(cfg.data.classes)}")
    if str(label) not in cfg.data.classes:
        raise InputError(f"unknown label {label!r} (classes: {', '.join(cfg.data.classes)})", column="label")
    groups = {col: subgroup_value(cfg, col, row[col]) for col in cfg.data.subgroups}
    paths = reader.check(row)
    return {**row, **groups, "label": str(label), **{col: str(p) for col, p in paths.items()}}


def load_manifest(cfg: AuditConfig) -> Manifest:
    """Read and check the manifest named by the config; never drops a row silently."""
    path = cfg.data.manifest
    df = read_table(path, cfg.data.columns)
    missing = [c for c in required_columns(cfg) if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)} (data.columns maps other names)"
        )
    reader = RowReader(cfg)
    included, excluded, seen = [], [], {}
    multilabel = cfg.explain.output == "sigmoid"
    for i, row in enumerate(df.to_dict("records"), start=1):
        image_id, malformed = row["image_id"], row.pop(MALFORMED)
        try:
            if malformed:
                raise InputError(malformed, hint="fix the record in the manifest file")
            _check_lengths(row, cfg.data.max_cell_chars)
            if blank(image_id):
                raise InputError("empty image_id", column="image_id")
            # a multi-label manifest has one row per (image, finding)
            key = (str(image_id), str(row["label"])) if multilabel else str(image_id)
            if key in seen:
                what = "image_id and label" if multilabel else "image_id"
                raise InputError(f"duplicate {what} (first at row {seen[key]})", column="image_id")
            seen[key] = i
            rec = _check_row(row, reader, cfg)
        except InputError as err:
            excluded.append(exclusion(i, image_id, "manifest", err))
            continue
        except Exception as err:  # a row's problem never stops the run
            excluded.append(exclusion(i, image_id, "manifest", InputError(f"unexpected {type(err).__name__}: {err}")))
            continue
        included.append({**rec, "row": i, "image_id": str(image_id)})
    inc = pd.DataFrame(included) if included else pd.DataFrame(columns=["row", *df.columns.drop(MALFORMED)])
    return Manifest(
        rows_read=len(df),
        included=inc.reset_index(drop=True),
        exclusions=pd.DataFrame(excluded, columns=EXCLUSION_COLUMNS),
    )
