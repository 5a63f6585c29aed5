"""Run spectral's battery on every checkpoint of a training run and plot each statistic against step.

The second half of issue 8 (the first is ``train_reference.py``): one ``run_experiment`` per
checkpoint (held-out text of the training run, small settings from ``configs/sweep.toml``; only
the last checkpoint runs the random-weight control R), each reused while its resolved config and
weights are unchanged. From each run's ``metrics.csv`` it draws every key statistic against the
training step (log axis, step 0 drawn at 0.5) with the validation loss on a second y axis, and a
table that says whether each statistic moves before, with or after the loss drops.

    python experiments/sweep_checkpoints.py                # reports/training/runs/reference -> reports/training/sweep
    python experiments/sweep_checkpoints.py --run DIR --quick
    python experiments/sweep_checkpoints.py --model EleutherAI/pythia-70m \\
        --revisions step1000,step2000,step4000 --corpus my.txt         # hub revisions (needs the hub)

Per-layer statistics are read at resid_post.m with m = (L - 1) // 2 (the residual after half of
the blocks) in the summary table and the overview; the per-statistic figures draw every layer.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from spectral.config import ExperimentConfig, ModelSpec, config_from_dict
from spectral.corpus import make_windows
from spectral.interventions import nll_per_window
from spectral.models import load_model
from spectral.runner import run_experiment
from spectral.runs import read_manifest, slug
from spectral.trajectory import (
    LABELS,
    OVERVIEW,
    Checkpoint,
    K,
    Loss,
    Point,
    band_figure,
    collect,
    loss_name,
    overview_figure,
    points_csv,
    stat_figure,
    timing,
    timing_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).resolve().parent / "configs" / "sweep.toml"
REFERENCE = ROOT / "reports" / "training" / "runs" / "reference"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "corpora" / "tinyshakespeare.txt"


def local_checkpoints(run: Path) -> list[Checkpoint]:
    out = []
    for d in sorted((run / "checkpoints").glob("step-*")):
        rec = json.loads((d / "checkpoint.json").read_text())
        out.append(Checkpoint(d.name, int(rec["step"]), ModelSpec(name=os.path.relpath(d, ROOT)), rec.get("val_loss")))
    if not out:
        raise SystemExit(f"no checkpoints under {run / 'checkpoints'} (run experiments/train_reference.py first)")
    return sorted(out, key=lambda c: c.step)


def hub_checkpoints(model: str, revisions: list[str]) -> list[Checkpoint]:
    """One checkpoint per revision, in the order given; the step is the number in the name (step1000 -> 1000)."""
    out = []
    for i, rev in enumerate(revisions):
        m = re.search(r"(\d+)", rev)
        out.append(Checkpoint(slug(rev), int(m.group(1)) if m else i, ModelSpec(name=model, revision=rev), None))
    return out


def thin(ckpts: list[Checkpoint], n: int) -> list[Checkpoint]:
    """The first, the last and n - 2 spread between (all when n is 0 or covers them)."""
    if n <= 0 or n >= len(ckpts):
        return ckpts
    idx = sorted(set(np.linspace(0, len(ckpts) - 1, n).round().astype(int).tolist()))
    return [ckpts[i] for i in idx]


def run_config(ck: Checkpoint, s: dict[str, Any], corpus: str, out: Path, final: bool) -> ExperimentConfig:
    data = {
        "model": {"name": ck.spec.name, "revision": ck.spec.revision},
        "corpus": {"source": corpus, "seq_len": s["seq_len"], "max_seqs": s["max_seqs"]},
        "capture": {"batch_size": s["batch_size"]},
        "analysis": {"n_boot": s["n_boot"], "intervention_windows": s["intervention_windows"]},
        "controls": s["final_controls"] if final else [],
        "seed": s["seed"],
        "formats": s["formats"] if final else [],
        "out": os.path.relpath(out, ROOT) if out.is_relative_to(ROOT) else str(out),
    }
    return config_from_dict(data, "sweep")


def local_weights_sha(spec: ModelSpec) -> str | None:
    import hashlib

    p = Path(spec.name) if Path(spec.name).is_absolute() else ROOT / spec.name
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".pth")):
        h.update(f.read_bytes())
    return h.hexdigest()


def ensure_checkpoint_run(cfg: ExperimentConfig, command: str, log: Any) -> tuple[Path, str | None]:
    """The run of ``cfg``, reused when complete with the same resolved config (and, locally, the same
    weights); the note says when its controls had to be dropped."""
    out = Path(cfg.out or "")
    out = out if out.is_absolute() else ROOT / out
    if (out / "manifest.json").is_file():
        man, sha = read_manifest(out), local_weights_sha(cfg.model)
        if man.get("status") == "complete" and man.get("config") == cfg.to_dict():
            if sha is None or man.get("weights_sha256") == sha:
                return out, None
    return run_experiment(cfg, overwrite=True, progress=False, command=command).run_dir, None


def window_loss(cfg: ExperimentConfig) -> float:
    """Mean next-token loss (nats/token) of the model on the sweep's own windows (for hub revisions)."""
    model = load_model(cfg.model)
    win = make_windows(model.tokenizer, cfg.corpus, n_ctx=model.arch.n_ctx, seed=cfg.seed)
    return float(nll_per_window(model, win, cfg.capture.batch_size, exclude_first=False).mean())


