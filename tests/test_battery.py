"""The battery's statistics against direct computations and planted signals."""

import math

import numpy as np
import pytest
import torch

from spectral.analysis import carrier, spectrum
from spectral.analysis.controls import permuted_positions, shuffle_windows
from spectral.stats import SiteStats


def _stats(h: torch.Tensor, sink_threshold=None, cross_inp=None, buckets=2) -> SiteStats:
    """h: (windows, T, d); position 0 excluded from the counted moments, kept aside for the sink analyses."""
    st = SiteStats(h.shape[-1], buckets, None, sink_threshold, cross=cross_inp is not None, moment_dtype=torch.float64)
    mask = torch.ones(h.shape[:2], dtype=torch.bool)
    mask[:, 0] = False
    first = torch.ones(h.shape[0], dtype=torch.bool)
    st.update(h, mask, torch.arange(h.shape[0]), torch.arange(h.shape[0]) % buckets, inp=cross_inp, first=first)
    return st


def _rho(f: torch.Tensor) -> float:
    mu = f.mean(0) / f.mean(0).norm()
    return float(((f @ mu) ** 2).sum() / (f**2).sum())


def test_rogue_contributions_equal_direct_pairwise():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 9, 5, generator=g, dtype=torch.float64) + torch.tensor([4.0, 0, 0, 1, 0], dtype=torch.float64)
    m = _stats(h).total()
    flat = h[:, 1:].reshape(-1, 5)
    u = flat / flat.norm(dim=1, keepdim=True)
    n = u.shape[0]
    direct = np.array([(np.outer(u[:, i], u[:, i]).sum() - (u[:, i] ** 2).sum()) / (n * (n - 1)) for i in range(5)])
    assert np.allclose(carrier.rogue_contributions(m).numpy(), direct)
    assert carrier.rogue_contributions(m).sum() == pytest.approx(carrier.anisotropy(m))
    assert carrier.rogue_top1_share(m) == pytest.approx(direct.max() / direct.sum())


def test_planted_rogue_dimensions_and_sinks():
    g = torch.Generator().manual_seed(1)
    d = 12
    h = torch.randn(20, 33, d, generator=g, dtype=torch.float64)
    h[..., :2] += 30.0  # two rogue dimensions carry a huge common offset
    m = _stats(h).total()
    top = carrier.rogue_contributions(m).argsort(descending=True)[:2]
    assert set(top.tolist()) == {0, 1}
    assert carrier.carrier_energy(m) > 0.9
    # without the two rogue dims the rest is isotropic noise: rho ~ (1 + small) / d_rest
    rho = carrier.carrier_energy_robust(m, zscore=False, drop_dims=2, drop_sinks=False)
    assert rho < 3.0 / (d - 2)
    # z-scoring (scale only) is exact against a direct computation
    flat = h[:, 1:].reshape(-1, d)
    z = flat / flat.std(dim=0, unbiased=False)
    mu = z.mean(0) / z.mean(0).norm()
    direct = float(((z @ mu) ** 2).sum() / (z**2).sum())
    assert carrier.carrier_energy_robust(m, zscore=True, drop_dims=0, drop_sinks=False) == pytest.approx(direct)
    # sinks: plant 5 massive tokens; the sink-free rho equals the direct one without them
    h2 = torch.randn(4, 17, d, generator=g, dtype=torch.float64) + 1.0
    h2[0, 3] *= 200
    h2[1, 5] *= 200
    m2 = _stats(h2, sink_threshold=50.0).total()
    assert m2.sink_count == 2
    keep = torch.ones(h2.shape[:2], dtype=torch.bool)
    keep[0, 3] = keep[1, 5] = False  # position 0 is not a sink here: it stays (sink analyses include it)
    nosink = carrier.carrier_energy_robust(m2, zscore=False, drop_dims=0, drop_sinks=True)
    assert nosink == pytest.approx(_rho(h2[keep]))


