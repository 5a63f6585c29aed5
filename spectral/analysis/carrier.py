"""Carrier direction and energy, carrier drift, anisotropy and centred anisotropy.

All exact functions of the streaming moments: anisotropy is the mean cosine over distinct token
pairs, (‖Σû‖² − N)/(N(N−1)); the centred variant uses unit vectors of h − c with c the site
mean over the first batch of windows (a fixed centre, so that the sum can stream and merge).
"""

from __future__ import annotations

import torch

from spectral.stats import Moments


def carrier_direction(m: Moments) -> torch.Tensor:
    """μ̂ = mean(h)/‖mean(h)‖."""
    return m.sum_h / m.sum_h.norm().clamp_min(1e-300)


def top_direction(m: Moments) -> torch.Tensor:
    """Top principal direction of the uncentred second moment (sign: along the mean)."""
    _, vecs = torch.linalg.eigh(m.second)
    v = vecs[:, -1]
    return v if float(v @ m.sum_h) >= 0 else -v


def energy_ratio(m: Moments, direction: torch.Tensor) -> float:
    """Σ⟨h, v⟩² / Σ‖h‖² for a unit vector v."""
    tr = float(torch.trace(m.second))
    return float(direction @ m.second @ direction) / tr if tr > 0 else float("nan")


def carrier_energy(m: Moments) -> float:
    """ρ = Σ⟨h, μ̂⟩² / Σ‖h‖²."""
    return energy_ratio(m, carrier_direction(m))


def carrier_drift(prev: Moments, cur: Moments) -> float:
    """cos(μ̂_prev, μ̂_cur)."""
    return float(carrier_direction(prev) @ carrier_direction(cur))


def anisotropy(m: Moments) -> float:
    n = m.n
    return (float(m.sum_u @ m.sum_u) - n) / (n * (n - 1)) if n > 1 else float("nan")


def centered_anisotropy(m: Moments) -> float:
    n = m.n
    return (float(m.sum_cu @ m.sum_cu) - n) / (n * (n - 1)) if n > 1 else float("nan")
