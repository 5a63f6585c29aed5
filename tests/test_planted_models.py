"""Predictions driven through the whole pipeline (capture, statistics, nulls, decision) by planted models.

A tiny Llama is rewired so that every MLP adds a non-negative multiple of one fixed direction v to the
stream (W_gate = W_up, so SiLU(g)·g ≥ 0, and every column of W_down is v): the norm grows layer after
layer along a carrier. Its random-weight twins (R) and its weight-permuted twin (W: the same entries,
the alignment gone) do not grow that way, so prediction 1 (growth is learned) and prediction 11 (norm
growth is carrier growth) are supported. A twin whose blocks write nothing (W_O = W_down = 0) has no
growth at all: predictions 1, 5 and 11 are contradicted (prediction 5 also holds for the carrier model:
its updates point along the stream).
"""

import pytest
import torch
from conftest import char_tokenizer

from spectral.config import AnalysisSpec, CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec
from spectral.runner import run_experiment


def _planted(tmp_path, kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=6, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=len(char_tokenizer().get_vocab()) + 5, max_position_embeddings=128,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    v = torch.randn(32)
    v = v / v.norm()
    with torch.no_grad():
        for layer in model.model.layers:
            if kind == "carrier":
                layer.mlp.up_proj.weight.copy_(layer.mlp.gate_proj.weight)
                layer.mlp.down_proj.weight.copy_(0.05 * v[:, None].expand(32, 64))
            else:  # no growth: the blocks add nothing
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
    d = tmp_path / kind
    model.save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


def _verdicts(tmp_path, kind: str, sample_text: str) -> dict:
    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text)
    cfg = ExperimentConfig(
        model=ModelSpec(name=str(_planted(tmp_path, kind))),
        corpus=CorpusSpec(source=str(corpus), seq_len=32, max_seqs=24),
        capture=CaptureSpec(batch_size=8),
        analysis=AnalysisSpec(n_boot=200, intervention_windows=0),
        controls=("random_init", "permuted_weights"),
        random_seeds=(1, 2, 3, 4),
        null_windows=0,
        formats=(),
        out=str(tmp_path / f"run-{kind}"),
    )
    res = run_experiment(cfg, progress=False, log=lambda s: None)
    from spectral.predictions import read_verdicts

    return {v.prediction.split()[0]: v for v in read_verdicts((res.run_dir / "verdicts.csv").read_text())}


@pytest.mark.parametrize("kind,p1", [("carrier", "supported"), ("silent", "contradicted")])
def test_planted_growth_is_decided_against_r_and_w(tmp_path, sample_text, kind, p1):
    v = _verdicts(tmp_path, kind, sample_text)
    assert v["1"].outcome == p1, v["1"].note
    if kind == "carrier":
        assert v["1"].effect_ci_low > v["1"].margin
        assert v["11"].outcome == "supported", v["11"].note  # the carrier grows, the modulation does not
        # prediction 5's δ is 1/√d (0.177 at d = 32): this model's updates are aligned (cos ≈ 0.14, far above a
        # random direction's 0) but not by one null s.d.; the planted-truth zoo plants P5 with a stronger carrier
        assert v["5"].effect > 0.1, v["5"].note
    else:
        assert v["1"].value == pytest.approx(1.0, abs=1e-6)  # nothing is added: g = 1 exactly
        assert v["11"].outcome == "contradicted" and v["5"].outcome == "contradicted"
