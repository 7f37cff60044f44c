"""DICOM reading on files written here with pydicom / highdicom, checked against values computed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from audit.config import Intensity
from audit.examples.dicom import write_dicom, write_dicom_seg
from audit.inputs import dicom
from audit.inputs.dicom import dicom_size, is_dicom, read_dicom, read_dicom_seg
from audit.inputs.errors import InputError

AUTO = Intensity()
DTYPE = Intensity(mode="dtype")
MINMAX = Intensity(mode="minmax")

# 12-bit stored values s; with slope 2 / intercept -1024 the modality value is v = 2 s - 1024.
STORED = np.array([[0, 400, 532, 600], [700, 2000, 4095, 532]], dtype=np.uint16)
V = 2.0 * STORED - 1024


def linear_window(v: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, as [0, 1], written out by hand for the expectations."""
    c, w = centre - 0.5, width - 1
    return np.where(v <= c - w / 2, 0.0, np.where(v > c + w / 2, 1.0, (v - c) / w + 0.5))


def ct_like(tmp_path: Path, photometric: str = "MONOCHROME2", **kw: object) -> Path:
    return write_dicom(
        tmp_path / f"{photometric}.dcm", STORED, photometric=photometric, rescale=(2, -1024), window=(40, 400), **kw
    )


def grey(picture_array: np.ndarray) -> np.ndarray:
    assert picture_array.dtype == np.float32 and picture_array.shape[2] == 1
    return picture_array[..., 0].astype(np.float64)


def test_file_window_after_rescale(tmp_path: Path) -> None:
    pic = read_dicom(ct_like(tmp_path), AUTO, None)
    out = grey(pic.array)
    np.testing.assert_allclose(out, linear_window(V, 40, 400), atol=1e-6)
    assert out[0, 0] == 0 and out[0, 1] == 0  # v = -1024, -224: below the window
    assert out[0, 2] == pytest.approx(0.5, abs=0.002)  # v = 40: the centre
    assert out[1, 1] == 1 and out[1, 2] == 1  # above
    assert pic.description == "DICOM MONOCHROME2 12-bit, window 40/400 from file"
    several = write_dicom(tmp_path / "two.dcm", STORED, rescale=(2, -1024), window=[(40, 400), (176, 100)])
    np.testing.assert_array_equal(read_dicom(several, AUTO, None).array, pic.array)  # the first window


def test_config_window_overrides_the_files(tmp_path: Path) -> None:
    pic = read_dicom(ct_like(tmp_path), Intensity(mode="window", window=(176, 100)), None)
    out = grey(pic.array)
    np.testing.assert_allclose(out, linear_window(V, 176, 100), atol=1e-6)
    assert out[0, 3] == pytest.approx(0.5, abs=0.01)  # s = 600 -> v = 176
    assert "from config" in pic.description


def test_dtype_and_minmax(tmp_path: Path) -> None:
    path = ct_like(tmp_path)
    # dtype: (v - v(0)) / (v(4095) - v(0)) = s / 4095, whatever the rescale
    np.testing.assert_allclose(grey(read_dicom(path, DTYPE, None).array), STORED / 4095, atol=1e-6)
    np.testing.assert_allclose(grey(read_dicom(path, MINMAX, None).array), STORED / 4095, atol=1e-6)
    small = write_dicom(tmp_path / "small.dcm", STORED[:, 1:3])  # 400..4095 -> min-max differs from dtype
    expected = (STORED[:, 1:3] - 400) / (4095 - 400)
    np.testing.assert_allclose(grey(read_dicom(small, MINMAX, None).array), expected, atol=1e-6)
    # no window in the file: auto falls back to min-max
    np.testing.assert_allclose(grey(read_dicom(small, AUTO, None).array), expected, atol=1e-6)


def test_constant_image_minmax_is_zero(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "flat.dcm", np.full((4, 5), 77))
    for intensity in (MINMAX, AUTO):
        out = read_dicom(path, intensity, None).array
        assert not np.isnan(out).any() and (out == 0).all()


@pytest.mark.parametrize("intensity", [AUTO, DTYPE, MINMAX, Intensity(mode="window", window=(176, 100))])
def test_monochrome1_is_inverted(tmp_path: Path, intensity: Intensity) -> None:
    mono2 = grey(read_dicom(ct_like(tmp_path, "MONOCHROME2"), intensity, None).array)
    pic = read_dicom(ct_like(tmp_path, "MONOCHROME1"), intensity, None)
    np.testing.assert_allclose(grey(pic.array), 1 - mono2, atol=1e-6)
    assert pic.description.endswith("inverted")


