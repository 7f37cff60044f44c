"""Two finished runs side by side: did model v2 get better or worse than v1, for each subgroup?

For every subgroup both runs report (and the whole set, ``all``/``all``), each measure's change
B − A with a bootstrap CI and a one-sided test of "B is worse":

- **paired** when the group holds exactly the same manifest rows in both runs (same ``image_id`` and
  label, same image and mask SHA-256: the usual "model v1 vs v2 on the same audit set"): per-image
  differences, a BCa CI of their mean and a sign-flip permutation test (for a 0/1 measure such as
  accuracy, a McNemar-type test by permutation);
- **unpaired** otherwise (different audit sets): the difference of means with a CI that resamples
  each run on its own, and a permutation test of group membership.

The p-values of all rows are adjusted together (run B's ``stats.correction``, Holm by default), and
a row counts as *worse* when its adjusted p is below run B's ``thresholds.alpha`` (one-sided, 0.025 by
default) in the worse direction. Measures: ``focus`` (attention inside the region, higher is better),
``accuracy`` (higher is better), ``outside_dependent`` (share of images whose prediction rests on
evidence outside the region, by the counterfactual; lower is better) and ``flagged`` (share of images
with spurious focus; lower is better). Per-image values come from each run's ``images.parquet``; flags
and outside dependence are judged by run B's thresholds for both runs (a loosened threshold is not an
improvement), so a comparison needs the two run folders only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from audit.config import AuditConfig
from audit.disparity import outside_dependent, reliance_evidence
from audit.runfolder import Run, load_run
from audit.stats import adjust, bootstrap_ci, difference_ci
from audit.subgroups import subgroup_columns
from audit.tables import write_csv
from audit.verdict import flag_images

# measure -> (what it means, higher is better)
MEASURES = {
    "focus": ("mean focus: mass inside the region / region area (1 = uniform map)", True),
    "accuracy": ("share of images predicted correctly", True),
    "outside_dependent": ("share of images whose prediction rests on evidence outside the region", False),
    "flagged": ("share of images with spurious focus (below the focus threshold)", False),
}
# one manifest row: (image_id, label) is unique in a run (one row per image, or per image and finding)
PAIR_KEY = ("image_id", "label", "image_sha256", "mask_sha256")
COLUMNS = ["column", "group", "measure", "meaning", "paired", "n_a", "n_b", "a", "b", "change", "ci_low",
           "ci_high", "p_worse", "p_worse_adjusted", "worse", "better"]  # fmt: skip


def per_image(run: Run, judge: AuditConfig) -> pd.DataFrame:
    """Each image's value of every measure (NaN where the run did not measure it), with its pairing key.
    Flags and outside dependence are judged by ``judge``'s thresholds (run B's for both runs), so a
    changed threshold cannot pass for a changed model."""
    im = run.images
    out = im[list(PAIR_KEY)].astype(str)
    localised = im["localised"].astype(bool) if "localised" in im else pd.Series(True, index=im.index)
    out["focus"] = im["focus"].where(localised & ~im["zero_map"].astype(bool))
    out["accuracy"] = im["correct"].astype(float)
    measured = reliance_evidence(im).notna()
    out["outside_dependent"] = outside_dependent(im, judge).astype(float).where(measured)
    out["flagged"] = flag_images(im, judge).astype(float).where(localised)
    return out


def _same_images(sa: pd.DataFrame, sb: pd.DataFrame) -> bool:
    """Both runs hold exactly the same manifest rows (same ids, labels and file hashes), each once."""
    ka, kb = sa[list(PAIR_KEY)], sb[list(PAIR_KEY)]
    if ka.duplicated().any() or kb.duplicated().any() or len(ka) != len(kb):
        return False
    return len(ka.merge(kb, on=list(PAIR_KEY))) == len(ka)


def _groups(run: Run) -> dict[tuple[str, str], np.ndarray]:
    groups = {("all", "all"): np.ones(len(run.images), bool)}
    for col in subgroup_columns(run.config):
        if col in run.images:
            values = run.images[col].astype(str)
            for g in sorted(values.unique()):
                groups[(col, g)] = (values == g).to_numpy()
    return groups


def _worse_p(a: np.ndarray, b: np.ndarray, paired: bool, higher_better: bool, n: int, seed: int) -> float:
    """One-sided permutation p-value for "B is worse than A"."""
    no_difference = not np.any(b - a) if paired else np.ptp(np.r_[a, b]) == 0
    if no_difference:
        return 1.0
    res = sps.permutation_test(
        (b, a),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="samples" if paired else "independent",
        alternative="less" if higher_better else "greater",
        n_resamples=n,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def _row(a: pd.Series, b: pd.Series, paired: bool, higher_better: bool, n: int, n_perm: int, seed: int,
         level: float) -> dict:  # fmt: skip
    if paired:
        keep = a.notna().to_numpy() & b.notna().to_numpy()
        va, vb = a.to_numpy(float)[keep], b.to_numpy(float)[keep]
        change = float(np.mean(vb - va)) if keep.any() else np.nan
        lo, hi = bootstrap_ci(vb - va, n, seed, level) if keep.sum() >= 2 else (np.nan, np.nan)
    else:
        va, vb = a.dropna().to_numpy(float), b.dropna().to_numpy(float)
        change, lo, hi = difference_ci(vb, va, n, seed, level)
        change = float(vb.mean() - va.mean()) if len(va) and len(vb) else np.nan
    p = _worse_p(va, vb, paired, higher_better, n_perm, seed) if len(va) >= 2 and len(vb) >= 2 else np.nan
    return {
        "n_a": len(va), "n_b": len(vb), "a": float(va.mean()) if len(va) else np.nan,
        "b": float(vb.mean()) if len(vb) else np.nan, "change": change, "ci_low": lo, "ci_high": hi, "p_worse": p,
    }  # fmt: skip


@dataclass
class RunComparison:
    """Run B against run A (the baseline). ``table``: one row per (subgroup, measure), see the module
    docstring; ``flag_changes``: paired images whose flag changed."""

    a: Run
    b: Run
    table: pd.DataFrame
    flag_changes: pd.DataFrame
    n_permutations: int

    @property
    def worse(self) -> pd.DataFrame:
        return self.table[self.table["worse"]]

    @property
    def better(self) -> pd.DataFrame:
        return self.table[self.table["better"]]

    def summary(self) -> dict:
        return {
            "run_a": str(self.a.folder.path),
            "run_b": str(self.b.folder.path),
            "verdict_a": self.a.summary["verdict"],
            "verdict_b": self.b.summary["verdict"],
            "verdict_changed": self.a.summary["verdict"] != self.b.summary["verdict"],
            "model_sha256_a": self.a.info.get("model_sha256"),
            "model_sha256_b": self.b.info.get("model_sha256"),
            "same_images": bool(self.table["paired"].iloc[0]) if len(self.table) else False,
            "worse": self.worse[["column", "group", "measure", "change", "p_worse_adjusted"]].to_dict("records"),
            "better": self.better[["column", "group", "measure", "change"]].to_dict("records"),
            "became_flagged": int((self.flag_changes["change"] == "became flagged").sum()),
            "no_longer_flagged": int((self.flag_changes["change"] == "no longer flagged").sum()),
            "correction": self.b.config.stats.correction,
            "n_permutations": self.n_permutations,
            "n_boot": self.b.config.stats.n_boot,
            "seed": self.b.config.stats.seed,
            "alpha": self.b.config.thresholds.alpha,
        }


def _flag_changes(va: pd.DataFrame, vb: pd.DataFrame) -> pd.DataFrame:
    va, vb = va.drop_duplicates(list(PAIR_KEY), keep=False), vb.drop_duplicates(list(PAIR_KEY), keep=False)
    both = va.merge(vb, on=list(PAIR_KEY), suffixes=("_a", "_b"), validate="one_to_one")
    both = both[both["flagged_a"].notna() & both["flagged_b"].notna() & (both["flagged_a"] != both["flagged_b"])]
    change = np.where(both["flagged_b"] == 1, "became flagged", "no longer flagged")
    return pd.DataFrame({
        "image_id": both["image_id"], "label": both["label"], "change": change,
        "focus_a": both["focus_a"], "focus_b": both["focus_b"],
    }).reset_index(drop=True)  # fmt: skip


def compare_runs(a: Run | Path | str, b: Run | Path | str) -> RunComparison:
    """Compare run ``b`` against the baseline run ``a``, with run B's statistics settings."""
    a = a if isinstance(a, Run) else load_run(a)
    b = b if isinstance(b, Run) else load_run(b)
    st = b.config.stats
    va, vb = per_image(a, b.config), per_image(b, b.config)
    ga, gb = _groups(a), _groups(b)
    keys = [k for k in gb if k in ga]
    # enough permutations that the smallest attainable p sits well below alpha / (number of tests)
    n_perm = max(st.n_boot, int(np.ceil(4 * len(keys) * len(MEASURES) / b.config.thresholds.alpha)))
    rows = []
    for key in keys:
        sa, sb = va[ga[key]], vb[gb[key]]
        paired = _same_images(sa, sb)
        if paired:  # align B's images on A's order
            sb = sa[list(PAIR_KEY)].merge(sb, on=list(PAIR_KEY), how="left", validate="one_to_one")
            sa = sa.reset_index(drop=True)
        for measure, (meaning, higher_better) in MEASURES.items():
            r = _row(sa[measure], sb[measure], paired, higher_better, st.n_boot, n_perm, st.seed, st.ci_level)
            rows.append({"column": key[0], "group": key[1], "measure": measure, "meaning": meaning,
                         "paired": paired, **r})  # fmt: skip
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_worse_adjusted", "worse", "better")])
    tested = table["p_worse"].notna().to_numpy()
    table["p_worse_adjusted"] = np.nan
    if tested.any():
        table.loc[tested, "p_worse_adjusted"] = adjust(table.loc[tested, "p_worse"].to_numpy(), st.correction)
    higher = table["measure"].map(lambda m: MEASURES[m][1])
    table["worse"] = (table["p_worse_adjusted"] < b.config.thresholds.alpha).fillna(False).astype(bool)
    table["better"] = ((higher & (table["ci_low"] > 0)) | (~higher & (table["ci_high"] < 0))).fillna(False).astype(
        bool
    ) & ~table["worse"]
    return RunComparison(a, b, table[COLUMNS], _flag_changes(va, vb), n_perm)


@dataclass(frozen=True)
class ComparisonFolder:
    """The files of one comparison: ``comparison.csv`` (the table), ``flag_changes.csv``,
    ``comparison.json`` (verdicts and what got worse), ``comparison.html`` and ``comparison.pdf``."""

    path: Path

    table = property(lambda self: self.path / "comparison.csv")
    flag_changes = property(lambda self: self.path / "flag_changes.csv")
    summary = property(lambda self: self.path / "comparison.json")
    html = property(lambda self: self.path / "comparison.html")
    pdf = property(lambda self: self.path / "comparison.pdf")


def write_comparison(c: RunComparison, out: Path) -> ComparisonFolder:
    """The machine-readable files; :func:`audit.report.render_comparison` adds the HTML and PDF."""
    folder = ComparisonFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(c.table, folder.table)
    write_csv(c.flag_changes, folder.flag_changes)
    folder.summary.write_text(json.dumps(c.summary(), indent=2, default=float))
    return folder
