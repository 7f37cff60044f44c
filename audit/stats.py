"""Statistics on per-image tables: confidence intervals and group-versus-rest tests.

Every random procedure takes an explicit seed, so the same inputs give the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from scipy import stats

# Resamples (and jackknife replicates) evaluated per vectorised call. Without a batch, scipy's BCa
# jackknife holds an n x n array: 1.9 GB peak for 10,000 images, out of memory at 50,000. Same numbers.
BATCH = 100
# Permutations are drawn in blocks of at most this many cells (8 MB of float64), not as one
# n_perm x n array (4 GB for 50,000 images of one class); the draws do not depend on the block size
# (tested), and small blocks stay in cache: 20 M-cell blocks took 1.2 s, 1 M-cell blocks 0.5 s for
# 4,000 permutations of 10,000 images, and memory no longer grows with the audit set.
PERMUTATION_CELLS = 1_000_000

T = TypeVar("T")
R = TypeVar("R")


def _bca(
    samples: tuple[np.ndarray, ...], statistic: Callable, n_boot: int, seed: int, level: float
) -> tuple[float, float]:
    """BCa interval from ``scipy.stats.bootstrap``, each sample resampled on its own, in batches."""
    res = stats.bootstrap(
        samples,
        statistic,
        n_resamples=n_boot,
        confidence_level=level,
        method="BCa",
        rng=np.random.default_rng(seed),
        batch=BATCH,
    )
    lo, hi = res.confidence_interval
    return (float(lo), float(hi))


def bootstrap_ci(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap CI of the mean (BCa, ``scipy.stats.bootstrap``); NaN-free input; degenerate -> point."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (np.nan, np.nan)
    if v.size < 2 or np.ptp(v) == 0:
        return (float(v.mean()), float(v.mean()))
    return _bca((v,), np.mean, n_boot, seed, level)


def difference_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a BCa bootstrap CI that resamples each group on its own (stratified by
    group, as the groups were sampled); NaN-free input."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        return (np.nan, np.nan, np.nan)
    diff = float(a.mean() - b.mean())
    if np.ptp(np.r_[a, b]) == 0:
        return (diff, diff, diff)
    lo, hi = _bca((a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), n_boot, seed, level)
    return (diff, lo, hi)


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a share k/n."""
    if n == 0:
        return (np.nan, np.nan)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def within_stratum_ranks(values: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """Mid-rank of each value inside its stratum, scaled to (0, 1): 0.5 is the stratum's median."""
    r = np.empty(len(values), dtype=float)
    for s in np.unique(strata):
        idx = strata == s
        r[idx] = (stats.rankdata(values[idx]) - 0.5) / idx.sum()
    return r


def stratified_permutation_test(
    values: np.ndarray, strata: np.ndarray, in_group: np.ndarray, n_perm: int, seed: int
) -> tuple[float, float]:
    """One-sided test that the group's values are *lower* than the rest's, within strata.

    Why stratified: focus depends strongly on which class is explained (a model's "melanoma" map sits
    on the lesion, its "nevus" map is diffuse), so a group whose class mix differs would be flagged for
    its mix, or hide a real problem behind it. Values are ranked within their stratum; the statistic is
    the group's mean within-stratum rank (0.5 = typical); group membership is permuted within each
    stratum. Returns (statistic, p-value) with p = (1 + #{perm <= observed}) / (1 + n_perm).
    """
    values, strata, in_group = np.asarray(values, float), np.asarray(strata), np.asarray(in_group, bool)
    r = within_stratum_ranks(values, strata)
    k = int(in_group.sum())
    if k == 0 or k == len(values):
        return (np.nan, np.nan)
    observed = r[in_group].mean()
    rng = np.random.default_rng(seed)
    perm_sum = np.zeros(n_perm)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        k_s = int(in_group[idx].sum())
        if k_s == 0:
            continue
        rows = max(1, PERMUTATION_CELLS // idx.size)  # bounded memory; the same draws in the same order
        for start in range(0, n_perm, rows):
            stop = min(start + rows, n_perm)
            draws = rng.permuted(np.tile(r[idx], (stop - start, 1)), axis=1)[:, :k_s]
            perm_sum[start:stop] += draws.sum(axis=1)
    perm = perm_sum / k
    p = (1 + np.count_nonzero(perm <= observed + 1e-12)) / (1 + n_perm)
    return (float(observed), float(p))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (controls the family-wise error rate); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def adjust(pvalues: np.ndarray, method: str) -> np.ndarray:
    """Multiple-comparison adjustment: ``holm`` or ``bh`` (scipy's ``false_discovery_control``)."""
    if method == "holm":
        return holm(pvalues)
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting half."""
    y = np.asarray(y, bool)
    pos, neg = np.asarray(score)[y], np.asarray(score)[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (pos.size * neg.size))


def ovr_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Macro one-vs-rest AUROC for several classes: the mean over classes c of
    auroc(label == c, scores[:, c]), over the classes that have both positives and negatives here."""
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    per_class = [auroc(labels == c, scores[:, c]) for c in range(scores.shape[1])]
    defined = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


def _percentiles(draws: np.ndarray, level: float) -> tuple[float, float]:
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return (np.nan, np.nan)
    lo, hi = np.percentile(draws, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return (float(lo), float(hi))


def _resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap's index draws, ``BATCH`` resamples (rows) at a time; the same stream as drawing
    one resample after another (``rng.integers(0, n, n)`` per resample)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, BATCH):
        yield np.stack([rng.integers(0, n, n) for _ in range(min(BATCH, n_boot - start))])


def auroc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """:func:`auroc` of each row of (B, n) labels and scores at once (NaN where a row has one class).
    Average ranks are multiples of 1/2, so their sums are exact in float64 and the values equal
    :func:`auroc`'s (Mann-Whitney U / (n1 n0)) bit for bit."""
    y = np.asarray(y, bool)
    ranks = stats.rankdata(score, axis=1)
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    u = np.where(y, ranks, 0.0).sum(axis=1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


def auroc_ci(y: np.ndarray, score: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC, resampling images (pairs of label and score); the resamples
    are evaluated a batch at a time (:func:`auroc_rows`), with the numbers of one at a time."""
    y, score = np.asarray(y, bool), np.asarray(score, float)
    if y.all() or not y.any() or y.size < 4:
        return (np.nan, np.nan)
    draws = np.concatenate([auroc_rows(y[idx], score[idx]) for idx in _resamples(y.size, n_boot, seed)])
    return _percentiles(draws, level)


def ovr_auroc_ci(
    labels: np.ndarray, scores: np.ndarray, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of :func:`ovr_auroc`, a batch of resamples at a time."""
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    if labels.size < 4:
        return (np.nan, np.nan)
    draws = []
    for idx in _resamples(labels.size, n_boot, seed):
        per_class = np.stack([auroc_rows(labels[idx] == c, scores[idx, c]) for c in range(scores.shape[1])], axis=1)
        defined = ~np.isnan(per_class)
        counts = defined.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            # the mean of the defined classes, summed in class order as np.mean of the list does
            total = np.zeros(len(idx))
            for c in range(per_class.shape[1]):
                total = total + np.where(defined[:, c], per_class[:, c], 0.0)
            draws.append(np.where(counts > 0, total / counts, np.nan))
    return _percentiles(np.concatenate(draws), level)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it, else every core)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def side_by_side(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool, in order. For statistics that each draw from their
    own seed (``seed_for``), so running them side by side changes no number; numpy's resampling and
    permutations release the GIL, so the threads use every core this process may use. The first
    error cancels what has not started."""
    workers = min(len(items), usable_cpus())
    if workers <= 1:
        return [fn(x) for x in items]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
