"""From a :class:`~spectral.stats.StatsBank` to the tidy metric table of ``metrics.csv``.

One row per (model, condition, site, layer, metric) with a value and its CI; metric names are
those of ARCHITECTURE.md and never change meaning. ``growth_rate`` is a whole-model metric: it
is reported at site ``resid_post`` with an empty layer (the fitted layers are in the report).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, fields
from functools import cached_property, partial

import numpy as np

from spectral.analysis import carrier, norms, spectrum
from spectral.analysis.intervals import (
    Estimate,
    bootstrap_weights,
    delete_one,
    jackknife,
    jackknife_interval,
    jackknife_many,
    percentile_ci,
)
from spectral.config import AnalysisSpec
from spectral.sites import site_kind, site_layer
from spectral.stats import StatsBank

NAN = float("nan")
COLUMNS = ("model", "condition", "site", "layer", "metric", "value", "ci_low", "ci_high")


def metric_bounds(metric: str) -> tuple[float, float]:
    """The range a metric can take (a share in [0, 1], a cosine in [-1, 1] (carrier_drift is the cosine of
    consecutive carrier directions), an effective rank >= 1, a norm or a divergence >= 0); (-inf, inf) for
    differences and anything unbounded. Figures draw an interval intersected with this range: the true value lies
    in it, so the intersection covers it whenever the interval does."""
    inf = math.inf
    if any(k in metric for k in ("minus", "gain", "delta", "dnll", "keep", "margin", "diff", "slope", "growth")):
        return -inf, inf
    if metric in ("eff_rank", "participation_ratio") or metric.startswith(("eff_rank", "participation")):
        return 1.0, inf
    if "cos" in metric or metric in ("anisotropy", "carrier_drift") or "spearman" in metric or "corr" in metric:
        return -1.0, 1.0
    if any(k in metric for k in ("share", "energy", "_acc", "linearity", "isoscore", "offdiag", "conc")):
        return 0.0, 1.0
    if any(k in metric for k in ("norm", "_kl", "entropy", "rank", "rms", "max_abs", "median_abs", "ratio")):
        return 0.0, inf
    return -inf, inf


@dataclass(frozen=True)
class MetricRow:
    """One line of metrics.csv."""

    model: str
    condition: str
    site: str
    layer: int | None
    metric: str
    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class MetricTable:
    """Rows of metrics.csv, with lookups used by figures and reports."""

    rows: tuple[MetricRow, ...]

    def get(self, condition: str, site: str, metric: str) -> MetricRow | None:
        return self._index.get((condition, site, metric))

    @cached_property
    def _index(self) -> dict[tuple[str, str, str], MetricRow]:
        """(condition, site, metric) -> its first row: built once (a run has ~10⁵ rows, read ~10⁴ times)."""
        index: dict[tuple[str, str, str], MetricRow] = {}
        for r in self.rows:
            index.setdefault((r.condition, r.site, r.metric), r)
        return index

    def series(self, condition: str, kind: str, metric: str) -> list[MetricRow]:
        """Rows of ``metric`` at sites ``kind.l`` ordered by layer."""
        rows = [r for r in self.rows if r.condition == condition and r.metric == metric and site_kind(r.site) == kind]
        return sorted(rows, key=lambda r: -1 if r.layer is None else r.layer)

    def conditions(self) -> list[str]:
        return list(dict.fromkeys(r.condition for r in self.rows))

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in self.rows:
            vals = astuple(r)
            w.writerow(["" if v is None else (f"{v:.10g}" if isinstance(v, float) else v) for v in vals])
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> MetricTable:
        reader = csv.DictReader(io.StringIO(text))
        names = [f.name for f in fields(MetricRow)]
        rows = []
        for d in reader:
            rows.append(
                MetricRow(
                    d["model"],
                    d["condition"],
                    d["site"],
                    int(d["layer"]) if d["layer"] else None,
                    d["metric"],
                    *(float(d[k]) if d[k] else float("nan") for k in names[5:]),
                )
            )
        return cls(tuple(rows))


SUBLAYER_KINDS = ("attn_out", "mlp_out", "resid_mid")  # eigen-spectra there only with [analysis] sublayer_spectra
CHAIN_METRICS = ("layer_cos", "norm_ratio", "carrier_drift")  # need the site's residual predecessor


def alias_rows(rows: list[MetricRow], alias: str, target: str, exclude: tuple[str, ...] = ()) -> list[MetricRow]:
    """Copies of ``target``'s rows under the name ``alias`` (a site that holds the same tensor)."""
    layer = site_layer(alias)
    return [
        dataclasses.replace(r, site=alias, layer=layer) for r in rows if r.site == target and r.metric not in exclude
    ]


