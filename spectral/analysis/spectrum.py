"""PCA spectrum, effective rank, participation ratio and the sequence-axis power spectrum.

Degenerate moments give NaN without a warning: a zero second moment (a site that writes exact
zeros), a covariance that is zero up to round-off (a constant site: total variance below
``VARIANCE_RTOL`` of the mean square norm), a zero stream read by a write (no least-squares map).
A covariance of low rank is not degenerate: rank 1 has effective rank 1.
"""

from __future__ import annotations

import numpy as np
import torch

from spectral.analysis import eigen
from spectral.analysis.intervals import Estimate, bucket_jackknife
from spectral.analysis.isoscore import isoscore_from_eigenvalues
from spectral.stats import Moments, SiteStats


def covariance(m: Moments) -> torch.Tensor:
    """Centred covariance Σ/N − μμᵀ (population normalisation)."""
    mu = m.sum_h / m.n
    return m.second / m.n - torch.outer(mu, mu)


VARIANCE_RTOL = 1e-10  # total variance below this share of E‖h‖² is round-off (float64 cancellation ~1e-16·d)


def pca_spectrum(m: Moments) -> np.ndarray:
    """Eigenvalues of the centred covariance, descending, negatives (round-off) clipped to 0;
    all NaN for a degenerate site (no tokens, zero or constant activations: :func:`degenerate`)."""
    if degenerate(m) is not None:
        return np.full(m.sum_h.shape[0], np.nan)
    ev = torch.linalg.eigvalsh(covariance(m)).flip(0).clamp_min(0.0)
    return ev.numpy()


def degenerate(m: Moments) -> str | None:
    """Why the covariance of ``m`` has no spectrum ("no tokens", "zero", "constant"), or None."""
    if m.n <= 0:
        return "no tokens"
    energy = float(torch.trace(m.second)) / m.n  # E‖h‖²
    if not energy > 0:
        return "zero"
    mu = m.sum_h / m.n
    if energy - float(mu @ mu) <= VARIANCE_RTOL * energy:  # total variance tr(Σ) = E‖h‖² − ‖μ‖²
        return "constant"
    return None


def eff_rank(m: Moments) -> float:
    """exp of the Shannon entropy of the normalised eigenvalues (Roy & Vetterli):
    :func:`spectral.analysis.eigen.effective_rank` of the covariance spectrum."""
    return eigen.effective_rank(pca_spectrum(m))


def participation_ratio(m: Moments) -> float:
    """(Σλ)² / Σλ² of the covariance spectrum."""
    return eigen.participation_ratio(pca_spectrum(m))


def isoscore(m: Moments) -> float:
    """IsoScore of the tokens summarised by ``m`` (centred population covariance, all d dimensions)."""
    return isoscore_from_eigenvalues(pca_spectrum(m))


def pc1_variance_share(ev: np.ndarray) -> float:
    """λ_max / Σλ of a covariance spectrum: LLM-Microscope's "anisotropy" (Razzhigaev et al. 2024,
    ``calculate_anisotropy_torch``), not Ethayarajh's mean cosine (``anisotropy`` here)."""
    tot = float(np.sum(ev))
    return float(ev[0]) / tot if ev.size and tot > 0 else float("nan")


def spectrum_summary(m: Moments) -> np.ndarray:
    """[eff_rank, participation_ratio, isoscore, pc1_variance_share] from one eigendecomposition (NaN when
    degenerate)."""
    ev = pca_spectrum(m)
    return np.array(
        [eigen.effective_rank(ev), eigen.participation_ratio(ev), isoscore_from_eigenvalues(ev), pc1_variance_share(ev)]
    )


def power_spectrum(m: Moments) -> np.ndarray:
    """Parseval-weighted one-sided power P(k) summed over windows and dimensions (k in cycles per window):
    Σ_k P(k) = Σ_t ‖h_t‖² over the spectrum's windows (see spectral.stats)."""
    return m.spectrum.numpy()


def seq_dc_share(p: np.ndarray) -> float:
    """P(0) / Σ P: the energy share of the window mean (order-free: a carrier measure, not a low-pass one)."""
    total = float(p.sum())
    return float(p[0] / total) if total > 0 else float("nan")


def lowfreq_bins(n_freq: int, share: float) -> int:
    """k_lo: the lowest ``share`` of the non-zero frequencies 1..F-1, at least 1."""
    return max(1, int(share * (n_freq - 1)))


def seq_ac_lowfreq_share(p: np.ndarray, share: float = 0.1) -> float:
    """Σ_{0<k≤k_lo} P(k) / Σ_{k>0} P(k): the low-frequency share of the mean-removed signal."""
    ac = float(p[1:].sum())
    return float(p[1 : lowfreq_bins(p.size, share) + 1].sum() / ac) if ac > 0 else float("nan")


