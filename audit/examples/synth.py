"""Deterministic generator of small dermoscopy-like audit sets with a planted shortcut: the demo's
world and the family of worlds the validity benchmark (``bench/validity.py``) checks the verdict on.

Why: an audit tool must be shown to find a shortcut where we *know* there is one. Each image is a
skin-coloured field with one pigmented lesion (its mask is the region that should matter); the
label (``nevus`` / ``melanoma``) is written into the lesion itself (darker, more irregular, blotchy
lesions are melanoma). In the *shortcut site* a purple ink marking is drawn far from the lesion, and
it is drawn mostly on melanomas, so a model trained on such data can learn "ink means melanoma".

A :class:`World` varies what a single demo cannot: which site carries the shortcut and how large it
is, which class the artifact co-occurs with, the artifact itself (ink stroke, ruler, corner text, dark
vignette), an acquisition difference of one site (blur, colour cast), and a skin-tone attribute that
can be correlated with the shortcut site. The default ``World()`` renders the demo's images exactly.

Every image is also rendered without its artifact (same random stream), which gives the
counterfactual: if the prediction changes when only the ink is removed, the model relies on the ink.
Each image draws from its own ``numpy`` generator seeded by ``(seed, index)``, so any subset or order
reproduces the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
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
SKIN_TONES = ("light", "medium", "dark")
ARTIFACTS = ("ink", "ruler", "text", "vignette", "circle", "marker")
MODALITIES = {"dermoscopy": CLASSES, "radiograph": ("normal", "opacity")}
# Multiplies the skin's colour: darker skin lowers the lesion's contrast, so maps spread at every site.
TONE_FACTOR = {"light": 1.0, "medium": 0.82, "dark": 0.6}


@dataclass(frozen=True)
class ShortcutSpec:
    """Where the artifact appears and how strongly it tracks the label."""

    site: str = "site_c"
    p_artifact_if_melanoma: float = 0.9
    p_artifact_if_nevus: float = 0.05


@dataclass(frozen=True)
class World:
    """Everything about an audit world that is not the label: sites, artifact, acquisition, skin tone.

    ``ink_colour``: an ink stroke's RGB colour (a near-black marker resembles a melanoma's blotches, so
    even a model that does not use it may look at it). ``site_weights``: share of each site (None:
    round-robin, as the demo). ``acquisition``: pairs of (site, ``blur`` | ``cast``), applied to every
    image of the site, with and without its artifact.
    ``skin_tone``: None for no skin-tone attribute; else the probabilities of light/medium/dark, and
    ``tone_in_site`` overrides them for one site (a correlated attribute).
    """

    artifact: str = "ink"
    ink_colour: tuple[float, float, float] | None = None  # None: the demo's purple
    site_weights: tuple[float, ...] | None = None
    acquisition: tuple[tuple[str, str], ...] = ()
    skin_tone: tuple[float, float, float] | None = None
    tone_in_site: tuple[str, tuple[float, float, float]] | None = None
    modality: str = "dermoscopy"

    def __post_init__(self) -> None:
        if self.artifact not in ARTIFACTS:
            raise ValueError(f"artifact must be one of {ARTIFACTS}, not {self.artifact!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {tuple(MODALITIES)}, not {self.modality!r}")

    @property
    def classes(self) -> tuple[str, str]:
        """(negative, positive) class names: the label is written into the region either way."""
        return MODALITIES[self.modality]


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


def _ruler(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A pale ruler along one edge with dark ticks: (alpha, colour)."""
    side, width = int(rng.integers(0, 4)), max(3, round(size * rng.uniform(0.07, 0.1)))
    alpha = np.zeros((size, size))
    colour = np.broadcast_to(np.array([235.0, 232.0, 220.0]), (size, size, 3)).copy()
    alpha[:width] = 0.95
    period = max(3, round(size / rng.uniform(14, 20)))
    ticks = np.zeros((size, size), bool)
    for k, x in enumerate(range(period // 2, size, period)):
        ticks[: width * (2 if k % 5 == 0 else 1) // 2, x : x + max(1, size // 96)] = True
    colour[ticks] = (30.0, 30.0, 30.0)
    return np.rot90(alpha, side).copy(), np.rot90(colour, side).copy()


def _text(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A short burnt-in label ("R 12", "L3") in one corner: (alpha, colour)."""
    from PIL import ImageDraw, ImageFont

    label = f"{'LR'[int(rng.integers(0, 2))]} {int(rng.integers(1, 40))}"
    canvas = Image.new("L", (size, size), 0)
    font = ImageFont.load_default(size=max(8, round(size * rng.uniform(0.12, 0.16))))
    x0, y0, x1, y1 = ImageDraw.Draw(canvas).textbbox((0, 0), label, font=font)
    margin = round(size * 0.04)
    cx = margin if rng.random() < 0.5 else size - margin - (x1 - x0)
    cy = margin if rng.random() < 0.5 else size - margin - (y1 - y0)
    ImageDraw.Draw(canvas).text((cx - x0, cy - y0), label, fill=255, font=font)
    alpha = np.asarray(canvas, np.float64) / 255
    shade = 250.0 if rng.random() < 0.5 else 15.0
    return alpha, np.full((size, size, 3), shade)


def _vignette(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The dark corners of a dermatoscope's round field of view: (alpha, colour)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    r = np.hypot(yy - 0.5, xx - 0.5)
    start = rng.uniform(0.42, 0.48)
    alpha = np.clip((r - start) / 0.12, 0, 1) ** 1.5 * 0.9
    return alpha, np.zeros((size, size, 3))


def _circle(rng: np.random.Generator, lesion: np.ndarray, size: int) -> np.ndarray:
    """Most of a thin ring 2-4 % of the side away from the lesion's edge: close enough to lie inside a
    dilated region, where evidence that keeps the whole dilated region never looks."""
    near = ndimage.binary_dilation(lesion, iterations=max(2, size // 32))
    far = ndimage.binary_dilation(lesion, iterations=max(3, round(size * 0.045)))
    yy, xx = np.nonzero(lesion)
    cy, cx = yy.mean(), xx.mean()
    angle = np.arctan2(*np.mgrid[0:size, 0:size] - np.array([cy, cx])[:, None, None])
    start, span = rng.uniform(-np.pi, np.pi), rng.uniform(0.6, 0.85) * 2 * np.pi
    arc = np.mod(angle - start, 2 * np.pi) < span
    return ndimage.gaussian_filter((far & ~near & arc).astype(np.float64), size / 200)


def _acquire(img: np.ndarray, how: str, size: int) -> np.ndarray:
    """An acquisition difference of the whole image: defocus blur or a warm colour cast."""
    if how == "blur":
        return ndimage.gaussian_filter(img, sigma=(size / 80, size / 80, 0))
    if how == "cast":
        return img * np.array([1.08, 0.96, 0.78])
    if how == "contrast":  # a flatter detector response
        return 110 + (img - 110) * 0.75
    raise ValueError(f"unknown acquisition difference {how!r}")


def render(
    seed: int,
    index: int,
    size: int,
    melanoma: bool,
    with_artifact: bool,
    artifact: str = "ink",
    tone: str | None = None,
    acquisition: str | None = None,
    ink_colour: tuple[float, float, float] | None = None,
) -> dict[str, np.ndarray]:
    """Render one image with and without its artifact; returns uint8 arrays and boolean masks.

    ``artifact`` other than ink, a skin ``tone`` and an ``acquisition`` difference draw from their
    own random stream, so the demo's default images are unchanged by their existence."""
    rng = np.random.default_rng([seed, index])
    severity = float(np.clip(rng.normal(0.68 if melanoma else 0.32, 0.14), 0, 1))
    img = _skin(rng, size)
    if tone is not None:
        img = img * TONE_FACTOR[tone]
    alpha, colour = _lesion(rng, size, severity)
    img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    hair = _hairs(rng, size)
    img = img * (1 - 0.75 * hair[..., None]) + np.array([40.0, 30.0, 25.0]) * 0.75 * hair[..., None]
    lesion_mask = alpha > 0.5

    # The artifact always consumes the same random numbers, drawn or not, so both renderings agree.
    corner = [(0.16, 0.16), (0.84, 0.16), (0.16, 0.84), (0.84, 0.84)][rng.integers(0, 4)]
    ink = _stroke_mask(rng, size, corner, width=rng.uniform(0.035, 0.05))
    ink[ndimage.binary_dilation(lesion_mask, iterations=max(2, size // 32))] = 0
    ink_colour = np.array([110.0, 55.0, 150.0] if ink_colour is None else ink_colour) + rng.normal(0, 8, 3)
    clean = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)
    if artifact == "ink":
        marked = clean * (1 - 0.85 * ink[..., None]) + ink_colour * 0.85 * ink[..., None]
        visible = ink > 0.3
    elif artifact == "circle":  # a marker ring drawn around the lesion, inside the usual dilation margin
        ring = _circle(np.random.default_rng([seed, index, 1]), lesion_mask, size)
        marked = clean * (1 - 0.85 * ring[..., None]) + ink_colour * 0.85 * ring[..., None]
        visible = ring > 0.3
    else:
        other = np.random.default_rng([seed, index, 1])
        alpha, colour = {"ruler": _ruler, "text": _text, "vignette": _vignette}[artifact](other, size)
        alpha[ndimage.binary_dilation(lesion_mask, iterations=max(2, size // 32))] = 0
        marked = clean * (1 - alpha[..., None]) + colour * alpha[..., None]
        visible = alpha > 0.05  # everything the artifact visibly changes, soft edges included
    shown = marked if with_artifact else clean
    if acquisition is not None:  # the scope sees the artifact too
        shown, clean = (np.clip(_acquire(a, acquisition, size), 0, 255) for a in (shown, clean))
    return {
        "image": np.round(shown).astype(np.uint8),
        "counterfactual": np.round(clean).astype(np.uint8),
        "lesion_mask": lesion_mask,
        "artifact_mask": visible if with_artifact else np.zeros_like(lesion_mask),
    }


def _marker(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A lead laterality marker ("L" or "R" in a box) near one upper corner, outside the body: (alpha, colour)."""
    from PIL import ImageDraw, ImageFont

    side = max(9, round(size * rng.uniform(0.08, 0.11)))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x0 = round(size * rng.uniform(0.03, 0.07))
    x0 = x0 if rng.random() < 0.5 else size - x0 - side
    y0 = round(size * rng.uniform(0.03, 0.07))
    draw.rectangle((x0, y0, x0 + side, y0 + side), outline=255, width=max(1, side // 8))
    font = ImageFont.load_default(size=max(6, round(side * 0.7)))
    draw.text((x0 + side / 2, y0 + side / 2), "LR"[int(rng.integers(0, 2))], fill=255, font=font, anchor="mm")
    return np.asarray(canvas, np.float64) / 255, np.full((size, size, 3), 245.0)


def render_radiograph(
    seed: int,
    index: int,
    size: int,
    positive: bool,
    with_artifact: bool,
    artifact: str = "marker",
    acquisition: str | None = None,
    **_: object,
) -> dict[str, np.ndarray]:
    """A grayscale chest-radiograph-like image: a bright body, two dark lung fields (the region, about
    a quarter of the image) with ribs, and the label written into the lungs as diffuse opacities
    (brighter, larger and more of them with severity). The artifact (a laterality marker, burnt-in
    text) lies in the dark outside of the body, far from the region."""
    rng = np.random.default_rng([seed, index])
    severity = float(np.clip(rng.normal(0.68 if positive else 0.32, 0.14), 0, 1))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    body = ((xx - 0.5) / rng.uniform(0.42, 0.46)) ** 2 + ((yy - 0.58) / rng.uniform(0.5, 0.56)) ** 2 < 1
    img = np.where(body, 165.0, 18.0) + 10 * ndimage.zoom(rng.normal(0, 1, (5, 5)), size / 5, order=3)[:size, :size]
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        cx, cy = 0.5 + side * rng.uniform(0.17, 0.21), 0.5 + rng.uniform(-0.03, 0.03)
        ax, ay = rng.uniform(0.12, 0.15), rng.uniform(0.26, 0.31)
        lungs |= ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
    soft = ndimage.gaussian_filter(lungs.astype(np.float64), size / 80)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (yy * rng.uniform(7, 9) + 0.15 * np.cos(3 * xx)))
    img = img * (1 - 0.62 * soft) + 18 * ribs * soft
    opacity = np.zeros((size, size))
    for _ in range(1 + rng.poisson(3 * severity)):
        iy, ix = np.nonzero(lungs)
        k = int(rng.integers(0, len(iy)))
        r = size * (0.03 + 0.07 * severity) * rng.uniform(0.6, 1.2)
        opacity += np.exp(-(((yy * size - iy[k]) ** 2 + (xx * size - ix[k]) ** 2) / (2 * r * r)))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 48)
    img = img + (25 + 70 * severity) * np.clip(opacity, 0, 1) * soft * (1 + 0.3 * texture)
    clean = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)[..., None].repeat(3, axis=2)
    other = np.random.default_rng([seed, index, 1])
    alpha, colour = (_marker if artifact == "marker" else _text)(other, size)
    alpha = np.where(body, 0.0, alpha)  # the marker lies on the detector, outside the patient
    marked = clean * (1 - alpha[..., None]) + colour * alpha[..., None]
    shown = marked if with_artifact else clean
    if acquisition is not None:
        shown, clean = (np.clip(_acquire(a, acquisition, size), 0, 255) for a in (shown, clean))
    return {
        "image": np.round(shown).astype(np.uint8),
        "counterfactual": np.round(clean).astype(np.uint8),
        "lesion_mask": lungs,
        "artifact_mask": alpha > 0.05 if with_artifact else np.zeros_like(lungs),
    }


def _write_one(job: tuple) -> None:
    out_dir, seed, index, size, melanoma, has_artifact, image_id, write_masks, look = job
    draw = render_radiograph if look.get("modality") == "radiograph" else render
    look = {k: v for k, v in look.items() if k != "modality"}
    r = draw(seed, index, size, melanoma, has_artifact, **look)
    Image.fromarray(r["image"]).save(out_dir / "images" / f"{image_id}.png")
    Image.fromarray(r["counterfactual"]).save(out_dir / "counterfactual" / f"{image_id}.png")
    if write_masks:
        for kind in ("lesion_mask", "artifact_mask"):
            folder = "masks" if kind == "lesion_mask" else "artifact_masks"
            Image.fromarray(r[kind].astype(np.uint8) * 255).save(out_dir / folder / f"{image_id}.png")


def _attributes(world: World, seed: int, i: int) -> dict[str, str]:
    """Site and skin tone of image ``i``: from their own random stream (the demo's draws stay as they were)."""
    extra = np.random.default_rng([seed, i, 8])
    if world.site_weights is None:
        site = SITES[i % len(SITES)]
    else:
        site = SITES[int(extra.choice(len(SITES), p=np.asarray(world.site_weights) / sum(world.site_weights)))]
    out = {"site": site}
    if world.skin_tone is not None:
        probs = world.skin_tone
        if world.tone_in_site is not None and world.tone_in_site[0] == site:
            probs = world.tone_in_site[1]
        out["skin_tone"] = SKIN_TONES[int(extra.choice(3, p=np.asarray(probs) / sum(probs)))]
    return out


def run_jobs(write: Callable[[tuple], None], jobs: list[tuple], workers: int) -> None:
    """``write`` each job, on ``workers`` processes where more than one (each job draws from its own
    seeded generator, so the files do not depend on the number)."""
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(write, jobs, chunksize=16))
    else:
        for job in jobs:
            write(job)


def generate(
    out_dir: Path,
    n: int,
    seed: int,
    size: int = 128,
    shortcut: ShortcutSpec | None = ShortcutSpec(),
    write_masks: bool = True,
    workers: int = 1,
    world: World = World(),
) -> pd.DataFrame:
    """Write ``n`` images (plus counterfactuals and masks) under ``out_dir``; return the manifest.

    With ``shortcut=None`` the artifact appears in the shortcut site independently of the label (p=0.5):
    the *clean twin*, in which a model has no reason to use it. Output does not depend on ``workers``.
    """
    out_dir = Path(out_dir)
    for sub in ("images", "counterfactual", "masks", "artifact_masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    spec = shortcut or ShortcutSpec(p_artifact_if_melanoma=0.5, p_artifact_if_nevus=0.5)
    acquisition = dict(world.acquisition)
    rows, jobs = [], []
    for i in range(n):
        meta = np.random.default_rng([seed, i, 7])
        attributes = _attributes(world, seed, i)
        site = attributes["site"]
        melanoma = bool(meta.random() < 0.5)
        sex = SEXES[int(meta.integers(0, 2))]
        age = AGE_BANDS[int(meta.integers(0, 3))]
        p = spec.p_artifact_if_melanoma if melanoma else spec.p_artifact_if_nevus
        has_artifact = site == spec.site and bool(meta.random() < p)
        image_id = f"img{i:05d}"
        look = {
            "artifact": world.artifact,
            "tone": attributes.get("skin_tone"),
            "acquisition": acquisition.get(site),
            "ink_colour": world.ink_colour,
            "modality": world.modality,
        }
        jobs.append((out_dir, seed, i, size, melanoma, has_artifact, image_id, write_masks, look))
        rows.append(
            {
                "image_id": image_id,
                "image_path": f"images/{image_id}.png",
                "mask_path": f"masks/{image_id}.png",
                "label": world.classes[int(melanoma)],
                "site": site,
                "sex": sex,
                "age_band": age,
                **{k: v for k, v in attributes.items() if k != "site"},
                "has_artifact": has_artifact,
                "artifact_mask_path": f"artifact_masks/{image_id}.png",
                "counterfactual_path": f"counterfactual/{image_id}.png",
            }
        )
    run_jobs(_write_one, jobs, workers)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    return manifest
