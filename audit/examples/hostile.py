"""Hostile audit sets: good rows mixed with every kind of input a team's data can throw at the audit.

Why: "one bad row never stops a run, nothing is silently lost, nothing outside the data root is read,
no pickle runs" are claims; this builds the manifests that test them (``tests/test_hostile_inputs.py``
with hypothesis, ``bench/fuzz_inputs.py`` at 1,000 rows). Each row records the kind it was built as and,
for bad kinds, a phrase its exclusion reason must contain.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from audit.examples.dicom import write_dicom
from audit.examples.synth import generate

# bad kind -> a phrase its exclusion reason must contain
BAD = {
    "missing_file": "file not found",
    "empty_path": "empty image_path",
    "zero_byte": "not an image Pillow can read",
    "truncated_image": "truncated",
    "truncated_mask": "truncated",
    "mask_aspect": "different aspect ratio",
    "empty_mask": "empty mask",
    "full_mask": "covers 100.0%",
    "unknown_label": "unknown label",
    "nan_label": "missing label",
    "duplicate_id": "duplicate image_id",
    "traversal": "leads outside the data root",
    "absolute_outside": "leads outside the data root",
    "symlink_escape": "symlink that leads outside",
    "symlink_loop": "symlink loop",
    "nul_byte": "NUL byte",
    "long_path": "too long",
    "directory": "not a regular file",
    "bomb": "decompression-bomb",
    "dicom_bomb": "decompression-bomb",
    "pickle_payload": "not an image Pillow can read",
    "broken_dicom": "DICOM",
    "multi_frame": "multi-frame DICOM",
    "long_group": "characters long",  # a 300,000-character group name
    "long_id": "characters long",  # a 200,000-character image_id
    "many_pixels": "max_pixels",  # a 7000x7000 1-bit PNG of a few kB: under Pillow's bomb limit, over ours
    "many_pixels_dicom": "max_pixels",  # a DICOM header claiming 13000x13000 (RLE-sized), under the bomb limit
    "many_pixels_mask": "max_pixels",  # the same 1-bit PNG as the region mask
}
# good kinds: each must be audited, with the same numbers as when audited among good rows only
GOOD = (
    "good",
    "good_16bit",
    "good_dicom",
    "good_red_mask",
    "good_html",
    "good_formula",
    "good_missing_group",
    "good_no_mask",  # audited for performance only: no localisation numbers
    "good_1bit_mask",  # a mode-"1" PNG mask: in/out stored as bits, no threshold applies
    "good_rtl_group",  # a right-to-left override in a group name
    "good_cjk_group",  # CJK and emoji in a group name
)
KINDS = (*GOOD, *BAD)


class Payload:
    """Unpickling this creates a folder: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


