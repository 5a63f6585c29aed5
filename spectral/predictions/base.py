"""The evidence a prediction reads (metric rows of every condition) and the prediction object.

:class:`Context` turns metrics.csv rows into intervals: one site's value, a mean over layers (its
interval is the mean of the per-layer bounds, conservative for positively correlated layers), the
R ensemble's null (one point per seed, ``random_init.s<seed>`` conditions) and W's. A
:class:`Prediction` names the metrics it needs, says when it cannot apply and why, and builds its
:class:`Test` list; :meth:`Prediction.verdict` combines them as an intersection-union test: supported
only if every test is (its p-value the largest of the tests'), contradicted if any test with power is
(its p-value the smallest of theirs times the number of tests, Bonferroni: the claim is a conjunction);
a test whose reachable effect (``power``) cannot clear δ makes the prediction inconclusive ("no power").
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from spectral.analysis.metrics import MetricTable
from spectral.config import AnalysisSpec, VerdictSpec
from spectral.predictions.decision import (
    NAN,
    Interval,
    Null,
    Verdict,
    effect_against,
    ensemble_null,
    has_power,
    outcome_of,
    p_above,
    p_below,
    rule_sentence,
)


def middle_layers(n_layers: int, spec: VerdictSpec) -> list[int]:
    lo, hi = spec.middle_from * (n_layers - 1), spec.middle_to * (n_layers - 1)
    layers = [layer for layer in range(n_layers) if lo - 1e-9 <= layer <= hi + 1e-9]
    return layers or [n_layers // 2]


def is_random_member(condition: str) -> bool:
    return condition == "random_init" or condition.startswith("random_init.s")


def is_w_member(condition: str) -> bool:
    """W's first permutation (``permuted_weights``) or a further one (``permuted_weights.s<seed>``)."""
    return condition == "permuted_weights" or condition.startswith("permuted_weights.s")


def is_scaled_member(condition: str) -> bool:
    """A member of R rescaled to the trained norms (``random_scaled.s<seed>``)."""
    return condition.startswith("random_scaled.s")


@dataclass(frozen=True)
class Context:
    """What the predictions read: the run's metrics, architecture facts and settings."""

    table: MetricTable
    arch: dict
    spec: VerdictSpec
    analysis: AnalysisSpec

    @property
    def conditions(self) -> list[str]:
        return list(self.table.conditions())

    @property
    def random_members(self) -> list[str]:
        return [c for c in self.conditions if is_random_member(c)]

    @property
    def has_w(self) -> bool:
        return "permuted_weights" in self.conditions

    @property
    def mid(self) -> list[int]:
        return middle_layers(int(self.arch["n_layers"]), self.spec)

    @property
    def post_ln(self) -> bool:
        return self.arch.get("norm_placement") == "post"

    @property
    def causal_lm(self) -> bool:
        return bool(self.arch.get("has_unembedding")) and bool(self.arch.get("is_causal", True))

    def stat(self, condition: str, where: str, metric: str, layers: list[int] | None = None) -> Interval:
        """One site's value (``where`` a site name) or the mean over ``layers`` of a site kind (``where``
        a kind such as ``resid_post``, all its layers when ``layers`` is None)."""
        r = self.table.get(condition, where, metric)
        if r is not None and (layers is None or r.layer is None):
            return Interval(r.value, r.ci_low, r.ci_high)
        if layers is not None and list(layers) == self.mid:  # the middle-layer mean jackknifed as one statistic
            r = self.table.get(condition, where, f"{metric}_mid")
            if r is not None:
                return Interval(r.value, r.ci_low, r.ci_high)
        rows = [
            r
            for r in self.table.series(condition, where, metric)
            if (layers is None or r.layer in layers) and math.isfinite(r.value)
        ]
        if not rows:
            return Interval(NAN)
        return Interval(*(float(np.mean([getattr(r, a) for r in rows])) for a in ("value", "ci_low", "ci_high")))

    def _members_null(
        self, members: list[str], name: str, single: str | None, where: str, metric: str, layers: list[int] | None
    ) -> Null:
        """An ensemble's null of a statistic: a new member's prediction interval (the between-member spread in
        it); with one member and a ``single`` name, that member's own interval is all there is."""
        if len(members) == 1 and single is not None:
            iv = self.stat(members[0], where, metric, layers)
            return Null(iv, single, (iv.value,))
        vals = [self.stat(c, where, metric, layers).value for c in members]
        return ensemble_null(vals, self.analysis.ci_level, name)

    def null_r(self, where: str, metric: str, layers: list[int] | None = None) -> Null:
        """The R ensemble's null of a statistic: one point per seed."""
        single = "R (1 seed: between-seed spread unknown)"
        return self._members_null(self.random_members, "R ensemble", single, where, metric, layers)

    @property
    def scaled_members(self) -> list[str]:
        return [c for c in self.conditions if is_scaled_member(c)]

    def null_rs(self, where: str, metric: str, layers: list[int] | None = None) -> Null:
        """The rescaled R ensemble's null (R twins with the trained parameters' norms)."""
        return self._members_null(self.scaled_members, "R rescaled to the trained norms", None, where, metric, layers)

    def null_w(self, where: str, metric: str, layers: list[int] | None = None) -> Null:
        """W's null: with several permutations, the between-permutation spread is in it."""
        members = [c for c in self.conditions if is_w_member(c)]
        name, single = "W ensemble (weight permutations)", "W (one weight permutation)"
        return self._members_null(members, name, single, where, metric, layers)

    def nulls(self, where: str, metric: str, layers: list[int] | None = None) -> list[Null]:
        """R's and W's nulls of a statistic, those that were run and measured it."""
        out = []
        if self.random_members:
            out.append(self.null_r(where, metric, layers))
        if self.has_w:
            out.append(self.null_w(where, metric, layers))
        return [n for n in out if n.interval.finite]


