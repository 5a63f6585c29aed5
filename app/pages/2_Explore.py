"""Explore page: every figure of a run directory, drawn by spectral.plotting from metrics.csv and
the figures/*.csv the run wrote (the same figure functions the report uses)."""

import csv
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from spectral import plotting  # noqa: E402
from spectral.figureset import LENS_PANELS  # noqa: E402
from spectral.plotting import Curve, Matrix  # noqa: E402

common.page_header("Explore a run", "Figures from a saved run directory, each with its data as CSV.")
run = common.choose_run("explore")


def curves(text: str) -> list[Curve]:
    rows = list(csv.reader(io.StringIO(text)))
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for cond, site, x, y in rows[1:]:
        out.setdefault((cond, site), []).append((float(x), float(y)))
    res = []
    for (cond, site), pts in out.items():
        a = np.array(pts)
        res.append(Curve(cond, site, a[:, 0], a[:, 1]))
    return res


def matrices(text: str) -> list[Matrix]:
    cells: dict[tuple[str, str], dict[tuple[int, int], float]] = {}
    for d in csv.DictReader(io.StringIO(text)):
        cells.setdefault((d["condition"], d["label"]), {})[(int(d["row"]), int(d["col"]))] = float(d["value"])
    mats = []
    for (cond, label), c in cells.items():
        n, m = max(i for i, _ in c) + 1, max(j for _, j in c) + 1
        v = np.zeros((n, m))
        for (i, j), x in c.items():
            v[i, j] = x
        mats.append(Matrix(cond, label, v))
    return mats


def matrix_block(name: str, fig_title: str, x_title: str, y_title: str) -> bool:
    """The run's figures/NAME.csv drawn as matrices with its downloads (False when the run has none)."""
    assert run is not None
    text = run.figure_csvs.get(name)
    if not text or len(text.splitlines()) < 2:
        return False
    fig = plotting.matrices(matrices(text), f"{fig_title} — {run.label}", x_title, y_title)
    common.figure_block(fig, name, text)
    return True


def panels_block(name: str, panels: tuple[tuple[str, str, str], ...], fig_title: str) -> None:
    """Side-by-side per-layer panels of resid_post metrics, with the rows behind them as CSV."""
    assert run is not None
    metrics = tuple(p[1] for p in panels)
    common.figure_block(
        plotting.layer_panels(run.table, panels, f"{fig_title} — {run.label}"),
        name,
        common.rows_csv(run.table, lambda r: r.site.startswith("resid_post.") and r.metric in metrics),
    )


