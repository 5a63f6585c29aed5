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

from spectral.analysis.metrics import MetricRow, MetricTable, metric_bounds

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


def panel_titles(titles: list[str]) -> list[str]:
    """Subplot titles wrapped to what a panel's width holds (five panels side by side leave ≈ 20 characters each;
    unwrapped, neighbouring titles run into each other)."""
    width = max(14, 110 // max(len(titles), 1))
    return ["<br>".join(_wrap(t, width)) if len(t) > width else t for t in titles]


def trained_last(conditions: list[str]) -> list[str]:
    """Conditions in drawing order: the controls first, the trained model last, so its line lies on top."""
    return [c for c in conditions if c != "trained"] + [c for c in conditions if c == "trained"]


# ratios, norms and ranks that span decades (layer 0's norm ratio is ≈ 17; an effective rank runs from ≈ 1 next to a
# massive activation to hundreds, so on a linear axis the low layers' ranks all sit on the zero line)
LOG_METRICS = ("norm_ratio", "norm_mean", "eff_rank", "participation_ratio")


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


TITLE_CHAR_PX = 7.5  # the width of a character of the 15 px title (Arial), for breaking long titles


def _fit_title(title: str, width: int) -> str:
    """``title`` with a first line too wide for a figure ``width`` px wide broken after its " — " (the run's
    label goes on a line of its own instead of running off the figure's edge)."""
    first, sep, rest = title.partition("<br>")
    if " — " in first and len(first) * TITLE_CHAR_PX > width - 30:
        first = first.replace(" — ", " —<br>", 1)
    return first + sep + rest


def _room_for_titles(fig: go.Figure, height: int) -> None:
    """Grow the top margin (and the figure with it) until the title's lines and the top row's subplot titles
    (two lines when wrapped) fit above the plot without running into each other. The title is then pinned near the
    top: plotly anchors a title's first line (its later lines run downward) at ``y`` with ``yanchor`` bottom."""
    layout: Any = fig.layout  # plotly's layout objects are typed loosely
    title_lines = (layout.title.text or "").count("<br>") + 1
    top = [
        (a.text.count("<br>") + 1) * 1.25 * (a.font.size or 16)
        for a in layout.annotations
        if a.yref == "paper" and a.yanchor == "bottom" and a.y is not None and a.y >= 0.999 and a.text
    ]
    need = math.ceil(32 + 20 * (title_lines - 1) + (max(top) + 4 if top else 0))
    if need > 60:
        height += need - 60
        fig.update_layout(
            height=height, margin={"t": need}, title={"yref": "container", "y": 1 - 29 / height, "yanchor": "bottom"}
        )


def apply_theme(fig: go.Figure, title: str, width: int = 720, height: int = 420) -> go.Figure:
    title = _fit_title(title, width)
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        font=FONT,
        template="simple_white",
        width=width,
        height=height,
        margin={"l": 70, "r": 20, "t": 60, "b": 110},
        legend={"orientation": "h", "yanchor": "top", "y": -0.26, "x": 0.0},
    )
    fig.update_xaxes(showgrid=True, gridcolor="#EEEEEE", ticks="outside", dtick=1, title_standoff=4)
    fig.update_yaxes(showgrid=True, gridcolor="#EEEEEE", ticks="outside")
    _room_for_titles(fig, height)
    return fig


def _tick_text(v: float) -> str:
    return f"{v / 1000:g}k" if v >= 10_000 else f"{v:g}"


