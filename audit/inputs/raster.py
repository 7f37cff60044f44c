"""Raster images (PNG, JPEG, TIFF, BMP, ...) through Pillow, at their full bit depth.

8-bit data (modes 1, L, P, RGB, RGBA, CMYK, ...) stays ``uint8`` under the default intensity rule:
alpha is dropped, palette and CMYK converted by Pillow. 16-bit greyscale (modes ``I;16*``, and ``I``
when its values fit 0..65535) is divided by 65535 instead of being clipped to 8 bits (Pillow's
``convert("L")`` saturates it). Pillow's decompression-bomb limit stays on: a header claiming more
pixels than it allows is this row's exclusion.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from audit.config import Intensity
from audit.inputs.errors import InputError
from audit.inputs.pixels import Picture

GREY_8 = ("1", "L", "LA", "La")
BOMB_HINT = "downscale the image; Pillow refuses headers this large because decoding them can exhaust memory"


def _open(source: Path | bytes) -> Image.Image:
    # WeasyPrint sets Pillow's global LOAD_TRUNCATED_IMAGES = True when imported (the report renderer
    # does so in the same process): truncated files would then decode silently, padded with grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as err:
        raise InputError(f"decompression-bomb limit: {err}", hint=BOMB_HINT) from None
    except UnidentifiedImageError:
        raise InputError("not an image Pillow can read (unknown or corrupt format)") from None


def raster_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone; refuses multi-page files and decompression bombs."""
    return raster_extent(path)[:2]


def raster_extent(source: Path | bytes) -> tuple[int, int, int]:
    """(width, height, bytes Pillow decodes it into) from the header alone; refuses multi-page files
    and decompression bombs."""
    with _open(source) as img:
        if getattr(img, "n_frames", 1) > 1:
            raise InputError(f"multi-page image ({img.n_frames} pages)", hint="store the page to audit as its own file")
        width, height = img.size
        per_pixel = {"1": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}.get(img.mode, len(img.getbands()))
        return width, height, width * height * per_pixel


def _scaled(values: np.ndarray, full_scale: float | None, intensity: Intensity) -> np.ndarray:
    v = values.astype(np.float64)
    if intensity.mode == "window" and intensity.window is not None:
        centre, width = intensity.window
        out = (v - (centre - width / 2)) / width
    elif intensity.mode == "minmax" or full_scale is None:
        lo, hi = float(v.min()), float(v.max())
        out = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    else:
        out = v / full_scale
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def decode_raster(source: Path | bytes, intensity: Intensity) -> Picture:
    """The whole image as a :class:`Picture` (see the module docstring for the rules)."""
    with _open(source) as img:
        if getattr(img, "n_frames", 1) > 1:
            raise InputError(f"multi-page image ({img.n_frames} pages)", hint="store the page to audit as its own file")
        img.load()
        mode = img.mode
        if mode.startswith("I;16") or mode == "I":
            values = np.asarray(img)
            fits_16 = values.min() >= 0 and values.max() <= 65535
            full = 65535.0 if (mode.startswith("I;16") or fits_16) else None
            arr = _scaled(values, full, intensity)[..., None]
            return Picture(arr, f"{mode} {'16-bit' if full else '32-bit'} greyscale, intensity {intensity.mode}")
        if mode == "F":
            values = np.asarray(img)
            bad = int((~np.isfinite(values)).sum())
            if bad:
                raise InputError(f"float image with {bad} non-finite pixel value(s) (NaN or inf)")
            in_unit = values.min() >= 0 and values.max() <= 1
            arr = _scaled(values, 1.0 if in_unit else None, intensity)[..., None]
            return Picture(arr, f"float greyscale, intensity {intensity.mode}")
        converted = img.convert("L" if mode in GREY_8 else "RGB")
        values = np.asarray(converted)
        values = values[..., None] if values.ndim == 2 else values
    if intensity.mode in ("auto", "dtype"):
        return Picture(np.ascontiguousarray(values), f"{mode} 8-bit")
    return Picture(_scaled(values, 255.0, intensity), f"{mode} 8-bit, intensity {intensity.mode}")


def decode_values(source: Path | bytes) -> np.ndarray:
    """Stored values as a 2-D or 3-D array, untouched: palette indices for mode P, raw 16-bit values,
    RGB for colour images (alpha dropped). What label maps and mask images are read from."""
    with _open(source) as img:
        img.load()
        if img.mode in ("P", "1", "L") or img.mode.startswith("I"):
            return np.asarray(img)
        return np.asarray(img.convert("L" if img.mode in GREY_8 else "RGB"))
