"""Train the reference decoder whose checkpoints show when the carrier appears (issue 8).

A pre-LN GPT-2-architecture decoder (Hugging Face ``GPT2LMHeadModel`` built from a config) is
trained on CPU on the public-domain corpora in ``../shared/data/corpora`` (or any text given with
``--corpus``), with a held-out split, seeded and deterministic. Checkpoints at log-spaced steps
(0, 1, 2, 4, ... and the last step, like Pythia) are saved as Hugging Face directories
(safetensors + the tokenizer), so ``spectral.models.load_model`` loads each one directly and
``experiments/sweep_checkpoints.py`` runs the battery on every checkpoint.

Weights, the tokenizer, the held-out text and the per-step log go to ``--out`` (default
``reports/training/runs/reference``, ignored by git); the loss curve (PNG/HTML/CSV/caption) and
the training record (``training.json``, ``training.md``) go to ``--results`` (default
``reports/training``; with ``--quick``, ``OUT/results`` so the committed results stay untouched).

    python experiments/train_reference.py            # the reference model, about 20 min on 2 cores
    python experiments/train_reference.py --quick    # tiny model, a few dozen steps (seconds)
    python experiments/train_reference.py --corpus my.txt --tokenizer ../shared/data/gpt2-tokenizer

Same config, seed, thread count and torch build give the same weights bit for bit (tests/test_training.py
checks it for --quick).
"""

import argparse
import json
import os
import shlex
import sys
import time
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral.training import (
    TrainConfig,
    build_model,
    checkpoint_steps,
    loss_csv,
    loss_figure,
    lr_at,
    mean_loss,
    read_document,
    separator,
    split_document,
    train_bpe,
    unigram_cross_entropy,
    windows,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).resolve().parent / "configs" / "train_reference.toml"


def load_train_config(path: Path, quick: bool, overrides: dict[str, Any]) -> TrainConfig:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    merged = {**data["run"], **(data.get("quick", {}) if quick else {})}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (known: {sorted(known)})")
    merged["corpora"] = tuple(merged["corpora"])
    return TrainConfig(**merged)


# ---------------------------------------------------------------- text and tokens


