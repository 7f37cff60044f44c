"""Deterministic generator of a small dermoscopy-like audit set with a planted shortcut.

Why: an audit tool must be shown to find a shortcut where we *know* there is one. Each image is a
skin-coloured field with one pigmented lesion (its mask is the region that should matter); the
label (``nevus`` / ``melanoma``) is written into the lesion itself (darker, more irregular, blotchy
lesions are melanoma). In the *shortcut site* a purple ink marking is drawn far from the lesion, and
it is drawn mostly on melanomas, so a model trained on such data can learn "ink means melanoma".

Every image is also rendered without its artifact (same random stream), which gives the
counterfactual: if the prediction changes when only the ink is removed, the model relies on the ink.
Each image draws from its own ``numpy`` generator seeded by ``(seed, index)``, so any subset or order
reproduces the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

CLASSES = ("nevus", "melanoma")
SITES = ("site_a", "site_b", "site_c")
SEXES = ("female", "male")
AGE_BANDS = ("<40", "40-60", ">60")


@dataclass(frozen=True)
class ShortcutSpec:
    """Where the artifact appears and how strongly it tracks the label."""

    site: str = "site_c"
    p_artifact_if_melanoma: float = 0.9
    p_artifact_if_nevus: float = 0.05


def _lesion(rng: np.random.Generator, size: int, severity: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (alpha in [0,1], rgb colour field) of one lesion whose look scales with ``severity``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    cx, cy = 0.5 + rng.uniform(-0.1, 0.1, 2)
    r0 = rng.uniform(0.12, 0.18)
    theta = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(yy - cy, xx - cx)
    amp = 0.04 + 0.22 * severity
    radius = np.full_like(theta, r0)
    for k in range(2, 7):
        radius += r0 * amp * rng.uniform(0.3, 1.0) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    inside = (dist < radius).astype(np.float64)
    alpha = ndimage.gaussian_filter(inside, sigma=size / 110)

    darkness = 0.25 + 0.55 * severity + rng.normal(0, 0.06)
    base = np.array([150.0, 98.0, 66.0]) * (1 - 0.55 * np.clip(darkness, 0, 1))
    colour = np.broadcast_to(base, (size, size, 3)).copy()
    # blotches: blue-grey and near-black regions, more and larger with severity
    n_blotch = rng.poisson(6 * severity**2)
    for _ in range(n_blotch):
        bx, by = cx + rng.normal(0, r0 / 2.5), cy + rng.normal(0, r0 / 2.5)
        br = r0 * rng.uniform(0.15, 0.35)
        blob = ndimage.gaussian_filter((np.hypot(yy - by, xx - bx) < br).astype(np.float64), size / 150)
        tint = np.array([70.0, 80.0, 110.0]) if rng.random() < 0.5 else np.array([35.0, 25.0, 22.0])
        colour = colour * (1 - blob[..., None]) + tint * blob[..., None]
    # benign pigment network: a regular grid of darker dots, faint or absent in melanoma
    period = size / rng.uniform(16, 20)
    grid = (np.sin(2 * np.pi * xx * size / period) * np.sin(2 * np.pi * yy * size / period)) > 0.35
    network = float(np.clip(1.2 - 1.6 * severity + rng.normal(0, 0.12), 0, 1))
    colour = colour * (1 - 0.35 * network * grid[..., None])
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 64)
    colour = colour * (1 + 0.12 * texture[..., None] / (texture.std() + 1e-9))
    return alpha, colour


def _skin(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.array([222.0, 176.0, 150.0]) + rng.normal(0, 8, 3)
    low = ndimage.zoom(rng.normal(0, 1, (6, 6)), size / 6, order=3)[:size, :size]
    fine = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.0)
    return base * (1 + 0.04 * low[..., None]) + 6 * fine[..., None]


def _stroke_mask(rng: np.random.Generator, size: int, corner: tuple[float, float], width: float) -> np.ndarray:
    """A thick, slightly curved pen stroke inside one corner region."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    mask = np.zeros((size, size))
    cx, cy = corner
    for _ in range(rng.integers(3, 5)):
        t = np.linspace(0, 1, 24)
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.16, 0.26)
        px = cx + rng.normal(0, 0.03) + (t - 0.5) * length * np.cos(ang)
        py = cy + rng.normal(0, 0.03) + (t - 0.5) * length * np.sin(ang) + 0.03 * np.sin(3 * t)
        for x, y in zip(px, py, strict=True):
            mask = np.maximum(mask, (np.hypot(xx - x, yy - y) < width).astype(np.float64))
    return ndimage.gaussian_filter(mask, size / 200)


