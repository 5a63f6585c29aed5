"""Degenerate moments: a site whose activations are identically zero (a pruned or zero-initialised
sub-layer), constant (a bias-only write) or of rank one. Every metric of ``compute_metrics`` and of
the battery's ``_site_metrics`` gives NaN where it is undefined and the right value where it is
defined, without raising or warning; a run with one zeroed MLP completes and says which site."""

import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from conftest import char_tokenizer

from spectral.analysis import battery, carrier, norms, spectrum
from spectral.analysis.intervals import bootstrap_weights
from spectral.analysis.metrics import MetricTable, compute_metrics, degenerate_sites
from spectral.config import AnalysisSpec, CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec
from spectral.stats import SiteStats, StatsBank

D, W, T, BUCKETS = 12, 10, 9, 5
SPEC = AnalysisSpec(n_boot=50, rogue_k=3, sublayer_spectra=True)


def _data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, v): activations (W, T, D) in float32 as a capture gives them, and the rank-1 direction."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(D, generator=g)
    v = v / v.norm()
    if kind == "zero":
        return torch.zeros(W, T, D), v
    if kind == "constant":
        return (3.0 * v).expand(W, T, D).clone(), v
    if kind == "rank1":  # positive amplitudes: every token along +v
        return (torch.rand(W, T, generator=g) + 0.5)[..., None] * v, v
    if kind == "full":
        return torch.randn(W, T, D, generator=g) + 2.0 * v, v
    raise ValueError(kind)


def _stats(h: torch.Tensor, inp: torch.Tensor | None = None) -> SiteStats:
    mask = torch.ones(W, T, dtype=torch.bool)
    mask[:, 0] = False
    center = h[:2][mask[:2]].double().mean(0)  # the calibration set: the first two windows
    med = float(h[mask].norm(dim=-1).median())
    st = SiteStats(D, BUCKETS, center=center, sink_threshold=10 * med, cross=inp is not None)
    for i in range(0, W, 4):  # a few batches, as a capture sends them
        sl = slice(i, i + 4)
        st.update(
            h[sl], mask[sl], torch.arange(W)[sl], torch.arange(W)[sl] % BUCKETS, inp=None if inp is None else inp[sl]
        )
    return st


def _bands(K: int) -> list[torch.Tensor]:
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    return [q[:, idx] for idx in np.array_split(np.arange(D), K)]


def _metric_funcs(bands: list[torch.Tensor]) -> dict:
    """Every moment function compute_metrics and _site_metrics call, by the metric it feeds."""
    robust = partial(carrier.carrier_energy_robust, drop_sinks=False)
    return {
        "norm_mean": norms.norm_mean,
        "norm_median": partial(norms.norm_quantile, q=0.5),
        "norm_p05": partial(norms.norm_quantile, q=0.05),
        "anisotropy": carrier.anisotropy,
        "centered_anisotropy": carrier.centered_anisotropy,
        "carrier_energy": carrier.carrier_energy,
        "spectrum_summary": spectrum.spectrum_summary,
        "eff_rank": spectrum.eff_rank,
        "participation_ratio": spectrum.participation_ratio,
        "isoscore": spectrum.isoscore,
        "seq_dc_share": lambda m: spectrum.seq_dc_share(m.spectrum.numpy()),
        "seq_ac_lowfreq_share": lambda m: spectrum.seq_ac_lowfreq_share(m.spectrum.numpy(), 0.1),
        "carrier_drift": lambda m: carrier.carrier_drift(m, m),
        "rogue_top1_share": carrier.rogue_top1_share,
        "anisotropy_norogue": partial(carrier.anisotropy_without_rogue, k=3),
        "top_pc_summary": carrier.top_pc_summary,
        "top_pc_energy": carrier.top_pc_energy,
        "carrier_pc_alignment": carrier.carrier_pc_alignment,
        "carrier_energy_zscored": partial(robust, zscore=True, drop_dims=0),
        "carrier_energy_norogue": partial(robust, zscore=False, drop_dims=3),
        "carrier_energy_nosink": partial(carrier.carrier_energy_robust, zscore=False, drop_dims=0, drop_sinks=True),
        "carrier_energy_robust": partial(carrier.carrier_energy_robust, zscore=True, drop_dims=3, drop_sinks=True),
        "band_energies": partial(spectrum.band_energies, bands=bands),
    }


def _call_all(m) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning is a failure: no "invalid value encountered" spam
        return {k: np.atleast_1d(np.asarray(f(m), dtype=float)) for k, f in _metric_funcs(_bands(4)).items()}


