"""Small, valid DICOM files written with pydicom (and DICOM-SEG with highdicom), for tests and benchmarks.

Why: the DICOM reader must be checked on files whose stored values, LUTs and windows are known exactly,
without downloading anything. Every UID is derived from the file name (or ``seed``) and no date is taken
from the clock, so writing the same arguments to the same file name gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

_SOP_CLASS = {  # single-frame greyscale, by modality
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_MULTIFRAME_SC = {8: "1.2.840.10008.5.1.4.1.1.7.2", 16: "1.2.840.10008.5.1.4.1.1.7.3"}  # grey byte / word
_MULTIFRAME_TRUE_COLOUR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
_COMPRESSION = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless}
_DATE, _TIME = "20240101", "120000"


def _uid(seed: str, role: str) -> str:
    """Deterministic UID under pydicom's root: same seed and role, same UID."""
    return generate_uid(entropy_srcs=[seed, role])


def _lut_bytes(values: Sequence[int] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<u2").tobytes()


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    voi_lut: tuple[int, Sequence[int] | np.ndarray] | None = None,
    palette: np.ndarray | None = None,
    signed: bool = False,
    compress: str | None = None,
    modality: str = "DX",
    seed: str | None = None,
) -> Path:
    """Write ``pixels`` (stored values) as a DICOM file and return its path.

    ``pixels``: (H, W) integers for grey or PALETTE COLOR indices, (F, H, W) for multi-frame grey,
    (H, W, 3) uint8 RGB for ``photometric`` RGB / YBR_FULL (converted to YCbCr here). ``rescale`` is
    (slope, intercept); ``window`` one (centre, width) or several (all written, in order); ``voi_lut``
    (first mapped value, 16-bit entries); ``palette`` (N, 3) 16-bit RGB entries for PALETTE COLOR.
    ``signed`` stores two's complement (PixelRepresentation 1). ``compress``: None, ``"rle"`` (pydicom's
    own RLE Lossless encoder) or ``"jpeg2000"`` (lossless, via pylibjpeg-openjpeg).
    """
    path = Path(path)
    seed = seed or path.name
    arr = np.asarray(pixels)
    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422")
    if colour:
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"{photometric} pixels must be (H, W, 3), got {arr.shape}")
        arr = arr.astype(np.uint8)
        if photometric != "RGB":
            arr = convert_color_space(arr, "RGB", "YBR_FULL")
            photometric = "YBR_FULL"  # pydicom's set_pixel_data takes 422 only as already sub-sampled data
        bits_stored = 8
    else:
        if arr.ndim not in (2, 3):
            raise ValueError(f"greyscale pixels must be (H, W) or (F, H, W), got {arr.shape}")
        width = 8 if bits_stored <= 8 else 16
        dtype = np.dtype(f"{'i' if signed else 'u'}{width // 8}")
        lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"stored values {arr.min()}..{arr.max()} do not fit {bits_stored} bits (signed={signed})")
        arr = arr.astype(dtype)
    frames = arr.shape[0] if (arr.ndim == 3 and not colour) else 1

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if colour or photometric == "PALETTE COLOR":
        sop_class = _MULTIFRAME_TRUE_COLOUR_SC if frames > 1 else _SECONDARY_CAPTURE
    elif frames > 1:
        sop_class = _MULTIFRAME_SC[8 if bits_stored <= 8 else 16]
    else:
        sop_class = _SOP_CLASS.get(modality, _SECONDARY_CAPTURE)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(seed, "instance")
    ds.StudyInstanceUID = _uid(seed, "study")
    ds.SeriesInstanceUID = _uid(seed, "series")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Audit^Synthetic"
    ds.PatientID = f"SYN-{seed}"[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate, ds.StudyTime = _DATE, _TIME
    ds.ContentDate, ds.ContentTime = _DATE, _TIME
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "audit synthetic"
    ds.ConversionType = "SYN"  # Secondary Capture equipment: synthetic, written by this module
    ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)

    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
        ds.RescaleType = "HU" if modality == "CT" else "US"
    if window is not None:
        windows = np.asarray(window, dtype=float).reshape(-1, 2)
        ds.WindowCenter = [f"{c:g}" for c in windows[:, 0]]
        ds.WindowWidth = [f"{w:g}" for w in windows[:, 1]]
    if voi_lut is not None:
        first, entries = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(entries), first, 16]
        item.add_new(0x00283006, "OW", _lut_bytes(entries))  # LUT Data
        ds.VOILUTSequence = [item]
    if photometric == "PALETTE COLOR":
        if palette is None:
            raise ValueError("PALETTE COLOR needs a palette: (N, 3) 16-bit RGB entries")
        lut = np.asarray(palette)
        for i, colour_name in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{colour_name}PaletteColorLookupTableDescriptor", [len(lut), 0, 16])
            ds.add_new(0x00281201 + i, "OW", _lut_bytes(lut[:, i]))  # Red/Green/Blue Palette Color LUT Data

    if compress is not None:
        if compress not in _COMPRESSION:
            raise ValueError(f"compress must be None, 'rle' or 'jpeg2000', got {compress!r}")
        if compress == "jpeg2000" and min(int(ds.Rows), int(ds.Columns)) < 32:
            raise ValueError("JPEG 2000 via openjpeg (6 wavelet resolutions) needs rows and columns >= 32")
        ds.compress(_COMPRESSION[compress], generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_seg(
    path: str | Path,
    source_path: str | Path,
    mask: np.ndarray | Mapping[int, np.ndarray],
    *,
    seed: str | None = None,
) -> Path:
    """Write a BINARY DICOM Segmentation of the single-frame image at ``source_path`` with highdicom.

    ``mask``: one (H, W) bool region (segment 1) or ``{segment_number: region}`` with numbers 1..n
    (DICOM-SEG numbers segments consecutively from 1; regions may overlap).
    """
    import highdicom as hd
    from pydicom import dcmread
    from pydicom.sr.codedict import codes

    path, seed = Path(path), seed or Path(path).name
    masks = {1: mask} if isinstance(mask, np.ndarray) else dict(mask)
    numbers = sorted(masks)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"segment numbers must be 1..n, got {numbers}")
    stack = np.stack([np.asarray(masks[n], dtype=bool) for n in numbers], axis=-1)[None]  # (1, H, W, S)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"region {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n in numbers
    ]
    seg = hd.seg.Segmentation(
        source_images=[dcmread(source_path)],
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_uid(seed, "seg-series"),
        series_number=100,
        sop_instance_uid=_uid(seed, "seg-instance"),
        instance_number=1,
        manufacturer="audit synthetic",
        manufacturer_model_name="write_dicom_seg",
        software_versions="1",
        device_serial_number="0",
        omit_empty_frames=False,
    )
    fixed = {
        "ContentDate": _DATE,
        "SeriesDate": _DATE,
        "InstanceCreationDate": _DATE,
        "ContentTime": _TIME,
        "SeriesTime": _TIME,
        "InstanceCreationTime": _TIME,
        "ContributionDateTime": _DATE + _TIME,
        "DimensionOrganizationUID": _uid(seed, "seg-dimensions"),
    }

    def _reproducible(dataset: Dataset, elem: DataElement) -> None:  # highdicom stamps clock time and random UIDs
        if elem.keyword in fixed:
            elem.value = fixed[elem.keyword]

    seg.walk(_reproducible)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path
