"""The planted-truth zoo: constructed models with a known answer for every prediction.

ARCHITECTURE.md section 1 ("Power"): every prediction has a planted model that truly has its property and
one that truly lacks it, run end to end. Each entry of :data:`PLANTED` is a real ``LlamaForCausalLM`` (d = 64,
8 layers, 4 heads, a character tokenizer) whose weights are set by hand from a few seeded ingredients: a
random orthonormal basis Q (the unembedding is W_U = A diag(σ) Qᵀ with A's columns orthonormal and of zero
mean, so the W_U bands and the centred W_U bands are the same blocks of Q's columns), token content drawn
inside chosen bands (unit norm, centred) and, where a construction needs one, a carrier direction v.
:func:`build` writes one as a Hugging Face directory that ``spectral run --model DIR`` loads; :func:`zoo_config` is
the zoo's run configuration and :func:`run` one model's run (tests/test_planted_zoo.py); :func:`zoo_table` renders
the outcomes, and ``python -m spectral.planted_page docs/planted.md`` (:mod:`spectral.planted_page`) runs them all and
writes the page.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

D, LAYERS, HEADS, HIDDEN, K = 64, 8, 4, 128, 10  # width, depth, heads, MLP width, bands (the default K)
DH = D // HEADS
SEQ_LEN, MAX_SEQS = 32, 32  # the zoo corpus: the built-in text, the first 32 windows of 32 characters
CHARS = [chr(i) for i in range(32, 127)] + ["\n"]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
VOCAB = len(SPECIALS) + len(CHARS)
BOS = SPECIALS.index("<s>")
BANDS = [torch.from_numpy(b) for b in np.array_split(np.arange(D), K)]  # Q's columns of band 0 (top) … K − 1
TOP, TAIL = torch.cat(BANDS[:2]), BANDS[-1]  # prediction 10's top-2 bands; the tail ("dark") band


def char_tokenizer() -> Any:
    """A character-level fast tokenizer (one token per character, ``<s>`` as BOS, a pad token)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(SPECIALS + CHARS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>")


@functools.lru_cache(maxsize=1)
def zoo_windows() -> torch.Tensor:
    """(MAX_SEQS, 1 + SEQ_LEN) token ids of the zoo corpus, BOS in front (the windows every zoo run sees)."""
    from spectral.config import CorpusSpec
    from spectral.corpus import make_windows

    return make_windows(char_tokenizer(), CorpusSpec(source="builtin", seq_len=SEQ_LEN, max_seqs=MAX_SEQS)).ids


@dataclass
class Parts:
    """The seeded ingredients of one construction."""

    g: torch.Generator
    Q: torch.Tensor  # (D, D) orthonormal: the W_U basis, band b = Q[:, BANDS[b]]
    freq: torch.Tensor  # (VOCAB,) token frequencies of the zoo corpus (position 0 left out, as the statistics do)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    @property
    def v(self) -> torch.Tensor:
        """The carrier direction: Q's last column (W_U does not read it: σ = 0 there)."""
        return self.Q[:, -1]


def _content(p: Parts, basis: torch.Tensor, scale: float = 1.0, corpus: bool = True) -> torch.Tensor:
    """(VOCAB, D) token content inside span(basis): random, every row of norm ``scale`` (equal norms: no token's
    RMS differs), centred on the corpus's token frequencies (``corpus``; else on the vocabulary: the corpus then
    sees the weak mean its own frequencies leave)."""
    w = p.freq if corpus else torch.full((VOCAB,), 1.0 / VOCAB)
    x = p.randn(VOCAB, basis.shape[1]) @ basis.T
    for _ in range(50):  # alternate centring and normalising: both hold at the end (to ~1e-6)
        x = x - w @ x
        x = x / x.norm(dim=1, keepdim=True)
    return scale * x


def _unembed(model: Any, p: Parts, sigma: torch.Tensor) -> None:
    """lm_head = A diag(σ) Qᵀ: A (VOCAB × D) orthonormal columns of zero mean (centred W_U = W_U)."""
    A = p.randn(VOCAB, D)
    A, _ = torch.linalg.qr(A - A.mean(0))
    model.lm_head.weight.copy_(A * sigma @ p.Q.T)


def _spectrum(zero_last: bool = False) -> torch.Tensor:
    """W_U's singular values: 1.5 down to 0.5, evenly (the last one 0 where W_U must not read Q's last column)."""
    return torch.linspace(1.5, 0.5, D) * (torch.arange(D) < D - int(zero_last))


def _scale_head(model: Any, ids: torch.Tensor, std: float = 3.0) -> None:
    """Rescale lm_head so the final logits have standard deviation ``std`` over the vocabulary (a temperature)."""
    logits = model(ids[:4]).logits
    model.lm_head.weight.mul_(std / float(logits.std(-1).mean()))


def _set_head(att: Any, h: int, read: torch.Tensor, write: torch.Tensor, qk: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Head ``h`` reads span(read) (W_V = readᵀ; W_Q, W_K = (read · qk)ᵀ) and writes ``write`` (D × DH) as W_O."""
    sl = slice(h * DH, (h + 1) * DH)
    att.v_proj.weight[sl] = read.T
    att.q_proj.weight[sl] = (read @ qk[0]).T
    att.k_proj.weight[sl] = (read @ qk[1]).T
    att.o_proj.weight[:, sl] = write


def _silence(model: Any) -> None:
    """W_O = W_down = 0: no block writes anything."""
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def _mlp_map(mlp: Any, read: torch.Tensor, write: torch.Tensor) -> None:
    """MLP unit k reads read[:, k] (W_gate = W_up, so it outputs SiLU(g)·g) and writes write[:, k]."""
    n = read.shape[1]
    for w in (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight):
        w.zero_()
    mlp.gate_proj.weight[:n] = read.T
    mlp.up_proj.weight[:n] = read.T
    mlp.down_proj.weight[:, :n] = write


def _grow(model: Any, emb: torch.Tensor, U: torch.Tensor, start: float, c: float, subs: tuple[str, ...]) -> None:
    """Scale the writes of ``subs`` ("attn", "mlp") layer by layer so that the vocabulary's RMS amplitude in span(U)
    (U: D × k orthonormal) is ``start`` · c^(l+1) after layer l, shared equally by the sub-layers. Each token runs
    alone (at position 0 attention returns the token's own value): exact where every token's value is the same."""

    def amp(x: torch.Tensor) -> float:
        return float((x @ U).pow(2).sum(-1).mean().sqrt())

    h = emb.clone()
    for n, layer in enumerate(model.model.layers):
        att, mlp, a0, target = layer.self_attn, layer.mlp, amp(h), start * c ** (n + 1)
        subs_fn = {
            "attn": (lambda x, a=att, ln=layer.input_layernorm: a.o_proj(a.v_proj(ln(x))), att.o_proj.weight),
            "mlp": (lambda x, m=mlp, ln=layer.post_attention_layernorm: m(ln(x)), mlp.down_proj.weight),
        }
        for i, sub in enumerate(subs):
            f, w = subs_fn[sub]
            goal, step = a0 + (target - a0) * (i + 1) / len(subs), f(h)
            lo, hi = 0.0, 1.0
            while amp(h + hi * step) < goal:
                hi *= 2
            for _ in range(50):  # the write is linear in its scale: bisect on it
                lo, hi = ((lo + hi) / 2, hi) if amp(h + (lo + hi) / 2 * step) < goal else (lo, (lo + hi) / 2)
            w.mul_(lo)
            h = h + lo * step


# ---- the constructions ---------------------------------------------------------------------------------------------


def carrier(model: Any, p: Parts) -> None:
    """Embedding = content (⊥ v, unit norm) + 4 v; every block writes a positive multiple of v (W_V's rows and
    W_gate = W_up read the carrier amplitude, the columns of W_O and W_down are ∝ v), so the amplitude grows ×1.4
    per layer while the content stays; W_U reads the content, not v (v is its null direction)."""
    v = p.v
    emb = _content(p, p.Q[:, :-1], corpus=False) + 4.0 * v
    model.model.embed_tokens.weight.copy_(emb)
    for layer in model.model.layers:
        att = layer.self_attn
        att.v_proj.weight.copy_(0.5 * v[None, :].expand_as(att.v_proj.weight))
        att.o_proj.weight.copy_(v[:, None].expand_as(att.o_proj.weight) / D)
        _mlp_map(layer.mlp, 0.5 * v[:, None].expand(D, HIDDEN), v[:, None].expand(D, HIDDEN) / HIDDEN)
    _grow(model, emb, v[:, None], 4.0, 1.4, ("attn", "mlp"))
    _unembed(model, p, _spectrum(zero_last=True))


def silent(model: Any, p: Parts) -> None:
    """Content outside the top-2 W_U bands, centred on the vocabulary (no common component is planted: the corpus's
    own token frequencies leave ρ ≈ 0.15); W_O = W_down = 0, so the stream stays the embedding."""
    model.model.embed_tokens.weight.copy_(_content(p, p.Q[:, len(TOP) :], corpus=False))
    _silence(model)
    _unembed(model, p, _spectrum())


def amplitude(model: Any, p: Parts) -> None:
    """Embedding = s_tok v + content (⊥ v, norm ≈ 0.5, uncorrelated with s_tok over the corpus), s_tok = 3 exp(0.5
    z_tok): the carrier's amplitude varies most from token to token (the carrier is the top centred principal
    direction) and W_U reads it (v is W_U's top singular direction) beside the content; the blocks write nothing."""
    v = p.Q[:, 0]
    s = 3.0 * torch.exp(0.5 * p.randn(VOCAB))
    c = _content(p, p.Q[:, 1:], scale=0.5)
    ds = s - p.freq @ s
    c = c - ds[:, None] * ((p.freq * ds) @ c) / (p.freq @ ds**2)  # uncorrelated with s over the corpus: PC₁ = v
    model.model.embed_tokens.weight.copy_(s[:, None] * v + c)
    _silence(model)
    _unembed(model, p, _spectrum())


def modulation(model: Any, p: Parts) -> None:
    """Embedding = content (⊥ v) + 4 v; every MLP amplifies the content (its units' gates read v, the same for every
    token; their up-projections read the content's coordinates and W_down writes them back), ×1.4 per layer; the
    carrier amplitude stays 4; attention writes nothing."""
    v, C = p.v, p.Q[:, :-1]
    emb = _content(p, C) + 4.0 * v
    model.model.embed_tokens.weight.copy_(emb)
    for layer in model.model.layers:
        mlp = layer.mlp
        layer.self_attn.o_proj.weight.zero_()
        _mlp_map(mlp, C, C)
        mlp.gate_proj.weight.copy_(v[None, :].expand(HIDDEN, D))
    _grow(model, emb, C, 1.0, 1.4, ("mlp",))
    _unembed(model, p, _spectrum())


def _band_shift(p: Parts, shift: int) -> torch.Tensor:
    """(D, D) write of an MLP whose unit k reads coordinate k of Q: the units of band i write into band i + ``shift``
    (mod K) through a random map with orthonormal rows or columns."""
    write = torch.zeros(D, D)
    for i, src in enumerate(BANDS):
        dst = BANDS[(i + shift) % K]
        big, small = max(len(src), len(dst)), min(len(src), len(dst))
        R = torch.linalg.qr(p.randn(big, small))[0]
        write[:, src] = p.Q[:, dst] @ (R if len(dst) >= len(src) else R.T)
    return write


def channels(model: Any, p: Parts, spread: bool = False) -> None:
    """Content spread over every band; heads 0–1 read (W_V, W_Q, W_K) and write (W_O) only W_U band 0, heads 2–3
    only band 1: every head's OV and QK maps live in the top bands, and attention keeps each band in place; every MLP
    moves band i to band i + 1 (mod K), so its Jacobian is off-diagonal in the band basis."""
    model.model.embed_tokens.weight.copy_(_content(p, p.Q))
    E = torch.cat([torch.eye(DH)] * (D // DH), 0) / math.sqrt(D // DH)  # (D, DH): ½ [I I I I]ᵀ, meets every row equally
    for layer in model.model.layers:
        att = layer.self_attn
        for h in range(HEADS):
            if spread:  # orthonormal columns meeting every basis vector of Q equally: band energies ∝ band sizes
                read = write = p.Q[:, torch.randperm(D, generator=p.g)] @ E
            else:
                B = p.Q[:, BANDS[h // 2]]
                read, write = (B @ p.randn(B.shape[1], DH) / math.sqrt(DH) for _ in range(2))
            _set_head(att, h, read, 0.2 * write, (0.3 * p.randn(DH, DH), 0.3 * p.randn(DH, DH)))
        _mlp_map(layer.mlp, p.Q, 0.2 * _band_shift(p, 0 if spread else 1))
    _unembed(model, p, _spectrum())


def isotropic(model: Any, p: Parts) -> None:
    """The channels model with every head spread evenly over the bands (its read and write subspaces meet every
    basis vector of Q equally: band energies ∝ band sizes, the least concentrated map there is) and every MLP
    keeping band i in band i (a band-preserving Jacobian)."""
    channels(model, p, spread=True)


def dark_sink(model: Any, p: Parts, dark: bool = True) -> None:
    """Every token holds a common component u (Q's first column); W_Q reads u and W_K the sink direction s, in each
    head's lowest rotary frequency (the score does not depend on position), and only the BOS token (position 0)
    holds s (3 s): every query attends to BOS. s is in the tail band, the other tokens' content outside it. W_O =
    W_down = 0: attending to the sink is a no-op, as in trained models."""
    u, s = p.Q[:, 0], (p.Q[:, -1] if dark else p.Q[:, 1])
    emb = _content(p, p.Q[:, 2 : -len(TAIL)] if dark else p.Q[:, TAIL]) + u
    emb[BOS] += 3.0 * s
    model.model.embed_tokens.weight.copy_(emb)
    _silence(model)
    for layer in model.model.layers:
        att = layer.self_attn
        att.q_proj.weight.zero_()
        att.k_proj.weight.zero_()
        att.q_proj.weight[DH // 2 - 1 :: DH] = 2.0 * u  # rotary pairs (i, i + DH/2): i = DH/2 − 1 turns slowest
        att.k_proj.weight[DH // 2 - 1 :: DH] = 2.0 * s
    _unembed(model, p, _spectrum())


def bright_sink(model: Any, p: Parts) -> None:
    """The dark-sink model with the sink direction s in the top band and the other tokens' content in the tail band."""
    dark_sink(model, p, dark=False)


def smoother(model: Any, p: Parts) -> None:
    """Content spread over every band; W_Q = W_K = 0, so every head averages uniformly over the positions up to its
    own, and W_V W_O = 0.05 · 2^l I at layer l: each layer adds a (growing) running mean of the stream, a causal
    low-pass filter applied again and again; the MLPs write nothing."""
    model.model.embed_tokens.weight.copy_(_content(p, p.Q))
    _silence(model)
    for i, layer in enumerate(model.model.layers):
        att = layer.self_attn
        att.q_proj.weight.zero_()
        att.k_proj.weight.zero_()
        att.v_proj.weight.copy_(torch.eye(D))
        att.o_proj.weight.copy_(0.05 * 2.0**i * torch.eye(D))
    _unembed(model, p, _spectrum())


def resonant(model: Any, p: Parts) -> None:
    """Content outside the top-2 W_U bands; every MLP reads it and writes into the top-2 bands (a random map), its
    scale set so that the top-band amplitude is 0.05 · 2^(l+1) after layer l: the part W_U reads most grows layer
    after layer until it decides the margin; attention writes nothing."""
    rest = p.Q[:, len(TOP) :]
    emb = _content(p, rest)
    model.model.embed_tokens.weight.copy_(emb)
    _silence(model)
    for layer in model.model.layers:
        _mlp_map(layer.mlp, rest, p.Q[:, TOP] @ p.randn(len(TOP), rest.shape[1]) / math.sqrt(rest.shape[1]))
    _grow(model, emb, p.Q[:, TOP], 0.05, 2.0, ("mlp",))
    _unembed(model, p, _spectrum())


@dataclass(frozen=True)
class PlantedModel:
    """One construction: its builder, the predictions it is the with-model / without-model of, what it is."""

    builder: Callable[[Any, Parts], None]
    with_: tuple[str, ...]
    without: tuple[str, ...]
    rogue: bool = False  # the carrier direction v is a coordinate axis (e₀)
    logit_std: float = 3.0  # the output's temperature: lm_head scaled to this logit s.d. over the vocabulary

    @property
    def description(self) -> str:
        return " ".join((self.builder.__doc__ or "").split()) + (" Here v = e₀, one coordinate." if self.rogue else "")


PLANTED: dict[str, PlantedModel] = {
    "carrier": PlantedModel(carrier, ("1", "2", "3", "4", "5", "11"), ()),
    "silent": PlantedModel(silent, (), ("1", "2", "5", "9", "10")),
    "rogue": PlantedModel(carrier, (), ("3",), rogue=True),
    "amplitude": PlantedModel(amplitude, (), ("4",), logit_std=5.0),
    "modulation": PlantedModel(modulation, (), ("11",)),
    "channels": PlantedModel(channels, ("6", "7"), ()),
    "isotropic": PlantedModel(isotropic, (), ("6", "7")),
    "dark_sink": PlantedModel(dark_sink, ("8",), ()),
    "bright_sink": PlantedModel(bright_sink, (), ("8",)),
    "smoother": PlantedModel(smoother, ("9",), ()),
    "resonant": PlantedModel(resonant, ("10",), ()),
}


def _parts(seed: int, rogue_axis: bool) -> Parts:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    if rogue_axis:  # a Householder reflection turns the last column into e₀
        w = Q[:, -1] - torch.eye(D)[:, 0]
        Q = Q - 2 * torch.outer(w, w @ Q) / (w @ w)
    ids = zoo_windows()[:, 1:].reshape(-1)
    freq = torch.bincount(ids, minlength=VOCAB).float()
    return Parts(g, Q, freq / freq.sum())


def build(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the planted model ``name`` (weights + tokenizer) as a Hugging Face directory; returns it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        num_hidden_layers=LAYERS, hidden_size=D, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        intermediate_size=HIDDEN, vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=BOS, eos_token_id=SPECIALS.index("</s>"), pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    p = _parts(seed, PLANTED[name].rogue)
    with torch.no_grad():
        PLANTED[name].builder(model, p)
        _scale_head(model, zoo_windows(), PLANTED[name].logit_std)
    out = Path(out_dir)
    model.save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    return out


def zoo_config(model_dir: str | Path, out: str | Path) -> Any:
    """The zoo's run: its corpus, the R ensemble (8 seeds: a tighter null than the default 5), R rescaled to the
    model's norms (3 seeds) and W (5 permutations), every window for the nulls, no figures files."""
    from spectral.config import AnalysisSpec, CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec

    return ExperimentConfig(
        model=ModelSpec(name=str(model_dir)),
        corpus=CorpusSpec(source="builtin", seq_len=SEQ_LEN, max_seqs=MAX_SEQS),
        capture=CaptureSpec(batch_size=8),
        analysis=AnalysisSpec(n_boot=200, intervention_windows=0),
        controls=("random_init", "random_scaled", "permuted_weights"),
        random_seeds=(1, 2, 3, 4, 5, 6, 7, 8),
        null_windows=0,
        formats=(),
        out=str(out),
    )


def run(name: str, work: str | Path, seed: int = 0) -> dict[str, Any]:
    """Build ``name`` under ``work`` and run the zoo's experiment on it: {prediction number: Verdict}."""
    from spectral.predictions import read_verdicts
    from spectral.runner import run_experiment

    work = Path(work)
    d = build(name, work / name, seed)
    res = run_experiment(zoo_config(d, work / f"run-{name}"), progress=False, log=lambda s: None)
    return {v.prediction.split()[0]: v for v in read_verdicts((res.run_dir / "verdicts.csv").read_text())}


# ---- the table and the page --------------------------------------------------------------------------------------


def planted_for(prediction: str) -> tuple[str, str]:
    """(with-model, without-model) names of a prediction number ("1" … "11")."""
    w = next(n for n, m in PLANTED.items() if prediction in m.with_)
    return w, next(n for n, m in PLANTED.items() if prediction in m.without)


def _cell(v: Any) -> str:
    return (
        f"**{v.outcome}** | {v.effect:.3g} [{v.effect_ci_low:.3g}, {v.effect_ci_high:.3g}], δ {v.margin:.3g}, "
        f"power {v.power:.3g}"
    )


def zoo_table(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table: per prediction, the with-model and the without-model, each with its outcome, the deciding
    test's effect [CI] and margin δ (``results``: {model: {prediction number: Verdict}}, as
    :func:`spectral.planted_page.run_zoo` returns)."""
    from spectral.predictions import PREDICTIONS

    lines = [
        "| prediction | planted with | outcome | effect [CI], δ, power "
        "| planted without | outcome | effect [CI], δ, power |",
        "|---|---|---|---|---|---|---|",
    ]
    for pred in PREDICTIONS:
        num = pred.key.split()[0]
        w, wo = planted_for(num)
        cells = [f"`{n}` | " + (_cell(results[n][num]) if n in results else "not run | ") for n in (w, wo)]
        lines.append(f"| {pred.key} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def zoo_csv(results: dict[str, dict[str, Any]]) -> str:
    """CSV of the table: prediction, role (with / without), model, outcome, effect, its interval, δ, power (the
    research note reads its numbers from here: reports/calibration/planted.csv)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["prediction", "role", "model", "outcome", "effect", "effect_ci_low", "effect_ci_high", "margin", "power"]
    )
    for num in (str(i) for i in range(1, 12)):
        for role, name in zip(("with", "without"), planted_for(num), strict=True):
            if name in results and num in results[name]:
                v = results[name][num]
                w.writerow([num, role, name, v.outcome, *(f"{x:.6g}" for x in (v.effect, v.effect_ci_low,
                            v.effect_ci_high, v.margin, v.power))])  # fmt: skip
    return buf.getvalue()
