"""Disaggregated statistics: one row per subgroup (and intersection) with localisation metrics,
performance and the test against its reference, plus the CAM-flag vs counterfactual agreement.

Every interval is seeded from ``stats.seed`` and the group's name, so the same inputs give the same
numbers whatever order groups are computed in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit import metrics
from audit.config import AuditConfig
from audit.disparity import (
    STATUS_REFERENCE,
    STATUS_SMALL,
    group_status,
    has_counterfactual,
    localised,
    outside_dependent,
    outside_drop,
    reference_mask,
    reliance_evidence,
    seed_for,
)
from audit.stats import (
    auroc,
    auroc_ci,
    bootstrap_ci,
    difference_ci,
    ovr_auroc,
    ovr_auroc_ci,
    proportion_ci,
    side_by_side,
)
from audit.verdict import nan_to_none


def mean_ci(cfg: AuditConfig, values: pd.Series, *key: str) -> tuple[float, float, float]:
    v = values.dropna().to_numpy(dtype=float)
    if v.size == 0:
        return (np.nan, np.nan, np.nan)
    lo, hi = bootstrap_ci(v, cfg.stats.n_boot, seed_for(cfg, *key), cfg.stats.ci_level)
    return (float(v.mean()), lo, hi)


def subgroup_columns(cfg: AuditConfig) -> list[str]:
    """The subgroup columns, then one per configured intersection (``site×sex``)."""
    return [*cfg.data.subgroups, *("×".join(combo) for combo in cfg.data.intersections)]


def add_intersections(cfg: AuditConfig, images: pd.DataFrame) -> pd.DataFrame:
    """Add one column per configured intersection (``site×sex`` = ``site_c×female``)."""
    for combo in cfg.data.intersections:
        images = images.assign(**{"×".join(combo): images[list(combo)].astype(str).agg("×".join, axis=1)})
    return images


def _outcomes(cfg: AuditConfig, d: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per image 1.0 = right, 0.0 = wrong, for accuracy (all images) and, for a positive class,
    sensitivity (its true positives: predicted positive) and specificity (the rest: not predicted)."""
    out = {"accuracy": d["correct"].to_numpy(float)}
    pos = cfg.data.positive
    if pos is not None and cfg.explain.output != "sigmoid":
        truth = (d["label"].astype(str) == pos).to_numpy()
        said = (d["predicted"].astype(str) == pos).to_numpy()
        out.update(sensitivity=said[truth].astype(float), specificity=(~said[~truth]).astype(float))
    return out


def _performance(cfg: AuditConfig, g: pd.DataFrame, *key: str) -> dict[str, float]:
    """Accuracy (Wilson CI); for a positive class sensitivity, specificity (Wilson CIs) and AUROC
    (bootstrap CI); for several classes without one, the macro one-vs-rest AUROC (bootstrap CI)."""
    level = cfg.stats.ci_level
    outcomes = _outcomes(cfg, g)
    out: dict[str, float] = {}
    for name, hits in outcomes.items():
        n, k = hits.size, int(hits.sum())
        if name == "sensitivity":  # its images are the positives
            out["positives"] = n
        out[name] = k / n if n else np.nan
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = proportion_ci(k, n, level)
    if cfg.explain.output == "sigmoid":
        return out
    pos = cfg.data.positive
    if pos is None:  # several classes and no positive one: macro one-vs-rest AUROC
        labels = g["label"].astype(str).map({c: i for i, c in enumerate(cfg.data.classes)}).to_numpy()
        scores = g[[f"p_{c}" for c in cfg.data.classes]].to_numpy(float)
        out["auroc"] = ovr_auroc(labels, scores)
        out["auroc_ci_low"], out["auroc_ci_high"] = ovr_auroc_ci(
            labels, scores, cfg.stats.n_boot, seed_for(cfg, *key, "auc"), level
        )
        return out
    truth = (g["label"].astype(str) == pos).to_numpy()
    score = g[f"p_{pos}"].to_numpy()
    out["auroc"] = auroc(truth, score)
    out["auroc_ci_low"], out["auroc_ci_high"] = auroc_ci(
        truth, score, cfg.stats.n_boot, seed_for(cfg, *key, "auc"), level
    )
    return out


def _performance_gaps(cfg: AuditConfig, g: pd.DataFrame, ref: pd.DataFrame, *key: str) -> dict[str, float]:
    """Group minus reference for each of :func:`_outcomes`, with a bootstrap CI that resamples the two
    sets of images on their own (a difference of shares)."""
    out: dict[str, float] = {}
    for (name, a), b in zip(_outcomes(cfg, g).items(), _outcomes(cfg, ref).values(), strict=True):
        gap = difference_ci(a, b, cfg.stats.n_boot, seed_for(cfg, *key, name, "gap"), cfg.stats.ci_level)
        out.update(dict(zip((f"{name}_gap", f"{name}_gap_ci_low", f"{name}_gap_ci_high"), gap, strict=True)))
    return out


