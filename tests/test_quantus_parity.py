"""Our localisation metrics against Quantus 0.6 on Quantus's own localisation test geometries.

Where Quantus is right the numbers are equal; where it has a quirk the difference is pinned here, so a
reviewer comparing the two tools knows which one to believe and why. Energy pointing and bbox IoU have
no Quantus counterpart; tests/test_metrics.py checks them on hand-made maps.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from audit import metrics

quantus = pytest.importorskip("quantus", reason="quantus is a test-only dependency (pip install -e '.[dev]')")

SIZE = 224


def _case(mask: tuple[slice, slice], hot: tuple[slice, slice], background: str, seed: int) -> dict:
    """Quantus's localisation fixtures (tests/metrics/test_localisation_metrics.py), 2-D, batch of 4:
    mask = 1 on one square, map = 1 on another, the rest of the map uniform noise or exactly zero."""
    rng = np.random.default_rng(seed)
    s = np.zeros((4, 1, SIZE, SIZE))
    s[(..., *mask)] = 1.0
    a = rng.uniform(0, 0.1, size=s.shape) if background == "noise" else np.zeros(s.shape)
    if background == "non_normalised":
        a = rng.uniform(0, 20, size=s.shape)
    a[(..., *hot)] = 25.0 if background == "non_normalised" else 1.0
    return {"x_batch": rng.normal(size=(4, 3, SIZE, SIZE)), "y_batch": np.zeros(4, int), "a_batch": a, "s_batch": s}


SQ = slice
# name: (mask square, hot square), as in Quantus's fixtures
CASES = {
    "all_in_gt": ((SQ(50, 150), SQ(50, 150)), (SQ(50, 150), SQ(50, 150))),
    "none_in_gt": ((SQ(0, 100), SQ(0, 100)), (SQ(100, 200), SQ(100, 200))),
    "half_in_gt": ((SQ(50, 100), SQ(50, 100)), (SQ(0, 100), SQ(75, 100))),
    "seg_bigger": ((SQ(0, 150), SQ(0, 150)), (SQ(50, 150), SQ(50, 150))),
}
GEOMETRIES = {
    f"{name}_{bg}": (mask, hot, bg)
    for name, (mask, hot) in CASES.items()
    for bg in ("noise", "zeros", "non_normalised")
}


def _quantus(metric_cls: type, data: dict, **kwargs: object) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = metric_cls(normalise=False, disable_warnings=True, display_progressbar=False, **kwargs)
        return np.asarray(metric(model=None, **data), dtype=float)


def _ours(fn: object, data: dict, *args: object) -> np.ndarray:
    return fn(data["a_batch"][:, 0], data["s_batch"][:, 0].astype(bool), *args).numpy()  # type: ignore[operator]


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_equal_to_quantus_where_quantus_is_right(geometry: str) -> None:
    mask, hot, bg = GEOMETRIES[geometry]
    data = _case(mask, hot, bg, seed=len(geometry))
    # mass-based: no ties can matter
    np.testing.assert_allclose(_ours(metrics.mass_in, data), _quantus(quantus.RelevanceMassAccuracy, data), rtol=1e-12)
    np.testing.assert_allclose(
        _ours(metrics.mass_in, data), _quantus(quantus.AttributionLocalisation, data, abs=False), rtol=1e-6
    )  # Quantus adds 1e-9 to the denominator
    np.testing.assert_array_equal(_ours(metrics.pointing_hit, data), _quantus(quantus.PointingGame, data))
    np.testing.assert_allclose(_ours(metrics.pixel_auroc, data), _quantus(quantus.AUC, data), rtol=1e-12)
    if bg != "zeros":  # a noise background has no ties below the hot square, so a cut at or below the
        # square's size is where the sort order Quantus relies on is the ranking
        np.testing.assert_allclose(
            _ours(metrics.rank_accuracy, data), _quantus(quantus.RelevanceRankAccuracy, data), rtol=1e-12
        )
        hot_size = (hot[0].stop - hot[0].start) * (hot[1].stop - hot[1].start)
        for k in (hot_size, hot_size + 500, 20000):
            np.testing.assert_allclose(
                _ours(metrics.top_k_intersection, data, k), _quantus(quantus.TopKIntersection, data, k=k), rtol=1e-12
            )


def test_known_values_on_the_quantus_geometries() -> None:
    """The fixtures' intended answers hold for ours exactly (Quantus's own tests round to 2 decimals)."""
    half = _case(*GEOMETRIES["half_in_gt_zeros"], seed=0)
    assert np.all(_ours(metrics.mass_in, half) == 0.5)
    assert np.all(_ours(metrics.rank_accuracy, half) == 0.5)
    assert np.all(_ours(metrics.top_k_intersection, half, 2500) == 0.5)
    none = _case(*GEOMETRIES["none_in_gt_noise"], seed=0)
    assert np.all(_ours(metrics.pointing_hit, none) == 0.0)
    assert np.all(_ours(metrics.rank_accuracy, none) == 0.0)


def test_quirk_rank_metrics_with_ties_depend_on_sort_order_in_quantus() -> None:
    """Quantus ranks by ``np.argsort(-a)``: among tied pixels the memory order decides, so moving the
    mask inside a tied region changes its score. Ours is the expectation over a random tie-break."""
    a = np.zeros((1, 1, 4, 4))
    a[0, 0, 3, 3] = 1.0  # the one hot pixel is outside both masks; the 15 others tie at 0
    x = np.zeros((1, 3, 4, 4))
    scores = {}
    for where, row in (("first row", 0), ("third row", 2)):
        s = np.zeros((1, 1, 4, 4))
        s[0, 0, row, 0:2] = 1.0  # two pixels: K = 2 = the hot pixel + one of the 15 tied zeros
        data = {"x_batch": x, "y_batch": np.zeros(1, int), "a_batch": a, "s_batch": s}
        scores[where] = (_quantus(quantus.RelevanceRankAccuracy, data)[0], _ours(metrics.rank_accuracy, data)[0])
    assert scores["first row"][0] == 0.5 and scores["third row"][0] == 0.0  # Quantus: position decides
    assert scores["first row"][1] == scores["third row"][1] == pytest.approx((1 * 2 / 15) / 2, abs=1e-15)


def test_quirk_empty_mask_is_a_pointing_game_hit_in_quantus() -> None:
    """Quantus 0.6 writes NaN into a boolean array, which stores True: an image with nothing annotated
    scores a hit. Ours is NaN (nothing to point at), like Quantus's own mass and rank metrics."""
    data = _case(*GEOMETRIES["all_in_gt_noise"], seed=1)
    data["s_batch"][1] = 0.0
    q = _quantus(quantus.PointingGame, data)
    ours = _ours(metrics.pointing_hit, data)
    assert q[1] == 1.0 and np.isnan(ours[1])
    assert np.isnan(_quantus(quantus.RelevanceMassAccuracy, data)[1]) and np.isnan(_ours(metrics.mass_in, data)[1])


