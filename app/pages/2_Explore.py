"""Explore page: every figure of a run directory, as the run saved it (figures/NAME.json, the registry
spectral.figureset.FIGURE_TABS names them and their captions), each with the CSV behind it; a run saved
before figures were kept as JSON has them built again from its metrics (spectral.api.Result.figure)."""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import plotly.io as pio  # noqa: E402
import streamlit as st  # noqa: E402

from spectral.figureset import CAPTIONS, FIGURE_TABS  # noqa: E402

common.page_header("Explore a run", "Figures from a saved run directory, each with its data as CSV.")
run = common.choose_run("explore")


@st.cache_resource(max_entries=4, show_spinner=False)
def rebuilt(path: str, stamp: float):  # noqa: ANN201 - a spectral.api.Result (the run's figures rebuilt on demand)
    """The run as a Result, for figures a run made before JSON figures has none of (``stamp``: metrics.csv's
    mtime, so a rewritten run is read again)."""
    from spectral.api import open_run

    return open_run(path)


def show(name: str) -> None:
    """One registered figure: the run's saved JSON, else rebuilt from its metrics; with caption and CSV."""
    assert run is not None
    saved = Path(run.path) / "figures" / f"{name}.json"
    png = saved.with_suffix(".png")
    if run.summary_only or (not saved.is_file() and not (Path(run.path) / "metrics.csv").is_file()):
        if png.is_file():  # a committed reference run: its PNG as the run drew it, the caption the run wrote
            txt = png.with_suffix(".txt")
            st.image(str(png), caption=txt.read_text(encoding="utf-8") if txt.is_file() else CAPTIONS.get(name))
        return
    if saved.is_file():
        fig = pio.from_json(saved.read_text(encoding="utf-8"))
    else:
        try:
            fig = rebuilt(str(run.path), (Path(run.path) / "metrics.csv").stat().st_mtime).figure(name)
        except KeyError:
            return  # the run has no such figure (no unembedding, no layer cosine, ...): nothing to show
    common.figure_block(fig, name, run.figure_csvs.get(name), CAPTIONS.get(name))


if run is not None:
    man, table = run.manifest, run.table
    status = man.get("status", "?")
    conditions = ", ".join(table.conditions())
    if run.summary_only:  # the summary keeps the trained rows; the run itself also ran the controls its figures show
        ran = ", ".join(["trained", *man.get("config", {}).get("controls", [])])
        conditions = f"{ran} (the summary holds {conditions} only)"
    (st.success if status == "complete" else st.warning)(
        f"**{run.label}** — status {status}; {run.n_layers} layers; "
        f"{man.get('corpus', {}).get('n_windows', '?')} windows; conditions: {conditions}"
    )
    tabs = st.tabs([*FIGURE_TABS, "Metrics table", "Report"])
    for tab, names in zip(tabs, FIGURE_TABS.values(), strict=False):
        with tab, common.errors_shown():
            for name in names:
                show(name)
    with tabs[list(FIGURE_TABS).index("Norms & carrier")], common.errors_shown():
        growth = [r for r in table.rows if r.metric == "growth_rate"]
        if growth:
            st.subheader("Growth rate g per layer")
            st.dataframe(
                [
                    {"condition": r.condition, "site": r.site, "g per layer": r.value, "ci_low": r.ci_low,
                     "ci_high": r.ci_high}
                    for r in growth
                ],
                hide_index=True,
                key="growth_table",
            )  # fmt: skip
    with tabs[list(FIGURE_TABS).index("Logit lens")], common.errors_shown():
        lens = [r for r in table.rows if "lens" in r.metric and r.site.startswith("resid_post.")]
        if lens:
            wide: dict[tuple[str, int], dict] = {}
            for r in lens:
                wide.setdefault((r.condition, r.layer or 0), {"condition": r.condition, "layer": r.layer})[r.metric] = (
                    r.value
                )
            st.dataframe(list(wide.values()), hide_index=True, key="lens_table")
        else:
            st.info("No logit-lens metrics in this run (the model has no trained unembedding).")
    with tabs[-2], common.errors_shown():
        conds = st.multiselect("conditions", table.conditions(), default=table.conditions(), key="mt_conds")
        metrics = sorted({r.metric for r in table.rows})
        pick = st.multiselect("metrics", metrics, default=[m for m in ("norm_mean", "carrier_energy") if m in metrics])
        # a site without a layer (embed, final) shows "–", not "None"
        rows = [
            r.__dict__ | {"layer": "–" if r.layer is None else str(r.layer)}
            for r in table.rows
            if r.condition in conds and (not pick or r.metric in pick)
        ]
        st.dataframe(rows, hide_index=True, key="metrics_table")
        st.download_button("metrics.csv", table.to_csv(), file_name="metrics.csv", mime="text/csv", on_click="ignore")
    with tabs[-1], common.errors_shown():
        report = Path(run.path) / "report.md"
        if not run.summary_only and st.button("Write / rebuild the run's report", key="build_report"):
            from spectral.report import build_report

            report = build_report(Path(run.path))
            st.success(f"wrote {report}")
        if report.is_file():
            text = report.read_text(encoding="utf-8")
            c1, c2, c3 = st.columns(3)
            c1.download_button("report.md", text, file_name="report.md", mime="text/markdown", on_click="ignore")
            html = report.with_suffix(".html")
            if html.is_file():
                c2.download_button("report.html", html.read_bytes(), file_name="report.html", mime="text/html",
                                   on_click="ignore")  # fmt: skip
            zipped = partial(common.run_zip, Path(run.path))  # built when clicked, not on every page render
            c3.download_button("the run as a zip", zipped, file_name=f"{Path(run.path).name}.zip",
                               mime="application/zip", on_click="ignore")  # fmt: skip
            for kind, block in common.report_blocks(text):
                if kind == "md":
                    st.markdown(block, unsafe_allow_html=False)
                else:  # a table as a dataframe: it scrolls inside the page instead of running off its edge
                    header, body = block
                    st.dataframe([dict(zip(header, row, strict=True)) for row in body], hide_index=True)
        else:
            st.info("This run has no report.md yet: the button above writes it.")