DEFINED_FOR_ZERO = {"norm_mean": 0.0, "norm_median": 0.0, "norm_p05": 0.0}


def test_zero_site_gives_nan_everywhere_but_the_norms():
    h, _ = _data("zero")
    got = _call_all(_stats(h).total())
    for name, v in got.items():
        if name in DEFINED_FOR_ZERO:
            assert v.tolist() == [DEFINED_FOR_ZERO[name]], name
        else:
            assert np.isnan(v).all(), (name, v)


def test_top_direction_of_a_zero_site_is_nan_not_an_arpack_error():
    m = _stats(_data("zero")[0]).total()
    assert torch.isnan(carrier.top_direction(m)).all()
    assert torch.isnan(carrier.carrier_direction(m)).all()


def test_constant_site_has_a_direction_but_no_variance():
    h, v = _data("constant")
    got = _call_all(_stats(h).total())
    for name in ("anisotropy", "carrier_energy", "top_pc_energy", "carrier_pc_alignment", "carrier_drift"):
        assert got[name][0] == pytest.approx(1.0, abs=1e-6), name
    assert got["norm_mean"][0] == pytest.approx(3.0, rel=1e-6)
    assert got["seq_dc_share"][0] == pytest.approx(1.0, abs=1e-6)
    expected_bands = np.array([float(((v.double() @ b) ** 2).sum()) for b in _bands(4)])
    np.testing.assert_allclose(got["band_energies"], expected_bands, atol=1e-6)
    for name in ("centered_anisotropy", "spectrum_summary", "eff_rank", "participation_ratio", "isoscore"):
        assert np.isnan(got[name]).all(), name
    for name in ("carrier_energy_zscored", "carrier_energy_robust"):  # unit-std scaling of a zero-variance dim
        assert np.isnan(got[name]).all(), name


def test_rank_one_site_gives_the_right_values():
    h, v = _data("rank1")
    m = _stats(h).total()
    got = _call_all(m)
    v64 = v.double()
    for name in ("anisotropy", "carrier_energy", "top_pc_energy", "carrier_pc_alignment", "carrier_drift"):
        assert got[name][0] == pytest.approx(1.0, abs=1e-5), name
    eff, pr, iso, pc1 = got["spectrum_summary"]
    assert (eff, pr, iso, pc1) == pytest.approx((1.0, 1.0, 0.0, 1.0), abs=1e-4)
    cc = (v64**2).numpy()  # every token along +v: CC_i = v_i²
    assert got["rogue_top1_share"][0] == pytest.approx(cc.max(), rel=1e-5)
    assert got["anisotropy_norogue"][0] == pytest.approx(np.sort(cc)[::-1][3:].sum(), rel=1e-4)
    assert got["carrier_energy_zscored"][0] == pytest.approx(1.0, abs=1e-5)  # z-scoring keeps a rank-1 cloud rank 1
    expected_bands = np.array([float(((v64 @ b) ** 2).sum()) for b in _bands(4)])
    np.testing.assert_allclose(got["band_energies"], expected_bands, atol=1e-5)
    # the centred cosine of a rank-1 cloud: h − c = (a − a_c) v, so every cosine is ±1
    mask = torch.ones(W, T, dtype=torch.bool)
    mask[:, 0] = False
    a = (h[mask].double() @ v64).numpy()
    c = float(h[:2][mask[:2]].double().mean(0) @ v64)
    s = np.sign(a - c)
    n = s.size
    assert got["centered_anisotropy"][0] == pytest.approx((s.sum() ** 2 - n) / (n * (n - 1)), rel=1e-6)
    # the sequence spectrum needs no variance: DC share from the amplitudes directly
    amp = h[:, 1:].double() @ v64
    P = (np.abs(np.fft.rfft(amp.numpy(), axis=1)) ** 2).sum(0)
    P[1 : P.size - (amp.shape[1] % 2 == 0)] *= 2  # one-sided Parseval weights (the Nyquist bin counts once)
    assert got["seq_dc_share"][0] == pytest.approx(P[0] / P.sum(), rel=1e-5)


def _bank(h_write: torch.Tensor, h_in: torch.Tensor) -> StatsBank:
    return StatsBank(
        ("resid_mid.0", "mlp_out.0"), {}, [_stats(h_in), _stats(h_write, inp=h_in)], inputs={"mlp_out.0": "resid_mid.0"}
    )


