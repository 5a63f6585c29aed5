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
import math
import os
import re
import shlex
import shutil
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from spectral.analysis.interventions import nll_per_window
from spectral.analysis.metrics import MetricTable
from spectral.config import ExperimentConfig, ModelSpec, config_from_dict
from spectral.corpus import make_windows
from spectral.models import load_model
from spectral.runner import run_experiment
from spectral.runs import read_manifest, slug

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).resolve().parent / "configs" / "sweep.toml"
REFERENCE = ROOT / "reports" / "training" / "runs" / "reference"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "corpora" / "tinyshakespeare.txt"
K = 10  # W_U bands of the band-energy statistics
# (metric, label); growth_rate is whole-model (site resid_post, no layer), the rest are per resid_post layer
STATS = (
    ("growth_rate", "growth rate g per layer"),
    ("norm_mean", "mean ‖h‖"),
    ("carrier_energy", "carrier energy ρ"),
    ("anisotropy", "anisotropy"),
    ("eff_rank", "effective rank"),
    ("seq_ac_lowfreq_share", "low-frequency share (sequence)"),
    *((f"band_energy_k{K}_b{i}", f"W_U band {i} of {K} energy") for i in range(K)),
    ("logit_lens_top1", "logit-lens agreement (top-1 = final top-1)"),
)
LABELS = dict(STATS)


@dataclass(frozen=True)
class Checkpoint:
    """One model to measure: its training step, how to load it and the loss recorded in training."""

    label: str
    step: int
    spec: ModelSpec
    loss: float | None  # validation loss from the training log (None: measured on the sweep windows)


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


@dataclass(frozen=True)
class Point:
    """One statistic of one checkpoint at one site (a line of the sweep tables)."""

    step: int
    checkpoint: str
    condition: str
    site: str
    layer: int | None
    metric: str
    value: float
    ci_low: float
    ci_high: float


Loss = dict[int, tuple[float, str]]  # step -> (loss in nats/token, where it comes from)


def collect(runs: list[tuple[Checkpoint, Path]]) -> tuple[list[Point], int]:
    """Every resid_post row of the statistics in STATS from every run, and the number of layers."""
    points, n_layers = [], 0
    for ck, run in runs:
        n_layers = int(read_manifest(run)["arch"]["n_layers"])
        table = MetricTable.from_csv((run / "metrics.csv").read_text())
        ensemble: dict[tuple[str, str], list[float]] = {}
        for r in table.rows:
            if r.metric in LABELS and r.site.split(".")[0] == "resid_post":
                if r.condition.startswith("random_init.s"):  # R ensemble members: pooled below
                    ensemble.setdefault((r.site, r.metric), []).append(r.value)
                    continue
                p = Point(ck.step, ck.label, r.condition, r.site, r.layer, r.metric, r.value, r.ci_low, r.ci_high)
                points.append(p)
        for (site, metric), vals in ensemble.items():  # R: the seeds' mean, the interval their range
            layer = int(site.split(".")[1]) if "." in site else None
            points.append(
                Point(
                    ck.step, ck.label, "random_init", site, layer, metric, sum(vals) / len(vals), min(vals), max(vals)
                )
            )
    return points, n_layers


def pick(points: list[Point], metric: str, layer: int | None, condition: str = "trained") -> list[Point]:
    want = None if metric == "growth_rate" else layer
    rows = [p for p in points if p.metric == metric and p.condition == condition and p.layer == want]
    return sorted(rows, key=lambda p: p.step)


def points_csv(points: list[Point], loss: Loss) -> str:
    lines = ["step,checkpoint,condition,statistic,site,layer,value,ci_low,ci_high,loss,loss_source"]
    for p in points:
        lv, src = loss.get(p.step, (math.nan, ""))
        layer = "" if p.layer is None else p.layer
        lines.append(
            f"{p.step},{p.checkpoint},{p.condition},{p.metric},{p.site},{layer},"
            f"{p.value:.8g},{p.ci_low:.8g},{p.ci_high:.8g},{lv:.6g},{src}"
        )
    return "\n".join(lines) + "\n"


def xpos(step: int) -> float:
    """Position on the log step axis: step 0 (the initialisation) is drawn at 0.5."""
    return 0.5 if step == 0 else float(step)


def half_change_step(steps: list[int], values: list[float]) -> float | None:
    """The step (log-interpolated) where ``values`` first cover half their change from the first to the last."""
    v0, v1 = values[0], values[-1]
    if not (math.isfinite(v0) and math.isfinite(v1)) or v0 == v1:
        return None
    mid, up = (v0 + v1) / 2, v1 > v0
    x = [math.log2(xpos(s)) for s in steps]
    for i in range(1, len(values)):
        if (values[i] >= mid) if up else (values[i] <= mid):
            a, b = values[i - 1], values[i]
            t = 0.0 if b == a else (mid - a) / (b - a)
            return 2 ** (x[i - 1] + t * (x[i] - x[i - 1]))
    return None


