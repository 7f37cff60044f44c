"""DICOM images and DICOM-SEG regions, read with pydicom's own pixel pipeline (and highdicom for SEG).

The stored values go through pydicom's modality LUT (rescale slope / intercept or Modality LUT Sequence),
then, per :class:`~audit.config.Intensity`, its VOI LUT or window, a window from the config, the stored
range or a per-image min-max; the result is scaled to [0, 1] by the output range pydicom's function
defines, and MONOCHROME1 is inverted so that bright means dense in every image. Colour images (RGB, YCbCr
converted by pydicom, PALETTE COLOR through its palette) keep 3 channels. Every problem with one file
becomes an :class:`InputError` (that row's exclusion), never a crash of the run.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
    pixel_array,
)
from pydicom.uid import UID

from audit.config import Intensity
from audit.inputs.errors import InputError
from audit.inputs.pixels import Picture

SUFFIXES = (".dcm", ".dicom")
Source = Path | str | bytes | BinaryIO  # a path, or the file's bytes

_FRAME_HINT = "set data.dicom_frame to the frame to audit (0-based)"
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
# The decoding plugin to install, by transfer syntax family (pydicom decodes native and RLE by itself).
_PLUGINS = (
    ("JPEG 2000", "pylibjpeg-openjpeg (with pylibjpeg)"),
    ("HTJ2K", "pylibjpeg-openjpeg (with pylibjpeg)"),
    ("JPEG-LS", "pyjpegls, or pylibjpeg-libjpeg (with pylibjpeg)"),
    ("JPEG", "pylibjpeg-libjpeg (with pylibjpeg); pillow covers 8-bit baseline only"),
    ("RLE", "pylibjpeg-rle (with pylibjpeg)"),
)


def is_dicom(path: Path) -> bool:
    """A ``.dcm`` / ``.dicom`` name, or the ``DICM`` marker after the 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def dicom_size(path: Source, frame: int | None) -> tuple[int, int]:
    """(width, height) of the image (of ``frame`` in a multi-frame file) from the header alone."""
    return dicom_extent(path, frame)[:2]


def dicom_extent(path: Source, frame: int | None) -> tuple[int, int, int]:
    """(width, height, bytes the audited frame decodes into) from the header alone."""
    ds = _header(path)
    _frame_index(ds, frame)
    width, height = int(ds.Columns), int(ds.Rows)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    allocated = int(ds.get("BitsAllocated", 8) or 8)
    return width, height, width * height * samples * max(1, (allocated + 7) // 8)


def read_dicom(path: Source, intensity: Intensity, frame: int | None) -> Picture:
    """Decode one frame and scale it to float32 [0, 1] per ``intensity`` (see the module's docstring).

    A single-frame file is read whatever ``frame`` says; a multi-frame file needs ``frame`` (0-based),
    and only that frame is decoded.
    """
    ds = _header(path)
    index = _frame_index(ds, frame)
    arr = _decode(path, ds, index)
    view = _frame_view(ds, index)
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    what = f"DICOM {pi or 'image'} {ds.get('BitsStored', '?')}-bit"
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        what += " signed"
    if _frames(ds) > 1:
        what += f", frame {index} of {_frames(ds)}"
    try:
        if arr.ndim == 3 or pi == "PALETTE COLOR":
            out, how = _colour(arr, view, pi, intensity)
        elif arr.ndim == 2:
            out, how = _grey(arr, view, intensity)
            if pi == "MONOCHROME1":
                out, how = 1.0 - out, how + ", inverted"
        else:
            raise ValueError(f"decoded pixels have shape {arr.shape}, expected one 2-D frame")
    except InputError:
        raise
    except Exception as err:  # invalid LUTs, windows, palettes: the file's values, not our code
        raise InputError(
            f"cannot apply the DICOM intensity transforms: {type(err).__name__}: {err}",
            hint="check the file's rescale / window / LUT values, or set preprocessing.intensity.mode",
        ) from err
    out = np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0).astype(np.float32)
    if out.ndim == 2:
        out = out[..., None]
    return Picture(np.ascontiguousarray(out), f"{what}, {how}")


