"""Pixels in: images and masks from disk to model-ready tensors.

Images are resized with PIL's bilinear filter (antialiased when shrinking), scaled to [0, 1] and
normalised per channel. Masks are binarised (> threshold) at their own resolution, which must equal
the image's, then resized with nearest-neighbour so a mask pixel is never invented.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from audit.config import Preprocessing


def open_image(path: Path | BinaryIO, channels: int) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img.convert("L" if channels == 1 else "RGB")


def image_tensor(img: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """PIL image -> normalised float tensor (C, H, W) at ``pre.size``."""
    h, w = pre.size
    arr = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def open_mask(path: Path | BinaryIO, threshold: int) -> np.ndarray:
    """Binary mask (H, W) at the file's own resolution: pixel > threshold in its grey value."""
    img = Image.open(path)
    img.load()
    return np.asarray(img.convert("L")) > threshold


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if mask.shape == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127


def display_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 array at the model's input size, for overlays."""
    h, w = size
    return np.asarray(Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR))


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
    """Binary dilation of (B, H, W) masks by a square of side 2*radius+1."""
    if radius <= 0:
        return masks.bool()
    return F.max_pool2d(masks.float()[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0
