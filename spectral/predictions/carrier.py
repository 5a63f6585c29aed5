"""Predictions about the carrier itself: 2 (it exists and persists), 3 (it is not rogue dimensions or
sinks) and 4 (the modulation carries the content)."""

from __future__ import annotations

from spectral.predictions.base import Context, Prediction, Test
from spectral.predictions.decision import Interval, Null
from spectral.predictions.growth import _no_null


class CarrierExists(Prediction):
    key = "2 a carrier exists and persists"
    statistic = "carrier_energy"
    needs = ("carrier_energy", "carrier_drift")
    explanation = (
        "Over the middle layers the carrier energy ratio ρ_l = Σ⟨h, μ̂_l⟩²/Σ‖h‖² exceeds that of the "
        "random-weight ensemble R and of the weight-permuted twin W by the margin, and the carrier "
        "direction persists: the drift cos(μ̂_l, μ̂_(l+1)) exceeds theirs."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        return _no_null(ctx)

    def tests(self, ctx: Context) -> list[Test]:
        mid, sp = ctx.mid, ctx.spec
        rho = ctx.stat("trained", "resid_post", "carrier_energy", mid)
        drift = ctx.stat("trained", "resid_post", "carrier_drift", mid)
        note = f"middle layers {mid[0]}–{mid[-1]}"
        out = [
            Test.against("carrier_energy (middle layers)", rho, n, sp.carrier_margin, note)
            for n in ctx.nulls("resid_post", "carrier_energy", mid)
        ]
        out += [
            Test.against("carrier_drift (middle layers)", drift, n, sp.drift_margin, note)
            for n in ctx.nulls("resid_post", "carrier_drift", mid)
        ]
        return out


class NotRogue(Prediction):
    key = "3 carrier is not rogue dimensions or sinks"
    statistic = "carrier_keep_norogue"
    needs = ("carrier_keep_zscored", "carrier_keep_norogue{k}", "carrier_keep_nosink")
    explanation = (
        "The carrier energy survives the usual suspects: z-scoring every dimension, dropping the top-k "
        "rogue dimensions (compared with dropping k random dimensions: the null) and dropping sink tokens "
        "(found with position 0 included, against ρ over every token with position 0). "
        "Each step may cost at most the margin of ρ beyond its null (paired jackknife on the same windows); "
        "the margin is negative: this is a test that nothing important is lost."
    )

    def tests(self, ctx: Context) -> list[Test]:
        mid, k = ctx.mid, ctx.analysis.rogue_dims(int(ctx.arch["d_model"]))
        rho = ctx.stat("trained", "resid_post", "carrier_energy", mid)
        margin = -ctx.spec.robust_margin
        out = []
        for metric, null in (
            (f"carrier_keep_norogue{k}", f"the ρ lost to dropping {k} random dimensions (paired)"),
            ("carrier_keep_zscored", "ρ before z-scoring (paired)"),
            (
                "carrier_keep_nosink",
                "ρ over every token, position 0 included, before the sinks found among them are dropped (paired)",
            ),
        ):
            keep = ctx.stat("trained", "resid_post", metric, mid)  # already the paired difference from its null
            note = f"ρ {rho.value:.3f} over the middle layers"
            out.append(Test.against(f"{metric} (middle layers)", keep, Null(Interval.exact(0.0), null), margin, note))
        return out


class ModulationContent(Prediction):
    key = "4 modulation carries content"
    statistic = "lens_keep_carrier_vs_toppc"
    needs = ("lens_keep_carrier_vs_toppc", "lens_keep_carrier_vs_random")
    explanation = (
        "The content rides on the modulation, not on the carrier: over the middle layers the logit lens's "
        "next-token accuracy with the carrier mean-ablated (its amplitude set to its calibration mean) exceeds "
        "the accuracy with the top principal direction mean-ablated by the margin, and is not worse than "
        "with a random direction mean-ablated by more than the margin (paired on the same positions, "
        "bootstrap over windows)."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        return None if ctx.causal_lm else "no trained causal LM head in the checkpoint: no logit lens"

    def tests(self, ctx: Context) -> list[Test]:
        mid, margin = ctx.mid, ctx.spec.modulation_margin
        acc = ctx.stat("trained", "resid_post", "lens_acc_ablate_carrier", mid)
        top = ctx.stat("trained", "resid_post", "lens_acc_ablate_toppc", mid)
        rnd = ctx.stat("trained", "resid_post", "lens_acc_ablate_random", mid)
        vs_top = ctx.stat("trained", "resid_post", "lens_keep_carrier_vs_toppc", mid)
        vs_rnd = ctx.stat("trained", "resid_post", "lens_keep_carrier_vs_random", mid)
        note = (
            f"lens accuracy with the carrier / top PC / a random direction ablated: {acc.value:.3f} / "
            f"{top.value:.3f} / {rnd.value:.3f}"
        )
        return [
            Test.paired(
                "lens accuracy kept: carrier vs top PC ablated",
                acc,
                vs_top,
                Null(top, "top principal direction ablated"),
                margin,
                note,
            ),
            Test.paired(
                "lens accuracy kept: carrier vs random ablated",
                acc,
                vs_rnd,
                Null(rnd, "random direction ablated"),
                -margin,
                note,
            ),
        ]
