"""The cases a reviewer should see, drawn while the images are at hand and kept in the run folder.

Why in the run folder: a report must be re-renderable from the run alone (``audit report RUN_DIR``),
years later, without the model or the audit set. Each case is one JPEG of three panels: the image, the
map over it (normalised per image for display only; metrics use the raw map), and the image with the
region's outline.
"""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage

from audit.cam import upsample
from audit.config import AuditConfig
from audit.disparity import PROBLEM_STATUSES
from audit.imaging import resize_mask
from audit.inputs import RowReader
from audit.runfolder import RunFolder
from audit.stats import within_stratum_ranks

THUMBS_PER_GROUP = 12


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Image with the CAM over it (min-max normalised for display only, jet colours)."""
    span = cam.max() - cam.min()
    norm = (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)
    heat = matplotlib.colormaps["jet"](norm)[..., :3] * 255
    return np.clip((1 - alpha) * image.astype(np.float64) + alpha * heat, 0, 255).astype(np.uint8)


def outlined(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Image with the region's outline in white (unchanged where there is no region)."""
    out = image.copy()
    if mask is not None:
        edge = ndimage.binary_dilation(mask & ~ndimage.binary_erosion(mask, iterations=1), iterations=1)
        out[edge] = (255, 255, 255)
    return out


def triptych(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None, gap: int = 4) -> np.ndarray:
    """image | map | region outline, side by side."""
    h, w = image.shape[:2]
    out = np.full((h, 3 * w + 2 * gap, 3), 255, np.uint8)
    for i, panel in enumerate((image, overlay(image, cam), outlined(image, mask))):
        out[:, i * (w + gap) : i * (w + gap) + w] = panel
    return out


def select_cases(cfg: AuditConfig, images: pd.DataFrame, subgroups: pd.DataFrame) -> list[dict]:
    """Gallery sections: every flagged image, worst focus first (up to ``report.max_cases``); then, for
    each subgroup with a problem status, its images with the least focus compared with images of the
    same explained class."""
    flagged = images[images["flagged"]].sort_values(["focus", "row"]).head(cfg.report.max_cases)
    sections = [
        {
            "title": f"Flagged cases, worst first (focus < {cfg.thresholds.focus:g})",
            "rows": [int(r) for r in flagged["row"]],
            "total": int(images["flagged"].sum()),
        }
    ]
    judged = images[~images["zero_map"] & images["focus"].notna()].copy()
    judged["rank"] = within_stratum_ranks(judged["focus"].to_numpy(), judged["explained"].to_numpy())
    for _, g in subgroups[subgroups["status"].isin(PROBLEM_STATUSES)].iterrows():
        members = judged[judged[g["column"]].astype(str) == str(g["group"])].sort_values(["rank", "row"])
        sections.append(
            {
                "title": f"{g['column']} = {g['group']} ({g['status']}): least focus among images of the same "
                "explained class",
                "rows": [int(r) for r in members["row"].head(THUMBS_PER_GROUP)],
                "total": len(members),
            }
        )
    return sections


def write_cases(
    cfg: AuditConfig, folder: RunFolder, images: pd.DataFrame, subgroups: pd.DataFrame, included: pd.DataFrame
) -> list[dict]:
    """Draw every selected case into ``folder.cases`` and index the sections in ``folder.cases_index``.
    ``included`` holds the manifest rows with their file paths (the images are read once more here). A
    case whose image can no longer be read, or has changed since it was audited (its SHA-256 differs),
    is not drawn; the section says why (``unavailable``)."""
    sections = select_cases(cfg, images, subgroups)
    audited_sha = images.set_index("row")["image_sha256"]
    unavailable: dict[int, str] = {}
    rows = sorted({r for s in sections for r in s["rows"]})
    folder.cases.mkdir(exist_ok=True)
    with np.load(folder.maps) as z:
        where = {int(r): i for i, r in enumerate(z["rows"])}
        maps = z["maps"]
        by_row = included.set_index("row", drop=False)
        reader, side = RowReader(cfg), cfg.report.panel_size
        h, w = cfg.preprocessing.size
        size = (side, max(1, round(side * w / h)))
        for row in rows:
            try:
                sample = reader.read(by_row.loc[row].to_dict())
            except Exception as err:  # gone or unreadable since the audit: the case stays, undrawn
                unavailable[row] = f"image unavailable when the report was drawn: {err}"
                continue
            if sample.sha256["image_path"] != audited_sha[row]:
                unavailable[row] = "image changed since it was audited (SHA-256 differs): not drawn"
                continue
            cam = upsample(torch.from_numpy(maps[where[row]].astype(np.float32))[None], size)[0].numpy()
            region = None if sample.region is None else resize_mask(sample.region, size)
            Image.fromarray(triptych(sample.image.display(size), cam, region)).save(
                folder.case_image(row), format="JPEG", quality=85, optimize=True
            )
    for s in sections:
        s["unavailable"] = {str(r): unavailable[r] for r in s["rows"] if r in unavailable}
    folder.cases_index.write_text(json.dumps(sections, indent=1))
    return sections
