"""Model-free audit worlds: per-image focus and counterfactual drops drawn with class structure, unequal
groups and correlated attributes, to measure how often the *verdict* fails a group that is innocent.

Why: the verdict runs dozens of tests (every group, every explained class, attention and reliance,
conditional on the other attributes); whether it fails an innocent group more often than ``alpha`` is a
property of the whole decision procedure, not of one test, and can only be measured by running that
procedure on many worlds whose truth is known. A simulated world is a table of per-image numbers like
the one the pipeline writes, so the very functions the pipeline calls (disparity tests, group status,
verdict) are what is measured.

The null world has what makes real audits hard and no group that relies on outside evidence more than
another: classes whose maps differ (the finding's map sits on the region, the other's is diffuse), a
class mix that differs by site, unequal sites, skin tone concentrated in one site, and *attention*
differences without reliance (dark skin and one defocused site have more diffuse maps). A planted world
adds a site whose predictions depend on outside evidence more often; skin tone, concentrated there,
is then the "merely correlated" attribute that must not fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import AuditConfig, parse_config
from audit.disparity import STATUS_RELIES, disparity_tests, group_status, has_counterfactual
from audit.stats import proportion_ci
from audit.verdict import decide

SITES = ("site_a", "site_b", "site_c")
CLASSES = ("nevus", "melanoma")
TONES = ("light", "medium", "dark")
COLUMNS = ["site", "sex", "age_band", "skin_tone"]


@dataclass(frozen=True)
class NullWorld:
    """Parameters of one simulated world (defaults: the null with attention differences)."""

    n: int = 360
    site_weights: tuple[float, float, float] = (0.4, 0.35, 0.25)
    melanoma_share: tuple[float, float, float] = (0.35, 0.5, 0.6)  # class mix differs by site
    tones: tuple[float, float, float] = (0.5, 0.35, 0.15)
    tones_in_site_c: tuple[float, float, float] = (0.1, 0.2, 0.7)  # skin tone correlated with site
    accuracy: float = 0.85
    dependence: tuple[float, float] = (0.06, 0.03)  # per explained class (nevus, melanoma), every group
    diffuse_dark: float = 0.7  # focus factor: dark skin's maps are more diffuse (attention, no reliance)
    diffuse_site_b: float = 0.75  # a defocused site
    planted_site: str | None = None  # a site that relies on outside evidence more often
    planted_dependence: float = 0.4


def simulate(world: NullWorld, rng: np.random.Generator) -> pd.DataFrame:
    """One audit's per-image table: attributes, label, prediction, explained class, focus, outside drop."""
    n = world.n
    site_idx = rng.choice(3, size=n, p=np.asarray(world.site_weights) / sum(world.site_weights))
    label = rng.random(n) < np.asarray(world.melanoma_share)[site_idx]
    correct = rng.random(n) < world.accuracy
    predicted = np.where(correct, label, ~label)
    tone_p = np.where((site_idx == 2)[:, None], world.tones_in_site_c, world.tones)
    tone = (rng.random(n)[:, None] > np.cumsum(tone_p, axis=1)).sum(axis=1).clip(0, 2)
    rate = np.asarray(world.dependence)[predicted.astype(int)]
    if world.planted_site is not None:
        rate = np.where(site_idx == SITES.index(world.planted_site), world.planted_dependence, rate)
    dependent = rng.random(n) < rate
    log_focus = np.where(predicted, rng.normal(1.0, 0.5, n), rng.normal(0.1, 0.4, n))
    focus = np.exp(log_focus)
    focus *= np.where(tone == 2, world.diffuse_dark, 1.0) * np.where(site_idx == 1, world.diffuse_site_b, 1.0)
    focus *= np.where(dependent, 0.5, 1.0)  # a map follows the evidence the decision rests on
    drop = np.where(dependent, rng.uniform(0.25, 0.9, n), np.abs(rng.normal(0, 0.05, n)))
    return pd.DataFrame(
        {
            "site": np.asarray(SITES)[site_idx],
            "sex": np.where(rng.random(n) < 0.5, "female", "male"),
            "age_band": np.asarray(["<40", "40-60", ">60"])[rng.integers(0, 3, n)],
            "skin_tone": np.asarray(TONES)[tone],
            "label": np.asarray(CLASSES)[label.astype(int)],
            "predicted": np.asarray(CLASSES)[predicted.astype(int)],
            "explained": np.asarray(CLASSES)[predicted.astype(int)],
            "correct": correct,
            "focus": focus,
            "zero_map": np.zeros(n, bool),
            "flagged": focus < 1,
            "outside_delta": drop,
        }
    )


def default_config(**thresholds: object) -> AuditConfig:
    """The default thresholds and statistics of a real audit, on the simulated columns."""
    data = {
        "run_name": "simulated",
        "model": {"kind": "torchvision", "arch": "resnet18", "checkpoint": "unused.pt"},
        "data": {"manifest": "unused.csv", "classes": list(CLASSES), "subgroups": COLUMNS},
        "thresholds": thresholds,
    }
    return parse_config(data, base_dir=Path("."))


def verdict_of(cfg: AuditConfig, images: pd.DataFrame, n_perm: int) -> tuple[str, pd.DataFrame]:
    """The verdict and per-group statuses, from the same functions the pipeline calls."""
    tests = disparity_tests(cfg, images, COLUMNS, n_perm=n_perm, with_ci=False)
    table = group_status(tests, has_counterfactual(images))
    first = tests.groupby(["column", "group"], sort=False)["reference"].first().reset_index()
    table = table.merge(first, on=["column", "group"])
    table["n"] = [int((images[c].astype(str) == g).sum()) for c, g in zip(table["column"], table["group"], strict=True)]
    return decide(table, images, (8, 8), cfg, {"skipped": "simulated"}).status, table


def run_simulations(world: NullWorld, n_sims: int, seed: int, n_perm: int = 3000) -> dict[str, float]:
    """Verdicts of ``n_sims`` simulated audits: how many fail an innocent group (any group but the
    planted site) and, where a site is planted, how many fail it; rates with Wilson CIs.

    ``n_perm`` below the pipeline's (10,000 or more) makes each test's p coarser (conservative), never
    invalid: a permutation p-value is exact for any number of permutations. 3,000 still resolves the
    first Holm step (alpha / m = 0.025 / 33) of the simulated family."""
    base = default_config()
    false_fails = detected = 0
    for i in range(n_sims):
        images = simulate(world, np.random.default_rng([seed, i]))
        cfg = base.model_copy(update={"stats": base.stats.model_copy(update={"seed": i})})
        status, table = verdict_of(cfg, images, n_perm)
        failed = table[table["status"] == STATUS_RELIES]
        planted = (failed["column"] == "site") & (failed["group"] == world.planted_site)
        false_fails += int(status == "fail" and bool((~planted).any()))
        detected += int(bool(planted.any()))
    out: dict[str, float] = {"n": n_sims, "false_fails": false_fails, "detected": detected}
    for name in ("false_fails", "detected"):
        out[f"{name}_rate"] = out[name] / n_sims
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = proportion_ci(int(out[name]), n_sims)
    return out