@dataclass
class HostileSet:
    root: Path  # the data root (the manifest's folder)
    manifest: Path
    outside: Path  # a folder beside the root with files no audit may read
    marker: Path  # exists iff a pickle payload was executed
    expected: pd.DataFrame  # row (1-based), image_id, kind, phrase ('' for good rows), key (good rows)


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: what a decompression bomb looks like to a
    reader that trusts headers (a real one is a few kB of zeros that inflate to gigabytes)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def _assets(root: Path, outside: Path, marker: Path, pool: pd.DataFrame) -> None:
    """The shared bad files, written once per set."""
    bad = root / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    first = root / pool["image_path"][0]
    Image.open(first).save(outside / "secret.png")
    (bad / "zero.png").write_bytes(b"")
    data = first.read_bytes()
    (bad / "truncated.png").write_bytes(data[: len(data) * 2 // 3])
    mask = (root / pool["mask_path"][0]).read_bytes()
    (bad / "truncated_mask.png").write_bytes(mask[: len(mask) * 2 // 3])
    w, h = Image.open(first).size
    Image.new("L", (w, h * 2), 255).save(bad / "tall_mask.png")
    Image.new("L", (w, h), 0).save(bad / "empty_mask.png")
    Image.new("L", (w, h), 255).save(bad / "full_mask.png")
    (bad / "bomb.png").write_bytes(png_claiming(20000, 20000))
    (bad / "escape.png").symlink_to(outside / "secret.png")
    (bad / "loop_a.png").symlink_to(bad / "loop_b.png")
    (bad / "loop_b.png").symlink_to(bad / "loop_a.png")
    (bad / "folder.png").mkdir()
    (bad / "payload.png").write_bytes(pickle.dumps(Payload(marker)))
    (bad / "payload.pt").write_bytes(pickle.dumps(Payload(marker)))
    grey = np.asarray(Image.open(first).convert("L"), np.uint16) * 16
    dcm = write_dicom(bad / "whole.dcm", grey).read_bytes()
    (bad / "broken.dcm").write_bytes(dcm[: len(dcm) - 2000])
    write_dicom(bad / "cine.dcm", np.stack([grey, grey]))
    bomb = pydicom.dcmread(bad / "whole.dcm")
    bomb.Rows, bomb.Columns = 60000, 60000  # claims 3.6 G pixels; holds 64x64
    bomb.save_as(bad / "bomb.dcm")
    bomb.Rows, bomb.Columns = 13000, 13000  # 169 M pixels: under the DICOM bomb limit, over data.max_pixels
    bomb.save_as(bad / "many_pixels.dcm")
    Image.new("1", (7000, 7000), 0).save(bad / "many_pixels.png")


def _good_file(root: Path, pool_row: dict, kind: str, k: int) -> dict:
    """A good row's files (variants written once per pool image)."""
    good = root / "good"
    good.mkdir(exist_ok=True)
    img = root / pool_row["image_path"]
    row = {"image_path": pool_row["image_path"], "mask_path": pool_row["mask_path"]}
    if kind == "good_16bit":
        out = good / f"{k}_16.png"
        if not out.exists():
            Image.fromarray(np.asarray(Image.open(img).convert("L"), np.uint16) * 257).save(out)
        row["image_path"] = f"good/{out.name}"
    elif kind == "good_dicom":
        out = good / f"{k}.dcm"
        if not out.exists():
            write_dicom(out, np.asarray(Image.open(img).convert("L"), np.uint16) * 16, window=(2048, 4096))
        row["image_path"] = f"good/{out.name}"
    elif kind == "good_1bit_mask":
        out = good / f"{k}_1bit.png"
        if not out.exists():
            Image.open(root / pool_row["mask_path"]).convert("L").point(lambda v: 255 if v > 127 else 0).convert(
                "1"
            ).save(out)
        row["mask_path"] = f"good/{out.name}"
    elif kind == "good_red_mask":
        out = good / f"{k}_red.png"
        if not out.exists():
            m = np.asarray(Image.open(root / pool_row["mask_path"]).convert("L")) > 127
            red = np.zeros((*m.shape, 3), np.uint8)
            red[m, 0] = 255
            Image.fromarray(red).save(out)
        row["mask_path"] = f"good/{out.name}"
    return row


def _bad_row(kind: str, outside: Path, base: dict, first_id: str) -> dict:
    row = dict(base)
    paths = {
        "missing_file": "images/nope.png",
        "zero_byte": "bad/zero.png",
        "truncated_image": "bad/truncated.png",
        "traversal": "../outside/secret.png",
        "absolute_outside": str(outside / "secret.png"),
        "symlink_escape": "bad/escape.png",
        "symlink_loop": "bad/loop_a.png",
        "nul_byte": "images/x\x00.png",
        "long_path": "images/" + "a" * 300 + ".png",
        "directory": "bad/folder.png",
        "bomb": "bad/bomb.png",
        "dicom_bomb": "bad/bomb.dcm",
        "pickle_payload": "bad/payload.png",
        "broken_dicom": "bad/broken.dcm",
        "multi_frame": "bad/cine.dcm",
        "many_pixels": "bad/many_pixels.png",
        "many_pixels_dicom": "bad/many_pixels.dcm",
        "empty_path": "",
    }
    masks = {
        "truncated_mask": "bad/truncated_mask.png",
        "mask_aspect": "bad/tall_mask.png",
        "empty_mask": "bad/empty_mask.png",
        "full_mask": "bad/full_mask.png",
        "many_pixels_mask": "bad/many_pixels.png",
    }
    if kind in paths:
        row["image_path"] = paths[kind]
    elif kind in masks:
        row["mask_path"] = masks[kind]
    elif kind == "unknown_label":
        row["label"] = "eczema"
    elif kind == "nan_label":
        row["label"] = None
    elif kind == "duplicate_id":
        row["image_id"] = first_id
    elif kind == "long_group":
        row["site"] = "g" * 300_000
    elif kind == "long_id":
        row["image_id"] = "i" * 200_000
    return row


def build_hostile_set(base: Path, kinds: list[str], pool: int = 6, seed: int = 3, fmt: str = "parquet") -> HostileSet:
    """Rows of the given kinds (the first must be a good kind, so a duplicate has something to copy), in a
    ``parquet``, ``jsonl`` or ``csv`` manifest."""
    if kinds and kinds[0] not in GOOD:
        raise ValueError("the first row must be a good kind")
    root, outside, marker = base / "root", base / "outside", base / "payload-ran"
    pool_df = generate(root, pool, seed=seed, size=64)
    _assets(root, outside, marker, pool_df)
    pool_rows = pool_df.to_dict("records")
    rows, expected = [], []
    for i, kind in enumerate(kinds):
        k = i % pool
        p = pool_rows[k]
        base_row = {"image_id": f"r{i:05d}", "label": p["label"], "site": p["site"], "sex": p["sex"]}
        if kind in GOOD:
            row = {**base_row, **_good_file(root, p, kind, k)}
            if kind == "good_html":
                row["site"] = "<script>alert(1)</script>"
            elif kind == "good_formula":
                row["site"] = '=HYPERLINK("http://evil.example","click")'
            elif kind == "good_missing_group":
                row["sex"] = None
            elif kind == "good_no_mask":
                row["mask_path"] = None
            elif kind == "good_rtl_group":
                row["site"] = "site \u202eevil\u202c ok"
            elif kind == "good_cjk_group":
                row["site"] = "病院 サイト 🏥"
            variant = kind in ("good_16bit", "good_dicom", "good_red_mask", "good_no_mask")
            key = f"{kind if variant else 'good'}:{k}"
            phrase = ""
        else:
            row = _bad_row(kind, outside, {**base_row, **_good_file(root, p, "good", k)}, rows[0]["image_id"])
            key, phrase = "", BAD[kind]
        rows.append(row)
        expected.append({"row": i + 1, "image_id": row["image_id"], "kind": kind, "phrase": phrase, "key": key})
    df = pd.DataFrame(rows, columns=["image_id", "image_path", "mask_path", "label", "site", "sex"])
    manifest = root / f"hostile.{fmt if fmt in ('jsonl', 'csv') else 'parquet'}"
    if fmt == "jsonl":
        df.to_json(manifest, orient="records", lines=True)
    elif fmt == "csv":
        df.to_csv(manifest, index=False)
    else:
        df.to_parquet(manifest, index=False)
    return HostileSet(root, manifest, outside, marker, pd.DataFrame(expected))