@dataclass(frozen=True)
class Test:
    """One comparison: a statistic against its null, with the effect's interval and the margin."""

    statistic: str
    value: Interval
    null: Null
    effect: Interval
    margin: float
    note: str = ""
    power: float = math.inf  # the largest effect reachable on this run (inf: the statistic is unbounded)

    @staticmethod
    def against(
        statistic: str, value: Interval, null: Null, margin: float, note: str = "", upper: float = math.inf
    ) -> Test:
        """Effect = value − null (independent samples; see :func:`effect_against`); ``upper`` is the largest value
        the statistic can take, so the reachable effect is ``upper`` − null."""
        return Test(statistic, value, null, effect_against(value, null), margin, note, upper - null.interval.value)

    @staticmethod
    def paired(
        statistic: str,
        value: Interval,
        effect: Interval,
        null: Null,
        margin: float,
        note: str = "",
        power: float = math.inf,
    ) -> Test:
        """An effect measured as a paired difference on the same windows (its own interval), reaching at most
        ``power``."""
        return Test(statistic, value, null, effect, margin, note, power)

    def outcome(self) -> str:
        return outcome_of(self.effect, self.margin, self.power)

    def describe(self) -> str:
        """The sub-test in words, its null named: "sub-test X against Y: effect … lies below δ … → contradicted"."""
        rule = rule_sentence(self.effect, self.margin, self.outcome(), self.power)
        return f"sub-test {self.statistic} against {self.null.name}: {rule}"


class Prediction(ABC):
    """One prediction of the carrier-signal hypothesis (ARCHITECTURE.md section 1)."""

    key: str  # "1 norm growth is learned"
    statistic: str  # what verdicts.csv names when the prediction is n/a
    needs: tuple[str, ...]  # the metrics it reads
    explanation: str  # for the report: the claim, the statistic, its null

    def not_applicable(self, ctx: Context) -> str | None:
        """Why the model or run cannot answer (None: it can)."""
        return None

    @abstractmethod
    def tests(self, ctx: Context) -> list[Test]: ...

    def verdict(self, ctx: Context) -> Verdict:
        why = self.not_applicable(ctx)
        tests = [] if why else [t for t in self.tests(ctx) if t.value.finite]
        if why or not tests:
            reason = why or f"the run did not measure {', '.join(self.needs)}"
            return Verdict(self.key, "n/a", self.statistic, *([NAN] * 13), reason)  # type: ignore[arg-type]
        lvl = ctx.analysis.ci_level
        outs = [t.outcome() for t in tests]
        sup = [p_above(t.effect, t.margin, lvl) for t in tests]
        con = [p_below(t.effect, t.margin, lvl) if o != "no power" else NAN for t, o in zip(tests, outs, strict=True)]
        # intersection-union test over the deciding tests. A blind test (its reachable effect within its interval's
        # width of δ) against one null of a statistic that another null tests with sight (e.g. W's carrier drift at
        # its ceiling of 1 beside R's) is reported and decides nothing, whatever its interval says; a statistic
        # tested only blind keeps its tests (no power: the prediction stays inconclusive)
        blind = [not has_power(t.effect, t.margin, t.power) for t in tests]
        sighted = {t.statistic for t, b in zip(tests, blind, strict=True) if not b}
        decides = [j for j, t in enumerate(tests) if not blind[j] or t.statistic not in sighted]
        d_outs = [outs[j] for j in decides]
        p_sup = max((sup[j] for j in decides if math.isfinite(sup[j])), default=NAN)
        finite_con = [con[j] for j in decides if math.isfinite(con[j])]
        p_con = min(1.0, len(decides) * min(finite_con)) if finite_con else NAN  # Bonferroni over the conjunction
        if "contradicted" in d_outs:
            i = min((j for j in decides if outs[j] == "contradicted"), key=lambda j: con[j])
            outcome, p = "contradicted", p_con
        elif all(o == "supported" for o in d_outs):
            i = max(decides, key=lambda j: sup[j] if math.isfinite(sup[j]) else -1.0)
            outcome, p = "supported", p_sup
        else:
            i = next((j for j in decides if outs[j] == "no power"), None)
            i = i if i is not None else next(j for j in decides if outs[j] == "inconclusive")
            outcome = "inconclusive"
            p = min((x for x in (p_sup, p_con) if math.isfinite(x)), default=NAN)
        lead = tests[i]
        lead_rule = rule_sentence(lead.effect, lead.margin, outs[i], lead.power)
        if outs[i] == "no power":
            lead_rule = f"no power: {lead_rule}"
        others = [t.describe() + ("" if j in decides else " (blind beside another null of this statistic: reported, "
                                  "not decided on)") for j, t in enumerate(tests) if j != i]  # fmt: skip
        note = "; ".join(x for x in (lead_rule, f"null: {lead.null.name}", lead.note, *others) if x)
        ni, e = lead.null.interval, lead.effect
        return Verdict(
            self.key,
            outcome,
            lead.statistic,
            lead.value.value,
            lead.value.low,
            lead.value.high,
            ni.value,
            ni.low,
            ni.high,
            e.value,
            e.low,
            e.high,
            lead.margin,
            p,
            NAN,
            lead.power,
            note,
        )
