"""Model sources: llama2.c checkpoints against an independent run.c-style forward, and errors."""

import struct
import time

import numpy as np
import pytest
import torch
from conftest import LLAMA2XS, needs_shared

from spectral.config import ModelSpec
from spectral.errors import ModelLoadError
from spectral.models import load_model, resolve_source


def _to_llama2c(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face rotate-half rows -> llama2.c interleaved rows (inverse of the loader's permute)."""
    d1, d2 = w.shape
    return w.view(n_heads, 2, d1 // n_heads // 2, d2).transpose(1, 2).reshape(d1, d2)


def write_legacy_bin(hf, path):
    c = hf.config
    sd = {k: v.detach().float() for k, v in hf.state_dict().items()}
    L, H, KV = c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
    head = c.hidden_size // H
    shared = bool(c.tie_word_embeddings)
    vocab = c.vocab_size if shared else -c.vocab_size
    parts = [struct.pack("<7i", c.hidden_size, c.intermediate_size, L, H, KV, vocab, c.max_position_embeddings)]

    def stack(fmt, fn=lambda t, i: t):
        return torch.stack([fn(sd[fmt.format(i)], i) for i in range(L)])

    tensors = [
        sd["model.embed_tokens.weight"],
        stack("model.layers.{}.input_layernorm.weight"),
        stack("model.layers.{}.self_attn.q_proj.weight", lambda t, i: _to_llama2c(t, H)),
        stack("model.layers.{}.self_attn.k_proj.weight", lambda t, i: _to_llama2c(t, KV)),
        stack("model.layers.{}.self_attn.v_proj.weight"),
        stack("model.layers.{}.self_attn.o_proj.weight"),
        stack("model.layers.{}.post_attention_layernorm.weight"),
        stack("model.layers.{}.mlp.gate_proj.weight"),
        stack("model.layers.{}.mlp.down_proj.weight"),
        stack("model.layers.{}.mlp.up_proj.weight"),
        sd["model.norm.weight"],
        torch.zeros(c.max_position_embeddings, head // 2),
        torch.zeros(c.max_position_embeddings, head // 2),
    ]
    if not shared:
        tensors.append(sd["lm_head.weight"])
    parts += [t.contiguous().numpy().astype("<f4").tobytes() for t in tensors]
    path.write_bytes(b"".join(parts))


def runc_forward(path, tokens):
    """Independent reference: llama2.c's run.c forward pass (interleaved RoPE) in numpy."""
    raw = path.read_bytes()
    dim, hidden, L, H, KV, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared, vocab = vocab > 0, abs(vocab)
    w = np.frombuffer(raw[28:], dtype="<f4")
    hs, kvd = dim // H, dim // H * KV
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        out = w[pos : pos + n].reshape(shape).astype(np.float64)
        pos += n
        return out

    emb, ra, wq, wk = take(vocab, dim), take(L, dim), take(L, dim, dim), take(L, kvd, dim)
    wv, wo, rf = take(L, kvd, dim), take(L, dim, dim), take(L, dim)
    w1, w2, w3, rfin = take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim), take(dim)
    take(seq_len, hs // 2), take(seq_len, hs // 2)
    wcls = emb if shared else take(vocab, dim)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * g

    def rope(x, n):  # x: (T, n*hs); rotate pairs (2i, 2i+1) within each head
        T = x.shape[0]
        x = x.reshape(T, n, hs // 2, 2).copy()
        freq = 1.0 / 10000.0 ** (np.arange(0, hs, 2) / hs)
        ang = np.arange(T)[:, None] * freq[None]
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        a, b = x[..., 0].copy(), x[..., 1].copy()
        x[..., 0], x[..., 1] = a * c - b * s, a * s + b * c
        return x.reshape(T, n * hs)

    x = emb[tokens]
    T = len(tokens)
    for l in range(L):
        xb = rms(x, ra[l])
        q, k, v = rope(xb @ wq[l].T, H), rope(xb @ wk[l].T, KV), xb @ wv[l].T
        out = np.zeros((T, dim))
        for h in range(H):
            kh = h // (H // KV)
            qh, khh, vh = q[:, h * hs : (h + 1) * hs], k[:, kh * hs : (kh + 1) * hs], v[:, kh * hs : (kh + 1) * hs]
            att = qh @ khh.T / np.sqrt(hs)
            att[np.triu_indices(T, 1)] = -np.inf
            att = np.exp(att - att.max(1, keepdims=True))
            out[:, h * hs : (h + 1) * hs] = (att / att.sum(1, keepdims=True)) @ vh
        x = x + out @ wo[l].T
        xb = rms(x, rf[l])
        g = xb @ w1[l].T
        x = x + ((g / (1 + np.exp(-g))) * (xb @ w3[l].T)) @ w2[l].T
    return rms(x, rfin) @ wcls.T


def _check_llama2c(hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    binp = tmp_path / "model.bin"
    write_legacy_bin(hf, binp)
    model = load_model(ModelSpec(name=str(binp), tokenizer=str(hf_dir)))
    assert model.source.kind == "llama2c" and model.arch.has_unembedding and model.arch.norm_placement == "pre"
    tokens = [1, 5, 9, 33, 2, 17, 40, 3, 8, 11]
    with torch.no_grad():
        got = model.hf_model(torch.tensor([tokens])).logits[0].double().numpy()
    ref = runc_forward(binp, tokens)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    with torch.no_grad():
        orig = hf(torch.tensor([tokens])).logits[0].double().numpy()
    assert np.abs(got - orig).max() < 1e-4


def test_llama2c_tiny_matches_runc(tiny_model_dir, tmp_path):
    _check_llama2c(tiny_model_dir("llama"), tmp_path)


@needs_shared
def test_llama2c_real_model_matches_runc(tmp_path):
    _check_llama2c(LLAMA2XS, tmp_path)


def test_llama2c_without_tokenizer_is_refused(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    binp = tmp_path / "m.bin"
    write_legacy_bin(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir("llama"))), binp)
    with pytest.raises(ModelLoadError, match="needs a tokenizer beside it: pass --tokenizer"):
        load_model(ModelSpec(name=str(binp)))


@pytest.mark.parametrize("version", [0, 1])
def test_llama2c_header_is_read_without_the_weights(tmp_path, version):
    """The header of a multi-GB checkpoint is parsed from its first bytes: the (sparse) 4 GiB tail is never read."""
    import os
    import tracemalloc

    from spectral.llama2c import MAGIC_V1, Llama2cHeader, read_header

    dim, hidden, L, H, KV, vocab, seq_len = 64, 172, 4, 8, 4, 512, 256
    if version == 0:  # negative vocabulary size: an unshared classifier
        head = struct.pack("<7i", dim, hidden, L, H, KV, -vocab, seq_len)
    else:
        head = struct.pack("<Ii7iB", MAGIC_V1, 1, dim, hidden, L, H, KV, vocab, seq_len, 1).ljust(256, b"\0")
    p = tmp_path / "big.bin"
    p.write_bytes(head)
    os.truncate(p, 4 << 30)  # sparse: no disk used
    tracemalloc.start()
    t = time.perf_counter()
    try:
        h = read_header(p)
        elapsed = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    shared, offset = (False, 28) if version == 0 else (True, 256)
    assert h == Llama2cHeader(dim, hidden, L, H, KV, vocab, seq_len, shared, version, offset)
    assert peak < 1 << 20, f"header parse allocated {peak} bytes"
    assert elapsed < 0.5


def test_unknown_model_fails_fast_and_says_what_was_tried(monkeypatch):
    t = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"tried built-in names \(minilm\); local path"):
        load_model(ModelSpec(name="./no/such/dir"))
    with pytest.raises(ModelLoadError, match="hub not reachable: HF_HUB_OFFLINE is set"):
        resolve_source(ModelSpec(name="someone/some-model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("spectral.models._hub_reachable", lambda timeout=4.0: "huggingface.co did not answer")
    with pytest.raises(ModelLoadError, match="not in the local cache; hub not reachable: huggingface.co did not"):
        resolve_source(ModelSpec(name="gpt2"))
    assert time.perf_counter() - t < 10


def test_random_twin_is_seeded_and_differs(tiny_model_dir):
    spec = ModelSpec(name=str(tiny_model_dir("gpt2")))
    trained = load_model(spec)
    a = load_model(spec, random_init=True, seed=1)
    b = load_model(spec, random_init=True, seed=1)
    c = load_model(spec, random_init=True, seed=2)
    wa, wb, wc, wt = (m.hf_model.transformer.h[0].mlp.c_fc.weight for m in (a, b, c, trained))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc) and not torch.equal(wa, wt)
    assert a.arch == trained.arch and a.weights_sha256() is None and trained.weights_sha256()


def test_pickle_weights_need_an_explicit_opt_in(tiny_model_dir, tmp_path):
    """A checkpoint with only pytorch_model.bin is refused (pickle runs code) unless allow_pickle."""
    from transformers import AutoModelForCausalLM

    from spectral.cli import main

    src = tiny_model_dir("gpt2")
    d = tmp_path / "pickled"
    d.mkdir()
    torch.save(AutoModelForCausalLM.from_pretrained(str(src)).state_dict(), d / "pytorch_model.bin")
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    assert (d / "pytorch_model.bin").is_file() and not list(d.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(pytorch_model.bin\).*--allow-pickle"):
        load_model(ModelSpec(name=str(d)))
    ref = load_model(ModelSpec(name=str(src)))
    got = load_model(ModelSpec(name=str(d), allow_pickle=True))
    for a, b in zip(ref.hf_model.parameters(), got.hf_model.parameters(), strict=True):
        assert torch.equal(a, b)
    out = tmp_path / "run"
    args = ["run", "--model", str(d), "--corpus", "builtin", "--seq-len", "8", "--max-seqs", "2", "--out", str(out)]
    assert main([*args, "--quiet", "--no-controls", "--formats", "none"]) == 2
    assert not out.exists()


def test_remote_code_never_runs_without_the_flag(tiny_model_dir, tmp_path):
    """A config that points at its own Python code is refused, and that code is never imported."""
    import json
    import shutil

    d = tmp_path / "remote"
    shutil.copytree(tiny_model_dir("gpt2"), d)
    marker = tmp_path / "code-ran"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nfrom transformers import GPT2Config as Cfg\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.Cfg", "AutoModelForCausalLM": "evil.Cfg"}
    (d / "config.json").write_text(json.dumps(cfg))
    load_model(ModelSpec(name=str(d)))  # a known model_type: the library's own class, the file ignored
    assert not marker.exists()
    cfg["model_type"] = "custom-arch"  # nothing built in to fall back on: refused, code not run
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(ModelSpec(name=str(d)))
    assert not marker.exists()


def test_device_map_auto_loads_through_accelerate(tiny_model_dir, tmp_path, sample_text, monkeypatch):
    """device='auto' asks from_pretrained for device_map='auto' (accelerate spreads the layers; here
    everything lands on the CPU) and gives the same statistics as a plain CPU load."""
    from transformers import AutoModelForCausalLM

    from spectral.capture import accumulate, new_bank
    from spectral.config import CorpusSpec
    from spectral.corpus import make_windows

    seen: list[dict] = []
    real = AutoModelForCausalLM.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    d = tiny_model_dir("llama")
    auto = load_model(ModelSpec(name=str(d), device="auto"))
    assert seen and seen[0].get("device_map") == "auto"
    plain = load_model(ModelSpec(name=str(d)))
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    windows = make_windows(plain.tokenizer, CorpusSpec(source=str(p), seq_len=16, max_seqs=4))
    banks = [accumulate(m, windows, new_bank(m, ("resid_post.2",), 2), 4) for m in (auto, plain)]
    torch.testing.assert_close(banks[0]["resid_post.2"].total().second, banks[1]["resid_post.2"].total().second)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_reinitialise_gives_each_seed_its_own_init_and_keeps_ties(tiny_model_dir, family):
    """The R ensemble's next seed re-initialises the twin in place: a new draw for every weight, the same
    draw for the same seed, tied embeddings still one parameter (BERT without its MLM head included)."""
    from spectral.analysis.controls import reinitialise

    m = load_model(ModelSpec(name=str(tiny_model_dir(family))), random_init=True, seed=1)
    hf = m.hf_model
    first = {k: v.clone() for k, v in hf.state_dict().items()}
    tied = (
        hf.get_output_embeddings() is not None and hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    )
    reinitialise(hf, 2)
    second = {k: v.clone() for k, v in hf.state_dict().items()}
    mats = [k for k, v in first.items() if v.ndim == 2]
    assert all(not torch.equal(first[k], second[k]) for k in mats)
    reinitialise(hf, 2)
    assert all(torch.equal(second[k], v) for k, v in hf.state_dict().items())
    if tied:
        assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight


def test_loading_leaves_the_callers_random_stream_and_progress_bars_alone(tiny_model_dir):
    """No process-wide side effects: a seeded random-weight twin, an R member's re-initialisation and a load
    leave torch's global generator and Hugging Face's progress-bar setting as the caller had them."""
    from transformers.utils import logging as hf_logging

    from spectral.analysis.controls import reinitialise
    from spectral.config import ModelSpec
    from spectral.models import load_model

    d = tiny_model_dir("llama")
    hf_logging.enable_progress_bar()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    twin = load_model(ModelSpec(name=str(d)), random_init=True, seed=7)
    reinitialise(twin.hf_model, 8)
    assert torch.equal(torch.rand(3), expected)
    assert hf_logging.is_progress_bar_enabled()
    # the seed still decides the twin: the same seed gives the same weights
    a, b = (load_model(ModelSpec(name=str(d)), random_init=True, seed=7) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.hf_model.parameters(), b.hf_model.parameters(), strict=True))


def test_rescaled_twin_takes_the_trained_norms_and_keeps_its_directions(tiny_model_dir):
    """Control random_scaled: every parameter tensor of a random twin rescaled to the trained one's Frobenius norm
    (tied embeddings once); each tensor's direction is the twin's own."""
    from spectral.analysis.controls import parameter_norms, rescale_to

    d = tiny_model_dir("llama")
    trained = load_model(ModelSpec(name=str(d)))
    with torch.no_grad():  # give the "trained" model norms unlike any init
        for i, p in enumerate(trained.hf_model.parameters()):
            p.mul_(1.5 + 0.1 * i)
    norms = parameter_norms(trained.hf_model)
    twin = load_model(ModelSpec(name=str(d)), random_init=True, seed=3)
    before = {n: p.detach().clone() for n, p in twin.hf_model.named_parameters()}
    assert rescale_to(twin.hf_model, norms) == len(norms)
    for n, p in twin.hf_model.named_parameters():
        assert float(p.double().norm()) == pytest.approx(norms[n], rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(p.flatten().double(), before[n].flatten().double(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-6)


def test_w_ensemble_and_rescaled_r_are_conditions_and_nulls(tmp_path, tiny_model_dir, sample_text):
    """A run with W of 3 permutations and R rescaled of 2 seeds: the conditions are measured, W's null is the
    permutations' prediction interval and prediction 1 is decided against R and the rescaled R too."""
    import csv

    from spectral.config import AnalysisSpec, CaptureSpec, CorpusSpec, ExperimentConfig
    from spectral.runner import run_experiment

    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text)
    cfg = ExperimentConfig(
        model=ModelSpec(name=str(tiny_model_dir("llama"))),
        corpus=CorpusSpec(source=str(corpus), seq_len=16, max_seqs=8),
        capture=CaptureSpec(batch_size=8),
        analysis=AnalysisSpec(n_boot=50, intervention_windows=0, modulation_windows=0, jacobian_windows=0),
        controls=("random_init", "random_scaled", "permuted_weights"),
        random_seeds=(1, 2),
        scaled_seeds=(4, 5),
        permutations=3,
        formats=(),
        out=str(tmp_path / "run"),
    )
    res = run_experiment(cfg, progress=False, log=lambda s: None)
    rows = list(csv.DictReader((res.run_dir / "metrics.csv").open()))
    conds = {r["condition"] for r in rows}
    assert {"permuted_weights", "permuted_weights.s1", "permuted_weights.s2"} <= conds
    assert {"random_scaled.s4", "random_scaled.s5", "random_init.s1", "random_init.s2"} <= conds
    g = {r["condition"]: float(r["value"]) for r in rows if r["metric"] == "growth_rate"}
    assert len({round(g[c], 9) for c in ("permuted_weights", "permuted_weights.s1", "permuted_weights.s2")}) == 3
    v1 = next(r for r in csv.DictReader((res.run_dir / "verdicts.csv").open()) if r["prediction"].startswith("1 "))
    assert "W ensemble (weight permutations) (3 seeds)" in v1["note"]
    assert "R rescaled to the trained norms (2 seeds)" in v1["note"]


def test_w_members_from_the_saved_matrices_equal_permuting_the_trained_model(tiny_model_dir):
    """W's members are drawn from a copy of the trained matrices (one permutation each, none undone): each equals
    the trained model permuted in place with the same seed, and the copy gives the trained weights back exactly."""
    from spectral.analysis.controls import permute_weights, permuted_matrices, restore_matrices

    hf = load_model(ModelSpec(name=str(tiny_model_dir("llama")))).hf_model
    trained = {k: v.clone() for k, v in hf.state_dict().items()}
    saved = permuted_matrices(hf)
    for seed in (0, 1, 2):
        permute_weights(hf, seed, source=saved)
        drawn = {k: v.clone() for k, v in hf.state_dict().items()}
        restore_matrices(hf, saved)
        assert all(torch.equal(trained[k], v) for k, v in hf.state_dict().items())
        permute_weights(hf, seed)  # the old way: in place, then undone
        assert all(torch.equal(drawn[k], v) for k, v in hf.state_dict().items())
        permute_weights(hf, seed, inverse=True)
        assert all(torch.equal(trained[k], v) for k, v in hf.state_dict().items())
    assert any(not torch.equal(trained[k], drawn[k]) for k in saved)


def test_a_rescaled_member_sharing_an_r_seed_equals_a_fresh_one(tmp_path, tiny_model_dir, sample_text):
    """A rescaled seed that is also an R seed is measured right after R's member, rescaling that init in place
    (one init for both): its metrics equal those of the same seed initialised afresh, and metrics.csv keeps
    R's members before the rescaled ones."""
    import csv

    from spectral.config import AnalysisSpec, CaptureSpec, CorpusSpec, ExperimentConfig
    from spectral.runner import run_experiment

    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text)

    def run(seeds: tuple[int, ...], out: str) -> list[dict[str, str]]:
        cfg = ExperimentConfig(
            model=ModelSpec(name=str(tiny_model_dir("llama"))),
            corpus=CorpusSpec(source=str(corpus), seq_len=16, max_seqs=4),
            capture=CaptureSpec(batch_size=4),
            analysis=AnalysisSpec(n_boot=20, intervention_windows=0, modulation_windows=0, jacobian_windows=0),
            controls=("random_init", "random_scaled"),
            random_seeds=seeds,
            scaled_seeds=(2, 5),
            formats=(),
            out=str(tmp_path / out),
        )
        res = run_experiment(cfg, progress=False, log=lambda s: None)
        return list(csv.DictReader((res.run_dir / "metrics.csv").open()))

    shared, alone = run((1, 2), "shared"), run((1,), "alone")
    conds = [r["condition"] for r in shared]
    assert max(i for i, c in enumerate(conds) if c.startswith("random_init")) < conds.index("random_scaled.s2")
    for c in ("random_scaled.s2", "random_scaled.s5"):
        a = [(r["site"], r["metric"], r["value"]) for r in shared if r["condition"] == c]
        b = [(r["site"], r["metric"], r["value"]) for r in alone if r["condition"] == c]
        assert a and a == b


def test_a_kept_model_gets_its_weights_back_when_w_stops_early(tmp_path, tiny_model_dir, sample_text):
    """The notebook API keeps the caller's model: whether W's ensemble runs to its end or stops at a member whose
    analysis failed (the generator closed early), the trained weights come back exactly."""
    from spectral.config import CorpusSpec, ExperimentConfig
    from spectral.runner import condition_models, setup_run

    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text)
    cfg = ExperimentConfig(
        model=ModelSpec(name=str(tiny_model_dir("llama"))),
        corpus=CorpusSpec(source=str(corpus), seq_len=16, max_seqs=2),
        controls=("permuted_weights",),
        permutations=3,
        out=str(tmp_path / "run"),
    )
    for stop_at in ("permuted_weights.s1", None):
        s = setup_run(cfg, None)
        s.keep_model = True
        trained = {k: v.clone() for k, v in s.model.hf_model.state_dict().items()}
        gen = condition_models(s)
        for cond, m in gen:
            if cond == stop_at:
                assert any(not torch.equal(trained[k], v) for k, v in m.hf_model.state_dict().items())
                gen.close()  # what a failing analysis does to the generator
                break
        assert all(torch.equal(trained[k], v) for k, v in s.model.hf_model.state_dict().items())