# ---------------------------------------------------------------- tables


# ---------------------------------------------------------------- figures


# ---------------------------------------------------------------- driver


def load_settings(path: Path, quick: bool) -> dict[str, Any]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {**data["run"], **(data.get("quick", {}) if quick else {})}


def _rel(p: Path) -> str:
    p = p.resolve()
    return os.path.relpath(p, ROOT) if p.is_relative_to(ROOT.parent) else str(p)


def copy_final(run: Path, dest: Path) -> None:
    """The last checkpoint's verdicts, report and PNG figures (with captions), as the canonical results hold them."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "figures").mkdir(parents=True)
    for f in (run / "figures").iterdir():
        if f.suffix in (".png", ".txt"):
            shutil.copy2(f, dest / "figures" / f.name)
    for name in ("verdicts.csv", "report.md"):
        shutil.copy2(run / name, dest / name)


def measure(ckpts: list[Checkpoint], settings: dict[str, Any], corpus: Path, base: Path, command: str, log: Any):
    """One battery run per checkpoint (R only for the last) and its loss; also notes on dropped controls."""
    runs: list[tuple[Checkpoint, Path]] = []
    loss: Loss = {}
    notes: list[str] = []
    for i, ck in enumerate(ckpts):
        cfg = run_config(ck, settings, _rel(corpus), base / "spectral" / ck.label, i == len(ckpts) - 1)
        run_dir, note = ensure_checkpoint_run(cfg, command, log)
        notes += [f"{ck.label}: {note}"] if note else []
        runs.append((ck, run_dir))
        loss[ck.step] = (ck.loss, "training log") if ck.loss is not None else (window_loss(cfg), "sweep windows")
        log(f"{ck.label} (step {ck.step}): {run_dir}, loss {loss[ck.step][0]:.4f}")
    return runs, loss, notes


PER_LAYER = ("norm_mean", "carrier_energy", "anisotropy", "eff_rank", "seq_ac_lowfreq_share", "logit_lens_top1")


def figures(points: list[Point], n_layers: int, loss: Loss, unigram: float | None, name: str, context: str):
    """Every sweep figure with the CSV behind it and its caption."""
    mid = (n_layers - 1) // 2
    figs: dict[str, Any] = {}
    data: dict[str, str] = {}
    captions: dict[str, str] = {}
    lname = loss_name(loss)
    loss_note = f"{lname} dashed (right axis)" + (", unigram baseline dotted" if unigram is not None else "")
    for metric in ("growth_rate", *PER_LAYER):
        layers: list[int | None] = [None] if metric == "growth_rate" else list(range(n_layers))
        where = f"every resid_post layer (resid_post.{mid}, after half of the blocks, bold)"
        if metric == "logit_lens_top1" and n_layers > 1:
            layers = layers[:-1]  # the last layer's lens is the model's own prediction (agreement 1)
            where += "; the last layer is left out (its lens is the model itself)"
        if metric == "growth_rate":
            where = "the whole model (log-linear fit of ‖h‖ over the resid_post layers)"
        key = f"sweep_{metric}"
        figs[key] = stat_figure(points, metric, layers, mid, loss, unigram, f"{name}: {LABELS[metric]} vs step")
        data[key] = points_csv([p for p in points if p.metric == metric], loss)
        captions[key] = (
            f"{LABELS[metric]} of {where} against training step; {loss_note}; grey dashed: the random-weight "
            f"control R of the last checkpoint.{context}"
        )
    figs["sweep_band_energy"] = band_figure(points, mid, loss, unigram, f"{name}: W_U band energies vs step")
    data["sweep_band_energy"] = points_csv([p for p in points if p.metric.startswith(f"band_energy_k{K}_")], loss)
    captions["sweep_band_energy"] = (
        f"Share of ‖h‖² of resid_post.{mid} in each of {K} equal bands of W_U's left singular vectors (band 0: the "
        f"largest singular values; band {K - 1}: the 'dark' tail; W_U is each checkpoint's own unembedding) "
        f"against training step; {loss_note}.{context}"
    )
    table = timing(points, loss, mid)
    half = table[0]["loss_half_step"] if table else None
    figs["sweep_overview"] = overview_figure(points, mid, loss, half, f"{name}: statistics vs training step")
    data["sweep_overview"] = points_csv([p for p in points if p.metric in OVERVIEW and p.condition == "trained"], loss)
    captions["sweep_overview"] = (
        f"{lname.capitalize()} and each key statistic at resid_post.{mid} (growth rate: whole model) against "
        f"training step; the dotted vertical line marks the step where the loss has made half of its drop "
        f"({'–' if half is None else f'{half:.0f}'}).{context}"
    )
    return figs, data, captions, table


def main(argv: list[str] | None = None) -> int:
    from spectral.export import save_figures

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--run", type=Path, help="training output with checkpoints/ (default: the reference run)")
    p.add_argument("--model", help="a hub id instead of a training run (with --revisions)")
    p.add_argument("--revisions", help="comma-separated hub revisions, e.g. step1000,step2000,step4000")
    p.add_argument("--corpus", type=Path, help="text for the windows (default RUN/heldout.txt; hub: Tiny Shakespeare)")
    p.add_argument("--quick", action="store_true", help="tiny windows, at most 3 checkpoints ([quick] of the config)")
    p.add_argument("--config", type=Path, default=CONFIG, help="TOML with [run] and [quick] sections")
    p.add_argument("--max-checkpoints", type=int, help="measure only the first, the last and n - 2 between")
    p.add_argument("--results", type=Path, help="figures and tables (default reports/training/sweep for the reference)")
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = "python experiments/sweep_checkpoints.py" + "".join(f" {shlex.quote(a)}" for a in given)
    settings = load_settings(args.config, args.quick)
    if args.max_checkpoints is not None:
        settings["max_checkpoints"] = args.max_checkpoints
    if args.model and not args.revisions:
        p.error("--model needs --revisions")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.model:
        ckpts = hub_checkpoints(args.model, [r.strip() for r in args.revisions.split(",") if r.strip()])
        base = (args.run or ROOT / "reports" / "training" / "runs" / f"hub-{slug(args.model)}").resolve()
        corpus = (args.corpus or SHAKESPEARE).resolve()
        results = base / "sweep"
    else:
        base = (args.run or REFERENCE).resolve()
        ckpts = [replace(c, spec=replace(c.spec, name=_rel(ROOT / c.spec.name))) for c in local_checkpoints(base)]
        corpus = (args.corpus or base / "heldout.txt").resolve()
        reference = base == REFERENCE.resolve() and not args.quick
        results = ROOT / "reports" / "training" / "sweep" if reference else base / "sweep"
    results = (args.results or results).resolve()
    ckpts = thin(ckpts, int(settings["max_checkpoints"]))
    os.chdir(ROOT)  # model, corpus and run paths in the configs are relative to the repository root

    runs, loss, notes = measure(ckpts, settings, corpus, base, command, log)
    points, n_layers = collect(runs)
    training = base / "training.json"
    unigram = json.loads(training.read_text()).get("unigram_baseline") if training.is_file() else None
    name = args.model or f"reference {n_layers}L"
    context = (
        f" Model {name}; {len(ckpts)} checkpoints (steps {', '.join(str(c.step) for c in ckpts)}); windows: "
        f"{settings['max_seqs']} x {settings['seq_len']} tokens of {_rel(corpus)}, position 0 excluded; bands: "
        "95 % CI (bootstrap over windows for per-window statistics, jackknife over window buckets for moment "
        "statistics). Step 0 (the initialisation) is drawn at 0.5 on the log axis."
    )
    figs, data, captions, table = figures(points, n_layers, loss, unigram, name, context)
    results.mkdir(parents=True, exist_ok=True)
    save_figures(results, figs, data, captions, log, formats=tuple(settings["formats"]))
    mid = (n_layers - 1) // 2
    (results / "sweep.csv").write_text(points_csv([p for p in points if p.layer in (None, mid)], loss))
    half = table[0]["loss_half_step"] if table else None
    md = [
        f"# Checkpoint sweep: {name}\n",
        f"Command: `{command}`\n",
        f"Checkpoints: {', '.join(f'{c.label} (step {c.step})' for c in ckpts)}; per-checkpoint runs under "
        f"`{_rel(base / 'spectral')}`; loss from {', '.join(sorted({s for _, s in loss.values()}))}.\n",
        *[f"Note: {n}\n" for n in notes],
        timing_markdown(table, mid, half),
        "Rule: a statistic moves 'before' / 'after' the loss when the step where it has made half of its change "
        "(step 0 to final, log-interpolated) is more than a factor 2 earlier / later than the loss's half-drop "
        "step, 'with' it otherwise; 'no clear change' when the final value lies inside step 0's 95 % interval.\n",
        "## Figures\n",
        *[f"- `figures/{k}.png`: {v}" for k, v in captions.items()],
        "",
    ]
    (results / "sweep.md").write_text("\n".join(md))
    copy_final(runs[-1][1], results / "final")
    record = {
        "command": command,
        "settings": settings,
        "middle_layer": mid,
        "checkpoints": [
            {
                "label": c.label,
                "step": c.step,
                "model": c.spec.name,
                "revision": c.spec.revision,
                "loss": loss[c.step][0],
                "loss_source": loss[c.step][1],
            }
            for c in ckpts
        ],
        "notes": notes,
        "timing": table,
    }
    (results / "sweep.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    log(f"sweep of {len(ckpts)} checkpoints -> {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
