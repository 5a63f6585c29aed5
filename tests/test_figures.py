"""Figures: PNG export through kaleido when a browser exists, a one-line note when none does."""

import math

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
        "figures/norm_profile.json",
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


def test_static_export_through_the_browser_started_early(tmp_path):
    """The run starts kaleido's browser before it builds the figures; the export goes through it and stops it."""
    if export.browser_for_png() is None:
        import pytest

        pytest.skip("no Chromium/Chrome on this machine (install Debian's chromium)")
    assert export.start_static_export(("png", "svg"))
    assert export._server_thread() is not None
    fig = {"norm_profile": plotting.norm_profile(_table(), "t")}
    files, note = export.save_figures(
        tmp_path, fig, {"norm_profile": "a\n"}, {"norm_profile": "c"}, print, formats=("png", "svg")
    )
    assert note is None and export._server_thread() is None  # stopped after the export
    for ext in ("png", "svg"):
        assert (tmp_path / "figures" / f"norm_profile.{ext}").stat().st_size > 1000
    assert not export.start_static_export(())  # no static formats: no browser


def test_static_export_fails_instead_of_hanging_when_the_early_browser_died(tmp_path, monkeypatch):
    """kaleido's server waits forever on a task its dead thread never takes: the export watches the thread."""
    import threading

    import kaleido

    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    never = threading.Event()
    monkeypatch.setattr(export, "_server_thread", lambda: dead)
    monkeypatch.setattr(export, "browser_for_png", lambda: "/usr/bin/true")
    monkeypatch.setattr(kaleido, "write_fig_from_object_sync", lambda *a, **k: never.wait())
    fig = {"norm_profile": plotting.norm_profile(_table(), "t")}
    files, note = export.save_figures(tmp_path, fig, {"norm_profile": "a\n"}, {"norm_profile": "c"}, print)
    assert note is not None and "kaleido failed (RuntimeError: kaleido's browser stopped" in note
    assert (tmp_path / "figures" / "norm_profile.html").is_file()  # the rest of the figure is written
    never.set()


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


def test_band_heatmap_leaves_a_missing_cell_empty():
    """A (layer, band) value that is missing is NaN in the heatmap (a gap), not band 0's value."""
    rows = [
        MetricRow("m", "trained", f"resid_post.{layer}", layer, f"band_energy_k3_b{b}", 0.1 * (b + 1) + layer, 0, 1)
        for layer in range(3)
        for b in range(3)
        if (layer, b) != (1, 2)
    ]
    rows.append(MetricRow("m", "trained", "resid_post.3", 3, "band_energy_k3_b1", 7.0, 0, 1))  # no band 0 there
    fig = plotting.metric_heatmap(MetricTable(tuple(rows)), "band_energy_k3_b", 3, "resid_post", "t", "share")
    (heat,) = fig.data
    z = np.array(heat.z, dtype=float)
    assert np.isnan(z[list(heat.y).index("1"), 2]), "layer 1's missing band 2 was filled in"
    assert list(heat.y) == ["0", "1", "2", "3"] and z.shape == (4, 3)  # layer 3 has a value, though not in band 0
    assert fig.layout.yaxis.type == "category"  # sampled layers are rows, not blocks on a 0..L axis
    assert np.isnan(z[3, 0]) and np.isnan(z[3, 2]) and np.isnan(z).sum() == 3
    assert z[1, 0] == 1.1 and z[1, 1] == 1.2 and z[3, 1] == 7.0 and z[2, 2] == 2.3


def test_interval_level_is_the_one_passed_in():
    """Captions and subtitles state the CI level given (0.9 -> 90 %), never a hard-coded 95 %."""
    from types import SimpleNamespace

    assert plotting.ci_label(0.9) == "90% CI" and plotting.ci_label(0.975) == "97.5% CI"
    for fig in (
        plotting.norm_profile(_table(), "t", level=0.9),
        plotting.carrier_and_anisotropy(_table(), "t", level=0.9),
        plotting.layer_panels(_table(), (("resid_post", "anisotropy", "a"),), "t", level=0.9),
        plotting.overlay([plotting.Series("run", 4, _table(), "trained")], (("resid_post", "norm_mean", "n"),), "t",
                         relative=False, level=0.9),
    ):  # fmt: skip
        assert "90% CI" in fig.layout.title.text and "95" not in fig.layout.title.text
    assert plotting.norm_profile(_table(), "t").layout.title.text == "t"  # no level given: no claim
    verdict = SimpleNamespace(
        prediction="P1", outcome="supported", effect=0.5, effect_ci_low=0.2, effect_ci_high=0.8, value=1.0,
        null=0.5, null_ci_low=0.4, null_ci_high=0.6, ci_low=0.9, ci_high=1.1, note="", statistic="s", margin=0.1,
    )  # fmt: skip
    title = plotting.verdict_panels([verdict], "t", level=0.9).layout.title.text
    assert "90% CI" in title and "95" not in title


