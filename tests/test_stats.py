"""Statistical machinery against known answers and seeded simulations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from audit.stats import bootstrap_ci, holm, proportion_ci, stratified_permutation_test, within_stratum_ranks


def test_holm_by_hand() -> None:
    # sorted: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> monotone 0.06
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm(np.array([0.5, np.nan, 0.01])), [0.5, np.nan, 0.02])


def test_within_stratum_ranks() -> None:
    r = within_stratum_ranks(np.array([3.0, 1.0, 2.0, 10.0, 20.0]), np.array([0, 0, 0, 1, 1]))
    np.testing.assert_allclose(r, [5 / 6, 1 / 6, 3 / 6, 1 / 4, 3 / 4])


def test_planted_difference_is_found() -> None:
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(1.0, 1, 40), rng.normal(2.0, 1, 160)]
    in_group = np.r_[np.ones(40, bool), np.zeros(160, bool)]
    stat, p = stratified_permutation_test(values, np.zeros(200), in_group, 2000, seed=1)
    assert stat < 0.5 and p < 0.001


def test_false_positive_rate_under_the_null_is_about_alpha() -> None:
    rejections = 0
    sims = 300
    for s in range(sims):
        rng = np.random.default_rng(100 + s)
        values = rng.normal(size=60)
        strata = rng.integers(0, 2, 60)
        in_group = rng.random(60) < 0.3
        _, p = stratified_permutation_test(values, strata, in_group, 500, seed=s)
        rejections += p < 0.05
    rate = rejections / sims
    assert 0.02 <= rate <= 0.09, rate  # binomial 95% range around 0.05 for 300 draws is ~0.027-0.077


def test_stratification_removes_a_class_mix_confound() -> None:
    # Focus depends on the explained class only; the group has more of the low-focus class.
    rng = np.random.default_rng(3)
    strata = np.r_[np.zeros(100, int), np.ones(100, int)]
    values = np.where(strata == 0, 1.0, 4.0) + rng.normal(0, 0.3, 200)
    in_group = np.r_[rng.random(100) < 0.7, rng.random(100) < 0.1]
    _, p_naive = sps.mannwhitneyu(values[in_group], values[~in_group], alternative="less")
    _, p_strat = stratified_permutation_test(values, strata, in_group, 2000, seed=0)
    assert p_naive < 1e-6  # a raw comparison "finds" a problem that is only the class mix
    assert p_strat > 0.05


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible() -> None:
    v = np.random.default_rng(0).normal(5, 1, 80)
    lo, hi = bootstrap_ci(v, 1000, seed=7)
    assert lo < v.mean() < hi and hi - lo < 1.0
    assert bootstrap_ci(v, 1000, seed=7) == (lo, hi)
    assert bootstrap_ci(np.full(5, 2.0), 1000, seed=0) == (2.0, 2.0)


def test_wilson_interval() -> None:
    lo, hi = proportion_ci(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.35  # Wilson upper bound for 0/10 is 0.278


def test_bh_equals_scipy_and_keeps_nan() -> None:
    from audit.stats import adjust

    p = np.array([0.01, 0.2, np.nan, 0.03, 0.04])
    out = adjust(p, "bh")
    np.testing.assert_allclose(out[[0, 1, 3, 4]], sps.false_discovery_control(p[[0, 1, 3, 4]], method="bh"))
    assert np.isnan(out[2])
    np.testing.assert_allclose(adjust(p, "holm"), holm(p))


def test_auroc_by_hand_and_its_ci() -> None:
    from audit.stats import auroc, auroc_ci

    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs won 0.9>0.5, 0.9>0.1, 0.4>0.1 -> 3/4
    assert auroc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == 0.75
    assert auroc(np.array([1, 0]), np.array([0.3, 0.3])) == 0.5  # a tie counts half
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    score = y + rng.normal(0, 1, 200)
    lo, hi = auroc_ci(y, score, 500, seed=1)
    assert lo < auroc(y, score) < hi


def test_planted_difference_is_found_at_the_expected_power() -> None:
    """A group shifted down by d = 0.5 SD (30 vs 90 images, two strata): over 300 seeded simulations the
    test rejects at alpha = 0.05 as often as the rank test's theoretical power predicts: the normal
    approximation Phi(d * sqrt(n1 n2 / (n1 + n2) * 3/pi) - z_0.95), with 3/pi the Wilcoxon test's
    efficiency relative to the t-test under normal data."""
    n1, n2, d, sims = 30, 90, 0.5, 300
    expected = sps.norm.cdf(d * np.sqrt(n1 * n2 / (n1 + n2) * 3 / np.pi) - sps.norm.ppf(0.95))
    rejections = 0
    for s in range(sims):
        rng = np.random.default_rng(1000 + s)
        in_group = np.r_[np.ones(n1, bool), np.zeros(n2, bool)]
        strata = rng.integers(0, 2, n1 + n2)
        values = rng.normal(size=n1 + n2) + 3.0 * strata - d * in_group  # strata differ; the shift is within
        _, p = stratified_permutation_test(values, strata, in_group, 500, seed=s)
        rejections += p < 0.05
    power = rejections / sims
    assert abs(power - expected) < 0.08, (power, expected)  # 3 binomial SEs at 300 simulations


def test_macro_one_vs_rest_auroc_by_hand() -> None:
    from audit.stats import auroc, ovr_auroc, ovr_auroc_ci

    labels = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array(
        [[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]]
    )
    # class 0: positives 0.8, 0.4 vs 0.3, 0.2, 0.1, 0.5 -> 4 + 3 = 7 of 8; class 1: 0.6, 0.3 vs 0.1, 0.5, 0.2, 0.1
    # -> 4 + 3 = 7 of 8; class 2: 0.7, 0.4 vs 0.1, 0.1, 0.1, 0.5 -> 4 + 3 = 7 of 8
    assert ovr_auroc(labels, scores) == 7 / 8
    assert auroc(labels == 0, scores[:, 0]) == 7 / 8
    lo, hi = ovr_auroc_ci(labels, scores, 500, seed=0)
    assert lo <= 7 / 8 <= hi
    rng = np.random.default_rng(0)  # the same CI one resample at a time, by the definition
    draws = [ovr_auroc(labels[i], scores[i]) for i in (rng.integers(0, 6, 6) for _ in range(500))]
    assert (lo, hi) == tuple(np.percentile([d for d in draws if not np.isnan(d)], [2.5, 97.5]))
    assert np.isnan(ovr_auroc(np.zeros(3, int), scores[:3, :1]))  # one class only: undefined


def test_difference_ci_brackets_a_planted_difference() -> None:
    from audit.stats import difference_ci

    rng = np.random.default_rng(4)
    a, b = rng.normal(1.0, 1, 60), rng.normal(2.0, 1, 200)
    diff, lo, hi = difference_ci(a, b, 2000, seed=0)
    assert diff == a.mean() - b.mean() and lo < diff < hi
    assert hi < 0 and lo > -1.6  # the planted -1.0, with about +-0.3 of sampling error
    assert difference_ci(a, b, 2000, seed=0) == (diff, lo, hi)
    assert np.isnan(difference_ci(a[:1], b, 200, seed=0)[0])


def test_permutations_drawn_in_blocks_give_the_same_p_value(monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.stats as s

    rng = np.random.default_rng(0)
    values, strata, in_group = rng.normal(size=600), rng.integers(0, 3, 600), rng.random(600) < 0.2
    whole = s.stratified_permutation_test(values, strata, in_group, 1000, seed=5)
    monkeypatch.setattr(s, "PERMUTATION_CELLS", 1000)  # blocks of 4-5 permutations
    assert s.stratified_permutation_test(values, strata, in_group, 1000, seed=5) == whole


def test_auroc_rows_equals_auroc_one_row_at_a_time() -> None:
    from audit.stats import auroc, auroc_rows

    rng = np.random.default_rng(4)
    y = rng.random((50, 40)) < 0.3
    y[0] = False  # one class only: undefined
    score = np.round(rng.random((50, 40)), 1)  # many ties
    rows = auroc_rows(y, score)
    assert np.isnan(rows[0])
    assert all(rows[i] == auroc(y[i], score[i]) for i in range(1, 50))
