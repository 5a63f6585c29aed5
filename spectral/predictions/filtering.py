"""Predictions about filtering: 9 (low-pass along the sequence) and 10 (resonance with the unembedding)."""

from __future__ import annotations

from spectral.predictions.base import Context, Prediction, Test
from spectral.predictions.decision import Interval, Null


class LowPass(Prediction):
    key = "9 low-pass along the sequence"
    statistic = "seq_ac_lowfreq_share"
    needs = ("seq_ac_lowfreq_share", "seq_ac_lowfreq_null", "seq_ac_lowfreq_slope")
    explanation = (
        "Along the positions of a window the mean-removed residual is smooth: the Parseval-weighted "
        "low-frequency share seq_ac_lowfreq_share over the middle layers exceeds its exact permutation null "
        "(the same share for positions in random order) by the margin, and it rises with depth more than "
        "in the random-weight ensemble R (slope over layers). Control S (shuffled tokens) is reported "
        "beside it: it tells whether the smoothness comes from the text or from the model."
    )

    def tests(self, ctx: Context) -> list[Test]:
        mid = ctx.mid
        name = "seq_ac_lowfreq_share_nosink" if ctx.spec.exclude_massive else "seq_ac_lowfreq_share"
        share = ctx.stat("trained", "resid_post", name, mid)
        null = ctx.stat("trained", "resid_post", "seq_ac_lowfreq_null", mid)
        s = ctx.stat("shuffled", "resid_post", name, mid)
        note = f"shuffled tokens (S): {s.value:.4f}" if s.finite else "control S not run"
        if ctx.spec.exclude_massive:
            note += "; massive-activation tokens set to their window's mean"
        out = [
            Test.against(
                f"{name} (middle layers)",
                share,
                Null(Interval.exact(null.value), "permutation null (exact)"),
                ctx.spec.lowpass_margin,
                note,
                upper=1.0,
            )
        ]
        slope = ctx.stat("trained", "resid_post", "seq_ac_lowfreq_slope")
        if ctx.random_members:
            out.append(
                Test.against("seq_ac_lowfreq_slope", slope, ctx.null_r("resid_post", "seq_ac_lowfreq_slope"), 0.0)
            )
        return out


class Resonance(Prediction):
    key = "10 resonance"
    statistic = "cband_margin_abs_top_share"
    needs = (
        "cband_margin_abs_top{n}_share_k{K}",
        "cband_margin_abs_top{n}_share_k{K}_excess",
        "cband_margin_abs_top{n}_share_k{K}_excess_slope",
    )
    explanation = (
        "Next-token prediction filters for the channel that resonates with the unembedding. Per token, the top-1 "
        "vs top-2 logit margin splits over the K centred W_U bands (the mean unembedding removed: it shifts every "
        "logit equally); the statistic is the share of the token's |margin contribution| held by the top n bands, "
        "a bounded per-token share in [0, 1] (not a ratio of signed sums), mean over the lens tokens. At the final "
        "site it must exceed the same share under the null that keeps W_U and turns h by a random rotation (its "
        "own top-2 found again) and the same share in the random-weight ensemble R (a random model whose input "
        "embeddings are its unembedding already aligns h with W_U) by the margin, paired bootstrap over windows; "
        "per layer, the excess over the rotated null rises with depth: its least-squares slope over layers "
        "exceeds the slope margin (every layer resampled "
        "with the same windows). The signed-sum share (cband_margin_top{n}_share_k{K}) is reported beside it."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        return None if ctx.causal_lm else "no trained causal LM head in the checkpoint"

    def tests(self, ctx: Context) -> list[Test]:
        n, K = ctx.spec.resonance_top_bands, ctx.analysis.bands[0]
        m = f"cband_margin_abs_top{n}_share_k{K}"
        share = ctx.stat("trained", "final", m)
        rot = ctx.stat("trained", "final", f"{m}_rotnull")
        null = Null(rot, "h rotated at random, same W_U (paired)")
        excess = ctx.stat("trained", "final", f"{m}_excess")
        if not share.finite:  # no final margin: the lens did not run (the slope alone does not decide)
            return []
        signed = ctx.stat("trained", "final", f"cband_margin_top{n}_share_k{K}")
        note = f"signed-sum share (reported): {signed.value:.3f}" if signed.finite else ""
        out = [Test.paired(m, share, excess, null, ctx.spec.resonance_margin, note, power=1 - rot.value)]
        if ctx.random_members:  # a random model's own W_U alignment (tied embeddings) is not learned resonance
            r = ctx.null_r("final", m)
            if r.interval.finite:
                out.append(Test.against(m, share, r, ctx.spec.resonance_margin, upper=1.0))
        slope = ctx.stat("trained", "resid_post", f"{m}_excess_slope")
        if slope.finite:
            mid = ctx.mid
            first = ctx.stat("trained", f"resid_post.{mid[0]}", f"{m}_excess")
            last = ctx.stat("trained", f"resid_post.{mid[-1]}", f"{m}_excess")
            note = f"excess share at layers {mid[0]} / {mid[-1]}: {first.value:+.3f} / {last.value:+.3f}"
            L = int(ctx.arch["n_layers"])
            out.append(
                Test.against(
                    f"{m}_excess_slope (per layer)",
                    slope,
                    Null(Interval.exact(0.0), "no rise: the excess over the per-layer rotated-h null is flat"),
                    ctx.spec.resonance_slope_margin,
                    note,
                    upper=2.0 / max(L - 1, 1),  # an excess in [−1, 1] can rise by at most 2 over the layers
                )
            )
        return out
