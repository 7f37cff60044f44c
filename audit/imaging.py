"""Tensor-side image operations: masks to the model's input size, blurs, fills and dilation.

Decoding files is :mod:`audit.inputs`' job; this module works on arrays and tensors only. Masks are
resized with nearest neighbour so a mask pixel is never invented.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if mask.shape == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127


def heavy_blur(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The image itself with its detail removed: area-downsample by ``factor``, bilinear back up.
    Cheap at any size (a Gaussian of the same strength would need a kernel of ~size/4)."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // factor), max(1, w // factor)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def fill_from_surroundings(x: torch.Tensor, region: torch.Tensor, factor: int, how: str = "blur") -> torch.Tensor:
    """What ``x`` would show in ``region`` (B, H, W) judged from the pixels around it only.

    ``blur``: normalised convolution, heavy_blur(x * keep) / heavy_blur(keep), so the region's own pixels
    carry no weight; where the region covers a whole blur cell and more, the mean of the kept pixels.
    ``mean``: the mean colour of the kept pixels."""
    keep = (~region.bool())[:, None].to(x.dtype)
    mean = (x * keep).sum(dim=(2, 3), keepdim=True) / keep.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    if how == "mean":
        return mean.expand_as(x)
    weight = heavy_blur(keep, factor)
    blurred = heavy_blur(x * keep, factor) / weight.clamp_min(1e-3)
    return torch.where(weight > 1e-3, blurred, mean.expand_as(x))


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of (B, H, W) masks by a square of side 2*radius+1: a max over the square is a max
    over its rows of a max over its columns, so two 1-D max-pools give the same output as one 2-D
    pool at O(radius) instead of O(radius²) per pixel."""
    if radius <= 0:
        return masks.bool()
    k = 2 * radius + 1
    rows = F.max_pool2d(masks.float()[:, None], (k, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(rows, (1, k), stride=1, padding=(0, radius))[:, 0] > 0
