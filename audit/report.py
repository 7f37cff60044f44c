"""Render a finished run into a self-contained HTML report and a PDF/A-3b packet from one template.

The report is a plain reader of the run folder (:func:`audit.runfolder.load_run`): no model, no
images, no shard files, so ``audit report RUN_DIR`` renders a run again years later. Every image and
chart is embedded as a ``data:`` URI, and the PDF renderer is given a fetcher that allows ``data:``
alone, so it can read nothing else on the machine; the run's data files are attached to the PDF from
bytes this module read from the run folder. User-supplied text (ids, group names, reasons, the context
block) reaches HTML through Jinja2 autoescaping, and through :func:`shown`: text with right-to-left
letters or bidi controls is isolated (a right-to-left override in a group name cannot reverse the text
around it), and text longer than ``SHOWN_TEXT`` is cut (a group name is cut at ``SHOWN_NAME``), the full
value staying in the run's data files. Nothing depends on the clock: the same run renders to the same
HTML bytes.
"""

from __future__ import annotations

import base64
import logging
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from audit import charts, metrics
from audit.comparison import MEASURES, RunComparison, write_comparison
from audit.disparity import PROBLEM_STATUSES, STATUS_RELIES, has_counterfactual, outside_drop, reliance_evidence
from audit.runfolder import Run, load_run

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

TERMS = {
    "area": "share of the image the region covers: the mass_in a uniform, uninformative map would score",
    "flagged": "image whose focus is below the configured threshold (spurious focus); images explained as an "
    "absence class (data.absence_classes) are never flagged",
    "attention": "where the maps look: focus, compared within each explained class separately (maps of "
    "different classes mean different things, and pooling them can cancel a shortcut)",
    "reliance": "what the decision rests on: the share of images whose explained-class probability drops by more "
    "than the dependence threshold when what lies outside the region is removed: the supplied counterfactual "
    "rendering, else the annotated artifact, else the outside cells the map points at (beyond what removing as "
    "much elsewhere does)",
    "discovered candidate": "images whose maps attend to the same kind of thing outside the region, found without "
    "annotations; a shortcut when it is concentrated in a subgroup or class and removing it changes predictions",
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


LIMITATIONS = [
    "Grad-CAM maps have the explained layer's resolution ({map}), upsampled to the input: a region smaller "
    "than a cell of that grid cannot be told from its surroundings, and focus differences below it are invisible.",
    "A map is correlational: it shows where gradient-weighted features are, not what the decision needs. Only the "
    "counterfactual (neutralise a region, measure the change in the prediction) is evidence of reliance, and it is "
    "only as good as the neutralisation.",
    "Guided backpropagation and guided Grad-CAM behave largely like edge detectors (Adebayo et al. 2018): they "
    "stay similar when the model's weights are randomised, so they say little about this model's decision.",
    "Not finding a shortcut does not prove there is none: a shortcut that moves few predictions, one inside the "
    "annotated region, or one present in every group alike, is not detected by a subgroup comparison.",
    "Subgroup tests need enough images per group ({min_size} here); smaller groups are reported as too small to "
    "judge, and a group that is nearly the same people as another cannot be told apart from it.",
    "The region is what the annotators drew ({mask_kind}); a coarse or biased annotation biases every "
    "localisation number.",
]


def _num(v: object, d: int = 2) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.{d}f}"


def _pval(v: object) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.2g}" if v >= 1e-4 else "<1e-4"


SHOWN_TEXT = 2000  # characters of any one user-supplied string the report shows
SHOWN_NAME = 120  # characters of a group name or image id
BIDI = {"R", "AL", "RLE", "LRE", "RLO", "LRO", "PDF", "RLI", "LRI", "FSI", "PDI"}
FSI, PDI = "\u2068", "\u2069"  # first-strong isolate ... pop directional isolate (Unicode UAX #9)


def isolated(text: str) -> str:
    """``text`` in a bidi isolate where it holds right-to-left letters or bidi controls (whose effect then
    ends with it), else unchanged."""
    if text.isascii() or not any(unicodedata.bidirectional(ch) in BIDI for ch in text):
        return text
    return FSI + text + PDI


