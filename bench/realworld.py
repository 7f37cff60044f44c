"""A planted-shortcut world built from real images: PH2 dermoscopy lesions with their real masks, and
real HAM10000 ink markings (Katsch et al. 2022's extracted artefacts) blended outside the lesion at one
site. Used by ``bench/validity.py`` when ``../shared/data`` is present (never copied into the repo).

Each sample is a PH2 image (train and audit use disjoint PH2 images), flipped or turned at random,
centre-cropped to a square and resized; the label is PH2's clinical diagnosis (melanoma or not). In
the shortcut site a marking template (purple ink on white) is multiplied onto the skin in one corner,
away from the grown lesion, at the rates of the split's spec; the same sample without it is the
counterfactual rendering, and the template's footprint is the artifact mask. Deterministic per
(seed, index).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from audit.examples.synth import AGE_BANDS, SEXES, SITES, ShortcutSpec, run_jobs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ("nevus", "melanoma")


def available() -> str | None:
    """None when the real material is here, else why not."""
    needed = [DATA / "ph2" / "ph2_labels.csv", DATA / "ham10000" / "artefacts" / "meta.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    return f"real test material missing: {', '.join(missing)}" if missing else None


def _ph2(split: str) -> pd.DataFrame:
    """PH2 images of one split: 70 % of each class for training, the rest for the audit (by id order)."""
    labels = pd.read_csv(DATA / "ph2" / "ph2_labels.csv").sort_values("image_id")
    labels["melanoma"] = labels["clinical_diagnosis"] == "melanoma"
    parts = []
    for _, g in labels.groupby("melanoma"):
        cut = round(0.7 * len(g))
        parts.append(g.iloc[:cut] if split.startswith("train") else g.iloc[cut:])
    return pd.concat(parts).reset_index(drop=True)


def _markings() -> list[np.ndarray]:
    """The ink marking templates as a multiplicative factor (1 where the template is white paper)."""
    meta = json.loads((DATA / "ham10000" / "artefacts" / "meta.json").read_text())["artefacts"]
    out = []
    for a in meta:
        if a["class"] != "marking":
            continue
        folder = DATA / "ham10000" / "artefacts" / a["artefact_folder"]
        for f in sorted(folder.glob("*.png"))[:1]:
            out.append(np.asarray(Image.open(f).convert("RGB"), np.float64) / 255)
    return out


def _square(path: Path, size: int, resample: int) -> np.ndarray:
    im = Image.open(path)
    w, h = im.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(im.crop(box).resize((size, size), resample))


def _stamp(rng: np.random.Generator, template: np.ndarray, lesion: np.ndarray, size: int) -> np.ndarray:
    """The marking as a (size, size, 3) factor in one corner, scaled and turned at random, zero effect
    within the grown lesion."""
    side = max(8, round(size * rng.uniform(0.45, 0.6)))
    t = Image.fromarray(np.round(template * 255).astype(np.uint8))
    t.thumbnail((side, side))
    t = t.rotate(float(rng.uniform(0, 360)), expand=True, fillcolor=(255, 255, 255))
    t.thumbnail((side, side))
    arr = (np.asarray(t, np.float64) / 255) ** 3  # denser ink: a thin stroke must survive the resize
    th, tw = arr.shape[:2]
    grown = ndimage.binary_dilation(lesion, iterations=max(2, size // 32))
    best, factor = -1.0, np.ones((size, size, 3))
    for corner in rng.permutation(4):  # the corner where most of the marking lands on skin
        y = 1 if corner in (0, 1) else size - th - 1
        x = 1 if corner in (0, 2) else size - tw - 1
        candidate = np.ones((size, size, 3))
        candidate[y : y + th, x : x + tw] = arr
        candidate[grown] = 1.0
        ink = float((1 - candidate).sum())
        if ink > best:
            best, factor = ink, candidate
    return factor


def _one(job: tuple) -> None:
    out, seed, index, size, path, mask_path, marked, image_id, templates = job
    rng = np.random.default_rng([seed, index])
    image = _square(path, size, Image.BILINEAR).astype(np.float64)
    lesion = _square(mask_path, size, Image.NEAREST) > 127
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    image, lesion = np.rot90(image, k), np.rot90(lesion, k)
    if flip:
        image, lesion = image[:, ::-1], lesion[:, ::-1]
    image = image * rng.uniform(0.92, 1.08, 3)  # a little colour variation between captures
    factor = _stamp(rng, templates[int(rng.integers(0, len(templates)))], lesion, size)
    clean = np.clip(image, 0, 255)
    shown = np.clip(image * factor, 0, 255) if marked else clean
    visible = (factor.min(axis=2) < 0.9) if marked else np.zeros_like(lesion)
    Image.fromarray(np.round(shown).astype(np.uint8)).save(out / "images" / f"{image_id}.png")
    Image.fromarray(np.round(clean).astype(np.uint8)).save(out / "counterfactual" / f"{image_id}.png")
    Image.fromarray(lesion.astype(np.uint8) * 255).save(out / "masks" / f"{image_id}.png")
    Image.fromarray(visible.astype(np.uint8) * 255).save(out / "artifact_masks" / f"{image_id}.png")


def generate(out: Path, n: int, seed: int, size: int, spec: ShortcutSpec, split: str, workers: int = 2) -> pd.DataFrame:
    """``n`` samples of ``split``'s PH2 images (melanomas drawn as often as nevi) with the shortcut of
    ``spec``; writes images, counterfactuals, masks, artifact masks and ``manifest.csv``."""
    for sub in ("images", "counterfactual", "masks", "artifact_masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ph2 = _ph2(split)
    by_class = {m: g.reset_index(drop=True) for m, g in ph2.groupby("melanoma")}
    templates = _markings()
    rows, jobs = [], []
    for i in range(n):
        meta = np.random.default_rng([seed, i, 7])
        melanoma = bool(meta.random() < 0.5)
        pick = by_class[melanoma].iloc[int(meta.integers(0, len(by_class[melanoma])))]
        site = SITES[int(meta.integers(0, len(SITES)))]
        p = spec.p_artifact_if_melanoma if melanoma else spec.p_artifact_if_nevus
        marked = site == spec.site and bool(meta.random() < p)
        image_id = f"img{i:05d}"
        src = DATA / "ph2" / "images_384" / f"{pick['image_id']}.jpg"
        mask = DATA / "ph2" / "masks_384" / f"{pick['image_id']}_lesion.png"
        jobs.append((out, seed, i, size, src, mask, marked, image_id, templates))
        rows.append({
            "image_id": image_id, "image_path": f"images/{image_id}.png", "mask_path": f"masks/{image_id}.png",
            "label": CLASSES[int(melanoma)], "site": site, "sex": SEXES[int(meta.integers(0, 2))],
            "age_band": AGE_BANDS[int(meta.integers(0, 3))], "has_artifact": marked, "source": pick["image_id"],
            "artifact_mask_path": f"artifact_masks/{image_id}.png",
            "counterfactual_path": f"counterfactual/{image_id}.png",
        })  # fmt: skip
    run_jobs(_one, jobs, workers)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out / "manifest.csv", index=False)
    return manifest