def readable_log_ticks(fig: go.Figure) -> go.Figure:
    """Label log y axes spanning up to three decades at 1-2-5 steps (1-1.5-2-3-5-7 on a short span) with their full
    values (0.2, 2, 20), not plotly's bare mantissa digits (a "2" that reads as 0.2, 2 or 20, and crowd each other
    on a short span); wider spans keep plotly's labelled powers of ten."""
    ends: dict[str, list[float]] = {}
    for tr in fig.data:
        ys = getattr(tr, "y", None)
        nums = [] if ys is None else [float(v) for v in ys if isinstance(v, int | float) and v > 0 and math.isfinite(v)]
        if nums:
            ends.setdefault(getattr(tr, "yaxis", None) or "y", []).extend((min(nums), max(nums)))
    for ref, span in ends.items():
        axis: Any = fig.layout[f"yaxis{ref[1:]}"]
        lo, hi = min(span), max(span)
        if axis.type != "log" or hi > 1000 * lo:
            continue
        vals: list[float] = []
        for steps in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
            decades = range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
            vals = [float(f"{m * 10.0**k:.6g}") for k in decades for m in steps if lo <= m * 10.0**k <= hi]
            if len(vals) >= 3:
                break
        if len(vals) >= 2:
            axis.update(tickvals=vals, ticktext=[_tick_text(v) for v in vals])
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
    # an ensemble's members (R seeds, W permutations) share one legend entry that shows and hides them together
    family = condition.split(".s")[0] if condition.split(".s")[-1].isdigit() else condition
    label = style["label"] if family == condition else CONDITION_STYLE.get(family, style)["label"] + ", every seed"
    first = not any(getattr(t, "legendgroup", None) == family and getattr(t, "showlegend", False) for t in fig.data)
    _band_and_line(fig, x, rows, style["color"], style["dash"], label, family, show_legend and first, kw)


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
    """A CI band (shaded) and the value line of one series; the band is intersected with the metric's range
    (:func:`spectral.analysis.metrics.metric_bounds`: no effective rank below 1, no share outside [0, 1])."""
    low, high = metric_bounds(rows[0].metric) if rows else (-math.inf, math.inf)
    lo = [r.ci_low if not math.isfinite(r.ci_low) else max(r.ci_low, low) for r in rows]
    hi = [r.ci_high if not math.isfinite(r.ci_high) else min(r.ci_high, high) for r in rows]
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
        legendrank=1 if group == "trained" else 1000,  # drawn last (on top), listed first
        showlegend=show_legend,
    )
    fig.add_trace(line, **kw)


def norm_profile(table: MetricTable, title: str, level: float | None = None) -> go.Figure:
    """Mean ‖h‖ of resid_post.l per layer (log scale), trained beside its controls (``level``: see
    :func:`band_subtitle`)."""
    fig = go.Figure()
    for cond in trained_last(table.conditions()):
        _add_series(fig, table.series(cond, "resid_post", "norm_mean"), cond)
    apply_theme(fig, band_subtitle(title, level))
    fig.update_xaxes(title_text="layer (resid_post)")
    fig.update_yaxes(title_text="mean ‖h‖ (log scale)", type="log", exponentformat="power")
    return readable_log_ticks(fig)


