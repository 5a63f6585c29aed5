"""Compare page: several saved runs overlaid on shared axes (spectral.plotting.overlay, the
figure ``spectral compare`` writes)."""

import contextlib
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import streamlit as st  # noqa: E402

from spectral import plotting  # noqa: E402
from spectral.api import MetricTable  # noqa: E402
from spectral.compare import PANELS, mean_middle, run_verdict_spec  # noqa: E402

common.page_header(
    "Compare runs", "Per-layer statistics of several runs on shared axes, each with the CIs at its run's level."
)


def is_complete(run_dir: Path) -> bool:
    """Whether a listed run finished (a failed or cancelled one has no metrics to draw: never a default)."""
    with contextlib.suppress(Exception):  # an unreadable manifest: not complete (picking it shows why)
        return common.read_manifest(run_dir).get("status") == "complete"
    return False


found = common.list_runs()
runs = [common._display(p) for p in found]
preset = [p for p in st.session_state.get("compare_runs", []) if p in runs]
complete = [common._display(p) for p in found if is_complete(p)]
picked = st.multiselect("Runs", runs, default=preset or complete[:2], key="compare_select")
typed = st.text_area("…or type run directories, one per line (within the allowed roots)", key="compare_typed")
typed_runs = [line.strip() for line in typed.splitlines() if line.strip()]
if typed_runs:
    st.caption("Comparing the typed run directories (the runs picked above are left out while any is typed).")
c1, c2 = st.columns(2)
conds = c1.multiselect(
    "conditions",
    ["trained", "random_init", "permuted_weights", "shuffled", "permuted"],
    default=["trained"],
    key="compare_conds",
    help="random_init: the R ensemble's first seed",
)
relative = c2.checkbox("x axis: relative depth l/(L-1)", value=True, key="compare_relative")
panel_names = [p[2] for p in PANELS]
chosen = st.multiselect("panels", panel_names, default=panel_names[:4], key="compare_panels")

loaded = []
seen: set[str] = set()
for target in typed_runs or picked:
    with common.errors_shown(f"{target}: "):
        where = common.safe_path(target)
        if str(where) in seen:  # the same run typed twice: one series, not two
            continue
        seen.add(str(where))
        run = common.load_run(where)
        if run.manifest.get("status") != "complete":
            st.warning(f"{target}: status {run.manifest.get('status')} — shown anyway")
        loaded.append(run)

series = []
specs = {}  # series label -> its run's [verdicts] (middle layers)
for run in loaded:
    for cond in plotting.pick_conditions(tuple(conds), list(run.table.conditions())):
        if cond in run.table.conditions():
            label = f"{run.label} ({Path(run.path).name})" + ("" if cond == "trained" else f" · {cond}")
            series.append(plotting.Series(label, run.n_layers, run.table, cond))
            specs[label] = run_verdict_spec(run.manifest)
panels = tuple(p for p in PANELS if p[2] in chosen)
if not series or not panels:
    st.info("Pick at least one run that holds the chosen conditions, and one panel.")
else:
    with common.errors_shown():
        fig = plotting.overlay(series, panels, "Runs compared", relative)
        rows = [
            r for s in series for r in s.table.rows if r.condition == s.condition and r.site.startswith("resid_post")
        ]
        common.figure_block(
            fig,
            "compare_layers",
            MetricTable(tuple(rows)).to_csv(),
            caption=f"Bands: {common.ci_levels_text(loaded)} CIs.",
        )
        st.subheader("Middle-layer means")

        def middle_text(v: float | None) -> str:
            """A mean as the table shows it; "–" where the run did not measure the metric (not "None")."""
            return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"

        st.dataframe(
            [
                {"series": s.label, "layers": s.n_layers}
                | {
                    p[2]: middle_text(mean_middle(s.table, s.condition, p[1], s.n_layers, specs[s.label]))
                    for p in panels
                }
                for s in series
            ],
            hide_index=True,
            key="compare_table",
        )

if loaded:
    st.subheader("Outcome matrix")
    with common.errors_shown():
        from spectral.predictions import stale_predictions
        from spectral.synthesis import RunRecord, battery_revision, outcome_table

        records = [
            RunRecord(f"{run.label} ({Path(run.path).name})", Path(run.path), dict(run.manifest), list(run.verdicts),
                      rev := battery_revision(run.manifest), stale_predictions(rev))
            for run in loaded
        ]  # fmt: skip
        matrix = plotting.outcome_matrix(
            [(r.key, r.verdicts) for r in records],
            "Outcome of each prediction per run",
            {r.key: r.stale for r in records},
        )
        common.figure_block(
            matrix,
            "outcome_matrix",
            outcome_table(records),  # the note's outcomes.csv columns (csv module: labels quoted as needed)
            caption="Colour and glyph: outcome (▲ supported, ◆ inconclusive, ▼ contradicted); number: effect "
            "(trained − null) with its interval; an inconclusive cell whose interval clears the margin δ was not "
            "significant after Holm's correction or had no power to reach δ (its reason is on the Verdicts page); "
            "† measured by an older battery revision (its statistic changed since). Drawn at its own width: scroll "
            "sideways on a narrow screen.",
            natural=True,
        )
    st.subheader("Outcomes side by side")
    st.caption(
        "Each cell: the prediction's outcome and its effect (trained − null) with its "
        f"{common.ci_levels_text(loaded)} interval."
    )

    def cell(v) -> str:
        if v.outcome == "n/a":
            return "n/a"
        return f"{v.outcome}: {v.effect:.3g} [{v.effect_ci_low:.3g}, {v.effect_ci_high:.3g}]"

    names = list(dict.fromkeys(v.prediction for run in loaded for v in run.verdicts))
    st.dataframe(
        [
            {"prediction": name}
            | {
                f"{run.label} ({Path(run.path).name})": next(
                    (cell(v) for v in run.verdicts if v.prediction == name), "–"
                )
                for run in loaded
            }
            for name in names
        ],
        hide_index=True,
        key="compare_outcomes",
    )
