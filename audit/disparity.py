"""Disparity tests: does a subgroup differ from its reference in *attention* or in *reliance*?

Two questions, each tested one-sided for every subgroup against its reference, all p-values adjusted
together in one multiple-comparison family (``stats.correction``):

* **attention** — is the group's focus lower? Tested *within each explained class separately*, never
  averaged over classes: maps of different classes mean different things (a "melanoma" map sits on the
  lesion, a "nevus" map may explain the absence of melanoma signs and avoid it), and a shortcut that
  moves predictions from one class to the other lowers focus in one class and raises it in the other,
  so a pooled statistic cancels out. Classes declared in ``data.absence_classes`` are reported, not
  judged.
* **reliance** — does the group's prediction depend on evidence outside the region more often? An
  image depends on outside evidence when neutralising it drops the explained class's probability by
  more than ``counterfactual.dependence``. The most specific neutralisation the image has is used: the
  supplied counterfactual rendering, else its artifact annotation (an empty artifact mask says "no
  artifact here": nothing to remove), else the whole outside of the dilated mask. Why not the largest:
  replacing most of an image makes an input unlike any the model has seen (a heavy blur reads as a
  defocused scanner), and a model that learned a site's acquisition then "depends" on the outside of
  every sharp image; the annotation asks the precise question. Tested on the share of such images,
  stratified by explained class.
  A significant excess must also be *material*: among comparable images (same explained class and
  other attributes, cells weighted as Mantel-Haenszel weight a risk difference) the group's share
  exceeds the reference's by at least ``thresholds.min_reliance_gap``.

Low focus alone is a difference in where the model *looks*; the counterfactual measures what its
decision *rests on*. The verdict fails a group on confirmed reliance and reports low focus without it
as "attention without reliance".

Each test is **conditional on the other audited attributes**: group membership is permuted only within
cells that share the explained class and the values of every other subgroup column, and only cells
holding both group and reference images count. A group that differs only because it is concentrated
where another attribute's real difference lies (skin tone with site, age with scanner) then shows no
difference within those cells and is not failed in its neighbour's place. The same test without the
other attributes (the marginal test) is kept, so the report can say when an effect disappears.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.stats import adjust, difference_ci, side_by_side, stratified_permutation_test

N_PERM = 10000
# Neutralisations whose probability drop counts as evidence taken from outside the region, most
# specific first: the supplied counterfactual, the annotated artifact, the map-guided occlusion's excess
# over its control, the whole outside of the mask (evidence only where no occlusion was measured).
NEUTRALISATIONS = ("counterfactual_delta", "artifact_delta", "occlusion_delta", "outside_delta")
FOCUS, RELIANCE = "focus", "reliance"
ALL_CLASSES = "(all, stratified)"

STATUS_RELIES = "relies on outside evidence"
STATUS_ATTENTION = "attention without reliance"
STATUS_LESS_FOCUS = "less focus"  # no counterfactual to tell attention from reliance
STATUS_OK, STATUS_REFERENCE, STATUS_SMALL = "ok", "reference", "too small to judge"
# the statuses a group is reported for (each has its own verdict rule)
PROBLEM_STATUSES = (STATUS_RELIES, STATUS_ATTENTION, STATUS_LESS_FOCUS)


def seed_for(cfg: AuditConfig, *parts: str) -> int:
    """A seed per named quantity, so results do not depend on the order things are computed in."""
    return cfg.stats.seed * 1_000_003 + zlib.crc32("|".join(parts).encode())


def has_counterfactual(images: pd.DataFrame) -> bool:
    return any(c in images for c in NEUTRALISATIONS)


def reliance_evidence(images: pd.DataFrame) -> pd.Series:
    """Per image, which neutralisation measures its reliance: the most specific one it has (see the
    module docstring); None where none was measured."""
    out = pd.Series(None, index=images.index, dtype=object)
    for col in reversed(NEUTRALISATIONS):
        if col in images:
            out = out.where(images[col].isna(), col.removesuffix("_delta"))
    return out


def localised(images: pd.DataFrame) -> pd.Series:
    """Images that have a region (rows without one are audited for performance only)."""
    if "localised" not in images:
        return pd.Series(True, index=images.index)
    return images["localised"].astype(bool)


def outside_drop(images: pd.DataFrame) -> pd.Series:
    """Per image, the drop in the explained class's probability under its most specific
    neutralisation (supplied counterfactual, else annotated artifact, else the outside of the mask);
    NaN where none was measured."""
    out = pd.Series(np.nan, index=images.index)
    for col in reversed(NEUTRALISATIONS):
        if col in images:
            out = images[col].astype(float).where(images[col].notna(), out)
    return out


def outside_dependent(images: pd.DataFrame, cfg: AuditConfig) -> pd.Series:
    """The prediction depends on evidence outside the region: :func:`outside_drop` above
    ``counterfactual.dependence`` (False where nothing was measured)."""
    return (outside_drop(images) > cfg.counterfactual.dependence).fillna(False).astype(bool)


def judged_focus_classes(cfg: AuditConfig) -> list[str]:
    return [c for c in cfg.data.classes if c not in cfg.data.absence_classes]


def conditioning_columns(cfg: AuditConfig, column: str) -> list[str]:
    """The other audited attributes: every subgroup column that is not part of ``column``."""
    parts = column.split("×")
    return [c for c in cfg.data.subgroups if c not in parts]


def reference_mask(cfg: AuditConfig, images: pd.DataFrame, column: str, group: str) -> tuple[np.ndarray, str]:
    """Rows the group is compared with, and a name for them (``stats.reference``)."""
    ref = cfg.stats.reference
    values = images[column].astype(str)
    if ref == "rest":
        return (values != group).to_numpy(), "rest"
    target = values.value_counts().sort_index().idxmax() if ref == "largest" else ref.get(column)
    if target is None:  # a named mapping without this column: compare with the rest
        return (values != group).to_numpy(), "rest"
    return (values == target).to_numpy(), str(target)


def _cells(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """One integer per row for the cell it falls in (explained class x the given columns)."""
    keys = frame[["explained", *columns]].astype(str)
    return keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy()


def _informative(cells: np.ndarray, in_group: np.ndarray) -> np.ndarray:
    """Rows in cells that hold both group and reference images (the others carry no information)."""
    members = np.bincount(cells, weights=in_group, minlength=cells.max() + 1 if cells.size else 0)
    sizes = np.bincount(cells, minlength=members.size)
    return ((members > 0) & (members < sizes))[cells]


def cell_weighted_difference(raw: np.ndarray, cells: np.ndarray, in_group: np.ndarray) -> float:
    """Group minus reference among comparable images: the within-cell differences of means, weighted
    as Mantel and Haenszel weight a risk difference (n_group * n_reference / n_cell), over the cells
    that hold both. For a 0/1 outcome this is the excess share the group has over comparable images."""
    keep = _informative(cells, in_group)
    if not keep.any():
        return float("nan")
    c, g, v = cells[keep], in_group[keep], raw[keep].astype(float)
    size = c.max() + 1
    n1 = np.bincount(c, weights=g, minlength=size)
    n0 = np.bincount(c, weights=~g, minlength=size)
    s1 = np.bincount(c, weights=v * g, minlength=size)
    s0 = np.bincount(c, weights=v * ~g, minlength=size)
    used = (n1 > 0) & (n0 > 0)
    w = n1[used] * n0[used] / (n1[used] + n0[used])
    return float(np.sum(w * (s1[used] / n1[used] - s0[used] / n0[used])) / w.sum())


def _test(
    values: np.ndarray,
    raw: np.ndarray,
    cells: np.ndarray,
    in_group: np.ndarray,
    min_size: int,
    n_perm: int,
    seed: int,
) -> tuple[float, float, int, float]:
    """One-sided stratified permutation test that the group's values are lower, on informative cells;
    (mean within-cell rank, p, group images used, cell-weighted difference of ``raw``), NaN where either
    side has fewer than ``min_size``."""
    keep = _informative(cells, in_group)
    k = int(in_group[keep].sum())
    if k < min_size or int((~in_group[keep]).sum()) < min_size:
        return (np.nan, np.nan, k, np.nan)
    stat, p = stratified_permutation_test(values[keep], cells[keep], in_group[keep], n_perm, seed)
    return (stat, p, k, cell_weighted_difference(raw, cells, in_group))


def _one(
    cfg: AuditConfig,
    frame: pd.DataFrame,
    in_group: np.ndarray,
    values: np.ndarray,
    raw: np.ndarray,
    others: list[str],
    key: tuple[str, ...],
    n_perm: int,
    with_ci: bool,
) -> dict[str, object]:
    """Marginal and conditional test of one (group, question, class), plus the raw difference's CI."""
    min_size = cfg.thresholds.min_group_size
    marginal = _test(values, raw, _cells(frame, []), in_group, min_size, n_perm, seed_for(cfg, *key, "marginal"))
    rec: dict[str, object] = {"n": int(in_group.sum()), "n_reference": int((~in_group).sum())}
    rec.update(group_value=float(raw[in_group].mean()) if in_group.any() else np.nan)
    rec.update(reference_value=float(raw[~in_group].mean()) if (~in_group).any() else np.nan)
    rec.update(rank_stat_marginal=marginal[0], p_marginal=marginal[1], conditioned_on=", ".join(others))
    if others:
        cells = _cells(frame, others)
        cond = _test(values, raw, cells, in_group, min_size, n_perm, seed_for(cfg, *key, "conditional"))
    else:
        cond = marginal
    judged_on = "conditional" if others else "marginal (no other attribute)"
    if others and np.isnan(cond[1]) and not np.isnan(marginal[1]):
        cond, judged_on = marginal, "marginal (cannot be separated from the other attributes)"
    rec.update(rank_stat=cond[0], p=cond[1], n_conditional=cond[2], conditional_difference=cond[3])
    rec.update(judged_on=judged_on)
    if with_ci and in_group.sum() >= 2 and (~in_group).sum() >= 2:
        diff = difference_ci(raw[in_group], raw[~in_group], cfg.stats.n_boot, seed_for(cfg, *key, "diff"),
                             cfg.stats.ci_level)  # fmt: skip
    else:
        diff = (float(raw[in_group].mean() - raw[~in_group].mean()) if in_group.any() and (~in_group).any()
                else np.nan, np.nan, np.nan)  # fmt: skip
    rec.update(dict(zip(("difference", "ci_low", "ci_high"), diff, strict=True)))
    return rec