def _group_row(cfg: AuditConfig, images: pd.DataFrame, col: str, group: str) -> dict[str, object]:
    """One group's row of :func:`subgroup_table`."""
    in_group_all = (images[col].astype(str) == group).to_numpy()
    g = images[in_group_all]
    n = len(g)
    located = localised(g)
    n_loc = int(located.sum())
    rec: dict[str, object] = {
        "column": col,
        "group": group,
        "n": n,
        "n_localised": n_loc,
        "n_judged": int((~g["zero_map"] & located).sum()),
    }
    for metric in metrics.MEANINGS:
        m, lo, hi = mean_ci(cfg, g[metric], col, group, metric)
        rec.update({f"{metric}_mean": m, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
        rec[f"{metric}_median"] = float(g[metric].median())
    rec["area_mean"] = float(g["area"].mean())
    for name, mask in (("flagged", g["flagged"]), ("flagged_correct", g["flagged"] & g["correct"])):
        k = int(mask.sum())
        lo, hi = proportion_ci(k, n_loc, cfg.stats.ci_level)
        share = k / n_loc if n_loc else np.nan
        rec.update({name: k, f"{name}_share": share, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
    rec.update(_performance(cfg, g, col, group))
    if has_counterfactual(g):
        measured = reliance_evidence(g).notna()
        n_cf = int(measured.sum())
        k = int(outside_dependent(g, cfg)[measured].sum())
        lo, hi = proportion_ci(k, n_cf, cfg.stats.ci_level)
        rec["outside_drop_mean"] = float(outside_drop(g).mean())
        kinds = reliance_evidence(g).value_counts()
        rec["reliance_evidence"] = ", ".join(f"{kind} ({count})" for kind, count in kinds.items())
        rec.update(outside_dependent=k, outside_dependent_share=k / n_cf if n_cf else np.nan)
        rec.update(outside_dependent_ci_low=lo, outside_dependent_ci_high=hi)
    if "artifact_delta" in g:
        rec["artifact_delta_mean"] = float(g["artifact_delta"].mean())
        rec["mass_artifact_mean"] = float(g["mass_artifact"].mean())
    if "counterfactual_delta" in g:
        rec["counterfactual_delta_mean"] = float(g["counterfactual_delta"].mean())
        rec["counterfactual_flip_share"] = float(g["counterfactual_flips"].mean())
    reference, ref_name = reference_mask(cfg, images, col, group)
    rec["reference"] = ref_name
    if ref_name != group:
        rec.update(_performance_gaps(cfg, g, images[reference], col, group))
    return rec


def subgroup_table(cfg: AuditConfig, images: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """One row per (column, group) of :func:`subgroup_columns`; ``images`` must already hold the
    intersection columns (:func:`add_intersections`). Per group: n, mean (bootstrap CI) and median of
    every localisation metric, flagged share and the flagged-and-correct share (right for the wrong reason)
    with Wilson CIs, performance, the outside-dependent share, and the status that the disparity
    ``tests`` (:func:`audit.disparity.disparity_tests`) give the group."""
    pairs = [(col, group) for col in subgroup_columns(cfg) for group in sorted(images[col].astype(str).unique())]
    rows = side_by_side(lambda pair: _group_row(cfg, images, *pair), pairs)  # each CI has its own seed
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if len(tests):
        table = table.merge(group_status(tests, has_counterfactual(images)), on=["column", "group"], how="left")
    else:
        table = table.assign(focus_low=False, relies=False, status=np.nan, p_adjusted_min=np.nan, note="")
    table["status"] = table["status"].where(table["reference"] != table["group"], STATUS_REFERENCE)
    table["status"] = table["status"].fillna(STATUS_SMALL)
    table["note"] = table["note"].fillna("")
    return table


def agreement(cfg: AuditConfig, images: pd.DataFrame) -> dict | None:
    """How well the CAM-based flag agrees with the counterfactual test (which is the evidence)."""
    if "outside_delta" not in images:
        return None
    judged = images[~images["zero_map"] & images["outside_delta"].notna()]
    dependent = outside_dependent(judged, cfg).to_numpy()
    flagged = judged["flagged"].to_numpy()
    return {
        "dependent": int(dependent.sum()),
        "flagged_and_dependent": int((flagged & dependent).sum()),
        "flagged_not_dependent": int((flagged & ~dependent).sum()),
        "dependent_not_flagged": int((~flagged & dependent).sum()),
        "neither": int((~flagged & ~dependent).sum()),
        "auroc_low_focus_predicts_dependence": nan_to_none(auroc(dependent, -judged["focus"].to_numpy())),
    }
