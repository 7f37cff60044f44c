"""Turn per-image and per-group numbers into flags and a pass / warn / fail verdict with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.config import AuditConfig, Level
from audit.disparity import (
    STATUS_ATTENTION,
    STATUS_LESS_FOCUS,
    STATUS_OK,
    STATUS_RELIES,
    STATUS_SMALL,
    has_counterfactual,
    localised,
    outside_dependent,
    reliance_evidence,
)
from audit.sanity import judged_similarity


def flag_images(images: pd.DataFrame, cfg: AuditConfig) -> pd.Series:
    """Spurious focus: focus (mass_in / area) below the threshold. An all-zero map is not flagged
    (it cannot be judged) and is counted separately; nor is an image explained as one of
    ``data.absence_classes``, whose evidence is not expected inside the region."""
    low = (images["focus"] < cfg.thresholds.focus).fillna(False).astype(bool)
    return low & ~images["explained"].astype(str).isin(cfg.data.absence_classes)


@dataclass
class Verdict:
    """``status`` is the worst level any rule reached; ``reasons`` says what made it so, and
    ``checks`` every rule that was applied with its value (so a pass is explained too)."""

    status: str = "pass"  # "pass" | "warn" | "fail"
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def raise_to(self, level: str, reason: str) -> None:
        if LEVELS.index(level) > LEVELS.index(self.status):
            self.status = level
        self.reasons.append(f"{level}: {reason}")


LEVELS = ("pass", "warn", "fail")


def _share_rule(v: Verdict, name: str, k: int, n: int, level: Level) -> None:
    """A share of the audited images against its warn / fail bounds."""
    share = k / n if n else 0.0
    text = f"{name}: {k} of {n} images ({share:.1%})"
    for status, bound in (("fail", level.fail), ("warn", level.warn)):
        if bound is not None and share > bound:
            v.raise_to(status, f"{text}, above the {status} bound {bound:.0%}")
            return
    bounds = ", ".join(f"{s} above {b:.0%}" for s, b in (("warn", level.warn), ("fail", level.fail)) if b is not None)
    v.checks.append(f"{text}" + (f" (limits: {bounds})" if bounds else " (no limit set)"))


def _sanity_rule(v: Verdict, sanity: dict, cfg: AuditConfig) -> None:
    if "skipped" in sanity:
        v.checks.append(f"explanation sanity check not run: {sanity['skipped']}")
    elif sanity.get("warning") and cfg.thresholds.sanity != "off":
        v.raise_to(cfg.thresholds.sanity, sanity["warning"])
    else:
        top = judged_similarity(pd.DataFrame(sanity["steps"]), cfg.sanity.steps)
        v.checks.append(
            f"explanation sanity check: the maps change when the top {cfg.sanity.steps} blocks are re-initialised "
            f"(mean Spearman to the originals {top:.2f}; limit {cfg.sanity.max_similarity})"
            + (" [rule switched off]" if sanity.get("warning") else "")
        )


def _against(g: pd.Series) -> str:
    return "the rest of the audit set" if g["reference"] == "rest" else f"{g['column']} = {g['reference']}"


def _subgroup_rules(v: Verdict, subgroups: pd.DataFrame, cfg: AuditConfig, with_cf: bool) -> None:
    """A group fails on confirmed reliance on outside evidence; less focus is attention, judged by its
    own rule (``attention_without_reliance``, or ``subgroup_disparity`` when nothing could confirm it)."""
    t = cfg.thresholds
    if subgroups.empty:
        return
    rules = {
        STATUS_RELIES: (t.subgroup_outside_dependence, "its predictions depend on evidence outside the region "
                        "more often than in {against} (counterfactual: {excess} more per 100 comparable images; "
                        "evidence: {evidence})"),
        STATUS_ATTENTION: (t.attention_without_reliance, "attention without reliance: focus significantly below "
                           "{against}, but the counterfactual does not confirm reliance on outside evidence"),
        STATUS_LESS_FOCUS: (t.subgroup_disparity, "focus significantly below {against} (no counterfactual was "
                            "measured to confirm reliance)"),
    }  # fmt: skip
    for status, (level, text) in rules.items():
        for _, g in subgroups[subgroups["status"] == status].iterrows():
            excess = f"{100 * g.get('reliance_excess', float('nan')):.0f}"
            evidence = g.get("reliance_evidence") or "none measured"
            said = text.format(against=_against(g), excess=excess, evidence=evidence)
            reason = f"{g['column']} = {g['group']}: {said} " + (
                f"(smallest adjusted p = {g['p_adjusted_min']:.2g}, n = {g['n']})"
            )
            if level == "off":
                v.checks.append(f"{reason} [rule switched off]")
            else:
                v.raise_to(level, reason)
    for _, g in subgroups[(subgroups["status"] == STATUS_OK) & (subgroups["note"].fillna("") != "")].iterrows():
        v.checks.append(f"{g['column']} = {g['group']}: {g['note']}")
    judged = int(subgroups["status"].isin([STATUS_OK, STATUS_RELIES, STATUS_ATTENTION, STATUS_LESS_FOCUS]).sum())
    if not subgroups["status"].isin(list(rules)).any():
        what = "focus (per explained class)" + (" or reliance on outside evidence" if with_cf else "")
        v.checks.append(f"no subgroup differs from its reference in {what} ({judged} groups tested)")


def _discovery_rule(v: Verdict, candidates: pd.DataFrame | None, cfg: AuditConfig) -> None:
    """Candidates found without annotations: a shortcut (concentrated and changing predictions) is
    raised to ``thresholds.discovered_shortcut``; the others are listed with the checks."""
    if candidates is None or candidates.empty:
        v.checks.append("shortcut discovery: no group of images attends to the same kind of thing outside the region")
        return
    for _, c in candidates.iterrows():
        text = (
            f"discovered candidate {c['candidate']} ({c['what']}; n = {c['n']}): its removal changes "
            f"{c['dependent_share']:.0%} of its members' predictions against {c['rest_dependent_share']:.0%} of "
            f"the other images (adjusted p = {c['p_effect_adjusted']:.2g})"
            + (f", concentrated in {c['concentrated_in']}" if c["concentrated_in"] else ", concentrated in no group")
        )
        level = cfg.thresholds.discovered_shortcut
        if not c["shortcut"]:
            v.checks.append(f"{text} (not a shortcut: it needs both)")
        elif level == "off":
            v.checks.append(f"shortcut discovered without annotations: {text} [rule switched off]")
        else:
            v.raise_to(level, f"shortcut discovered without annotations: {text}")


def decide(
    subgroups: pd.DataFrame,
    images: pd.DataFrame,
    map_size: tuple[int, int],
    cfg: AuditConfig,
    sanity: dict | None = None,
    candidates: pd.DataFrame | None = None,
) -> Verdict:
    """Apply the rules of ``cfg.thresholds`` in a fixed order."""
    t = cfg.thresholds
    v = Verdict()
    _subgroup_rules(v, subgroups, cfg, has_counterfactual(images))
    _discovery_rule(v, candidates, cfg)
    located = images[localised(images)]  # the shares of localisation are over images with a region
    n = len(located)
    _share_rule(v, f"spurious focus (focus below {t.focus:g})", int(located["flagged"].sum()), n, t.flagged_share)
    rfwr = int((located["flagged"] & located["correct"]).sum())
    _share_rule(v, "right for the wrong reason (flagged and correct)", rfwr, n, t.right_for_wrong_reason)
    if has_counterfactual(images):
        measured = reliance_evidence(images).notna()
        dependent = int(outside_dependent(images, cfg)[measured].sum())
        _share_rule(v, "prediction depends on evidence outside the mask (counterfactual)", dependent,
                    int(measured.sum()), t.outside_dependence)  # fmt: skip
    _share_rule(v, "all-zero maps (cannot be judged)", int(located["zero_map"].sum()), n, t.zero_maps)
    if min(map_size) < t.min_map_size:
        v.raise_to(
            "warn",
            f"the explained layer's map is {map_size[0]}x{map_size[1]}, coarser than {t.min_map_size}x"
            f"{t.min_map_size}: focus differences may be invisible at this resolution",
        )
    _sanity_rule(v, sanity or {"skipped": "no result"}, cfg)
    small = subgroups[subgroups["status"] == STATUS_SMALL] if len(subgroups) else subgroups
    if len(small):
        names = ", ".join(f"{c}={g}" for c, g in zip(small["column"], small["group"], strict=True))
        v.checks.append(f"too small to judge (n < {t.min_group_size}), neither pass nor fail: {names}")
    return v


def nan_to_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)
