"""Per-image localisation metrics on (batches of) maps and masks; no models here.

Every function takes ``maps`` (B, H, W) and boolean ``masks`` (B, H, W) of the same size, as torch
tensors or numpy arrays, and returns one float64 value per image. Conventions, stated because they
change numbers (Quantus differs on some; ``tests/test_quantus_parity.py`` pins each difference):

* **Signed maps**: every metric reads the *positive part* ``max(map, 0)``. Negative values are
  evidence against the class, not attention, and Grad-CAM itself applies this ReLU; summing signed
  values would let a "mass inside" exceed 1.
* **All-zero maps** (no positive evidence at the layer) have no distribution of attention: every
  map metric is NaN, never 0 or 1, and the pipeline counts them separately.
* **Empty masks** (nothing annotated) and, for pixel AUROC, full masks are NaN: there is nothing to
  localise against. Quantus 0.6 counts an empty mask as a pointing-game *hit*.
* **Ties**: the pointing game is a hit when *any* of the tied maxima lies inside the mask. Rank
  metrics (rank accuracy, top-k) share the places at the cut among tied pixels: the value is the
  expectation over a random tie-break, not whatever order a sort happened to produce. Pixel AUROC
  counts a tie as half a correct ordering (Mann-Whitney).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import label

Array = torch.Tensor | np.ndarray

MEANINGS = {
    "mass_in": "Share of the map's mass inside the mask (Relevance Mass Accuracy; Kohlbrenner's attribution "
    "localisation μ). A uniform map scores the mask's area.",
    "focus": "mass_in / mask area (Kohlbrenner's size-weighted μ_w): 1 = no better than a uniform map, above 1 = "
    "attention concentrated on the region.",
    "rank_accuracy": "Of the K most attended pixels (K = mask size), the share inside the mask "
    "(Relevance Rank Accuracy).",
    "pointing_hit": "1 when the map's maximum lies inside the mask (pointing game).",
    "energy_pointing": "Share of the map's mass inside the mask's bounding box (energy-based pointing game, "
    "Score-CAM).",
    "top_k": "Of the top-k most attended pixels (k a fixed share of the image), the share inside the mask "
    "(top-k intersection).",
    "pixel_auroc": "How well the map, read as a per-pixel detector, separates mask from background pixels "
    "(0.5 = chance).",
    "bbox_iou": "IoU of the bounding box of the thresholded map's largest component with the mask's bounding "
    "box (Grad-CAM paper's localisation).",
}


def _t(x: Array) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _prepare(maps: Array, masks: Array) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positive part as float64, bool masks, 'no metric here': zero map or empty mask)."""
    m = _t(maps).double().clamp_min(0)
    k = _t(masks).bool().to(m.device)
    undefined = (m.flatten(1).amax(dim=1) <= 0) | ~k.flatten(1).any(dim=1)
    return m, k, undefined


def area(masks: Array) -> torch.Tensor:
    """Mask area fraction: the mass_in a uniform map would score."""
    return _t(masks).bool().double().mean(dim=(1, 2))


def mass_in(maps: Array, masks: Array) -> torch.Tensor:
    """sum(a * s) / sum(a) over the positive part a of the map.

    Relevance Mass Accuracy (Arras et al. 2022) and Kohlbrenner et al.'s (2020) attribution
    localisation μ = R_in / R_tot with positive relevance are the same quantity.
    """
    m, k, undefined = _prepare(maps, masks)
    total = m.sum(dim=(1, 2))
    inside = (m * k).sum(dim=(1, 2))
    return torch.where(undefined, torch.nan, inside / total.clamp_min(torch.finfo(torch.float64).tiny))


def focus(maps: Array, masks: Array) -> torch.Tensor:
    """mass_in / area: Kohlbrenner's size-weighted localisation μ_w = μ · S_total / S_in. Chance
    corrected: a uniform map scores 1 whatever the lesion's size, so small and large lesions compare."""
    return mass_in(maps, masks) / area(masks)


