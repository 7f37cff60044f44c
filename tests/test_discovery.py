"""Shortcut discovery without annotations: candidates, their tests, and writing them out as masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.config import AuditConfig, parse_config
from audit.discovery import NONE, AcceptError, accept, attended_mask, cluster, discover
from tests.conftest import write_config


def _cfg() -> AuditConfig:
    raw = {
        "run_name": "t",
        "model": {"kind": "torchvision", "arch": "resnet18", "checkpoint": "m.pt"},
        "data": {"manifest": "m.csv", "classes": ["nevus", "melanoma"], "subgroups": ["site", "sex"]},
    }
    return parse_config(raw, base_dir=Path("."))


def _images(marked_relies: bool, n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Every image attends a little outside; at site c, most images attend a purple mark near the border."""
    rng = np.random.default_rng(seed)
    site = rng.choice(["a", "b", "c"], n)
    marked = (site == "c") & (rng.random(n) < 0.8)
    skin, ink = np.array([0.9, 0.5, 0.3]), np.array([-0.4, -1.2, 0.8])
    colour = np.where(marked[:, None], ink, skin) + rng.normal(0, 0.08, (n, 3))
    frame = pd.DataFrame(
        {
            "row": np.arange(n),
            "image_id": [f"i{k}" for k in range(n)],
            "site": site,
            "sex": rng.choice(["f", "m"], n),
            "explained": rng.choice(["nevus", "melanoma"], n),
            "localised": True,
            "mass_in": rng.uniform(0.3, 0.6, n),
            "occluded_area": 0.2,
            "attended_border": np.where(marked, 0.1, 0.5) + rng.normal(0, 0.03, n),
            "attended_from_region": np.where(marked, 0.3, 0.1) + rng.normal(0, 0.02, n),
        }
    )
    for k in range(3):
        frame[f"attended_mean_{k}"] = colour[:, k]
        frame[f"attended_std_{k}"] = np.where(marked, 0.4, 0.1) + rng.normal(0, 0.02, n)
    drop = np.where(marked & marked_relies, 0.6, 0.0) + np.abs(rng.normal(0, 0.03, n))
    frame["occlusion_delta"] = drop
    frame["marked"] = marked
    return frame


def test_a_concentrated_candidate_that_changes_predictions_is_a_shortcut_naming_its_site() -> None:
    images = _images(marked_relies=True)
    table, member = discover(_cfg(), images, ["site", "sex"])
    top = table.iloc[0]
    assert top["shortcut"] and "site = c" in top["concentrated_in"]
    assert top["dependent_share"] > 0.8 and top["rest_dependent_share"] < 0.05
    members = member == top["candidate"]
    assert (
        (images.loc[members, "marked"]).mean() > 0.95
        and images.loc[images["marked"], "row"].isin(images.loc[members, "row"]).mean() > 0.95
    )
    assert table["shortcut"].sum() == 1
    exemplars = [int(r) for r in top["exemplar_rows"].split()]
    assert set(exemplars) <= set(images.loc[members, "row"])


def test_where_the_model_looks_without_using_it_is_listed_never_a_shortcut() -> None:
    images = _images(marked_relies=False)
    table, member = discover(_cfg(), images, ["site", "sex"])
    assert not table["shortcut"].any()
    concentrated = table[table["concentrated_in"].str.contains("site = c")]
    assert len(concentrated) and not concentrated["changes_predictions"].any()
    assert set(member.unique()) - {NONE}  # the images were grouped all the same


def test_too_few_attending_images_give_no_candidate() -> None:
    images = _images(marked_relies=True, n=300)
    images["mass_in"] = 0.95  # every map on its region
    table, member = discover(_cfg(), images, ["site", "sex"])
    assert table.empty and (member == NONE).all()


def test_clustering_is_deterministic_and_finds_separated_groups() -> None:
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 0.1, (40, 3)), rng.normal(3, 0.1, (30, 3)), rng.normal(-3, 0.1, (30, 3))])
    a = cluster(points, 6, 3000, 0)
    assert len(set(a)) == 3 and (a == cluster(points, 6, 3000, 0)).all()
    sampled = cluster(points, 6, 50, 0)  # fitted on a sample, the rest join the nearest centre
    assert len(set(sampled)) == 3
    assert all(len(set(sampled[a == k])) == 1 for k in set(a))


def test_the_derived_region_is_the_attended_cells_less_the_grown_region() -> None:
    record = pd.Series({"attended_grid": "4x4", "attended_cells": "0 5 6"})
    region = np.zeros((40, 40), bool)
    region[12:18, 12:18] = True  # grown by 2 it fills cell 5 and reaches into no other
    mask = attended_mask(record, region, (40, 40), 2)
    assert mask[0:10, 0:10].all() and mask[10:20, 20:30].all()  # cells 0 and 6
    assert not mask[10:20, 10:20].any() and mask.sum() == 200  # cell 5 lies under the grown region
    assert attended_mask(pd.Series({"attended_grid": "4x4", "attended_cells": ""}), region, (40, 40), 2).sum() == 0


def test_accept_writes_a_candidates_masks_in_each_images_geometry(
    tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from audit.pipeline import run_audit

    config = write_config(
        tmp_path / "c.yaml", tiny_set, tiny_model, **{"discovery.min_outside_share": 0.0}, **{"thresholds.alpha": 0.5}
    )
    result = run_audit(config)
    images = pd.read_parquet(result.run_dir / "images.parquet")
    found = sorted(set(images["candidate"]) - {NONE})
    assert found, "the random model's maps spread outside: there is something to group"
    table = accept(result.run_dir, found[0], tmp_path / "accepted")
    written = pd.read_csv(table)
    members = images[images["candidate"] == found[0]]
    assert sorted(written["row"]) == sorted(members["row"])
    for _, w in written.iterrows():
        mask = np.asarray(Image.open(tmp_path / "accepted" / w["artifact_mask_path"]))
        lesion = np.asarray(Image.open(tiny_set.parent / "masks" / f"{w['image_id']}.png")) > 127
        assert mask.shape == lesion.shape and mask.any() and not (mask.astype(bool) & lesion).any()
    with pytest.raises(AcceptError, match="not empty"):
        accept(result.run_dir, found[0], tmp_path / "accepted")
    with pytest.raises(AcceptError, match="is not in"):
        accept(result.run_dir, 999, tmp_path / "other")