def read_dicom_seg(path: Source, segments: tuple[int, ...]) -> np.ndarray:
    """Bool (H, W) region: the union of ``segments`` (segment numbers; empty = all) of a DICOM
    Segmentation of one 2-D source image (or of one frame of a multi-frame source)."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(_stream(path))
    except Exception as err:
        raise InputError(
            f"cannot read DICOM-SEG: {type(err).__name__}: {err}",
            hint="mask_path must name a DICOM Segmentation object (Modality SEG) when data.mask.kind is 'dicom-seg'",
        ) from err
    present = [int(n) for n in seg.segment_numbers]
    wanted = list(segments) or present
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise InputError(
            f"segment(s) {missing} not in the DICOM-SEG (it has {present})",
            hint="set data.mask.segments to segment numbers the file has, or leave it empty for all",
        )
    sources = seg.get_source_image_uids()
    if len(sources) != 1:
        raise InputError(
            f"DICOM-SEG covers {len(sources)} source images, the audit needs the region of one 2-D image",
            hint="split the segmentation per image, one SEG file per manifest row",
        )
    frames = _referenced_frames(seg)
    per_segment = Counter(_segment_of(item) for item in seg.get("PerFrameFunctionalGroupsSequence", []))
    if len(frames) > 1 or any(n > 1 for n in per_segment.values()):
        raise InputError(
            "DICOM-SEG has several frames per segment (a multi-frame or multi-image source), "
            "so which one is the row's region is ambiguous",
            hint="export the segmentation of the audited frame only",
        )
    uid = sources[0][2]
    try:
        if frames:
            pixels = seg.get_pixels_by_source_frame(uid, source_frame_numbers=sorted(frames), segment_numbers=wanted)
        else:
            pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=wanted)
    except Exception as err:
        raise InputError(
            f"cannot read the DICOM-SEG's pixels: {type(err).__name__}: {err}",
            hint="the SEG must map its frames to the source image's pixels (spatial locations preserved)",
        ) from err
    pixels = np.asarray(pixels)[0]  # (H, W, segments)
    region = pixels >= 0.5 if pixels.dtype.kind == "f" else pixels > 0  # FRACTIONAL: probability >= 0.5
    return region.any(axis=-1) if region.ndim == 3 else region.astype(bool)


def _segment_of(frame_item: Dataset) -> int | None:
    """The segment a SEG frame belongs to (None for LABELMAP frames, which hold every segment)."""
    ident = frame_item.get("SegmentIdentificationSequence")
    return int(ident[0].ReferencedSegmentNumber) if ident else None


def _referenced_frames(seg: Dataset) -> set[int]:
    """Source frame numbers the SEG's frames were derived from (empty for single-frame sources)."""
    frames: set[int] = set()
    groups = list(seg.get("PerFrameFunctionalGroupsSequence", [])) + list(seg.get("SharedFunctionalGroupsSequence", []))
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                numbers = source.get("ReferencedFrameNumber")
                if numbers is not None:
                    frames.update(int(n) for n in (numbers if isinstance(numbers, MultiValue) else [numbers]))
    return frames


# --- header, frames, decoding ---------------------------------------------------------------------


def _stream(src: Source) -> Any:
    """What pydicom / highdicom read: a path, or a fresh in-memory stream for bytes."""
    if isinstance(src, bytes | bytearray):
        return io.BytesIO(src)
    if hasattr(src, "read"):
        src.seek(0)  # type: ignore[union-attr]
        return src
    return Path(src)  # type: ignore[arg-type]


def _header(src: Source) -> Dataset:
    try:
        ds = dcmread(_stream(src), stop_before_pixels=True)
    except InvalidDicomError as err:
        raise InputError(
            f"not a DICOM file: {err}",
            hint="DICOM files start with a 128-byte preamble and 'DICM'; convert other formats to PNG or TIFF",
        ) from err
    except Exception as err:
        raise InputError(f"cannot read the DICOM header: {type(err).__name__}: {err}") from err
    if "Rows" not in ds or "Columns" not in ds:
        raise InputError(
            f"DICOM file has no image (no Rows / Columns; SOP class {ds.get('SOPClassUID', 'unknown')})",
            hint="image_path must name a DICOM image, not a report, SEG or other non-image object",
        )
    pixels = int(ds.Rows) * int(ds.Columns)
    if pixels > 2 * Image.MAX_IMAGE_PIXELS:  # the limit Pillow applies to rasters, for the same reason
        raise InputError(
            f"decompression-bomb limit: a {ds.Columns}x{ds.Rows} DICOM frame ({pixels} pixels) exceeds "
            f"{2 * Image.MAX_IMAGE_PIXELS} pixels",
            hint="downscale the image; decoding frames this large can exhaust memory",
        )
    return ds