def carrier_and_anisotropy(table: MetricTable, title: str, level: float | None = None) -> go.Figure:
    """Carrier energy ρ and anisotropy per layer (two panels), trained beside its controls (``level``: see
    :func:`band_subtitle`)."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("carrier energy ρ", "anisotropy (mean pairwise cos)"), horizontal_spacing=0.12
    )
    for cond in trained_last(table.conditions()):
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
    """One panel per condition; one line per site coloured by depth (viridis), the depth read off a colour bar
    (a legend of one row per layer would be 30 rows); the x title once, under the middle panel."""
    conds = list(dict.fromkeys(c.condition for c in curves))
    fig = make_subplots(
        rows=1,
        cols=len(conds),
        subplot_titles=[condition_style(c)["label"] for c in conds],
        shared_yaxes=True,
        horizontal_spacing=0.03,
    )
    n_sites = 1
    for j, cond in enumerate(conds, 1):
        mine = [c for c in curves if c.condition == cond]
        n_sites = max(n_sites, len(mine))
        for i, c in enumerate(mine):
            fig.add_trace(
                go.Scatter(
                    x=c.x,
                    y=c.y,
                    mode="lines",
                    name=c.site,
                    showlegend=False,
                    hovertemplate=f"{c.site}<br>%{{x}}: %{{y:.3g}}<extra></extra>",
                    line={"color": _layer_color(i, len(mine)), "width": 1.8},
                ),
                row=1,
                col=j,
            )
    first = next((c for c in curves), None)
    if first is not None:  # the colour bar: site index 0 .. n-1 in depth order (the same scale as the lines)
        scale = [[k / 10, _layer_color(k, 11)] for k in range(11)]
        fig.add_trace(
            go.Scatter(
                x=[first.x[0]], y=[first.y[0]], mode="markers", showlegend=False, hoverinfo="skip",
                marker={"size": 0.1, "opacity": 0, "color": [0], "cmin": 0, "cmax": max(n_sites - 1, 1),
                        "colorscale": scale, "colorbar": {"title": {"text": "depth<br>(site)"}, "thickness": 14,
                                                          "dtick": 1 if n_sites <= 11 else None}},
            ),
            row=1, col=1,
        )  # fmt: skip
    apply_theme(fig, title, width=max(560, 300 * len(conds) + 120), height=440)
    fig.update_xaxes(dtick=None, type="log" if log_x else "linear")
    fig.update_xaxes(title_text=x_title, row=1, col=(len(conds) + 1) // 2)
    fig.update_yaxes(type="log", exponentformat="power")
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(margin={"r": 90})
    return readable_log_ticks(fig)


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
    # only the conditions that measured the metric get a panel (R has no W_U bands of its own: no empty axes)
    have = {r.condition for r in table.rows if r.metric.startswith(metric_prefix)}
    present = [c for c in table.conditions() if c in have]
    conds = pick_conditions(conditions, present) or present[:1]
    fig = make_subplots(
        rows=1, cols=len(conds), subplot_titles=[condition_style(c)["label"] for c in conds], horizontal_spacing=0.12
    )
    nan = float("nan")
    for j, cond in enumerate(conds, 1):
        cells = {(r.site, i): r for i in range(n) for r in table.series(cond, kind, f"{metric_prefix}{i}")}
        sites = sorted({(-1 if r.layer is None else r.layer, r.site, r.layer) for r in cells.values()})
        # the measured layers as categories: four sampled layers are four rows, not blocks on a 0..L axis
        labels = [site if layer is None else str(layer) for _, site, layer in sites]
        # a missing (layer, band) cell stays NaN (a gap), never another band's value
        z = [[cells[site, i].value if (site, i) in cells else nan for i in range(n)] for _, site, _ in sites]
        fig.add_trace(
            go.Heatmap(z=z, x=list(range(n)), y=labels, colorscale="Viridis", coloraxis="coloraxis"), row=1, col=j
        )
    apply_theme(fig, title, width=max(520, 380 * len(conds)), height=420)
    fig.update_xaxes(title_text="band (0 = top singular values)", dtick=1)
    fig.update_yaxes(type="category", row=1)
    fig.update_yaxes(title_text=f"layer ({kind})", row=1, col=1)
    fig.update_layout(coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": z_title}}})
    return fig


def matrices(mats: list[Matrix], title: str, x_title: str, y_title: str, z_title: str | None = None) -> go.Figure:
    """A grid of matrices (rows: conditions, columns: labels) on one shared colour scale (titled ``z_title``)."""
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
    fig.update_layout(coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": z_title}}})
    return fig


def layer_panels(
    table: MetricTable, panels: tuple[tuple[str, str, str], ...], title: str, level: float | None = None
) -> go.Figure:
    """Side-by-side panels of per-layer metrics (kind, metric, panel title), every condition drawn (``level``:
    see :func:`band_subtitle`)."""
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        subplot_titles=panel_titles([p[2] for p in panels]),
        horizontal_spacing=min(0.1, 0.25 / len(panels)),
    )
    for j, (kind, metric, _) in enumerate(panels, 1):
        for cond in trained_last(table.conditions()):
            _add_series(fig, table.series(cond, kind, metric), cond, 1, j)  # one legend entry per family
        if metric in LOG_METRICS:
            fig.update_yaxes(type="log", row=1, col=j)
    apply_theme(fig, band_subtitle(title, level), width=max(520, 330 * len(panels)), height=420)
    fig.update_xaxes(title_text="layer")
    return readable_log_ticks(fig)


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
        rows=1,
        cols=len(panels),
        subplot_titles=panel_titles([p[0] for p in panels]),
        horizontal_spacing=min(0.1, 0.3 / len(panels)),
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
    return readable_log_ticks(declutter_ticks(fig))


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
    :func:`band_subtitle`; ``log_y``: every panel on a log scale, values ≤ 0 left out). A panel no series measured
    is not drawn: the subtitle names it."""
    measured = [p for p in panels if any(s.table.series(s.condition, p[0], p[1]) for s in series)]
    absent = [p[2] for p in panels if p not in measured]
    panels = tuple(measured) or panels[:1]
    if absent:
        title = f"{title} (not measured by these runs: {', '.join(absent)})"
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        subplot_titles=panel_titles([p[2] for p in panels]),
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
    # the legend (one row per series: run labels are long) under the panels, at the figure's bottom edge: beside them
    # it took a third of the width and left each panel ≈ 100 px at the app's width
    rows = sum(1 for tr in fig.data if tr.showlegend is not False and tr.name)
    apply_theme(fig, band_subtitle(title, level), width=max(560, 300 * len(panels)), height=380 + 24 * rows)
    fig.update_layout(
        legend={"orientation": "v", "x": 0.0, "y": 0.0, "yref": "container", "yanchor": "bottom", "xanchor": "left"},
        margin={"b": 80 + 24 * rows},
    )
    fig.update_xaxes(title_text="relative depth" if relative else "layer", dtick=0.25 if relative else 1)
    if log_y:
        fig.update_yaxes(type="log")
    elif panels and panels[0][1] == "norm_mean":
        fig.update_yaxes(type="log", row=1, col=1)
    return readable_log_ticks(fig)


