"""Counterfactual evidence for the demo: does the prediction change when only the ink is removed?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def counterfactual_table(images: pd.DataFrame) -> pd.DataFrame:
    """Per site and ink presence: n, mean explained-class probability with and without the ink,
    and the share of predictions that change when it is removed."""
    images = images.assign(has_artifact=images["has_artifact"].astype(str).str.lower() == "true")
    g = images.groupby(["site", "has_artifact"])
    return pd.DataFrame(
        {
            "n": g.size(),
            "p_with": g["explained_probability"].mean(),
            "p_without": g["counterfactual_probability"].mean(),
            "prediction_changes": g["counterfactual_flips"].mean(),
        }
    ).round(3)


def counterfactual_summary(images_parquet: Path) -> str:
    return counterfactual_table(pd.read_parquet(images_parquet)).to_string()