def _frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _frame_index(ds: Dataset, frame: int | None) -> int:
    """The frame to decode. ``data.dicom_frame`` applies to multi-frame files; a single-frame file
    (a set may mix both) is read as it is."""
    n = _frames(ds)
    if n == 1:
        return 0
    if frame is None:
        raise InputError(f"multi-frame DICOM ({n} frames)", hint=_FRAME_HINT)
    if not 0 <= frame < n:
        raise InputError(
            f"frame {frame} out of range: the DICOM file has {n} frame{'s' if n > 1 else ''}",
            hint=f"data.dicom_frame is 0-based: 0..{n - 1} for this file",
        )
    return frame


def _plugin_hint(tsyntax: UID) -> str:
    name = tsyntax.name
    for family, package in _PLUGINS:
        if family in name:
            return f"install {package} to decode {name}"
    return f"install a pydicom decoding plugin for {name} (e.g. python-gdcm)"


def _decode(src: Source, ds: Dataset, index: int) -> np.ndarray:
    tsyntax = UID(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    if tsyntax:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError as err:
            raise InputError(
                f"unsupported DICOM transfer syntax {tsyntax.name} ({tsyntax})",
                hint="convert the file to an uncompressed or JPEG / JPEG 2000 / RLE transfer syntax",
            ) from err
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            raise InputError(
                f"no decoder installed for {tsyntax.name} pixel data ({missing})", hint=_plugin_hint(tsyntax)
            )
    try:
        return np.asarray(pixel_array(_stream(src), index=index))
    except Exception as err:  # truncated data, decoder failures, inconsistent pixel module
        message = " ".join(str(err).split())  # pydicom lists each plugin's failure on its own line
        raise InputError(
            f"cannot decode DICOM pixel data: {type(err).__name__}: {message}",
            hint=_plugin_hint(tsyntax)
            if isinstance(err, ImportError)
            else "the pixel data may be truncated or corrupt (check the file with e.g. dcmdump or dciodvfy)",
        ) from err


def _frame_view(ds: Dataset, index: int) -> Dataset:
    """``ds`` with the frame's rescale and window copied up from enhanced multi-frame functional groups
    (Enhanced CT / MR / XA keep them there, where pydicom's LUT functions do not look)."""
    shared, per_frame = ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")
    items = ([shared[0]] if shared else []) + ([per_frame[index]] if per_frame and index < len(per_frame) else [])
    if not items:
        return ds
    view = Dataset()
    view.update(ds)
    for item in items:  # per-frame values override shared ones
        for seq, keywords in (
            ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
            ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
        ):
            if item.get(seq):
                for keyword in keywords:
                    if keyword in item[seq][0]:
                        setattr(view, keyword, item[seq][0][keyword].value)
    if getattr(ds, "file_meta", None) is not None:
        view.file_meta = ds.file_meta
    return view


# --- intensity ------------------------------------------------------------------------------------


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality_ends(ds: Dataset) -> tuple[float, float]:
    """The modality LUT's output for the lowest and highest stored value, in that order (so reversed for a
    negative slope): the range pydicom's ``apply_windowing`` maps a window onto."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    lo, hi = apply_modality_lut(np.asarray(_stored_range(ds), dtype=np.int64), ds)
    return float(lo), float(hi)


def _scaled(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(x - lo) / (hi - lo); zeros where the range is empty (a constant image)."""
    x = np.asarray(x, dtype=np.float64)
    if hi == lo or not np.isfinite(hi - lo):
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _minmax(x: np.ndarray) -> np.ndarray:
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, dtype=np.float64)
    return _scaled(x, float(x[finite].min()), float(x[finite].max()))


