"""A starter config from what the audit set and the model show: the first run without a hand-written YAML.

``audit init MANIFEST --model FILE`` reads the manifest (columns, which hold files, which look like the
label, the id and the subgroups; classes; a sample of image headers) and the model file (its kind,
number of outputs, input size where the file says), writes a commented config and checks it as
``audit run`` would, reading every row's headers without running the model. Every guess is written as
a comment beside the key it set, so a user can see and change it.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from audit.inputs import dicom
from audit.inputs.errors import InputError
from audit.inputs.raster import raster_extent
from audit.manifest import MALFORMED, read_table

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".gif", ".webp"}
LABEL_NAMES = ("label", "dx", "diagnosis", "class", "target", "finding", "y")
ID_NAMES = ("image_id", "id", "isic_id", "uid", "sop_instance_uid", "name", "image_name")
MASK_WORDS = ("mask", "seg", "roi", "lesion_region")
AGE_BINS = [0, 40, 65, 75, 120]  # the FDA's 65-74 and 75+ bands
MAX_GROUPS = 30
SAMPLE = 50


class StarterError(ValueError):
    """The manifest or model does not give enough to write a config."""


@dataclass
class Guess:
    columns: dict[str, str]  # standard name -> the manifest's column
    classes: list[str]
    subgroups: list[str]
    bins: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was guessed, and what was left out


def _holds_files(values: pd.Series, root: Path) -> bool:
    sample = [str(v) for v in values.dropna().head(SAMPLE)]
    if not sample:
        return False
    hits = sum(Path(v).suffix.lower() in IMAGE_SUFFIXES or (root / v).is_file() for v in sample)
    return hits >= 0.8 * len(sample)


def _named(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def guess_columns(manifest: Path) -> Guess:
    """Which manifest column is which (see the module docstring); raises StarterError where the
    manifest does not say enough."""
    df = read_table(manifest)
    df = df[df[MALFORMED].isna()].drop(columns=MALFORMED)
    if df.empty:
        raise StarterError(f"{manifest}: no readable row")
    root = manifest.parent
    files = [c for c in df.columns if _holds_files(df[c], root)]
    masks = [c for c in files if any(w in c.lower() for w in MASK_WORDS)]
    extra = {c for c in ("artifact_mask_path", "counterfactual_path") if c in files}
    images = [c for c in files if c not in masks and c not in extra]
    if not images:
        raise StarterError(f"{manifest}: no column holds image files (looked for {sorted(IMAGE_SUFFIXES)})")
    image = "image_path" if "image_path" in images else images[0]
    rest = [c for c in df.columns if c not in files]
    label = _named(rest, LABEL_NAMES)
    if label is None:
        raise StarterError(f"{manifest}: no label column (looked for {', '.join(LABEL_NAMES)}); name yours 'label'")
    ids = _named([c for c in rest if df[c].notna().all() and df[c].is_unique], ID_NAMES)
    if ids is None:
        raise StarterError(f"{manifest}: no column with one unique id per row (e.g. image_id); add one")
    columns = {"image_id": ids, "image_path": image, "label": label}
    mask = "mask_path" if "mask_path" in masks else (masks[0] if masks else None)
    if mask:
        columns["mask_path"] = mask
    columns.update({c: c for c in extra})
    notes, subgroups, bins = [], [], {}
    for col in [c for c in rest if c not in (ids, label)]:
        values = df[col].dropna()
        numeric = pd.to_numeric(values, errors="coerce")
        if "age" in col.lower() and numeric.notna().all() and values.nunique() > 10:  # years, not bands
            subgroups.append(col)
            bins[col] = [float(b) for b in AGE_BINS]
        elif 2 <= values.nunique() <= MAX_GROUPS and values.nunique() < max(3, 0.5 * len(df)):
            subgroups.append(col)
        else:
            notes.append(f"{col}: not a subgroup column ({values.nunique()} distinct values)")
    classes = sorted(df[label].dropna().astype(str).unique())
    if len(classes) < 2:
        raise StarterError(f"{manifest}: the label column {label!r} holds fewer than two classes")
    return Guess(columns, classes, subgroups, bins, notes)


def image_formats(manifest: Path, column: str, frame: int | None = None) -> Counter:
    """Formats and sizes of a sample of the images, from their headers."""
    df = read_table(manifest)
    out: Counter = Counter()
    for rel in df[column].dropna().head(SAMPLE):
        path = manifest.parent / str(rel)
        try:
            if dicom.is_dicom(path):
                w, h, _ = dicom.dicom_extent(path, frame)
                out[f"DICOM {w}x{h}"] += 1
            else:
                w, h, _ = raster_extent(path)
                out[f"{path.suffix.lstrip('.').upper() or 'raster'} {w}x{h}"] += 1
        except (InputError, OSError) as err:
            out[f"unreadable ({str(err)[:60]})"] += 1
    return out


def model_source(model: Path, arch: str | None, classes: int) -> tuple[dict, list[str]]:
    """The ``model`` section for the file, and notes on what was read from it."""
    if not model.is_file():
        raise StarterError(f"--model {model}: not found")
    if model.suffix.lower() == ".onnx":
        return {"kind": "onnx", "checkpoint": str(model.resolve())}, ["model: ONNX (by its suffix)"]
    if zipfile.is_zipfile(model) and any("/code/" in n for n in zipfile.ZipFile(model).namelist()):
        return {"kind": "torchscript", "checkpoint": str(model.resolve())}, ["model: TorchScript (it holds code/)"]
    if not arch:
        raise StarterError(
            f"--model {model}: a state_dict checkpoint; name its architecture with --arch (a torchvision name, "
            "e.g. resnet50 or densenet121)"
        )
    source = {"kind": "torchvision", "arch": arch, "checkpoint": str(model.resolve()), "num_classes": classes}
    return source, [f"model: torchvision {arch} state_dict with {classes} outputs (one per class)"]


def starter_config(manifest: Path, model: Path, arch: str | None = None, run_name: str = "my-audit") -> str:
    """The commented YAML text of a config for this manifest and model."""
    guess = guess_columns(manifest)
    source, model_notes = model_source(model, arch, len(guess.classes))
    formats = image_formats(manifest, guess.columns["image_path"])
    data: dict = {"manifest": str(manifest.resolve()), "classes": guess.classes, "subgroups": guess.subgroups}
    renamed = {std: theirs for std, theirs in guess.columns.items() if std != theirs}
    if renamed:
        data["columns"] = renamed
    if guess.bins:
        data["bins"] = guess.bins
    if "mask_path" not in guess.columns:
        data["mask"] = {"kind": "box", "box_columns": ["x0", "y0", "x1", "y1"]}
    config = {"run_name": run_name, "output_dir": "reports", "model": source, "data": data}
    notes = [
        f"columns: {', '.join(f'{k} <- {v}' for k, v in guess.columns.items())}",
        "classes: sorted by name; list them in the order of the model's outputs",
        *model_notes,
        "images (a sample of headers): " + ", ".join(f"{k} ({n})" for k, n in formats.most_common(5)),
        "explain.target_layer is 'auto' (the last spatial feature map); preprocessing uses ImageNet's mean/std at "
        "224x224: set them to what the model was trained with",
        *guess.notes,
    ]
    if "mask_path" not in guess.columns:
        notes.append("no mask column found: data.mask is a box placeholder; point it at your regions")
    header = "# Starter config written by `audit init`: check every guess below, then `audit run` this file.\n"
    return header + "".join(f"# {n}\n" for n in notes) + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
