"""Verdicts page: the eleven predictions, each with its outcome, effect and CI, null and Holm-adjusted p."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import streamlit as st  # noqa: E402

from spectral import plotting  # noqa: E402
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

        def fp(x: float) -> str:
            """A p-value; one that underflowed to 0 is below the smallest double, not zero."""
            return "< 1e-300" if x == 0 else f(x)

        level = common.ci_level(run)

        def iv(lo: float, hi: float) -> str:
            return "" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{f(lo)}, {f(hi)}]"

        from spectral.predictions import BATTERY_REVISION
        from spectral.synthesis import read_record

        record = read_record(Path(run.path), repo=common.REPO)
        if record is not None and record.revision < BATTERY_REVISION:
            st.warning(
                f"These verdicts were written by battery revision {record.revision}; the current one is "
                f"{BATTERY_REVISION}. Their statistics, nulls and wording are that revision's (the Reasons below "
                "may read differently from a new run's); rerun the run's command to decide them again."
            )
        rows = [
            {
                "prediction": v.prediction,
                "": plotting.OUTCOME_GLYPHS.get(v.outcome, ""),
                "outcome": v.outcome,
                "effect": f(v.effect),
                "effect CI": iv(v.effect_ci_low, v.effect_ci_high),
                "margin δ": f(v.margin),
                "p (Holm)": fp(v.p_holm),
                "statistic": v.statistic,
                "trained": f(v.value),
                f"{common.ci_label(level)} CI": iv(v.ci_low, v.ci_high),
                "null": f(v.null),
                "null interval": iv(v.null_ci_low, v.null_ci_high),
                "p": fp(v.p_value),
                "note": v.note,
            }
            for v in run.verdicts
        ]
        st.caption(
            f"The decision columns come first: effect (trained − null) with its {common.ci_label(level)}, the margin δ "
            "and the "
            "Holm-adjusted p. Supported: the interval lies above δ; contradicted: below δ — each only when its "
            "Holm-adjusted p is also significant (an interval clear of δ whose p is not stays inconclusive, and its "
            "reason says so); inconclusive: across δ, without power to reach it, or not significant after Holm. "
            "The statistic each prediction decides on is its deciding sub-test (the "
            "one whose outcome settles the prediction): it can differ between runs, and the reason says which."
        )
        st.dataframe(rows, hide_index=True, key="verdicts_table", width="stretch")
        st.subheader("Reasons")
        st.caption(
            "First the rule applied to the deciding statistic and its null; then each other sub-test, labelled as "
            "a sub-test with its own null and its own outcome word (not the prediction's)."
        )
        colors = {"supported": "green", "contradicted": "red", "inconclusive": "blue"}
        for v in run.verdicts:
            parts = [p.strip() for p in v.note.split("; ") if p.strip()]
            lead = [p for p in parts if not p.startswith("sub-test ")]
            subs = [p for p in parts if p.startswith("sub-test ")]
            badge = f":{colors.get(v.outcome, 'gray')}-badge[{plotting.OUTCOME_GLYPHS.get(v.outcome, '')} {v.outcome}]"
            st.markdown(f"{badge} **{v.prediction}** — {'; '.join(lead)}")
            if subs:
                st.caption("\n".join(f"- {p}" for p in subs))
        st.download_button(
            "verdicts.csv",
            verdicts_csv(list(run.verdicts)),
            file_name="verdicts.csv",
            mime="text/csv",
            on_click="ignore",
        )
