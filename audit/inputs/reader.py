"""One manifest row -> pixels: the image, its region, and the optional artifact mask and
counterfactual rendering. The manifest check (:meth:`RowReader.check`, headers only) and the explain
stage (:meth:`RowReader.read`, full decode) both go through here, so a format is added in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from audit.config import AuditConfig
from audit.inputs import dicom
from audit.inputs.errors import InputError, NoRegion
from audit.inputs.masks import (
    check_region,
    fit_region,
    region_from_box,
    region_from_coco,
    region_from_image,
    region_from_labelmap,
)
from audit.inputs.paths import DataRoot
from audit.inputs.pixels import Picture
from audit.inputs.raster import decode_raster, raster_extent
from audit.provenance import sha256_bytes

T = TypeVar("T")
FILE_COLUMNS = ("image_path", "mask_path", "artifact_mask_path", "counterfactual_path")


def blank(value: object) -> bool:
    """None, NaN, or only whitespace: what a manifest cell means by "no value"."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return str(value).strip() == ""


@dataclass
class Sample:
    """A row's decoded inputs, in the image's own geometry, with the SHA-256 of every file read.
    ``region`` is None when the row has no region annotation; ``no_region`` then says why."""

    image: Picture
    region: np.ndarray | None
    artifact: np.ndarray | None
    counterfactual: Picture | None
    sha256: dict[str, str]
    no_region: str = ""


