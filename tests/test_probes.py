"""Probes against independent computations on a tiny random Llama (and its HF twin)."""

import numpy as np
import pytest
import torch

from spectral.analysis.spectrum import unembedding_bands
from spectral.capture import accumulate, capture_activations, new_bank
from spectral.config import AnalysisSpec, CorpusSpec, ModelSpec
from spectral.corpus import iter_batches, make_windows
from spectral.models import load_model
from spectral.probes import LENS_COLUMNS, CosineProbe, HeadProbe, LensProbe, TypeProbe


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory, sample_text):
    d = tiny_model_dir("llama")
    model = load_model(ModelSpec(name=str(d)))
    p = tmp_path_factory.mktemp("c") / "t.txt"
    p.write_text(sample_text)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=24, max_seqs=6))
    return d, model, windows


def _run(model, windows, probes):
    bank = new_bank(model, ("resid_post.2",), 2)
    accumulate(model, windows, bank, 4, True, None, tuple(probes))


def test_lens_reproduces_model_and_hf_accuracy(setup):
    from transformers import AutoModelForCausalLM

    d, model, windows = setup
    W_U, _ = model.unembedding()
    mu = torch.randn(model.arch.d_model)
    lens = LensProbe(
        model, ("resid_post.0", "resid_post.2"), {"resid_post.0": mu, "resid_post.2": mu}, unembedding_bands(W_U, 4)
    )
    _run(model, windows, [lens])
    t = lens.table()
    rows, margins = t.rows, t.margins
    col = {n: i for i, n in enumerate(LENS_COLUMNS)}
    tot = rows.sum(0)
    last, final = lens.sites.index("resid_post.2"), lens.sites.index("final")
    # the lens at the last layer is the model itself: agreement 1
    assert tot[last, col["agree"]] == tot[last, col["count"]] == tot[final, col["agree"]]
    # accuracy against an independent HF forward
    hf = AutoModelForCausalLM.from_pretrained(str(d), attn_implementation="eager").eval()
    with torch.no_grad():
        logits = hf(windows.ids).logits
    pred = logits[:, 1:-1].argmax(-1)  # predictions made at positions 1..T-2
    target = windows.ids[:, 2:]
    acc = (pred == target).double().mean().item()
    assert tot[final, col["correct"]] / tot[final, col["count"]] == pytest.approx(acc)
    # margin bands add up to the full top-1 margin (no bias in Llama's head); the rotated-h null's bands
    # add up to the margin of the rotated rows' own top-2
    top2 = logits[:, 1:-1].topk(2, -1).values
    K = len(lens.bands)
    assert margins.shape[1:] == (len(lens.sites), 2 * (K + 1) + 2 * K)
    # prediction 10's per-token |contribution| shares: each token's K shares add up to 1 (real and rotated)
    n_tok = tot[final, col["count"]]
    assert margins[:, final, 2 * K + 2 : 3 * K + 2].sum() == pytest.approx(n_tok)
    assert margins[:, final, 3 * K + 2 :].sum() == pytest.approx(n_tok)
    with torch.no_grad():  # direct: each token's band parts of its margin from HF's final hidden state and logits
        f = hf(windows.ids, output_hidden_states=True).hidden_states[-1][:, 1:-1].reshape(-1, W_U.shape[0]).float()
        i2 = logits[:, 1:-1].topk(2, -1).indices.reshape(-1, 2)
        dw = (W_U[:, i2[:, 0]] - W_U[:, i2[:, 1]]).T.float()
        parts = torch.stack([((dw @ U.float()) * (f @ U.float())).sum(-1) for U in lens.bands], 1).abs()
        share0 = (parts[:, 0] / parts.sum(1)).sum().item()
    assert margins[:, final, 2 * K + 2].sum() == pytest.approx(share0, rel=1e-4)
    assert margins[:, final, : K + 1].sum() == pytest.approx(float((top2[..., 0] - top2[..., 1]).sum()), rel=1e-4)
    assert (margins[:, final, K + 1 : 2 * K + 2].sum(1) >= 0).all()
    # per layer: the lens's own top-1 margin at resid_post.0 (final norm + W_U of the HF hidden state)
    first = lens.sites.index("resid_post.0")
    with torch.no_grad():
        hs = hf(windows.ids, output_hidden_states=True).hidden_states[1]  # after block 0 (before the final norm)
        lens_logits = hf.lm_head(hf.model.norm(hs))[:, 1:-1]
    t2 = lens_logits.topk(2, -1).values
    assert margins[:, first, : K + 1].sum() == pytest.approx(float((t2[..., 0] - t2[..., 1]).sum()), rel=1e-4)
    assert (margins[:, first, K + 1 : 2 * K + 2].sum(1) >= 0).all() and margins[:, first, K + 1 : 2 * K + 2].sum() > 0
    # tuned-lens's lens metrics: forward KL(model ‖ lens) and the lens's entropy, against HF's own distributions
    with torch.no_grad():
        logp_final = logits[:, 1:-1].double().log_softmax(-1)
        logq = lens_logits.double().log_softmax(-1)
        kl = (logp_final.exp() * (logp_final - logq)).sum(-1)
        ent = -(logq.exp() * logq).sum(-1)
    assert tot[first, col["kl_sum"]] == pytest.approx(float(kl.sum()), rel=1e-4)
    assert tot[first, col["entropy_sum"]] == pytest.approx(float(ent.sum()), rel=1e-4)
    assert tot[final, col["kl_sum"]] == pytest.approx(0.0, abs=1e-4 * n_tok)  # the output against itself
    final_ent = -(logp_final.exp() * logp_final).sum(-1)
    assert tot[final, col["entropy_sum"]] == pytest.approx(float(final_ent.sum()), rel=1e-4)


