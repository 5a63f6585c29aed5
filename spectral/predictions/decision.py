"""How a prediction is decided (ARCHITECTURE.md section 1, "Controls, nulls and decisions").

A prediction's **effect** is its statistic on the trained model minus its null. The null is one of:
an ensemble of random-weight twins (R, ``n`` seeds: the null interval is the prediction interval of a
new seed, mean ± t_{n-1}·sd·sqrt(1 + 1/n), so the between-seed spread is in it), one twin (W) with
its own interval, an in-run null measured on the same windows (paired: the effect's interval is the
interval of the paired difference, computed where the data are), or an exact analytic value.

Outcome, for margin δ (config): **supported** when the effect's interval lies above δ and the
one-sided p-value of "effect ≤ δ" survives Holm's correction across the run's predictions;
**contradicted** when the interval lies below δ (the effect is reliably absent or reversed) and the
one-sided p-value of "effect ≥ δ" survives Holm's correction too; **inconclusive** otherwise;
**n/a** with the reason when the model cannot answer. p-values come from the normal approximation
to the effect's interval (se = half-width / z).

**Power** (battery revision 4): a test carries the largest effect it can reach on this run (``power``:
the metric's range minus the null, or an in-run bound such as prediction 4's top-PC KL). Where that is
at most δ, or the interval is wider than the distance from δ to that bound (reachable − δ ≤ the interval's
width; revision 5, the half-width before), the test could never say supported: it reads **inconclusive**
with the reason "no power", never contradicted. A test without power against one null of a statistic that
another null tests with power is reported, not decided on (battery revision 5); a statistic tested only without
power keeps the prediction inconclusive.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import astuple, dataclass, replace

import numpy as np
from scipy import stats as sps

NAN = float("nan")
OUTCOMES = ("supported", "contradicted", "inconclusive", "n/a")
VERDICT_COLUMNS = (
    "prediction",
    "outcome",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "null",
    "null_ci_low",
    "null_ci_high",
    "effect",
    "effect_ci_low",
    "effect_ci_high",
    "margin",
    "p_value",
    "p_holm",
    "power",
    "note",
)


@dataclass(frozen=True)
class Interval:
    """A value with its interval (NaN bounds: unknown)."""

    value: float
    low: float = NAN
    high: float = NAN

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)

    @staticmethod
    def exact(value: float) -> Interval:
        return Interval(value, value, value)


@dataclass(frozen=True)
class Null:
    """A null value with its interval and what it is (for verdicts.csv and the report)."""

    interval: Interval
    name: str
    members: tuple[float, ...] = ()  # an ensemble's per-seed values


@dataclass(frozen=True)
class Verdict:
    """One line of verdicts.csv."""

    prediction: str
    outcome: str  # supported | contradicted | inconclusive | n/a
    statistic: str
    value: float
    ci_low: float
    ci_high: float
    null: float
    null_ci_low: float
    null_ci_high: float
    effect: float
    effect_ci_low: float
    effect_ci_high: float
    margin: float
    p_value: float  # one-sided p of the outcome's direction (supported: effect ≤ δ; else: effect ≥ δ)
    p_holm: float
    power: float  # the largest effect the deciding test could reach on this run (inf: unbounded)
    note: str

    @property
    def no_power(self) -> bool:
        """Inconclusive because the deciding test cannot reach δ on this run (its note opens with "no power")."""
        return self.outcome == "inconclusive" and self.note.startswith("no power")


def ensemble_null(values: list[float], level: float, name: str) -> Null:
    """The null of an ensemble of seeds: its mean, with the prediction interval of a new seed."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size == 0:
        return Null(Interval(NAN), name)
    m = float(v.mean())
    if v.size < 2:
        return Null(Interval(m), f"{name} (1 seed: between-seed spread unknown)", tuple(v.tolist()))
    t = float(sps.t.ppf(0.5 + level / 2, v.size - 1))
    hw = t * float(v.std(ddof=1)) * math.sqrt(1 + 1 / v.size)
    return Null(Interval(m, m - hw, m + hw), f"{name} ({v.size} seeds)", tuple(v.tolist()))


def effect_against(value: Interval, null: Null) -> Interval:
    """trained − null for independent samples: half-widths add in quadrature (an unknown null
    interval counts as exact; an unknown trained interval makes the effect's unknown)."""
    e = value.value - null.interval.value
    hw_t = value.half_width
    hw_n = null.interval.half_width if math.isfinite(null.interval.half_width) else 0.0
    if not math.isfinite(hw_t):
        return Interval(e)
    hw = math.hypot(hw_t, hw_n)
    return Interval(e, e - hw, e + hw)


