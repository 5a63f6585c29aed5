"""Norm profile, growth rate, layer cosine and norm ratio (ARCHITECTURE.md, section 1)."""

from __future__ import annotations

import numpy as np

from spectral.analysis.intervals import Estimate, percentile_ci, ratio_bootstrap
from spectral.stats import HIST_BINS, WINDOW_COLUMNS, Moments, hist_value

COL = {name: i for i, name in enumerate(WINDOW_COLUMNS)}


def norm_mean(m: Moments) -> float:
    return m.sum_norm / m.n if m.n else float("nan")


def norm_quantile(m: Moments, q: float) -> float:
    """Quantile of ‖h‖ from the log-spaced histogram (≤0.5 % relative error); 0 in the bottom bin
    (norms below the histogram's range, exact zeros of a pruned sub-layer among them)."""
    hist = m.norm_hist.numpy()
    total = hist.sum()
    if total == 0:
        return float("nan")
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, q * total, side="left"))
    return 0.0 if b == 0 else float(hist_value(np.array(min(b, HIST_BINS - 1))))


def window_mean(rows: np.ndarray, num: str, den: str, weights: np.ndarray, level: float) -> Estimate:
    """Σ rows[num] / Σ rows[den] over windows with a bootstrap CI."""
    return ratio_bootstrap(rows[:, COL[num]], rows[:, COL[den]], weights, level)


def growth_rate(layers: list[int], tables: list[np.ndarray], weights: np.ndarray, level: float) -> Estimate:
    """g from the fit log(mean ‖h_l‖) = a + l·log g over ``layers``, bootstrap CI over windows.

    ``tables[i]`` is the per-window table (windows aligned) of resid_post.layers[i].
    """
    if len(layers) < 2:
        return Estimate(float("nan"), float("nan"), float("nan"))
    x = np.asarray(layers, dtype=float)
    counts = np.stack([t[:, COL["count"]] for t in tables], axis=1)  # (W, k)
    sums = np.stack([t[:, COL["sum_norm"]] for t in tables], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = np.log(sums.sum(0) / counts.sum(0))
    if not np.isfinite(point).all():  # a layer with zero norm (or no tokens): no log-linear fit
        return Estimate(float("nan"), float("nan"), float("nan"))
    slope = float(np.polyfit(x, point, 1)[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.log((weights @ sums) / (weights @ counts))  # (n_boot, k)
    xc = x - x.mean()
    slopes = (logs - logs.mean(1, keepdims=True)) @ xc / (xc @ xc)
    return percentile_ci(float(np.exp(slope)), np.exp(slopes), level)


def _log_slope(x: np.ndarray, logs: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``logs`` (…, k) over ``x`` (k,)."""
    xc = x - x.mean()
    return (logs - logs.mean(-1, keepdims=True)) @ xc / (xc @ xc)


def amplitude_growth(
    layers: list[int], sums: np.ndarray, counts: np.ndarray, weights: np.ndarray, power: float = 1.0
) -> tuple[float, np.ndarray]:
    """(g, bootstrap draws of g) of the fit log((Σ sums / Σ counts)^power) = a + l·log g over ``layers``.

    ``sums`` / ``counts``: (windows, layers); power 1 for a mean norm, 1/2 for an RMS amplitude from
    summed squares. NaN when a layer has no amplitude."""
    x = np.asarray(layers, dtype=float)
    nan = (float("nan"), np.full(weights.shape[0], np.nan))
    if len(layers) < 2:
        return nan
    with np.errstate(invalid="ignore", divide="ignore"):
        point = power * np.log(sums.sum(0) / counts.sum(0))
        if not np.isfinite(point).all():
            return nan
        logs = power * np.log((weights @ sums) / (weights @ counts))
    return float(np.exp(_log_slope(x, point))), np.exp(_log_slope(x, logs))


def growth_steadiness(layers: list[int], tables: list[np.ndarray]) -> tuple[float, float]:
    """(R² of the log-linear norm fit, largest single-layer share of the positive log growth) over
    ``layers``: steady growth has R² near 1 and no layer holding most of it (one jump is not growth)."""
    if len(layers) < 3:
        return float("nan"), float("nan")
    x = np.asarray(layers, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.log(np.array([t[:, COL["sum_norm"]].sum() / t[:, COL["count"]].sum() for t in tables]))
    if not np.isfinite(y).all():
        return float("nan"), float("nan")
    fit = np.polyval(np.polyfit(x, y, 1), x)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - fit) ** 2).sum()) / ss if ss > 0 else float("nan")
    steps = np.clip(np.diff(y), 0, None)
    share = float(steps.max() / steps.sum()) if steps.sum() > 0 else float("nan")
    return r2, share
