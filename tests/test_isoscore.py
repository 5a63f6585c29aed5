"""IsoScore (Rudman et al. 2022): limits, planted cases, and agreement with the published algorithm."""

import math

import numpy as np
import pytest
import torch

from spectral.analysis.isoscore import isoscore_from_eigenvalues
from spectral.analysis.spectrum import isoscore
from spectral.stats import Moments, SiteStats


def _moments(X: np.ndarray) -> Moments:
    """Moments of the rows of X (one window, every token kept)."""
    h = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64)).unsqueeze(0)
    st = SiteStats(X.shape[1], 1, moment_dtype=torch.float64)
    st.update(h, torch.ones(h.shape[:2], dtype=torch.bool), torch.arange(1), torch.zeros(1, dtype=torch.long))
    return st.total()


def _reference_isoscore(points: np.ndarray) -> float:
    """Direct transcription of the published algorithm (bcbi-edu/p_eickhoff_isoscore, IsoScore.py).

    ``points``: (N samples, n dims). Step 2 there is sklearn PCA(n_components=n).fit_transform, i.e.
    centre and rotate onto the covariance eigenvectors; step 3 is the diagonal of np.cov (sample).
    """
    n = points.shape[1]
    centred = points - points.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(centred.T))
    reoriented = centred @ vecs[:, ::-1]  # step 2: PCA reorientation (descending variance)
    cov_diag = np.diag(np.cov(reoriented.T))  # step 3: variance vector
    cov_diag_normalized = cov_diag * np.sqrt(n) / np.linalg.norm(cov_diag)  # step 4
    l2 = np.linalg.norm(cov_diag_normalized - np.ones(n))  # step 5
    isotropy_defect = l2 / np.sqrt(2 * (n - np.sqrt(n)))
    return float(((n - isotropy_defect**2 * (n - np.sqrt(n))) ** 2 - n) / (n * (n - 1)))  # steps 6, 7


def _anisotropic(N: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d)) * np.exp(rng.uniform(-2, 1, size=d))  # random scales per column
    return rng.standard_normal((N, d)) @ A.T + 5.0 * rng.standard_normal(d)


def test_isotropic_gaussian_close_to_one():
    X = np.random.default_rng(0).standard_normal((20000, 16)) + 3.0
    assert isoscore(_moments(X)) > 0.95


def test_points_on_a_line_score_zero():
    rng = np.random.default_rng(1)
    d = 16
    direction = rng.standard_normal(d)
    X = rng.standard_normal((5000, 1)) * direction + rng.standard_normal(d)
    assert isoscore(_moments(X)) < 0.01


@pytest.mark.parametrize("d", [2, 5, 16, 64])
def test_planted_k_dimensions_give_k_minus_one_over_d_minus_one(d):
    # Derivation: ‖λ̂ − 1‖² = 2d − 2Σλ̂, so d − δ²(d − √d) = Σλ̂ and the score is (PR − 1)/(d − 1),
    # PR = (Σλ)²/Σλ². k equal eigenvalues and d − k zeros: PR = k, score (k − 1)/(d − 1).
    for k in range(1, d + 1):
        ev = np.r_[np.full(k, 2.5), np.zeros(d - k)]
        assert isoscore_from_eigenvalues(ev) == pytest.approx((k - 1) / (d - 1), abs=1e-12)


def test_planted_subspace_from_points():
    rng = np.random.default_rng(2)
    N, d, k = 40000, 12, 4
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    X = rng.standard_normal((N, k)) @ Q[:, :k].T * 3.0 + 1.0  # isotropic inside a random k-dim subspace
    assert isoscore(_moments(X)) == pytest.approx((k - 1) / (d - 1), abs=0.01)


def test_equals_participation_ratio_identity():
    rng = np.random.default_rng(3)
    for _ in range(20):
        d = int(rng.integers(2, 50))
        ev = np.exp(rng.normal(0, 2, size=d))
        pr = ev.sum() ** 2 / (ev**2).sum()
        assert isoscore_from_eigenvalues(ev) == pytest.approx((pr - 1) / (d - 1), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_transcription(seed):
    X = _anisotropic(N=3000, d=10 + 5 * seed, seed=seed)
    ref = _reference_isoscore(X)
    assert 0.0 < ref < 1.0
    assert isoscore(_moments(X)) == pytest.approx(ref, abs=1e-8)


def test_order_and_scale_invariant_and_degenerate_cases():
    ev = np.array([3.0, 1.0, 0.5, 0.0, 2.0])
    s = isoscore_from_eigenvalues(ev)
    assert isoscore_from_eigenvalues(ev[::-1] * 7.0) == pytest.approx(s, abs=1e-14)
    assert isoscore_from_eigenvalues(np.ones(7)) == pytest.approx(1.0, abs=1e-14)
    assert math.isnan(isoscore_from_eigenvalues(np.zeros(4)))
    assert math.isnan(isoscore_from_eigenvalues(np.array([1.0])))


def test_matches_pypi_reference_if_installed():
    # Not a dependency; compared when present. PyPI IsoScore 2.0.1 computes sqrt(n) of an integer
    # tensor, which torch does in float32, so it agrees only to ~1e-7.
    ref_mod = pytest.importorskip("IsoScore.IsoScore")
    for seed in range(5):
        X = _anisotropic(N=2000, d=5 + 10 * seed, seed=seed)
        assert isoscore(_moments(X)) == pytest.approx(float(ref_mod.IsoScore(X)), abs=1e-6)


def test_one_effective_rank_function_serves_stream_and_heads():
    """spectral.analysis.eigen.effective_rank is the stream's eff_rank and the heads' head_eff_rank; IsoScore's
    module needs no spectrum module (no import cycle)."""
    import subprocess
    import sys

    from spectral.analysis import eigen, heads

    ev = np.array([4.0, 2.0, 1.0, 0.5, 0.0, -1e-12])
    p = np.clip(ev, 0, None) / np.clip(ev, 0, None).sum()
    p = p[p > 0]
    assert eigen.effective_rank(ev) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    assert heads.head_eff_rank(ev) == eigen.effective_rank(ev)
    assert eigen.participation_ratio(ev) == pytest.approx(7.5**2 / (16 + 4 + 1 + 0.25))
    assert np.isnan(eigen.effective_rank(np.zeros(3))) and np.isnan(eigen.participation_ratio(np.array([])))
    code = "import sys, spectral.analysis.isoscore; print('spectral.analysis.spectrum' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