# Okabe-Ito hues no reader confuses (blue and vermilion, not orange and red), each with its own marker shape
OUTCOME_COLORS = {"supported": "#009E73", "contradicted": "#D55E00", "inconclusive": "#0072B2", "n/a": "#999999"}
OUTCOME_SYMBOLS = {"supported": "triangle-up", "contradicted": "triangle-down", "inconclusive": "diamond", "n/a": "x"}
OUTCOME_GLYPHS = {"supported": "▲", "contradicted": "▼", "inconclusive": "◆", "n/a": "–"}


def _tint(hex_color: str, keep: float = 0.45) -> str:
    """``hex_color`` mixed toward white (``keep`` of the colour): a cell fill black text reads on."""
    rgb = [int(hex_color[k : k + 2], 16) for k in (1, 3, 5)]
    return "#" + "".join(f"{round(255 - keep * (255 - c)):02X}" for c in rgb)


def _why_inconclusive(v: Any) -> str:
    """Why an inconclusive verdict whose interval clears δ (wholly above or below it) is not decided, from its note:
    not significant after Holm's correction, or no power (a panel that shows a cleared δ must say why)."""
    if v.outcome != "inconclusive" or not (v.effect_ci_low > v.margin or v.effect_ci_high < v.margin):
        return ""
    if "not after Holm" in v.note:
        return f"the interval clears δ, but not after Holm (p_Holm {_num(v.p_holm)})"
    if v.no_power:
        return "the interval clears δ, but the test cannot reach δ (no power)"
    return ""


