"""The region that should matter, from whatever a team stores it as: mask images, label maps, COCO
polygons or RLE, bounding boxes, DICOM-SEG. Every reader returns a boolean (H, W) array in the
image's own geometry (:func:`fit_region`), or raises :class:`InputError` saying why it cannot.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from audit.config import MaskSource
from audit.inputs.errors import InputError, NoRegion
from audit.inputs.raster import decode_values


def region_from_image(source: Path | bytes, threshold: int) -> np.ndarray:
    """Mask image: a pixel is in the region when any of its colour channels is above ``threshold``
    (a mask drawn in pure red is a mask, not an empty image)."""
    values = decode_values(source)
    if values.dtype == bool:  # a 1-bit image stores in/out itself: no threshold applies
        return values.copy()  # Pillow's buffer is read-only
    return (values > threshold).any(axis=2) if values.ndim == 3 else values > threshold


def region_from_labelmap(source: Path | bytes, values: tuple[int, ...]) -> np.ndarray:
    """Label map: the region is the pixels whose stored label (palette index for mode P) is listed."""
    labels = decode_values(source)
    if labels.ndim == 3:
        raise InputError(
            "a label map must have one channel (a colour image was given)", hint="store labels as L, P or I;16"
        )
    return np.isin(labels, np.asarray(values))


@lru_cache(maxsize=4)
def _coco(path: Path, mtime: float) -> tuple[dict, dict, dict]:
    """(images by key, annotations by image id, category ids by name); one parse per file version."""
    try:
        data = json.loads(path.read_text())
        images = data["images"]
        annotations = data.get("annotations", [])
        categories = {c["name"]: c["id"] for c in data.get("categories", [])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"data.mask.coco {path.name}: not a COCO annotation file ({type(err).__name__}: {err})"
        ) from None
    by_key: dict[str, dict | None] = {str(im["id"]): im for im in images}  # ids first: they are unique
    stems: dict[str, list[dict]] = {}
    for im in images:
        stems.setdefault(Path(str(im.get("file_name", ""))).stem, []).append(im)
    for stem, ims in stems.items():
        if stem not in by_key:
            by_key[stem] = ims[0] if len(ims) == 1 else None  # None: ambiguous, refused when asked for
    by_image: dict[object, list] = {}
    for ann in annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return by_key, by_image, categories


def region_from_coco(path: Path, image_id: str, categories: tuple[str, ...]) -> np.ndarray:
    """Union of the image's COCO annotations (polygons or RLE, decoded by pycocotools) of the given
    category names (all when empty), at the COCO image entry's height and width."""
    from pycocotools import mask as coco_mask

    by_key, by_image, names = _coco(path, path.stat().st_mtime)
    if image_id in by_key and by_key[image_id] is None:
        raise InputError(
            f"several COCO images have the file name {image_id!r} (in different folders)", column="image_id"
        )
    image = by_key.get(image_id)
    if image is None:
        raise InputError(f"no COCO image with file name or id {image_id!r} in {path.name}", column="image_id")
    unknown = [c for c in categories if c not in names]
    if unknown:
        raise InputError(f"COCO categories {unknown} not in {path.name} (it has {sorted(names)})")
    wanted = {names[c] for c in categories} if categories else None
    h, w = int(image["height"]), int(image["width"])
    region = np.zeros((h, w), dtype=bool)
    found = 0
    for ann in by_image.get(image["id"], []):
        if wanted is not None and ann.get("category_id") not in wanted:
            continue
        seg = ann.get("segmentation")
        if isinstance(seg, list):  # polygons
            rles = coco_mask.frPyObjects(seg, h, w)
            rle = coco_mask.merge(rles)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(seg, h, w)
        elif isinstance(seg, dict):  # compressed RLE
            rle = seg
        else:
            raise InputError(f"COCO annotation {ann.get('id')} has no usable segmentation")
        region |= coco_mask.decode(rle).astype(bool)
        found += 1
    if not found:
        raise NoRegion(f"no COCO annotation{' of ' + str(list(categories)) if categories else ''} for this image")
    return region


def region_from_box(row: dict, columns: tuple[str, str, str, str], size: tuple[int, int]) -> np.ndarray:
    """Axis-aligned box (x0, y0, x1, y1) in the image's pixel coordinates, x1 and y1 exclusive; the
    pixels it touches form the region."""
    w, h = size
    if all(row.get(c) is None or str(row.get(c)).strip() in ("", "nan") for c in columns):
        raise NoRegion("no bounding box", column=",".join(columns))
    try:
        x0, y0, x1, y1 = (float(row[c]) for c in columns)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"box columns {list(columns)} must hold numbers", column=",".join(columns)) from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InputError("box is missing or not finite", column=",".join(columns))
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or outside the {w}x{h} image",
            column=",".join(columns),
            hint="boxes are x0, y0, x1, y1 in pixels with x0 < x1 and y0 < y1",
        )
    region = np.zeros((h, w), dtype=bool)
    region[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = True
    return region


def fit_region(region: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    """``region`` in the image's geometry (``size`` = (width, height)): kept when equal, resized with
    nearest neighbour when only the resolution differs, refused when the aspect ratio does not match."""
    w, h = size
    rh, rw = region.shape
    if (rw, rh) == (w, h):
        return region
    if abs(rw / rh - w / h) > 0.01 * (w / h):
        raise InputError(
            f"{what} is {rw}x{rh} but the image is {w}x{h} (a different aspect ratio)",
            hint="a mask must cover the same field of view as its image",
        )
    img = Image.fromarray(region.astype(np.uint8) * 255)
    return np.asarray(img.resize((w, h), Image.NEAREST)) > 127


def check_region(region: np.ndarray, spec: MaskSource, threshold: int) -> None:
    """Refuse regions that make focus meaningless: empty, or covering (almost) the whole image."""
    share = float(region.mean()) if region.size else 0.0
    if share == 0:
        hint = (
            f"a 0/1 mask needs data.mask_threshold: 0 (it is {threshold})"
            if spec.kind == "image"
            else "check the label values / categories / segments configured under data.mask"
        )
        raise InputError("empty mask (no pixel in the region)", hint=hint)
    if share > spec.max_area:
        raise InputError(
            f"mask covers {share:.1%} of the image (more than data.mask.max_area = {spec.max_area:g}): "
            "focus cannot tell a map that looks at the region from one that looks anywhere",
            hint="check the mask (inverted? all ones?) or raise data.mask.max_area",
        )
