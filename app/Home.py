"""spectral app: home page (run ``spectral app`` or ``streamlit run app/Home.py -- --roots DIR``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import streamlit as st  # noqa: E402

common.page_header(
    "spectral — the residual stream as a signal",
    "Test the carrier-signal hypothesis: norms grow while directions stay put; one carrier rides "
    "through the network and the content modulates it.",
)
st.markdown(
    """
**Pages** (sidebar):

- **Run** — pick a model and a corpus, start a run; the result is a normal run directory.
- **Explore** — norm growth, carrier and anisotropy, PCA and sequence spectra, W_U bands, logit lens.
- **Single prompt** — type a sentence: each token's norm and carrier share per layer, its top-2 PC trajectory.
- **Verdicts** — the eleven predictions with their statistics and the reason for each verdict.
- **Compare** — overlay several saved runs on shared axes.
"""
)
runs = common.list_runs()
st.subheader(f"Saved runs ({len(runs)})")
if runs:
    rows = []
    for p in runs:
        with common.errors_shown(f"{p}: "):
            man = common.read_manifest(p)
            rows.append(
                {
                    "run": common._display(p),
                    "status": man.get("status", "?"),
                    "model": man.get("model_label", "?"),
                    "corpus": Path(str(man.get("corpus", {}).get("name", "?"))).name,
                    "windows": man.get("corpus", {}).get("n_windows"),
                    "layers": man.get("arch", {}).get("n_layers"),
                }
            )
    st.dataframe(rows, hide_index=True, key="runs_table")
else:
    st.info("No runs yet: start one on the Run page.")
st.caption("Allowed roots for typed paths: " + ", ".join(str(r) for r in common.allowed_roots()))
