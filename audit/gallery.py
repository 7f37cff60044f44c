"""The cases a reviewer should see, drawn while the images are at hand and kept in the run folder.

Why in the run folder: a report must be re-renderable from the run alone (``audit report RUN_DIR``),
years later, without the model or the audit set. Each case is one JPEG of three panels: the image, the
map over it (normalised per image for display only; metrics use the raw map), and the image with the
region's outline. Cases shown as reliance evidence (a group that relies on outside evidence, a
discovered candidate) have a fourth panel: the image as the model saw it with that evidence removed.
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
from audit.counterfactual import artifact_filled, occluded, outside_replaced
from audit.discovery import attended_mask
from audit.disparity import PROBLEM_STATUSES, STATUS_RELIES, outside_drop, reliance_evidence
from audit.imaging import resize_mask
from audit.inputs import RowReader, Sample
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


def triptych(
    image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None, gap: int = 4, without: np.ndarray | None = None
) -> np.ndarray:
    """image | map | region outline, side by side, and the image without the evidence where given."""
    h, w = image.shape[:2]
    panels = [image, overlay(image, cam), outlined(image, mask), *([] if without is None else [without])]
    out = np.full((h, len(panels) * w + (len(panels) - 1) * gap, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        out[:, i * (w + gap) : i * (w + gap) + w] = panel
    return out


def without_evidence(cfg: AuditConfig, sample: Sample, record: pd.Series, size: tuple[int, int]) -> np.ndarray | None:
    """The image at ``size`` with the evidence its reliance was judged on removed, as the audit removed
    it (the same fills, at display resolution): the supplied rendering, the annotated artifact or the
    attended cells filled from their surroundings, or the outside of the dilated region blurred."""
    kind = record.get("evidence")
    image = sample.image.display(size)
    region = None if sample.region is None else resize_mask(sample.region, size)
    c = cfg.counterfactual
    if kind == "counterfactual" and sample.counterfactual is not None:
        return sample.counterfactual.display(size)
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    inside = torch.from_numpy(np.zeros(size, bool) if region is None else region)[None]
    if kind == "artifact" and sample.artifact is not None:
        out = artifact_filled(x, torch.from_numpy(resize_mask(sample.artifact, size))[None], c)
    elif kind == "occlusion":
        cells = attended_mask(record, region, size, round(c.occlusion.margin * max(size)))
        out = occluded(x, torch.from_numpy(cells)[None], inside, c)
    elif kind == "outside" and region is not None:
        out = outside_replaced(x, inside, c)
    else:
        return None
    return np.clip(np.round(out[0].permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)


def select_cases(
    cfg: AuditConfig, images: pd.DataFrame, subgroups: pd.DataFrame, candidates: pd.DataFrame | None = None
) -> list[dict]:
    """Gallery sections: every flagged image, worst focus first (up to ``report.max_cases``); for each
    subgroup with a problem status, its images with the least focus compared with images of the same
    explained class; for each group that relies on outside evidence, its images ranked by their drop
    under the evidence judged, each beside that counterfactual; for each discovered candidate, its
    exemplars beside the image with the attended cells removed."""
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
    drops = images.assign(drop=outside_drop(images), evidence=reliance_evidence(images)).dropna(subset=["drop"])
    for _, g in subgroups[subgroups["status"] == STATUS_RELIES].iterrows():
        members = drops[drops[g["column"]].astype(str) == str(g["group"])]
        members = members.sort_values(["drop", "row"], ascending=[False, True])
        kinds = ", ".join(sorted(members["evidence"].astype(str).unique()))
        sections.append(
            {
                "title": f"{g['column']} = {g['group']} ({STATUS_RELIES}): largest drop first, each beside the image "
                f"without the evidence ({kinds})",
                "rows": [int(r) for r in members["row"].head(THUMBS_PER_GROUP)],
                "total": len(members),
                "counterfactual": True,
            }
        )
    for _, c in (candidates if candidates is not None else pd.DataFrame()).iterrows():
        rows = [int(r) for r in str(c["exemplar_rows"]).split()]
        verdict = "shortcut" if c["shortcut"] else "candidate"
        sections.append(
            {
                "title": f"Discovered {verdict} {c['candidate']} ({c['what']}): exemplars, each beside the image "
                "with its attended outside cells removed",
                "rows": rows,
                "total": int(c["n"]),
                "counterfactual": True,
                "evidence": "occlusion",
            }
        )
    return sections


def write_cases(
    cfg: AuditConfig,
    folder: RunFolder,
    images: pd.DataFrame,
    subgroups: pd.DataFrame,
    included: pd.DataFrame,
    candidates: pd.DataFrame | None = None,
) -> list[dict]:
    """Draw every selected case into ``folder.cases`` and index the sections in ``folder.cases_index``.
    ``included`` holds the manifest rows with their file paths (the images are read once more here). A
    case whose image can no longer be read, or has changed since it was audited (its SHA-256 differs),
    is not drawn; the section says why (``unavailable``)."""
    sections = select_cases(cfg, images, subgroups, candidates)
    audited_sha = images.set_index("row")["image_sha256"]
    records = images.assign(evidence=reliance_evidence(images)).set_index("row", drop=False)
    unavailable: dict[int, str] = {}
    rows = sorted({r for s in sections for r in s["rows"]})
    # a case shown as evidence gets the fourth panel; drawn once, under the evidence it was judged on
    # (a discovered candidate's exemplar: its attended cells)
    beside = {r: s.get("evidence") for s in sections if s.get("counterfactual") for r in s["rows"]}
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
            without = None
            if row in beside:
                record = records.loc[row].copy()
                record["evidence"] = beside[row] or record["evidence"]
                without = without_evidence(cfg, sample, record, size)
            Image.fromarray(triptych(sample.image.display(size), cam, region, without=without)).save(
                folder.case_image(row), format="JPEG", quality=85, optimize=True
            )
    for s in sections:
        s["unavailable"] = {str(r): unavailable[r] for r in s["rows"] if r in unavailable}
    folder.cases_index.write_text(json.dumps(sections, indent=1))
    return sections
