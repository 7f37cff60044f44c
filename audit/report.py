"""Render a finished run into a self-contained HTML report and a PDF packet from the same template.

The report reads only the run's own files. Every image is embedded as a ``data:`` URI, and the PDF
renderer is given a fetcher that allows ``data:`` alone, so it can read nothing else on the machine.
User-supplied text (ids, group names, reasons) reaches HTML through Jinja2 autoescaping.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from jinja2 import Environment, FileSystemLoader, select_autoescape
from PIL import Image
from scipy import ndimage

from audit import metrics
from audit.cam import upsample
from audit.config import AuditConfig
from audit.disparity import PROBLEM_STATUSES
from audit.imaging import resize_mask
from audit.inputs import RowReader
from audit.pipeline import included_rows
from audit.stats import within_stratum_ranks
from audit.tables import read_csv

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MAX_THUMBNAILS = 16
THUMBS_PER_GROUP = 12

TERMS = {
    "area": "share of the image the region covers: the mass_in a uniform, uninformative map would score",
    "flagged": "image whose focus is below the configured threshold (spurious focus); images explained as an "
    "absence class (data.absence_classes) are never flagged",
    "attention": "where the maps look: focus, compared within each explained class separately (maps of "
    "different classes mean different things, and pooling them can cancel a shortcut)",
    "reliance": "what the decision rests on: the share of images whose explained-class probability drops by more "
    "than the dependence threshold when the outside of the region (or an annotated artifact, or the supplied "
    "counterfactual) is neutralised",
    "comparable images": "images of the same explained class and the same values of every other audited "
    "attribute; each test permutes group membership only among them, so an attribute is not blamed for a "
    "correlated attribute's difference",
    "rank stat": "the group's mean rank among comparable images (0.5 = typical, lower = less focus)",
    "p (adjusted)": "one-sided stratified permutation test of the group vs its reference among comparable images, "
    "all focus and reliance tests adjusted together (Holm: family-wise error; BH: false-discovery rate)",
    "right for the wrong reason": "flagged for spurious focus and yet classified correctly: invisible to "
    "accuracy, the most dangerous cell",
    "counterfactual_delta": "explained-class probability minus the same on the image's counterfactual "
    "rendering (artifact removed): how much the prediction depends on what was removed",
    "missing": "the group of images whose manifest has no value for that attribute (data.missing: keep, the "
    "default); judged like any other group, because dropping them would hide the people with incomplete records",
    "sanity check": "maps recomputed after re-initialising the network's weights from the output back "
    "(Adebayo et al. 2018); maps that stay similar describe the image, not the model",
}


def _png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def overlay(image: np.ndarray, cam: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Image with the CAM (min-max normalised for display only, jet colours) and the mask outline."""
    span = cam.max() - cam.min()
    norm = (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)
    heat = matplotlib.colormaps["jet"](norm)[..., :3] * 255
    out = (1 - alpha) * image.astype(np.float64) + alpha * heat
    edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
    edge = ndimage.binary_dilation(edge, iterations=1)
    out[edge] = (255, 255, 255)
    return np.clip(out, 0, 255).astype(np.uint8)


def _load_maps(work: Path) -> dict[int, np.ndarray]:
    """Maps keyed by manifest row (an image appears once per finding in multi-label audits)."""
    maps: dict[int, np.ndarray] = {}
    for f in sorted(work.glob("shard_*.maps.npz")):
        with np.load(f) as z:
            maps.update(zip(z["rows"].tolist(), z["maps"], strict=True))
    return maps


def _thumb(cfg: AuditConfig, r: pd.Series, cam_map: np.ndarray, paths: pd.DataFrame) -> dict:
    size = cfg.preprocessing.size
    cam = cam_map if cam_map.shape == tuple(size) else upsample(torch.from_numpy(cam_map)[None], size)[0].numpy()
    sample = RowReader(cfg).read(paths.loc[int(r["row"])].to_dict())
    img = sample.image.display(size)
    mask = resize_mask(sample.region, size)
    return {
        "uri": _png_data_uri(overlay(img, cam, mask)),
        "image_id": r["image_id"],
        "groups": ", ".join(f"{c}={r[c]}" for c in cfg.data.subgroups),
        "label": r["label"],
        "predicted": r["predicted"],
        "focus": r["focus"],
        "mass_in": r["mass_in"],
    }