@pytest.mark.parametrize("kind", ["zero", "rank1", "constant"])
def test_compute_metrics_and_battery_site_metrics_on_degenerate_writes(kind):
    h_in, _ = _data("full")
    h_w, _ = _data(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = compute_metrics(_bank(h_w, h_in), "m", "trained", SPEC, seed=0)
        bank = _bank(h_w, h_in)
        m = battery.Measurement("trained", bank, {4: _bands(4)}, None, None, None, [])  # type: ignore[arg-type]
        out = battery.Rows("m", "trained")
        battery._site_metrics(out, m, SPEC, bootstrap_weights(W, SPEC.n_boot, 0))
    rows = {r.metric: r for r in table.rows + tuple(out.rows) if r.site == "mlp_out.0"}
    healthy = {r.metric: r for r in table.rows + tuple(out.rows) if r.site == "resid_mid.0"}
    assert all(math.isfinite(r.value) for k, r in healthy.items() if k != "rogue_top1_share"), healthy
    assert set(rows) >= {"anisotropy", "eff_rank", "carrier_energy_top_pc", "band_energy_k4_b0", "band_offdiag_k4"}
    finite = {k for k, r in rows.items() if math.isfinite(r.value)}
    if kind == "zero":
        # the permutation null depends on the window length alone
        assert finite == {"norm_mean", "norm_median", "norm_p05", "norm_p95", "sink_fraction", "seq_ac_lowfreq_null"}
        assert rows["norm_mean"].value == 0 and rows["norm_p95"].value == 0
        assert degenerate_sites(table, "trained") == {"mlp_out.0": "zero"}
    elif kind == "constant":
        assert {"eff_rank", "participation_ratio", "isoscore", "centered_anisotropy"}.isdisjoint(finite)
        assert rows["anisotropy"].value == pytest.approx(1.0, abs=1e-6)
        assert degenerate_sites(table, "trained") == {"mlp_out.0": "constant"}
    else:
        assert rows["eff_rank"].value == pytest.approx(1.0, abs=1e-4)
        assert rows["carrier_energy"].value == pytest.approx(1.0, abs=1e-5)
        assert "band_offdiag_k4" in finite
        assert degenerate_sites(table, "trained") == {}


def test_band_transfer_with_a_zero_input_is_nan_not_a_singular_solve():
    z = _stats(_data("zero")[0], inp=_data("zero")[0]).total()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(spectrum.band_transfer(z, z, _bands(4))).all()
        assert np.isnan(spectrum.offdiag_shares(z, z, [_bands(4), _bands(3)])).all()


def _zeroed_llama(tiny_model_dir, tmp_path, layer: int):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    with torch.no_grad():
        model.model.layers[layer].mlp.down_proj.weight.zero_()
    out = tmp_path / "pruned-llama"
    model.save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    return out


@pytest.mark.parametrize("backend", ["fast", "bridge"])
def test_run_with_a_zeroed_mlp_completes_with_nan_and_says_why(tiny_model_dir, tmp_path, sample_text, backend):
    from spectral.runner import run_experiment

    model_dir = _zeroed_llama(tiny_model_dir, tmp_path, layer=1)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(sample_text, encoding="utf-8")
    cfg = ExperimentConfig(
        model=ModelSpec(name=str(model_dir)),
        corpus=CorpusSpec(source=str(corpus), seq_len=16, max_seqs=10),
        capture=CaptureSpec(backend=backend, batch_size=4),
        analysis=AnalysisSpec(n_boot=50, intervention_windows=0, sublayer_spectra=True),
        controls=(),
        formats=(),
        out=str(tmp_path / "run"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_experiment(cfg, progress=False, log=lambda s: None)
    numeric = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not numeric, [str(w.message) for w in numeric]
    table = MetricTable.from_csv((res.run_dir / "metrics.csv").read_text(encoding="utf-8"))
    zero = {r.metric: r.value for r in table.rows if r.site == "mlp_out.1"}
    assert zero["norm_mean"] == 0 and zero["norm_median"] == 0
    for metric in (
        "anisotropy",
        "centered_anisotropy",
        "carrier_energy",
        "eff_rank",
        "participation_ratio",
        "isoscore",
        "carrier_energy_top_pc",
        "carrier_pc_alignment",
        "rogue_top1_share",
        "band_energy_k10_b0",
        "band_offdiag_k10",
        "seq_dc_share",
    ):
        assert math.isnan(zero[metric]), metric
    healthy = {r.metric: r.value for r in table.rows if r.site == "mlp_out.0"}
    assert all(math.isfinite(healthy[k]) for k in ("anisotropy", "carrier_energy", "eff_rank", "band_offdiag_k10"))
    assert degenerate_sites(table, "trained") == {"mlp_out.1": "zero"}
    report = (res.run_dir / "report.md").read_text(encoding="utf-8")
    assert "degenerate moments at 1 site(s)**: mlp_out.1 (zero" in report
