"""Per-image localisation metrics on (batches of) maps and masks; no models here.

All functions take ``maps`` (B, H, W), non-negative, and boolean ``masks`` (B, H, W) of the same
size, as torch tensors (numpy arrays are accepted), and return one value per image.

Conventions, stated because they change numbers:
* An all-zero map (Grad-CAM found no positive evidence at the layer) has no distribution of
  attention: its mass-based metrics and pointing hit are NaN, never 0 or 1.
* Pointing game ties: a hit when *any* of the tied maxima lies inside the mask.
"""

from __future__ import annotations

import numpy as np
import torch


def _t(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def total_mass(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    return _t(maps).double().sum(dim=(1, 2))


def mass_in(maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Share of the map's mass inside the mask: sum(map * mask) / sum(map) (Relevance Mass Accuracy)."""
    m, k = _t(maps).double(), _t(masks).bool()
    total = m.sum(dim=(1, 2))
    inside = (m * k).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), torch.nan)


def area(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mask area fraction: the mass_in a uniform map would score."""
    return _t(masks).bool().double().mean(dim=(1, 2))


def focus(maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Chance-corrected focus mass_in / area: 1 = no better than a uniform map, >1 = on the region."""
    return mass_in(maps, masks) / area(masks)


def pointing_hit(maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """1.0 if a maximum of the map lies inside the mask, 0.0 if none does, NaN for an all-zero map."""
    m, k = _t(maps).double(), _t(masks).bool()
    peak = m.flatten(1).amax(dim=1)
    at_peak = m == peak[:, None, None]
    hit = (at_peak & k).flatten(1).any(dim=1).double()
    return torch.where(peak > 0, hit, torch.nan)