class RowReader:
    """Reads rows of one audit's manifest under its config (data root, formats, intensity, masks)."""

    def __init__(self, cfg: AuditConfig) -> None:
        self.cfg = cfg
        self.root = DataRoot(cfg.data.data_root)
        self.spec = cfg.data.mask
        self.mask_from_file = self.spec.kind in ("image", "labelmap", "dicom-seg")

    def _columns(self, row: dict) -> list[str]:
        optional = ("mask_path", "artifact_mask_path", "counterfactual_path") if self.mask_from_file else ()
        optional = optional or ("artifact_mask_path", "counterfactual_path")
        return ["image_path", *(c for c in optional if not blank(row.get(c)))]

    def paths(self, row: dict) -> dict[str, Path]:
        """Every file the row names, resolved inside the data root (or the row's InputError). A blank
        ``mask_path`` is not an error: the row has no region (see :class:`NoRegion`)."""
        if blank(row.get("image_path")):
            raise InputError("empty image_path (no image)", column="image_path")
        return {col: self.root.resolve(row[col], col) for col in self._columns(row)}

    def _size(self, path: Path, column: str, data: bytes | None = None) -> tuple[int, int]:
        """(width, height) from the file's header, refused past the per-row limits (``data.max_pixels``,
        ``data.max_decoded_mb``) before anything is decoded: one row must not cost the run its memory."""
        source = data if data is not None else path
        try:
            if dicom.is_dicom(path):
                width, height, nbytes = dicom.dicom_extent(source, self.cfg.data.dicom_frame)
            else:
                width, height, nbytes = raster_extent(source)
        except InputError as err:
            raise err.located(column, path.name) from None
        limits, where = self.cfg.data, {"column": column, "file": path.name}
        hint = "downscale the file, or raise data.max_pixels / data.max_decoded_mb"
        if width * height > limits.max_pixels:
            why = f"{width}x{height} = {width * height} pixels, over data.max_pixels ({limits.max_pixels})"
            raise InputError(why, hint=hint, **where)
        if nbytes > limits.max_decoded_mb * 2**20:
            why = f"decodes to {nbytes / 2**20:.0f} MB, over data.max_decoded_mb ({limits.max_decoded_mb:g})"
            raise InputError(why, hint=hint, **where)
        return width, height

    def _picture(self, path: Path, data: bytes, column: str) -> Picture:
        try:
            if dicom.is_dicom(path):
                return dicom.read_dicom(path, self.cfg.preprocessing.intensity, self.cfg.data.dicom_frame)
            return decode_raster(data, self.cfg.preprocessing.intensity)
        except InputError as err:
            raise err.located(column, path.name) from None

    def _region(self, row: dict, paths: dict[str, Path], data: bytes | None, size: tuple[int, int]) -> np.ndarray:
        kind = self.spec.kind
        if self.mask_from_file and "mask_path" not in paths:
            raise NoRegion("no mask (mask_path is empty)", column="mask_path")
        if kind in ("image", "labelmap"):
            self._size(paths["mask_path"], "mask_path", data)
        if kind == "image":
            region = region_from_image(data if data is not None else paths["mask_path"], self.cfg.data.mask_threshold)
        elif kind == "labelmap":
            region = region_from_labelmap(data if data is not None else paths["mask_path"], self.spec.values)
        elif kind == "dicom-seg":
            region = dicom.read_dicom_seg(paths["mask_path"], self.spec.segments)
        elif kind == "coco":
            assert self.spec.coco is not None
            region = region_from_coco(self.spec.coco, str(row["image_id"]), self.spec.categories)
        else:
            region = region_from_box(row, self.spec.box_columns, size)
        region = fit_region(region, size, "mask")
        check_region(region, self.spec, self.cfg.data.mask_threshold)
        return region

    @property
    def mask_column(self) -> str:
        """The manifest column(s) a row's region comes from, as exclusions name them."""
        return "mask_path" if self.mask_from_file else ",".join(self.spec.box_columns)

    def _artifact(self, paths: dict[str, Path], source: Path | bytes, size: tuple[int, int]) -> np.ndarray:
        """The artifact mask in the image's geometry (any colour channel above the mask threshold)."""
        col = "artifact_mask_path"
        self._size(paths[col], col, source if isinstance(source, bytes) else None)
        art = self._located(col, paths, region_from_image, source, self.cfg.data.mask_threshold)
        return self._located(col, paths, fit_region, art, size, "artifact mask")

    def _located(self, column: str, paths: dict[str, Path], fn: Callable[..., T], *args: object) -> T:
        """Run ``fn``; any error becomes an InputError naming ``column`` and its file."""
        file = paths[column].name if column in paths else ""
        try:
            return fn(*args)
        except NoRegion:
            raise
        except InputError as err:
            raise err.located(column, file) from None
        except Exception as err:  # decoders raise a zoo of types; each is this row's problem only
            raise InputError(f"cannot read {column}: {type(err).__name__}: {err}", column=column, file=file) from None

    def check(self, row: dict) -> dict[str, Path]:
        """Cheap validation at manifest time: paths, image header, the region (decoded: masks are
        small), the optional files' headers and geometry. Returns the resolved paths."""
        paths = self.paths(row)
        size = self._size(paths["image_path"], "image_path")
        with contextlib.suppress(NoRegion):  # no region: audited for performance only
            self._located(self.mask_column, paths, self._region, row, paths, None, size)
        if "artifact_mask_path" in paths:  # may be empty: "no artifact on this image"
            self._artifact(paths, paths["artifact_mask_path"], size)
        if "counterfactual_path" in paths:
            cf_size = self._size(paths["counterfactual_path"], "counterfactual_path")
            if cf_size != size:
                raise InputError(
                    f"counterfactual image is {cf_size[0]}x{cf_size[1]} but the image is {size[0]}x{size[1]}",
                    column="counterfactual_path",
                    file=paths["counterfactual_path"].name,
                )
        return paths

    def read(self, row: dict) -> Sample:
        """Full decode of the row's files, each read once (hashed and decoded from the same bytes)."""
        paths = self.paths(row)
        data = {col: self._located(col, paths, p.read_bytes) for col, p in paths.items()}
        for col in ("image_path", "counterfactual_path"):  # the files may have changed since the check
            if col in data:
                self._size(paths[col], col, data[col])
        image = self._located("image_path", paths, self._picture, paths["image_path"], data["image_path"], "image_path")
        region, no_region = None, ""
        try:
            region = self._located(self.mask_column, paths, self._region, row, paths, data.get("mask_path"), image.size)
        except NoRegion as err:
            no_region = err.reason
        artifact = counterfactual = None
        if "artifact_mask_path" in paths:
            artifact = self._artifact(paths, data["artifact_mask_path"], image.size)
        if "counterfactual_path" in paths:
            cf_path = paths["counterfactual_path"]
            counterfactual = self._located(
                "counterfactual_path", paths, self._picture, cf_path, data["counterfactual_path"], "counterfactual_path"
            )
            if counterfactual.size != image.size:
                raise InputError(
                    "counterfactual image size differs from the image", column="counterfactual_path", file=cf_path.name
                )
        sha = {col: sha256_bytes(b) for col, b in data.items()}
        return Sample(image, region, artifact, counterfactual, sha, no_region)
