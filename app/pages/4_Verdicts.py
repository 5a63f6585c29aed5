"""Verdicts page: the eleven predictions, each with its outcome, effect and CI, null and Holm-adjusted p."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import streamlit as st  # noqa: E402

from spectral.predictions import verdicts_csv  # noqa: E402

common.page_header(
    "Verdicts",
    "supported / contradicted / inconclusive / n/a for each prediction: its effect against a null, with a CI and a "
    "Holm-adjusted p-value, computed from the run's metrics — never typed.",
)
run = common.choose_run("verdicts")
if run is not None:
    if not run.verdicts:
        st.warning(f"{run.path} has no verdicts.csv")
    else:
        common.outcome_metrics(common.outcome_counts(run.verdicts))

        def f(x: float) -> str:
            return "" if not math.isfinite(x) else f"{x:.4g}"

        level = common.ci_level(run)

        def iv(lo: float, hi: float) -> str:
            return "" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{f(lo)}, {f(hi)}]"

        rows = [
            {
                "prediction": v.prediction,
                "outcome": v.outcome,
                "statistic": v.statistic,
                "trained": f(v.value),
                f"{common.ci_label(level)} CI": iv(v.ci_low, v.ci_high),
                "null": f(v.null),
                "null interval": iv(v.null_ci_low, v.null_ci_high),
                "effect": f(v.effect),
                "effect CI": iv(v.effect_ci_low, v.effect_ci_high),
                "margin δ": f(v.margin),
                "p": f(v.p_value),
                "p (Holm)": f(v.p_holm),
                "note": v.note,
            }
            for v in run.verdicts
        ]
        st.dataframe(rows, hide_index=True, key="verdicts_table", width="stretch")
        st.subheader("Reasons")
        for v in run.verdicts:
            color = {"supported": "green", "contradicted": "red", "inconclusive": "orange"}.get(v.outcome, "gray")
            st.markdown(f":{color}-badge[{v.outcome}] **{v.prediction}** — {v.note}")
        st.download_button(
            "verdicts.csv",
            verdicts_csv(list(run.verdicts)),
            file_name="verdicts.csv",
            mime="text/csv",
            on_click="ignore",
        )