def p_above(effect: Interval, margin: float, level: float) -> float:
    """One-sided p-value of "effect ≤ margin" from the effect's interval (normal approximation)."""
    if not (effect.finite and math.isfinite(effect.low) and math.isfinite(effect.high)):
        return NAN
    hw = effect.half_width
    if hw <= 0:
        return 0.0 if effect.value > margin else 1.0
    se = hw / float(sps.norm.ppf(0.5 + level / 2))
    return float(sps.norm.sf((effect.value - margin) / se))


def p_below(effect: Interval, margin: float, level: float) -> float:
    """One-sided p-value of "effect ≥ margin" (the evidence for contradicted), normal approximation."""
    if not (effect.finite and math.isfinite(effect.low) and math.isfinite(effect.high)):
        return NAN
    hw = effect.half_width
    if hw <= 0:
        return 0.0 if effect.value < margin else 1.0
    se = hw / float(sps.norm.ppf(0.5 + level / 2))
    return float(sps.norm.cdf((effect.value - margin) / se))


def has_power(effect: Interval, margin: float, power: float) -> bool:
    """Whether the test could have said supported: the distance from δ to its reachable effect exceeds the width of
    its interval (an interval that wide cannot resolve that distance: ARCHITECTURE.md section 1, "Power"; NaN
    power: unknown, taken as unbounded)."""
    if math.isnan(power):
        return True
    hw = effect.half_width if math.isfinite(effect.half_width) else 0.0
    return power - margin > 2 * hw


def outcome_of(effect: Interval, margin: float, power: float = math.inf) -> str:
    """supported / contradicted / inconclusive / "no power" from the effect's interval and the reachable effect
    (Holm comes after)."""
    if not (math.isfinite(effect.low) and math.isfinite(effect.high)):
        return "inconclusive"
    if effect.low > margin:
        return "supported"
    if not has_power(effect, margin, power):
        return "no power"
    if effect.high < margin:
        return "contradicted"
    return "inconclusive"


def rule_sentence(effect: Interval, margin: float, outcome: str, power: float = math.inf) -> str:
    """The decision rule applied to the numbers, in words: "effect 0.0030 [0.0018, 0.0042] lies below δ 0.005
    → contradicted"."""
    e = f"effect {effect.value:.4g} [{effect.low:.4g}, {effect.high:.4g}]"
    if outcome == "no power":
        return (
            f"{e}: the largest reachable effect {power:.4g} lies within the interval's width "
            f"{2 * effect.half_width:.4g} of δ {margin:.4g} → inconclusive (no power)"
        )
    where = {
        "supported": "lies above",
        "contradicted": "lies below",
    }.get(outcome, "straddles")
    if not (math.isfinite(effect.low) and math.isfinite(effect.high)):
        return f"effect {effect.value:.4g} without an interval → inconclusive"
    return f"{e} {where} δ {margin:.4g} → {outcome}"


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries are not tests and stay NaN)."""
    idx = [i for i, x in enumerate(p) if math.isfinite(x)]
    out = [NAN] * len(p)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def apply_holm(verdicts: list[Verdict], alpha: float) -> list[Verdict]:
    """Fill ``p_holm`` across the run's predictions; a CI-supported or CI-contradicted outcome whose adjusted
    p-value (of its own direction) is not below ``alpha`` becomes inconclusive (said in the note)."""
    adj = holm([v.p_value for v in verdicts])
    out = []
    for v, p in zip(verdicts, adj, strict=True):
        v = replace(v, p_holm=p)
        if v.outcome in ("supported", "contradicted") and not p < alpha:
            v = replace(
                v,
                outcome="inconclusive",
                note=f"{v.outcome} by its interval but not after Holm (p_holm {p:.3g}); {v.note}",
            )
        out.append(v)
    return out


def verdicts_csv(verdicts: list[Verdict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(VERDICT_COLUMNS)
    for v in verdicts:
        w.writerow([f"{x:.6g}" if isinstance(x, float) else x for x in astuple(v)])
    return buf.getvalue()


def read_verdicts(text: str) -> list[Verdict]:
    """verdicts.csv back into :class:`Verdict` objects (NaN for empty numbers)."""
    out = []
    for d in csv.DictReader(io.StringIO(text)):
        nums = [float(d[k]) if d.get(k) not in (None, "", "nan") else NAN for k in VERDICT_COLUMNS[3:16]]
        out.append(Verdict(d["prediction"], d["outcome"], d["statistic"], *nums, d["note"]))  # type: ignore[arg-type]
    return out