def test_sink_step_includes_position_zero():
    """Prediction 3's sink step: ρ over every token with position 0 against ρ without the sinks found among
    them all; a massive position-0 token (the usual sink) is found although the counted moments leave it out,
    and leave-one-out views, merge and state_dict keep the position-0 tokens."""
    g = torch.Generator().manual_seed(5)
    d, W, T = 10, 6, 15
    h = torch.randn(W, T, d, generator=g, dtype=torch.float64) + 1.0
    h[:, 0] = 0.0
    h[:, 0, 3] = 400.0  # every window's position 0 is a massive activation along dim 3
    h[2, 7] *= 300  # one sink elsewhere
    st = _stats(h, sink_threshold=60.0, buckets=3)
    m = st.total()
    assert m.n == W * (T - 1) and m.first_count == W and m.sink_count == W + 1
    keep = torch.ones(h.shape[:2], dtype=torch.bool)
    keep[:, 0] = False
    keep[2, 7] = False
    nosink = carrier.carrier_energy_robust(m, zscore=False, drop_dims=0, drop_sinks=True)
    assert nosink == pytest.approx(_rho(h[keep]))
    assert carrier.carrier_energy_with_first(m) == pytest.approx(_rho(h.reshape(-1, d)))
    step = carrier.carrier_keep(m, 1)[2]
    assert step == pytest.approx(_rho(h[keep]) - _rho(h.reshape(-1, d)))
    # the old step (position 0 left out of both sides) misses the massive position-0 tokens entirely
    counted = torch.ones(h.shape[:2], dtype=torch.bool)
    counted[:, 0] = False
    old = _rho(h[keep]) - _rho(h[counted])
    assert abs(step - old) > 0.1
    # leave-one-out: bucket 0 holds windows 0 and 3
    loo = st.leave_one_out(0)
    rest = torch.tensor([1, 2, 4, 5])
    assert loo.first_count == 4 and loo.sink_count == 5
    assert carrier.carrier_energy_with_first(loo) == pytest.approx(_rho(h[rest].reshape(-1, d)))
    # merge of two halves and a state_dict round trip give the same view
    a = _stats(h[:3], sink_threshold=60.0, buckets=3)
    b = SiteStats(d, 3, None, 60.0, moment_dtype=torch.float64)
    mask = torch.ones(3, T, dtype=torch.bool)
    mask[:, 0] = False
    b.update(h[3:], mask, torch.arange(3, 6), torch.arange(3, 6) % 3, first=torch.ones(3, dtype=torch.bool))
    merged = SiteStats.from_state_dict(a.merge(b).state_dict()).total()
    assert merged.first_count == W and merged.sink_count == W + 1
    assert carrier.carrier_keep(merged, 1)[2] == pytest.approx(step)


