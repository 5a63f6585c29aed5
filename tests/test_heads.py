"""Per-head output spectra and subspace overlaps == direct computations; random-subspace null."""

import numpy as np
import pytest
import torch

from spectral.analysis.heads import (
    head_eff_rank,
    head_output_spectrum,
    head_subspace,
    random_overlap_null,
    subspace_overlap,
)


def _head(n=500, d_head=4, d_model=12, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d_head)) @ rng.standard_normal((d_head, d_head)) + rng.standard_normal(d_head)
    W_O = rng.standard_normal((d_head, d_model))
    return Z, W_O, Z.T @ Z, Z.sum(axis=0), float(n)


@pytest.mark.parametrize("seed", range(3))
def test_head_output_spectrum_equals_direct_covariance(seed):
    Z, W_O, second, zsum, n = _head(seed=seed)
    direct = np.sort(np.linalg.eigvalsh(np.cov((Z @ W_O).T, bias=True)))[::-1]
    ev = head_output_spectrum(second, zsum, n, W_O)
    d_head = Z.shape[1]
    assert ev.shape == (d_head,)
    assert np.all(np.diff(ev) <= 0) and np.all(ev >= 0)
    np.testing.assert_allclose(ev, direct[:d_head], atol=1e-8, rtol=0)
    np.testing.assert_allclose(direct[d_head:], 0.0, atol=1e-8)


def test_head_subspace_spans_top_principal_directions():
    Z, W_O, second, zsum, n = _head(seed=4)
    r = 3
    U = head_subspace(second, zsum, n, W_O, r)
    assert U.shape == (12, r)
    np.testing.assert_allclose(U.T @ U, np.eye(r), atol=1e-10)
    C = np.cov((Z @ W_O).T, bias=True)
    w, v = np.linalg.eigh(C)
    top = v[:, ::-1][:, :r]
    assert subspace_overlap(U, top) == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(np.diag(U.T @ C @ U), np.sort(w)[::-1][:r], atol=1e-8)
    with pytest.raises(ValueError):
        head_subspace(second, zsum, n, W_O, 5)


def test_subspace_overlap_identity_and_orthogonal():
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    A, B = Q[:, :4], Q[:, 4:10]
    assert subspace_overlap(A, A) == pytest.approx(1.0, abs=1e-12)
    assert subspace_overlap(A, B) == pytest.approx(0.0, abs=1e-12)
    assert subspace_overlap(A, Q[:, :8]) == pytest.approx(1.0, abs=1e-12)  # A inside a larger subspace
    # one shared direction out of r = 2: mean squared cosine 1/2
    assert subspace_overlap(Q[:, [0, 1]], Q[:, [0, 2]]) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(("d", "r"), [(20, 3), (64, 8)])
def test_random_overlap_null_mean_is_r_over_d(d, r):
    draws = random_overlap_null(d, r, n_pairs=10, n_draws=400, seed=11)
    assert draws.shape == (400,)
    assert np.all((draws >= 0) & (draws <= 1))
    se = draws.std(ddof=1) / np.sqrt(draws.size)
    assert abs(draws.mean() - r / d) < 3 * se
    np.testing.assert_array_equal(draws, random_overlap_null(d, r, 10, 400, seed=11))  # seeded


@pytest.mark.parametrize("k", [1, 2, 5, 17])
def test_head_eff_rank_flat_spectrum(k):
    assert head_eff_rank(np.r_[np.full(k, 0.3), np.zeros(4)]) == pytest.approx(k, rel=1e-12)


def test_head_eff_rank_zero_spectrum_is_nan():
    assert np.isnan(head_eff_rank(np.zeros(3)))


def test_random_heads_null_mean_is_r_over_d():
    from spectral.analysis.heads import random_heads_null

    null = random_heads_null(24, 3, 6, 400, 0)
    assert abs(null.mean() - 3 / 24) < 3 * null.std() / np.sqrt(null.size)
    # the Cholesky orthonormalisation spans the same subspaces as a QR: the same overlaps, draw by draw
    g = torch.randn((400, 6, 24, 3), generator=torch.Generator().manual_seed(0)).double().numpy()
    q = np.linalg.qr(g)[0].transpose(0, 2, 1, 3).reshape(400, 24, 18)
    ov = np.sum(((q.transpose(0, 2, 1) @ q).reshape(400, 6, 3, 6, 3)) ** 2, axis=(2, 4)) / 3
    iu = np.triu_indices(6, 1)
    np.testing.assert_allclose(null, ov[:, iu[0], iu[1]].mean(axis=1), rtol=1e-4)  # float32 orthonormalisation


def test_random_heads_null_in_chunks_is_the_one_draw():
    """The draws are generated in chunks (memory): the same numbers as one draw of all of them, at SmolLM2's shape
    (9 heads x 576 x 40: 5 chunks of 20 draws)."""
    from spectral.analysis.heads import random_heads_null

    d, r, H, n = 576, 40, 9, 100
    g = torch.randn((n, H, d, r), generator=torch.Generator().manual_seed(7))
    chol = torch.linalg.cholesky(g.transpose(-1, -2) @ g)
    q = torch.linalg.solve_triangular(chol, g.transpose(-1, -2), upper=False).transpose(-1, -2)
    flat = q.permute(0, 2, 1, 3).reshape(n, d, H * r)
    ov = (flat.transpose(1, 2) @ flat).reshape(n, H, r, H, r).pow(2).sum((2, 4)) / r
    iu = torch.triu_indices(H, H, 1)
    np.testing.assert_array_equal(random_heads_null(d, r, H, n, 7), ov[:, iu[0], iu[1]].mean(1).double().numpy())
