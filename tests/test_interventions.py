"""Interventions: NLL == an independent Hugging Face computation, identity edits change nothing,
projections really remove their subspace inside the network, W_U bands are a clean orthonormal split,
encoders are refused; on the real llama2xs-512 removing the top W_U band hurts.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LLAMA2XS, TINYSTORIES, needs_shared

from spectral.analysis.interventions import band_bases, project_out
from spectral.capture import capture_activations, hook_name
from spectral.config import CorpusSpec, ModelSpec
from spectral.corpus import iter_batches, make_windows
from spectral.errors import SpectralError
from spectral.interventions import intervene, nll_per_window, sweep
from spectral.models import load_model


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def model(tiny_llama):
    return load_model(ModelSpec(name=str(tiny_llama)))


@pytest.fixture(scope="module")
def windows(model, tmp_path_factory, sample_text):
    src = tmp_path_factory.mktemp("corpus") / "text.txt"
    src.write_text(sample_text, encoding="utf-8")
    return make_windows(model.tokenizer, CorpusSpec(source=str(src), seq_len=16, max_seqs=6))


def test_identity_edit_gives_exact_zero(model, windows, monkeypatch):
    clean = nll_per_window(model, windows, batch_size=4)
    assert clean.shape == (6,) and clean.dtype == np.float64 and np.all(np.isfinite(clean))
    edited = nll_per_window(model, windows, batch_size=4, edit=("resid_post.1", lambda h: h.clone()))
    np.testing.assert_array_equal(edited, clean)

    # the whole intervene path (hook, paired difference, bootstrap) with an identity edit
    import spectral.interventions as iv

    monkeypatch.setattr(iv, "project_out", lambda basis: lambda h: h)
    for pre in (None, clean):
        res = intervene(model, windows, "resid_post.1", torch.eye(32)[:, :3], "identity", 4, 200, 0, clean=pre)
        assert res.delta_nll.value == 0.0
        assert (res.delta_nll.ci_low, res.delta_nll.ci_high) == (0.0, 0.0)
        assert res.edited_nll == res.clean_nll == float(clean.mean())


def test_identity_edit_scores_the_same_tokens_with_position_0(model, windows, monkeypatch):
    """With exclude_first=False the clean and the edited NLL score the same positions (they once did not:
    the clean one took the run's setting, the edited one the default)."""
    import spectral.interventions as iv

    monkeypatch.setattr(iv, "project_out", lambda basis: lambda h: h)
    clean = nll_per_window(model, windows, batch_size=4, exclude_first=False)
    res = intervene(model, windows, "resid_post.1", torch.eye(32)[:, :3], "identity", 4, 50, 0, 0.95, clean, False)
    assert res.delta_nll.value == 0.0 and res.edited_nll == float(clean.mean())
    rows = sweep(model, windows, ("resid_post.1",), {"identity": torch.eye(32)[:, :3]}, 4, 50, 0, 0.95, False)
    assert rows[0].delta_nll.value == 0.0


def test_nll_matches_hugging_face(model, windows, tiny_llama):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(tiny_llama), attn_implementation="eager").eval()
    ids = windows.ids
    with torch.no_grad():
        logits = ref(ids, attention_mask=torch.ones_like(ids)).logits.float()
    for exclude_first, start in ((True, 1), (False, 0)):
        got = nll_per_window(model, windows, batch_size=4, exclude_first=exclude_first)
        pred = logits[:, start:-1]
        tgt = ids[:, start + 1 :]
        want = F.cross_entropy(pred.transpose(1, 2), tgt, reduction="none").double().mean(dim=1).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        # batch size does not matter
        one = nll_per_window(model, windows, batch_size=1, exclude_first=exclude_first)
        np.testing.assert_allclose(one, got, atol=1e-6, rtol=0)


