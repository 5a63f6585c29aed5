"""Training a reference decoder (the maths of experiments/train_reference.py): corpus splitting, a byte-level BPE,
token windows that start with the BOS token, the unigram baseline, log-spaced checkpoint steps, the learning-rate
schedule, the GPT-2-architecture model from a config, the held-out loss, and the loss-curve figure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

EOT = "<|endoftext|>"


PG_START = "*** START OF"


PG_END = "*** END OF"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (the TOML's [run] section, [quick] on top)."""

    corpora: tuple[str, ...]  # text files or directories of .txt files, relative to the repo root
    max_chars: int = 0  # characters read per file (0 = all)
    heldout_fraction: float = 0.05  # the last part of every file is held out
    tokenizer: str = "bpe"  # "bpe" (trained on the training split) or a tokenizer directory
    vocab_size: int = 8192  # size of the trained BPE
    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    n_ctx: int = 256  # positions, BOS included
    batch_size: int = 8
    steps: int = 2000
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_windows: int = 48
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        checks = {
            "corpora must list at least one path": len(self.corpora) > 0,
            "heldout_fraction must be in (0, 0.5]": 0 < self.heldout_fraction <= 0.5,
            "d_model must be a multiple of n_head": self.d_model % self.n_head == 0,
            "n_ctx must be >= 8": self.n_ctx >= 8,
            "steps, batch_size, eval_every, eval_windows, threads must be >= 1": min(
                self.steps, self.batch_size, self.eval_every, self.eval_windows, self.threads
            )
            >= 1,
            "vocab_size must be >= 300 (256 bytes + merges)": self.vocab_size >= 300,
            "seed must be >= 0": self.seed >= 0,
        }
        bad = [msg for msg, ok in checks.items() if not ok]
        if bad:
            raise ValueError("train config: " + "; ".join(bad))


def read_document(path: Path, max_chars: int) -> str:
    """The file read by spectral's corpus rule (BOM dropped, \\n newlines), Project Gutenberg boilerplate cut."""
    from spectral.corpus import read_text

    text = read_text(path)
    start, end = text.find(PG_START), text.find(PG_END)
    if start >= 0 and end > start:
        text = text[text.index("\n", start) + 1 : text.rfind("\n", 0, end)].strip("\n") + "\n"
    return text[:max_chars] if max_chars else text


def split_document(text: str, fraction: float) -> tuple[str, str]:
    """(train, held-out): the held-out part is the end of the file, cut at a story/paragraph/line boundary."""
    target = int(len(text) * (1 - fraction))
    for sep in (EOT, "\n\n", "\n"):
        cut = text.find(sep, target)
        if cut >= 0:
            cut += len(sep)
            return text[:cut], text[cut:].lstrip("\n")
    return text[:target], text[target:]


def train_bpe(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE (GPT-2 pre-tokenization) trained on ``texts``, with <|endoftext|> as BOS/EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    pieces = (piece for t in texts for piece in t.split(EOT))  # the separator is not text to merge
    tok.train_from_iterator(pieces, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT)


def separator(tok: Any) -> tuple[str, int]:
    """The document separator (EOS, else BOS) as text and id."""
    for text, idx in ((tok.eos_token, tok.eos_token_id), (tok.bos_token, tok.bos_token_id)):
        if text is not None and idx is not None:
            return text, int(idx)
    raise ValueError("the tokenizer has neither an EOS nor a BOS token to separate documents")


def windows(stream: np.ndarray, width: int, bos: int, n: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows of ``width - 1`` tokens with BOS in front (as spectral cuts them);
    ``n`` of them evenly spread over the stream, or all."""
    k = len(stream) // (width - 1)
    idx = np.arange(k) if n is None or n >= k else np.linspace(0, k - 1, n).round().astype(np.int64)
    body = stream[: k * (width - 1)].reshape(k, width - 1)[idx]
    return torch.from_numpy(np.concatenate([np.full((len(idx), 1), bos, dtype=np.int64), body], axis=1))


def unigram_cross_entropy(train: np.ndarray, targets: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats/token) of ``targets`` under the training unigram distribution (add-one smoothed)."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[targets].mean())


def checkpoint_steps(steps: int) -> list[int]:
    """0, 1, 2, 4, ... (powers of two below ``steps``) and ``steps`` itself."""
    out = [0] + [2**k for k in range(int(math.log2(steps)) + 1) if 2**k < steps] + [steps]
    return sorted(set(out))


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def build_model(cfg: TrainConfig, vocab: int, bos: int, eos: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"  # training speed; spectral reloads it with eager attention
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


@torch.no_grad()
def mean_loss(model: Any, data: torch.Tensor, batch: int) -> float:
    """Mean next-token cross-entropy (nats/token) over every target of ``data`` (equal-width windows)."""
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(data), batch):
        x = data[i : i + batch]
        total += float(model(input_ids=x, labels=x).loss) * len(x)
    model.train(was)
    return total / len(data)


def loss_csv(rows: list[dict[str, Any]]) -> str:
    cols = ("step", "tokens", "lr", "train_loss", "val_loss", "train_eval_loss")
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else f"{r[c]:.6g}" for c in cols))
    return "\n".join(lines) + "\n"


def log_step(step: int) -> float:
    """x position of a step on the log axis: step 0 (the initialisation) is drawn at 0.5."""
    return 0.5 if step == 0 else float(step)


def step_ticks(steps: list[int]) -> dict[str, Any]:
    ticks = sorted({0, *[2**k for k in range(0, int(math.log2(max(steps))) + 1, 2)], max(steps)})
    return {"tickvals": [log_step(s) for s in ticks], "ticktext": [str(s) for s in ticks]}


def loss_figure(record: dict[str, Any], title: str) -> Any:
    import plotly.graph_objects as go

    from spectral.plotting import OKABE_ITO, apply_theme

    rows = record["loss_rows"]
    per_step = [r for r in rows if "train_loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    fig = go.Figure()
    fig.add_scatter(
        x=[log_step(r["step"]) for r in per_step],
        y=[r["train_loss"] for r in per_step],
        mode="lines",
        name="training batch loss",
        line={"color": "#BBBBBB", "width": 1},
    )
    for key, name, color in (
        ("train_eval_loss", "training split", OKABE_ITO[1]),
        ("val_loss", "held out", OKABE_ITO[0]),
    ):
        fig.add_scatter(
            x=[log_step(r["step"]) for r in evals],
            y=[r[key] for r in evals],
            mode="lines+markers",
            name=name,
            line={"color": color, "width": 2},
            marker={"size": 5},
        )
    fig.add_hline(
        y=record["unigram_baseline"],
        line={"color": "#000000", "dash": "dot", "width": 1.5},
        annotation_text=f"unigram baseline {record['unigram_baseline']:.2f}",
        annotation_position="top right",
    )
    apply_theme(fig, title)
    fig.update_xaxes(
        title_text="training step (log; step 0 drawn at 0.5)", type="log", **step_ticks(record["checkpoint_steps"])
    )
    fig.update_yaxes(title_text="cross-entropy (nats/token)")
    return fig
