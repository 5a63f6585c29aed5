"""Per-attention-head output spectra and subspaces, from streamed per-head statistics (pure maths).

Head h writes o = z W_O to the residual stream, z ∈ R^{d_head} its per-token mix of values and
W_O ∈ R^{d_head × d_model} its output matrix. Given the sums that a capture pass accumulates over N
tokens, S = Σ z zᵀ (uncentred second moment) and s = Σ z, the centred covariance of z is
C_z = S/N − (s/N)(s/N)ᵀ (population normalisation, as in :mod:`spectral.analysis.spectrum`) and that
of the output is C_o = W_Oᵀ C_z W_O (d_model × d_model, rank ≤ d_head).

Everything is computed in the small d_head space: with B = C_z^{1/2} W_O (d_head × d_model),
C_o = BᵀB, so its non-zero eigenvalues are the squared singular values of B (equivalently the
eigenvalues of C_z^{1/2} W_O W_Oᵀ C_z^{1/2}) and its principal directions are the right singular
vectors of B. No d_model × d_model matrix is formed.

Subspace overlap of orthonormal bases A (d × r1), B (d × r2): the mean squared cosine of the
min(r1, r2) principal angles, ‖AᵀB‖_F² / min(r1, r2) ∈ [0, 1]. For independent uniformly random
r-dimensional subspaces of R^d its expectation is r/d (:func:`random_overlap_null`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from spectral.analysis import eigen


def _z_covariance(z_second: np.ndarray, z_sum: np.ndarray, n: float) -> np.ndarray:
    """Centred population covariance C_z = S/N − μμᵀ of the head's z vectors."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    second = np.asarray(z_second, dtype=np.float64)
    mu = np.asarray(z_sum, dtype=np.float64) / n
    cov = second / n - np.outer(mu, mu)
    return 0.5 * (cov + cov.T)


