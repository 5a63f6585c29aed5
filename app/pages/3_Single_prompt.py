"""Single-prompt page: type a sentence; each token's norm and carrier share across layers (table
and heatmap), its trajectory in the top-2 principal components, and the logit lens (top token per
layer). The model is cached; the maths is spectral.prompt's (front ends hold none)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import math  # noqa: E402

import common  # noqa: E402
import numpy as np  # noqa: E402
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


def visible_token(t: str) -> str:
    """A token with its whitespace drawn (␣ ↵ ⇥), any other invisible character (a no-break space, a zero-width
    one) as its code point ⟨U+00A0⟩, and an empty decode shown as ∅, so no cell looks blank."""
    if t is None or t == "":
        return "∅"
    t = t.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    return "".join(c if c.isprintable() else f"⟨U+{ord(c):04X}⟩" for c in t)


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
        labels = [f"{i}:{visible_token(t)}" for i, t in enumerate(tokens)]
        norms, share = trace.norms, trace.carrier_share  # layers × tokens
        st.write(f"{n_tok} tokens (BOS/CLS included as position 0), {n_layers} layers")
        layer_cols = [f"L{layer}" for layer in range(n_layers)]
        o1, o2 = st.columns(2)
        log_scale = o1.toggle("log colour scale for ‖h‖", value=True, key="pm_log",
                              help="a massive activation (often at position 0) spans decades: on a linear scale "
                              "every other token is dark")  # fmt: skip
        skip_first = o2.toggle("leave out position 0", value=False, key="pm_skip0",
                               help="position 0 (BOS or the first token) often holds the outlier")  # fmt: skip
        first = 1 if skip_first and n_tok > 1 else 0
        t1, t2 = st.tabs(["‖h‖ per token", "carrier share per token"])
        for tab, name_, mat, z_title in (
            (t1, "token_norm", norms, "‖h‖"),
            (t2, "token_carrier", share, "carrier share"),
        ):
            with tab:
                shown = mat.T[first:]
                logged = log_scale and name_ == "token_norm"
                z = np.log10(np.maximum(shown, 1e-12)) if logged else shown
                bar: dict = {"title": {"text": z_title}}
                if logged:  # ticks at powers of ten, labelled with the value itself
                    lo, hi = math.floor(float(z.min())), math.ceil(float(z.max()))
                    ticks = list(range(lo, hi + 1))
                    bar |= {"tickvals": ticks, "ticktext": [f"{10.0**t:g}" for t in ticks]}
                fig = go.Figure(
                    go.Heatmap(z=z, x=list(range(n_layers)), y=labels[first:], colorscale="Viridis", colorbar=bar,
                               customdata=shown, hovertemplate="%{y} · layer %{x}: %{customdata:.4g}<extra></extra>")
                )  # fmt: skip
                scale = " (log colour scale)" if logged else ""
                plotting.apply_theme(
                    fig, f"{z_title} per token and layer (resid_post){scale}", height=max(360, 22 * n_tok + 140)
                )
                fig.update_xaxes(title_text="layer (resid_post)")
                fig.update_yaxes(autorange="reversed", dtick=1)
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
                z=cosm.tolist(),
                x=list(range(n_layers)),
                y=list(range(n_layers)),
                colorscale="Viridis",
                zmin=-1,
                zmax=1,
                colorbar={"title": {"text": "mean cos"}},
            )
        )
        # a row per layer, tall enough that one label a layer does not overlap the next
        plotting.apply_theme(
            fig, "Mean cos(h_l, h_m) over this prompt's tokens", width=560, height=max(480, 16 * n_layers + 190)
        )
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
        every = max(1, round(n_layers / 6))  # a layer label every few layers, and at the last: not 30 piled up
        marked = {layer for layer in range(n_layers) if layer % every == 0} | {n_layers - 1}
        for k, (i, lab) in enumerate((i, lab) for i, lab in enumerate(labels) if lab in show):
            fig.add_trace(
                go.Scatter(
                    x=pcs[:, i, 0],
                    y=pcs[:, i, 1],
                    mode="lines+markers+text",
                    name=lab,
                    text=[str(layer) if (layer in marked and k == 0) else "" for layer in range(n_layers)],
                    textposition="top center",
                    hovertemplate=lab + "<br>layer %{pointNumber}<extra></extra>",
                    marker={"size": [9 if layer in (0, n_layers - 1) else 5 for layer in range(n_layers)]},
                    line={"color": plotting.OKABE_ITO[k % len(plotting.OKABE_ITO)]},
                )
            )
        plotting.apply_theme(
            fig, "Token trajectories across layers (PCA of all tokens × layers)<br><sup>large markers: first and "
            f"last layer; numbers: layers (every {every}) on the first token's path; hover for any point</sup>",
            height=520,
        )  # fmt: skip
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
            st.caption(
                "One row per layer (every layer), one column per input token: the most likely next token when "
                "that layer's residual goes through the final norm and the unembedding. Whitespace is shown as ␣ "
                "(space), ↵ (newline), ⇥ (tab), any other invisible character as its code point (⟨U+00A0⟩: a no-break "
                "space); ∅ is a token that decodes to nothing (a byte piece)."
            )
            st.dataframe(
                [
                    {"layer": layer_cols[layer]} | {lab: visible_token(top[layer][i]) for i, lab in enumerate(labels)}
                    for layer in range(n_layers)
                ],
                hide_index=True,
                height=min(36 * (n_layers + 1) + 4, 1100),
                key="lens_prompt_table",
            )
