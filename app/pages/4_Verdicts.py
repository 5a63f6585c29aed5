"""Verdicts page: the ten predictions, their statistics, CIs, controls, thresholds and reasons."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import streamlit as st  # noqa: E402

from spectral.analysis.hypotheses import verdicts_csv  # noqa: E402

common.page_header("Verdicts", "pass / fail / n/a for each prediction, computed from the run's metrics — never typed.")
run = common.choose_run("verdicts")
if run is not None:
    if not run.verdicts:
        st.warning(f"{run.path} has no verdicts.csv")
    else:
        counts = {s: sum(v.status == s for v in run.verdicts) for s in ("pass", "fail", "n/a")}
        c = st.columns(3)
        for col, (s, n) in zip(c, counts.items(), strict=True):
            col.metric(s, n)

        def f(x: float) -> str:
            return "" if not math.isfinite(x) else f"{x:.4g}"

        rows = [
            {
                "prediction": v.prediction,
                "status": v.status,
                "statistic": v.statistic,
                "value": f(v.value),
                "95% CI": "" if not math.isfinite(v.ci_low) else f"[{f(v.ci_low)}, {f(v.ci_high)}]",
                "control": f(v.control_value),
                "threshold": f(v.threshold),
                "reason": v.note,
            }
            for v in run.verdicts
        ]
        st.dataframe(rows, hide_index=True, key="verdicts_table", width="stretch")
        st.subheader("Reasons")
        for v in run.verdicts:
            color = {"pass": "green", "fail": "red"}.get(v.status, "gray")
            st.markdown(f":{color}-badge[{v.status}] **{v.prediction}** — {v.note}")
        st.download_button(
            "verdicts.csv",
            verdicts_csv(list(run.verdicts)),
            file_name="verdicts.csv",
            mime="text/csv",
            on_click="ignore",
        )
