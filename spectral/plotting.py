"""Result objects -> plotly figures, in one paper theme. Never shows or saves anything.

Conventions: x is the layer index of ``resid_post.l``; every statistic is drawn with its interval
(at the run's ``ci_level``; the figures that take ``level`` say which in their subtitle) as a shaded
band; the trained model is a solid line in the first Okabe-Ito colour, controls are dashed in fixed
colours (random-weight twin: grey). A missing value is drawn as a gap (NaN), never filled in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.colors as pcolors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from spectral.analysis.metrics import MetricRow, MetricTable

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
CONDITION_STYLE = {
    "trained": {"color": OKABE_ITO[0], "dash": "solid", "label": "trained"},
    "random_init": {"color": "#7F7F7F", "dash": "dash", "label": "random weights (R)"},
    "shuffled": {"color": OKABE_ITO[1], "dash": "dot", "label": "shuffled tokens (S)"},
    "permuted": {"color": OKABE_ITO[2], "dash": "dashdot", "label": "permuted positions (P)"},
    "permuted_weights": {"color": OKABE_ITO[4], "dash": "longdash", "label": "permuted weights (W)"},
    "random_scaled": {"color": "#B0B0B0", "dash": "dot", "label": "random weights, trained norms"},
}


def condition_style(condition: str) -> dict[str, str]:
    """Colour, dash and label of a condition; R ensemble members (``random_init.s<seed>``) share R's."""
    if condition.startswith("random_init.s"):
        return {**CONDITION_STYLE["random_init"], "label": f"random weights (R, seed {condition[13:]})"}
    if condition.startswith("random_scaled.s"):
        return {**CONDITION_STYLE["random_scaled"], "label": f"random weights, trained norms (seed {condition[15:]})"}
    if condition.startswith("permuted_weights.s"):
        return {**CONDITION_STYLE["permuted_weights"], "label": f"permuted weights (W, seed {condition[18:]})"}
    return CONDITION_STYLE.get(condition, {"color": "#000000", "dash": "solid", "label": condition})


def pick_conditions(wanted: tuple[str, ...], present: list[str]) -> list[str]:
    """``wanted`` conditions that the table holds; ``random_init`` stands for R's first seed."""
    out = []
    for c in wanted:
        if c == "random_init" and c not in present:
            c = next((p for p in present if p.startswith("random_init.s")), c)
        if c in present:
            out.append(c)
    return out


FONT = {"family": "Arial, Helvetica, sans-serif", "size": 13, "color": "#222222"}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def ci_label(level: float) -> str:
    """``"95% CI"`` for ``level`` 0.95 (``"97.5% CI"`` for 0.975): the interval level as captions state it."""
    return f"{round(100 * level, 6):g}% CI"


def band_subtitle(title: str, level: float | None) -> str:
    """``title`` with a subtitle naming the level of the shaded bands (unchanged when ``level`` is None)."""
    return title if level is None else f"{title}<br><sup>shaded bands: {ci_label(level)}</sup>"


def apply_theme(fig: go.Figure, title: str, width: int = 720, height: int = 420) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        font=FONT,
        template="simple_white",
        width=width,
        height=height,
        margin={"l": 70, "r": 20, "t": 60, "b": 90},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0.0},
    )
    fig.update_xaxes(showgrid=True, gridcolor="#EEEEEE", ticks="outside", dtick=1)
    fig.update_yaxes(showgrid=True, gridcolor="#EEEEEE", ticks="outside")
    return fig


def _add_series(
    fig: go.Figure,
    rows: list[MetricRow],
    condition: str,
    row: int | None = None,
    col: int | None = None,
    show_legend: bool = True,
) -> None:
    if not rows:
        return
    style = condition_style(condition)
    x = [float(r.layer or 0) for r in rows]
    kw = {} if row is None else {"row": row, "col": col}
    _band_and_line(fig, x, rows, style["color"], style["dash"], style["label"], condition, show_legend, kw)