def test_verdict_panels_draw_the_rule_and_leave_no_empty_panel():
    """Every drawn panel has the null (0) and δ as lines and an outcome-shaped marker; an n/a prediction is listed
    under the title, not drawn as an empty panel."""
    from types import SimpleNamespace

    base = dict(effect_ci_low=0.0018, effect_ci_high=0.0042, value=1.0, null=1.0, null_ci_low=0.9, null_ci_high=1.1,
                ci_low=0.9, ci_high=1.1, note="why", statistic="s", margin=0.005)  # fmt: skip
    vs = [
        SimpleNamespace(prediction="1 a", outcome="contradicted", effect=0.003, **base),
        SimpleNamespace(prediction="2 b", outcome="supported", effect=0.03, **base),
        SimpleNamespace(prediction="3 c", outcome="n/a", effect=float("nan"), **base),
    ]
    fig = plotting.verdict_panels(vs, "t")
    axes = {t.xaxis for t in fig.data if t.x is not None and t.x[0] is not None}
    assert axes == {"x", "x2"}  # two panels, both drawn on
    assert not [k for k in fig.layout if k.startswith("xaxis") and k not in ("xaxis", "xaxis2")]
    for ax in ("x", "x2"):
        lines = [t for t in fig.data if t.xaxis == ax and t.mode == "lines"]
        assert sorted(t.y[0] for t in lines) == [0.0, 0.005]  # the null and δ
        marker = next(t for t in fig.data if t.xaxis == ax and t.mode == "markers")
        assert marker.marker.symbol == plotting.OUTCOME_SYMBOLS[{"x": "contradicted", "x2": "supported"}[ax]]
    assert "n/a (the run cannot answer): 3" in fig.layout.title.text
    assert "lies" not in fig.layout.title.text and "vs δ 0.005" in fig.layout.annotations[0].text
    assert len(set(plotting.OUTCOME_COLORS.values())) == 4 and len(set(plotting.OUTCOME_SYMBOLS.values())) == 4


def test_bands_stay_inside_the_metric_range():
    """A jackknife interval may leave a metric's range (an effective rank below 1, a share above 1); the drawn band
    is its intersection with the range."""
    from spectral.analysis.metrics import metric_bounds

    assert metric_bounds("eff_rank") == (1.0, math.inf) and metric_bounds("seq_dc_share") == (0.0, 1.0)
    assert metric_bounds("layer_cos") == (-1.0, 1.0) and metric_bounds("carrier_minus_modulation_growth")[0] < -1e300
    rows = [MetricRow("m", "trained", f"resid_post.{i}", i, "seq_dc_share", 0.5, -1.0, 1.5) for i in range(3)]
    rows += [MetricRow("m", "trained", f"resid_post.{i}", i, "eff_rank", 3.0, -400.0, 9.0) for i in range(3)]
    fig = plotting.layer_panels(MetricTable(tuple(rows)), (("resid_post", "seq_dc_share", "dc"),
                                                           ("resid_post", "eff_rank", "rank")), "t")  # fmt: skip
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == 2
    assert min(bands[0].y) == 0.0 and max(bands[0].y) == 1.0
    assert min(bands[1].y) == 1.0 and max(bands[1].y) == 9.0


def test_titles_and_log_ticks_stay_readable():
    """A long title breaks after its " — " instead of running off a narrow figure; wrapped subplot titles get room
    above the plot (the top margin grows); a log axis over a short span is labelled with full values (1, 2, 5, 10),
    not bare mantissa digits; carrier drift (a cosine) keeps its band inside [-1, 1]; matrices title their colour
    bar."""
    import plotly.graph_objects as go

    long = "ΔNLL when a W_U band is projected out — smollm2-135m · builtin · 32×128 tokens"
    fig = plotting.apply_theme(go.Figure(), long, width=520)
    assert fig.layout.title.text.startswith("ΔNLL when a W_U band is projected out —<br>smollm2")
    rows = [MetricRow("m", "trained", f"resid_post.{i}", i, "norm_ratio", v, 0.9 * v, 1.1 * v)
            for i, v in enumerate((17.0, 1.5, 1.1, 1.0))]  # fmt: skip
    rows += [MetricRow("m", "trained", f"resid_post.{i}", i, "carrier_drift", 0.99, 0.9, 1.2) for i in range(4)]
    panels = (("resid_post", "norm_ratio", "norm ratio of the layer to the one before"),
              ("resid_post", "carrier_drift", "carrier drift"))  # fmt: skip
    fig = plotting.layer_panels(MetricTable(tuple(rows)), panels, "t — run", level=0.95)
    assert fig.layout.margin.t > 60 and fig.layout.height > 420  # title + subtitle + a wrapped panel title
    assert list(fig.layout.yaxis.ticktext) == ["1", "2", "5", "10"]
    drift_band = next(t for t in fig.data if t.fill == "toself" and t.yaxis == "y2")
    assert max(drift_band.y) == 1.0
    mats = [plotting.Matrix("trained", "attention writes", np.eye(3) / 3)]
    fig = plotting.matrices(mats, "t", "input band", "output band", "share of ‖A‖²")
    assert fig.layout.coloraxis.colorbar.title.text == "share of ‖A‖²"


def test_verdict_panels_say_why_a_cleared_interval_is_inconclusive():
    """An interval wholly above δ that Holm's correction leaves inconclusive says so on its panel; δ is labelled at
    the left end of its line, the null at the right (they never overlap when δ is near 0)."""
    from types import SimpleNamespace

    v = SimpleNamespace(prediction="1 norm growth is learned", outcome="inconclusive", effect=0.0066,
                        effect_ci_low=0.0051, effect_ci_high=0.0082, margin=0.005, p_holm=0.0706, statistic="g",
                        note="supported by its interval but not after Holm (p_holm 0.0706); effect ...")  # fmt: skip
    fig = plotting.verdict_panels([v], "t")
    assert "not after Holm (p_Holm 0.0706)" in fig.layout.annotations[0].text
    marks = {a.text: a.xanchor for a in fig.layout.annotations if a.text in ("δ", "null (0)")}
    assert marks == {"δ": "left", "null (0)": "right"}
