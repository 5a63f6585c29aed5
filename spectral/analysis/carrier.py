"""Carrier direction and energy, carrier drift, anisotropy and centred anisotropy.

All exact functions of the streaming moments: anisotropy is the mean cosine over distinct token
pairs, (‖Σû‖² − N)/(N(N−1)); the centred variant uses unit vectors of h − c with c the site
mean over the calibration set of windows (a fixed centre, so that the sum can stream and merge).

Degenerate moments (a pruned or zero-initialised sub-layer writes exact zeros; a bias-only write is
constant) give NaN, never an exception or a number of round-off: a direction is undefined when its
defining sum is exactly zero, a cosine is taken over the tokens that have a direction (``Σ‖û‖²`` counts
them: 1 per non-zero token), and z-scoring is undefined for a dimension that carries energy but no
variance.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse.linalg
import torch

from spectral.analysis import spectrum
from spectral.stats import Moments

ZSCORE_RTOL = 1e-10  # a dimension whose variance is below this share of its mean square has none (round-off)


def _nan_vector(like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, float("nan"))


def carrier_direction(m: Moments) -> torch.Tensor:
    """μ̂ = mean(h)/‖mean(h)‖; NaN when the mean is exactly zero (no tokens, or all of them zero)."""
    norm = float(m.sum_h.norm())
    if not norm > 0 or not math.isfinite(norm):
        return _nan_vector(m.sum_h)
    return m.sum_h / norm


def top_direction(m: Moments) -> torch.Tensor:
    """Top principal direction of the uncentred second moment (sign: along the mean); NaN when the
    second moment is zero (every token zero: there is no direction)."""
    tr = float(torch.trace(m.second))
    if not tr > 0 or not math.isfinite(tr):
        return _nan_vector(m.sum_h)
    M = m.second.numpy()
    start = m.sum_h.numpy() if float(m.sum_h.norm()) > 0 else None
    try:
        if M.shape[0] < 3:
            raise ValueError("Lanczos needs d >= 3")
        _, vec = scipy.sparse.linalg.eigsh(M, k=1, which="LA", v0=start, tol=0)  # Lanczos (tol 0: machine precision)
    except (ValueError, scipy.sparse.linalg.ArpackError, scipy.sparse.linalg.ArpackNoConvergence):
        _, vecs = np.linalg.eigh(M)  # dense fallback (rank-deficient or tiny moments): ascending eigenvalues
        vec = vecs[:, -1:]
    v = torch.from_numpy(np.ascontiguousarray(vec[:, 0])).to(m.second.dtype)
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


def unit_count(m: Moments) -> float:
    """Tokens that have a direction (non-zero h): Σ‖û‖² counts 1 per such token and 0 per zero token
    (rounded: the float32 unit vectors carry ~1e-7 of round-off each)."""
    return float(min(m.n, round(float(m.sum_u2.sum()))))


def anisotropy(m: Moments) -> float:
    """Mean cosine over distinct pairs of tokens with a direction (NaN with fewer than two)."""
    n = unit_count(m)
    return (float(m.sum_u @ m.sum_u) - n) / (n * (n - 1)) if n > 1 else float("nan")


def centered_anisotropy(m: Moments) -> float:
    """The same for h − c; NaN when no token differs from the centre beyond round-off (a zero or constant
    site: :func:`spectral.analysis.spectrum.degenerate`; or Σ of the unit vectors exactly zero: no centre)."""
    n = m.n
    if n <= 1 or not bool(m.sum_cu.any()) or spectrum.degenerate(m) is not None:
        return float("nan")
    return (float(m.sum_cu @ m.sum_cu) - n) / (n * (n - 1))


def rogue_contributions(m: Moments) -> torch.Tensor:
    """CC_i: each dimension's share of the mean pairwise cosine (Timkey & van Schijndel 2021).

    Exact over all distinct pairs of tokens with a direction: CC_i = ((Σ û_i)² − Σ û_i²) / (N(N−1));
    Σ_i CC_i is the anisotropy (NaN everywhere with fewer than two such tokens).
    """
    n = unit_count(m)
    if n <= 1:
        return _nan_vector(m.sum_u)
    return (m.sum_u**2 - m.sum_u2) / (n * (n - 1))


def rogue_top1_share(m: Moments) -> float:
    """Share of the anisotropy carried by the single largest-contributing dimension."""
    cc = rogue_contributions(m)
    total = float(cc.sum())
    return float(cc.max()) / total if total > 0 else float("nan")  # NaN > 0 is False


def anisotropy_without_rogue(m: Moments, k: int) -> float:
    """Σ CC_i over all but the top-k contributing dimensions (not renormalised)."""
    cc = rogue_contributions(m)
    return float(cc.sort(descending=True).values[k:].sum())


def _with_first(m: Moments) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(Σhhᵀ, Σh, n) over the counted tokens and the position-0 tokens they leave out."""
    if m.first_second is None or m.first_sum_h is None or m.first_count == 0:
        return m.second, m.sum_h, m.n
    return m.second + m.first_second, m.sum_h + m.first_sum_h, m.n + m.first_count


def carrier_energy_with_first(m: Moments) -> float:
    """ρ over the counted tokens and position 0 (the reference of the sink step of prediction 3)."""
    second, sum_h, n = _with_first(m)
    norm, tr = float(sum_h.norm()), float(torch.trace(second))
    if n <= 0 or not norm > 0 or not tr > 0:
        return float("nan")
    u = sum_h / norm
    return float(u @ second @ u) / tr