def _band_and_line(
    fig: go.Figure,
    x: list[float],
    rows: list[MetricRow],
    color: str,
    dash: str,
    name: str,
    group: str,
    show_legend: bool,
    kw: dict[str, Any],
) -> None:
    """A CI band (shaded) and the value line of one series."""
    lo, hi = [r.ci_low for r in rows], [r.ci_high for r in rows]
    band = go.Scatter(
        x=x + x[::-1],
        y=hi + lo[::-1],
        mode="lines",
        fill="toself",
        fillcolor=_rgba(color, 0.18),
        line={"width": 0},
        hoverinfo="skip",
        showlegend=False,
        legendgroup=group,
    )
    fig.add_trace(band, **kw)
    line = go.Scatter(
        x=x,
        y=[r.value for r in rows],
        mode="lines+markers",
        name=name,
        line={"color": color, "dash": dash, "width": 2},
        marker={"size": 6},
        legendgroup=group,
        showlegend=show_legend,
    )
    fig.add_trace(line, **kw)


def norm_profile(table: MetricTable, title: str, level: float | None = None) -> go.Figure:
    """Mean ‖h‖ of resid_post.l per layer (log scale), trained beside its controls (``level``: see
    :func:`band_subtitle`)."""
    fig = go.Figure()
    for cond in table.conditions():
        _add_series(fig, table.series(cond, "resid_post", "norm_mean"), cond)
    apply_theme(fig, band_subtitle(title, level))
    fig.update_xaxes(title_text="layer (resid_post)")
    fig.update_yaxes(title_text="mean ‖h‖ (log scale)", type="log", exponentformat="power")
    return fig


