"""Summaries of an eigenvalue spectrum (numpy only): the one effective-rank function of the suite, used for
the residual stream's covariance (:mod:`spectral.analysis.spectrum`) and the heads' output spectra
(:mod:`spectral.analysis.heads`), and the participation ratio."""

from __future__ import annotations

import math

import numpy as np


def effective_rank(ev: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised eigenvalues (Roy & Vetterli 2007); negatives (round-off)
    are clipped to 0; NaN for a zero, non-finite or empty spectrum."""
    lam = np.clip(np.asarray(ev, dtype=np.float64).ravel(), 0.0, None)
    total = float(lam.sum())
    if not math.isfinite(total) or total <= 0.0:
        return float("nan")
    p = lam / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def participation_ratio(ev: np.ndarray) -> float:
    """(Σλ)² / Σλ² (negatives clipped to 0); NaN for a zero, non-finite or empty spectrum."""
    lam = np.clip(np.asarray(ev, dtype=np.float64).ravel(), 0.0, None)
    total = float(lam.sum())
    if not math.isfinite(total) or total <= 0.0:
        return float("nan")
    return float(total**2 / (lam**2).sum())
