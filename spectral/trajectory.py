"""A statistic against training step (the maths and figures of experiments/sweep_checkpoints.py): the rows of
every checkpoint's run, the step where a statistic has made half of its change (log-interpolated), when it
moves relative to the loss, and the figures of each statistic against step with the loss on a second axis."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectral.analysis.metrics import MetricTable
from spectral.config import ModelSpec
from spectral.runs import read_manifest

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


@dataclass(frozen=True)
class Checkpoint:
    """One model to measure: its training step, how to load it and the loss recorded in training."""

    label: str
    step: int
    spec: ModelSpec
    loss: float | None  # validation loss from the training log (None: measured on the sweep windows)


Line = tuple[str, list[Point], str, float]  # legend name, rows, colour, width


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
