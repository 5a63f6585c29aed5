"""Streaming statistics == direct batch computations; merge is exact; planted signals recovered."""

import math

import numpy as np
import pytest
import torch

from spectral.analysis import carrier, norms, spectrum
from spectral.analysis.intervals import bootstrap_weights
from spectral.stats import SiteStats, StatsBank


def _data(n_win=12, T=17, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g) * 3
    h = mu + torch.randn(n_win, T, d, generator=g, dtype=torch.float64)
    return h


def _stream(h, batch, buckets=4, center=None, exclude_first=True):
    st = SiteStats(h.shape[-1], buckets, center, moment_dtype=torch.float64)
    for s in range(0, h.shape[0], batch):
        x = h[s : s + batch]
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        if exclude_first:
            mask[:, 0] = False
        st.update(x, mask, torch.arange(s, s + x.shape[0]), torch.arange(s, s + x.shape[0]) % buckets)
    return st


def test_streaming_equals_batch_computation():
    h = _data()
    center = h[:3, 1:].reshape(-1, 8).mean(0)
    st = _stream(h, batch=5, center=center)
    m = st.total()
    flat = h[:, 1:].reshape(-1, 8)  # position 0 excluded
    n = flat.shape[0]
    assert m.n == n
    assert torch.allclose(m.sum_h, flat.sum(0))
    assert torch.allclose(m.second, flat.T @ flat)
    # anisotropy: mean cosine over distinct pairs, explicitly
    u = flat / flat.norm(dim=1, keepdim=True)
    cos = u @ u.T
    direct = (cos.sum() - n) / (n * (n - 1))
    assert carrier.anisotropy(m) == pytest.approx(float(direct), rel=1e-10)
    c = flat - center
    cu = c / c.norm(dim=1, keepdim=True)
    direct_c = ((cu @ cu.T).sum() - n) / (n * (n - 1))
    assert carrier.centered_anisotropy(m) == pytest.approx(float(direct_c), rel=1e-10)
    assert torch.allclose(m.sum_u, u.sum(0)) and torch.allclose(m.sum_u2, (u * u).sum(0))
    assert torch.allclose(m.sum_cu, cu.sum(0))
    # carrier energy
    mu_hat = flat.mean(0) / flat.mean(0).norm()
    rho = float(((flat @ mu_hat) ** 2).sum() / (flat**2).sum())
    assert carrier.carrier_energy(m) == pytest.approx(rho, rel=1e-10)
    # effective rank and participation ratio from numpy's covariance
    ev = np.linalg.eigvalsh(np.cov(flat.numpy().T, bias=True))
    p = ev / ev.sum()
    assert spectrum.eff_rank(m) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-8)
    assert spectrum.participation_ratio(m) == pytest.approx(float(ev.sum() ** 2 / (ev**2).sum()), rel=1e-8)
    # norm mean and quantiles (histogram sketch: 0.5 % relative)
    nrm = flat.norm(dim=1).numpy()
    assert norms.norm_mean(m) == pytest.approx(nrm.mean(), rel=1e-12)
    for q in (0.05, 0.5, 0.95):
        assert norms.norm_quantile(m, q) == pytest.approx(np.quantile(nrm, q), rel=0.01)
    # sequence spectrum: Parseval-weighted one-sided |rfft|^2 / T along positions 1..T-1, summed over
    # windows and dims (numpy's rfft as the reference)
    x = h[:, 1:].numpy()
    T = x.shape[1]
    X2 = (np.abs(np.fft.rfft(x, axis=1)) ** 2).sum(axis=(0, 2))
    w = np.full(X2.size, 2.0)
    w[0] = 1.0
    if T % 2 == 0:
        w[-1] = 1.0
    P = w * X2 / T
    assert np.allclose(spectrum.power_spectrum(m), P)
    assert spectrum.seq_dc_share(m.spectrum.numpy()) == pytest.approx(P[0] / P.sum())
    k = max(1, int(0.1 * (P.size - 1)))
    assert spectrum.seq_ac_lowfreq_share(m.spectrum.numpy(), 0.1) == pytest.approx(P[1 : k + 1].sum() / P[1:].sum())