def test_projection_removes_subspace_inside_the_network(model, windows):
    d = model.arch.d_model
    full = intervene(
        model, windows, "resid_post.0", torch.randn(d, d, generator=torch.Generator().manual_seed(1)), "all", 4, 200, 0
    )
    assert full.delta_nll.value != 0.0 and abs(full.edited_nll - full.clean_nll) > 1e-3

    band = band_bases(model.bridge.W_U, 4)["band_k4_b0"]
    fn = project_out(band)
    batch = next(iter(iter_batches(windows, 4)))
    clean = capture_activations(model, batch, ("resid_post.0", "resid_pre.1"))
    with model.bridge.hooks(fwd_hooks=[(hook_name("resid_post.0", model.arch), lambda x, hook: fn(x))]):
        acts = capture_activations(model, batch, ("resid_post.0", "resid_pre.1"))
    # hooks are gone again
    again = capture_activations(model, batch, ("resid_pre.1",))
    torch.testing.assert_close(again["resid_pre.1"], clean["resid_pre.1"], rtol=0, atol=0)
    for site in ("resid_post.0", "resid_pre.1"):  # the edit is what block 1 reads
        before = (clean[site] @ band).norm()
        after = (acts[site] @ band).norm()
        assert before > 1e-2
        assert after <= 1e-5 * clean[site].norm(), site
        # the orthogonal complement is untouched
        rest = acts[site] - acts[site] @ band @ band.T
        torch.testing.assert_close(rest, clean[site] - clean[site] @ band @ band.T, rtol=1e-5, atol=1e-5)

    res = sweep(model, windows, ("resid_post.0", "resid_post.2"), band_bases(model.bridge.W_U, 2), 4, 100, 0)
    assert [(r.site, r.target) for r in res] == [
        ("resid_post.0", "band_k2_b0"),
        ("resid_post.0", "band_k2_b1"),
        ("resid_post.2", "band_k2_b0"),
        ("resid_post.2", "band_k2_b1"),
    ]
    assert len({r.clean_nll for r in res}) == 1
    for r in res:
        assert r.delta_nll.ci_low <= r.delta_nll.value <= r.delta_nll.ci_high
        assert r.delta_nll.value == pytest.approx(r.edited_nll - r.clean_nll, abs=1e-12)


def test_project_out_rejects_degenerate_bases():
    with pytest.raises(SpectralError, match="rank-deficient"):
        project_out(torch.zeros(8, 1))
    with pytest.raises(SpectralError, match="rank-deficient"):
        project_out(torch.ones(8, 2))
    h = torch.randn(2, 3, 8)
    out = project_out(torch.eye(8)[:, :2] * 5.0)(h)
    assert out[..., :2].abs().max() == 0 and torch.equal(out[..., 2:], h[..., 2:])


def test_band_bases_orthonormal_split():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(20, 50, generator=g)
    bands = band_bases(W, 3)
    assert list(bands) == ["band_k3_b0", "band_k3_b1", "band_k3_b2"]
    assert [b.shape[1] for b in bands.values()] == [len(a) for a in np.array_split(np.arange(20), 3)]
    U = torch.cat(list(bands.values()), dim=1)
    assert U.dtype == torch.float32 and U.shape == (20, 20)
    torch.testing.assert_close(U.T @ U, torch.eye(20), rtol=0, atol=1e-5)  # orthonormal, spans R^d
    s = torch.linalg.svdvals(W.double())
    energy = [float((b.double().T @ W.double()).norm() ** 2) for b in bands.values()]
    sizes = [b.shape[1] for b in bands.values()]
    np.testing.assert_allclose(energy[0], float((s[: sizes[0]] ** 2).sum()), rtol=1e-5)
    assert energy[0] > energy[1] > energy[2]
    with pytest.raises(SpectralError):
        band_bases(W, 21)


def test_encoder_is_refused(tiny_model_dir):
    bert = load_model(ModelSpec(name=str(tiny_model_dir("bert"))))
    wins = make_windows(bert.tokenizer, CorpusSpec(source="builtin", seq_len=8, max_seqs=2))
    with pytest.raises(SpectralError, match="interventions need a causal LM head; BertForMaskedLM has none"):
        nll_per_window(bert, wins, batch_size=2)
    with pytest.raises(SpectralError, match="causal LM head"):
        sweep(bert, wins, ("resid_post.0",), {"x": torch.eye(32)[:, :1]}, 2, 10, 0)