def timing(points: list[Point], loss: Loss, layer: int) -> list[dict[str, Any]]:
    """Per statistic: step 0, final and R values, the half-change step and when it moves relative to the loss.

    Rule: 'before' / 'after' when the statistic's half-change step is more than a factor 2 (one checkpoint
    interval) earlier / later than the loss's half-drop step, else 'with'; 'no clear change' when the final
    value lies inside step 0's 95 % interval."""
    steps_l = sorted(loss)
    loss_half = half_change_step(steps_l, [loss[s][0] for s in steps_l])
    out = []
    for metric, label in STATS:
        rows = pick(points, metric, layer)
        if len(rows) < 2:
            continue
        first, last = rows[0], rows[-1]
        ctrl = pick(points, metric, layer, "random_init")
        half = half_change_step([r.step for r in rows], [r.value for r in rows])
        clear = not (first.ci_low <= last.value <= first.ci_high)
        if not clear or half is None:
            when = "no clear change"
        elif loss_half is None:
            when = "n/a (no loss drop)"
        else:
            ratio = half / loss_half
            when = "before" if ratio < 0.5 else "after" if ratio > 2 else "with"
        vals = [r.value for r in rows]
        i_max, i_min = int(np.nanargmax(vals)), int(np.nanargmin(vals))
        out.append(
            {
                "statistic": metric,
                "label": label,
                "site": last.site,
                "step0": first.value,
                "final": last.value,
                "final_ci": (last.ci_low, last.ci_high),
                "random_init": ctrl[-1].value if ctrl else math.nan,
                "max_at": rows[i_max].step,
                "min_at": rows[i_min].step,
                "half_step": half,
                "loss_half_step": loss_half,
                "when": when,
            }
        )
    return out


