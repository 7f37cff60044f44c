"""Turn per-image and per-group numbers into flags and a pass / warn / fail verdict with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.config import Thresholds


def flag_images(images: pd.DataFrame, thresholds: Thresholds) -> pd.Series:
    """Spurious focus: focus (mass_in / area) below the threshold. An all-zero map is not flagged
    (it cannot be judged) and is counted separately."""
    return (images["focus"] < thresholds.focus).fillna(False).astype(bool)


@dataclass
class Verdict:
    status: str  # "pass" | "warn" | "fail"
    reasons: list[str] = field(default_factory=list)


def decide(subgroups: pd.DataFrame, images: pd.DataFrame, map_size: tuple[int, int], t: Thresholds) -> Verdict:
    reasons: list[str] = []
    status = "pass"
    flagged = subgroups[subgroups["status"] == "flagged"]
    for _, g in flagged.iterrows():
        status = "fail"
        against = "the rest of the audit set" if g["reference"] == "rest" else f"{g['column']} = {g['reference']}"
        reasons.append(
            f"{g['column']} = {g['group']}: focus significantly below {against} "
            f"(mean within-class rank {g['rank_stat']:.2f}, adjusted p = {g['p_adjusted']:.2g}, n = {g['n']})"
        )
    if min(map_size) < t.min_map_size:
        reasons.append(
            f"the explained layer's map is {map_size[0]}x{map_size[1]}, coarser than {t.min_map_size}x"
            f"{t.min_map_size}: focus differences may be invisible at this resolution"
        )
        status = "warn" if status == "pass" else status
    zero = int(images["zero_map"].sum())
    if len(images) and zero / len(images) > 0.1:
        reasons.append(f"{zero} of {len(images)} maps are all zero (no positive evidence at the layer)")
        status = "warn" if status == "pass" else status
    small = subgroups[subgroups["status"] == "too small to judge"]
    if len(small):
        names = ", ".join(f"{c}={g}" for c, g in zip(small["column"], small["group"], strict=True))
        reasons.append(f"too small to judge (n < {t.min_group_size}): {names}")
    if status == "pass":
        reasons.insert(0, "no subgroup's focus is significantly below its reference")
    return Verdict(status=status, reasons=reasons)


def nan_to_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)