def _window_view(ds: Dataset, centre: float, width: float) -> Dataset:
    """The header elements ``apply_windowing`` reads, with the config's window in place of the file's
    (LINEAR, whatever VOI LUT function the file names for its own windows)."""
    view = Dataset()
    for keyword in ("BitsStored", "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"):
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    view.PixelRepresentation = int(ds.get("PixelRepresentation", 0) or 0)
    view.PhotometricInterpretation = "MONOCHROME2"  # windowing is defined on grey values; colour goes per channel
    view.WindowCenter, view.WindowWidth = centre, width
    return view


def _voi_lut_valid(ds: Dataset) -> bool:
    items = ds.get("VOILUTSequence")
    return bool(items) and "LUTDescriptor" in items[0] and "LUTData" in items[0]


def _has_window(ds: Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _first(value: Any) -> float:
    """The first of a multi-valued DS (pydicom applies the first window too), or the single value."""
    return float(value[0]) if isinstance(value, MultiValue | list | tuple) else float(value)


def _grey(arr: np.ndarray, ds: Dataset, intensity: Intensity) -> tuple[np.ndarray, str]:
    if arr.dtype.kind == "f":  # Float / Double Float Pixel Data: no stored range and no LUTs, so min-max
        return _minmax(arr), "min-max (float pixel data)"
    values = apply_modality_lut(arr, ds)
    mode = intensity.mode
    if mode == "window":
        c, w = intensity.window  # type: ignore[misc]
        windowed = apply_windowing(values, _window_view(ds, c, w))
        return _scaled(windowed, *_modality_ends(ds)), f"window {c:g}/{w:g} from config"
    if mode == "auto" and _voi_lut_valid(ds):
        item = ds.VOILUTSequence[0]
        first, entries = int(item.LUTDescriptor[1]), int(item.LUTDescriptor[0]) or 2**16
        # Index with integers inside the LUT's domain (pydicom clips the same way; this keeps float
        # modality output and out-of-range values from wrapping in its uint16 index array).
        index = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
        mapped = apply_voi(index, ds, 0)
        # Output range 0..2**bits - 1, with bits as declared, or as used when the entries are narrower
        # than declared (common: 12-bit entries in a LUT declared 16-bit).
        bits = min(int(item.LUTDescriptor[2]), max(int(np.max(mapped, initial=0)).bit_length(), 8))
        return _scaled(mapped, 0, 2**bits - 1), "VOI LUT from file"
    if mode == "auto" and _has_window(ds):
        windowed = apply_windowing(values, ds, 0)
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        return _scaled(windowed, *_modality_ends(ds)), f"window {c:g}/{w:g} from file"
    if mode == "dtype":
        lo, hi = sorted(_modality_ends(ds))
        return _scaled(values, lo, hi), "stored range"
    return _minmax(values), "min-max" if mode == "minmax" else "min-max (no window in file)"


def _colour(arr: np.ndarray, ds: Dataset, pi: str, intensity: Intensity) -> tuple[np.ndarray, str]:
    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        lo, hi = 0, int(np.iinfo(rgb.dtype).max)
        what = "palette"
    else:
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"colour pixels have shape {arr.shape}, expected (rows, columns, 3)")
        rgb, what = arr, "as RGB" if pi.startswith("YBR") else "RGB"
        lo, hi = _stored_range(ds)
    if intensity.mode == "minmax":
        return _minmax(rgb), f"{what}, min-max"
    if intensity.mode == "window":
        c, w = intensity.window  # type: ignore[misc]
        header = Dataset()
        header.BitsStored = int(np.iinfo(rgb.dtype).bits) if pi == "PALETTE COLOR" else int(ds.BitsStored)
        header.PixelRepresentation = int(lo < 0)
        view = _window_view(header, c, w)  # in stored values: colour has no modality LUT
        return _scaled(apply_windowing(rgb, view), lo, hi), f"{what}, window {c:g}/{w:g} from config"
    return _scaled(rgb, lo, hi), f"{what}, stored range"