def verdict_panels(verdicts: list[Any], title: str, level: float = 0.95) -> go.Figure:
    """One panel per decided prediction, on the scale of the decision: the effect (trained − null) with its
    interval, its marker coloured *and shaped* by the outcome; the null (0, solid) and the margin δ (dashed) drawn,
    so the rule is read off the panel (the whole bar above δ: supported; below: contradicted; across:
    inconclusive). Predictions the run could not answer (n/a) are listed under the title, not drawn empty."""
    shown = [v for v in verdicts if v.outcome != "n/a" and math.isfinite(v.effect)]
    missing = [v for v in verdicts if v not in shown]
    # three panels a row: at the app's width (≈ 900 px) a fourth leaves the wrapped y titles no room between panels
    cols = min(3, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    titles = [
        f"{'<br>'.join(_wrap(v.prediction, 34))}<br><sup>{OUTCOME_GLYPHS.get(v.outcome, '')} {v.outcome}: "
        f"{_num(v.effect)} [{_num(v.effect_ci_low)}, {_num(v.effect_ci_high)}] vs δ {_num(v.margin)}</sup>"
        + (f"<br><sup>{why}</sup>" if (why := _why_inconclusive(v)) else "")
        for v in shown
    ]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or None, vertical_spacing=min(0.5 / rows, 0.22),
                        horizontal_spacing=0.12)  # fmt: skip
    for i, v in enumerate(shown):
        at: dict[str, Any] = {"row": i // cols + 1, "col": i % cols + 1}
        color = OUTCOME_COLORS.get(v.outcome, "#000000")
        lo = v.effect_ci_low if math.isfinite(v.effect_ci_low) else v.effect
        hi = v.effect_ci_high if math.isfinite(v.effect_ci_high) else v.effect
        margin = v.margin if math.isfinite(v.margin) else 0.0
        span = max(hi, margin, 0.0) - min(lo, margin, 0.0) or 1.0
        # the null labelled at the right end of its line, δ at the left: the two never overlap when δ is near 0
        marks = ((0.0, "solid", "null (0)", 1), (margin, "dash", "δ", -1)) if margin != 0 else (
            (0.0, "dash", "null (0) = δ", 1),)  # fmt: skip
        for y, dash, name, end in marks:
            fig.add_trace(go.Scatter(x=[-1, 1], y=[y, y], mode="lines", showlegend=False, hoverinfo="skip",
                                     line={"color": "#444444", "dash": dash, "width": 1.2}), **at)  # fmt: skip
            fig.add_annotation(x=end, y=y, text=name, showarrow=False, xanchor="right" if end > 0 else "left",
                               yanchor="bottom", font={"size": 10, "color": "#444444"}, **at)  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[0], y=[v.effect], mode="markers", showlegend=False,
                marker={"color": color, "size": 13, "symbol": OUTCOME_SYMBOLS.get(v.outcome, "circle")},
                error_y={"type": "data", "symmetric": False, "array": [hi - v.effect],
                         "arrayminus": [v.effect - lo], "color": color, "thickness": 2.5},
                hovertext=["<br>".join(_wrap(v.note, 90))],
                hovertemplate=f"{v.statistic}<br>effect %{{y:.4g}}<br>%{{hovertext}}<extra></extra>",
            ),
            **at,
        )  # fmt: skip
        pad = 0.12 * span
        fig.update_xaxes(range=[-1, 1], showticklabels=False, ticks="", showgrid=False, **at)
        fig.update_yaxes(range=[min(lo, margin, 0.0) - pad, max(hi, margin, 0.0) + pad], dtick=None, nticks=5,
                         title_text="<br>".join(_wrap(f"effect: {v.statistic}", 26)), title_font={"size": 10},
                         **at)  # fmt: skip
    for k in range(len(shown) + 1, rows * cols + 1):  # the grid's spare slots: no axes drawn
        fig.layout[f"xaxis{k}"].visible = False
        fig.layout[f"yaxis{k}"].visible = False
    for name in ("supported", "contradicted", "inconclusive"):  # legend: colour and shape of each outcome
        mark = {"color": OUTCOME_COLORS[name], "symbol": OUTCOME_SYMBOLS[name], "size": 11}
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, marker=mark))
    sub = f"effect = trained − null with its {ci_label(level)}; solid: the null (0), dashed: the margin δ"
    if missing:
        sub += "<br>n/a (the run cannot answer): " + ", ".join(v.prediction.split(" ", 1)[0] for v in missing)
    apply_theme(fig, f"{title}<br><sup>{sub}</sup>", 1200, 320 * rows + 120)
    fig.update_annotations(font_size=11)
    fig.update_layout(margin={"t": 150 if missing else 130, "b": 70}, legend={"y": -0.06 if rows > 1 else -0.2})
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
            axis: Any = fig.layout[f"{letter}axis{ref[1:]}"]
            span = max(ends) - min(ends)
            if axis.dtick == 1 and span > max_ticks:
                axis.dtick = _nice_step(span)
    return fig