def test_parseval():
    h = _data(n_win=3, T=33)
    m = _stream(h, batch=3).total()
    x = h[:, 1:].numpy()  # T' = 32 (even): DC and Nyquist once, others twice
    T = x.shape[1]
    P = spectrum.power_spectrum(m)  # Parseval-weighted: the bins sum to the energy
    assert T % 2 == 0 and P.sum() == pytest.approx(float((x**2).sum()), rel=1e-10)
    h = _data(n_win=3, T=34)  # T' = 33 (odd): no Nyquist bin
    P = spectrum.power_spectrum(_stream(h, batch=3).total())
    assert P.sum() == pytest.approx(float((h[:, 1:].numpy() ** 2).sum()), rel=1e-10)


def test_seq_dc_share_is_the_energy_share_of_the_window_mean():
    """seq_dc_share = Σ_windows T‖mean_t h‖² / Σ‖h‖², computed directly; it does not depend on the order
    of positions (a carrier measure), while the low-frequency share does."""
    h = _data(n_win=4, T=29) + torch.linspace(0, 3, 29, dtype=torch.float64)[None, :, None]  # a slow trend
    st = _stream(h, batch=2)
    x = h[:, 1:]
    direct = float((x.shape[1] * x.mean(1).pow(2).sum(-1)).sum() / x.pow(2).sum())
    assert spectrum.seq_dc_share(st.total().spectrum.numpy()) == pytest.approx(direct, rel=1e-10)
    perm = torch.cat([h[:, :1], h[:, 1:][:, torch.randperm(28, generator=torch.Generator().manual_seed(0))]], 1)
    shuffled = _stream(perm, batch=2).total().spectrum.numpy()
    assert spectrum.seq_dc_share(shuffled) == pytest.approx(direct, rel=1e-10)
    low = spectrum.seq_ac_lowfreq_share(st.total().spectrum.numpy())
    assert low > spectrum.seq_ac_lowfreq_share(shuffled) + 0.2


