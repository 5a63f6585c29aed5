"""Single-prompt page: type a sentence; each token's norm and carrier share across layers (table
and heatmap), its trajectory in the top-2 principal components, and the logit lens (top token per
layer). The model is cached; the maths is spectral.prompt's (front ends hold none)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

from spectral import plotting  # noqa: E402
from spectral.prompt import PromptTrace, lens_top_tokens, trace_prompt  # noqa: E402

common.page_header(
    "Single prompt",
    "Carrier share of a token = ⟨h, μ̂⟩² / ‖h‖², with μ̂ the mean direction of this prompt's tokens at that layer "
    "(position 0 excluded). Display only; the run's statistics live on the Explore page.",
)
choice = common.model_picker("pm", st.query_params.get("model"))
text = st.text_area("prompt", "The quick brown fox jumps over the lazy dog.", key="prompt", height=80)
max_tokens = 64


@st.cache_data(show_spinner="capturing…", max_entries=32)
def activations(name: str, tok: str, text: str) -> PromptTrace:
    """resid_post.0..L-1 of one prompt (spectral.prompt.trace_prompt)."""
    return trace_prompt(common.get_model(name, tok or None), text, max_tokens)


@st.cache_data(show_spinner=False, max_entries=32)
def lens_top(name: str, tok: str, text: str) -> list[list[str]] | None:
    """Top-1 token of final norm + W_U at each resid_post layer (None without an unembedding)."""
    return lens_top_tokens(common.get_model(name, tok or None), activations(name, tok, text))


if choice.name is None:
    st.info(f"Choose a model to capture the prompt ({choice.blocked}).")
elif text.strip():
    with common.errors_shown():
        name = common.checked_model_name(choice.name)
        tok = str(common.safe_path(choice.tokenizer)) if choice.tokenizer else ""
        trace = activations(name, tok, text)
        tokens = trace.tokens
        n_layers, n_tok, _ = trace.h.shape
        labels = [f"{i}:{t!r}" for i, t in enumerate(tokens)]
        norms, share = trace.norms, trace.carrier_share  # layers × tokens
        st.write(f"{n_tok} tokens (BOS/CLS included as position 0), {n_layers} layers")
        layer_cols = [f"L{layer}" for layer in range(n_layers)]
        t1, t2 = st.tabs(["‖h‖ per token", "carrier share per token"])
        for tab, name_, mat, z_title in (
            (t1, "token_norm", norms, "‖h‖"),
            (t2, "token_carrier", share, "carrier share"),
        ):
            with tab:
                fig = go.Figure(go.Heatmap(z=mat.T, x=list(range(n_layers)), y=labels, colorscale="Viridis"))
                plotting.apply_theme(
                    fig, f"{z_title} per token and layer (resid_post)", height=max(360, 22 * n_tok + 140)
                )
                fig.update_xaxes(title_text="layer (resid_post)")
                fig.update_yaxes(autorange="reversed", dtick=1)
                fig.update_layout(coloraxis_colorbar={"title": {"text": z_title}})
                csv = common.csv_text(
                    ["position", "token", *layer_cols],
                    ([i, t, *(f"{v:.6g}" for v in row)] for i, (t, row) in enumerate(zip(tokens, mat.T, strict=True))),
                )
                common.figure_block(fig, name_, csv)
                st.dataframe(
                    [
                        {"token": lab} | dict(zip(layer_cols, map(float, row), strict=True))
                        for lab, row in zip(labels, mat.T, strict=True)
                    ],
                    hide_index=True,
                    key=f"table_{name_}",
                )
        st.subheader("Layer × layer cosine (same token, position 0 excluded)")
        cosm = trace.layer_cosine()
        fig = go.Figure(
            go.Heatmap(
                z=cosm.tolist(), x=list(range(n_layers)), y=list(range(n_layers)), colorscale="Viridis", zmin=-1, zmax=1
            )
        )
        plotting.apply_theme(fig, "Mean cos(h_l, h_m) over this prompt's tokens", width=560, height=480)
        fig.update_xaxes(title_text="layer m (resid_post)")
        fig.update_yaxes(title_text="layer l (resid_post)", autorange="reversed", dtick=1)
        csv = common.csv_text(
            ["layer", *(str(i) for i in range(n_layers))],
            ([i, *(f"{v:.6g}" for v in row)] for i, row in enumerate(cosm)),
        )
        common.figure_block(fig, "layer_cosine", csv)
        st.subheader("Trajectory in the top-2 principal components")
        pcs = trace.pca_trajectory(2)
        show = st.multiselect(
            "tokens",
            labels,
            default=labels[1 : min(n_tok, 9)] or labels,
            key=f"traj_tokens_{common.digest(name + text)}",
        )
        fig = go.Figure()
        for i, lab in enumerate(labels):
            if lab in show:
                fig.add_trace(
                    go.Scatter(
                        x=pcs[:, i, 0],
                        y=pcs[:, i, 1],
                        mode="lines+markers+text",
                        name=lab,
                        text=[str(layer) for layer in range(n_layers)],
                        textposition="top center",
                        line={"color": plotting.OKABE_ITO[i % len(plotting.OKABE_ITO)]},
                    )
                )
        plotting.apply_theme(fig, "Token trajectories across layers (PCA of all tokens × layers; labels = layer)")
        fig.update_xaxes(title_text="PC 1", dtick=None)
        fig.update_yaxes(title_text="PC 2")
        csv = common.csv_text(
            ["position", "token", "layer", "pc1", "pc2"],
            (
                [i, t, layer, f"{pcs[layer, i, 0]:.6g}", f"{pcs[layer, i, 1]:.6g}"]
                for i, t in enumerate(tokens)
                for layer in range(n_layers)
            ),
        )
        common.figure_block(fig, "token_pca", csv)
        st.subheader("Logit lens: top token per layer")
        top = lens_top(name, tok, text)
        if top is None:
            st.info("This model has no trained unembedding, so there is no logit lens.")
        else:
            st.dataframe(
                [
                    {"token": lab} | {layer_cols[layer]: top[layer][i] for layer in range(n_layers)}
                    for i, lab in enumerate(labels)
                ],
                hide_index=True,
                key="lens_prompt_table",
            )