# ---- across runs: the outcome matrix, one prediction over models, effects against model size ----------------
def _num(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3g}"


def _num2(v: float) -> str:
    """Two significant digits: what fits a matrix cell (the full numbers are in verdicts.csv and the hover)."""
    return "–" if not math.isfinite(v) else f"{v:.2g}"


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
            glyph = OUTCOME_GLYPHS.get(v.outcome, "")
            cell = (
                "n/a"
                if v.outcome == "n/a"
                else f"{glyph} {_num2(v.effect)}<br>[{_num2(v.effect_ci_low)}, {_num2(v.effect_ci_high)}]"
            )
            tr.append(("† " if old else "") + cell)
        z.append(zr)
        text.append(tr)
    n = len(order)
    scale = []
    for i, name in enumerate(order):
        scale += [[i / n, _tint(OUTCOME_COLORS[name])], [(i + 1) / n, _tint(OUTCOME_COLORS[name])]]
    short = [p.split(" ", 1)[0] + "<br>" + "<br>".join(_wrap(p.split(" ", 1)[1], 14)) for p in preds]
    labels = [label for label, _ in runs]
    # a few runs: predictions down the side, runs across (a narrow figure whose cells keep their size on a page);
    # many runs: runs down the side, predictions across (the note's 13 × 11)
    tall = len(runs) <= 4
    bar = {
        "tickvals": [i + 0.5 for i in range(n)],
        "title": {"text": "outcome"},
        "ticktext": [f"{OUTCOME_GLYPHS[o]} {o}" for o in order],
    }
    heat = go.Heatmap(
        z=[list(col) for col in zip(*z, strict=True)] if tall else z,
        x=["<br>".join(_wrap(lab, 22)) for lab in labels] if tall else short,
        y=[p if len(p) <= 46 else p[:44] + "…" for p in preds] if tall else labels,
        text=[list(col) for col in zip(*text, strict=True)] if tall else text,
        texttemplate="%{text}",
        textfont={"size": 10, "color": "black"},
        colorscale=scale,
        zmin=0,
        zmax=n,
        xgap=2,
        ygap=2,
        colorbar=bar,
        hovertemplate="%{y} · %{x}<br>effect %{text}<extra></extra>",
    )
    fig = go.Figure(heat)
    if tall:
        apply_theme(fig, title, width=330 + 170 * len(runs) + 120, height=48 * len(preds) + 230)
        fig.update_layout(margin={"t": 150, "l": 300}, title={"y": 0.98, "yanchor": "top"})
    else:
        apply_theme(fig, title, width=max(900, 118 * len(preds) + 300), height=max(360, 56 * len(runs) + 230))
        fig.update_layout(margin={"t": 190, "l": 230}, title={"y": 0.98, "yanchor": "top"})
    fig.update_yaxes(autorange="reversed", dtick=1)
    fig.update_xaxes(side="top", tickangle=0, dtick=1)
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
                marker={"color": c, "size": 11, "symbol": OUTCOME_SYMBOLS.get(v.outcome, "circle")},
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
        mark = {"color": c, "size": 10, "symbol": OUTCOME_SYMBOLS[name]}
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="markers", marker=mark, name=f"{OUTCOME_GLYPHS[name]} {name}")
        )
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
                marker={"color": c, "size": 10, "symbol": OUTCOME_SYMBOLS.get(v.outcome, "circle")},
                error_y=_effect_bar(v, c),
                showlegend=False,
            )
        )
    fig.add_hline(y=0.0, line={"color": "#222222", "width": 1})
    apply_theme(fig, f"{title}<br><sup>bars: {ci_label(level)} of the effect</sup>", width=760, height=420)
    fig.update_xaxes(type="log", title_text="parameters", dtick=None)
    fig.update_yaxes(title_text="effect (trained − null)", dtick=None)
    return fig