def degenerate_sites(table: MetricTable, condition: str) -> dict[str, str]:
    """Sites of ``condition`` whose moments are degenerate, with why (read back from the metric rows):
    "zero" (every token exactly zero: a pruned or zero-initialised sub-layer; ``norm_mean`` 0) or
    "constant" (tokens have a direction but no variance about the centre, e.g. a bias-only write:
    ``centered_anisotropy`` NaN while ``anisotropy`` is finite). Their direction- and variance-based
    metrics are NaN."""
    out: dict[str, str] = {}
    for r in table.rows:
        if r.condition != condition or r.metric != "norm_mean":
            continue
        if r.value == 0:
            out[r.site] = "zero"
            continue
        cen, ani = table.get(condition, r.site, "centered_anisotropy"), table.get(condition, r.site, "anisotropy")
        if cen is not None and ani is not None and math.isnan(cen.value) and math.isfinite(ani.value):
            out[r.site] = "constant"
    return out


def _growth_rows(
    model: str, condition: str, layers: list[int], tables: list[np.ndarray], weights: np.ndarray, level: float
) -> list[MetricRow]:
    """Steadiness of the norm growth and the carrier / modulation amplitude growth rates (prediction 11):
    the RMS of ⟨h, ĉ_l⟩ (ĉ_l: the site's calibration centre direction) and of the rest of h, each fitted
    like ``growth_rate``, their difference with a paired bootstrap over windows."""
    col = norms.COL
    r2, share = norms.growth_steadiness(layers, tables)
    out = [
        MetricRow(model, condition, "resid_post", None, "growth_r2", r2, NAN, NAN),
        MetricRow(model, condition, "resid_post", None, "growth_max_layer_share", share, NAN, NAN),
    ]
    counts = np.stack([t[:, col["count"]] for t in tables], axis=1)
    car = np.stack([t[:, col["sum_carrier2"]] for t in tables], axis=1)
    if not np.isfinite(car).all():
        return out
    mod = np.stack([t[:, col["sum_norm2"]] for t in tables], axis=1) - car
    gc, bc = norms.amplitude_growth(layers, car, counts, weights, 0.5)
    gm, bm = norms.amplitude_growth(layers, np.clip(mod, 0, None), counts, weights, 0.5)
    for name, value, boot in (
        ("carrier_growth_rate", gc, bc),
        ("modulation_growth_rate", gm, bm),
        ("carrier_minus_modulation_growth", gc - gm, bc - bm),
    ):
        est = percentile_ci(value, boot, level) if np.isfinite(value) else Estimate(NAN, NAN, NAN)
        out.append(MetricRow(model, condition, "resid_post", None, name, est.value, est.ci_low, est.ci_high))
    return out


# their middle-layer mean: "<name>_mid"; the _nosink ones (massive activations left out) feed the sensitivity table
MIDDLE_MEANS = (
    "carrier_energy",
    "carrier_drift",
    "seq_ac_lowfreq_share",
    "carrier_energy_nosink",
    "seq_ac_lowfreq_share_nosink",
)


