"""Shortcut discovery without artifact annotations: group what the maps attend to outside the region.

The "reveal" step of Reveal-to-Revise (Anders et al. 2022; Pahde et al. 2023) and SpRAy (Lapuschkin et
al. 2019), on what the audit already measured per image. Each image whose map puts a real share of its
mass outside the region has the cells the guided occlusion filled (:mod:`audit.counterfactual`); those
cells are described by what they show (per channel mean and spread), how close they lie to the
image's border and how far from the region, so an ink stroke groups with ink strokes in any corner.
The described images are clustered (Ward, the number of clusters by silhouette), and each cluster is
a *candidate*. A candidate is reported as a **shortcut** when both hold:

* it is **concentrated**: over-represented in some subgroup or explained class (one-sided Fisher exact
  test of membership against the group, all candidates and groups adjusted together), and
* removing it **changes predictions**: its members' predictions depend on the attended cells (guided
  occlusion's excess drop above ``counterfactual.dependence``) more often than the other images',
  by a significant (one-sided Fisher, adjusted over candidates) and material
  (``thresholds.min_reliance_gap``) margin.

A concentrated candidate whose removal changes nothing is where the model *looks*, not what it
*uses*; it is listed, never called a shortcut. Each candidate's derived region per image is its
attended cells (``attended_cells`` on the grid ``attended_grid``), which ``audit accept`` writes out
as artifact masks for the next audit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import stats

from audit.config import AuditConfig
from audit.disparity import localised
from audit.imaging import dilate
from audit.stats import adjust, proportion_ci

NONE = -1  # an image in no candidate


def descriptor_columns(images: pd.DataFrame) -> list[str]:
    """The per-image description of what the guided occlusion removed (see ``attended_appearance``)."""
    described = sorted(c for c in images if c.startswith(("attended_mean_", "attended_std_")))
    return [*described, "attended_border", "attended_from_region"] if described else []


def pool(cfg: AuditConfig, images: pd.DataFrame) -> pd.Series:
    """Images whose map puts at least ``discovery.min_outside_share`` of its mass outside the region
    and whose attended cells were described: the ones with something outside to discover."""
    cols = descriptor_columns(images)
    if not cols or "occluded_area" not in images:
        return pd.Series(False, index=images.index)
    outside = 1 - images["mass_in"].astype(float)
    described = images[cols].notna().all(axis=1)
    return localised(images) & (images["occluded_area"] > 0) & (outside >= cfg.discovery.min_outside_share) & described


def cluster(features: np.ndarray, max_clusters: int, max_pool: int, seed: int) -> np.ndarray:
    """Ward clusters of standardised features, the number (2..max_clusters) by silhouette; beyond
    ``max_pool`` images a seeded sample is clustered and the rest join the nearest cluster centre."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    spread = features.std(axis=0)
    z = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1)
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(len(z), max_pool, replace=False)) if len(z) > max_pool else np.arange(len(z))
    best, labels = -np.inf, np.zeros(len(fit), int)
    for k in range(2, min(max_clusters, len(fit) - 1) + 1):
        found = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(z[fit])
        score = silhouette_score(z[fit], found)
        if score > best + 1e-12:
            best, labels = score, found
    centres = np.stack([z[fit][labels == c].mean(axis=0) for c in range(labels.max() + 1)])
    out = ((z[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    out[fit] = labels
    return out


def _fisher_greater(a: int, b: int, c: int, d: int) -> float:
    """One-sided Fisher exact p that the odds in the first row exceed the second's."""
    return float(stats.fisher_exact([[a, b], [c, d]], alternative="greater").pvalue)


def _concentration(cfg: AuditConfig, member: np.ndarray, frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Membership against each group of each column and each explained class, over the images with a region."""
    out = []
    for col in [*columns, "explained"]:
        values = frame[col].astype(str).to_numpy()
        for group in sorted(set(values)):
            in_group = values == group
            a, b = int((member & in_group).sum()), int((member & ~in_group).sum())
            c, d = int((~member & in_group).sum()), int((~member & ~in_group).sum())
            if a < cfg.thresholds.min_group_size // 2 or not (c + d) or not (a + b):
                continue
            out.append({"column": col, "group": group, "members_in_group": a, "share_of_members": a / (a + b),
                        "share_of_rest": c / (c + d), "p": _fisher_greater(a, b, c, d)})  # fmt: skip
    return out


def _describe(frame: pd.DataFrame, cfg: AuditConfig) -> str:
    """A short text of what the members' attended cells show, in the image's own units where possible."""
    pre = cfg.preprocessing
    means = [frame[f"attended_mean_{k}"].median() * pre.std[k] + pre.mean[k] for k in range(pre.channels)]
    if pre.channels == 3:  # the median colour of the attended cells (the thing and what surrounds it)
        look = "colour #" + "".join(f"{round(255 * min(max(v, 0), 1)):02x}" for v in means)
    else:
        look = "dark" if means[0] < 0.35 else "bright" if means[0] > 0.65 else "mid-grey"
    border = frame["attended_border"].median()
    where = "at the image border" if border < 0.2 else "near the border" if border < 0.45 else "towards the centre"
    apart = frame["attended_from_region"].median()
    return f"{look}, {where}, {apart:.2f} image sides from the region"


def discover(cfg: AuditConfig, images: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Candidates (one row each, shortcuts first) and each image's candidate (``NONE`` for none)."""
    d = cfg.discovery
    membership = pd.Series(NONE, index=images.index, dtype=int)
    chosen = pool(cfg, images)
    if not d.enabled or int(chosen.sum()) < 2 * cfg.thresholds.min_group_size:
        return pd.DataFrame(), membership
    cols = descriptor_columns(images)
    labels = cluster(images.loc[chosen, cols].to_numpy(float), d.max_clusters, d.max_pool, d.seed)
    membership[chosen] = labels
    frame = images[localised(images)]
    member_of = membership[frame.index].to_numpy()
    dependent = (frame["occlusion_delta"] > cfg.counterfactual.dependence).fillna(False).to_numpy(bool)
    rows, tests = [], []
    for k in sorted(set(labels)):
        member = member_of == k
        if member.sum() < cfg.thresholds.min_group_size:
            continue
        m_dep, r_dep = int((member & dependent).sum()), int((~member & dependent).sum())
        n_m, n_r = int(member.sum()), int((~member).sum())
        lo, hi = proportion_ci(m_dep, n_m, cfg.stats.ci_level)
        members = frame[member]
        exemplars = members.sort_values("occlusion_delta", ascending=False)["row"].head(d.exemplars)
        rows.append({
            "candidate": int(k), "n": n_m, "what": _describe(members, cfg),
            "dependent_share": m_dep / n_m, "dependent_ci_low": lo, "dependent_ci_high": hi,
            "rest_dependent_share": r_dep / n_r if n_r else np.nan,
            "p_effect": _fisher_greater(m_dep, n_m - m_dep, r_dep, n_r - r_dep) if n_r else np.nan,
            "occluded_area_median": float(members["occluded_area"].median()),
            "exemplar_rows": " ".join(str(int(r)) for r in exemplars),
        })  # fmt: skip
        tests += [{"candidate": int(k), **t} for t in _concentration(cfg, member, frame, columns)]
    if not rows:
        return pd.DataFrame(), membership
    table, groups = pd.DataFrame(rows), pd.DataFrame(tests)
    alpha = cfg.thresholds.alpha
    table["p_effect_adjusted"] = adjust(table["p_effect"].to_numpy(float), cfg.stats.correction)
    table["gap"] = table["dependent_share"] - table["rest_dependent_share"]
    table["changes_predictions"] = (table["p_effect_adjusted"] < alpha) & (
        table["gap"] >= cfg.thresholds.min_reliance_gap
    )
    table["concentrated_in"], table["p_concentration_adjusted"] = "", np.nan
    if len(groups):
        groups["p_adjusted"] = adjust(groups["p"].to_numpy(float), cfg.stats.correction)
        for i, k in enumerate(table["candidate"]):
            g = groups[(groups["candidate"] == k) & (groups["p_adjusted"] < alpha)].sort_values("p_adjusted")
            table.loc[i, "concentrated_in"] = "; ".join(
                f"{r['column']} = {r['group']} ({r['share_of_members']:.0%} of members, {r['share_of_rest']:.0%} "
                f"of the rest)"
                for _, r in g.iterrows()
            )
            mine = groups[groups["candidate"] == k]
            table.loc[i, "p_concentration_adjusted"] = float(mine["p_adjusted"].min()) if len(mine) else np.nan
    table["shortcut"] = table["changes_predictions"] & (table["concentrated_in"] != "")
    table = table.sort_values(["shortcut", "gap"], ascending=[False, False], kind="stable").reset_index(drop=True)
    return table, membership


def attended_mask(record: pd.Series, region: np.ndarray | None, size: tuple[int, int], margin: int) -> np.ndarray:
    """The cells the guided occlusion filled (``attended_cells`` on ``attended_grid``) at ``size``, less
    the region grown by ``margin`` pixels: the candidate region the audit derived for this image."""
    h, w = size
    gh, gw = (int(v) for v in str(record.get("attended_grid") or "1x1").split("x"))
    cells = np.zeros(gh * gw, bool)
    text = str(record.get("attended_cells") or "").split()
    cells[[int(c) for c in text]] = True
    out = cells[(np.arange(h) * gh // h)[:, None] * gw + (np.arange(w) * gw // w)[None, :]]
    if region is not None:
        grown = dilate(torch.from_numpy(region)[None], margin)[0].numpy()
        out &= ~grown
    return out


class AcceptError(ValueError):
    """A candidate cannot be written out (not in the run, or the target folder is not empty)."""


def accept(run_dir: Path, candidate: int, out: Path) -> Path:
    """Write candidate ``candidate``'s derived region of each member image as a binary PNG mask in the
    image's own geometry under ``out/masks/`` and ``out/artifact_masks.csv`` (image_id, row,
    artifact_mask_path relative to ``out``): merge that column into the manifest (with ``out`` inside
    the data root) and the next audit tests the candidate as an annotated artifact. Reads the audit
    set's images again (for their size and region); refuses a non-empty ``out``."""
    from audit.inputs import RowReader
    from audit.runfolder import load_run

    run = load_run(run_dir)
    images = run.images
    if "candidate" not in images:
        raise AcceptError(f"{run_dir}: this run has no discovered candidates")
    members = images[images["candidate"] == candidate]
    if members.empty:
        found = sorted(int(c) for c in images["candidate"].unique() if c != NONE)
        raise AcceptError(f"candidate {candidate} is not in {run_dir} (its candidates: {found or 'none'})")
    if out.exists() and any(out.iterdir()):
        raise AcceptError(f"{out} is not empty: name a new folder (nothing there is overwritten)")
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = run.folder.included_rows().set_index("row", drop=False)
    reader, margin, written = RowReader(run.config), run.config.counterfactual.occlusion.margin, []
    for _, record in members.iterrows():
        sample = reader.read(rows.loc[int(record["row"])].to_dict())
        size = sample.image.array.shape[:2]
        mask = attended_mask(record, sample.region, size, round(margin * max(size)))
        name = f"masks/row_{int(record['row']):06d}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / name)
        written.append({"image_id": record["image_id"], "row": int(record["row"]), "artifact_mask_path": name})
    table = out / "artifact_masks.csv"
    pd.DataFrame(written).to_csv(table, index=False)
    return table