def test_self_similarity_equals_direct(setup):
    _, model, windows = setup
    tp = TypeProbe(model, windows, ("resid_post.1",), max_types=5)
    _run(model, windows, [tp])
    sims = tp.self_similarity("resid_post.1")
    acts = torch.cat(
        [capture_activations(model, b, ("resid_post.1",))["resid_post.1"] for b in iter_batches(windows, 4)]
    ).double()
    for k, t in enumerate(tp.types.tolist()):
        where = [(w, p) for w in range(len(windows)) for p in range(1, windows.ids.shape[1]) if windows.ids[w, p] == t]
        vs = [acts[w, p] / acts[w, p].norm() for w, p in where]
        pairs = [float(vs[i] @ vs[j]) for i in range(len(vs)) for j in range(len(vs)) if where[i][0] != where[j][0]]
        assert sims[k] == pytest.approx(np.mean(pairs), rel=1e-9)


def test_head_probe_equals_direct(setup):
    _, model, windows = setup
    W_U, _ = model.unembedding()
    tail = unembedding_bands(W_U, 4)[-1]
    hp = HeadProbe(model, 2, tail)
    _run(model, windows, [hp])
    batch = next(iter_batches(windows, len(windows)))
    got = {}
    hooks = [
        ("blocks.1.attn.hook_z", lambda x, hook: got.__setitem__("z", x.detach().double())),
        ("blocks.1.attn.hook_pattern", lambda x, hook: got.__setitem__("p", x.detach().double())),
        ("blocks.1.hook_resid_pre", lambda x, hook: got.__setitem__("h", x.detach().double())),
    ]
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=hooks):
        model.bridge(batch.input_ids, return_type=None)
    z = got["z"][:, 1:]  # position 0 excluded
    direct = torch.einsum("bthi,bthj->hij", z, z)
    assert torch.allclose(hp.z_second[1].sum(0), direct, atol=1e-8)
    # attention received: mean over heads and over the queries that can see the key (causal)
    A = got["p"].mean(1)  # (b, q, k)
    T = A.shape[-1]
    recv = A.sum(1) / torch.arange(T, 0, -1, dtype=torch.float64)
    h = got["h"]
    e = (h.float() @ tail.float()).pow(2).sum(-1) / h.float().pow(2).sum(-1)
    pairs = np.concatenate(hp.pairs[1])  # position 0 included (the sink analyses need it), its column last
    assert np.allclose(np.sort(pairs[:, 1]), np.sort(recv.flatten().numpy()), atol=1e-6)
    assert np.allclose(np.sort(pairs[:, 2]), np.sort(e.flatten().double().numpy()), atol=1e-5)
    assert sorted(pairs[:, 3].tolist()) == sorted(list(range(T)) * recv.shape[0])