def thumbnail_sections(
    cfg: AuditConfig, images: pd.DataFrame, subgroups: pd.DataFrame, included: pd.DataFrame
) -> list[dict]:
    """Examples a reviewer should see: for each flagged subgroup, its images with the least focus
    compared with images explained for the same class; then the lowest-focus flagged images overall."""
    maps = _load_maps(cfg.run_dir / "work")
    paths = included.set_index("row", drop=False)
    judged = images[~images["zero_map"] & images["focus"].notna()].copy()
    judged["rank"] = within_stratum_ranks(judged["focus"].to_numpy(), judged["explained"].to_numpy())
    sections = []
    for _, g in subgroups[subgroups["status"].isin(PROBLEM_STATUSES)].iterrows():
        members = judged[judged[g["column"]].astype(str) == str(g["group"])].sort_values(["rank", "row"])
        sections.append(
            {
                "title": f"{g['column']} = {g['group']} ({g['status']}): least focus compared with images of the "
                "same explained class",
                "thumbs": [
                    _thumb(cfg, r, maps[int(r["row"])], paths) for _, r in members.head(THUMBS_PER_GROUP).iterrows()
                ],
            }
        )
    flagged = images[images["flagged"]].sort_values(["focus", "row"]).head(MAX_THUMBNAILS)
    sections.append(
        {
            "title": f"lowest-focus flagged images (focus < {cfg.thresholds.focus}), all groups",
            "thumbs": [_thumb(cfg, r, maps[int(r["row"])], paths) for _, r in flagged.iterrows()],
        }
    )
    return sections


def render_report(cfg: AuditConfig) -> dict[str, str]:
    run = cfg.run_dir
    work = run / "work"
    summary = json.loads((work / "summary.json").read_text())
    info = json.loads((run / "run.json").read_text())
    images = pd.read_parquet(run / "images.parquet")
    subgroups = read_csv(run / "subgroups.csv", keep_default_na=False, na_values=[""])
    subgroups["note"] = subgroups["note"].fillna("") if "note" in subgroups else ""
    try:
        tests = read_csv(run / "disparities.csv", keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:  # no group could be compared with a reference
        tests = None
    exclusions = read_csv(run / "exclusions.csv", dtype=str, keep_default_na=False)
    included = included_rows(cfg)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = lambda v, d=2: "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"
    env.filters["pval"] = lambda v: "–" if v is None or np.isnan(v) else (f"{v:.2g}" if v >= 1e-4 else "<1e-4")
    context = {
        "cfg": cfg,
        "summary": summary,
        "info": info,
        "meanings": metrics.MEANINGS,
        "terms": TERMS,
        "groups": subgroups.to_dict("records"),
        "focus_tests": [] if tests is None else tests[tests["test"] == "focus"].to_dict("records"),
        "reliance_tests": [] if tests is None else tests[tests["test"] == "reliance"].to_dict("records"),
        "problem_statuses": PROBLEM_STATUSES,
        "exclusions": exclusions.to_dict("records"),
        "performance_only": (
            images.loc[~images["localised"], ["row", "image_id", "localisation_note"]].to_dict("records")
            if "localised" in images
            else []
        ),
        "sections": thumbnail_sections(cfg, images, subgroups, included),
        "n_flagged": int(images["flagged"].sum()),
        "has_counterfactual": "counterfactual_delta" in images,
        "css": (TEMPLATES / "report.css").read_text(),
    }
    html = env.get_template("report.html.j2").render(**context)
    html_path, pdf_path = run / "report.html", run / "report.pdf"
    html_path.write_text(html, encoding="utf-8")
    write_pdf(html, pdf_path)
    return {"html": str(html_path), "pdf": str(pdf_path)}


def write_pdf(html: str, target: Path) -> None:
    from PIL import ImageFile
    from weasyprint import HTML
    from weasyprint.urls import FatalURLFetchingError, URLFetcher

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # weasyprint's import turned it on for the whole process

    # WeasyPrint warns once per font that it subsets with fontTools (no libharfbuzz-subset here): noise
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    fetcher = URLFetcher(allowed_protocols={"data"})
    try:
        HTML(string=html, url_fetcher=fetcher).write_pdf(target, pdf_variant="pdf/a-3b")
    except FatalURLFetchingError as err:  # a BaseException: would crash an orchestrator's task
        raise RuntimeError(f"PDF rendering tried to fetch a resource: {err}") from None