def _hairs(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    out = np.zeros((size, size))
    for _ in range(rng.integers(0, 4)):
        x0, y0, ang = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0, np.pi)
        curve = rng.uniform(-2, 2)
        d = (xx - x0) * np.sin(ang) - (yy - y0) * np.cos(ang)
        along = (xx - x0) * np.cos(ang) + (yy - y0) * np.sin(ang)
        d = d - 0.05 * curve * along**2
        out = np.maximum(out, (np.abs(d) < 0.004) * (np.abs(along) < 0.35))
    return ndimage.gaussian_filter(out, 0.6)


def render(seed: int, index: int, size: int, melanoma: bool, with_artifact: bool) -> dict[str, np.ndarray]:
    """Render one image with and without its artifact; returns uint8 arrays and boolean masks."""
    rng = np.random.default_rng([seed, index])
    severity = float(np.clip(rng.normal(0.68 if melanoma else 0.32, 0.14), 0, 1))
    img = _skin(rng, size)
    alpha, colour = _lesion(rng, size, severity)
    img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    hair = _hairs(rng, size)
    img = img * (1 - 0.75 * hair[..., None]) + np.array([40.0, 30.0, 25.0]) * 0.75 * hair[..., None]
    lesion_mask = alpha > 0.5

    # The artifact always consumes the same random numbers, drawn or not, so both renderings agree.
    corner = [(0.16, 0.16), (0.84, 0.16), (0.16, 0.84), (0.84, 0.84)][rng.integers(0, 4)]
    ink = _stroke_mask(rng, size, corner, width=rng.uniform(0.035, 0.05))
    ink[ndimage.binary_dilation(lesion_mask, iterations=max(2, size // 32))] = 0
    ink_colour = np.array([110.0, 55.0, 150.0]) + rng.normal(0, 8, 3)
    clean = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)
    inked = clean * (1 - 0.85 * ink[..., None]) + ink_colour * 0.85 * ink[..., None]
    shown = inked if with_artifact else clean
    return {
        "image": np.round(shown).astype(np.uint8),
        "counterfactual": np.round(clean).astype(np.uint8),
        "lesion_mask": lesion_mask,
        "artifact_mask": (ink > 0.3) if with_artifact else np.zeros_like(lesion_mask),
    }


def _write_one(job: tuple[Path, int, int, int, bool, bool, str, bool]) -> None:
    out_dir, seed, index, size, melanoma, has_artifact, image_id, write_masks = job
    r = render(seed, index, size, melanoma, has_artifact)
    Image.fromarray(r["image"]).save(out_dir / "images" / f"{image_id}.png")
    Image.fromarray(r["counterfactual"]).save(out_dir / "counterfactual" / f"{image_id}.png")
    if write_masks:
        for kind in ("lesion_mask", "artifact_mask"):
            folder = "masks" if kind == "lesion_mask" else "artifact_masks"
            Image.fromarray(r[kind].astype(np.uint8) * 255).save(out_dir / folder / f"{image_id}.png")


def generate(
    out_dir: Path,
    n: int,
    seed: int,
    size: int = 128,
    shortcut: ShortcutSpec | None = ShortcutSpec(),
    write_masks: bool = True,
    workers: int = 1,
) -> pd.DataFrame:
    """Write ``n`` images (plus counterfactuals and masks) under ``out_dir``; return the manifest.

    With ``shortcut=None`` the ink appears in the shortcut site independently of the label (p=0.5):
    the *clean twin*, in which a model has no reason to use the ink. Output does not depend on
    ``workers``.
    """
    out_dir = Path(out_dir)
    for sub in ("images", "counterfactual", "masks", "artifact_masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    spec = shortcut or ShortcutSpec(p_artifact_if_melanoma=0.5, p_artifact_if_nevus=0.5)
    rows, jobs = [], []
    for i in range(n):
        meta = np.random.default_rng([seed, i, 7])
        site = SITES[i % len(SITES)]
        melanoma = bool(meta.random() < 0.5)
        sex = SEXES[int(meta.integers(0, 2))]
        age = AGE_BANDS[int(meta.integers(0, 3))]
        p = spec.p_artifact_if_melanoma if melanoma else spec.p_artifact_if_nevus
        has_artifact = site == spec.site and bool(meta.random() < p)
        image_id = f"img{i:05d}"
        jobs.append((out_dir, seed, i, size, melanoma, has_artifact, image_id, write_masks))
        rows.append(
            {
                "image_id": image_id,
                "image_path": f"images/{image_id}.png",
                "mask_path": f"masks/{image_id}.png",
                "label": CLASSES[int(melanoma)],
                "site": site,
                "sex": sex,
                "age_band": age,
                "has_artifact": has_artifact,
                "artifact_mask_path": f"artifact_masks/{image_id}.png",
                "counterfactual_path": f"counterfactual/{image_id}.png",
            }
        )
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=16))
    else:
        for job in jobs:
            _write_one(job)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    return manifest
