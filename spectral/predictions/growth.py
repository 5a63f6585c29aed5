"""Predictions about norm growth: 1 (growth is learned and steady), 5 (direction kept while the norm
grows) and 11 (norm growth is carrier growth)."""

from __future__ import annotations

import math

from spectral.predictions.base import Context, Prediction, Test
from spectral.predictions.decision import Interval, Null

POST_LN = "post-LN: every block ends in a LayerNorm, so the residual norm is reset after each block"


def _no_null(ctx: Context, what: str = "R or W") -> str | None:
    if not ctx.random_members and not ctx.has_w:
        return f"needs the null conditions {what} (controls random_init / permuted_weights), none was run"
    return None


class NormGrowth(Prediction):
    key = "1 norm growth is learned"
    statistic = "growth_rate"
    needs = ("growth_rate", "growth_r2", "growth_max_layer_share")
    explanation = (
        "The per-layer growth factor g of the mean residual norm (log-linear fit over the layers) exceeds "
        "that of the random-weight ensemble R by more than the margin, and that of R rescaled to the trained "
        "parameters' norms (the learned scale without the learned structure) too: both are deciding nulls; and "
        "the growth is steady: the fit's R² is high and no single layer holds most of the log growth. The "
        "weight-permuted ensemble W keeps every matrix's learned scale and its entries, so it is reported beside "
        "them, not decided on."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        if ctx.post_ln:
            return POST_LN
        if not ctx.random_members:
            return "needs the random-weight ensemble R (control random_init), the deciding null of growth: none was run"
        return None

    def tests(self, ctx: Context) -> list[Test]:
        g = ctx.stat("trained", "resid_post", "growth_rate")
        r2 = ctx.stat("trained", "resid_post", "growth_r2").value
        share = ctx.stat("trained", "resid_post", "growth_max_layer_share").value
        sp = ctx.spec
        steady = r2 >= sp.growth_r2_min and share <= sp.growth_layer_share_max
        note = (
            f"fit R² {r2:.3f} (min {sp.growth_r2_min}), largest layer share {share:.3f} "
            f"(max {sp.growth_layer_share_max})"
        )
        if ctx.has_w:
            wn = ctx.null_w("resid_post", "growth_rate")
            w = wn.interval
            note += f"; {wn.name} (reported, keeps the learned scale): g {w.value:.4f} [{w.low:.4f}, {w.high:.4f}]"
        out = [Test.against("growth_rate", g, ctx.null_r("resid_post", "growth_rate"), sp.growth_margin, note)]
        if ctx.scaled_members:
            out.append(Test.against("growth_rate", g, ctx.null_rs("resid_post", "growth_rate"), sp.growth_margin))
        if math.isfinite(r2) and math.isfinite(share) and not steady:
            # not steady: one jump or a fall and a jump is not learned growth (a point criterion, stated)
            unsteady = Interval(-1.0, -1.0, -1.0)
            out.append(
                Test.paired("growth_steadiness", g, unsteady, Null(Interval.exact(0.0), "steadiness"), 0.0, note)
            )
        return out


class DirectionKept(Prediction):
    key = "5 direction kept while norm grows"
    statistic = "update_cos_stream"
    needs = ("update_cos_stream", "norm_ratio")
    explanation = (
        "Each block's update Δ_l = h_l − h_(l−1) points along the stream it is added to: the mean of "
        "cos(Δ_l, h_(l−1)) over the middle layers exceeds its null, a norm-matched random direction "
        "(mean 0, s.d. 1/√d per token), and the same cosine in the random-weight ensemble R, each by the margin "
        "δ = alignment_margin_sqrt_d / √d (it scales with the null's spread); and the norm grows there "
        "(norm_ratio above 1)."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        return POST_LN if ctx.post_ln else None

    def tests(self, ctx: Context) -> list[Test]:
        mid = ctx.mid
        cos = ctx.stat("trained", "resid_post", "update_cos_stream", mid)
        d = int(ctx.arch["d_model"])
        null = Null(Interval.exact(0.0), f"random direction (E cos = 0, s.d. {1 / math.sqrt(d):.3f} per token)")
        car = ctx.stat("trained", "resid_post", "update_cos_carrier", mid)
        ratio = ctx.stat("trained", "resid_post", "norm_ratio", mid)
        delta = ctx.spec.alignment_margin_sqrt_d / math.sqrt(d)
        note = f"cos(Δ, carrier) {car.value:.3f}; middle layers {mid[0]}–{mid[-1]}; δ = {delta:.4f} (1/√d scaled)"
        out = [Test.against("update_cos_stream (middle layers)", cos, null, delta, note, upper=1.0)]
        if ctx.random_members:
            r = ctx.null_r("resid_post", "update_cos_stream", mid)
            if r.interval.finite:
                out.append(Test.against("update_cos_stream (middle layers)", cos, r, delta, note, upper=1.0))
        out.append(
            Test.against("norm_ratio (middle layers)", ratio, Null(Interval.exact(1.0), "no growth (ratio 1)"), 0.0)
        )
        return out


class CarrierGrowth(Prediction):
    key = "11 norm growth is carrier growth"
    statistic = "carrier_minus_modulation_growth"
    needs = ("carrier_minus_modulation_growth",)
    explanation = (
        "The RMS carrier amplitude ⟨h, ĉ_l⟩ grows faster per layer than the RMS modulation h − ⟨h, ĉ_l⟩ĉ_l "
        "(the difference of their fitted growth factors, paired bootstrap over windows), beyond 0 and "
        "beyond the same difference in the random-weight ensemble R."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        return POST_LN if ctx.post_ln else None

    def tests(self, ctx: Context) -> list[Test]:
        m = "carrier_minus_modulation_growth"
        diff = ctx.stat("trained", "resid_post", m)
        gc = ctx.stat("trained", "resid_post", "carrier_growth_rate").value
        gm = ctx.stat("trained", "resid_post", "modulation_growth_rate").value
        note = f"carrier g {gc:.4f}, modulation g {gm:.4f}"
        margin = ctx.spec.carrier_growth_margin
        out = [Test.against(m, diff, Null(Interval.exact(0.0), "equal growth (0)"), margin, note)]
        if ctx.random_members:
            out.append(Test.against(m, diff, ctx.null_r("resid_post", m), margin, note))
        return out