@needs_shared
def test_llama2xs_top_band_removal_hurts():
    m = load_model(ModelSpec(name=str(LLAMA2XS)))
    wins = make_windows(m.tokenizer, CorpusSpec(source=str(TINYSTORIES), seq_len=32, max_seqs=8))
    last = f"resid_post.{m.arch.n_layers - 1}"
    bases = band_bases(m.bridge.W_U, 10)
    res = sweep(m, wins, (last,), {k: bases[k] for k in ("band_k10_b0", "band_k10_b9")}, 8, 2000, 0)
    for r in res:
        e = r.delta_nll
        print(
            f"llama2xs-512 {r.site} {r.target}: clean {r.clean_nll:.4f} edited {r.edited_nll:.4f} "
            f"dNLL {e.value:+.4f} [{e.ci_low:+.4f}, {e.ci_high:+.4f}]"
        )
    top = res[0].delta_nll
    assert top.value > 0.1 and top.ci_low > 0


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "neox"])
def test_tail_sweep_equals_full_forward_edits(family, tiny_model_dir, tmp_path, sample_text):
    """Running only the layers after the edited site == a full forward with the edit hooked there."""
    from spectral.interventions import can_run_tails, tail_sweep

    model = load_model(ModelSpec(name=str(tiny_model_dir(family))))
    assert can_run_tails(model)
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=20, max_seqs=6))
    g = torch.Generator().manual_seed(0)
    d, L = model.arch.d_model, model.arch.n_layers
    basis = {"rand": torch.randn(d, 3, generator=g), "one": torch.randn(d, 1, generator=g)}
    layers = [0, L - 1] if L > 1 else [0]
    got = tail_sweep(model, windows, layers, lambda layer: basis, 4, 50, 0)
    clean = nll_per_window(model, windows, 4)
    for r in got:
        ref = intervene(model, windows, r.site, basis[r.target], r.target, 4, 50, 0, clean=clean)
        assert r.clean_nll == pytest.approx(ref.clean_nll, rel=1e-5)
        assert r.edited_nll == pytest.approx(ref.edited_nll, rel=1e-5), (r.site, r.target)
    sub = tail_sweep(model, windows, [0], lambda layer: basis, 4, 20, 0, positions=3)
    assert all(np.isfinite(r.delta_nll.value) for r in sub)


def test_mean_ablation_and_kl(tiny_model_dir, tmp_path, sample_text):
    """A mean ablation sets the component along v to the given mean and leaves the rest of h; in the tail
    sweep an identity edit has ΔNLL 0 and KL 0, a real edit a positive KL equal to the one computed from two
    full forward passes."""
    from spectral.analysis.interventions import mean_ablate
    from spectral.interventions import tail_sweep

    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 7, 32, generator=g)
    v = torch.randn(32, generator=g)
    out = mean_ablate(v, 2.5)(h)
    u = v / v.norm()
    assert torch.allclose(out @ u, torch.full((5, 7), 2.5), atol=1e-5)
    assert torch.allclose(out - (out @ u)[..., None] * u, h - (h @ u)[..., None] * u, atol=1e-5)

    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=20, max_seqs=4))
    edit = mean_ablate(v, 0.0)
    got = {
        r.target: r for r in tail_sweep(model, windows, [1], lambda layer: {"id": lambda x: x, "abl": edit}, 4, 50, 0)
    }
    assert got["id"].delta_nll.value == pytest.approx(0.0, abs=1e-9) and got["id"].kl.value == pytest.approx(
        0, abs=1e-7
    )
    # KL from two independent full forwards (the edit hooked at resid_post.1), on the same scored positions
    from spectral.capture import hook_name

    ids = windows.ids
    with torch.no_grad():
        clean = torch.log_softmax(model.bridge(ids, return_type="logits").float(), -1)
        with model.bridge.hooks(fwd_hooks=[(hook_name("resid_post.1", model.arch), lambda x, hook: edit(x))]):
            ablated = torch.log_softmax(model.bridge(ids, return_type="logits").float(), -1)
    kl = (clean.exp() * (clean - ablated)).sum(-1)[:, 1:-1]  # position 0 excluded, the last has no target
    assert got["abl"].kl.value == pytest.approx(float(kl.double().mean(1).mean()), rel=1e-3)
    assert got["abl"].kl.value > 0
