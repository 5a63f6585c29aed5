"""Figures: PNG export through kaleido when a browser exists, a one-line note when none does."""

import numpy as np

from spectral import export, plotting
from spectral.analysis.metrics import MetricRow, MetricTable


def _table():
    rows = []
    for cond, scale in (("trained", 1.3), ("random_init", 1.0)):
        for layer in range(4):
            for metric, v in (("norm_mean", 2 * scale**layer), ("carrier_energy", 0.5), ("anisotropy", 0.3)):
                rows.append(MetricRow("m", cond, f"resid_post.{layer}", layer, metric, v, 0.9 * v, 1.1 * v))
    return MetricTable(tuple(rows))


def test_figures_have_both_conditions():
    fig = plotting.norm_profile(_table(), "t")
    names = {t.name for t in fig.data if t.showlegend is not False}
    assert names == {"trained", "random weights (R)"}
    assert fig.layout.yaxis.type == "log"
    fig2 = plotting.carrier_and_anisotropy(_table(), "t")
    assert len(fig2.data) == 8  # 2 conditions x 2 panels x (band + line)


def test_png_skipped_with_note_when_no_browser(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "browser_for_png", lambda: None)
    notes = []
    fig = {"norm_profile": plotting.norm_profile(_table(), "t")}
    files, note = export.save_figures(tmp_path, fig, {"norm_profile": "a,b\n"}, {"norm_profile": "cap"}, notes.append)
    assert note and "PNG/PDF/SVG figures skipped" in note and notes == [note]
    assert files["norm_profile"] == [
        "figures/norm_profile.html",
        "figures/norm_profile.csv",
        "figures/norm_profile.txt",
    ]
    assert (tmp_path / "figures" / "norm_profile.txt").read_text() == "cap\n"
    assert (tmp_path / "figures" / "norm_profile.html").is_file()


def test_static_export_writes_png_pdf_svg(tmp_path):
    if export.browser_for_png() is None:
        import pytest

        pytest.skip("no Chromium/Chrome on this machine (install Debian's chromium)")
    fig = {"norm_profile": plotting.norm_profile(_table(), "t")}
    files, note = export.save_figures(tmp_path, fig, {"norm_profile": "a\n"}, {"norm_profile": "c"}, print)
    assert note is None
    for ext in ("png", "pdf", "svg"):
        assert (tmp_path / "figures" / f"norm_profile.{ext}").stat().st_size > 1000
    assert (tmp_path / "figures" / "norm_profile.pdf").read_bytes().startswith(b"%PDF")


def test_layer_ticks_are_thinned_on_deep_models_only():
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from spectral.plotting import apply_theme, declutter_ticks

    fig = make_subplots(rows=1, cols=2)
    fig.add_trace(go.Scatter(x=np.arange(31), y=np.arange(31.0)), row=1, col=1)  # 30 layers: every 5th
    fig.add_trace(go.Scatter(x=list(range(6)), y=list(range(6))), row=1, col=2)  # 5 layers: every layer
    apply_theme(fig, "t")
    declutter_ticks(fig)
    assert (fig.layout.xaxis.dtick, fig.layout.xaxis2.dtick) == (5, 1)
    heat = go.Figure(go.Heatmap(z=[[0.0] * 10] * 30))
    heat.update_xaxes(dtick=1)
    heat.update_yaxes(dtick=1)
    declutter_ticks(heat)
    assert (heat.layout.xaxis.dtick, heat.layout.yaxis.dtick) == (1, 5)
