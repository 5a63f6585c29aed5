"""PCA spectrum, effective rank, participation ratio and the sequence-axis power spectrum."""

from __future__ import annotations

import math

import numpy as np
import torch

from spectral.stats import Moments


def covariance(m: Moments) -> torch.Tensor:
    """Centred covariance Σ/N − μμᵀ (population normalisation)."""
    mu = m.sum_h / m.n
    return m.second / m.n - torch.outer(mu, mu)


def pca_spectrum(m: Moments) -> np.ndarray:
    """Eigenvalues of the centred covariance, descending, negatives (round-off) clipped to 0."""
    ev = torch.linalg.eigvalsh(covariance(m)).flip(0).clamp_min(0.0)
    return ev.numpy()


def eff_rank(m: Moments) -> float:
    """exp of the Shannon entropy of the normalised eigenvalues (Roy & Vetterli)."""
    ev = pca_spectrum(m)
    p = ev / ev.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def participation_ratio(m: Moments) -> float:
    """(Σλ)² / Σλ²."""
    ev = pca_spectrum(m)
    return float(ev.sum() ** 2 / (ev**2).sum())


def power_spectrum(m: Moments) -> np.ndarray:
    """P(f) summed over windows and dimensions (rfft bins 0..F-1, in cycles per window)."""
    return m.spectrum.numpy()


def dc_fraction(m: Moments) -> float:
    p = power_spectrum(m)
    return float(p[0] / p.sum()) if p.sum() > 0 else float("nan")


def lowfreq_fraction(m: Moments, share: float = 0.1) -> float:
    """Share of power in the lowest ``ceil(share·F)`` bins, DC included."""
    p = power_spectrum(m)
    k = max(1, math.ceil(share * p.size))
    return float(p[:k].sum() / p.sum()) if p.sum() > 0 else float("nan")