def corpus_files(paths: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        q = Path(p) if Path(p).is_absolute() else ROOT / p
        if q.is_dir():
            out += sorted(f for f in q.rglob("*.txt") if f.is_file() and f.name != "README.txt")
        elif q.is_file():
            out.append(q)
        else:
            raise FileNotFoundError(f"corpus {q} does not exist")
    return out


def load_tokenizer(cfg: TrainConfig, train_texts: list[str]) -> Any:
    if cfg.tokenizer == "bpe":
        return train_bpe(train_texts, cfg.vocab_size)
    from transformers import AutoTokenizer

    path = Path(cfg.tokenizer) if Path(cfg.tokenizer).is_absolute() else ROOT / cfg.tokenizer
    return AutoTokenizer.from_pretrained(str(path))


# ---------------------------------------------------------------- model and training


def save_checkpoint(model: Any, tok: Any, dest: Path, record: dict[str, Any]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    (dest / "checkpoint.json").write_text(json.dumps(record, indent=2) + "\n")


def train(cfg: TrainConfig, out: Path, log: Any) -> dict[str, Any]:
    """Prepare data, train, checkpoint; returns the training record (also written to OUT/training.json)."""
    from transformers.utils import logging as hf_logging

    from spectral.corpus import bos_id, tokenize

    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    files = corpus_files(cfg.corpora)
    parts = [split_document(read_document(f, cfg.max_chars), cfg.heldout_fraction) for f in files]
    tok = load_tokenizer(cfg, [tr for tr, _ in parts])
    sep_text, eot = separator(tok)
    bos = bos_id(tok)
    bos = eot if bos is None else bos  # in front of every window, as spectral's corpus windows have it
    heldout_text = sep_text.join(ho for _, ho in parts)
    (out / "heldout.txt").write_text(heldout_text, encoding="utf-8")
    tok.save_pretrained(out / "tokenizer")
    train_ids = np.concatenate([np.array(tokenize(tok, tr) + [eot], dtype=np.int64) for tr, _ in parts])
    val_ids = np.array(tokenize(tok, heldout_text), dtype=np.int64)  # exactly what spectral's windows read
    vocab = len(tok)
    val_all = windows(val_ids, cfg.n_ctx, bos)
    val_eval = windows(val_ids, cfg.n_ctx, bos, cfg.eval_windows)
    train_eval = windows(train_ids, cfg.n_ctx, bos, cfg.eval_windows)
    unigram = unigram_cross_entropy(train_ids, val_all[:, 1:].reshape(-1).numpy(), vocab)
    chars_per_token = len(heldout_text) / len(val_ids)
    t_data = time.perf_counter() - t_start
    log(
        f"data: {len(files)} files, {len(train_ids):,} training / {len(val_ids):,} held-out tokens, "
        f"vocab {vocab}, unigram baseline {unigram:.4f} nats/token ({t_data:.1f} s)"
    )

    model = build_model(cfg, vocab, bos, eot)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, cfg.beta2),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    stream = torch.from_numpy(train_ids)
    span = cfg.n_ctx - 1
    ckpts = checkpoint_steps(cfg.steps)
    rows: list[dict[str, Any]] = []
    t_train, t_eval = time.perf_counter(), 0.0
    model.train()
    for step in range(cfg.steps + 1):
        row: dict[str, Any] = {"step": step, "tokens": step * cfg.batch_size * span}
        if step in ckpts or step % cfg.eval_every == 0 or step == cfg.steps:
            t = time.perf_counter()
            row["val_loss"] = mean_loss(model, val_eval, cfg.batch_size)
            row["train_eval_loss"] = mean_loss(model, train_eval, cfg.batch_size)
            t_eval += time.perf_counter() - t
            if step in ckpts:
                rec = {"step": step, "tokens": row["tokens"], "val_loss": row["val_loss"], "seed": cfg.seed}
                save_checkpoint(model, tok, out / "checkpoints" / f"step-{step:06d}", rec)
            elapsed = time.perf_counter() - t_train
            log(f"step {step:5d}  val {row['val_loss']:.4f}  train {row['train_eval_loss']:.4f}  {elapsed:6.0f} s")
        if step == cfg.steps:
            rows.append(row)
            break
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        off = torch.randint(0, len(stream) - span + 1, (cfg.batch_size,), generator=gen)
        x = torch.stack([torch.cat([torch.tensor([bos]), stream[o : o + span]]) for o in off.tolist()])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        row.update(lr=lr, train_loss=loss.item())
        rows.append(row)
    t_loop = time.perf_counter() - t_train
    t = time.perf_counter()
    final_val = mean_loss(model, val_all, cfg.batch_size)
    final_train = mean_loss(model, windows(train_ids, cfg.n_ctx, bos, len(val_all)), cfg.batch_size)
    t_final = time.perf_counter() - t
    return {
        "config": asdict(cfg),
        "corpus_files": [os.path.relpath(f, ROOT) for f in files],
        "n_params": n_params,
        "vocab_size": vocab,
        "train_tokens": len(train_ids),
        "heldout_tokens": len(val_ids),
        "heldout_chars": len(heldout_text),
        "heldout_windows": len(val_all),
        "tokens_seen": cfg.steps * cfg.batch_size * span,
        "epochs": cfg.steps * cfg.batch_size * span / len(train_ids),
        "checkpoint_steps": ckpts,
        "final_val_loss": final_val,
        "final_train_loss": final_train,
        "unigram_baseline": unigram,
        "final_val_nats_per_char": final_val / chars_per_token,
        "unigram_nats_per_char": unigram / chars_per_token,
        "chars_per_token": chars_per_token,
        "seconds": {
            "data_and_tokenizer": t_data,
            "training_loop": t_loop,
            "of_which_eval": t_eval,
            "final_eval": t_final,
            "total": time.perf_counter() - t_start,
        },
        "loss_rows": rows,
    }


# ---------------------------------------------------------------- outputs


def summary_markdown(record: dict[str, Any]) -> str:
    c, s = record["config"], record["seconds"]
    return "\n".join(
        [
            "# Reference decoder: training record",
            "",
            f"Command: `{record['command']}` (seed {c['seed']}, {c['threads']} torch threads).",
            "",
            f"- model: GPT2LMHeadModel (pre-LN), {c['n_layer']} layers, d_model {c['d_model']}, {c['n_head']} heads, "
            f"context {c['n_ctx']}, {record['n_params']:,} parameters (tied embeddings)",
            f"- tokenizer: {c['tokenizer']} (vocabulary {record['vocab_size']}, "
            f"{record['chars_per_token']:.2f} held-out characters per token)",
            f"- corpus: {', '.join(record['corpus_files'])}; last {c['heldout_fraction']:.0%} of every file held out: "
            f"{record['train_tokens']:,} training / {record['heldout_tokens']:,} held-out tokens",
            f"- optimisation: AdamW lr {c['lr']} (warm-up {c['warmup']}, cosine to {c['min_lr_frac']} x), "
            f"batch {c['batch_size']} x {c['n_ctx'] - 1} tokens, {c['steps']} steps = {record['tokens_seen']:,} tokens "
            f"({record['epochs']:.2f} epochs)",
            f"- checkpoints at steps {', '.join(map(str, record['checkpoint_steps']))}",
            f"- wall time: {s['total']:.0f} s = {s['total'] / 60:.1f} min in all ({s['training_loop']:.0f} s "
            f"training loop, of which {s['of_which_eval']:.0f} s evaluation; data and tokenizer "
            f"{s['data_and_tokenizer']:.0f} s)",
            "",
            "| nats/token | value |",
            "|---|---|",
            f"| final validation loss (all {record['heldout_windows']} held-out windows) "
            f"| {record['final_val_loss']:.4f} |",
            f"| final training loss (as many training windows) | {record['final_train_loss']:.4f} |",
            "| unigram baseline (held-out tokens under the training unigram, add-one) "
            f"| {record['unigram_baseline']:.4f} |",
            "",
            f"Per character: validation {record['final_val_nats_per_char']:.4f}, unigram "
            f"{record['unigram_nats_per_char']:.4f} nats/char.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model, a few dozen steps (the [quick] section)")
    p.add_argument("--config", type=Path, default=CONFIG, help="TOML with [run] and [quick] sections")
    p.add_argument("--corpus", action="append", help="a text file or a directory of .txt files (repeatable)")
    p.add_argument("--tokenizer", help="'bpe' or a tokenizer directory, e.g. ../shared/data/gpt2-tokenizer")
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads (results are bit-identical only at equal threads)")
    p.add_argument("--out", type=Path, help="checkpoints and logs (default reports/training/runs/reference|quick)")
    p.add_argument(
        "--results", type=Path, help="loss curve and record (default reports/training; --quick: OUT/results)"
    )
    args = p.parse_args(argv)
    overrides = {  # paths on the command line are relative to the working directory, in the TOML to the repo
        "corpora": tuple(str(Path(c).resolve()) for c in args.corpus) if args.corpus else None,
        "tokenizer": args.tokenizer if args.tokenizer in (None, "bpe") else str(Path(args.tokenizer).resolve()),
        "vocab_size": args.vocab_size,
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
    }
    cfg = load_train_config(args.config, args.quick, overrides)
    out = (args.out or ROOT / "reports" / "training" / "runs" / ("quick" if args.quick else "reference")).resolve()
    results = (args.results or (out / "results" if args.quick else ROOT / "reports" / "training")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    given = sys.argv[1:] if argv is None else argv
    command = "python experiments/train_reference.py" + "".join(f" {shlex.quote(a)}" for a in given)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from spectral.export import save_figures
    from spectral.runs import git_commit, package_versions

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = train(cfg, out, log)
    record.update(command=command, started=started, git_commit=git_commit(), packages=package_versions())
    (out / "loss.csv").write_text(loss_csv(record["loss_rows"]))
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    summary = {k: v for k, v in record.items() if k != "loss_rows"}
    (results / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "training.md").write_text(summary_markdown(record))
    c = record["config"]
    title = f"Reference decoder {c['n_layer']}L d{c['d_model']}: loss (seed {c['seed']})"
    caption = (
        f"Cross-entropy (nats/token) against training step (log axis; step 0, the initialisation, drawn at 0.5): "
        f"training batch loss (grey), the loss on {c['eval_windows']} fixed held-out windows (blue) and on as many "
        f"training windows (orange), and the unigram baseline (dotted). Final validation loss over all "
        f"{record['heldout_windows']} held-out windows: {record['final_val_loss']:.3f} vs unigram "
        f"{record['unigram_baseline']:.3f}. Command: {command}."
    )
    save_figures(
        results,
        {"loss_curve": loss_figure(record, title)},
        {"loss_curve": loss_csv(record["loss_rows"])},
        {"loss_curve": caption},
        log,
        formats=("png",),
    )
    log(
        f"done in {record['seconds']['total'] / 60:.1f} min: val {record['final_val_loss']:.4f} / train "
        f"{record['final_train_loss']:.4f} / unigram {record['unigram_baseline']:.4f} nats/token -> {out}, {results}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