def test_16_bit_keeps_its_depth(tmp_path: Path) -> None:
    stored = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    path = write_dicom(tmp_path / "deep.dcm", stored, bits_stored=16)
    for intensity in (AUTO, DTYPE):
        out = read_dicom(path, intensity, None).array
        assert len(np.unique(out)) > 1000
    np.testing.assert_allclose(grey(read_dicom(path, DTYPE, None).array), stored / 65535, atol=1e-6)


def test_signed_values(tmp_path: Path) -> None:
    stored = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    path = write_dicom(tmp_path / "signed.dcm", stored, signed=True)
    np.testing.assert_allclose(grey(read_dicom(path, DTYPE, None).array), (stored + 2048) / 4095, atol=1e-6)
    assert "signed" in read_dicom(path, DTYPE, None).description


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 150], [200, 250, 4095]], dtype=np.uint16)
    entries = np.arange(101) * 655  # first mapped value 100; 16-bit entries up to 65500
    path = write_dicom(tmp_path / "voi.dcm", stored, window=(40, 400), voi_lut=(100, entries))
    pic = read_dicom(path, AUTO, None)
    expected = np.array([[0, 0, 50 * 655], [100 * 655, 100 * 655, 100 * 655]]) / 65535
    np.testing.assert_allclose(grey(pic.array), expected, atol=1e-6)
    assert pic.description.endswith("VOI LUT from file")


def test_multi_frame(tmp_path: Path) -> None:
    frames = (np.arange(5)[:, None, None] * 100 + np.arange(12).reshape(3, 4)).astype(np.uint16)
    path = write_dicom(tmp_path / "multi.dcm", frames)
    for f in (0, 2):
        np.testing.assert_allclose(grey(read_dicom(path, DTYPE, f).array), frames[f] / 4095, atol=1e-6)
    assert "frame 2 of 5" in read_dicom(path, DTYPE, 2).description
    assert dicom_size(path, 4) == (4, 3)
    for call in (lambda: read_dicom(path, AUTO, None), lambda: dicom_size(path, None)):
        with pytest.raises(InputError) as err:
            call()
        assert "multi-frame" in err.value.reason and "5 frames" in err.value.reason
        assert "data.dicom_frame" in err.value.hint
    for call in (lambda: read_dicom(path, AUTO, 5), lambda: dicom_size(path, 5)):
        with pytest.raises(InputError, match="out of range"):
            call()


def test_single_frame_frame_numbers(tmp_path: Path) -> None:
    path = ct_like(tmp_path)
    assert dicom_size(path, None) == dicom_size(path, 0) == (4, 2)
    np.testing.assert_array_equal(read_dicom(path, AUTO, 0).array, read_dicom(path, AUTO, None).array)
    # data.dicom_frame picks the frame of multi-frame files; a set may mix in single-frame ones
    np.testing.assert_array_equal(read_dicom(path, AUTO, 3).array, read_dicom(path, AUTO, None).array)


def test_enhanced_multi_frame_per_frame_window(tmp_path: Path) -> None:
    """Enhanced objects keep rescale and window in functional groups; frame 1's own window is used."""
    from pydicom.dataset import Dataset

    frames = np.stack([STORED, STORED]).astype(np.uint16)
    path = write_dicom(tmp_path / "enhanced.dcm", frames)
    ds = dcmread(path)
    shared, transform = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2, -1024, "HU"
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for centre, width in ((40, 400), (176, 100)):
        item, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = centre, width
        item.FrameVOILUTSequence = [voi]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.save_as(path)
    np.testing.assert_allclose(grey(read_dicom(path, AUTO, 1).array), linear_window(V, 176, 100), atol=1e-6)
    np.testing.assert_allclose(grey(read_dicom(path, AUTO, 0).array), linear_window(V, 40, 400), atol=1e-6)


