"""The eleven predictions of the carrier-signal hypothesis as objects (ARCHITECTURE.md section 1).

``evaluate`` is a loop over :data:`PREDICTIONS`: each reads the metrics it needs, says when it cannot
apply, compares its statistic with its null and gives supported / contradicted / inconclusive / n/a;
then Holm's correction runs across the run's predictions (spectral.predictions.decision).
"""

from __future__ import annotations

from spectral.analysis.metrics import MetricTable
from spectral.config import ROGUE_SENSITIVITY, AnalysisSpec, VerdictSpec
from spectral.predictions.base import Context, Prediction, middle_layers
from spectral.predictions.carrier import CarrierExists, ModulationContent, NotRogue
from spectral.predictions.channels import AttentionSelects, DarkBandSink, MlpMixes
from spectral.predictions.decision import VERDICT_COLUMNS, Verdict, apply_holm, read_verdicts, verdicts_csv
from spectral.predictions.filtering import LowPass, Resonance
from spectral.predictions.growth import CarrierGrowth, DirectionKept, NormGrowth

PREDICTIONS: tuple[Prediction, ...] = (
    NormGrowth(),
    CarrierExists(),
    NotRogue(),
    ModulationContent(),
    DirectionKept(),
    AttentionSelects(),
    MlpMixes(),
    DarkBandSink(),
    LowPass(),
    Resonance(),
    CarrierGrowth(),
)


def evaluate(table: MetricTable, arch: dict, spec: VerdictSpec, analysis: AnalysisSpec) -> list[Verdict]:
    """The eleven verdicts of one run (Holm-adjusted across them)."""
    ctx = Context(table, arch, spec, analysis)
    return apply_holm([p.verdict(ctx) for p in PREDICTIONS], spec.alpha)


# The battery's revision, written into every manifest ("battery"): raised whenever a prediction's statistic or
# decision changes, with the predictions it touched, so readers of older runs (the research note, compare) know
# which outcomes an older run cannot speak for. 2: P6 from head OV/QK band concentration, P7 from JVP transfer;
# 3: P3's sink step with position 0 included, P10's per-layer rise; 4: the decision rule with power (a test that
# cannot reach δ says "no power", contradicted is Holm-corrected), P1 decided against R only, P3 n/a without a
# carrier, P4 on the output's KL, P5's δ scaled by 1/√d and R as a second null, P7 against R's MLPs, P8 from the
# sinks' paired tail-band share, P10 from a bounded per-token share: every outcome can change; 5: P1 also against
# R rescaled to the trained norms, W an ensemble of permutations (P1's note, P2's W sub-tests), and a sub-test without
# power reported, not decided on (any prediction with several tests).
BATTERY_REVISION = 5
BATTERY_CHANGES: dict[int, tuple[str, ...]] = {
    2: ("6", "7"),
    3: ("3", "10"),
    4: tuple(str(i) for i in range(1, 12)),
    5: tuple(str(i) for i in range(1, 12)),
}


def stale_predictions(revision: int) -> set[str]:
    """The prediction numbers (as in verdicts.csv's first word) a run of battery ``revision`` is stale for."""
    return {p for r, ps in BATTERY_CHANGES.items() if r > revision for p in ps}


SENSITIVITY_VARIANTS = (
    ("middle layers 12.5–87.5 %", {"middle_from": 0.125, "middle_to": 0.875}, {}),
    ("middle layers 37.5–62.5 %", {"middle_from": 0.375, "middle_to": 0.625}, {}),
    ("K = 20 bands", {}, {"bands": (20, 10)}),
)


def sensitivity_csv(table: MetricTable, arch: dict, spec: VerdictSpec, analysis: AnalysisSpec) -> str:
    """The outcomes under each robustness variant (middle-layer choice, K = 20, the rogue share ×
    :data:`~spectral.config.ROGUE_SENSITIVITY`, massive-activation tokens left out of P2's ρ and P9's share)
    beside the run's own, and whether any flips (a variant whose
    metrics the run lacks is left out; one giving n/a is not counted as a flip)."""
    import csv
    import dataclasses
    import io

    base = evaluate(table, arch, spec, analysis)
    variants = []
    d = int(arch.get("d_model") or 0)
    share = analysis.rogue_share * ROGUE_SENSITIVITY
    k_alt = analysis.rogue_dims(d, ROGUE_SENSITIVITY)
    rogue: tuple[str, dict, dict] = (f"rogue share {share:g} of d (k = {k_alt})", {}, {"rogue_share": share})
    massive = ("massive-activation tokens left out (P2, P9)", {"exclude_massive": True}, {})
    for name, vs, an in (*SENSITIVITY_VARIANTS, rogue, massive):
        if vs.get("exclude_massive") and table.get("trained", "resid_post", "seq_ac_lowfreq_share_nosink_mid") is None:
            continue  # a run from before the variant's metrics
        bands = an.get("bands")
        if bands and not any(r.metric.startswith(f"band_offdiag_k{bands[0]}") for r in table.rows):
            continue
        if "rogue_share" in an and (
            k_alt == analysis.rogue_dims(d) or not any(r.metric == f"carrier_keep_norogue{k_alt}" for r in table.rows)
        ):
            continue
        got = evaluate(table, arch, dataclasses.replace(spec, **vs), dataclasses.replace(analysis, **an))
        variants.append((name, got))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["prediction", "run", *(n for n, _ in variants), "flips"])
    for i, v in enumerate(base):
        others = [got[i].outcome for _, got in variants]
        flips = any(o != v.outcome and "n/a" not in (o, v.outcome) for o in others)
        w.writerow([v.prediction, v.outcome, *others, "yes" if flips else "no"])
    return buf.getvalue()


__all__ = [
    "BATTERY_REVISION",
    "PREDICTIONS",
    "VERDICT_COLUMNS",
    "Context",
    "Prediction",
    "Verdict",
    "evaluate",
    "middle_layers",
    "read_verdicts",
    "sensitivity_csv",
    "stale_predictions",
    "verdicts_csv",
]
