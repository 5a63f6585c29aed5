"""The fast backend (plain module hooks, SDPA, shared weights) against the TransformerBridge path."""

import numpy as np
import pytest
import torch
from conftest import LLAMA2XS, needs_shared

from spectral.capture import accumulate, all_sites, new_bank
from spectral.config import CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec
from spectral.corpus import make_windows
from spectral.errors import ConfigError
from spectral.models import load_model


def _banks(model, windows, sites):
    out = {}
    for backend in ("bridge", "fast"):
        bank = new_bank(model, sites, 3)
        accumulate(model, windows, bank, 4, True, None, backend=backend)
        out[backend] = bank
    return out


def _compare(model, windows):
    sites = tuple(s for s in all_sites(model.arch) if s.split(".")[0] in ("embed", "resid_pre", "resid_post", "final"))
    banks = _banks(model, windows, sites)
    for s in sites:
        a, b = banks["bridge"][s].total(), banks["fast"][s].total()
        assert a.n == b.n > 0
        scale = float(a.second.diagonal().sum())
        torch.testing.assert_close(b.sum_h, a.sum_h, rtol=1e-4, atol=1e-5 * a.n**0.5 * scale**0.5 / a.n**0.5)
        torch.testing.assert_close(b.second, a.second, rtol=1e-4, atol=1e-5 * scale)
        assert b.sum_norm == pytest.approx(a.sum_norm, rel=1e-5)
        ia, ra = banks["bridge"][s].window_table()
        ib, rb = banks["fast"][s].window_table()
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(rb, ra, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox", "bert"])
def test_fast_backend_equals_the_bridge(family, tiny_model_dir, tmp_path, sample_text):
    model = load_model(ModelSpec(name=str(tiny_model_dir(family))))
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=24, max_seqs=8))
    _compare(model, windows)
    from spectral.fastpath import plain_model

    base = plain_model(model)
    assert base.config._attn_implementation == "sdpa"
    shared = {p.data_ptr() for p in model.hf_model.parameters()}
    assert all(p.data_ptr() in shared for p in base.parameters())  # the same weights, not a copy


@needs_shared
def test_fast_backend_equals_the_bridge_on_a_trained_model(tmp_path, sample_text):
    model = load_model(ModelSpec(name=str(LLAMA2XS)))
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    _compare(model, make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=32, max_seqs=8)))


def test_fast_backend_runs_the_battery_and_refuses_sublayer_sites(tiny_model_dir, tmp_path, sample_text):
    from spectral.runner import run_experiment

    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    base = ExperimentConfig(
        model=ModelSpec(name=str(tiny_model_dir("llama"))),
        corpus=CorpusSpec(source=str(p), seq_len=16, max_seqs=8),
        capture=CaptureSpec(sites=("embed", "resid_pre.*", "resid_post.*", "final"), batch_size=4),
        controls=(),
        formats=(),
    )
    tables = {}
    for backend in ("bridge", "fast"):
        cfg = base.__class__(
            **{**base.__dict__, "capture": CaptureSpec(**{**base.capture.__dict__, "backend": backend})}
        )
        cfg = cfg.__class__(**{**cfg.__dict__, "out": str(tmp_path / backend)})
        tables[backend] = {
            (r.site, r.metric): r for r in run_experiment(cfg, progress=False, log=lambda s: None).metrics.rows
        }
    fast, bridge = tables["fast"], tables["bridge"]
    assert not any(m.startswith("head_") for _, m in fast)  # head metrics need the bridge
    for key, r in fast.items():
        assert key in bridge
        assert r.value == pytest.approx(bridge[key].value, rel=1e-3, abs=1e-4), key
    with pytest.raises(ConfigError, match="backend 'fast' captures embed"):
        cfg = base.__class__(**{**base.__dict__, "capture": CaptureSpec(sites=("all",), backend="fast")})
        run_experiment(cfg.__class__(**{**cfg.__dict__, "out": str(tmp_path / "x")}), progress=False)