def permutations_needed(cfg: AuditConfig, columns: list[str], images: pd.DataFrame) -> int:
    """Enough permutations that the smallest attainable p (1 / (n + 1)) sits well below the first
    Holm step's alpha / m for this family of m tests: at least ``N_PERM``."""
    groups = sum(images[c].astype(str).nunique() for c in columns)
    m = groups * (len(cfg.data.classes) + 1)
    return max(N_PERM, int(np.ceil(4 * m / cfg.thresholds.alpha)))


def disparity_tests(
    cfg: AuditConfig, images: pd.DataFrame, columns: list[str], n_perm: int | None = None, with_ci: bool = True
) -> pd.DataFrame:
    """One row per (column, group, question, explained class): the group's and reference's values, the
    raw difference with a bootstrap CI, the marginal and the conditional test, and the adjusted p-values
    (the judged p — conditional where it can be computed — over the whole family; the marginal p over
    its own family, for the note that an effect disappears when the other attributes are held fixed)."""
    n_perm = n_perm or permutations_needed(cfg, columns, images)
    judged_focus = judged_focus_classes(cfg)
    with_cf = has_counterfactual(images)
    dependent = outside_dependent(images, cfg).to_numpy(float) if with_cf else None
    measured = reliance_evidence(images).notna().to_numpy()  # images whose reliance was measured
    usable = (~images["zero_map"] & images["focus"].notna()).to_numpy()
    jobs: list[tuple[tuple, dict]] = []  # (arguments of _one, what the row also says)
    for col in columns:
        others = conditioning_columns(cfg, col)
        for group in sorted(images[col].astype(str).unique()):
            in_group_all = (images[col].astype(str) == group).to_numpy()
            reference, ref_name = reference_mask(cfg, images, col, group)
            if ref_name == group:
                continue
            compared = in_group_all | reference
            base = {"column": col, "group": group, "reference": ref_name}
            for cls in cfg.data.classes:
                sel = compared & usable & (images["explained"].astype(str) == cls).to_numpy()
                frame = images[sel]
                focus = frame["focus"].to_numpy(float)
                key = (col, group, FOCUS, cls)
                extra = {**base, "test": FOCUS, "explained": cls, "judged": cls in judged_focus}
                if cls not in judged_focus:
                    extra.update(p=np.nan, judged_on="not judged: absence class (data.absence_classes)")
                jobs.append(((cfg, frame, in_group_all[sel], focus, focus, others, key, n_perm, with_ci), extra))
            if with_cf:
                compared = compared & measured
                frame = images[compared]
                dep = dependent[compared]
                key = (col, group, RELIANCE)
                # "lower is worse" for the test: rank the negated indicator
                args = (cfg, frame, in_group_all[compared], -dep, dep, others, key, n_perm, with_ci)
                jobs.append((args, {**base, "test": RELIANCE, "explained": ALL_CLASSES, "judged": True}))
    records = side_by_side(lambda job: _one(*job[0]), jobs)  # each test has its own seed
    rows = [{**rec, **extra} for rec, (_, extra) in zip(records, jobs, strict=True)]
    tests = pd.DataFrame(rows)
    if tests.empty:
        return tests
    lead = ["column", "group", "reference", "test", "explained", "judged"]
    tests = tests[lead + [c for c in tests.columns if c not in lead]]
    alpha = cfg.thresholds.alpha
    tests["p_adjusted"] = adjust(tests["p"].to_numpy(float), cfg.stats.correction)
    marginal = tests["p_marginal"].where(tests["judged"])
    tests["p_marginal_adjusted"] = adjust(marginal.to_numpy(float), cfg.stats.correction)
    # reliance must also be material: a significant but small excess share is not a shortcut
    material = (tests["test"] != RELIANCE) | (tests["conditional_difference"] >= cfg.thresholds.min_reliance_gap)
    tests["significant"] = (tests["p_adjusted"] < alpha) & (tests["rank_stat"] < 0.5) & material
    tests["vanishes_conditionally"] = (
        (tests["p_marginal_adjusted"] < alpha)
        & (tests["rank_stat_marginal"] < 0.5)
        & ~(tests["p_adjusted"] < alpha)
        & (tests["judged_on"] == "conditional")
    )
    tests["below_material_gap"] = (tests["p_adjusted"] < alpha) & (tests["rank_stat"] < 0.5) & ~material
    return tests


