"""The quantities the field reports, from a real run, against direct computations on Hugging Face hidden states:
lens KL and entropy per layer (tuned-lens's definitions), LLM-Microscope's linearity and anisotropy (its own
functions, a peer reference), outlier statistics over every token, and the closed-form tuned lens refitted
directly."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LLAMA2XS, TINYSTORIES, needs_shared

from spectral.analysis.metrics import MetricTable
from spectral.cli import main

SEQ, N = 64, 32


def _microscope():
    """LLM-Microscope's functions module (its package __init__ imports a module by a name that does not resolve:
    ``from logit_lens import *``; the functions themselves are loaded from their file)."""
    spec = importlib.util.find_spec("llm_microscope")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-microscope is not installed (pip install llm-microscope==0.0.7: the dev extras)")
    path = Path(next(iter(spec.submodule_search_locations))) / "functions.py"
    mod_spec = importlib.util.spec_from_file_location("llm_microscope_functions", path)
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def field_run(tmp_path_factory):
    if not LLAMA2XS.is_dir():
        pytest.skip("real trained models not found at ../shared/data")
    out = tmp_path_factory.mktemp("field") / "run"
    cfg = out.parent / "run.toml"
    cfg.write_text(
        f'controls = []\nformats = []\n[model]\nname = "{LLAMA2XS}"\n[corpus]\nsource = "{TINYSTORIES}"\n'
        f"seq_len = {SEQ}\nmax_seqs = {N}\n[capture]\nsites = ['embed', 'resid_post.*', 'final']\n"
        "[analysis]\nn_boot = 50\nlens_positions = 0\ntuned_lens_windows = 16\n"
    )
    assert main(["run", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    return out, MetricTable.from_csv((out / "metrics.csv").read_text())


@pytest.fixture(scope="module")
def hidden():
    """(windows (N, T), resid chain [embed, resid_post.0 .. L-1] each (N, T, d) float64, final logits, HF model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(LLAMA2XS))
    hf = AutoModelForCausalLM.from_pretrained(str(LLAMA2XS), attn_implementation="eager").eval()
    text = TINYSTORIES.read_bytes().decode("utf-8").lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([[tok.bos_token_id] + ids[i * SEQ : (i + 1) * SEQ] for i in range(N)])
    last = {}
    hook = hf.model.layers[-1].register_forward_hook(
        lambda m, i, o: last.__setitem__("h", o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        got = hf(x, output_hidden_states=True)
    hook.remove()
    L = hf.config.num_hidden_layers
    chain = [h.double() for h in got.hidden_states[:L]] + [last["h"].double()]  # embed, resid_post.0 .. L-1
    return x, chain, got.logits.double(), hf


def _value(table, site, metric):
    row = table.get("trained", site, metric)
    assert row is not None, (site, metric)
    return row.value


@needs_shared
def test_linearity_and_anisotropy_equal_llm_microscope(field_run, hidden):
    lm = _microscope()
    _, table = field_run
    _, chain, _, _ = hidden
    flat = [h[:, 1:].reshape(-1, h.shape[-1]) for h in chain]  # the statistics' tokens: position 0 left out
    for layer in range(len(chain) - 1):
        x, y = flat[layer], flat[layer + 1]
        site = f"resid_post.{layer}"
        assert _value(table, site, "layer_linearity") == pytest.approx(lm.procrustes_similarity(x, y), abs=2e-6)
        # llm-microscope 0.0.7's procrustes_similarity_centered(x, y) computes this and then returns None (its last
        # line is "sim = float"): its body is procrustes_similarity(x, y - x)
        assert lm.procrustes_similarity_centered(x, y) is None
        assert _value(table, site, "layer_linearity_update") == pytest.approx(
            lm.procrustes_similarity(x, y - x), abs=2e-6
        )
        # uncentred: the same fit without the means (no peer function: direct least squares)
        xn, yn = x / x.norm(), y / y.norm()
        a = torch.linalg.lstsq(xn, yn).solution
        assert _value(table, site, "layer_linearity_uncentred") == pytest.approx(
            float(1 - (xn @ a - yn).square().sum()), abs=2e-6
        )
        assert _value(table, site, "pc1_variance_share") == pytest.approx(lm.calculate_anisotropy_torch(y), rel=1e-5)


@needs_shared
def test_lens_kl_and_entropy_equal_a_direct_computation(field_run, hidden):
    _, table = field_run
    _, chain, logits, hf = hidden
    with torch.no_grad():
        logp = logits[:, 1:-1].log_softmax(-1)  # every position with a next token, position 0 left out
        for layer in range(len(chain) - 1):
            q = hf.lm_head(hf.model.norm(chain[layer + 1].float())).double()[:, 1:-1].log_softmax(-1)
            kl = float((logp.exp() * (logp - q)).sum(-1).mean())
            ent = float(-(q.exp() * q).sum(-1).mean())
            site = f"resid_post.{layer}"
            if layer < len(chain) - 2:
                assert _value(table, site, "logit_lens_kl") == pytest.approx(kl, rel=1e-4)
            assert _value(table, site, "logit_lens_entropy") == pytest.approx(ent, rel=1e-4)
    assert _value(table, "final", "logit_lens_entropy") == pytest.approx(
        float(-(logp.exp() * logp).sum(-1).mean()), rel=1e-4
    )
    row = table.get("trained", "resid_post.0", "logit_lens_kl")
    assert row is not None and row.ci_low <= row.value <= row.ci_high


@needs_shared
def test_outliers_over_every_token_equal_a_direct_search(field_run, hidden):
    out, table = field_run
    x, chain, _, _ = hidden
    with (out / "massive.csv").open() as f:
        rows = {r["site"]: r for r in csv.DictReader(f)}
    for layer in range(len(chain) - 1):
        h = chain[layer + 1]
        a = h.abs()
        site = f"resid_post.{layer}"
        assert _value(table, site, "act_max_abs") == pytest.approx(float(a.max()), rel=1e-6)
        assert _value(table, site, "act_max_abs_pos0") == pytest.approx(float(a[:, 0].max()), rel=1e-6)
        assert _value(table, site, "act_max_abs_rest") == pytest.approx(float(a[:, 1:].max()), rel=1e-6)
        assert _value(table, site, "act_rms") == pytest.approx(float(h.pow(2).mean().sqrt()), rel=1e-6)
        assert _value(table, site, "act_median_abs") == pytest.approx(float(a.median()), rel=0.004)
        top3 = a.flatten().topk(3).values
        med = _value(table, site, "act_median_abs")
        assert _value(table, site, "act_top3_ratio") == pytest.approx(float(top3[2]) / med, rel=1e-6)
        r = rows[site]
        w, p, d = int(r["window"]), int(r["position"]), int(r["dim"])
        assert float(a[w, p, d]) == pytest.approx(float(a.max()), rel=1e-6)
        assert int(r["n_tokens"]) == x.numel()


@needs_shared
def test_tuned_lens_equals_a_direct_fit_and_reloads(field_run, hidden):
    from spectral.tuned_lens import TunedLens

    out, table = field_run
    _, chain, logits, hf = hidden
    lens = TunedLens.load(out / "tuned_lens.safetensors")
    assert lens.target == f"resid_post.{len(chain) - 2}" and "embed" in lens.sites
    fit = torch.arange(N) % 2 == 0
    held = ~fit  # the first 16 odd windows: all of them here
    y = chain[-1][fit, 1:].reshape(-1, chain[-1].shape[-1])
    assert lens.n_fit == y.shape[0]
    logp = logits[held, 1:-1].log_softmax(-1)
    for i, site in enumerate(["embed"] + [f"resid_post.{k}" for k in range(len(chain) - 2)]):
        x = chain[i][fit, 1:].reshape(-1, y.shape[-1])
        mx, my = x.mean(0), y.mean(0)
        cxx = (x - mx).T @ (x - mx) / len(x)
        cxy = (x - mx).T @ (y - my) / len(x)
        lam = 1e-3 * float(torch.trace(cxx)) / cxx.shape[0]
        eye = torch.eye(cxx.shape[0], dtype=torch.float64)
        A = torch.linalg.solve(cxx + lam * eye, cxy + lam * eye)
        b = my - mx @ A
        torch.testing.assert_close(lens.A[site].double(), A, rtol=1e-3, atol=1e-4 * float(A.abs().max()))
        with torch.no_grad():
            z = chain[i][held][:, 1:-1] @ A + b
            q = hf.lm_head(hf.model.norm(z.float())).double().log_softmax(-1)
        kl = float((logp.exp() * (logp - q)).sum(-1).mean())
        assert _value(table, site, "tuned_lens_kl") == pytest.approx(kl, rel=2e-3), site
        if site != "embed":
            logit = _value(table, site, "logit_lens_kl")
            assert np.isfinite(_value(table, site, "tuned_lens_kl_gain")) and np.isfinite(logit)
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete"
