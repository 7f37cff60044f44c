"""Localisation metrics on hand-made maps and masks, with exact expected values."""

from __future__ import annotations

import math

import numpy as np
import torch

from audit import metrics


def test_mass_area_focus_pointing_on_a_hand_made_case() -> None:
    maps = np.array([[[1.0, 0.0], [0.0, 3.0]]])
    masks = np.array([[[True, False], [False, False]]])
    assert metrics.mass_in(maps, masks).item() == 0.25
    assert metrics.area(masks).item() == 0.25
    assert metrics.focus(maps, masks).item() == 1.0  # exactly what a uniform map would score
    assert metrics.pointing_hit(maps, masks).item() == 0.0  # the maximum (3) is outside


def test_map_concentrated_on_the_mask() -> None:
    maps = np.zeros((1, 4, 4))
    maps[0, 1:3, 1:3] = [[1.0, 2.0], [3.0, 4.0]]
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 1:3, 1:3] = True
    masks[0, 0, 0] = True  # area 5/16
    assert metrics.mass_in(maps, masks).item() == 1.0
    assert math.isclose(metrics.focus(maps, masks).item(), 16 / 5)
    assert metrics.pointing_hit(maps, masks).item() == 1.0


def test_uniform_map_scores_the_area_and_ties_count_as_a_hit() -> None:
    maps = np.ones((1, 3, 3))
    masks = np.zeros((1, 3, 3), bool)
    masks[0, 0, 0] = True
    assert math.isclose(metrics.mass_in(maps, masks).item(), 1 / 9)
    assert math.isclose(metrics.focus(maps, masks).item(), 1.0)
    assert metrics.pointing_hit(maps, masks).item() == 1.0  # one of the tied maxima is inside


def test_all_zero_map_is_nan_not_a_score() -> None:
    maps = np.zeros((2, 2, 2))
    maps[1, 0, 0] = 1.0
    masks = np.ones((2, 2, 2), bool)
    assert math.isnan(metrics.mass_in(maps, masks)[0].item())
    assert math.isnan(metrics.focus(maps, masks)[0].item())
    assert math.isnan(metrics.pointing_hit(maps, masks)[0].item())
    assert metrics.mass_in(maps, masks)[1].item() == 1.0


def test_batched_torch_input_matches_per_image_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(5, 8, 8, generator=gen)
    masks = torch.rand(5, 8, 8, generator=gen) > 0.6
    batched = metrics.mass_in(maps, masks)
    for i in range(5):
        m, k = maps[i].double().numpy(), masks[i].numpy()
        assert math.isclose(batched[i].item(), (m * k).sum() / m.sum(), rel_tol=1e-12)