def carrier_energy_robust(m: Moments, *, zscore: bool, drop_dims: int, drop_sinks: bool) -> float:
    """ρ after removing sink tokens, the top rogue dimensions, and/or scaling each dimension to
    unit standard deviation (scale only: centring would delete the carrier by construction).

    Exact from the moments: every step is linear in h or a subtraction of the sinks' moments. Dropping
    sinks works on every token, position 0 included (sinks live there; the counted moments may leave it
    out): the tokens kept are those counted plus position 0 less the sinks found among them all.
    NaN when no token is left, when the mean is exactly zero (no carrier direction), or, with
    ``zscore``, when a dimension carries energy but no variance (its scale would be infinite).
    """
    second, sum_h, n = m.second, m.sum_h, m.n
    if drop_sinks:
        second, sum_h, n = _with_first(m)
        second, sum_h, n = second - m.sink_second, sum_h - m.sink_sum_h, n - m.sink_count
    if n <= 0:
        return float("nan")
    keep = torch.ones(second.shape[0], dtype=torch.bool)
    if drop_dims > 0:
        cc = rogue_contributions(m)
        if bool(torch.isnan(cc).any()):  # no pairwise cosine: no rogue dimensions to name
            return float("nan")
        keep[cc.argsort(descending=True)[:drop_dims]] = False
    scale = keep.to(second.dtype)  # the kept dimensions' weights (1/σ with z-scoring), 0 for a dropped one
    if zscore:
        mu = sum_h / n
        energy = torch.diagonal(second) / n
        var = energy - mu**2
        if bool((keep & (energy > 0) & (var <= ZSCORE_RTOL * energy)).any()):
            return float("nan")
        scale = scale / var.clamp_min(1e-300).sqrt()  # dimensions without energy stay zero
    return _quadratic_share(second, sum_h, scale)


def _quadratic_share(second: torch.Tensor, sum_h: torch.Tensor, scale: torch.Tensor) -> float:
    """ρ of the tokens D h with D = diag(``scale``) (a zero drops a dimension, 1/σ z-scores it), without forming
    D Σhhᵀ D: the direction is D Σh normalised, the energy (D u)ᵀ Σhhᵀ (D u), the trace Σ_i scale_i² Σhhᵀ_ii (one
    matrix-vector product instead of a copy of the kept block)."""
    mu = sum_h * scale
    norm = float(mu.norm())
    tr = float((torch.diagonal(second) * scale**2).sum())
    if not norm > 0 or not tr > 0:
        return float("nan")
    v = mu * scale / norm
    return float(v @ second @ v) / tr


@functools.lru_cache(maxsize=8)
def _random_keeps(d: int, k: int, draws: int, seed: int) -> torch.Tensor:
    """(draws, d) float64 masks, each 0 on ``k`` dimensions drawn at random (the seeded draws, made once)."""
    g = torch.Generator().manual_seed(seed)
    keeps = torch.ones(draws, d, dtype=torch.float64)
    for i in range(draws):
        keeps[i, torch.randperm(d, generator=g)[:k]] = 0.0
    return keeps


def carrier_energy_drop_random(m: Moments, k: int, draws: int = 10, seed: int = 0) -> float:
    """ρ after dropping ``k`` dimensions chosen at random (mean over ``draws`` seeded draws): the null of
    dropping the top-k rogue dimensions (a carrier spread over many dimensions loses about k/d of itself
    either way; one living in the rogue dimensions loses far more to them). All draws in one product."""
    d = m.second.shape[0]
    if k <= 0 or k >= d:
        return float("nan")
    keeps = _random_keeps(d, k, draws, seed).to(m.second.dtype)
    mu = m.sum_h[None, :] * keeps  # (draws, d)
    norm = mu.norm(dim=1)
    tr = keeps @ torch.diagonal(m.second)
    energy = ((mu @ m.second) * mu).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = np.where((norm > 0).numpy() & (tr > 0).numpy(), (energy / norm**2 / tr).numpy(), np.nan)
    return float(np.mean(vals))


def carrier_keep(m: Moments, k: int) -> np.ndarray:
    """[ρ_zscored − ρ, ρ_norogue_k − ρ_random_k, ρ_nosink − ρ₀]: what each robustness step costs the
    carrier energy beyond its null (prediction 3; 0 = nothing lost, −ρ = everything). The sink step works
    on every token: ρ₀ is ρ with position 0 included, ρ_nosink drops the sinks found among them all."""
    rho = carrier_energy(m)
    z = carrier_energy_robust(m, zscore=True, drop_dims=0, drop_sinks=False)
    rogue = carrier_energy_robust(m, zscore=False, drop_dims=k, drop_sinks=False)
    nosink = carrier_energy_robust(m, zscore=False, drop_dims=0, drop_sinks=True)
    return np.array([z - rho, rogue - carrier_energy_drop_random(m, k), nosink - carrier_energy_with_first(m)])


def carrier_keep_rogue(m: Moments, k: int) -> float:
    """ρ_norogue_k − ρ_random_k alone (the rogue step of :func:`carrier_keep` for another k)."""
    rogue = carrier_energy_robust(m, zscore=False, drop_dims=k, drop_sinks=False)
    return rogue - carrier_energy_drop_random(m, k)


def top_pc_energy(m: Moments) -> float:
    """Energy share along the top principal direction of the uncentred second moment."""
    return energy_ratio(m, top_direction(m))


def carrier_pc_alignment(m: Moments) -> float:  # NaN when either direction is undefined
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
