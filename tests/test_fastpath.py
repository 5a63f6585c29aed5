"""The fast backend (plain module hooks, SDPA, shared weights) against the TransformerBridge path.

The bridge is the reference: every site's statistics, raw activations and the head hooks (z,
pattern) of the fast path must equal the bridge's to fp32 tolerance, on padded batches too.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LLAMA2XS, needs_shared

from spectral import fastpath
from spectral.backends import backend_of
from spectral.capture import accumulate, all_sites, forward, hook_name, hooked, new_bank
from spectral.config import CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec
from spectral.corpus import make_windows, pad_batch
from spectral.errors import ConfigError
from spectral.models import LoadedModel, load_model

DECODERS = ["gpt2", "llama", "qwen2", "gemma3", "neox", "neox_seq"]
RESIDUAL = ("embed", "resid_pre", "resid_post", "final")


def _banks(model, windows, sites):
    out = {}
    for backend in ("bridge", "fast"):
        bank = new_bank(model, sites, 3)
        accumulate(model, windows, bank, 4, True, None, backend=backend_of(model, backend))
        out[backend] = bank
    return out


def _compare(model, windows, sites=None):
    sites = sites or all_sites(model.arch)
    banks = _banks(model, windows, sites)
    for s in sites:
        a, b = banks["bridge"][s].total(), banks["fast"][s].total()
        assert a.n == b.n > 0
        scale = float(a.second.diagonal().sum())
        torch.testing.assert_close(b.sum_h, a.sum_h, rtol=1e-4, atol=1e-5 * scale**0.5)
        torch.testing.assert_close(b.second, a.second, rtol=1e-4, atol=1e-5 * scale)
        assert b.sum_norm == pytest.approx(a.sum_norm, rel=1e-5)
        ta, tb = banks["bridge"][s].window_table(), banks["fast"][s].window_table()
        ia, ra, ib, rb = ta.index, ta.rows, tb.index, tb.rows
        np.testing.assert_array_equal(ia, ib)
        # per-window sums; the update-alignment cosine of a post-LN stream takes the difference of two
        # nearly equal vectors, so it gets an absolute tolerance (its sums are O(1) per window)
        np.testing.assert_allclose(rb, ra, rtol=1e-4, atol=1e-4)


def _shares_weights(model: LoadedModel) -> None:
    base = fastpath.plain_model(model)
    shared = {p.data_ptr() for p in model.hf_model.parameters()}
    assert all(p.data_ptr() in shared for p in base.parameters())  # the same weights, not a copy


@pytest.mark.parametrize("family", [*DECODERS, "bert"])
def test_fast_statistics_equal_the_bridge(family, tiny_model_dir, tmp_path, sample_text):
    model = load_model(ModelSpec(name=str(tiny_model_dir(family))))
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=24, max_seqs=8))
    full = family != "bert"
    assert (fastpath.supports(model) is None) == full
    sites = all_sites(model.arch) if full else tuple(s for s in all_sites(model.arch) if s.split(".")[0] in RESIDUAL)
    fastpath.check_sites(model, sites)
    _compare(model, windows, sites)
    _shares_weights(model)
    impl = fastpath.plain_model(model).config._attn_implementation
    assert impl == (fastpath.ATTN_IMPLEMENTATION if full else "sdpa")


def _padded_batch(model, sample_text, lengths=(24, 15, 24, 9)):
    ids = model.tokenizer(sample_text, add_special_tokens=False)["input_ids"]
    seqs = [ids[7 * i : 7 * i + n] for i, n in enumerate(lengths)]
    return pad_batch(seqs, model.tokenizer.pad_token_id, list(range(len(lengths))))


def _collect(model, batch, names, backend):
    got: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(x, hook):
            got[name] = x.detach().float().clone()
            return x

        return fn

    with hooked(model, [(n, keep(n)) for n in names], backend_of(model, backend)):
        forward(model, batch, backend=backend_of(model, backend))
    assert set(got) == set(names)
    return got


def _head_names(model):
    return [f"blocks.{layer}.attn.hook_{k}" for layer in range(model.arch.n_layers) for k in ("z", "pattern")]


@pytest.mark.parametrize("family", DECODERS)
def test_fast_activations_and_heads_equal_the_bridge_on_a_padded_batch(family, tiny_model_dir, sample_text):
    model = load_model(ModelSpec(name=str(tiny_model_dir(family))))
    arch = model.arch
    batch = _padded_batch(model, sample_text)
    sites = all_sites(arch)
    names = [hook_name(s, arch) for s in sites] + _head_names(model)
    ref = _collect(model, batch, names, "bridge")
    valid = batch.attention_mask.bool()
    for heads in (True, False):  # the pattern hooks switch that layer's attention to the explicit softmax
        wanted = names if heads else [hook_name(s, arch) for s in sites]
        got = _collect(model, batch, wanted, "fast")
        for n in wanted:
            a, b = ref[n], got[n]
            assert a.shape == b.shape, n
            if "pattern" not in n:  # a padded query that sees no key (sliding window): 0 in SDPA, uniform in eager
                a, b = a[valid], b[valid]
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()), msg=n)
    act = {s: got[hook_name(s, arch)] for s in sites}
    for layer in range(arch.n_layers):  # the residual identities, on the fast path
        pre, attn, mlp, post = (act[f"{k}.{layer}"] for k in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        tol = dict(rtol=1e-5, atol=1e-5 * float(post.abs().max()))
        if arch.parallel_residual:
            assert f"resid_mid.{layer}" not in act
            torch.testing.assert_close(post, pre + attn + mlp, **tol)
        else:
            mid = act[f"resid_mid.{layer}"]
            torch.testing.assert_close(mid, pre + attn, **tol)
            torch.testing.assert_close(post, mid + mlp, **tol)
        pattern = ref[f"blocks.{layer}.attn.hook_pattern"]  # (B, H, Tq, Tk)
        assert pattern.shape == (len(batch.input_ids), *pattern.shape[1:2], valid.shape[1], valid.shape[1])
        to_pad = valid[:, None, :, None] & ~valid[:, None, None, :]  # a real query, a padded key
        assert float(pattern.masked_select(to_pad).abs().max()) == 0.0
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
        z = ref[f"blocks.{layer}.attn.hook_z"]
        assert z.shape[:2] == valid.shape and z.ndim == 4
    if family == "gemma3":  # the sliding layers see at most `sliding_window` keys, the full layer more
        window = model.hf_model.config.sliding_window
        seen = [int((ref[f"blocks.{i}.attn.hook_pattern"] > 0).sum(-1).transpose(1, 2)[valid].max()) for i in range(3)]
        assert seen[0] == seen[2] == window < seen[1]
        scale = model.hf_model.config.hidden_size**0.5  # the embedding's sqrt(d) scale, in both backends
        table = fastpath.plain_model(model).get_input_embeddings().weight
        torch.testing.assert_close(act["embed"], table[batch.input_ids].float() * scale)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_hooks_that_edit_act_like_the_bridge(family, tiny_model_dir, sample_text):
    """A returned tensor replaces the activation (sites, z and pattern), as on the bridge."""
    model = load_model(ModelSpec(name=str(tiny_model_dir(family))))
    batch = _padded_batch(model, sample_text)

    def ablate_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0.0
        return z

    def attend_to_self(p, hook):
        p = p.clone()
        p[:, 0] = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        return p

    edits = [
        ("blocks.0.attn.hook_pattern", attend_to_self),
        ("blocks.1.attn.hook_z", ablate_head),
        (hook_name("resid_mid.1", model.arch), lambda x, hook: 0.5 * x),
        (hook_name("mlp_out.2", model.arch), lambda x, hook: -x),
    ]
    out: dict[str, torch.Tensor] = {}
    for backend in ("bridge", "fast"):

        def final(x, hook, backend=backend):
            out[backend] = x.detach().float().clone()
            return x

        b = backend_of(model, backend)
        with hooked(model, edits, b), hooked(model, [(hook_name("final", model.arch), final)], b):
            forward(model, batch, backend=b)
    plain = _collect(model, batch, ["ln_final.hook_out"], "fast")["ln_final.hook_out"]
    assert not torch.allclose(plain, out["fast"])  # the edits changed the output
    valid = batch.attention_mask.bool()
    a, b = out["bridge"][valid], out["fast"][valid]
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_head_hooks_leave_no_state_and_cost_nothing_unregistered(tiny_model_dir, sample_text, monkeypatch):
    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    batch = _padded_batch(model, sample_text)
    calls = []
    real = fastpath._eager
    monkeypatch.setattr(fastpath, "_eager", lambda *a, **k: calls.append(1) or real(*a, **k))
    _collect(model, batch, [hook_name(s, model.arch) for s in all_sites(model.arch)], "fast")
    _collect(model, batch, ["blocks.0.attn.hook_z"], "fast")  # z alone: still SDPA
    assert calls == [] and fastpath._HEADS == {}
    _collect(model, batch, ["blocks.2.attn.hook_pattern"], "fast")
    assert calls == [1] and fastpath._HEADS == {}  # only the hooked layer left SDPA
    with (
        pytest.raises(RuntimeError, match="boom"),
        hooked(model, [("blocks.1.attn.hook_z", lambda z, hook: z)], backend_of(model, "fast")),
    ):
        assert fastpath._HEADS
        raise RuntimeError("boom")
    assert fastpath._HEADS == {}
    plain = fastpath.plain_model(model)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())


def test_unsupported_families_keep_residual_sites_with_a_reason(tiny_model_dir):
    model = load_model(ModelSpec(name=str(tiny_model_dir("bert"))))
    reason = fastpath.supports(model)
    assert reason is not None and "bert" in reason
    with pytest.raises(ConfigError, match="backend 'fast' captures embed.*attn_out.0.*use backend 'bridge'"):
        fastpath.check_sites(model, ("embed", "attn_out.0"))
    with pytest.raises(ConfigError, match="no hook point 'blocks.0.attn.hook_z'"):
        with fastpath.hooks(model, [("blocks.0.attn.hook_z", lambda z, hook: z)]):
            pass
    llama = load_model(ModelSpec(name=str(tiny_model_dir("neox"))))
    fastpath.check_sites(llama, all_sites(llama.arch))
    with pytest.raises(ConfigError, match="no site resid_mid.0"):  # parallel residual
        fastpath.check_sites(llama, ("resid_mid.0",))


def test_fast_backend_runs_the_battery_on_every_site(tiny_model_dir, tmp_path, sample_text):
    from spectral.runner import run_experiment

    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    base = ExperimentConfig(
        model=ModelSpec(name=str(tiny_model_dir("llama"))),
        corpus=CorpusSpec(source=str(p), seq_len=16, max_seqs=8),
        capture=CaptureSpec(sites=("embed", "*.1", "final"), batch_size=4),  # every kind of site, one layer
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
    assert {"attn_out.1", "resid_mid.1", "mlp_out.1"} <= {site for site, _ in fast}
    for key, r in fast.items():
        assert key in bridge
        assert r.value == pytest.approx(bridge[key].value, rel=1e-3, abs=1e-4), key


@needs_shared
def test_fast_backend_equals_the_bridge_on_a_trained_model(tmp_path, sample_text):
    model = load_model(ModelSpec(name=str(LLAMA2XS)))
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    _compare(model, make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=32, max_seqs=8)))


def _converted(prefix: str) -> Path | None:
    root = Path(os.environ.get("SPECTRAL_CACHE", "").strip() or Path.home() / ".cache" / "spectral") / "hf"
    for marker in sorted(root.glob("*/spectral_gguf.json")):
        try:
            if json.loads(marker.read_text())["gguf_name"].startswith(prefix):
                return marker.parent
        except (OSError, ValueError, KeyError):
            continue
    return None


SMOLLM2 = _converted("SmolLM2-135M")


@pytest.mark.skipif(SMOLLM2 is None, reason="no converted SmolLM2-135M in $SPECTRAL_CACHE/hf (spectral models)")
def test_fast_backend_equals_the_bridge_on_smollm2(sample_text):
    model = load_model(ModelSpec(name=str(SMOLLM2)))
    assert fastpath.supports(model) is None
    batch = _padded_batch(model, sample_text, lengths=(20, 13))
    names = [hook_name(s, model.arch) for s in all_sites(model.arch)] + _head_names(model)
    ref = _collect(model, batch, names, "bridge")
    got = _collect(model, batch, names, "fast")
    valid = batch.attention_mask.bool()
    for n in names:
        a, b = ref[n], got[n]
        if "pattern" not in n:
            a, b = a[valid], b[valid]
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()), msg=n)


def test_the_backend_is_an_object_the_model_owns(tiny_model_dir):
    """backend_of(model, name) builds each backend once and keeps it ("auto" resolves to the fast one where it
    serves the family); the plain module is built once and kept in the model's declared field (nothing patched
    onto it); releasing the weights drops both."""
    from spectral.backends import BridgeBackend, FastBackend

    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    fast = backend_of(model, "fast")
    assert isinstance(fast, FastBackend) and backend_of(model, "auto") is fast and backend_of(model, "fast") is fast
    assert isinstance(backend_of(model), BridgeBackend) and backend_of(model, "bridge").serves_heads
    assert fastpath.plain_model(model) is fast.plain is model._plain
    with pytest.raises(ValueError, match="unknown backend"):
        backend_of(model, "fats")
    model.release_weights()
    assert model._backends == {} and model._plain is None