def timing_markdown(rows: list[dict[str, Any]], layer: int, loss_half: float | None) -> str:
    def num(v: float | None) -> str:
        return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"

    lines = [
        f"Per-layer statistics at resid_post.{layer}; growth rate for the whole model. Loss half-drop step: "
        f"{num(loss_half)}.",
        "",
        "| statistic | step 0 | final [95 % CI] | R (final) | max at | min at | half-change step | vs loss drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = f"[{num(r['final_ci'][0])}, {num(r['final_ci'][1])}]"
        lines.append(
            f"| {r['label']} | {num(r['step0'])} | {num(r['final'])} {ci} | {num(r['random_init'])} | "
            f"{r['max_at']} | {r['min_at']} | {num(r['half_step'])} | {r['when']} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def _color(i: int, n: int) -> str:
    import plotly.colors as pcolors

    return str(pcolors.sample_colorscale("Viridis", [0.05 + 0.85 * i / max(n - 1, 1)])[0])


def _series(fig: Any, rows: list[Point], name: str, color: str, width: float, legend: bool = True, **kw: Any) -> None:
    """A statistic's line and its 95 % band (shaded) in ``color`` (``#rrggbb`` or ``rgb(r, g, b)``)."""
    import plotly.colors as pcolors

    rgb = pcolors.hex_to_rgb(color) if color.startswith("#") else pcolors.unlabel_rgb(color)
    x = [xpos(r.step) for r in rows]
    band = {"fill": "toself", "fillcolor": "rgba({},{},{},0.15)".format(*rgb), "line": {"width": 0}}
    hi_lo = [r.ci_high for r in rows] + [r.ci_low for r in rows][::-1]
    fig.add_scatter(x=x + x[::-1], y=hi_lo, mode="lines", hoverinfo="skip", showlegend=False, **band, **kw)
    line = {"color": color, "width": width}
    y = [r.value for r in rows]
    fig.add_scatter(x=x, y=y, mode="lines+markers", name=name, line=line, marker={"size": 5}, showlegend=legend, **kw)


def loss_name(loss: Loss) -> str:
    return "validation loss" if {src for _, src in loss.values()} == {"training log"} else "loss on the sweep windows"


def _step_axis(fig: Any, steps: list[int], **kw: Any) -> None:
    top = max(max(steps), 1)
    ticks = sorted({0, *[2**k for k in range(0, int(math.log2(top)) + 1, 2) if 2.5 * 2**k <= top or k == 0], top})
    fig.update_xaxes(
        type="log", tickmode="array", tickvals=[xpos(s) for s in ticks], ticktext=list(map(str, ticks)), **kw
    )


Line = tuple[str, list[Point], str, float]  # legend name, rows, colour, width


def steps_figure(
    lines: list[Line],
    ref: tuple[str, float] | None,
    loss: Loss,
    unigram: float | None,
    title: str,
    y_title: str,
    legend_right: bool = False,
) -> Any:
    """Lines (with 95 % bands) against training step, an optional horizontal reference line (the random-weight
    control R), and the loss with the unigram baseline on the right axis."""
    from plotly.subplots import make_subplots

    from spectral.plotting import apply_theme

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, rows, color, width in lines:
        _series(fig, rows, name, color, width)
    steps = sorted(loss)
    ends = [xpos(steps[0]), xpos(steps[-1])]
    if ref is not None:
        fig.add_scatter(x=ends, y=[ref[1]] * 2, mode="lines", name=ref[0], line={"color": "#7F7F7F", "dash": "dash"})
    lname = loss_name(loss)
    fig.add_scatter(
        x=[xpos(s) for s in steps],
        y=[loss[s][0] for s in steps],
        mode="lines+markers",
        name=f"{lname} (right axis)",
        line={"color": "#000000", "dash": "dash", "width": 1.5},
        marker={"size": 4, "symbol": "square"},
        secondary_y=True,
    )
    if unigram is not None:
        fig.add_scatter(
            x=ends,
            y=[unigram] * 2,
            mode="lines",
            name="unigram baseline (right axis)",
            line={"color": "#000000", "dash": "dot", "width": 1},
            secondary_y=True,
        )
    apply_theme(fig, title, width=820 if legend_right else 780, height=480 if legend_right else 460)
    if legend_right:
        fig.update_layout(legend={"orientation": "v", "x": 1.12, "y": 1.0, "yanchor": "top"}, margin={"r": 220})
    _step_axis(fig, steps, title_text="training step (log; step 0 drawn at 0.5)")
    fig.update_yaxes(title_text=y_title, secondary_y=False)
    fig.update_yaxes(title_text=f"{lname} (nats/token)", secondary_y=True, showgrid=False, tickmode="auto")
    return fig


def stat_figure(
    points: list[Point], metric: str, layers: list[int | None], mid: int, loss: Loss, unigram: float | None, title: str
) -> Any:
    """One statistic: a line per resid_post layer (resid_post.mid bold) and R of the last checkpoint (grey)."""
    lines: list[Line] = [
        (
            "whole model" if layer is None else f"resid_post.{layer}",
            pick(points, metric, layer),
            "#0072B2" if layer is None else _color(i, len(layers)),
            3.0 if layer in (None, mid) else 1.5,
        )
        for i, layer in enumerate(layers)
    ]
    ctrl = pick(points, metric, mid, "random_init")
    # R's mean over its seeds (a null member measures only what the predictions read: not every statistic)
    label = "random weights (R)" + ("" if metric == "growth_rate" else f", resid_post.{mid}")
    ref = (label, ctrl[-1].value) if ctrl else None
    return steps_figure(lines, ref, loss, unigram, title, LABELS[metric])


def band_figure(points: list[Point], mid: int, loss: Loss, unigram: float | None, title: str) -> Any:
    """Energy of resid_post.mid in each of the K W_U singular-vector bands (0 = top) against step."""
    tag = {0: " (top)", K - 1: " (tail)"}
    lines: list[Line] = [
        (f"band {b}{tag.get(b, '')}", pick(points, f"band_energy_k{K}_b{b}", mid), _color(b, K), 2.0) for b in range(K)
    ]
    return steps_figure(lines, None, loss, unigram, title, f"share of ‖h‖² in band (resid_post.{mid})", True)


OVERVIEW = (
    "growth_rate",
    "carrier_energy",
    "anisotropy",
    "eff_rank",
    "seq_ac_lowfreq_share",
    "band_energy_k10_b0",
    f"band_energy_k10_b{K - 1}",
    "logit_lens_top1",
)


def overview_figure(points: list[Point], mid: int, loss: Loss, loss_half: float | None, title: str) -> Any:
    """3 x 3 panels: the loss, then each key statistic at resid_post.mid (growth rate: whole model); the
    dotted vertical line is the step where the loss has made half of its drop."""
    from plotly.subplots import make_subplots

    from spectral.plotting import apply_theme

    names = [f"{loss_name(loss)} (nats/token)"] + [
        LABELS[m] if m == "growth_rate" else f"{LABELS[m]}, resid_post.{mid}" for m in OVERVIEW
    ]
    fig = make_subplots(rows=3, cols=3, subplot_titles=names, horizontal_spacing=0.09, vertical_spacing=0.13)
    loss_rows = [Point(s, "", "trained", "", None, "loss", v, v, v) for s, (v, _) in sorted(loss.items())]
    for j, name in enumerate(names):
        rows = loss_rows if j == 0 else pick(points, OVERVIEW[j - 1], mid)
        _series(fig, rows, name, "#000000" if j == 0 else "#0072B2", 2, False, row=j // 3 + 1, col=j % 3 + 1)
        ys = [y for p in rows for y in (p.ci_low, p.ci_high) if math.isfinite(y)]
        if loss_half is not None and ys:
            line = {"color": "#D55E00", "dash": "dot", "width": 1.5}
            fig.add_scatter(
                x=[loss_half] * 2,
                y=[min(ys), max(ys)],
                mode="lines",
                showlegend=False,
                line=line,
                hoverinfo="skip",
                row=j // 3 + 1,
                col=j % 3 + 1,
            )
    apply_theme(fig, title, width=1100, height=900)
    _step_axis(fig, sorted(loss))
    fig.update_annotations(font={"size": 12})
    fig.update_layout(margin={"b": 60})
    return fig


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
