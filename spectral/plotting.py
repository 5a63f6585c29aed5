"""Result objects -> plotly figures, in one paper theme. Never shows or saves anything.

Conventions: x is the layer index of ``resid_post.l``; every statistic is drawn with its 95 %
interval as a shaded band; the trained model is a solid line in the first Okabe-Ito colour,
controls are dashed in fixed colours (random-weight twin: grey).
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from spectral.analysis.metrics import MetricRow, MetricTable

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
CONDITION_STYLE = {
    "trained": {"color": OKABE_ITO[0], "dash": "solid", "label": "trained"},
    "random_init": {"color": "#7F7F7F", "dash": "dash", "label": "random weights (R)"},
    "shuffled": {"color": OKABE_ITO[1], "dash": "dot", "label": "shuffled tokens (S)"},
    "permuted": {"color": OKABE_ITO[2], "dash": "dashdot", "label": "permuted positions (P)"},
}
FONT = {"family": "Arial, Helvetica, sans-serif", "size": 13, "color": "#222222"}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


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
    style = CONDITION_STYLE.get(condition, {"color": "#000000", "dash": "solid", "label": condition})
    x = [r.layer for r in rows]
    kw = {} if row is None else {"row": row, "col": col}
    lo = [r.ci_low for r in rows]
    hi = [r.ci_high for r in rows]
    fig.add_trace(
        go.Scatter(
            x=x + x[::-1],
            y=hi + lo[::-1],
            mode="lines",
            fill="toself",
            fillcolor=_rgba(style["color"], 0.18),
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
            legendgroup=condition,
        ),
        **kw,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[r.value for r in rows],
            mode="lines+markers",
            name=style["label"],
            line={"color": style["color"], "dash": style["dash"], "width": 2},
            marker={"size": 6},
            legendgroup=condition,
            showlegend=show_legend,
        ),
        **kw,
    )


def norm_profile(table: MetricTable, title: str) -> go.Figure:
    """Mean ‖h‖ of resid_post.l per layer (log scale), trained beside its controls."""
    fig = go.Figure()
    for cond in table.conditions():
        _add_series(fig, table.series(cond, "resid_post", "norm_mean"), cond)
    apply_theme(fig, title)
    fig.update_xaxes(title_text="layer (resid_post)")
    fig.update_yaxes(title_text="mean ‖h‖ (log scale)", type="log")
    return fig


def carrier_and_anisotropy(table: MetricTable, title: str) -> go.Figure:
    """Carrier energy ρ and anisotropy per layer (two panels), trained beside its controls."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("carrier energy ρ", "anisotropy (mean pairwise cos)"), horizontal_spacing=0.12
    )
    for cond in table.conditions():
        _add_series(fig, table.series(cond, "resid_post", "carrier_energy"), cond, 1, 1, show_legend=True)
        _add_series(fig, table.series(cond, "resid_post", "anisotropy"), cond, 1, 2, show_legend=False)
    apply_theme(fig, title, width=900, height=420)
    fig.update_xaxes(title_text="layer (resid_post)")
    fig.update_yaxes(range=[-0.05, 1.05])
    return fig
