"""Interventions' statistics and edits: what ΔNLL, KL and their intervals are, and the edits themselves.

This is the ``interventions`` row of ARCHITECTURE.md section 1. The observational metrics (band
energy, carrier energy, ...) say *where* the residual stream's energy sits; an intervention says
whether the model *uses* it: the subspace spanned by a basis (the carrier direction, or one band
of the unembedding's left singular vectors from :func:`band_bases`) is removed at one site, and the
next-token negative log-likelihood is compared with the clean run on the same windows.

Definitions (binding): the NLL of a window is the mean cross-entropy of its next-token
predictions, targets ``input_ids[:, 1:]`` from positions ``:-1``; by default the prediction made
at position 0 (BOS / first token) is excluded, like every other statistic of the suite. ΔNLL is
the mean over windows of ``NLL_edited - NLL_clean``; its interval is a seeded percentile
bootstrap over windows (:func:`~spectral.analysis.intervals.bootstrap_weights`), the windows
being paired so the CI is that of the mean paired difference.

The forward passes that measure them (hooked edits, the tail sweep) live in the capture layer,
:mod:`spectral.interventions`: nothing here runs the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from spectral.analysis.intervals import Estimate, bootstrap_weights, percentile_ci
from spectral.analysis.spectrum import unembedding_bands
from spectral.errors import ConfigError, SpectralError

EditFn = Callable[[torch.Tensor], torch.Tensor]
Edit = tuple[str, EditFn]


@dataclass(frozen=True)
class InterventionResult:
    """ΔNLL of removing one subspace (``target``) at one ``site``; NLLs in nats per token."""

    site: str
    target: str  # e.g. "carrier" or "band_k10_b3"
    delta_nll: Estimate  # mean over windows of NLL_edited - NLL_clean, bootstrap CI over windows
    clean_nll: float
    edited_nll: float
    kl: Estimate | None = None  # mean over windows of KL(clean ‖ edited) of the next-token distributions (nats)
    kl_windows: np.ndarray | None = None  # (windows,) the per-window KL behind ``kl`` (paired statistics)
    dnll_windows: np.ndarray | None = None  # (windows,) the per-window ΔNLL behind ``delta_nll``


def _caster(t64: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``cast(h) = (h, t)`` both in h's dtype promoted to at least float32 and on h's device (``t`` converted
    once per device and dtype): the edits compute in float32 or wider and return h's dtype."""
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def cast(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(h.dtype, torch.float32)
        key = (h.device, dtype)
        if key not in cache:
            cache[key] = t64.to(device=h.device, dtype=dtype)
        return h.to(dtype), cache[key]

    return cast


def project_out(basis: Float[torch.Tensor, "d k"]) -> EditFn:
    """``fn(h) = h - (h Q) Qᵀ`` with ``Q`` an orthonormal basis of span(``basis``) (QR).

    The projection runs in float32 (or h's dtype when wider) on h's device; the result has h's dtype.
    """
    if basis.ndim != 2:
        raise SpectralError(f"a basis must be a (d, k) matrix, got shape {tuple(basis.shape)}")
    d, k = int(basis.shape[0]), int(basis.shape[1])
    if k == 0:
        raise SpectralError("a basis needs at least one direction")
    b64 = basis.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(b64).all()):
        raise SpectralError("the basis holds non-finite values")
    q, r = torch.linalg.qr(b64, mode="reduced")
    diag = r.diagonal().abs()
    if k > d or float(diag.min()) <= 1e-10 * max(float(diag.max()), 1e-300):
        raise SpectralError(f"the basis of {k} directions in R^{d} is rank-deficient (a zero or repeated direction)")
    cast = _caster(q)

    def fn(h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != d:
            raise SpectralError(f"basis has dimension {d} but the activation has {h.shape[-1]}")
        x, Q = cast(h)
        return (x - (x @ Q) @ Q.T).to(h.dtype)

    return fn


def mean_ablate(direction: torch.Tensor, mean: float) -> EditFn:
    """``fn(h) = h + (m − h·v) v``: the component along the unit vector v replaced by its corpus mean m
    (the rest of h untouched); the edit of a mean ablation, which keeps the stream's typical amplitude
    where a projection would set it to zero."""
    v64 = direction.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    cast = _caster(v64 / v64.norm())

    def fn(h: torch.Tensor) -> torch.Tensor:
        x, v = cast(h)
        return (x + (mean - x @ v)[..., None] * v).to(h.dtype)

    return fn


def mean_ci(diff: np.ndarray, n_boot: int, seed: int, level: float) -> Estimate:
    value = float(diff.mean())
    if diff.size < 2 or n_boot < 1:
        return Estimate(value, float("nan"), float("nan"))
    w = bootstrap_weights(diff.size, n_boot, seed)
    return percentile_ci(value, (w @ diff) / diff.size, level)


def band_bases(W_U: Float[torch.Tensor, "d V"], K: int) -> dict[str, torch.Tensor]:
    """The unembedding's left singular vectors, by singular value descending, in K contiguous bands.

    Band sizes follow ``numpy.array_split`` on the d directions; ``band_k{K}_b0`` is the top band,
    the last one the "dark" tail. Values are (d, k_i) float32 tensors on the CPU.
    """
    if W_U.ndim != 2:
        raise SpectralError(f"W_U must be a (d, V) matrix, got shape {tuple(W_U.shape)}")
    d = int(W_U.shape[0])
    if not 1 <= K <= d:
        raise ConfigError(f"number of bands K must be in 1..{d} (d_model), got {K}")
    return {f"band_k{K}_b{i}": U.float().contiguous() for i, U in enumerate(unembedding_bands(W_U, K))}


def per_window_mean(values: torch.Tensor, n_windows: int, mask: torch.Tensor) -> np.ndarray:
    """Mean over each window's scored positions of per-token ``values`` (in ``mask`` order)."""
    win = torch.arange(n_windows, device=mask.device)[:, None].expand_as(mask)[mask]
    tot = torch.zeros(n_windows, dtype=torch.float64, device=mask.device).index_add_(0, win, values)
    cnt = torch.zeros(n_windows, dtype=torch.float64, device=mask.device).index_add_(0, win, torch.ones_like(values))
    return (tot / cnt.clamp_min(1)).cpu().numpy()


def scored_nll(
    final: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None,
    with_logp: bool = False,
) -> Any:
    """Mean NLL per window over the scored positions (``mask`` marks positions whose next token is scored);
    with ``with_logp`` also the scored rows' log-probabilities (for KL)."""
    f = final[mask].float()
    logits = f @ W if b is None else f @ W + b
    target = torch.zeros_like(ids)
    target[:, :-1] = ids[:, 1:]
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(1, target[mask][:, None])[:, 0].double()
    per = per_window_mean(nll, ids.shape[0], mask)
    return (per, logp) if with_logp else per
