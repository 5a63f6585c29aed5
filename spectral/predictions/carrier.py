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
        energy = "carrier_energy_nosink" if sp.exclude_massive else "carrier_energy"
        rho = ctx.stat("trained", "resid_post", energy, mid)
        drift = ctx.stat("trained", "resid_post", "carrier_drift", mid)
        note = f"middle layers {mid[0]}–{mid[-1]}"
        if sp.exclude_massive:
            note += ", massive-activation tokens left out"
        out = [
            Test.against(f"{energy} (middle layers)", rho, n, sp.carrier_margin, note, upper=1.0)
            for n in ctx.nulls("resid_post", energy, mid)
        ]
        out += [
            Test.against("carrier_drift (middle layers)", drift, n, sp.drift_margin, note, upper=1.0)
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
        "Each step may cost at most the margin (a share robust_margin of ρ itself) beyond its null (paired "
        "jackknife on the same windows); the margin is negative: this is a test that nothing important is lost. "
        "n/a unless prediction 2 is supported: without a carrier there is nothing to keep (a model with no "
        "carrier loses nothing and would pass)."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        p2 = CarrierExists().verdict(ctx)
        if p2.outcome != "supported":
            return f"prediction 2 is {p2.outcome} by its interval: no carrier established, nothing to keep"
        return None

    def tests(self, ctx: Context) -> list[Test]:
        mid, k = ctx.mid, ctx.analysis.rogue_dims(int(ctx.arch["d_model"]))
        rho = ctx.stat("trained", "resid_post", "carrier_energy", mid)
        margin = -ctx.spec.robust_margin * rho.value
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
            note = f"ρ {rho.value:.3f} over the middle layers, margin −{ctx.spec.robust_margin:g} ρ"
            out.append(
                Test.against(
                    f"{metric} (middle layers)",
                    keep,
                    Null(Interval.exact(0.0), null),
                    margin,
                    note,
                    upper=1 - rho.value,
                )
            )
        return out


class ModulationContent(Prediction):
    key = "4 modulation carries content"
    statistic = "out_kl_toppc_minus_carrier"
    needs = ("out_kl_toppc_minus_carrier", "out_kl_random_minus_carrier")
    explanation = (
        "The content rides on the modulation, not on the carrier, read on the model's own output: at the middle "
        "layers, mean-ablating the carrier (its amplitude set to its calibration mean, the layers after the site "
        "run on the edited stream) changes the next-token distribution (KL to the clean output, nats per token) "
        "less than mean-ablating the top centred principal direction by the margin, and not more than mean-"
        "ablating a random direction does by more than the margin (paired per window; the random directions are "
        "resampled with the windows). The largest reachable effect is the top-PC edit's own KL (the carrier's "
        "cannot go below 0). The logit-lens accuracy version is reported, not decided on: its middle-layer "
        "accuracy is near zero in small LLMs."
    )

    def not_applicable(self, ctx: Context) -> str | None:
        return None if ctx.causal_lm else "no trained causal LM head in the checkpoint: no output to read"

    def tests(self, ctx: Context) -> list[Test]:
        margin = ctx.spec.modulation_kl_margin
        kc = ctx.stat("trained", "resid_post", "out_kl_ablate_carrier_mid")
        kt = ctx.stat("trained", "resid_post", "out_kl_ablate_toppc_mid")
        kr = ctx.stat("trained", "resid_post", "out_kl_ablate_random_mid")
        vs_top = ctx.stat("trained", "resid_post", "out_kl_toppc_minus_carrier")
        vs_rnd = ctx.stat("trained", "resid_post", "out_kl_random_minus_carrier")
        rank = ctx.stat("trained", "resid_post", "out_kl_carrier_rank_random")
        rows = ctx.table.series("trained", "resid_post", "out_kl_ablate_carrier")
        layers = sorted({r.layer for r in rows if r.layer is not None})
        lens = [ctx.stat("trained", "resid_post", f"lens_acc_ablate_{n}", ctx.mid).value for n in ("carrier", "toppc")]
        note = (
            f"output KL with the carrier / top PC / a random direction mean-ablated: {kc.value:.4g} / {kt.value:.4g} "
            f"/ {kr.value:.4g} nats at layers {', '.join(str(x) for x in layers)}; share of random directions "
            f"changing the output less than the carrier: {rank.value:.2f}; logit-lens accuracy (reported, not "
            f"decided on) carrier / top PC ablated: {lens[0]:.3f} / {lens[1]:.3f}"
        )
        return [
            Test.paired(
                "out_kl_toppc_minus_carrier (KL(top PC ablated) − KL(carrier ablated))",
                kc,
                vs_top,
                Null(kt, "the top centred principal direction mean-ablated (paired)"),
                margin,
                note,
                power=kt.value,
            ),
            Test.paired(
                "out_kl_random_minus_carrier (KL(random ablated) − KL(carrier ablated))",
                kc,
                vs_rnd,
                Null(kr, "random directions mean-ablated (paired, directions resampled)"),
                -margin,
                power=kr.value,
            ),
        ]