def test_planted_band_energy_and_transfer():
    g = torch.Generator().manual_seed(2)
    d, V, K = 20, 50, 5
    W_U = torch.randn(d, V, generator=g, dtype=torch.float64)
    bands = spectrum.unembedding_bands(W_U, K)
    assert all(U.shape == (d, d // K) for U in bands)
    Q = torch.cat(bands, 1)
    assert torch.allclose(Q.T @ Q, torch.eye(d, dtype=torch.float64), atol=1e-10)
    # energy placed only in band 3
    coeff = torch.randn(6, 11, d // K, generator=g, dtype=torch.float64)
    x = coeff @ bands[3].T
    m = _stats(x).total()
    e = spectrum.band_energies(m, bands)
    assert e[3] == pytest.approx(1.0) and e.sum() == pytest.approx(1.0)
    # a write that maps input band 1 onto output band 4: transfer concentrated at (4, 1)
    inp = torch.randn(6, 11, d, generator=g, dtype=torch.float64)
    w = inp @ bands[1] @ bands[4].T
    mw, mx = _stats(w, cross_inp=inp).total(), _stats(inp).total()
    T = spectrum.band_transfer(mw, mx, bands)
    assert np.unravel_index(T.argmax(), T.shape) == (4, 1) and T[4, 1] > 0.99
    assert spectrum.offdiag_share(mw, mx, bands) > 0.99


def test_intra_similarity_equals_direct():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(4, 10, 6, generator=g, dtype=torch.float64) + 0.5
    st = _stats(h)
    rows = st.window_table().rows
    got = rows[:, 6].sum() / rows[:, 0].sum()
    vals = []
    for w in range(4):
        x = h[w, 1:]
        s = x.mean(0)
        vals.append((x @ s / (x.norm(dim=1) * s.norm())).numpy())
    assert got == pytest.approx(float(np.concatenate(vals).mean()))


def test_controls_shuffle_and_permute(tmp_path, sample_text):
    from conftest import char_tokenizer

    from spectral.config import CorpusSpec
    from spectral.corpus import iter_batches, make_windows

    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    w = make_windows(char_tokenizer(), CorpusSpec(source=str(p), seq_len=20, max_seqs=4))
    s = shuffle_windows(w, 0)
    assert torch.equal(s.ids[:, 0], w.ids[:, 0])
    for a, b in zip(s.ids, w.ids, strict=True):
        assert sorted(a.tolist()) == sorted(b.tolist())
    assert not torch.equal(s.ids, w.ids)
    assert torch.equal(shuffle_windows(w, 0).ids, s.ids)
    pos = permuted_positions(0, True)(next(iter_batches(w, 4)))
    assert (pos[:, 0] == 0).all()
    assert all(sorted(r.tolist()) == list(range(21)) for r in pos)


def test_isoscore_matches_peer_on_real_activations():
    """A peer implementation's number on the same activations (the IsoScore package)."""
    iso_pkg = pytest.importorskip("IsoScore.IsoScore", reason="peer package IsoScore not installed")
    from spectral.analysis.spectrum import isoscore

    g = torch.Generator().manual_seed(4)
    h = torch.randn(8, 40, 6, generator=g, dtype=torch.float64) * torch.tensor([5, 3, 1, 1, 0.5, 0.1])
    m = _stats(h).total()
    points = h[:, 1:].reshape(-1, 6).numpy()
    peer = float(iso_pkg.IsoScore(points))
    assert isoscore(m) == pytest.approx(peer, abs=1e-6)
    assert math.isfinite(peer)


def test_top_pc_and_decomposition():
    g = torch.Generator().manual_seed(5)
    mu = torch.zeros(6, dtype=torch.float64)
    mu[2] = 1.0
    h = 5 * mu + 0.3 * torch.randn(5, 30, 6, generator=g, dtype=torch.float64)
    m = _stats(h).total()
    assert carrier.carrier_pc_alignment(m) > 0.999
    assert carrier.top_pc_energy(m) >= carrier.carrier_energy(m) - 1e-12  # the top PC maximises energy
    coeff, mod = carrier.decompose(h, mu * 3)
    assert torch.allclose(coeff[..., None] * mu + mod, h) and torch.allclose(mod @ mu, torch.zeros(5, 30).double())


def test_layer_cosine_matrix_equals_direct():
    from spectral.analysis.similarity import layer_cosine_matrix

    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 7, 5))
    m = layer_cosine_matrix(h)
    direct = np.mean([h[0, t] @ h[2, t] / np.linalg.norm(h[0, t]) / np.linalg.norm(h[2, t]) for t in range(1, 7)])
    assert m[0, 2] == pytest.approx(direct) and np.allclose(np.diag(m), 1.0) and np.allclose(m, m.T)


def test_unembedding_bands_span_the_svd_subspaces():
    """The Gram-matrix route gives the same band subspaces as a direct SVD of W_U."""
    from spectral.analysis.spectrum import unembedding_bands

    g = torch.Generator().manual_seed(0)
    W = (
        torch.randn(24, 300, generator=g, dtype=torch.float64)
        * torch.linspace(3, 0.2, 24, dtype=torch.float64)[:, None]
    )
    U, S, _ = torch.linalg.svd(W, full_matrices=False)
    ref = [U[:, i : i + 6] for i in range(0, 24, 6)]
    for got, want in zip(unembedding_bands(W, 4), ref, strict=True):
        torch.testing.assert_close(got @ got.T, want @ want.T, atol=1e-8, rtol=0)