def _jackknife_keep(
    stat: Callable[[int | None], float], buckets: Sequence[int], level: float
) -> tuple[Estimate, np.ndarray]:
    """:func:`~spectral.analysis.intervals.delete_one` of a scalar statistic that also gives back its delete-one
    values (in ``buckets`` order): one evaluation per bucket serves the site's own interval and the middle-layer
    mean's."""
    vals = {b: float(stat(b)) for b in (None, *buckets)}
    return delete_one(vals.__getitem__, buckets, level)[0], np.array([vals[b] for b in buckets])


def _moment_jackknife(fn: Callable[..., float], stats: list, level: float) -> tuple[Estimate, np.ndarray]:
    """:func:`~spectral.analysis.intervals.jackknife` of ``fn`` of the sites' moments (buckets aligned), with the
    delete-one values."""
    return _jackknife_keep(
        lambda b: fn(*(s.total() if b is None else s.leave_one_out(b) for s in stats)),
        stats[0].nonempty_buckets(),
        level,
    )


def _spectrum_jackknife(
    fn: Callable[[np.ndarray], float], st, level: float, nosink: bool = False
) -> tuple[Estimate, np.ndarray]:
    """:func:`~spectral.analysis.spectrum.spectrum_jackknife` with the delete-one values (of the sink-excluded
    spectrum with ``nosink``)."""
    per = (st.spectrum_nosink if nosink else st.spectrum).cpu().double().numpy()
    tot = per.sum(0)
    bks = [b for b in st.nonempty_buckets() if st.spectrum_windows[b] > 0]
    return _jackknife_keep(lambda b: fn(tot if b is None else tot - per[b]), bks, level)


