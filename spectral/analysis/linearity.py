"""Layer-to-layer linearity (Razzhigaev et al. 2024, "Your Transformer is Secretly Linear"; LLM-Microscope) from
streamed moments.

LLM-Microscope's ``procrustes_similarity(x, y)`` centres the tokens of two consecutive layers, scales each to unit
Frobenius norm and scores the least-squares linear map X̃A ≈ Ỹ by 1 − ‖X̃A − Ỹ‖²_F. With C the (co)variance sums
that is

    1 − ‖P_X Ỹ − Ỹ‖² = tr(C_yx C_xx⁺ C_xy) / tr(C_yy),

which the run has without storing a token: C_xx and C_yy from the sites' moments, C_xy from the probe's cross
moment (:class:`spectral.joint.JointProbe`). ``procrustes_similarity_centered`` is the same for the update
y − x on x (the identity of the residual path removed): C_(y−x)(y−x) = C_yy − C_xy − C_yx + C_xx and
C_x(y−x) = C_xy − C_xx. The uncentred variant uses the raw second moments. Each is an in-sample fit of d²
parameters to N tokens, like LLM-Microscope's: read it beside its upward bias of about d/N.
"""

from __future__ import annotations

import numpy as np
import torch

from spectral.stats import Moments


def cross_second(
    m_x: Moments, m_y: Moments, cross_c: torch.Tensor, c_x: torch.Tensor, c_y: torch.Tensor
) -> torch.Tensor:
    """Σ x yᵀ from the centred cross sum Σ (x − c_x)(y − c_y)ᵀ and the sites' sums Σx, Σy over the same tokens."""
    n = m_x.n
    sx, sy = m_x.sum_h.double() - n * c_x, m_y.sum_h.double() - n * c_y  # Σ(x − c_x), Σ(y − c_y)
    return cross_c.double() + torch.outer(c_x, sy) + torch.outer(sx, c_y) + n * torch.outer(c_x, c_y)


def fit_share(cxx: torch.Tensor, cxy: torch.Tensor, cyy: torch.Tensor, rtol: float = 1e-12) -> float:
    """tr(C_yx C_xx⁺ C_xy) / tr(C_yy): the share of Y's (co)variance a linear map of X reproduces (the
    pseudo-inverse over eigenvalues above ``rtol`` of the largest, as LLM-Microscope's SVD of X keeps all)."""
    tr = float(torch.trace(cyy))
    if not tr > 0:
        return float("nan")
    ev, V = torch.linalg.eigh(cxx.double())
    keep = ev > rtol * float(ev.max().clamp_min(1e-300))
    P = V[:, keep].T @ cxy.double()  # (k, d)
    return float((P * P / ev[keep, None]).sum() / tr)


def linearity_scores(m_x: Moments, m_y: Moments, sxy: torch.Tensor) -> np.ndarray:
    """[centred, uncentred, update] linearity of y on x from Σxxᵀ, Σyyᵀ (the Moments) and Σxyᵀ."""
    n = m_x.n
    if n < 2:
        return np.full(3, np.nan)
    sxx, syy = m_x.second.double(), m_y.second.double()
    mx, my = m_x.sum_h.double() / n, m_y.sum_h.double() / n
    cxx = sxx - n * torch.outer(mx, mx)
    cyy = syy - n * torch.outer(my, my)
    cxy = sxy - n * torch.outer(mx, my)
    cuu = cyy - cxy - cxy.T + cxx  # the update u = y − x
    cxu = cxy - cxx
    return np.array([fit_share(cxx, cxy, cyy), fit_share(sxx, sxy, syy), fit_share(cxx, cxu, cuu)])