def seq_ac_lowfreq_null(T: int, share: float = 0.1) -> float:
    """The exact permutation null of :func:`seq_ac_lowfreq_share` for windows of T positions: under a
    uniformly random order of positions E|X_k|² is the same for every k ≠ 0, so the expected share is the
    Parseval weight of the low bins over that of all non-zero bins (2 per bin, 1 for the Nyquist bin)."""
    F = T // 2 + 1
    w = np.full(F, 2.0)
    if T % 2 == 0:
        w[-1] = 1.0
    k = lowfreq_bins(F, share)
    return float(w[1 : k + 1].sum() / w[1:].sum()) if F > 1 else float("nan")


def spectrum_jackknife(st: SiteStats, fn, level: float) -> Estimate:
    """``fn(P)`` of a site's total spectrum with its jackknife interval from the per-bucket spectra alone."""
    if st.spectrum is None:
        return Estimate(float("nan"), float("nan"), float("nan"))
    per = st.spectrum.cpu().double().numpy()
    buckets = [b for b in st.nonempty_buckets() if st.spectrum_windows[b] > 0]
    return bucket_jackknife([per], fn, level, buckets)[0]


def spectrum_slope_jackknife(stats: list[SiteStats], layers: list[float], fn, level: float) -> Estimate:
    """Slope over layers of ``fn(P_l)``, with its jackknife interval (buckets aligned across the sites)."""
    xs = np.asarray(layers, dtype=float)
    specs = [st.spectrum.cpu().double().numpy() for st in stats if st.spectrum is not None]
    if len(specs) != len(stats) or len(specs) < 2:
        return Estimate(float("nan"), float("nan"), float("nan"))

    def slope(*ps: np.ndarray) -> float:
        ys = [fn(p) for p in ps]
        return float(np.polyfit(xs, ys, 1)[0]) if np.isfinite(ys).all() else float("nan")

    return bucket_jackknife(specs, slope, level, stats[0].nonempty_buckets())[0]


def unembedding_bands(W_U: torch.Tensor, K: int) -> list[torch.Tensor]:
    """Left singular vectors of W_U (d × V) by decreasing singular value, cut into K equal bands
    (numpy.array_split sizes); band 0 is the top band, band K−1 the tail ("dark") band."""
    return split_bands(unembedding_basis(W_U), K)


def split_bands(U: torch.Tensor, K: int) -> list[torch.Tensor]:
    """The columns of a sorted basis cut into K equal bands (numpy.array_split sizes), top band first."""
    return [U[:, idx] for idx in np.array_split(np.arange(U.shape[1]), K)]


def unembedding_basis(W_U: torch.Tensor) -> torch.Tensor:
    """(d, d) left singular vectors of W_U by decreasing singular value: the eigenvectors of the
    d x d Gram matrix W_U W_Uᵀ in float64 (an SVD of the d x V matrix costs ~40x more for a
    50k vocabulary and gives the same subspaces)."""
    W = W_U.detach().to(torch.float64)
    return gram_basis((W @ W.T).cpu())