if run is not None:
    man, table = run.manifest, run.table
    status = man.get("status", "?")
    (st.success if status == "complete" else st.warning)(
        f"**{run.label}** — status {status}; {run.n_layers} layers; "
        f"{man.get('corpus', {}).get('n_windows', '?')} windows; conditions: {', '.join(table.conditions())}"
    )
    title = run.label
    resid = lambda r, names: r.site.startswith("resid_post.") and r.metric in names  # noqa: E731
    tabs = st.tabs(["Norms & carrier", "Spectra", "W_U bands", "Logit lens", "Metrics table", "Report"])
    with tabs[0], common.errors_shown():
        st.subheader("Norm growth")
        common.figure_block(
            plotting.norm_profile(table, f"Residual norm by layer — {title}"),
            "norm_profile",
            common.rows_csv(table, lambda r: resid(r, ("norm_mean",))),
        )
        growth = [r for r in table.rows if r.metric == "growth_rate"]
        if growth:
            st.dataframe(
                [
                    {
                        "condition": r.condition,
                        "site": r.site,
                        "g per layer": r.value,
                        "ci_low": r.ci_low,
                        "ci_high": r.ci_high,
                    }
                    for r in growth
                ],
                hide_index=True,
                key="growth_table",
            )
        st.subheader("Carrier energy and anisotropy")
        common.figure_block(
            plotting.carrier_and_anisotropy(table, f"Carrier and anisotropy — {title}"),
            "carrier_anisotropy",
            common.rows_csv(table, lambda r: resid(r, ("carrier_energy", "anisotropy"))),
        )
        st.subheader("Direction kept while the norm grows")
        panels = (
            ("resid_post", "layer_cos", "layer cosine"),
            ("resid_post", "norm_ratio", "norm ratio"),
            ("resid_post", "carrier_drift", "carrier drift"),
        )
        panels_block("layer_drift", panels, "Layer cosine, norm ratio, carrier drift")
        st.subheader("Layer × layer cosine (same token, whole corpus)")
        if not matrix_block("layer_cosine", "Layer × layer cosine (resid_post)", "layer m", "layer l"):
            st.info("layer_cosine: figures/layer_cosine.csv not in this run (made by runs with layer_cosine = true)")
    with tabs[1], common.errors_shown():
        panels = (
            ("resid_post", "eff_rank", "effective rank"),
            ("resid_post", "participation_ratio", "participation ratio"),
            ("resid_post", "seq_dc_share", "DC share (sequence)"),
            ("resid_post", "seq_ac_lowfreq_share", "low-frequency share (sequence)"),
        )
        panels_block("rank_lowpass", panels, "Effective rank and sequence low-pass")
        for name, fig_title, xt, yt, logx in (
            ("pca_spectrum", "PCA spectrum of the centred covariance", "component", "λ / Σλ", True),
            ("sequence_spectrum", "Sequence-axis power P(f)", "frequency (cycles per window)", "P(f) / Σ P", False),
        ):
            text = run.figure_csvs.get(name)
            if text and len(text.splitlines()) > 1:
                st.subheader(fig_title)
                common.figure_block(
                    plotting.curves_by_layer(curves(text), f"{fig_title} — {title}", xt, yt, log_x=logx), name, text
                )
            else:
                st.info(f"{name}: figures/{name}.csv not in this run")
    with tabs[2], common.errors_shown():
        K = run.band_k
        if any(r.metric == f"band_energy_k{K}_b0" for r in table.rows):
            common.figure_block(
                plotting.metric_heatmap(
                    table,
                    f"band_energy_k{K}_b",
                    K,
                    "resid_post",
                    f"Energy per W_U band (K={K}) — {title}",
                    "energy share",
                ),
                "band_energy",
                common.rows_csv(table, lambda r: r.metric.startswith(f"band_energy_k{K}_b")),
            )
        else:
            st.info("No W_U band energies in this run (the model has no trained unembedding).")
        matrix_block("band_transfer", f"Band transfer (K={K})", "input band", "output band")
        if any(r.metric.startswith(f"dnll_band_k{K}") for r in table.rows):
            common.figure_block(
                plotting.metric_heatmap(
                    table,
                    f"dnll_band_k{K}_b",
                    K,
                    "resid_post",
                    f"ΔNLL when a W_U band is projected out — {title}",
                    "ΔNLL",
                ),
                "interventions",
                common.rows_csv(table, lambda r: r.metric.startswith("dnll_")),
            )
    with tabs[3], common.errors_shown():
        lens = [r for r in table.rows if "lens" in r.metric and r.site.startswith("resid_post.")]
        if lens:
            common.figure_block(
                plotting.layer_panels(table, LENS_PANELS, f"Logit lens — {title}"),
                "logit_lens",
                common.rows_csv(table, lambda r: "lens" in r.metric),
            )
            wide: dict[tuple[str, int], dict] = {}
            for r in lens:
                wide.setdefault((r.condition, r.layer or 0), {"condition": r.condition, "layer": r.layer})[r.metric] = (
                    r.value
                )
            st.dataframe(list(wide.values()), hide_index=True, key="lens_table")
        else:
            st.info("No logit-lens metrics in this run (the model has no trained unembedding).")
    with tabs[4], common.errors_shown():
        conds = st.multiselect("conditions", table.conditions(), default=table.conditions(), key="mt_conds")
        metrics = sorted({r.metric for r in table.rows})
        pick = st.multiselect("metrics", metrics, default=[m for m in ("norm_mean", "carrier_energy") if m in metrics])
        rows = [r.__dict__ for r in table.rows if r.condition in conds and (not pick or r.metric in pick)]
        st.dataframe(rows, hide_index=True, key="metrics_table")
        st.download_button("metrics.csv", table.to_csv(), file_name="metrics.csv", mime="text/csv", on_click="ignore")
    with tabs[5], common.errors_shown():
        report = Path(run.path) / "report.md"
        if st.button("Write / rebuild the run's report", key="build_report"):
            from spectral.report import build_report

            report = build_report(Path(run.path))
            st.success(f"wrote {report}")
        if report.is_file():
            st.markdown(f"Report: `{report}`")
