"""The planted-truth zoo: constructed models with a known answer for every prediction.

draft
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

D, LAYERS, HEADS, HIDDEN = 64, 8, 4, 128
CHARS = [chr(i) for i in range(32, 127)] + ["\n"]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
VOCAB = len(SPECIALS) + len(CHARS)


def char_tokenizer() -> Any:
    """A character-level fast tokenizer (one token per character, ``<s>`` as BOS, a pad token)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


def _orth(x: torch.Tensor, *dirs: torch.Tensor) -> torch.Tensor:
    """x (..., d) with its components along the unit vectors ``dirs`` removed."""
    for u in dirs:
        x = x - (x @ u)[..., None] * u
    return x


@dataclass
class Parts:
    """The seeded random ingredients of one construction."""

    g: torch.Generator
    v: torch.Tensor  # the carrier direction (dense unit vector)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)


def _silence(model: Any) -> None:
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def _content(p: Parts, scale: float = 1.0, *avoid: torch.Tensor) -> torch.Tensor:
    """Token embeddings (V × d) of random content, centred over the vocabulary, orthogonal to ``avoid``."""
    x = p.randn(VOCAB, D)
    x = x - x.mean(0)
    x = _orth(x, *avoid)
    return scale * x / x.norm(dim=1, keepdim=True).mean()


def _carrier_blocks(model: Any, v: torch.Tensor, emb: torch.Tensor, c: float = 1.4, read: float = 0.5) -> None:
    """Every block writes a non-negative multiple of v, scaled so that the carrier amplitude grows by ``c`` per
    layer (mean over the vocabulary): attention's values read the carrier amplitude (every row of W_V ∝ v, so
    every head's value is the same positive multiple of 1 whatever it attends to) and W_O writes along v; the
    MLP reads it too (W_gate = W_up ∝ v, so SiLU(g)·g ≥ 0) and every column of W_down is ∝ v."""
    h = emb.clone()
    for layer in model.model.layers:
        att, mlp = layer.self_attn, layer.mlp
        att.v_proj.weight.copy_(read * v[None, :].expand_as(att.v_proj.weight))
        att.o_proj.weight.copy_(v[:, None].expand_as(att.o_proj.weight) / D)
        mlp.gate_proj.weight.copy_(read * v[None, :].expand(HIDDEN, D))
        mlp.up_proj.weight.copy_(mlp.gate_proj.weight)
        mlp.down_proj.weight.copy_(v[:, None].expand(D, HIDDEN) / HIDDEN)
        a = float((h @ v).mean())
        step = float((att.o_proj(att.v_proj(layer.input_layernorm(h))) @ v).mean())
        att.o_proj.weight.mul_(a * (c - 1) / 2 / step)
        h = h + att.o_proj(att.v_proj(layer.input_layernorm(h)))
        step = float((mlp(layer.post_attention_layernorm(h)) @ v).mean())
        mlp.down_proj.weight.mul_((a * c - float((h @ v).mean())) / step)
        h = h + mlp(layer.post_attention_layernorm(h))


def _head(model: Any, p: Parts, *avoid: torch.Tensor) -> None:
    model.lm_head.weight.copy_(_orth(p.randn(VOCAB, D), *avoid) * 3.0 / math.sqrt(D))


def carrier(model: Any, p: Parts) -> None:
    emb = _content(p, 1.0, p.v) + 4.0 * p.v
    model.model.embed_tokens.weight.copy_(emb)
    _carrier_blocks(model, p.v, emb)
    _head(model, p, p.v)


def silent(model: Any, p: Parts) -> None:
    model.model.embed_tokens.weight.copy_(_content(p, 1.0))
    _silence(model)
    _head(model, p)


@dataclass(frozen=True)
class PlantedModel:
    """One construction: its builder, the predictions it is the with-model / without-model of, what it is."""

    builder: Callable[[Any, Parts], None]
    with_: tuple[str, ...]
    without: tuple[str, ...]
    description: str


PLANTED: dict[str, PlantedModel] = {
    "carrier": PlantedModel(carrier, ("1", "2", "5", "11"), (), "carrier"),
    "silent": PlantedModel(silent, (), ("1", "2", "5", "11"), "silent"),
}


def build(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the planted model ``name`` (weights + tokenizer) as a Hugging Face directory; returns it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        num_hidden_layers=LAYERS, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        intermediate_size=HIDDEN, vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=False,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    p = Parts(g, _unit(torch.randn(D, generator=g)))
    with torch.no_grad():
        PLANTED[name].builder(model, p)
    out = Path(out_dir)
    model.save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    return out


def zoo_config(model_dir: Path, out: Path) -> Any:
    from spectral.config import AnalysisSpec, CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec

    return ExperimentConfig(
        model=ModelSpec(name=str(model_dir)),
        corpus=CorpusSpec(source="builtin", seq_len=32, max_seqs=32),
        capture=CaptureSpec(batch_size=8),
        analysis=AnalysisSpec(n_boot=200, intervention_windows=0),
        controls=("random_init", "permuted_weights"),
        random_seeds=(1, 2, 3, 4),
        null_windows=0,
        formats=(),
        out=str(out),
    )


def run(name: str, work: Path, seed: int = 0) -> list[Any]:
    from spectral.predictions import read_verdicts
    from spectral.runner import run_experiment

    d = build(name, work / name, seed)
    res = run_experiment(zoo_config(d, work / f"run-{name}"), progress=False, log=lambda s: None)
    return read_verdicts((res.run_dir / "verdicts.csv").read_text())