def _group_note(g: pd.DataFrame, status: str, with_cf: bool) -> str:
    notes = []
    low = g[(g["test"] == FOCUS) & g["significant"]]
    relies = bool(g[(g["test"] == RELIANCE) & g["significant"]].size)
    if with_cf and relies and low.empty:
        notes.append("reliance confirmed by the counterfactual, but its maps are not significantly less focused")
    if status == STATUS_ATTENTION:
        classes = ", ".join(low["explained"])
        notes.append(f"less focus ({classes}), but the counterfactual does not confirm reliance on outside evidence")
    for _, t in g[g["vanishes_conditionally"]].iterrows():
        what = "reliance" if t["test"] == RELIANCE else f"focus ({t['explained']})"
        notes.append(
            f"{what} differs overall (adjusted p = {t['p_marginal_adjusted']:.2g}) but not within the cells of "
            f"{t['conditioned_on']} (adjusted p = {t['p_adjusted']:.2g}): explained by a correlated attribute"
        )
    for _, t in g[g["below_material_gap"]].iterrows():
        notes.append(
            f"reliance is significantly higher (adjusted p = {t['p_adjusted']:.2g}) but by "
            f"{t['conditional_difference']:.2f} among comparable images, below the material gap"
        )
    for _, t in g[g["significant"] & g["judged_on"].str.startswith("marginal (cannot")].iterrows():
        notes.append(f"{t['test']} judged without conditioning: the group cannot be separated from "
                     f"{t['conditioned_on']}")  # fmt: skip
    return "; ".join(notes)