@pytest.mark.parametrize("T", [64, 65])
def test_iid_positions_match_the_permutation_null(T):
    """For i.i.d. positions the low-frequency share matches its exact permutation null within its CI."""
    g = torch.Generator().manual_seed(T)
    W, d = 40, 6
    h = torch.randn(W, T + 1, d, generator=g, dtype=torch.float64) + 2.0  # a carrier (DC) plus white noise
    st = SiteStats(d, 8, moment_dtype=torch.float64)
    mask = torch.ones(W, T + 1, dtype=torch.bool)
    mask[:, 0] = False
    st.update(h, mask, torch.arange(W), torch.arange(W) * 8 // W)
    est = spectrum.spectrum_jackknife(st, spectrum.seq_ac_lowfreq_share, 0.95)
    null = spectrum.seq_ac_lowfreq_null(T)
    assert est.ci_low <= null <= est.ci_high
    assert est.ci_high - est.ci_low < 0.05
    assert null == pytest.approx(6 / (T - 1), rel=1e-12)  # 3 low bins of weight 2 over a total weight of T - 1


@pytest.mark.parametrize("batch", [1, 3, 12])
def test_batch_size_invariance(batch):
    h = _data()
    ref = _stream(h, batch=4).total()
    m = _stream(h, batch=batch).total()
    assert torch.allclose(m.second, ref.second) and torch.allclose(m.sum_u, ref.sum_u)
    assert torch.equal(m.norm_hist, ref.norm_hist)
    assert np.allclose(m.spectrum.numpy(), ref.spectrum.numpy())


def test_merge_equals_one_pass_and_state_roundtrip():
    h = _data(n_win=10)
    one = _stream(h, batch=3)
    a = SiteStats(8, 4, moment_dtype=torch.float64)
    b = SiteStats(8, 4, moment_dtype=torch.float64)
    mask = torch.ones(h.shape[:2], dtype=torch.bool)
    mask[:, 0] = False
    a.update(h[:6], mask[:6], torch.arange(0, 6), torch.arange(0, 6) % 4)
    b.update(h[6:], mask[6:], torch.arange(6, 10), torch.arange(6, 10) % 4)
    b2 = SiteStats.from_state_dict(b.state_dict())
    merged = a.merge(b2)
    for name in ("count", "sum_h", "sum_u", "second", "norm_hist", "spectrum"):
        assert torch.allclose(getattr(merged, name).double(), getattr(one, name).double()), name
    t1, t2 = merged.window_table(), one.window_table()
    i1, r1, i2, r2 = t1.index, t1.rows, t2.index, t2.rows
    assert np.array_equal(i1, i2) and np.allclose(r1, r2, equal_nan=True)  # NaN: no centre, no carrier columns
    bank = StatsBank(("x",), {}, [merged])
    again = StatsBank.from_state_dict(bank.state_dict())
    assert torch.allclose(again["x"].second, one.second)


def _accumulators(st: SiteStats) -> dict[str, torch.Tensor]:
    from spectral.stats import EXTRA_FIELDS, MOMENT_FIELDS

    out = {n: getattr(st, n) for n in (*MOMENT_FIELDS, *EXTRA_FIELDS, "spectrum", "spectrum_windows")}
    out.update({f"window_rows{i}": r for i, r in enumerate(st._win_rows)})
    return {n: t for n, t in out.items() if t is not None}


def test_state_restores_onto_the_device_given_or_recorded():
    """from_state_dict keeps the device: the one passed in, else the one the state records (CPU for old
    states or a device this machine lacks); a resumed capture puts its bank on the model's device."""
    from types import SimpleNamespace

    from spectral.conditions import ConditionCapture

    h = _data(n_win=8)
    h[2, 5] *= 50  # one sink token, so the lazily allocated sink moments exist too
    st = SiteStats(8, 4, h.mean((0, 1)), sink_threshold=float(h.norm(dim=-1).median()) * 5, cross=True)
    mask = torch.ones(h.shape[:2], dtype=torch.bool)
    st.update(h, mask, torch.arange(8), torch.arange(8) % 4, inp=h.flip(-1))
    state = st.state_dict()
    assert state["device"] == "cpu" and st.sink_second is not None and st.spectrum is not None
    names = set(_accumulators(st))
    assert {"second", "cross", "sink_second", "spectrum", "window_rows0"} <= names

    meta = torch.device("meta")
    for got in (
        SiteStats.from_state_dict(state, device="meta"),  # the device passed in
        SiteStats.from_state_dict({**state, "device": "meta"}),  # the device recorded
        StatsBank.from_state_dict(StatsBank(("x",), {}, [st]).state_dict(), meta)["x"],  # the bank passes it on
    ):
        assert got.device == meta and set(_accumulators(got)) == names
        assert all(t.device == meta for t in _accumulators(got).values()), _accumulators(got)
        assert got.center is not None and got.center.device.type == "cpu"  # centres stay on the CPU
    old = SiteStats.from_state_dict({k: v for k, v in state.items() if k != "device"})  # saved before devices
    assert old.device.type == "cpu" and torch.equal(old.second, st.second) and torch.equal(old.cross, st.cross)
    if not torch.cuda.is_available():
        assert SiteStats.from_state_dict({**state, "device": "cuda:0"}).device.type == "cpu"

    # the resume path: the bank goes to the model's device
    fake = SimpleNamespace(model=SimpleNamespace(device=meta), _check=lambda s: None, _probes=lambda: {})
    resume = {"bank": StatsBank(("x",), {}, [st]).state_dict(), "probes": {}, "batches_done": 2, "complete": False}
    ConditionCapture.load_state_dict(fake, resume)  # type: ignore[arg-type]
    assert fake.bank["x"].device == meta and all(t.device == meta for t in _accumulators(fake.bank["x"]).values())
    assert fake.batches_done == 2


def test_merge_refuses_different_centres():
    a, b = SiteStats(4, 2, torch.zeros(4)), SiteStats(4, 2, torch.ones(4))
    with pytest.raises(ValueError, match="centred"):
        a.merge(b)


def test_planted_carrier_share():
    # h = a * mu + noise, a ~ N(2, 0.5^2), isotropic noise of variance s2 per dim: the energy along
    # mu is E[a^2] + s2 and the total is E[a^2] + d * s2, so rho = (E[a^2] + s2) / (E[a^2] + d * s2)
    g = torch.Generator().manual_seed(3)
    d, n, s2 = 16, 20000, 0.05
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = 1.0
    a = 2.0 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    h = a[:, None] * mu + math.sqrt(s2) * torch.randn(n, d, generator=g, dtype=torch.float64)
    st = SiteStats(d, 2)
    st.update(h[None], torch.ones(1, n, dtype=torch.bool), torch.tensor([0]), torch.tensor([0]))
    ea2 = 4.0 + 0.25
    expected = (ea2 + s2) / (ea2 + d * s2)
    assert carrier.carrier_energy(st.total()) == pytest.approx(expected, rel=0.02)


def test_planted_growth_rate_and_dominant_frequency():
    g_true, d, T, W = 1.08, 6, 32, 40
    gen = torch.Generator().manual_seed(5)
    layers = list(range(6))
    tables = []
    for layer in layers:
        direction = torch.randn(W, T, d, generator=gen, dtype=torch.float64)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        h = 10 * g_true**layer * direction
        st = SiteStats(d, 4)
        st.update(h, torch.ones(W, T, dtype=torch.bool), torch.arange(W), torch.arange(W) % 4)
        tables.append(st.window_table().rows)
    est = norms.growth_rate(layers, tables, bootstrap_weights(W, 200, 0), 0.95)
    assert est.value == pytest.approx(g_true, rel=1e-9)
    assert est.ci_low <= g_true <= est.ci_high
    # a cosine at frequency 5 along the sequence dominates P(f)
    t = torch.arange(T, dtype=torch.float64)
    sig = torch.cos(2 * math.pi * 5 * t / T)[None, :, None] * torch.ones(W, T, d, dtype=torch.float64)
    st = SiteStats(d, 4)
    st.update(
        sig + 0.01 * torch.randn(W, T, d, generator=gen, dtype=torch.float64),
        torch.ones(W, T, dtype=torch.bool),
        torch.arange(W),
        torch.arange(W) % 4,
    )
    assert int(np.argmax(spectrum.power_spectrum(st.total()))) == 5


def test_spectrum_summary_matches_single_functions():
    from spectral.analysis.spectrum import isoscore

    m = _stream(_data(), batch=4).total()
    eff, pr, iso, pc1 = spectrum.spectrum_summary(m)
    assert eff == pytest.approx(spectrum.eff_rank(m)) and pr == pytest.approx(spectrum.participation_ratio(m))
    assert iso == pytest.approx(isoscore(m))
    # LLM-Microscope's anisotropy, as its calculate_anisotropy_torch computes it: SVD of the centred tokens
    h = _data()[:, 1:].reshape(-1, 8)  # the tokens the moments count (position 0 left out)
    s = torch.linalg.svdvals(h - h.mean(0, keepdim=True)) ** 2
    assert pc1 == pytest.approx(float(s.max() / s.sum()), rel=1e-6)


def test_float32_packed_moments_agree_with_float64():
    """The default storage (float32 buckets, packed upper triangles) against float64 storage on
    activations with a large common component and norms ~3e4 (Gemma 3's scale)."""
    g = torch.Generator().manual_seed(3)
    d, n_w, T = 48, 24, 33
    carrier = torch.randn(d, generator=g, dtype=torch.float64) * 3e4 / d**0.5
    h = carrier + 300.0 * torch.randn(n_w, T, d, generator=g, dtype=torch.float64)
    mask = torch.ones(n_w, T, dtype=torch.bool)
    mask[:, 0] = False
    center = h[:4].reshape(-1, d).mean(0)
    out = {}
    for dt in (torch.float32, torch.float64):
        st = SiteStats(d, 5, center, sink_threshold=1e9, moment_dtype=dt)
        for i in range(0, n_w, 8):
            st.update(h[i : i + 8], mask[i : i + 8], torch.arange(i, i + 8), torch.arange(i, i + 8) % 5)
        out[dt] = st
    assert out[torch.float32].second.dtype == torch.float32
    assert out[torch.float32].second.shape == (5, d * (d + 1) // 2)
    a, b = out[torch.float32].total(), out[torch.float64].total()
    torch.testing.assert_close(a.second, a.second.T)  # unpacked symmetric
    torch.testing.assert_close(a.second, b.second, rtol=1e-6, atol=1e-6 * float(b.second.diagonal().max()))
    cov_a = a.second / a.n - torch.outer(a.sum_h, a.sum_h) / a.n**2
    cov_b = b.second / b.n - torch.outer(b.sum_h, b.sum_h) / b.n**2
    ev_a, ev_b = torch.linalg.eigvalsh(cov_a), torch.linalg.eigvalsh(cov_b)
    # the centred spectrum survives float32 storage although ‖mean‖ / std ~ 100
    torch.testing.assert_close(ev_a, ev_b, rtol=1e-4, atol=1e-5 * float(ev_b.max()))
    loo_a, loo_b = out[torch.float32].leave_one_out(2), out[torch.float64].leave_one_out(2)
    torch.testing.assert_close(loo_a.second, loo_b.second, rtol=1e-6, atol=1e-6 * float(b.second.diagonal().max()))


def test_float64_views_are_cached_for_a_few_sites_only():
    """The float64 views (bucket sums, total, leave-one-out) are an LRU over sites: reading many sites
    keeps at most CACHED_SITES of them, and an evicted site gives the same numbers when read again."""
    from spectral import stats

    h = _data()
    sites = [_stream(h * (i + 1), 4) for i in range(stats.CACHED_SITES + 3)]
    first = sites[0].total().second.clone(), sites[0].leave_one_out(1).second.clone()
    for st in sites[1:]:
        st.total()
        st.leave_one_out(0)
    cached = [st for st in sites if st._fields is not None or st._total is not None or st._loo]
    assert len(cached) == stats.CACHED_SITES and sites[0] not in cached and sites[-1] in cached
    assert torch.equal(sites[0].total().second, first[0])
    assert torch.equal(sites[0].leave_one_out(1).second, first[1])


@pytest.mark.parametrize("moment_dtype", [torch.float32, torch.float64])
def test_cross_moment_of_a_write_equals_direct(moment_dtype):
    """Σ w xᵀ of a write and the stream it read (per-bucket float32 products on the CPU, per-window in float64)."""
    h = _data(n_win=7).float()
    w = torch.randn_like(h)
    st = SiteStats(8, 3, cross=True, moment_dtype=moment_dtype)
    mask = torch.ones(h.shape[:2], dtype=torch.bool)
    mask[:, 0] = False
    for s in range(0, 7, 3):
        st.update(
            w[s : s + 3],
            mask[s : s + 3],
            torch.arange(s, min(7, s + 3)),
            torch.arange(s, min(7, s + 3)) % 3,
            inp=h[s : s + 3],
        )
    direct = w[:, 1:].reshape(-1, 8).double().T @ h[:, 1:].reshape(-1, 8).double()
    assert st.cross is not None
    torch.testing.assert_close(st.cross.double().sum(0), direct, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("moment_dtype", [torch.float32, torch.float64])
def test_band_energy_jackknife_equals_the_generic_jackknife(moment_dtype):
    """Per-bucket linear energies give the same values and intervals as re-evaluating band_energies per bucket."""
    from functools import partial

    from spectral.analysis.intervals import jackknife_many

    h = _data(n_win=10, d=8).float() * 5
    center = h[:2, 1:].reshape(-1, 8).mean(0)
    st = SiteStats(8, 4, center, moment_dtype=moment_dtype)
    mask = torch.ones(h.shape[:2], dtype=torch.bool)
    mask[:, 0] = False
    for s in range(0, 10, 3):
        st.update(h[s : s + 3], mask[s : s + 3], torch.arange(s, min(10, s + 3)), torch.arange(s, min(10, s + 3)) % 4)
    W = torch.randn(8, 50, generator=torch.Generator().manual_seed(3))
    sets = {2: spectrum.unembedding_bands(W, 2), 4: spectrum.unembedding_bands(W, 4)}
    got = spectrum.band_energy_jackknife(st, sets, 0.95)
    for K, bands in sets.items():
        want = jackknife_many([st], partial(spectrum.band_energies, bands=bands), 0.95)
        for a, b in zip(got[K], want, strict=True):
            assert a.value == pytest.approx(b.value, rel=1e-5)
            assert a.ci_low == pytest.approx(b.ci_low, rel=1e-4, abs=1e-6)
            assert a.ci_high == pytest.approx(b.ci_high, rel=1e-4, abs=1e-6)


def test_spectrum_slope_equals_the_generic_jackknife():
    """The per-bucket-spectrum jackknife of a spectral share's slope == jackknife over the sites' Moments views."""
    from spectral.analysis.intervals import jackknife

    sts = [_stream(_data(n_win=10, T=17, seed=s) * (1 + s), batch=3) for s in range(4)]
    xs = np.arange(4.0)

    def slope(*ms):
        return float(np.polyfit(xs, [spectrum.seq_ac_lowfreq_share(m.spectrum.numpy()) for m in ms], 1)[0])

    want = jackknife(sts, slope, 0.9)
    got = spectrum.spectrum_slope_jackknife(sts, list(xs), spectrum.seq_ac_lowfreq_share, 0.9)
    assert got.value == pytest.approx(want.value, rel=1e-12)
    assert got.ci_low == pytest.approx(want.ci_low, rel=1e-10) and got.ci_high == pytest.approx(want.ci_high, rel=1e-10)


def test_result_tables_are_labelled():
    """window_table() names its columns: column("sum_norm") is Σ‖h‖ per window, in window order."""
    h = torch.randn(3, 5, 4, dtype=torch.float64)
    st = SiteStats(4, 2, moment_dtype=torch.float64)
    st.update(h, torch.ones(3, 5, dtype=torch.bool), torch.tensor([2, 0, 1]), torch.tensor([1, 0, 0]))
    t = st.window_table()
    assert t.index.tolist() == [0, 1, 2] and t.columns[0] == "count"
    np.testing.assert_allclose(t.column("sum_norm"), h.norm(dim=-1).sum(1).numpy()[[1, 2, 0]])


def test_principal_basis_fixes_the_null_space_and_energies_stay_nonnegative():
    """Bands cut from a rank-deficient covariance's eigenvectors changed with rounding (issue 24: a sharded run
    against the single one); the numerical null space is now spanned by a fixed basis, so a rounding-level
    perturbation leaves every band's span in place. And a bucket's band energy is never below 0."""
    from spectral.analysis.spectrum import principal_basis

    g = torch.Generator().manual_seed(3)
    X = torch.randn(200, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 12, generator=g, dtype=torch.float64)
    C = X.T @ X / 200  # rank 5 in 12 dimensions
    noise = torch.randn(12, 12, generator=g, dtype=torch.float64) * 1e-12
    P1, P2 = principal_basis(C), principal_basis(C + noise + noise.T)
    assert torch.allclose(P1.T @ P1, torch.eye(12, dtype=torch.float64), atol=1e-10)
    for lo, hi in ((0, 5), (5, 8), (8, 12)):  # the span of every band of columns is the same
        A, B = P1[:, lo:hi], P2[:, lo:hi]
        assert torch.allclose(A @ A.T, B @ B.T, atol=1e-6), (lo, hi)
    from spectral.stats import _triu_flat

    st = SiteStats(12, 2)
    h = torch.zeros(2, 3, 12)
    h[..., 0] = 1.0  # energy only along e0: the other directions hold 0
    st.update(h, torch.ones(2, 3, dtype=torch.bool), torch.arange(2), torch.arange(2))
    tiny = (1e-9 * torch.eye(12)).reshape(-1)[_triu_flat(12, "cpu")]  # packed like the stored moments
    st.second -= tiny.to(st.second.dtype)  # what float32 rounding of the centred part can leave
    q = st.bucket_quadratic(torch.eye(12))
    assert (q >= 0).all() and float(q[:, 0].sum()) == pytest.approx(6.0)


def test_spectrum_without_sinks_matches_a_direct_computation():
    """spectrum_nosink: each window's sink tokens (‖h‖ above the threshold) set to the mean of its other tokens,
    then the same Parseval-weighted power as the spectrum; windows without a sink add their plain power; it
    merges and survives a state round trip, and a state saved without it does not pretend to have it."""
    torch.manual_seed(3)
    n_win, T, d, B = 8, 12, 6, 4
    h = torch.randn(n_win, T, d, dtype=torch.float64)
    h[1, 4] *= 40
    h[1, 9] *= 30
    h[6, 0] *= 50
    thr = float(h.norm(dim=-1).median()) * 10
    mask = torch.ones(n_win, T, dtype=torch.bool)
    bucket = torch.arange(n_win) % B
    st = SiteStats(d, B, sink_threshold=thr, moment_dtype=torch.float64)
    st.update(h[:5], mask[:5], torch.arange(5), bucket[:5])
    other = SiteStats(d, B, sink_threshold=thr, moment_dtype=torch.float64)
    other.update(h[5:], mask[5:], torch.arange(5, n_win), bucket[5:])
    st.merge(other)

    want = np.zeros((B, T // 2 + 1))
    plain = np.zeros_like(want)
    w = np.full(T // 2 + 1, 2.0 / T)
    w[0] = w[-1] = 1.0 / T
    for i in range(n_win):
        x = h[i].numpy()
        plain[int(bucket[i])] += (np.abs(np.fft.rfft(x, axis=0)) ** 2).sum(1) * w
        sink = np.linalg.norm(x, axis=1) > thr
        y = x.copy()
        y[sink] = x[~sink].mean(0)
        want[int(bucket[i])] += (np.abs(np.fft.rfft(y, axis=0)) ** 2).sum(1) * w
    assert st.spectrum_nosink is not None
    np.testing.assert_allclose(st.spectrum.numpy(), plain, rtol=1e-10)
    np.testing.assert_allclose(st.spectrum_nosink.numpy(), want, rtol=1e-10)
    assert not np.allclose(want, plain)  # the sinks' power is gone
    back = SiteStats.from_state_dict(st.state_dict())
    assert back.spectrum_nosink is not None and torch.equal(back.spectrum_nosink, st.spectrum_nosink)
    old = SiteStats.from_state_dict({k: v for k, v in st.state_dict().items() if k != "spectrum_nosink"})
    old.update(h[:2], mask[:2], torch.arange(2), bucket[:2])
    assert old.spectrum_nosink is None and not old.spectrum_nosink_ok
    assert SiteStats(d, B, moment_dtype=torch.float64).spectrum_nosink is None  # no sink threshold: no variant
