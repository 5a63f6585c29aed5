"""Predictions about channels: 6 (attention selects), 7 (the MLP mixes) and 8 (the dark-band sink)."""

from __future__ import annotations

import numpy as np

from spectral.predictions.base import Context, Prediction, Test
from spectral.predictions.decision import Interval, Null, effect_against


def isotropic_offdiag(d: int, K: int) -> float:
    """Off-diagonal band-transfer share of an isotropic random map: 1 − Σ_j (d_j/d)² over K bands."""
    sizes = np.array([len(a) for a in np.array_split(np.arange(d), K)], dtype=float)
    return float(1 - ((sizes / d) ** 2).sum())


class AttentionSelects(Prediction):
    key = "6 attention selects channels"
    statistic = "head_eff_rank_frac"
    needs = ("head_eff_rank_frac",)
    explanation = (
        "Each head writes into few directions: the effective rank of a head's output covariance, as a "
        "share of d_head (mean over layers), is lower than in the random-weight ensemble R by the margin. "
        "The band concentration of the heads' OV / QK maps, the issue's stronger statistic, is not "
        "measured yet."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        if not ctx.random_members:
            return "needs the random-weight ensemble R (control random_init)"
        return None

    def tests(self, ctx: Context) -> list[Test]:
        value = ctx.stat("trained", "attn_out", "head_eff_rank_frac")
        null = ctx.null_r("attn_out", "head_eff_rank_frac")
        if not null.interval.finite:
            return []
        e = effect_against(value, null)  # trained − R; the effect is R − trained: positive = more selective
        effect = Interval(-e.value, -e.high, -e.low)
        return [Test.paired("head_eff_rank_frac (R − trained)", value, effect, null, ctx.spec.head_margin)]


class MlpMixes(Prediction):
    key = "7 the MLP mixes"
    statistic = "band_offdiag"
    needs = ("band_offdiag_k{K}",)
    explanation = (
        "The MLP's writes move energy across W_U bands: the off-diagonal share of its band-to-band "
        "transfer (least-squares linear map of the sub-layer, mean over layers) exceeds the chance level "
        "of an isotropic map, 1 − Σ_j (d_j/d)², and exceeds attention's, each by the margin. The "
        "Jacobian (JVP) transfer of the issue is not measured yet."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        return None if ctx.arch.get("has_unembedding") else "no trained unembedding: no W_U bands"

    def tests(self, ctx: Context) -> list[Test]:
        K = ctx.analysis.bands[0]
        m = f"band_offdiag_k{K}"
        mlp, att = ctx.stat("trained", "mlp_out", m), ctx.stat("trained", "attn_out", m)
        chance = isotropic_offdiag(int(ctx.arch["d_model"]), K)
        margin = ctx.spec.mixing_margin
        return [
            Test.against(f"{m} mlp_out", mlp, Null(Interval.exact(chance), "isotropic map (chance level)"), margin),
            Test.against(f"{m} mlp_out − attn_out", mlp, Null(att, "attention's transfer"), margin),
        ]


class DarkBandSink(Prediction):
    key = "8 dark-band sink"
    statistic = "attn_tail_partial_spearman"
    needs = ("attn_tail_partial_spearman",)
    explanation = (
        "Tokens that receive much attention carry much tail-band ('dark') energy: the Spearman correlation "
        "of attention received with tail-band energy, position 0 included (sinks live there) and partial on "
        "position (a position trend in both is not a sink), mean over layers, bootstrap over windows, "
        "exceeds the random-weight ensemble's by at least the configured minimum effect."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        if not ctx.arch.get("has_unembedding"):
            return "no trained unembedding: no tail band"
        if not ctx.random_members:
            return "needs the random-weight ensemble R (control random_init)"
        return None

    def tests(self, ctx: Context) -> list[Test]:
        m = "attn_tail_partial_spearman"
        value = ctx.stat("trained", "resid_pre", m)
        null = ctx.null_r("resid_pre", m)
        if not null.interval.finite:
            null = Null(Interval.exact(0.0), "no correlation (R has no attention measurement)")
        plain = ctx.stat("trained", "resid_pre", "attn_tail_spearman_pos0")
        note = f"plain Spearman with position 0: {plain.value:.3f}" if plain.finite else ""
        return [Test.against(f"{m} (mean over layers)", value, null, ctx.spec.sink_margin, note)]