def carrier_and_anisotropy(table: MetricTable, title: str, level: float | None = None) -> go.Figure:
    """Carrier energy ρ and anisotropy per layer (two panels), trained beside its controls (``level``: see
    :func:`band_subtitle`)."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("carrier energy ρ", "anisotropy (mean pairwise cos)"), horizontal_spacing=0.12
    )
    for cond in table.conditions():
        _add_series(fig, table.series(cond, "resid_post", "carrier_energy"), cond, 1, 1, show_legend=True)
        _add_series(fig, table.series(cond, "resid_post", "anisotropy"), cond, 1, 2, show_legend=False)
    apply_theme(fig, band_subtitle(title, level), width=900, height=420)
    fig.update_xaxes(title_text="layer (resid_post)")
    fig.update_yaxes(range=[-0.05, 1.05])
    return fig


@dataclass(frozen=True)
class Curve:
    """One labelled curve (a P(f) or a PCA spectrum of one site under one condition)."""

    condition: str
    site: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Matrix:
    """A labelled matrix (e.g. the band transfer of attention writes, averaged over layers)."""

    condition: str
    label: str
    values: np.ndarray


def _layer_color(i: int, n: int) -> str:
    colors = pcolors.sample_colorscale("Viridis", [0.05 + 0.85 * i / max(n - 1, 1)])
    return str(colors[0])


def curves_by_layer(curves: list[Curve], title: str, x_title: str, y_title: str, log_x: bool = False) -> go.Figure:
    """One panel per condition; one line per site coloured by depth (viridis)."""
    conds = list(dict.fromkeys(c.condition for c in curves))
    fig = make_subplots(
        rows=1,
        cols=len(conds),
        subplot_titles=[condition_style(c)["label"] for c in conds],
        shared_yaxes=True,
    )
    for j, cond in enumerate(conds, 1):
        mine = [c for c in curves if c.condition == cond]
        for i, c in enumerate(mine):
            fig.add_trace(
                go.Scatter(
                    x=c.x,
                    y=c.y,
                    mode="lines",
                    name=c.site,
                    legendgroup=c.site,
                    showlegend=j == 1,
                    line={"color": _layer_color(i, len(mine)), "width": 1.8},
                ),
                row=1,
                col=j,
            )
    apply_theme(fig, title, width=max(520, 330 * len(conds)), height=440)
    fig.update_xaxes(title_text=x_title, dtick=None, type="log" if log_x else "linear")
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(legend={"orientation": "v", "y": 1.0, "x": 1.02, "yanchor": "top"}, margin={"r": 130})
    return fig


def metric_heatmap(
    table: MetricTable,
    metric_prefix: str,
    n: int,
    kind: str,
    title: str,
    z_title: str,
    conditions: tuple[str, ...] = ("trained", "random_init"),
) -> go.Figure:
    """Heatmap of metric_prefix{i} (i < n) over sites ``kind.l`` (rows) for each condition; a site with a
    value in any band gets a row, a missing (site, band) value is a gap (NaN)."""
    conds = pick_conditions(conditions, list(table.conditions()))
    fig = make_subplots(
        rows=1, cols=len(conds), subplot_titles=[condition_style(c)["label"] for c in conds], horizontal_spacing=0.12
    )
    nan = float("nan")
    for j, cond in enumerate(conds, 1):
        cells = {(r.site, i): r for i in range(n) for r in table.series(cond, kind, f"{metric_prefix}{i}")}
        sites = sorted({(-1 if r.layer is None else r.layer, r.site, r.layer) for r in cells.values()})
        layers = [layer for _, _, layer in sites]
        # a missing (layer, band) cell stays NaN (a gap), never another band's value
        z = [[cells[site, i].value if (site, i) in cells else nan for i in range(n)] for _, site, _ in sites]
        fig.add_trace(
            go.Heatmap(z=z, x=list(range(n)), y=layers, colorscale="Viridis", coloraxis="coloraxis"), row=1, col=j
        )
    apply_theme(fig, title, width=max(520, 380 * len(conds)), height=420)
    fig.update_xaxes(title_text="band (0 = top singular values)", dtick=1)
    fig.update_yaxes(title_text=f"layer ({kind})", dtick=1, row=1, col=1)
    fig.update_layout(coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": z_title}}})
    return fig


def matrices(mats: list[Matrix], title: str, x_title: str, y_title: str) -> go.Figure:
    """A grid of matrices (rows: conditions, columns: labels) on one shared colour scale."""
    conds = list(dict.fromkeys(m.condition for m in mats))
    labels = list(dict.fromkeys(m.label for m in mats))
    titles = [f"{condition_style(c)['label']} — {lab}" for c in conds for lab in labels]
    fig = make_subplots(rows=len(conds), cols=len(labels), subplot_titles=titles, vertical_spacing=0.14)
    for m in mats:
        fig.add_trace(
            go.Heatmap(z=m.values.tolist(), coloraxis="coloraxis"),
            row=conds.index(m.condition) + 1,
            col=labels.index(m.label) + 1,
        )
    apply_theme(fig, title, width=760, height=330 * len(conds) + 60)
    fig.update_xaxes(title_text=x_title, dtick=1)
    fig.update_yaxes(title_text=y_title, dtick=1, autorange="reversed")
    fig.update_layout(coloraxis={"colorscale": "Viridis"})
    return fig


def layer_panels(
    table: MetricTable, panels: tuple[tuple[str, str, str], ...], title: str, level: float | None = None
) -> go.Figure:
    """Side-by-side panels of per-layer metrics (kind, metric, panel title), every condition drawn (``level``:
    see :func:`band_subtitle`)."""
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[p[2] for p in panels], horizontal_spacing=min(0.1, 0.25 / len(panels))
    )
    for j, (kind, metric, _) in enumerate(panels, 1):
        for cond in table.conditions():
            _add_series(fig, table.series(cond, kind, metric), cond, 1, j, show_legend=j == 1)
    apply_theme(fig, band_subtitle(title, level), width=max(520, 330 * len(panels)), height=420)
    fig.update_xaxes(title_text="layer")
    return fig


def styled_panels(
    table: MetricTable,
    panels: tuple[tuple[str, tuple[tuple[str, str], ...], bool], ...],
    title: str,
    level: float | None = None,
    condition: str = "trained",
) -> go.Figure:
    """Side-by-side panels of one condition's per-layer resid_post metrics, several series per panel:
    ``(panel title, ((metric, label), ...), log y)``; each series in its own Okabe-Ito colour (the same label keeps
    its colour across panels), its interval shaded where it has one."""
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=min(0.1, 0.3 / len(panels))
    )
    colors: dict[str, str] = {}
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    for j, (_, series, log_y) in enumerate(panels, 1):
        for k, (metric, label) in enumerate(series):
            rows = [r for r in table.series(condition, "resid_post", metric) if r.layer is not None]
            if log_y:  # a value that is 0 up to round-off (the logit lens's KL at the last layer) has no log
                top = max((abs(r.value) for r in rows if math.isfinite(r.value)), default=0.0)
                rows = [r for r in rows if r.value > 1e-9 * top]
            if not rows:
                continue
            color = colors.setdefault(label, OKABE_ITO[len(colors) % len(OKABE_ITO)])
            shown = label not in {getattr(t, "name", None) for t in fig.data if getattr(t, "showlegend", True)}
            _band_and_line(fig, [float(r.layer or 0) for r in rows], rows, color, dashes[k % len(dashes)], label,
                           label, shown, {"row": 1, "col": j})  # fmt: skip
        if log_y:
            fig.update_yaxes(type="log", row=1, col=j)
    apply_theme(fig, band_subtitle(title, level), width=max(560, 380 * len(panels)), height=440)
    fig.update_xaxes(title_text="layer")
    return declutter_ticks(fig)


@dataclass(frozen=True)
class Series:
    """One run/condition to overlay in a comparison: its label, depth and metric rows."""

    label: str
    n_layers: int
    table: MetricTable
    condition: str


def overlay(
    series: list[Series],
    panels: tuple[tuple[str, str, str], ...],
    title: str,
    relative: bool,
    level: float | None = None,
    log_y: bool = False,
) -> go.Figure:
    """Panels of per-layer metrics, one line per series (x: layer index or relative depth; ``level``: see
    :func:`band_subtitle`; ``log_y``: every panel on a log scale, values ≤ 0 left out)."""
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        subplot_titles=[p[2] for p in panels],
        horizontal_spacing=min(0.08, 0.25 / len(panels)),
    )
    for i, s in enumerate(series):
        color = OKABE_ITO[i % len(OKABE_ITO)]
        dash = "dash" if s.condition.startswith("random_init") else "solid"
        for j, (kind, metric, _) in enumerate(panels, 1):
            rows = [r for r in s.table.series(s.condition, kind, metric) if r.layer is not None]
            if log_y:
                top = max((abs(r.value) for r in rows if math.isfinite(r.value)), default=0.0)
                rows = [r for r in rows if r.value > 1e-9 * top]
            if not rows:
                continue
            x = [(r.layer or 0) / max(s.n_layers - 1, 1) if relative else float(r.layer or 0) for r in rows]
            _band_and_line(fig, x, rows, color, dash, s.label, s.label, j == 1, {"row": 1, "col": j})
    apply_theme(fig, band_subtitle(title, level), width=max(560, 300 * len(panels)) + 320, height=440)
    fig.update_layout(legend={"orientation": "v", "x": 1.01, "y": 1.0, "yanchor": "top"}, margin={"r": 330})
    fig.update_xaxes(title_text="relative depth" if relative else "layer", dtick=0.25 if relative else 1)
    if log_y:
        fig.update_yaxes(type="log")
    elif panels and panels[0][1] == "norm_mean":
        fig.update_yaxes(type="log", row=1, col=1)
    return fig


OUTCOME_COLORS = {"supported": "#009E73", "contradicted": "#D55E00", "inconclusive": "#E69F00", "n/a": "#7F7F7F"}


def verdict_panels(verdicts: list[Any], title: str, level: float = 0.95) -> go.Figure:
    """One panel per prediction: the trained statistic with its interval (a point and bar, coloured by the
    outcome) against its null (a grey band for the null's interval, a dashed line at the null value);
    the panel title gives the outcome and the effect with its interval. n/a panels say why."""
    n = len(verdicts)
    cols = 4
    rows = max(1, math.ceil(n / cols))
    titles = [
        f"{v.prediction}<br><sup>{v.outcome}"
        + (
            f": effect {v.effect:.3g} [{v.effect_ci_low:.3g}, {v.effect_ci_high:.3g}]"
            if math.isfinite(v.effect)
            else ""
        )
        + "</sup>"
        for v in verdicts
    ]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.16, horizontal_spacing=0.07)
    for i, v in enumerate(verdicts):
        r, c = i // cols + 1, i % cols + 1
        at: dict[str, Any] = {"row": r, "col": c}
        if v.outcome == "n/a" or not math.isfinite(v.value):
            fig.add_annotation(text="n/a", x=0.5, y=0.5, showarrow=False, xref="x domain", yref="y domain", **at)
            continue
        color = OUTCOME_COLORS.get(v.outcome, "#000000")
        if math.isfinite(v.null):
            lo = v.null_ci_low if math.isfinite(v.null_ci_low) else v.null
            hi = v.null_ci_high if math.isfinite(v.null_ci_high) else v.null
            fig.add_shape(type="rect", x0=-0.5, x1=0.5, y0=lo, y1=hi, fillcolor="rgba(127,127,127,0.25)",
                          line_width=0, **at)  # fmt: skip
            fig.add_trace(go.Scatter(x=[-0.5, 0.5], y=[v.null, v.null], mode="lines", showlegend=False,
                                     line={"color": "#555555", "dash": "dash", "width": 1.5}, hoverinfo="skip"),
                          **at)  # fmt: skip
            fig.add_trace(
                go.Scatter(
                    x=[0, 0], y=[lo, hi], mode="markers", marker={"opacity": 0}, showlegend=False, hoverinfo="skip"
                ),
                **at,
            )  # fmt: skip  (the axis range takes the null in)
        err = None
        if math.isfinite(v.ci_low) and math.isfinite(v.ci_high):
            err = {
                "type": "data",
                "symmetric": False,
                "array": [v.ci_high - v.value],
                "arrayminus": [v.value - v.ci_low],
            }
        fig.add_trace(
            go.Scatter(x=[0], y=[v.value], mode="markers", marker={"color": color, "size": 10}, error_y=err,
                       name=v.outcome, showlegend=False, hovertext=v.note),
            **at,
        )  # fmt: skip
        fig.update_xaxes(range=[-1, 1], showticklabels=False, **at)
        fig.update_yaxes(title_text="<br>".join(_wrap(v.statistic, 24)), title_font={"size": 10}, **at)
    apply_theme(
        fig, f"{title}<br><sup>trained (point, {ci_label(level)}) against its null (grey band)</sup>", 1100, 300 * rows
    )
    fig.update_annotations(font_size=11)
    fig.update_layout(margin={"t": 130})
    return fig


def _nice_step(span: float, target: int = 10) -> float:
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def declutter_ticks(fig: go.Figure, max_ticks: int = 16) -> go.Figure:
    """Thin the one-per-layer ticks (``dtick = 1``) of axes that span more than ``max_ticks`` values
    (30 layers of labels overlap) to a step of 1, 2, 5, ... giving about ten ticks."""
    for letter in ("x", "y"):
        spans: dict[str, list[float]] = {}
        for tr in fig.data:
            ref = getattr(tr, f"{letter}axis", None) or letter
            vals = getattr(tr, letter, None)
            z: Any = getattr(tr, "z", None)
            if vals is None and z is not None:
                vals = range(len(z[0]) if letter == "x" and len(z) else len(z))
            seq = [] if vals is None else np.asarray(vals, dtype=object).ravel().tolist()
            nums = [float(v) for v in seq if isinstance(v, int | float) and math.isfinite(v)]
            if nums:
                spans.setdefault(ref, []).extend((min(nums), max(nums)))
        for ref, ends in spans.items():
            axis = fig.layout[f"{letter}axis{ref[1:]}"]
            span = max(ends) - min(ends)
            if axis.dtick == 1 and span > max_ticks:
                axis.dtick = _nice_step(span)
    return fig


# ---- across runs: the outcome matrix, one prediction over models, effects against model size ----------------
def _num(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3g}"


def outcome_matrix(
    runs: list[tuple[str, list[Any]]], title: str, stale: dict[str, set[str]] | None = None
) -> go.Figure:
    """Models (rows) × predictions (columns): colour = outcome, text = effect [CI]. ``runs``: (label, verdicts)
    pairs; ``stale``: label -> predictions measured by an older battery (drawn hatched-grey, marked †)."""
    preds = list(dict.fromkeys(v.prediction for _, vs in runs for v in vs))
    order = list(OUTCOME_COLORS)
    z, text = [], []
    for label, vs in runs:
        by = {v.prediction: v for v in vs}
        zr, tr = [], []
        for p in preds:
            v = by.get(p)
            old = stale is not None and p in stale.get(label, set())
            if v is None:
                zr.append(order.index("n/a") + 0.5)
                tr.append("not run")
                continue
            zr.append(order.index(v.outcome) + 0.5 if v.outcome in order else math.nan)
            cell = (
                "n/a"
                if v.outcome == "n/a"
                else f"{_num(v.effect)}<br>[{_num(v.effect_ci_low)}, {_num(v.effect_ci_high)}]"
            )
            tr.append(("† " if old else "") + cell)
        z.append(zr)
        text.append(tr)
    n = len(order)
    scale = []
    for i, name in enumerate(order):
        scale += [[i / n, OUTCOME_COLORS[name]], [(i + 1) / n, OUTCOME_COLORS[name]]]
    short = [p.split(" ", 1)[0] + "<br>" + "<br>".join(_wrap(p.split(" ", 1)[1], 14)) for p in preds]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=short,
            y=[label for label, _ in runs],
            text=text,
            texttemplate="%{text}",
            textfont={"size": 12, "color": "white"},
            colorscale=scale,
            zmin=0,
            zmax=n,
            xgap=2,
            ygap=2,
            colorbar={"tickvals": [i + 0.5 for i in range(n)], "ticktext": order, "title": {"text": "outcome"}},
            hovertemplate="%{y} · %{x}<br>effect %{text}<extra></extra>",
        )
    )
    apply_theme(fig, title, width=max(900, 105 * len(preds) + 260), height=max(360, 62 * len(runs) + 200))
    fig.update_yaxes(autorange="reversed", dtick=1)
    fig.update_xaxes(side="top", tickangle=0, dtick=1)
    fig.update_layout(margin={"t": 190, "l": 230}, title={"y": 0.98, "yanchor": "top"})
    return fig


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return [*lines, cur] if cur else lines


def _effect_bar(v: Any, color: str) -> dict[str, Any]:
    """A verdict's effect interval as a plotly error bar (asymmetric, about the effect)."""
    return {
        "type": "data",
        "symmetric": False,
        "array": [max(v.effect_ci_high - v.effect, 0.0)],
        "arrayminus": [max(v.effect - v.effect_ci_low, 0.0)],
        "color": color,
    }


def prediction_forest(runs: list[tuple[str, Any]], title: str, level: float = 0.95) -> go.Figure:
    """One prediction across models: effect (trained − null) with its interval, coloured by outcome, the margin
    δ dashed and 0 solid. ``runs``: (label, verdict) pairs (n/a rows are listed with their reason)."""
    fig = go.Figure()
    labels = [label for label, _ in runs]
    for label, v in runs:
        if v.outcome == "n/a" or not math.isfinite(v.effect):
            continue
        c = OUTCOME_COLORS.get(v.outcome, "#000000")
        fig.add_trace(
            go.Scatter(
                x=[v.effect],
                y=[label],
                mode="markers",
                marker={"color": c, "size": 10},
                error_x={**_effect_bar(v, c), "thickness": 2},
                name=v.outcome,
                showlegend=False,
                hovertemplate=f"{label}: {v.statistic}<br>effect %{{x:.4g}} [{v.effect_ci_low:.4g}, "
                f"{v.effect_ci_high:.4g}]<br>null {v.null:.4g}<extra></extra>",
            )
        )
    margins = {round(v.margin, 12) for _, v in runs if v.outcome != "n/a" and math.isfinite(v.margin)}
    for m in sorted(margins):
        fig.add_vline(x=m, line={"color": "#555555", "dash": "dash", "width": 1})
    fig.add_vline(x=0.0, line={"color": "#222222", "width": 1})
    for name, c in OUTCOME_COLORS.items():  # legend: outcome colours
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker={"color": c, "size": 10}, name=name))
    apply_theme(fig, f"{title}<br><sup>bars: {ci_label(level)} of the effect</sup>", width=820,
                height=max(320, 42 * len(labels) + 170))  # fmt: skip
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1], dtick=1)
    fig.update_xaxes(title_text="effect = trained − null (dashed: the margin δ)", dtick=None)
    return fig


def effect_vs_size(points: list[tuple[str, float, Any]], title: str, level: float = 0.95) -> go.Figure:
    """Effect (with interval) against parameter count (log axis), one marker per run: (label, params, verdict)."""
    fig = go.Figure()
    for label, params, v in points:
        if v.outcome == "n/a" or not math.isfinite(v.effect) or not params > 0:
            continue
        c = OUTCOME_COLORS.get(v.outcome, "#000000")
        fig.add_trace(
            go.Scatter(
                x=[params],
                y=[v.effect],
                mode="markers+text",
                text=[label],
                textposition="middle right",
                textfont={"size": 9},
                marker={"color": c, "size": 9},
                error_y=_effect_bar(v, c),
                showlegend=False,
            )
        )
    fig.add_hline(y=0.0, line={"color": "#222222", "width": 1})
    apply_theme(fig, f"{title}<br><sup>bars: {ci_label(level)} of the effect</sup>", width=760, height=420)
    fig.update_xaxes(type="log", title_text="parameters", dtick=None)
    fig.update_yaxes(title_text="effect (trained − null)", dtick=None)
    return fig