def gram_basis(G: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric Gram matrix by decreasing eigenvalue (the left singular vectors of its factor)."""
    evals, U = torch.linalg.eigh(G)
    return U[:, torch.argsort(evals, descending=True, stable=True)]


def band_energies(m: Moments, bands: list[torch.Tensor]) -> np.ndarray:
    """Fraction of Σ‖h‖² in each band: tr(U_bᵀ M U_b) / tr(M)."""
    tr = float(torch.trace(m.second))
    if not tr > 0:  # a zero site has no energy to share out
        return np.full(len(bands), np.nan)
    U = torch.cat(bands, dim=1).to(m.second.dtype)
    diag = (U * (m.second @ U)).sum(0).numpy()  # uᵀ M u for every basis vector: one product for all bands
    edges = np.cumsum([0] + [int(b.shape[1]) for b in bands])
    return np.add.reduceat(diag, edges[:-1]) / tr


def band_energy_jackknife(
    st: SiteStats, band_sets: dict[int, list[torch.Tensor]], level: float
) -> dict[int, list[Estimate]]:
    """:func:`band_energies` of a site with its jackknife interval, for several splittings of one basis.

    Band energy is linear in the second moment, so the per-bucket energies of every basis direction
    (:meth:`SiteStats.bucket_quadratic`, one product per bucket) give the total and every leave-one-out
    value by sums: the same numbers as ``jackknife_many(band_energies)`` at a fraction of the cost."""
    out: dict[int, list[Estimate]] = {}
    buckets = st.nonempty_buckets()
    U_prev, q = None, np.zeros(0)
    for K, bands in band_sets.items():
        U = torch.cat(bands, dim=1)
        if U_prev is None or not torch.equal(U, U_prev):  # K = 10 and K = 20 split the same basis: once
            q, U_prev = st.bucket_quadratic(U).numpy(), U  # (B, d): energy of each basis direction per bucket
        edges = np.cumsum([0] + [int(b.shape[1]) for b in bands])[:-1]
        per = np.add.reduceat(q, edges, axis=1)  # (B, K)
        n_bands = len(bands)

        def shares(e: np.ndarray, tr: np.ndarray, n: int = n_bands) -> np.ndarray:
            return e / tr.sum() if tr.sum() > 0 else np.full(n, np.nan)

        out[K] = bucket_jackknife([per, q], shares, level, buckets)
    return out


def principal_basis(cov: torch.Tensor, rel_tol: float = 1e-6) -> torch.Tensor:
    """The covariance's eigenvectors by eigenvalue descending (d × d, float64), with its numerical null space
    (eigenvalues below ``rel_tol`` of the largest: a rank-deficient input, e.g. the embeddings of fewer distinct
    tokens than dimensions) spanned by a fixed basis instead of eigh's arbitrary one. Those eigenvectors are not
    determined by the data (rounding picks them), so bands cut from them changed with the order moments were
    summed in (a sharded run against the single one); the complement of the resolved directions is."""
    c = cov.double()
    w, V = torch.linalg.eigh(c)
    order = torch.argsort(w, descending=True, stable=True)
    w, V = w[order], V[:, order]
    k = int((w > rel_tol * max(float(w[0]), 0.0)).sum())
    d = c.shape[0]
    if k >= d or k == 0:
        return V
    top = V[:, :k]
    g = torch.Generator().manual_seed(0)
    G = torch.randn(d, d - k, generator=g, dtype=torch.float64)  # fixed: the same in every run
    Q, _ = torch.linalg.qr(G - top @ (top.T @ G))  # an orthonormal basis of the resolved directions' complement
    return torch.cat([top, Q], dim=1)


RIDGE_REL = 1e-6  # of tr(E[x xᵀ]): the least-squares band transfer's ridge (see band_transfers)


def band_transfer(write: Moments, inp: Moments, bands: list[torch.Tensor]) -> np.ndarray:
    """T[i, j] = ‖U_iᵀ A U_j‖²_F normalised to sum 1, with A = E[w xᵀ] E[x xᵀ]⁻¹ the least-squares
    linear map from the stream x a sub-layer read to its write w: how much of the write's band i
    is driven by the input's band j (rows: output band, columns: input band). Using the map
    rather than the raw cross moment keeps correlations between input bands out of it."""
    return band_transfers(write, inp, [bands])[0]


def band_transfers(write: Moments, inp: Moments, band_sets: list[list[torch.Tensor]]) -> list[np.ndarray]:
    """:func:`band_transfer` for several band splittings of the same basis (one solve for all)."""
    if write.cross is None:
        raise ValueError("no cross moment: band transfer needs the write's input stream")
    if write.n <= 0 or inp.n <= 0 or not float(torch.trace(inp.second)) > 0:  # no input energy: no map
        return [np.full((len(bands), len(bands)), np.nan) for bands in band_sets]
    C = (write.cross / write.n).double()
    S = (inp.second / inp.n).double()
    # the ridge sits at the resolution of float32 moment storage (~1e-7 of the trace, summed over buckets): input
    # directions below it are not determined by the data, and solving for them made the map, hence the shares,
    # depend on the order the buckets were summed in (a sharded run against the single one, issue 24). They
    # carry under 1e-6 of the input's energy, so the shares lose nothing measurable.
    ridge = RIDGE_REL * float(torch.trace(S))
    Sr = S + ridge * torch.eye(S.shape[0], dtype=S.dtype)
    chol, info = torch.linalg.cholesky_ex(Sr)  # symmetric positive definite with the ridge: half an LU's work
    A = (torch.cholesky_solve(C.T, chol) if int(info) == 0 else torch.linalg.solve(Sr, C.T)).T  # C S⁻¹
    out = []
    U_prev, R2 = None, np.zeros(0)
    for bands in band_sets:
        U = torch.cat(bands, dim=1).to(A.dtype)  # the bands side by side: one rotation instead of K² products
        if U_prev is None or not torch.equal(U, U_prev):  # K = 10 and K = 20 split the same basis: rotate once
            R2, U_prev = (U.T @ A @ U).pow(2).numpy(), U
        edges = np.cumsum([0] + [int(b.shape[1]) for b in bands])[:-1]
        T = np.add.reduceat(np.add.reduceat(R2, edges, axis=0), edges, axis=1)
        out.append(T / T.sum() if T.sum() > 0 else T)
    return out


def offdiag_shares(write: Moments, inp: Moments, band_sets: list[list[torch.Tensor]]) -> np.ndarray:
    """:func:`offdiag_share` for several band splittings (one least-squares map for all)."""
    return np.array(
        [float(1.0 - np.trace(T)) if T.sum() > 0 else float("nan") for T in band_transfers(write, inp, band_sets)]
    )


def offdiag_share(write: Moments, inp: Moments, bands: list[torch.Tensor]) -> float:
    """Share of band transfer that changes band (off the diagonal of :func:`band_transfer`)."""
    T = band_transfer(write, inp, bands)
    return float(1.0 - np.trace(T)) if T.sum() > 0 else float("nan")