class Ranked:
    """Each image's values sorted once (ascending, with the order), shared by the metrics that rank
    pixels: rank accuracy, top-k and pixel AUROC each sorted the same map on their own before."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values  # (B, N) float64
        self.sorted, self.order = values.sort(dim=1)

    def kth_largest(self, k: torch.Tensor) -> torch.Tensor:
        """The k-th largest value per row (k >= 1; k = 0 reads as 1), shape (B, 1)."""
        n = self.values.shape[1]
        return self.sorted.gather(1, (n - k.clamp_min(1))[:, None])

    def average_ranks(self) -> torch.Tensor:
        """1-based ranks in sorted order, ties given the mean of their places (scipy's ``average``)."""
        v = self.sorted
        n = v.shape[1]
        places = torch.arange(n, device=v.device).expand_as(v)
        differs = v[:, 1:] != v[:, :-1]
        starts = torch.ones_like(v, dtype=torch.bool)
        starts[:, 1:] = differs
        ends = torch.ones_like(v, dtype=torch.bool)
        ends[:, :-1] = differs
        first = torch.where(starts, places, 0).cummax(dim=1).values
        last = torch.where(ends, places, n - 1).flip(1).cummin(dim=1).values.flip(1)
        return (first + last).double() / 2 + 1


def _top_k_hits(ranked: Ranked, inside: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Expected number of ``inside`` pixels among the ``k`` highest values (per row), with the
    places left at the cut shared evenly among the pixels tied there."""
    values, kth = ranked.values, ranked.kth_largest(k)
    above, at = values > kth, values == kth
    places_left = (k - above.sum(dim=1)).double()
    return (above & inside).sum(dim=1) + places_left * (at & inside).sum(dim=1) / at.sum(dim=1)


def _ranked(m: torch.Tensor, ranked: Ranked | None) -> Ranked:
    return ranked if ranked is not None else Ranked(m.flatten(1))


def rank_accuracy(maps: Array, masks: Array, ranked: Ranked | None = None) -> torch.Tensor:
    """Relevance Rank Accuracy: with K = |mask|, the share of the K highest-valued pixels inside the
    mask. A uniform ranking scores the mask's area on average; 1 = the mask is exactly the top K."""
    m, k, undefined = _prepare(maps, masks)
    inside = k.flatten(1)
    size = inside.sum(dim=1)
    acc = _top_k_hits(_ranked(m, ranked), inside, size) / size.clamp_min(1)
    return torch.where(undefined, torch.nan, acc)


def top_k_intersection(maps: Array, masks: Array, k: int | float, ranked: Ranked | None = None) -> torch.Tensor:
    """Share of the k highest-valued pixels inside the mask; ``k`` a pixel count (int) or a share of
    the image's pixels (float in (0, 1]), so one setting serves every image size."""
    m, s, undefined = _prepare(maps, masks)
    values, inside = m.flatten(1), s.flatten(1)
    n = values.shape[1]
    count = round(k * n) if isinstance(k, float) else int(k)
    if not 1 <= count <= n:
        raise ValueError(f"top-k: k = {k} selects {count} of {n} pixels; it must select at least one and at most all")
    hits = _top_k_hits(_ranked(m, ranked), inside, torch.full((len(values),), count, device=values.device))
    return torch.where(undefined, torch.nan, hits / count)


def pointing_hit(maps: Array, masks: Array) -> torch.Tensor:
    """1.0 if a maximum of the map lies inside the mask, 0.0 if none does (Zhang et al. 2018)."""
    m, k, undefined = _prepare(maps, masks)
    peak = m.flatten(1).amax(dim=1)
    hit = ((m == peak[:, None, None]) & k).flatten(1).any(dim=1).double()
    return torch.where(undefined, torch.nan, hit)


def bounding_boxes(masks: Array) -> torch.Tensor:
    """The filled bounding box of each mask's pixels (all components together)."""
    k = _t(masks).bool()
    rows, cols = k.any(dim=2), k.any(dim=1)

    def span(v: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(v.shape[1], device=v.device)
        first = torch.where(v, idx, v.shape[1]).amin(dim=1)
        last = torch.where(v, idx, -1).amax(dim=1)
        return (idx >= first[:, None]) & (idx <= last[:, None])

    return span(rows)[:, :, None] & span(cols)[:, None, :]


def energy_pointing(maps: Array, masks: Array) -> torch.Tensor:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the map's mass inside
    the mask's bounding box. Kinder than mass_in to a thin or irregular mask."""
    return mass_in(maps, bounding_boxes(masks))


def pixel_auroc(maps: Array, masks: Array, ranked: Ranked | None = None) -> torch.Tensor:
    """AUROC of the map's values as a score for 'pixel is in the mask' (ties count one half); NaN for
    a zero map and for an empty or full mask (one class only). Mann-Whitney from average ranks: sums
    of half-integers, exact in float64 in any order."""
    m, k, undefined = _prepare(maps, masks)
    ranked = _ranked(m, ranked)
    inside = k.flatten(1)
    rank_sum = (ranked.average_ranks() * inside.gather(1, ranked.order)).sum(dim=1)
    n_pos = inside.sum(dim=1).double()
    n_neg = inside.shape[1] - n_pos
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    nothing = undefined | (n_neg == 0) | ranked.values.isnan().any(dim=1)
    return torch.where(nothing, torch.nan, auc)


def bbox_iou(maps: Array, masks: Array, threshold: float = 0.15) -> torch.Tensor:
    """The Grad-CAM paper's localisation: keep pixels >= ``threshold`` x the map's maximum, take the
    largest 8-connected component (equal sizes: the one with more mass, then the first in raster
    order), and return the IoU of its bounding box with the mask's bounding box."""
    m, k, undefined = _prepare(maps, masks)
    boxes = bounding_boxes(k).cpu().numpy()
    values = m.cpu().numpy()
    out = np.full(len(values), np.nan)
    for i in np.flatnonzero(~undefined.cpu().numpy()):
        a = values[i]
        components = label(a >= threshold * a.max(), connectivity=2)
        sizes = np.bincount(components.ravel())[1:]
        masses = np.bincount(components.ravel(), weights=a.ravel())[1:]
        best = 1 + np.lexsort((-np.arange(sizes.size), masses, sizes))[-1]
        hot_box = bounding_boxes(components[None] == best)[0].numpy()
        out[i] = (hot_box & boxes[i]).sum() / (hot_box | boxes[i]).sum()
    return torch.as_tensor(out, dtype=torch.float64)


def localisation(maps: Array, masks: Array, top_k: int | float, bbox_threshold: float) -> dict[str, torch.Tensor]:
    """Every per-image metric of :data:`MEANINGS`, plus ``area``, as columns."""
    ranked = Ranked(_prepare(maps, masks)[0].flatten(1))
    return {
        "mass_in": mass_in(maps, masks),
        "area": area(masks),
        "focus": focus(maps, masks),
        "rank_accuracy": rank_accuracy(maps, masks, ranked),
        "pointing_hit": pointing_hit(maps, masks),
        "energy_pointing": energy_pointing(maps, masks),
        "top_k": top_k_intersection(maps, masks, top_k, ranked),
        "pixel_auroc": pixel_auroc(maps, masks, ranked),
        "bbox_iou": bbox_iou(maps, masks, bbox_threshold),
    }
