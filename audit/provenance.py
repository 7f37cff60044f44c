"""What a reviewer needs to reproduce a run: hashes, versions, seeds, times."""

from __future__ import annotations

import hashlib
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "audit",
    "torch",
    "torchvision",
    "onnxruntime",
    "onnx",
    "onnx2torch",
    "numpy",
    "pandas",
    "scipy",
    "pyarrow",
    "pillow",
    "jinja2",
    "weasyprint",
    "prefect",
    "pydantic",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_hashes(hashes: list[str]) -> str:
    """One digest for a whole data set: SHA-256 over the per-file digests in manifest order."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