def shortened(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters; the full value is in the run's data files)"


def shown(value: object) -> object:
    """Every ``{{ }}`` output: user text bounded and isolated; trusted markup (``Markup``) as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return isolated(shortened(value, SHOWN_TEXT))
    return value


def _names(frame: pd.DataFrame, columns: tuple[str, ...] = ("group", "image_id", "concentrated_in")) -> pd.DataFrame:
    """A copy whose names are cut for display at ``SHOWN_NAME`` characters."""
    out = frame.copy()
    for col in columns:
        if col in out:
            out[col] = out[col].map(lambda v: shortened(v, SHOWN_NAME) if isinstance(v, str) else v)
    return out


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]), finalize=shown)
    env.filters["num"] = _num
    env.filters["pval"] = _pval
    return env


def _jpeg_uri(path: Path) -> Markup:
    return Markup("data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode())


def gallery(run: Run) -> list[dict]:
    """The cases the pipeline drew (``cases.json``), with their numbers from images.parquet."""
    cfg, images = run.config, run.images.set_index("row", drop=False)
    sections = []
    images = images.assign(judged_drop=outside_drop(images), evidence=reliance_evidence(images))
    for s in run.cases:
        cases = []
        for row in s["rows"]:
            r = images.loc[row]
            path = run.folder.case_image(row)
            cases.append(
                {
                    "row": int(row),
                    "uri": _jpeg_uri(path) if path.is_file() else "",
                    "unavailable": s.get("unavailable", {}).get(str(row), ""),
                    "image_id": shortened(str(r["image_id"]), SHOWN_NAME),
                    "groups": ", ".join(f"{c} = {shortened(str(r[c]), SHOWN_NAME)}" for c in cfg.data.subgroups),
                    "label": r["label"],
                    "predicted": r["predicted"],
                    "probability": float(r["probability"]),
                    "explained": r["explained"],
                    "focus": float(r["focus"]),
                    "mass_in": float(r["mass_in"]),
                    "drop": float(r["judged_drop"]),
                    "evidence": r["evidence"] or "",
                    "correct": bool(r["correct"]),
                }
            )
        sections.append({"title": s["title"], "total": s["total"], "cases": cases,
                         "counterfactual": bool(s.get("counterfactual"))})  # fmt: skip
    return sections


def subgroup_definitions(run: Run) -> list[dict]:
    """Per audited column: how groups are formed, and per group n, positives and the share of the set."""
    cfg, images = run.config, run.images
    positive = cfg.data.positive
    out = []
    for col in cfg.data.subgroups:
        edges = cfg.data.bins.get(col)
        how = (
            f"numeric, cut into right-open bands at {', '.join(f'{e:g}' for e in edges)}"
            if edges
            else "the manifest's values as written"
        )
        missing = cfg.data.missing.get(col, "keep")
        how += "; rows without a value " + ("form the group 'missing'" if missing == "keep" else "are excluded")
        groups = []
        for group, g in images.groupby(images[col].astype(str), sort=True):
            groups.append(
                {
                    "group": shortened(group, SHOWN_NAME),
                    "n": len(g),
                    "share": len(g) / len(images),
                    "positives": int((g["label"].astype(str) == positive).sum()) if positive else None,
                }
            )
        out.append({"column": col, "how": how, "groups": groups})
    return out


def chart_uris(run: Run) -> dict[str, str]:
    groups = run.subgroups[run.subgroups["focus_mean"].notna()]
    cols = [c for c in run.config.data.subgroups if c in run.images]
    out = {}
    if len(groups):
        overall = run.summary["overall"]["focus"]["mean"] or 1.0
        out["focus"] = charts.focus_by_group(groups, overall, PROBLEM_STATUSES)
        out["performance"] = charts.performance_vs_focus(groups, PROBLEM_STATUSES)
    if cols and run.images["focus"].notna().any():
        out["distributions"] = charts.focus_distributions(run.images, cols)
    if run.sanity is not None and len(run.sanity):
        out["sanity"] = charts.sanity_cascade(run.sanity, run.config.sanity.max_similarity, run.config.sanity.steps)
    return {k: Markup(v) for k, v in out.items()}  # data: URIs the charts module made


def plain_summary(run: Run) -> str:
    """The verdict in one sentence a non-specialist can read."""
    s, relies = run.summary, run.subgroups[run.subgroups["status"] == STATUS_RELIES]
    if s["verdict"] == "fail" and len(relies):
        who = ", ".join(f"{c} = {shortened(str(g), SHOWN_NAME)}" for c, g in zip(relies["column"], relies["group"],
                                                                                  strict=True))  # fmt: skip
        return (
            f"The model's decisions rest on evidence outside the annotated region more often for {who} than for "
            "comparable images: it has learned a shortcut there. It should not be released as it is."
        )
    if s["verdict"] == "fail":
        return (
            "At least one failing rule of the audit was met (listed below): the model should not be released as it is."
        )
    if s["verdict"] == "warn":
        return (
            "No subgroup was found to rely on outside evidence, but the audit found something a person should look "
            "at before release (listed below)."
        )
    return (
        "In every audited subgroup the model looks at the annotated region as much as comparable images do, and its "
        "decisions do not rest on evidence outside it more often. This is not proof that no shortcut exists (see the "
        "limitations)."
    )


def context(run: Run) -> dict:
    """Everything the template shows, read from the run."""
    cfg, summary, tests = run.config, run.summary, run.disparities
    images = run.images
    return {
        "cfg": cfg,
        "summary": summary,
        "info": run.info,
        "plain_summary": plain_summary(run),
        "meanings": metrics.MEANINGS,
        "terms": TERMS,
        "groups": _names(run.subgroups).to_dict("records"),
        "definitions": subgroup_definitions(run),
        "focus_tests": _names(tests[tests["test"] == "focus"]).to_dict("records") if len(tests) else [],
        "reliance_tests": _names(tests[tests["test"] == "reliance"]).to_dict("records") if len(tests) else [],
        "problem_statuses": PROBLEM_STATUSES,
        "exclusions": _names(run.exclusions).to_dict("records"),
        "performance_only": (
            _names(images.loc[~images["localised"], ["row", "image_id", "localisation_note"]]).to_dict("records")
            if "localised" in images
            else []
        ),
        "sections": gallery(run),
        "charts": chart_uris(run),
        "n_flagged": int(images["flagged"].sum()),
        "has_counterfactual": has_counterfactual(images),
        "candidates": _names(run.discovery).to_dict("records") if run.discovery is not None else [],
        "limitations": [
            t.format(
                map=f"{summary['map_size'][0]}x{summary['map_size'][1]}",
                min_size=cfg.thresholds.min_group_size,
                mask_kind=cfg.data.mask.kind,
            )
            for t in LIMITATIONS
        ],
        "config_yaml": _config_block(run),
        "attachments": [p.name for p in attached_files(run)],
        "css": (TEMPLATES / "report.css").read_text(),
        "js": (TEMPLATES / "report.js").read_text(),
    }


def _config_block(run: Run) -> Markup:
    """The config as run, escaped, each line isolated (a path may hold right-to-left text)."""
    text = yaml.safe_dump(run.config.model_dump(mode="json"), sort_keys=False, width=100)
    return Markup("\n".join(str(escape(isolated(line))) for line in text.splitlines()))


def render_html(run: Run) -> str:
    return environment().get_template("report.html.j2").render(**context(run))


def attached_files(run: Run) -> list[Path]:
    """The machine-readable results a reviewer can extract from the PDF alone."""
    f = run.folder
    names = (f.images, f.subgroups, f.disparities, f.exclusions, f.summary, f.info, f.config, f.sanity, f.discovery)
    return [p for p in names if p.is_file()]


def render_report(run: Run | Path | str) -> dict[str, str]:
    """Write ``report.html`` and ``report.pdf`` into the run's folder."""
    run = run if isinstance(run, Run) else load_run(run)
    html = render_html(run)
    run.folder.html.write_text(html, encoding="utf-8")
    write_pdf(html, run.folder.pdf, attached_files(run))
    return {"html": str(run.folder.html), "pdf": str(run.folder.pdf)}


def write_pdf(html: str, target: Path, attachments: list[Path] = ()) -> None:  # type: ignore[assignment]
    """PDF/A-3b with ``attachments`` embedded (their bytes, read here: the renderer fetches nothing)."""
    from PIL import ImageFile
    from weasyprint import HTML, Attachment
    from weasyprint.urls import FatalURLFetchingError, URLFetcher

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # weasyprint's import turned it on for the whole process

    # WeasyPrint warns once per font that it subsets with fontTools (no libharfbuzz-subset here): noise
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    fetcher = URLFetcher(allowed_protocols={"data"})
    try:
        files = [
            Attachment(string=p.read_bytes(), name=p.name, description=f"audit run file {p.name}", relationship="Data")
            for p in attachments
        ]
        HTML(string=html, url_fetcher=fetcher).write_pdf(target, pdf_variant="pdf/a-3b", attachments=files)
    except FatalURLFetchingError as err:  # a BaseException: would crash an orchestrator's task
        raise RuntimeError(f"PDF rendering tried to fetch a resource: {err}") from None


def render_comparison(c: RunComparison, out: Path) -> dict[str, str]:
    """Write the comparison's files (:func:`audit.comparison.write_comparison`) and its HTML and PDF."""
    folder = write_comparison(c, out)

    def side(run: Run) -> dict:
        cfg = run.config
        model = cfg.context.model_name or cfg.model.arch or cfg.model.kind
        version = f" {cfg.context.model_version}" if cfg.context.model_version else ""
        return {"name": cfg.run_name, "model": model + version, "finished": run.info.get("finished"),
                "reasons": run.summary["reasons"]}  # fmt: skip

    attachments = [folder.table, folder.flag_changes, folder.summary]
    html = environment().get_template("comparison.html.j2").render(
        a=side(c.a), b=side(c.b), s=c.summary(), worse=c.worse.to_dict("records"),
        rows=c.table.to_dict("records"), flag_changes=c.flag_changes.to_dict("records"),
        measures=MEASURES, ci_level=round(c.b.config.stats.ci_level * 100),
        version=c.b.info.get("versions", {}).get("audit", ""), attachments=[p.name for p in attachments],
        css=(TEMPLATES / "report.css").read_text(),
    )  # fmt: skip
    folder.html.write_text(html, encoding="utf-8")
    write_pdf(html, folder.pdf, attachments)
    return {"html": str(folder.html), "pdf": str(folder.pdf), "table": str(folder.table), "json": str(folder.summary)}
