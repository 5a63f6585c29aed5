"""Carrier direction and energy, carrier drift, anisotropy and centred anisotropy.

All exact functions of the streaming moments: anisotropy is the mean cosine over distinct token
pairs, (‖Σû‖² − N)/(N(N−1)); the centred variant uses unit vectors of h − c with c the site
mean over the first batch of windows (a fixed centre, so that the sum can stream and merge).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg
import torch

from spectral.stats import Moments


def carrier_direction(m: Moments) -> torch.Tensor:
    """μ̂ = mean(h)/‖mean(h)‖."""
    return m.sum_h / m.sum_h.norm().clamp_min(1e-300)


def top_direction(m: Moments) -> torch.Tensor:
    """Top principal direction of the uncentred second moment (sign: along the mean)."""
    M = m.second.numpy()
    start = m.sum_h.numpy() if float(m.sum_h.norm()) > 0 else None
    _, vec = scipy.sparse.linalg.eigsh(M, k=1, which="LA", v0=start, tol=0)  # Lanczos (tol 0: machine precision)
    v = torch.from_numpy(vec[:, 0]).to(m.second.dtype)
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


def rogue_contributions(m: Moments) -> torch.Tensor:
    """CC_i: each dimension's share of the mean pairwise cosine (Timkey & van Schijndel 2021).

    Exact over all distinct token pairs: CC_i = ((Σ û_i)² − Σ û_i²) / (N(N−1)); Σ_i CC_i is the
    anisotropy.
    """
    n = m.n
    return (m.sum_u**2 - m.sum_u2) / (n * (n - 1))


def rogue_top1_share(m: Moments) -> float:
    """Share of the anisotropy carried by the single largest-contributing dimension."""
    cc = rogue_contributions(m)
    total = float(cc.sum())
    return float(cc.max()) / total if total > 0 else float("nan")


def anisotropy_without_rogue(m: Moments, k: int) -> float:
    """Σ CC_i over all but the top-k contributing dimensions (not renormalised)."""
    cc = rogue_contributions(m)
    return float(cc.sort(descending=True).values[k:].sum())


def carrier_energy_robust(m: Moments, *, zscore: bool, drop_dims: int, drop_sinks: bool) -> float:
    """ρ after removing sink tokens, the top rogue dimensions, and/or scaling each dimension to
    unit standard deviation (scale only: centring would delete the carrier by construction).

    Exact from the moments: every step is linear in h or a subtraction of the sinks' moments.
    """
    second, sum_h, n = m.second, m.sum_h, m.n
    if drop_sinks:
        second, sum_h, n = second - m.sink_second, sum_h - m.sink_sum_h, n - m.sink_count
    keep = torch.ones(second.shape[0], dtype=torch.bool)
    if drop_dims > 0:
        keep[rogue_contributions(m).argsort(descending=True)[:drop_dims]] = False
    second, sum_h = second[keep][:, keep], sum_h[keep]
    if zscore:
        mu = sum_h / n
        std = (torch.diagonal(second) / n - mu**2).clamp_min(1e-300).sqrt()
        second = second / torch.outer(std, std)
        sum_h = sum_h / std
    direction = sum_h / sum_h.norm().clamp_min(1e-300)
    tr = float(torch.trace(second))
    return float(direction @ second @ direction) / tr if tr > 0 else float("nan")


def top_pc_energy(m: Moments) -> float:
    """Energy share along the top principal direction of the uncentred second moment."""
    return energy_ratio(m, top_direction(m))


def carrier_pc_alignment(m: Moments) -> float:
    """|cos| between the mean direction μ̂ and the top uncentred principal direction."""
    return abs(float(carrier_direction(m) @ top_direction(m)))


def top_pc_summary(m: Moments) -> np.ndarray:
    """[top_pc_energy, carrier_pc_alignment] from one (partial) eigendecomposition."""
    v = top_direction(m)
    return np.array([energy_ratio(m, v), abs(float(carrier_direction(m) @ v))])


def decompose(h: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split tokens h (..., d) into the carrier coefficient ⟨h, μ̂⟩ (...,) and the modulation
    h − ⟨h, μ̂⟩μ̂ (..., d) for a carrier direction μ̂ (normalised here)."""
    u = (direction / direction.norm()).to(h.dtype)
    coeff = h @ u
    return coeff, h - coeff[..., None] * u
