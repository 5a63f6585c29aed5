"""The eleven predictions of the carrier-signal hypothesis as objects (ARCHITECTURE.md section 1).

``evaluate`` is a loop over :data:`PREDICTIONS`: each reads the metrics it needs, says when it cannot
apply, compares its statistic with its null and gives supported / contradicted / inconclusive / n/a;
then Holm's correction runs across the run's predictions (spectral.predictions.decision).
"""

from __future__ import annotations

from spectral.analysis.metrics import MetricTable
from spectral.config import AnalysisSpec, VerdictSpec
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


__all__ = [
    "PREDICTIONS",
    "VERDICT_COLUMNS",
    "Context",
    "Prediction",
    "Verdict",
    "evaluate",
    "middle_layers",
    "read_verdicts",
    "verdicts_csv",
]