def compute_metrics(
    bank: StatsBank,
    model: str,
    condition: str,
    spec: AnalysisSpec,
    seed: int,
    light: bool = False,
    middle: Sequence[int] = (),
) -> MetricTable:
    """Every metric of issue 2 for every captured site, with CIs. ``light`` (the null members: each R seed
    and W): only what the predictions read of a null (norms, carrier energy and drift, layer cosine,
    update alignment, sequence spectrum, growth), without quantiles, anisotropies or eigen-spectra.
    With ``middle`` layers, the middle-layer mean of each :data:`MIDDLE_MEANS` statistic at resid_post is
    jackknifed as one statistic (``<name>_mid``: the same bucket left out of every layer), not as the mean of
    per-layer bounds."""
    rows: list[MetricRow] = []
    level = spec.ci_level
    loo: dict[str, list[tuple[float, np.ndarray]]] = {m: [] for m in MIDDLE_MEANS}
    mids = set(middle)
    idx0 = bank[bank.sites[0]].window_table().index
    weights = bootstrap_weights(len(idx0), spec.n_boot, seed)

    def add(site: str, metric: str, est: Estimate) -> None:
        rows.append(MetricRow(model, condition, site, site_layer(site), metric, est.value, est.ci_low, est.ci_high))

    preds = set(bank.predecessors.values())
    for site in bank.sites:
        if site in bank.aliases:  # the same tensor as another site: its rows, minus the chain metrics
            rows += alias_rows(rows, site, bank.aliases[site], exclude=CHAIN_METRICS)
            continue
        st = bank[site]
        table = st.window_table().rows
        add(site, "norm_mean", norms.window_mean(table, "sum_norm", "count", weights, level))
        if not light:
            for q, name in ((0.5, "norm_median"), (0.05, "norm_p05"), (0.95, "norm_p95")):
                add(site, name, jackknife([st], lambda m, q=q: norms.norm_quantile(m, q), level))
            add(site, "anisotropy", jackknife([st], carrier.anisotropy, level))
            add(site, "centered_anisotropy", jackknife([st], carrier.centered_anisotropy, level))
        in_mid = site_kind(site) == "resid_post" and site_layer(site) in mids
        est, per_bucket = _moment_jackknife(carrier.carrier_energy, [st], level)
        add(site, "carrier_energy", est)
        if in_mid:
            loo["carrier_energy"].append((est.value, per_bucket))
            if st.sink_threshold is not None:  # its per-site rows come from the battery (full conditions)
                nosink = partial(carrier.carrier_energy_robust, zscore=False, drop_dims=0, drop_sinks=True)
                est_ns, per_ns = _moment_jackknife(nosink, [st], level)
                loo["carrier_energy_nosink"].append((est_ns.value, per_ns))
        # one eigendecomposition per jackknife replicate serves all four spectrum summaries
        names = ("eff_rank", "participation_ratio", "isoscore", "pc1_variance_share")
        if not light and (spec.sublayer_spectra or site_kind(site) not in SUBLAYER_KINDS):
            for name, est in zip(names, jackknife_many([st], spectrum.spectrum_summary, level), strict=True):
                add(site, name, est)
        if st.spectrum is not None and float(st.spectrum_windows.sum()) > 0:
            add(site, "seq_dc_share", spectrum.spectrum_jackknife(st, spectrum.seq_dc_share, level))
            low = partial(spectrum.seq_ac_lowfreq_share, share=spec.lowfreq_share)
            est, per_bucket = _spectrum_jackknife(low, st, level)
            add(site, "seq_ac_lowfreq_share", est)
            if in_mid:
                loo["seq_ac_lowfreq_share"].append((est.value, per_bucket))
            if st.spectrum_nosink is not None:
                est, per_bucket = _spectrum_jackknife(low, st, level, nosink=True)
                add(site, "seq_ac_lowfreq_share_nosink", est)
                if in_mid:
                    loo["seq_ac_lowfreq_share_nosink"].append((est.value, per_bucket))
            null = spectrum.seq_ac_lowfreq_null(st.spectrum_len, spec.lowfreq_share)
            add(site, "seq_ac_lowfreq_null", Estimate(null, null, null))  # exact: no sampling error
        prev = bank.predecessors.get(site)
        if prev is not None:
            add(site, "layer_cos", norms.window_mean(table, "sum_cos", "pair_count", weights, level))
            add(site, "norm_ratio", norms.window_mean(table, "sum_ratio", "pair_count", weights, level))
            est, per_bucket = _moment_jackknife(carrier.carrier_drift, [bank[prev], st], level)
            add(site, "carrier_drift", est)
            if in_mid:
                loo["carrier_drift"].append((est.value, per_bucket))
            add(site, "update_cos_stream", norms.window_mean(table, "sum_upd_cos_stream", "pair_count", weights, level))
            if np.isfinite(table[:, norms.COL["sum_upd_cos_carrier"]]).all():
                add(
                    site,
                    "update_cos_carrier",
                    norms.window_mean(table, "sum_upd_cos_carrier", "pair_count", weights, level),
                )
            bank[prev].release()
        if site not in preds:  # a predecessor keeps its views until its successor's drift has read them
            st.release()

    for name, per_layer in loo.items():
        sizes = {v.size for _, v in per_layer}
        if len(per_layer) == len(mids) and len(sizes) == 1:  # every middle layer, buckets aligned
            value = float(np.mean([v for v, _ in per_layer]))
            est = jackknife_interval(value, np.mean([v for _, v in per_layer], axis=0), level)
            rows.append(
                MetricRow(model, condition, "resid_post", None, f"{name}_mid", est.value, est.ci_low, est.ci_high)
            )
    resid_layers = sorted(site_layer(s) or 0 for s in bank.sites if site_kind(s) == "resid_post")
    layers_i = [layer for layer in resid_layers if layer >= spec.growth_first_layer]
    tables = [bank[f"resid_post.{layer}"].window_table().rows for layer in layers_i]
    if len(layers_i) >= 2:
        g = norms.growth_rate(layers_i, tables, weights, level)
        rows.append(MetricRow(model, condition, "resid_post", None, "growth_rate", g.value, g.ci_low, g.ci_high))
        rows += _growth_rows(model, condition, layers_i, tables, weights, level)
    return MetricTable(tuple(rows))
