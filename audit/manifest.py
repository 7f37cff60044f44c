"""The audit set's manifest: read it, check every row, and account for every row.

Every row read ends in exactly one of two tables: ``included`` (usable, with absolute paths) or
``exclusions`` (with the 1-based row number and the reason). Problems with the file itself (missing
file or columns) are errors; problems with a row never stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from audit.config import AuditConfig

REQUIRED = ("image_id", "image_path", "mask_path", "label")
OPTIONAL_PATHS = ("counterfactual_path", "artifact_mask_path")
EXCLUSION_COLUMNS = ["row", "image_id", "stage", "reason"]


class ManifestError(ValueError):
    """The manifest file as a whole cannot be used."""


@dataclass
class Manifest:
    rows_read: int
    included: pd.DataFrame
    exclusions: pd.DataFrame


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            df = df.astype({c: "string" for c in df.columns}).astype(object).where(df.notna(), None)
        else:
            raise ManifestError(f"{path}: manifest must be .csv or .parquet, not {suffix!r}")
    except (pd.errors.ParserError, OSError, ValueError) as err:
        if isinstance(err, ManifestError):
            raise
        raise ManifestError(f"{path}: cannot read manifest: {err}") from None
    return df


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


def _image_size(path: Path, what: str) -> tuple[tuple[int, int] | None, str | None]:
    if not path.is_file():
        return None, f"{what} not found: {path}"
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            return img.size, None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return None, f"unreadable {what} {path.name}: {err}"


def _check_row(row: pd.Series, base: Path, cfg: AuditConfig) -> tuple[dict | None, str | None]:
    label = row["label"]
    if _blank(label) or str(label) not in cfg.data.classes:
        return None, f"unknown label {label!r} (classes: {', '.join(cfg.data.classes)})"
    for col in cfg.data.subgroups:
        if _blank(row[col]):
            return None, f"missing value for subgroup column {col!r}"
    paths = {}
    for col in ("image_path", "mask_path", *OPTIONAL_PATHS):
        if col not in row.index or (col in OPTIONAL_PATHS and _blank(row[col])):
            continue
        if _blank(row[col]):
            return None, f"empty {col}"
        paths[col] = (base / str(row[col])).resolve()
    size, err = _image_size(paths["image_path"], "image")
    if err:
        return None, err
    mask_size, err = _image_size(paths["mask_path"], "mask")
    if err:
        return None, err
    if mask_size != size:
        return None, f"mask is {mask_size[0]}x{mask_size[1]} but image is {size[0]}x{size[1]}"
    with Image.open(paths["mask_path"]) as m:
        if max(m.convert("L").getextrema()) <= cfg.data.mask_threshold:
            return None, "empty mask (no pixel above the mask threshold)"
    if "artifact_mask_path" in paths:  # may be empty: no artifact on this image
        art_size, err = _image_size(paths["artifact_mask_path"], "artifact mask")
        if err:
            return None, err
        if art_size != size:
            return None, f"artifact mask is {art_size[0]}x{art_size[1]} but image is {size[0]}x{size[1]}"
    if "counterfactual_path" in paths:
        cf_size, err = _image_size(paths["counterfactual_path"], "counterfactual image")
        if err:
            return None, err
        if cf_size != size:
            return None, "counterfactual image size differs from the image"
    out = {k: row[k] for k in row.index}
    out.update({k: str(v) for k, v in paths.items()})
    return out, None


def load_manifest(cfg: AuditConfig) -> Manifest:
    """Read and check the manifest named by the config; never drops a row silently."""
    path = cfg.data.manifest
    df = read_table(path)
    missing = [c for c in (*REQUIRED, *cfg.data.subgroups) if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    base = path.parent
    included, excluded, seen = [], [], {}
    for i, (_, row) in enumerate(df.iterrows(), start=1):
        image_id = None if _blank(row["image_id"]) else str(row["image_id"])
        if image_id is None:
            excluded.append({"row": i, "image_id": "", "stage": "manifest", "reason": "empty image_id"})
            continue
        # a multi-label manifest has one row per (image, finding)
        key = (image_id, str(row["label"])) if cfg.explain.output == "sigmoid" else image_id
        if key in seen:
            what = "image_id and label" if cfg.explain.output == "sigmoid" else "image_id"
            reason = f"duplicate {what} (first at row {seen[key]})"
            excluded.append({"row": i, "image_id": image_id, "stage": "manifest", "reason": reason})
            continue
        seen[key] = i
        rec, reason = _check_row(row, base, cfg)
        if reason:
            excluded.append({"row": i, "image_id": image_id, "stage": "manifest", "reason": reason})
        else:
            rec["row"] = i
            rec["image_id"] = image_id
            included.append(rec)
    inc = pd.DataFrame(included)
    if inc.empty:
        inc = pd.DataFrame(columns=["row", *df.columns])
    return Manifest(
        rows_read=len(df),
        included=inc.reset_index(drop=True),
        exclusions=pd.DataFrame(excluded, columns=EXCLUSION_COLUMNS),
    )
