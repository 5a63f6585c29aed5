"""spectral.prompt (the Single-prompt page's maths) against Hugging Face's own forward."""

import numpy as np
import pytest
import torch

from spectral.config import ModelSpec
from spectral.errors import CorpusError
from spectral.models import load_model
from spectral.prompt import lens_top_tokens, trace_prompt


def test_trace_prompt_matches_hf_hidden_states_and_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    d = tiny_model_dir("llama")
    model = load_model(ModelSpec(name=str(d)))
    trace = trace_prompt(model, "abc abd abc", max_tokens=8)
    L, T, _ = trace.h.shape
    assert L == model.arch.n_layers and len(trace.tokens) == T
    hf = AutoModelForCausalLM.from_pretrained(str(d), attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(torch.tensor([trace.ids]), output_hidden_states=True)
    for layer in range(L - 1):  # HF's last hidden state is after the final norm
        np.testing.assert_allclose(trace.h[layer], out.hidden_states[layer + 1][0].numpy(), rtol=1e-4, atol=1e-5)
    assert (trace.carrier_share >= 0).all() and (trace.carrier_share <= 1 + 1e-9).all()
    np.testing.assert_allclose(trace.norms, np.linalg.norm(trace.h, axis=-1))
    cos = trace.layer_cosine()
    np.testing.assert_allclose(np.diag(cos), 1.0, rtol=1e-9)
    pcs = trace.pca_trajectory(2)
    assert pcs.shape == (L, T, 2) and abs(pcs.reshape(-1, 2).mean(0)).max() < 1e-9
    top = lens_top_tokens(model, trace)
    assert top is not None
    assert top[-1] == [model.tokenizer.decode([int(i)]) for i in out.logits[0].argmax(-1).tolist()]


def test_trace_prompt_rejects_an_empty_prompt(tiny_model_dir):
    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    with pytest.raises(CorpusError, match="no tokens"):
        trace_prompt(model, "", max_tokens=8)
