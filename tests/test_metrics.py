"""Localisation metrics on hand-made maps and masks, with exact expected values."""

from __future__ import annotations

import math

import numpy as np
import pytest
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


def _worked_example() -> tuple[np.ndarray, np.ndarray]:
    """6x6: a 2x2 block of ones inside a 3x3 mask, and one pixel of 5 outside it."""
    maps = np.zeros((1, 6, 6))
    maps[0, 1:3, 1:3] = 1.0
    maps[0, 4, 4] = 5.0
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1:4, 1:4] = True
    return maps, masks


def test_every_metric_on_a_worked_example() -> None:
    maps, masks = _worked_example()
    got = {k: v.item() for k, v in metrics.localisation(maps, masks, top_k=4, bbox_threshold=0.15).items()}
    assert got["mass_in"] == 4 / 9  # 4 of the 9 units of mass
    assert got["area"] == 9 / 36
    assert math.isclose(got["focus"], (4 / 9) / (9 / 36))
    # K = 9: the 5, the four ones, then 4 of the 31 tied zeros, 5 of which are inside: 4 * 5/31 expected
    assert math.isclose(got["rank_accuracy"], (4 + 4 * 5 / 31) / 9, rel_tol=1e-12)
    assert got["pointing_hit"] == 0.0
    assert got["energy_pointing"] == 4 / 9  # the mask is its own bounding box here
    assert got["top_k"] == 3 / 4  # the 5 (outside), then 3 of the 4 tied ones (all inside)
    # AUROC: 9 mask pixels (4 ones, 5 zeros) vs 27 others (one 5, 26 zeros); ties count one half
    assert math.isclose(got["pixel_auroc"], (4 * 26 + 0.5 * 5 * 26) / (9 * 27), rel_tol=1e-12)
    # >= 0.15 * 5 keeps the 2x2 block (4 px) and the single 5 (1 px): the block's box is 4 of the mask's 9
    assert got["bbox_iou"] == 4 / 9


def test_top_k_as_a_share_of_the_image_equals_the_pixel_count() -> None:
    maps, masks = _worked_example()
    assert metrics.top_k_intersection(maps, masks, 4 / 36).item() == metrics.top_k_intersection(maps, masks, 4).item()
    with pytest.raises(ValueError, match="top-k"):
        metrics.top_k_intersection(maps, masks, 0)


def test_energy_pointing_uses_the_bounding_box_not_the_outline() -> None:
    maps = np.zeros((1, 5, 5))
    maps[0, 2, 2] = 1.0  # the centre of a ring-shaped mask
    masks = np.zeros((1, 5, 5), bool)
    masks[0, 1:4, 1:4] = True
    masks[0, 2, 2] = False
    assert metrics.mass_in(maps, masks).item() == 0.0
    assert metrics.energy_pointing(maps, masks).item() == 1.0


def test_bbox_iou_takes_the_largest_component_and_breaks_size_ties_by_mass() -> None:
    maps = np.zeros((1, 10, 10))
    maps[0, 0:2, 0:2] = 1.0  # 4 px, mass 4
    maps[0, 6:8, 6:8] = 2.0  # 4 px, mass 8: same size, more mass -> chosen
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 6:9, 6:9] = True
    assert metrics.bbox_iou(maps, masks).item() == 4 / 9
    maps[0, 0:3, 0:3] = 1.0  # now 9 px: larger wins over heavier
    assert metrics.bbox_iou(maps, masks).item() == 0.0


def test_bbox_iou_threshold_and_diagonal_connectivity() -> None:
    maps = np.zeros((1, 6, 6))
    maps[0, 1, 1] = maps[0, 2, 2] = maps[0, 3, 3] = 1.0  # a diagonal: one 8-connected component
    maps[0, 5, 0] = 0.1  # below 15% of the max
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 1:4, 1:4] = True
    assert metrics.bbox_iou(maps, masks).item() == 1.0
    assert metrics.bbox_iou(maps, masks, threshold=0.05).item() == 1.0  # the 0.1 pixel is its own, smaller part


def test_signed_maps_are_read_by_their_positive_part() -> None:
    maps, masks = _worked_example()
    signed = maps.copy()
    signed[0, 5, 5] = -100.0  # strong negative evidence outside the mask
    for name, value in metrics.localisation(signed, masks, 4, 0.15).items():
        expected = metrics.localisation(maps, masks, 4, 0.15)[name].item()
        assert math.isclose(value.item(), expected, rel_tol=1e-12), name


def test_empty_mask_and_zero_map_are_nan_for_every_map_metric() -> None:
    maps, masks = _worked_example()
    maps = np.concatenate([maps, np.zeros_like(maps), maps])
    masks = np.concatenate([masks, masks, np.zeros_like(masks)])
    for name, value in metrics.localisation(maps, masks, 4, 0.15).items():
        if name == "area":
            continue
        assert not math.isnan(value[0].item()), name
        assert math.isnan(value[1].item()) and math.isnan(value[2].item()), name


def test_pixel_auroc_of_a_full_mask_is_nan() -> None:
    maps, _ = _worked_example()
    assert math.isnan(metrics.pixel_auroc(maps, np.ones((1, 6, 6), bool)).item())


def test_one_shared_sort_gives_the_rank_metrics_of_their_definitions() -> None:
    """localisation() sorts each map once for rank accuracy, top-k and pixel AUROC; the results are
    exactly those of scipy's average ranks and of a descending sort per metric, ties included."""
    from scipy import stats as sps

    g = torch.Generator().manual_seed(7)
    maps = torch.randint(0, 5, (6, 16, 16), generator=g).double()  # heavy ties
    masks = torch.rand(6, 16, 16, generator=g) < torch.rand(6, 1, 1, generator=g)
    cols = metrics.localisation(maps, masks, 0.1, 0.15)
    values, inside = maps.flatten(1).numpy(), masks.flatten(1).numpy()
    ranks = sps.rankdata(values, axis=1)
    n_pos = inside.sum(axis=1).astype(np.float64)
    expected = ((ranks * inside).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * (inside.shape[1] - n_pos))
    assert np.array_equal(cols["pixel_auroc"].numpy(), expected)
    for i in range(len(maps)):  # rank accuracy: expected hits among the K largest, ties shared
        k = int(inside[i].sum())
        kth = np.sort(values[i])[::-1][k - 1]
        above, at = values[i] > kth, values[i] == kth
        hits = (above & inside[i]).sum() + (k - above.sum()) * (at & inside[i]).sum() / at.sum()
        assert cols["rank_accuracy"][i].item() == hits / k
