"""Decoded pixels and how they become the model's input tensor.

A :class:`Picture` keeps 8-bit sources as ``uint8`` (resized by Pillow exactly as they always were, so
8-bit audits keep their numbers) and everything deeper (16-bit rasters, DICOM, float TIFF) as
``float32`` in [0, 1] after the intensity step, resized per channel in Pillow's float mode so no
precision is lost to an 8-bit round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from audit.config import Preprocessing

LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, what Pillow's convert("L") uses


@dataclass(frozen=True)
class Picture:
    """(H, W, C) pixels, C in {1, 3}: ``uint8`` for 8-bit sources, else ``float32`` in [0, 1].
    ``description`` says how they were obtained (bit depth, photometric interpretation, window)."""

    array: np.ndarray
    description: str = ""

    def __post_init__(self) -> None:
        a = self.array
        if a.ndim != 3 or a.shape[2] not in (1, 3) or a.dtype not in (np.uint8, np.float32):
            raise ValueError(f"Picture needs (H, W, 1|3) uint8 or float32 pixels, got {a.shape} {a.dtype}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow says it."""
        return self.array.shape[1], self.array.shape[0]

    def with_channels(self, channels: int) -> Picture:
        a = self.array
        if a.shape[2] == channels:
            return self
        if channels == 3:
            return Picture(np.repeat(a, 3, axis=2), self.description)
        if a.dtype == np.uint8:  # Pillow's own conversion, as 8-bit audits always used
            return Picture(np.asarray(Image.fromarray(a).convert("L"))[..., None], self.description)
        return Picture((a @ LUMA)[..., None].astype(np.float32), self.description)

    def resized(self, size: tuple[int, int]) -> np.ndarray:
        """(h, w, C) float32 in [0, 1] at ``size`` = (height, width), bilinear (antialiased when shrinking)."""
        h, w = size
        a = self.array
        if a.dtype == np.uint8:
            img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
            out = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
            return out[..., None] if out.ndim == 2 else out
        planes = [
            np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c])).resize((w, h), Image.BILINEAR))
            for c in range(a.shape[2])
        ]
        return np.clip(np.stack(planes, axis=2), 0.0, 1.0).astype(np.float32)

    def display(self, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 at ``size`` for overlays in the report."""
        rgb = self.with_channels(3).resized(size)
        return np.round(rgb * 255).astype(np.uint8)


def to_tensor(picture: Picture, pre: Preprocessing) -> torch.Tensor:
    """Picture -> normalised float tensor (C, H, W) at ``pre.size``."""
    arr = picture.with_channels(pre.channels).resized(pre.size)
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