@pytest.mark.parametrize("compress", ["rle", "jpeg2000"])
@pytest.mark.parametrize("signed", [False, True])
def test_lossless_compression_decodes_equal(tmp_path: Path, compress: str, signed: bool) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, size=(2, 40, 36))
    plain = write_dicom(tmp_path / "plain.dcm", stored, signed=signed)
    packed = write_dicom(tmp_path / f"{compress}.dcm", stored, signed=signed, compress=compress)
    assert dcmread(packed, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    for f in (0, 1):
        np.testing.assert_array_equal(read_dicom(packed, DTYPE, f).array, read_dicom(plain, DTYPE, f).array)


def test_rgb_ybr_and_palette(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 7, 3)).astype(np.uint8)
    pic = read_dicom(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"), AUTO, None)
    assert pic.array.shape == (6, 7, 3) and pic.array.dtype == np.float32
    np.testing.assert_allclose(pic.array, rgb / 255, atol=1e-6)
    ybr = read_dicom(write_dicom(tmp_path / "ybr.dcm", rgb, photometric="YBR_FULL", compress="rle"), AUTO, None)
    np.testing.assert_allclose(ybr.array, rgb / 255, atol=3 / 255)  # YCbCr round trip in 8 bits
    minmax = read_dicom(tmp_path / "rgb.dcm", MINMAX, None).array
    np.testing.assert_allclose(minmax, (rgb - rgb.min()) / (rgb.max() - rgb.min()), atol=1e-6)

    palette = np.array([[0, 0, 0], [65535, 0, 0], [0, 32768, 65535]], dtype=np.uint16)
    index = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    path = write_dicom(tmp_path / "palette.dcm", index, photometric="PALETTE COLOR", bits_stored=8, palette=palette)
    np.testing.assert_allclose(read_dicom(path, AUTO, None).array, palette[index] / 65535, atol=1e-6)


def test_bytes_source(tmp_path: Path) -> None:
    path = ct_like(tmp_path)
    np.testing.assert_array_equal(read_dicom(path.read_bytes(), AUTO, None).array, read_dicom(path, AUTO, None).array)
    assert dicom_size(path.read_bytes(), None) == (4, 2)


def test_broken_files(tmp_path: Path) -> None:
    data = write_dicom(tmp_path / "whole.dcm", np.arange(64 * 64).reshape(64, 64)).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-500])
    assert dicom_size(cut, None) == (64, 64)  # the header is intact
    with pytest.raises(InputError, match="cannot decode DICOM pixel data") as err:
        read_dicom(cut, AUTO, None)
    assert err.value.hint

    text = tmp_path / "notes.dcm"
    text.write_text("not an image")
    with pytest.raises(InputError, match="not a DICOM file"):
        dicom_size(text, None)
    with pytest.raises(InputError, match="not a DICOM file"):
        read_dicom(text, AUTO, None)


def test_missing_decoder_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "j2k.dcm", np.zeros((32, 32), dtype=np.uint16), compress="jpeg2000")

    class Unavailable:
        is_available = False
        missing_dependencies = ("pylibjpeg - requires numpy, pylibjpeg and pylibjpeg-openjpeg",)

    monkeypatch.setattr(dicom, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(InputError, match="no decoder installed for JPEG 2000") as err:
        read_dicom(path, AUTO, None)
    assert "pylibjpeg-openjpeg" in err.value.hint


def test_is_dicom(tmp_path: Path) -> None:
    bare = tmp_path / "IM0001"
    bare.write_bytes(ct_like(tmp_path).read_bytes())
    assert is_dicom(bare)
    assert is_dicom(tmp_path / "missing.DCM") and is_dicom(tmp_path / "x.dicom")
    other = tmp_path / "image"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert not is_dicom(other)
    assert not is_dicom(tmp_path / "absent")


def test_dicom_seg_round_trip(tmp_path: Path) -> None:
    source = write_dicom(tmp_path / "source.dcm", np.zeros((20, 30), dtype=np.uint16))
    rng = np.random.default_rng(2)
    one, two = rng.random((20, 30)) > 0.7, np.zeros((20, 30), dtype=bool)
    two[5:9, 10:25] = True
    seg = write_dicom_seg(tmp_path / "seg.dcm", source, {1: one, 2: two})
    np.testing.assert_array_equal(read_dicom_seg(seg, (1,)), one)
    np.testing.assert_array_equal(read_dicom_seg(seg, (2,)), two)
    np.testing.assert_array_equal(read_dicom_seg(seg, ()), one | two)
    np.testing.assert_array_equal(read_dicom_seg(write_dicom_seg(tmp_path / "s1.dcm", source, two), ()), two)
    with pytest.raises(InputError, match=r"segment\(s\) \[3\] not in the DICOM-SEG") as err:
        read_dicom_seg(seg, (1, 3))
    assert "data.mask.segments" in err.value.hint
    with pytest.raises(InputError, match="cannot read DICOM-SEG"):
        read_dicom_seg(source, ())


def test_a_header_claiming_a_huge_frame_is_refused_before_decoding(tmp_path: Path) -> None:
    import pydicom

    path = write_dicom(tmp_path / "small.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 60000, 60000  # 3.6 G pixels claimed; the pixel data stays 32 bytes
    ds.save_as(tmp_path / "bomb.dcm")
    for call in (
        lambda: dicom_size(tmp_path / "bomb.dcm", None),
        lambda: read_dicom(tmp_path / "bomb.dcm", AUTO, None),
    ):
        with pytest.raises(InputError, match="decompression-bomb limit"):
            call()
