"""Confidence intervals: bootstrap over windows and delete-one-bucket jackknife.

Two kinds of statistic need two methods. Per-window scalar sums (norms, layer cosines, norm
ratios, the growth fit) are resampled window by window (percentile bootstrap, seeded).
Statistics of the d x d moments (carrier, anisotropy, spectra, quantiles) are kept per bucket
of windows (B contiguous blocks of the run's windows); their interval is the grouped jackknife over buckets with a
Student-t quantile on B - 1 degrees of freedom. Both are stated in every report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from spectral.stats import SiteStats


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (NaN bounds when none can be formed)."""

    value: float
    ci_low: float
    ci_high: float


def bootstrap_weights(n_windows: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_windows) multiplicities of a resample-with-replacement of the windows."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_windows, size=(n_boot, n_windows))
    w = np.zeros((n_boot, n_windows))
    np.add.at(w, (np.repeat(np.arange(n_boot), n_windows), idx.ravel()), 1.0)
    return w


def percentile_ci(value: float, resampled: np.ndarray, level: float) -> Estimate:
    r = resampled[np.isfinite(resampled)]
    if r.size < 2:
        return Estimate(value, float("nan"), float("nan"))
    a = (1 - level) / 2
    return Estimate(value, float(np.quantile(r, a)), float(np.quantile(r, 1 - a)))


def ratio_bootstrap(num: np.ndarray, den: np.ndarray, weights: np.ndarray, level: float) -> Estimate:
    """Σnum/Σden over windows, with a bootstrap CI from the given resample weights."""
    value = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        res = (weights @ num) / (weights @ den)
    return percentile_ci(value, res, level)


def jackknife_interval(value: float, loo: np.ndarray, level: float) -> Estimate:
    """Student-t interval around ``value`` from k delete-one replicates ``loo`` (NaN bounds if k < 2)."""
    k = loo.size
    if k < 2:
        return Estimate(value, float("nan"), float("nan"))
    se = float(np.sqrt((k - 1) / k * np.sum((loo - loo.mean()) ** 2)))
    t = float(sps.t.ppf(0.5 + level / 2, k - 1))
    return Estimate(value, value - t * se, value + t * se)


def delete_one(
    stat: Callable[[int | None], float | np.ndarray], buckets: Sequence[int], level: float
) -> list[Estimate]:
    """The one grouped jackknife of the suite: ``stat(None)`` on every bucket, ``stat(b)`` without bucket ``b``
    for each non-empty bucket; one Student-t interval per entry of the statistic (a scalar gives one). No
    interval (NaN bounds) with fewer than two buckets or for a non-finite value. Every moment statistic, the
    sequence spectra, the band energies, the heads' effective rank and the layer-cosine matrix go through it."""
    value = np.atleast_1d(np.asarray(stat(None), dtype=float)).ravel()
    if len(buckets) < 2 or not np.isfinite(value).any():
        return [Estimate(float(v), float("nan"), float("nan")) for v in value]
    loo = np.stack([np.atleast_1d(np.asarray(stat(b), dtype=float)).ravel() for b in buckets])
    return [
        jackknife_interval(float(v), loo[:, i], level) if np.isfinite(v) else Estimate(float(v), np.nan, np.nan)
        for i, v in enumerate(value)
    ]


def bucket_jackknife(
    sums: Sequence[np.ndarray], fn: Callable[..., float | np.ndarray], level: float, buckets: Sequence[int]
) -> list[Estimate]:
    """:func:`delete_one` for a statistic of bucket sums: ``fn`` takes each array of ``sums`` summed over its
    leading (bucket) axis; the delete-one values take the same sums less one bucket's row."""
    total = [np.asarray(a).sum(0) for a in sums]
    return delete_one(lambda b: fn(*(total if b is None else [t - a[b] for t, a in zip(total, sums, strict=True)])),
                      buckets, level)  # fmt: skip


def jackknife(site_stats: list[SiteStats], fn: Callable[..., float], level: float) -> Estimate:
    """fn(*moments) on all buckets, CI by deleting one bucket at a time (buckets aligned)."""
    return jackknife_many(site_stats, fn, level)[0]


def jackknife_many(site_stats: list[SiteStats], fn: Callable[..., np.ndarray | float], level: float) -> list[Estimate]:
    """:func:`jackknife` for a statistic that returns a vector (one interval per entry)."""
    return delete_one(
        lambda b: fn(*(s.total() if b is None else s.leave_one_out(b) for s in site_stats)),
        site_stats[0].nonempty_buckets(),
        level,
    )
