"""Predictions about channels: 6 (attention selects), 7 (the MLP mixes) and 8 (the dark-band sink)."""

from __future__ import annotations

import numpy as np

from spectral.predictions.base import Context, Prediction, Test
from spectral.predictions.decision import Interval, Null


def isotropic_offdiag(d: int, K: int) -> float:
    """Off-diagonal band-transfer share of an isotropic random map: 1 − Σ_j (d_j/d)² over K bands."""
    sizes = np.array([len(a) for a in np.array_split(np.arange(d), K)], dtype=float)
    return float(1 - ((sizes / d) ** 2).sum())


class AttentionSelects(Prediction):
    key = "6 attention selects channels"
    statistic = "head_ov_conc"
    needs = ("head_ov_conc_k{K}", "head_ov_conc_k{K}_minus_pcband", "head_qk_conc_k{K}")
    explanation = (
        "Heads read and write few W_U bands: for each head's OV map diag(γ) W_V W_O (and its QK map "
        "diag(γ) W_Q (diag(γ) W_K)ᵀ), the share of the map's energy in its top-n centred W_U bands (read and "
        "write sides averaged), mean over every head of the model, bootstrap over heads. It must exceed the "
        "random-weight ensemble R's heads (OV and QK), and the OV concentration must exceed the same "
        "statistic in bands of the data's own principal directions at the head's input (paired per head: "
        "heads that merely live where the data live are not selecting W_U channels), each by the margin. "
        "Whether the bands a head reads vary with the input is not tested."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        if not ctx.arch.get("has_unembedding"):
            return "no trained unembedding: no W_U bands"
        if not ctx.random_members:
            return "needs the random-weight ensemble R (control random_init)"
        return None

    def tests(self, ctx: Context) -> list[Test]:
        K, margin = ctx.analysis.bands[0], ctx.spec.head_margin
        out = []
        for m in (f"head_ov_conc_k{K}", f"head_qk_conc_k{K}"):
            value, null = ctx.stat("trained", "attn_out", m), ctx.null_r("attn_out", m)
            if null.interval.finite:
                out.append(Test.against(m, value, null, margin, upper=1.0))
        ov = ctx.stat("trained", "attn_out", f"head_ov_conc_k{K}")
        diff = ctx.stat("trained", "attn_out", f"head_ov_conc_k{K}_minus_pcband")
        pc = ctx.stat("trained", "attn_out", f"head_ov_conc_k{K}_pcband")
        rank = ctx.stat("trained", "attn_out", "head_eff_rank_frac")
        note = f"head output effective rank / d_head: {rank.value:.3f}" if rank.finite else ""
        out.append(
            Test.paired(
                f"head_ov_conc_k{K} − data-PC bands", ov, diff,
                Null(pc, "bands of the data's principal directions (paired per head)"), margin, note,
                power=1 - pc.value,
            )
        )  # fmt: skip
        return out


class MlpMixes(Prediction):
    key = "7 the MLP mixes"
    statistic = "jvp_offdiag"
    needs = ("jvp_offdiag_k{K}",)
    explanation = (
        "The MLP's actual map moves energy across W_U bands: the off-diagonal share of its Jacobian band "
        "transfer (forward-mode JVPs at the tokens' own inputs, probes Gaussian inside each input band, output "
        "energy per band, mean over layers) exceeds the random-weight ensemble R's MLPs measured the same way "
        "(each seed at its own inputs and W_U bands), and exceeds attention's transfer on the same positions "
        "(paired), each by the margin; jackknife over position groups. The isotropic chance level 1 − Σ_j (d_j/d)² "
        "is the most-mixing map there is and a band-preserving map scores 0: both are reported, neither decides. "
        "The least-squares transfer (`band_offdiag`) is in the note."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        if not ctx.arch.get("has_unembedding"):
            return "no trained unembedding: no W_U bands"
        if ctx.post_ln:
            return "post-LN model: a sub-layer's map includes the next norm (JVP transfer measured on pre-LN only)"
        return None

    def tests(self, ctx: Context) -> list[Test]:
        K = ctx.analysis.bands[0]
        m = f"jvp_offdiag_k{K}"
        mlp = ctx.stat("trained", "mlp_out", m)
        diff = ctx.stat("trained", "mlp_out", f"{m}_minus_attn")
        att = ctx.stat("trained", "attn_out", m)
        chance = isotropic_offdiag(int(ctx.arch["d_model"]), K)
        margin = ctx.spec.mixing_margin
        lsq = ctx.stat("trained", "mlp_out", f"band_offdiag_k{K}")
        note = f"isotropic chance (reported) {chance:.3f}; band-preserving map 0"
        if lsq.finite:
            note += f"; least-squares transfer of the MLP: {lsq.value:.3f}"
        out = []
        if ctx.random_members:
            r = ctx.null_r("mlp_out", m)
            if r.interval.finite:
                out.append(Test.against(f"{m} mlp_out", mlp, r, margin, note, upper=1.0))
        out.append(
            Test.paired(
                f"{m} mlp_out − attn_out", mlp, diff, Null(att, "attention's JVP transfer (paired)"), margin,
                note if not out else "", power=1 - att.value,
            )
        )  # fmt: skip
        return out


class DarkBandSink(Prediction):
    key = "8 dark-band sink"
    statistic = "sink_tail_share_excess"
    needs = ("sink_tail_share_excess",)
    explanation = (
        "Sink tokens carry the dark signal (Cancedda 2024): in each window, the token that receives the most "
        "attention (position 0 among the candidates: sinks live there) carries a larger share of its energy in the "
        "tail W_U band than the window's other recorded tokens; the paired per-window difference, mean over "
        "windows and layers (bootstrap over windows), exceeds the random-weight ensemble R's by the margin. The "
        "partial Spearman of attention received with tail-band energy (partial on position) is reported beside it."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        if not ctx.arch.get("has_unembedding"):
            return "no trained unembedding: no tail band"
        if not ctx.random_members:
            return "needs the random-weight ensemble R (control random_init)"
        return None

    def tests(self, ctx: Context) -> list[Test]:
        m = "sink_tail_share_excess"
        value = ctx.stat("trained", "resid_pre", m)
        null = ctx.null_r("resid_pre", m)
        if not null.interval.finite:
            null = Null(Interval.exact(0.0), "no excess (R has no attention measurement)")
        ps = ctx.stat("trained", "resid_pre", "attn_tail_partial_spearman")
        note = f"partial Spearman (reported): {ps.value:.3f}" if ps.finite else ""
        return [Test.against(f"{m} (mean over layers)", value, null, ctx.spec.sink_tail_margin, note, upper=1.0)]