def group_status(tests: pd.DataFrame, with_cf: bool) -> pd.DataFrame:
    """Per (column, group): low focus in any judged class, confirmed reliance, the status that follows
    (reliance confirmed > attention without reliance / less focus > ok > too small) and a note where
    focus and counterfactual disagree or an effect belongs to a correlated attribute."""
    out = []
    for (col, group), g in tests.groupby(["column", "group"], sort=False):
        low = bool(g.loc[g["test"] == FOCUS, "significant"].any())
        relies = bool(g.loc[g["test"] == RELIANCE, "significant"].any())
        tested = bool(g.loc[g["judged"], "p"].notna().any())
        if relies:
            status = STATUS_RELIES
        elif low:
            status = STATUS_ATTENTION if with_cf else STATUS_LESS_FOCUS
        else:
            status = STATUS_OK if tested else STATUS_SMALL
        judged = g[g["judged"] & g["p"].notna()]
        reliance = g[g["test"] == RELIANCE]
        out.append(
            {
                "column": col,
                "group": group,
                "focus_low": low,
                "relies": relies,
                "status": status,
                "p_adjusted_min": float(judged["p_adjusted"].min()) if len(judged) else np.nan,
                "reliance_excess": float(reliance["conditional_difference"].iloc[0]) if len(reliance) else np.nan,
                "note": _group_note(g, status, with_cf),
            }
        )
    return pd.DataFrame(out)


def absence_like_classes(cfg: AuditConfig, images: pd.DataFrame, columns: list[str]) -> list[str]:
    """Judged classes whose maps avoid the region across the whole audit set: mean focus below 1
    overall and in every group large enough to judge. Their maps explain absence, not presence."""
    out = []
    min_size = cfg.thresholds.min_group_size
    for cls in judged_focus_classes(cfg):
        d = images[(images["explained"].astype(str) == cls) & images["focus"].notna()]
        if len(d) < min_size or d["focus"].mean() >= 1:
            continue
        means = [g["focus"].mean() for col in columns for _, g in d.groupby(d[col].astype(str)) if len(g) >= min_size]
        if all(m < 1 for m in means):
            out.append(cls)
    return out
