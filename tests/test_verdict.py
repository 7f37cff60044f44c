"""The verdict's rules: each threshold in the config moves pass / warn / fail, and says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.config import AuditConfig, ConfigError, parse_config
from audit.verdict import decide


def _cfg(**thresholds: object) -> AuditConfig:
    data = {
        "run_name": "t",
        "model": {"kind": "torchvision", "arch": "resnet18", "checkpoint": "m.pt"},
        "data": {"manifest": "m.csv", "classes": ["a", "b"]},
        "thresholds": thresholds,
    }
    return parse_config(data, base_dir=Path("."))


def _images(n: int = 100, flagged: int = 0, correct: bool = True, dependent: int = 0, zero: int = 0) -> pd.DataFrame:
    idx = np.arange(n)
    return pd.DataFrame(
        {
            "flagged": idx < flagged,
            "correct": np.full(n, correct),
            "outside_delta": np.where(idx < dependent, 0.9, 0.0),
            "zero_map": idx >= n - zero,
        }
    )


def _groups(status: str = "ok", note: str = "") -> pd.DataFrame:
    return pd.DataFrame(
        [{"column": "site", "group": "c", "n": 40, "status": status, "reference": "rest", "p_adjusted_min": 0.001,
          "note": note}]
    )  # fmt: skip


def test_a_clean_result_passes_and_lists_what_was_checked() -> None:
    v = decide(_groups(), _images(), (8, 8), _cfg())
    assert v.status == "pass" and v.reasons == []
    assert any("no subgroup" in c for c in v.checks) and any("spurious focus" in c for c in v.checks)


@pytest.mark.parametrize(
    ("status", "rule", "default"),
    [
        ("relies on outside evidence", "subgroup_outside_dependence", "fail"),
        ("attention without reliance", "attention_without_reliance", "warn"),
        ("less focus", "subgroup_disparity", "fail"),
    ],
)
def test_each_subgroup_status_has_its_own_rule(status: str, rule: str, default: str) -> None:
    v = decide(_groups(status), _images(), (8, 8), _cfg())
    assert v.status == default and "site = c" in v.reasons[0]
    other = "warn" if default == "fail" else "fail"
    assert decide(_groups(status), _images(), (8, 8), _cfg(**{rule: other})).status == other
    if rule != "subgroup_disparity":  # focus without any counterfactual cannot be switched off
        off = decide(_groups(status), _images(), (8, 8), _cfg(**{rule: "off"}))
        assert off.status == "pass" and any("rule switched off" in c for c in off.checks)


def test_a_note_on_a_passing_group_is_listed_with_the_checks() -> None:
    v = decide(_groups(note="reliance differs overall but not within the cells of site"), _images(), (8, 8), _cfg())
    assert v.status == "pass" and any("site = c: reliance differs overall" in c for c in v.checks)


@pytest.mark.parametrize(
    ("rule", "images", "expected"),
    [
        ("flagged_share", _images(flagged=30, correct=False), {"warn": 0.2, "fail": 0.4}),
        ("right_for_wrong_reason", _images(flagged=30, correct=True), {"warn": 0.2, "fail": 0.4}),
        ("outside_dependence", _images(dependent=30), {"warn": 0.2, "fail": 0.4}),
        ("zero_maps", _images(zero=30), {"warn": 0.2, "fail": 0.4}),
    ],
)
def test_share_rules_warn_and_fail_at_their_bounds(rule: str, images: pd.DataFrame, expected: dict) -> None:
    assert decide(_groups(), images, (8, 8), _cfg(**{rule: expected})).status == "warn"  # 30% > 20%
    assert decide(_groups(), images, (8, 8), _cfg(**{rule: {"warn": 0.1, "fail": 0.25}})).status == "fail"
    v = decide(_groups(), images, (8, 8), _cfg(**{rule: {"warn": 0.3, "fail": None}}))
    assert v.status == "pass"  # 30% is not above 30%
    assert "30 of 100" in " ".join(v.checks)


def test_sanity_warning_follows_its_setting_and_coarse_maps_warn() -> None:
    survived = {"steps": [{"spearman": 0.9}, {"spearman": 0.8}], "warning": "maps survive: not evidence"}
    assert decide(_groups(), _images(), (8, 8), _cfg(), survived).status == "warn"
    assert decide(_groups(), _images(), (8, 8), _cfg(sanity="fail"), survived).status == "fail"
    assert decide(_groups(), _images(), (8, 8), _cfg(sanity="off"), survived).status == "pass"
    # judged once the top two blocks are random: step 1 (half a head) and step 3 are not judged
    changed = {"steps": [{"spearman": 0.7}, {"spearman": 0.1}, {"spearman": 0.9}], "warning": None}
    v = decide(_groups(), _images(), (8, 8), _cfg(), changed)
    assert v.status == "pass" and any("originals 0.10" in c for c in v.checks)
    skipped = decide(_groups(), _images(), (8, 8), _cfg(), {"skipped": "onnx"})
    assert skipped.status == "pass" and any("not run: onnx" in c for c in skipped.checks)
    assert decide(_groups(), _images(), (4, 4), _cfg()).status == "warn"


def test_warn_above_fail_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"thresholds\.flagged_share"):
        _cfg(flagged_share={"warn": 0.5, "fail": 0.2})


def _candidates(shortcut: bool) -> pd.DataFrame:
    return pd.DataFrame(
        [{"candidate": 2, "n": 40, "what": "colour #c3928f, near the border", "dependent_share": 0.5,
          "rest_dependent_share": 0.05, "p_effect_adjusted": 1e-6, "shortcut": shortcut,
          "concentrated_in": "site = c (100% of members, 20% of the rest)" if shortcut else ""}]
    )  # fmt: skip


def test_a_discovered_shortcut_warns_and_a_mere_candidate_is_listed() -> None:
    found = decide(_groups(), _images(), (8, 8), _cfg(), None, _candidates(True))
    assert found.status == "warn" and "discovered candidate 2" in found.reasons[0] and "site = c" in found.reasons[0]
    assert decide(_groups(), _images(), (8, 8), _cfg(discovered_shortcut="fail"), None, _candidates(True)).status == (
        "fail"
    )
    off = decide(_groups(), _images(), (8, 8), _cfg(discovered_shortcut="off"), None, _candidates(True))
    assert off.status == "pass" and any("discovered candidate 2" in c for c in off.checks)
    looked = decide(_groups(), _images(), (8, 8), _cfg(), None, _candidates(False))
    assert looked.status == "pass" and any("not a shortcut" in c for c in looked.checks)
    none = decide(_groups(), _images(), (8, 8), _cfg(), None, pd.DataFrame())
    assert any("shortcut discovery: no group" in c for c in none.checks)
