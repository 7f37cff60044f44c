"""The disparity tests behind the verdict: focus judged per explained class, reliance tested per
subgroup, attention told apart from reliance, and correlated attributes not failed in their neighbour's place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import stats
from audit.config import AuditConfig, parse_config
from audit.disparity import (
    STATUS_ATTENTION,
    STATUS_LESS_FOCUS,
    STATUS_OK,
    STATUS_RELIES,
    absence_like_classes,
    disparity_tests,
    group_status,
    outside_drop,
    reliance_evidence,
)
from audit.examples.simulate import NullWorld, run_simulations
from audit.verdict import flag_images


def _cfg(subgroups: list[str], **data: object) -> AuditConfig:
    raw = {
        "run_name": "t",
        "model": {"kind": "torchvision", "arch": "resnet18", "checkpoint": "m.pt"},
        "data": {"manifest": "m.csv", "classes": ["nevus", "melanoma"], "subgroups": subgroups, **data},
        "stats": {"n_boot": 200},
    }
    return parse_config(raw, base_dir=Path("."))


def _world(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    explained = np.where(rng.random(n) < 0.5, "melanoma", "nevus")
    return pd.DataFrame(
        {
            "site": rng.choice(["a", "b", "c"], n),
            "sex": rng.choice(["f", "m"], n),
            "explained": explained,
            "focus": np.where(explained == "melanoma", rng.lognormal(1.0, 0.4, n), rng.lognormal(0.0, 0.4, n)),
            "zero_map": np.zeros(n, bool),
            "outside_delta": np.abs(rng.normal(0, 0.03, n)),
        }
    )


def test_a_shortcut_that_cancels_when_pooled_is_found_within_its_class() -> None:
    """Site c's shortcut moves focus down in the melanoma maps and up in the nevus maps: the ranks pooled
    over classes sit at 0.5, the per-class test finds it."""
    images = _world()
    c = (images["site"] == "c").to_numpy()
    mel = (images["explained"] == "melanoma").to_numpy()
    images.loc[c & mel, "focus"] *= 0.4
    images.loc[c & ~mel, "focus"] *= 2.5
    tests = disparity_tests(_cfg(["site"]), images.drop(columns="outside_delta"), ["site"], n_perm=2000)
    focus = tests[(tests["group"] == "c")].set_index("explained")
    assert focus.loc["melanoma", "significant"] and not focus.loc["nevus", "significant"]
    pooled_ranks = pd.concat(
        [g["focus"].rank(pct=True) for _, g in images.groupby("explained")]
    )  # what an across-class average sees
    assert abs(pooled_ranks[c].mean() - 0.5) < 0.06
    status = group_status(tests, with_cf=False).set_index("group").loc["c", "status"]
    assert status == STATUS_LESS_FOCUS  # no counterfactual: focus is all there is


def test_confirmed_reliance_fails_and_low_focus_alone_is_attention() -> None:
    images = _world(seed=1)
    c = (images["site"] == "c").to_numpy()
    rng = np.random.default_rng(5)
    images.loc[c, "outside_delta"] = np.where(rng.random(c.sum()) < 0.4, 0.6, 0.0)  # site c relies on outside
    images.loc[(images["sex"] == "f").to_numpy(), "focus"] *= 0.5  # diffuse maps, decisions on the lesion
    tests = disparity_tests(_cfg(["site", "sex"]), images, ["site", "sex"], n_perm=2000)
    table = group_status(tests, with_cf=True).set_index("group")
    assert table.loc["c", "status"] == STATUS_RELIES
    assert table.loc["f", "status"] == STATUS_ATTENTION
    assert "does not confirm reliance" in table.loc["f", "note"]
    assert table.loc[["a", "b", "m"], "status"].eq(STATUS_OK).all()
    reliance = tests[(tests["test"] == "reliance") & (tests["group"] == "c")].iloc[0]
    assert reliance["group_value"] > 0.3 and reliance["ci_low"] > 0.2  # share difference with its CI


def test_a_correlated_attribute_is_not_failed_in_its_neighbours_place() -> None:
    """Skin tone 'dark' is concentrated in site c, and only site c relies on outside evidence: the
    marginal test finds dark skin too, the conditional one does not, and the note says why."""
    images = _world(n=600, seed=2)
    rng = np.random.default_rng(3)
    c = (images["site"] == "c").to_numpy()
    images["tone"] = np.where(rng.random(len(images)) < np.where(c, 0.75, 0.15), "dark", "light")
    images.loc[c, "outside_delta"] = np.where(rng.random(c.sum()) < 0.4, 0.6, 0.0)
    cfg = _cfg(["site", "tone"])
    tests = disparity_tests(cfg, images, ["site", "tone"], n_perm=2000)
    table = group_status(tests, with_cf=True).set_index("group")
    assert table.loc["c", "status"] == STATUS_RELIES
    assert table.loc["dark", "status"] == STATUS_OK
    dark = tests[(tests["group"] == "dark") & (tests["test"] == "reliance")].iloc[0]
    assert dark["p_marginal_adjusted"] < 0.05 and dark["vanishes_conditionally"]
    assert "not within the cells of site" in table.loc["dark", "note"]


def test_absence_classes_are_reported_not_judged_nor_flagged() -> None:
    images = _world(seed=4)
    images.loc[(images["site"] == "c") & (images["explained"] == "nevus"), "focus"] *= 0.2
    cfg = _cfg(["site"], absence_classes=["nevus"])
    tests = disparity_tests(cfg, images, ["site"], n_perm=500)
    nevus = tests[(tests["test"] == "focus") & (tests["explained"] == "nevus")]
    assert not nevus["judged"].any() and nevus["p"].isna().all() and nevus["group_value"].notna().all()
    assert group_status(tests, with_cf=True).set_index("group").loc["c", "status"] == STATUS_OK
    flags = flag_images(images.assign(focus=0.1), cfg)
    assert not flags[images["explained"] == "nevus"].any() and flags[images["explained"] == "melanoma"].all()
    with pytest.raises(ValueError, match="absence_classes"):
        _cfg(["site"], absence_classes=["normal"])


def test_a_class_whose_maps_avoid_the_region_everywhere_is_named() -> None:
    images = _world(seed=6)
    images.loc[images["explained"] == "nevus", "focus"] = 0.6
    assert absence_like_classes(_cfg(["site", "sex"]), images, ["site", "sex"]) == ["nevus"]
    images.loc[(images["explained"] == "nevus") & (images["site"] == "a"), "focus"] = 1.4
    assert absence_like_classes(_cfg(["site", "sex"]), images, ["site", "sex"]) == []


def test_reliance_is_measured_by_the_most_specific_neutralisation_an_image_has() -> None:
    """A supplied counterfactual before an annotated artifact before the whole outside of the mask:
    replacing most of an image can move a prediction by itself (a heavy blur reads as another scanner)."""
    images = pd.DataFrame(
        {
            "outside_delta": [0.6, 0.5, 0.4, 0.9],
            "artifact_delta": [0.3, np.nan, np.nan, 0.0],  # row 4: annotated as having no artifact
            "counterfactual_delta": [np.nan, np.nan, 0.05, np.nan],
        }
    )
    assert outside_drop(images).tolist() == [0.3, 0.5, 0.05, 0.0]
    assert reliance_evidence(images).tolist() == ["artifact", "outside", "counterfactual", "artifact"]
    assert outside_drop(pd.DataFrame({"x": [1]})).isna().all()


def test_the_verdict_rarely_fails_an_innocent_group_and_finds_a_planted_one() -> None:
    """A small seeded version of bench/validity.py's calibration: model-free worlds with class structure,
    unequal sites, skin tone concentrated in one site and attention differences without reliance."""
    null = run_simulations(NullWorld(), 30, seed=7)
    assert null["false_fails"] <= 3  # alpha = 0.025: expected at most 0.75 of 30; 4 or more: probability < 1 %
    planted = run_simulations(NullWorld(planted_site="site_c"), 20, seed=8)
    assert planted["detected"] >= 18 and planted["false_fails"] <= 3  # skin tone is concentrated in site c


def test_tests_run_side_by_side_give_the_numbers_of_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    images = _world(300, seed=4)
    cfg = _cfg(["site", "sex"])
    monkeypatch.setattr(stats, "usable_cpus", lambda: 1)
    one = disparity_tests(cfg, images, ["site", "sex"], n_perm=300)
    monkeypatch.setattr(stats, "usable_cpus", lambda: 4)
    four = disparity_tests(cfg, images, ["site", "sex"], n_perm=300)
    assert len(one) > 4
    pd.testing.assert_frame_equal(one, four, check_exact=True)