def test_quirk_all_zero_map_scores_in_quantus() -> None:
    """An all-zero map carries no attention, yet Quantus's pointing game calls it a hit (every pixel is
    a maximum) and its AUC 0.5. Ours is NaN for every metric, so zero maps cannot pass as evidence."""
    data = _case(*GEOMETRIES["all_in_gt_zeros"], seed=2)
    data["a_batch"][0] = 0.0
    assert _quantus(quantus.PointingGame, data)[0] == 1.0
    assert _quantus(quantus.AUC, data)[0] == 0.5
    for fn in (metrics.pointing_hit, metrics.pixel_auroc, metrics.mass_in, metrics.rank_accuracy):
        assert np.isnan(_ours(fn, data)[0])


def test_quirk_signed_maps_give_a_mass_share_above_one_in_quantus() -> None:
    """With ``abs=False`` Quantus sums signed values: negative evidence outside the mask pushes the
    'share inside' above 1. Ours reads the positive part, so the share stays a share."""
    a = np.zeros((1, 1, 8, 8))
    a[0, 0, 1, 1], a[0, 0, 6, 6] = 2.0, -1.0
    s = np.zeros((1, 1, 8, 8))
    s[0, 0, 0:3, 0:3] = 1.0
    data = {"x_batch": np.zeros((1, 3, 8, 8)), "y_batch": np.zeros(1, int), "a_batch": a, "s_batch": s}
    assert _quantus(quantus.RelevanceMassAccuracy, data)[0] == 2.0
    assert _ours(metrics.mass_in, data)[0] == 1.0


def test_quirk_weighted_attribution_localisation_depends_on_batch_size_in_quantus() -> None:
    """Kohlbrenner's weighted localisation is μ · S_total / S_in, which is our ``focus``. Quantus 0.6
    multiplies by S_in / ``x_batch[2:].size`` instead: the inverse weight, and a 'total size' that
    slices the *batch*, so the same image scores differently in a batch of 3 or 4."""
    data = _case(*GEOMETRIES["half_in_gt_noise"], seed=3)
    first = {k: v[:3] for k, v in data.items()}
    q4 = _quantus(quantus.AttributionLocalisation, data, abs=False, weighted=True)[0]
    q3 = _quantus(quantus.AttributionLocalisation, first, abs=False, weighted=True)[0]
    assert q3 != pytest.approx(q4, rel=1e-3)
    ours = _ours(metrics.focus, data)[0]
    mu = _ours(metrics.mass_in, data)[0]
    assert ours == pytest.approx(mu * SIZE * SIZE / (50 * 50), rel=1e-12)
    assert ours != pytest.approx(q4, rel=1e-3)