def _root_and_weights(
    z_second: np.ndarray, z_sum: np.ndarray, n: float, W_O: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(C_z^{1/2}, W_O) as float64, W_O checked to be (d_head, d_model)."""
    cov = _z_covariance(z_second, z_sum, n)
    W = np.asarray(W_O, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != cov.shape[0]:
        raise ValueError(f"W_O must be (d_head={cov.shape[0]}, d_model), got {W.shape}")
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T, W  # symmetric PSD square root


def _output_factor(z_second: np.ndarray, z_sum: np.ndarray, n: float, W_O: np.ndarray) -> np.ndarray:
    """B = C_z^{1/2} W_O (d_head × d_model), so that the output covariance is BᵀB."""
    root, W = _root_and_weights(z_second, z_sum, n, W_O)
    return root @ W


def head_output_spectrum(z_second: np.ndarray, z_sum: np.ndarray, n: float, W_O: np.ndarray) -> np.ndarray:
    """Eigenvalues of the centred covariance of o = z W_O, descending, clipped at 0.

    Returns min(d_head, d_model) values: the remaining d_model − d_head eigenvalues are exactly 0. They are
    the eigenvalues of the d_head × d_head matrix B Bᵀ = C^{1/2} (W Wᵀ) C^{1/2} (the nonzero ones of BᵀB):
    no d_model-sized decomposition.
    """
    root, W = _root_and_weights(z_second, z_sum, n, W_O)
    ev = np.linalg.eigvalsh(root @ (W @ W.T) @ root)
    return np.clip(np.sort(ev)[::-1][: min(W.shape)], 0.0, None)


def gram_roots(W_O: np.ndarray) -> np.ndarray:
    """(H, d_head, d_head) symmetric square roots of W_O,h W_O,hᵀ for a stack of heads' W_O (H, d_head, d)."""
    W = np.asarray(W_O, dtype=np.float64)
    w, v = np.linalg.eigh(W @ W.transpose(0, 2, 1))
    return (v * np.sqrt(np.clip(w, 0.0, None))[:, None, :]) @ v.transpose(0, 2, 1)


def head_output_spectra(z_second: np.ndarray, z_sum: np.ndarray, n: float, roots: np.ndarray) -> np.ndarray:
    """:func:`head_output_spectrum` of every head of a layer at once: (H, d_head) eigenvalues, descending.

    The nonzero eigenvalues of C^{1/2} G C^{1/2} equal those of G^{1/2} C G^{1/2} (G = W_O W_Oᵀ): with
    G^{1/2} fixed per head (``gram_roots``) one batched symmetric eigensolve per evaluation serves a layer."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    mu = np.asarray(z_sum, dtype=np.float64) / n
    cov = np.asarray(z_second, dtype=np.float64) / n - mu[:, :, None] * mu[:, None, :]
    cov = 0.5 * (cov + cov.transpose(0, 2, 1))
    ev = np.linalg.eigvalsh(roots @ cov @ roots)
    return np.clip(ev[:, ::-1], 0.0, None)


def head_eff_rank(eigenvalues: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised eigenvalues (NaN for an all-zero spectrum):
    :func:`spectral.analysis.eigen.effective_rank`, the residual stream's own."""
    return eigen.effective_rank(eigenvalues)


def head_subspace(z_second: np.ndarray, z_sum: np.ndarray, n: float, W_O: np.ndarray, r: int) -> np.ndarray:
    """Orthonormal basis (d_model × r) of the top-r principal directions of the head's output covariance.

    Columns are ordered by decreasing variance; directions beyond the rank of the covariance (zero
    variance) are an arbitrary orthonormal completion.
    """
    B = _output_factor(z_second, z_sum, n, W_O)
    k = min(B.shape)
    if not 1 <= r <= k:
        raise ValueError(f"r must be in [1, min(d_head, d_model) = {k}], got {r}")
    _, _, vt = np.linalg.svd(B, full_matrices=False)  # singular values come out descending
    return vt[:r].T.copy()


def subspace_overlap(A: np.ndarray, B: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between span(A) and span(B): ‖AᵀB‖_F² / min(r1, r2).

    A (d × r1) and B (d × r2) must have orthonormal columns.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must be (d, r) with the same d, got {A.shape} and {B.shape}")
    r = min(A.shape[1], B.shape[1])
    if r == 0:
        return float("nan")
    return float(np.sum((A.T @ B) ** 2) / r)


def random_orthonormal(d: int, r: int, rng: np.random.Generator, size: tuple[int, ...] = ()) -> np.ndarray:
    """Bases (size + (d, r)) of independent uniformly random r-dim subspaces of R^d (QR of Gaussians)."""
    q, _ = np.linalg.qr(rng.standard_normal((*size, d, r)))
    return q


def random_overlap_null(d: int, r: int, n_pairs: int, n_draws: int, seed: int) -> np.ndarray:
    """Null distribution of a mean pairwise overlap: for each of ``n_draws`` draws, the mean
    :func:`subspace_overlap` over ``n_pairs`` pairs of independent uniformly random r-dim subspaces
    of R^d. Expectation r/d. Returns an array of length ``n_draws``.
    """
    if not 1 <= r <= d:
        raise ValueError(f"need 1 <= r <= d, got r={r}, d={d}")
    if n_pairs < 1 or n_draws < 1:
        raise ValueError(f"n_pairs and n_draws must be >= 1, got {n_pairs}, {n_draws}")
    rng = np.random.default_rng(seed)
    out = np.empty(n_draws, dtype=np.float64)
    for i in range(n_draws):
        q = random_orthonormal(d, r, rng, (n_pairs, 2))  # (n_pairs, 2, d, r)
        cross = np.einsum("pdi,pdj->pij", q[:, 0], q[:, 1])
        out[i] = float(np.mean(np.sum(cross**2, axis=(1, 2)) / r))
    return out


@functools.lru_cache(maxsize=64)
def random_heads_null(d: int, r: int, n_heads: int, n_draws: int, seed: int) -> np.ndarray:
    """Null of a layer's mean pairwise overlap: ``n_heads`` uniformly random r-dim subspaces of R^d
    per draw (pairs share heads, as a layer's real head pairs do). Expectation r/d.

    It depends on nothing but its arguments, so it is cached (layers with the same r share it). Each
    Gaussian basis G is made orthonormal as G L^-T (L L^T = G^T G, Cholesky): the same subspace as a QR
    gives, at a fraction of the cost.
    """
    gen = torch.Generator().manual_seed(seed)
    iu = torch.triu_indices(n_heads, n_heads, 1)
    parts = []
    # draws in chunks from the one generator: the same numbers as one (n_draws, ...) draw (every chunk is a multiple
    # of 16 values, torch's normal block), at a fraction of the memory (100 draws of 9 heads x 576 x 40: ~250 MB)
    per_draw = n_heads * d * r
    step = max(1, (16 << 20) // (4 * per_draw)) if per_draw % 16 == 0 else n_draws
    for a in range(0, n_draws, step):
        k = min(step, n_draws - a)
        g = torch.randn((k, n_heads, d, r), generator=gen)  # float32 throughout: overlaps to ~1e-6, 2x faster
        chol = torch.linalg.cholesky(g.transpose(-1, -2) @ g)  # (draws, heads, r, r)
        q = torch.linalg.solve_triangular(chol, g.transpose(-1, -2), upper=False).transpose(-1, -2)  # G L^-T
        flat = q.permute(0, 2, 1, 3).reshape(k, d, n_heads * r)
        gram = (flat.transpose(1, 2) @ flat).reshape(k, n_heads, r, n_heads, r)
        ov = gram.pow(2).sum((2, 4)) / r  # (draws, heads, heads)
        parts.append(ov[:, iu[0], iu[1]].mean(1).double())
    out = torch.cat(parts).numpy()
    out.flags.writeable = False  # shared by the cache
    return out


# ---- band concentration of the heads' OV and QK maps (prediction 6) ---------------------------------------


def norm_gain(module: torch.nn.Module | None, d: int) -> torch.Tensor:
    """The elementwise gain γ of a norm module (ones when there is none): RMSNorm-like modules are
    evaluated on the all-ones vector (RMS 1, so the output is γ itself, Gemma's 1 + w included);
    LayerNorm's centring is not a gain: its weight is used."""
    if module is None:
        return torch.ones(d, dtype=torch.float64)
    mod = getattr(module, "original_component", module)
    if isinstance(mod, torch.nn.LayerNorm) or "LayerNorm" in type(mod).__name__:
        w = getattr(mod, "weight", None)
        return torch.ones(d, dtype=torch.float64) if w is None else w.detach().double().cpu()
    p = next(mod.parameters(), None)
    x = torch.ones(1, d, dtype=p.dtype if p is not None else torch.float32, device=p.device if p is not None else "cpu")
    with torch.no_grad():
        return mod(x)[0].detach().double().cpu()


def band_read_write(
    A: torch.Tensor, B: torch.Tensor, U: torch.Tensor, sizes: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Band energies of the low-rank map M = A Bᵀ (A, B: (H, d, r)) in the orthonormal basis U (d × d, bands
    contiguous of ``sizes``): read[h, i] = ‖U_iᵀ M_h‖_F² (what band i of the input contributes) and
    write[h, j] = ‖M_h U_j‖_F² (what lands in band j of the output), each (H, K). Computed in the rank-r
    space: ‖U_iᵀ A Bᵀ‖² = Σ_rows (P_i G_B) ⊙ P_i with P = Uᵀ A, G_B = BᵀB; the change of basis of every
    head is one float32 product (the Grams stay float64)."""
    H, d, r = A.shape
    stacked = torch.cat([A, B], 0).permute(1, 0, 2).reshape(d, 2 * H * r).float()  # (d, 2·H·r)
    PQ = (U.float().T @ stacked).reshape(d, 2 * H, r).permute(1, 0, 2).double()  # (2H, d, r)
    P, Q = PQ[:H], PQ[H:]
    GA, GB = A.transpose(1, 2) @ A, B.transpose(1, 2) @ B  # (H, r, r)
    per_in = ((P @ GB) * P).sum(-1)  # (H, d): energy read from each basis direction
    per_out = ((Q @ GA) * Q).sum(-1)  # (H, d): energy written to each basis direction
    edges = np.cumsum([0, *sizes])[:-1]
    return (np.add.reduceat(per_in.numpy(), edges, axis=1), np.add.reduceat(per_out.numpy(), edges, axis=1))


def top_share(e: np.ndarray, n: int) -> np.ndarray:
    """Share of the n largest entries of each row of non-negative energies (NaN for a zero row)."""
    tot = e.sum(-1)
    top = np.sort(e, axis=-1)[..., ::-1][..., :n].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, top / tot, np.nan)


def layer_head_maps(model, layer: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    """(A, B) per map of every head of one layer (float64, (H, d, d_head)), M_h = A_h B_hᵀ acting on the
    residual stream: OV = diag(γ₁) W_V W_O diag(γ_post) (input norm gain, and the output norm gain of
    families with sandwich norms), QK = diag(γ₁) W_Q (diag(γ₁) W_K)ᵀ. Grouped-query heads share their
    key/value head. Rotary embeddings and per-head q/k norms are left out (the QK map at relative position 0)."""
    block = model.bridge.blocks[layer]
    attn = block.attn
    d = model.arch.d_model
    g1 = norm_gain(getattr(block, "ln1", None), d)
    gpost = norm_gain(getattr(block, "ln1_post", None), d) if hasattr(block, "ln1_post") else torch.ones(d).double()
    WQ, WK, WV, WO = (getattr(attn, n).detach().double().cpu() for n in ("W_Q", "W_K", "W_V", "W_O"))
    H = WQ.shape[0]
    kv = torch.arange(H) // (H // WK.shape[0])  # the key/value head each query head reads
    A_ov = g1[None, :, None] * WV[kv]  # (H, d, dh)
    B_ov = WO.transpose(1, 2) * gpost[None, :, None]  # (H, d, dh): M = A Bᵀ = diag(γ) W_V W_O diag(γ')
    return {"ov": (A_ov, B_ov), "qk": (g1[None, :, None] * WQ, g1[None, :, None] * WK[kv])}


def head_band_concentration(model, layer: int, U: torch.Tensor, sizes: list[int], n: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Per head, the top-n band share of each map's read and write energies, averaged over the two sides:
    {"ov": (H,), "qk": (H,)} in the basis U (bands of ``sizes``). An isotropic map spreads its energy as the
    band sizes do (≈ n/K)."""
    out = {}
    for name, (A, B) in layer_head_maps(model, layer).items():
        read, write = band_read_write(A, B, U.double(), sizes)
        out[name] = 0.5 * (top_share(read, n) + top_share(write, n))
    return out