def test_corpus_layer_cosine_equals_direct(setup):
    """The streamed layer x layer cosine == the same mean over all tokens from held activations,
    and the jackknife interval brackets it."""
    _, model, windows = setup
    sites = tuple(f"resid_post.{i}" for i in range(model.arch.n_layers))
    probe = CosineProbe(model, sites, 3)
    _run(model, windows, [probe])
    cm = probe.matrix(0.95)
    value, lo, hi = cm.value, cm.ci_low, cm.ci_high
    acts = capture_activations(model, next(iter_batches(windows, len(windows), True)), sites)
    h = torch.stack([acts[s][:, 1:] for s in sites]).double()  # position 0 excluded
    u = h / h.norm(dim=-1, keepdim=True)
    direct = torch.einsum("lwtd,mwtd->lm", u, u).numpy() / (h.shape[1] * h.shape[2])
    np.testing.assert_allclose(value, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diag(value), 1.0, atol=1e-6)
    off = ~np.eye(len(sites), dtype=bool)
    assert np.all(lo[off] <= value[off]) and np.all(value[off] <= hi[off]) and np.all(hi[off] > lo[off])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3", "neox"])
def test_carrier_removed_lens_span_equals_the_full_product(tiny_model_dir, family):
    """The carrier-removed lens reuses the lens logits (span of norm(h), norm(u), norm(0)); it equals
    norm(h - (h·u)u) @ W + b computed directly, for RMSNorm, LayerNorm with bias, and Gemma's (1 + w)."""
    model = load_model(ModelSpec(name=str(tiny_model_dir(family))))
    W_U, _ = model.unembedding()
    torch.manual_seed(1)
    d = model.arch.d_model
    u = torch.randn(d)
    lens = LensProbe(model, ("resid_post.0",), {"resid_post.0": u}, unembedding_bands(W_U, 4))
    h = torch.randn(50, d) * 3 + 5 * torch.randn(d)  # a common component, as in a real stream
    f = lens.norm(h).float()
    logits = lens._logits(f)
    un = u / u.norm()
    g = lens.norm(h - (h @ un)[:, None] * un).float()
    coef = lens._span("resid_post.0", f, g, h.dtype)
    assert coef is not None
    got = lens._mod_logits("resid_post.0", logits, coef)
    want = lens._logits(g)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # a norm outside the span (a per-dimension nonlinearity) is detected: the full product is taken
    lens.norm = torch.tanh
    lens._mod_basis.clear()
    assert lens._span("resid_post.0", torch.tanh(h), torch.tanh(h - (h @ un)[:, None] * un), h.dtype) is None


def test_lens_batched_products_and_the_fallback_give_the_same_table(setup, monkeypatch):
    _, model, windows = setup
    W_U, _ = model.unembedding()
    mu = torch.randn(model.arch.d_model)
    sites = ("resid_post.0", "resid_post.1", "resid_post.2")

    def table(rows_per_product: int):
        lens = LensProbe(model, sites, dict.fromkeys(sites, mu), unembedding_bands(W_U, 4))
        lens.rows_per_product = rows_per_product
        _run(model, windows, [lens])
        t = lens.table()
        return t.index, t.rows, t.margins

    ref = table(1)  # one row per tile
    for got in (table(10_000), table(50)):
        for a, b in zip(ref, got, strict=True):
            # the KL (log Z − Σ p z − H, ~10 nats each, from float32 logits whose rounding moves with the row tile)
            # agrees to ~1e-6 nats per window
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=2e-6)
    monkeypatch.setattr(LensProbe, "_span", lambda *a: None)  # every site takes the full carrier-removed product
    for a, b in zip(ref, table(50), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=2e-6)


def test_head_probe_keeps_the_sampled_pairs_only(setup):
    """sink_positions: a seeded subset of each window's (received, tail) pairs, the same rows as the full probe."""
    _, model, windows = setup
    W_U, _ = model.unembedding()
    tail = unembedding_bands(W_U, 4)[-1]
    full, some = HeadProbe(model, 2, tail), HeadProbe(model, 2, tail, positions=3, seed=5)
    _run(model, windows, [full, some])
    for layer in range(model.arch.n_layers):
        a, b = np.concatenate(full.pairs[layer]), np.concatenate(some.pairs[layer])
        assert len(b) == 4 * len(windows)  # 3 sampled positions and position 0 in every window
        assert np.bincount(b[:, 0].astype(int)).max() == 4 and (b[:, 3] == 0).sum() == len(windows)
        rows = {tuple(r) for r in a.round(12)}
        assert all(tuple(r) in rows for r in b.round(12))
    torch.testing.assert_close(full.z_second, some.z_second)  # the head moments use every token


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_mean_ablated_lens_span_equals_the_full_product(tiny_model_dir, family):
    """A mean ablation h + (a − h·v) v (prediction 4's carrier, top-PC and random-direction edits) reuses
    the lens logits through the span of norm(h), norm(v), norm(0), like the carrier projection."""
    model = load_model(ModelSpec(name=str(tiny_model_dir(family))))
    W_U, _ = model.unembedding()
    torch.manual_seed(2)
    d = model.arch.d_model
    u, v, c = torch.randn(d), torch.randn(d), torch.randn(d) * 3
    v = v / v.norm()
    lens = LensProbe(
        model, ("resid_post.0",), {"resid_post.0": u}, unembedding_bands(W_U, 4), top_pcs={"resid_post.0": v},
        centers={"resid_post.0": c},
    )  # fmt: skip
    names = [name for name, _, _ in lens.ablations["resid_post.0"]]
    assert names == ["carrier", "toppc", "random"]
    _, vv, amp = lens.ablations["resid_post.0"][1]
    assert torch.allclose(vv.double(), v.double(), atol=1e-6) and amp == pytest.approx(float(c @ v), rel=1e-5)
    h = torch.randn(40, d) * 2 + 4 * torch.randn(d)
    f = lens.norm(h).float()
    g = lens.norm(h + (amp - h @ v)[:, None] * v).float()
    coef = lens._span("resid_post.0", f, g, h.dtype, "resid_post.0#toppc", v)
    assert coef is not None
    got = lens._mod_logits("resid_post.0#toppc", lens._logits(f), coef)
    want = lens._logits(g)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_sink_rank_correlations_equal_scipy_and_the_partial_formula():
    """attn_tail_spearman equals scipy's Spearman; the partial one equals the correlation of the residuals
    of the rank-transformed (received, tail) after regressing each on the rank of position."""
    from scipy import stats

    from spectral.analysis.battery import _spearman_boot

    g = np.random.default_rng(0)
    n = 400
    pos = np.tile(np.arange(40), 10).astype(float)
    recv = np.exp(-pos / 5) + 0.1 * g.standard_normal(n)
    tail = recv + 0.3 * g.standard_normal(n) + 0.02 * pos
    arr = np.stack([np.repeat(np.arange(10), 40).astype(float), recv, tail, pos], 1)
    spec = AnalysisSpec(n_boot=50)
    est = _spearman_boot(arr, spec, 0)
    assert est.value == pytest.approx(float(stats.spearmanr(recv, tail).statistic), rel=1e-12)
    assert est.ci_low <= est.value <= est.ci_high
    rx, ry, rz = (stats.rankdata(x) for x in (recv, tail, pos))
    Z = np.stack([np.ones(n), rz], 1)
    res = [x - Z @ np.linalg.lstsq(Z, x, rcond=None)[0] for x in (rx, ry)]
    want = float(np.corrcoef(*res)[0, 1])
    got = _spearman_boot(arr, spec, 0, partial=True)
    assert got.value == pytest.approx(want, rel=1e-10)


def test_depth_spectrum_equals_numpy_fft_over_layers(setup):
    """The streamed per-layer DFT of each token's resid_post trajectory == numpy's rfft over the captured
    trajectories (Parseval-weighted, position 0 excluded), and Σ_k P(k) = Σ_l ‖h_l‖²."""
    from spectral.capture import capture_activations
    from spectral.corpus import iter_batches
    from spectral.depth import DepthProbe

    _, model, windows = setup
    L = model.arch.n_layers
    sites = tuple(f"resid_post.{layer}" for layer in range(L))
    probe = DepthProbe(model, sites)
    _run(model, windows, [probe])
    rows = probe.table().rows
    want = []
    for b in iter_batches(windows, 4):
        acts = capture_activations(model, b, sites)
        traj = torch.stack([acts[s].double() for s in sites], 0)[:, :, 1:]  # (L, batch, T-1, d)
        X = np.fft.rfft(traj.numpy(), axis=0)
        w = np.full(X.shape[0], 2.0)
        w[0] = 1.0
        if L % 2 == 0:
            w[-1] = 1.0
        P = (np.abs(X) ** 2).sum(-1) * w[:, None, None] / L  # (F, batch, T-1)
        want.append(P.sum(-1).T)
        energy = (traj**2).sum((0, 2, 3)).numpy()
        np.testing.assert_allclose(P.sum((0, 2)), energy, rtol=1e-5)
    np.testing.assert_allclose(rows, np.concatenate(want), rtol=1e-4)
    with pytest.raises(ValueError, match="every resid_post layer"):
        DepthProbe(model, sites[:-1])
