"""The hypothesis battery's metrics beyond issue 2's core: rogue dimensions, robust carrier,
IsoScore, unembedding bands and band transfer, self- and intra-sentence similarity, logit lens,
band decomposition of the final margin, heads, attention sinks and interventions.

Input: one condition's :class:`Measurement` (site moments + probes); output: metric rows with
CIs (jackknife over buckets for moment statistics, bootstrap over windows for per-window sums,
bootstrap over token types for self-similarity). Names are new and never change meaning.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy import stats as sps

from spectral.analysis import carrier, heads, spectrum
from spectral.analysis.intervals import (
    Estimate,
    bootstrap_weights,
    bucket_jackknife,
    jackknife,
    jackknife_many,
    percentile_ci,
    ratio_bootstrap,
)
from spectral.analysis.interventions import InterventionResult
from spectral.analysis.jacobian import BandTransfer
from spectral.analysis.metrics import SUBLAYER_KINDS, MetricRow, alias_rows
from spectral.analysis.spectrum import split_bands
from spectral.config import ROGUE_SENSITIVITY, AnalysisSpec
from spectral.depth import DepthProbe
from spectral.joint import JointProbe
from spectral.outliers import OUTLIER_METRICS, OutlierProbe
from spectral.probes import CosineProbe, HeadProbe, LensProbe, TypeProbe
from spectral.sites import site_kind, site_layer
from spectral.stats import StatsBank
from spectral.tuned_lens import TUNED_COLUMNS, TunedLens

NAN = Estimate(float("nan"), float("nan"), float("nan"))


@dataclass
class Measurement:
    """Everything captured for one condition."""

    condition: str
    bank: StatsBank
    bands: dict[int, list[torch.Tensor]]  # K -> W_U bands (empty without an unembedding)
    lens: LensProbe | None
    heads: HeadProbe | None  # None on the fast backend (no attention internals)
    types: TypeProbe
    interventions: list[InterventionResult]
    cosines: CosineProbe | None = None  # corpus-level layer x layer cosine (resid_post sites)
    depth: DepthProbe | None = None  # per-window depth power spectra of the resid_post trajectory
    jacobian: BandTransfer | None = None  # JVP band transfer of attention and the MLP (trained model and R)
    modulation: list[InterventionResult] | None = None  # prediction 4's mean ablations read on the output
    outliers: OutlierProbe | None = None  # corpus-wide outlier statistics at every site (the trained model)
    joint: JointProbe | None = None  # cross moments of consecutive resid_post layers, the tuned lens's rows
    tuned: TunedLens | None = None  # the approximate tuned lens fitted on the joint probe's fit windows
    tuned_table: tuple[np.ndarray, np.ndarray] | None = None  # its held-out (windows, (W, sites, TUNED_COLUMNS))


class Rows:
    """Collects MetricRow objects for one (model, condition)."""

    def __init__(self, model: str, condition: str) -> None:
        self.model, self.condition, self.rows = model, condition, []

    def add(self, site: str, metric: str, est: Estimate) -> None:
        self.rows.append(
            MetricRow(self.model, self.condition, site, site_layer(site), metric, est.value, est.ci_low, est.ci_high)
        )


def _site_metrics(out: Rows, m: Measurement, spec: AnalysisSpec, weights: np.ndarray) -> None:
    level = spec.ci_level
    for site in m.bank.sites:
        if site in m.bank.aliases:
            out.rows += alias_rows(out.rows, site, m.bank.aliases[site])
            continue
        st = m.bank[site]
        rk = spec.rogue_dims(int(st.d))
        out.add(site, "rogue_top1_share", jackknife([st], carrier.rogue_top1_share, level))
        out.add(
            site,
            f"anisotropy_norogue{rk}",
            jackknife([st], partial(carrier.anisotropy_without_rogue, k=rk), level),
        )
        kind = site_kind(site)
        spectra = spec.sublayer_spectra or kind not in SUBLAYER_KINDS
        if spectra:
            top_pc = jackknife_many([st], carrier.top_pc_summary, level)
            out.add(site, "carrier_energy_top_pc", top_pc[0])
            out.add(site, "carrier_pc_alignment", top_pc[1])
        if st.sink_threshold is not None and spectra:
            variants = {
                "carrier_energy_zscored": {"zscore": True, "drop_dims": 0, "drop_sinks": False},
                f"carrier_energy_norogue{rk}": {
                    "zscore": False,
                    "drop_dims": rk,
                    "drop_sinks": False,
                },
                "carrier_energy_nosink": {"zscore": False, "drop_dims": 0, "drop_sinks": True},
                "carrier_energy_robust": {"zscore": True, "drop_dims": rk, "drop_sinks": True},
            }
            for name, kw in variants.items():
                out.add(site, name, jackknife([st], partial(carrier.carrier_energy_robust, **kw), level))
            keep = jackknife_many([st], partial(carrier.carrier_keep, k=rk), level)
            for name, est in zip(
                ("carrier_keep_zscored", f"carrier_keep_norogue{rk}", "carrier_keep_nosink"),
                keep,
                strict=True,
            ):
                out.add(site, name, est)
            rk_alt = spec.rogue_dims(int(st.d), ROGUE_SENSITIVITY)  # the sensitivity table's rogue-share variant
            if rk_alt != rk:
                out.add(
                    site,
                    f"carrier_keep_norogue{rk_alt}",
                    jackknife([st], partial(carrier.carrier_keep_rogue, k=rk_alt), level),
                )
            m_tot = st.total()
            n_all = m_tot.n + m_tot.first_count  # sinks are found with position 0 included
            share = m_tot.sink_count / n_all if n_all > 0 else float("nan")
            out.add(site, "sink_fraction", Estimate(share, float("nan"), float("nan")))
        table = st.window_table()
        intra = ratio_bootstrap(table.column("sum_intra"), table.column("count"), weights, level)
        base = carrier.anisotropy(st.total())
        out.add(site, "intra_similarity", Estimate(intra.value - base, intra.ci_low - base, intra.ci_high - base))
        for K, energies in spectrum.band_energy_jackknife(st, m.bands, level).items():
            for i, est in enumerate(energies):
                out.add(site, f"band_energy_k{K}_b{i}", est)
        if kind in ("attn_out", "mlp_out") and st.cross is not None and m.bands:
            Ks = list(m.bands)
            shares = jackknife_many(
                [st, m.bank[m.bank.inputs[site]]],
                partial(spectrum.offdiag_shares, band_sets=[m.bands[K] for K in Ks]),
                level,
            )
            for K, est in zip(Ks, shares, strict=True):
                out.add(site, f"band_offdiag_k{K}", est)
        if site in m.bank.inputs:
            m.bank[m.bank.inputs[site]].release()
        st.release()


def _self_similarity(out: Rows, m: Measurement, spec: AnalysisSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for site in m.types.sites:
        sims = m.types.self_similarity(site)
        sims = sims[np.isfinite(sims)]
        if sims.size < 2:
            continue
        base = carrier.anisotropy(m.bank[site].total())
        boot = np.array([rng.choice(sims, sims.size).mean() for _ in range(spec.n_boot)])
        est = percentile_ci(float(sims.mean()), boot, spec.ci_level)
        out.add(site, "self_similarity", Estimate(est.value - base, est.ci_low - base, est.ci_high - base))


def _lens_metrics(out: Rows, lens: LensProbe, spec: AnalysisSpec, seed: int, resonance_k: int) -> None:
    table = lens.table()
    margins = table.margins
    w = bootstrap_weights(table.rows.shape[0], spec.n_boot, seed)
    level = spec.ci_level
    for site in lens.sites:

        def col(name: str, site: str = site) -> np.ndarray:
            return table.column(site, name)

        count = col("count")
        for metric, c in (("logit_lens_top1", "agree"), ("logit_lens_acc", "correct"), ("logit_lens_rank", "rank_sum")):
            out.add(site, metric, ratio_bootstrap(col(c), count, w, level))
        if np.isfinite(col("kl_sum")).all():  # a lens state written before the KL columns has NaN there
            # tuned-lens's per-layer lens metrics (nats): KL(model's output ‖ lens) and the lens's entropy; at final
            # the KL is 0 and the entropy is the model's own
            if site != "final":
                out.add(site, "logit_lens_kl", ratio_bootstrap(col("kl_sum"), count, w, level))
            out.add(site, "logit_lens_entropy", ratio_bootstrap(col("entropy_sum"), count, w, level))
        if np.isfinite(col("mod_agree")).all() and site != "final":
            out.add(site, "modulation_lens_top1", ratio_bootstrap(col("mod_agree"), count, w, level))
            out.add(site, "modulation_lens_acc", ratio_bootstrap(col("mod_correct"), count, w, level))
        abl = {name: col(f"abl_{name}_correct") for name in ("carrier", "toppc", "random")}
        if site != "final" and all(np.isfinite(v).all() for v in abl.values()):
            for name, v in abl.items():
                out.add(site, f"lens_acc_ablate_{name}", ratio_bootstrap(v, count, w, level))
            # paired on the same positions: the accuracy kept by ablating the carrier instead of the null direction
            for name in ("toppc", "random"):
                out.add(
                    site, f"lens_keep_carrier_vs_{name}", ratio_bootstrap(abl["carrier"] - abl[name], count, w, level)
                )
    K = len(lens.bands)
    n = resonance_k
    name = f"cband_margin_top{n}_share_k{K}"
    shares, layers = [], []  # per layer: (top, total, top_rot, total_rot) window sums, for the slope
    for i, site in enumerate(lens.sites):
        real, rot = margins[:, i, : K + 1], margins[:, i, K + 1 : 2 * K + 2]  # band parts + bias, rotated null
        total, top, top_rot, total_rot = real.sum(1), real[:, :n].sum(1), rot[:, :n].sum(1), rot.sum(1)
        if site == "final":
            for b in range(K):
                out.add(site, f"cband_margin_share_k{K}_b{b}", ratio_bootstrap(real[:, b], total, w, level))
        else:
            shares.append((top, total, top_rot, total_rot))
            layers.append(site_layer(site) or 0)
        out.add(site, name, ratio_bootstrap(top, total, w, level))
        out.add(site, f"{name}_rotnull", ratio_bootstrap(top_rot, total_rot, w, level))
        with np.errstate(invalid="ignore", divide="ignore"):  # paired: the same windows resampled for both
            value = float(top.sum() / total.sum() - top_rot.sum() / total_rot.sum())
            boots = (w @ top) / (w @ total) - (w @ top_rot) / (w @ total_rot)
        out.add(site, f"{name}_excess", percentile_ci(value, boots, level))
    _abs_margin_metrics(out, lens, table.column, margins, w, level, n)
    if len(layers) >= 2:
        # prediction 10's rise with depth: least-squares slope over layers of the excess share (trained − its
        # rotated-h null at the same layer), every layer's ratio resampled with the same windows
        with np.errstate(invalid="ignore", divide="ignore"):
            ex = np.array([t.sum() / s.sum() - tr.sum() / sr.sum() for t, s, tr, sr in shares])
            exb = np.stack([(w @ t) / (w @ s) - (w @ tr) / (w @ sr) for t, s, tr, sr in shares], 1)  # (boot, L)
        out.add("resid_post", f"{name}_excess_slope", _layer_slope(layers, ex, exb, level))


def _layer_slope(layers: list[int], values: np.ndarray, boots: np.ndarray, level: float) -> Estimate:
    """Least-squares slope over ``layers`` of per-layer ``values`` (L,), its interval from the same slope of each
    bootstrap row of ``boots`` (boot, L) (every layer resampled with the same windows)."""
    x = np.asarray(layers, dtype=float)
    x = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    return percentile_ci(float(x @ values), boots @ x, level)


def _abs_margin_metrics(
    out: Rows,
    lens: LensProbe,
    column: Callable[[str, str], np.ndarray],
    margins: np.ndarray,
    w: np.ndarray,
    level: float,
    n: int,
) -> None:
    """Prediction 10's bounded statistic: per token, the share of |margin contribution| (top-1 vs top-2, centred
    bands, bias left out) held by the top ``n`` of K bands, mean over the lens tokens (in [0, 1]); the same with h
    rotated at random (same W_U); their paired excess per site; and the least-squares slope over layers of the
    excess (every layer resampled with the same windows)."""
    K = len(lens.bands)
    if margins.shape[2] < 2 * (K + 1) + 2 * K:
        return  # a lens state written before the statistic existed
    name = f"cband_margin_abs_top{n}_share_k{K}"
    at = 2 * (K + 1)
    layers, ex_rows = [], []
    for i, site in enumerate(lens.sites):
        count = column(site, "count")
        real = margins[:, i, at : at + n].sum(1)
        rot = margins[:, i, at + K : at + K + n].sum(1)
        out.add(site, name, ratio_bootstrap(real, count, w, level))
        out.add(site, f"{name}_rotnull", ratio_bootstrap(rot, count, w, level))
        out.add(site, f"{name}_excess", ratio_bootstrap(real - rot, count, w, level))
        if site != "final":
            layers.append(site_layer(site) or 0)
            ex_rows.append((real - rot, count))
    if len(layers) >= 2:
        ex = np.array([d.sum() / c.sum() for d, c in ex_rows])
        exb = np.stack([(w @ d) / (w @ c) for d, c in ex_rows], 1)
        out.add("resid_post", f"{name}_excess_slope", _layer_slope(layers, ex, exb, level))


def _head_metrics(out: Rows, hp: HeadProbe, spec: AnalysisSpec, seed: int, full_battery: bool = True) -> None:
    """Head effective rank and sink correlation per layer; with ``full_battery`` also their intervals and
    the head-subspace overlap (a null member needs point values only: its spread is the ensemble's)."""
    level = spec.ci_level
    d = hp.model.arch.d_model
    sink_rows: dict[int, dict[int, float]] = {}  # layer -> window -> sink tail-share excess
    for layer in range(hp.L):
        W_O = hp.W_O(layer)
        site = f"attn_out.{layer}"
        roots = heads.gram_roots(W_O)  # fixed per layer: one batched eigensolve per jackknife evaluation

        def mean_rank_frac(sec: np.ndarray, zs: np.ndarray, n: np.ndarray, roots: np.ndarray = roots) -> float:
            spectra = heads.head_output_spectra(sec, zs, float(n), roots)
            return float(np.mean([heads.head_eff_rank(ev) for ev in spectra])) / hp.dh

        buckets = [b for b in range(hp.n_buckets) if hp.z_count[layer, b] > 0] if full_battery else []
        sums = [hp.z_second[layer].numpy(), hp.z_sum[layer].numpy(), hp.z_count[layer].numpy()]
        rank = bucket_jackknife(sums, mean_rank_frac, level, buckets)[0]
        value = rank.value
        out.add(site, "head_eff_rank_frac", rank)
        sec, zs, n = hp.z_second[layer].sum(0), hp.z_sum[layer].sum(0), float(hp.z_count[layer].sum())
        overl = []
        if full_battery and np.isfinite(value):  # NaN: a head with a zero output covariance has no subspace to compare
            r = max(1, int(round(value * hp.dh)))
            subs = [heads.head_subspace(sec[h].numpy(), zs[h].numpy(), n, W_O[h], r) for h in range(hp.H)]
            overl = [heads.subspace_overlap(subs[a], subs[b]) for a in range(hp.H) for b in range(a + 1, hp.H)]
        if overl:
            rng = np.random.default_rng(seed + layer)
            boot = np.array([rng.choice(overl, len(overl)).mean() for _ in range(spec.n_boot)])
            out.add(site, "head_overlap", percentile_ci(float(np.mean(overl)), boot, level))
            null = heads.random_heads_null(d, r, hp.H, 100, seed)  # cached: layers of equal r share it
            out.add(site, "head_overlap_null", percentile_ci(r / d, null, level))
        pairs = hp.pairs[layer]
        if pairs:
            arr = np.concatenate(pairs)
            site, sd = f"resid_pre.{layer}", seed + layer
            rest = arr[arr[:, 3] > 0]  # the earlier definition: position 0 left out
            out.add(site, "attn_tail_spearman", _spearman_boot(rest, spec, sd, full_battery))
            out.add(site, "attn_tail_spearman_pos0", _spearman_boot(arr, spec, sd, full_battery))
            out.add(site, "attn_tail_partial_spearman", _spearman_boot(arr, spec, sd, full_battery, partial=True))
            ids, diff = _sink_tail_excess(arr)
            if ids.size:
                sink_rows[layer] = dict(zip(ids.tolist(), diff.tolist(), strict=True))
                out.add(site, "sink_tail_share_excess", _mean_boot(diff, spec.n_boot, sd, level) if full_battery
                        else Estimate(float(diff.mean()), float("nan"), float("nan")))  # fmt: skip
    if sink_rows:
        # prediction 8: mean over layers of the per-window excess, bootstrap over windows (all layers together)
        wins = sorted(set.intersection(*(set(r) for r in sink_rows.values())))
        if wins:
            M = np.array([[sink_rows[layer][w] for layer in sorted(sink_rows)] for w in wins]).mean(1)  # (windows,)
            est = (
                _mean_boot(M, spec.n_boot, seed + 8, level)
                if full_battery
                else Estimate(float(M.mean()), NAN.value, NAN.value)
            )
            out.add("resid_pre", "sink_tail_share_excess", est)


def _sink_tail_excess(arr: np.ndarray, top: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per window (rows of ``arr``: window, attention received, tail-band energy share, position), the tail-band
    share of its sink tokens (the ``top`` largest receivers, position 0 among the candidates) minus the mean
    share of its other recorded tokens (Cancedda 2024, paired per window): (window ids, excess)."""
    win = arr[:, 0].astype(np.int64)
    order = np.lexsort((-arr[:, 1], win))  # by window, then attention received, largest first
    a, w = arr[order], win[order]
    ids, start, counts = np.unique(w, return_index=True, return_counts=True)
    keep = counts > top
    out = []
    for s0, c in zip(start[keep], counts[keep], strict=True):
        tail = a[s0 : s0 + c, 2]
        out.append(tail[:top].mean() - tail[top:].mean())
    return ids[keep], np.asarray(out, dtype=float)


def _mean_boot(x: np.ndarray, n_boot: int, seed: int, level: float) -> Estimate:
    """Mean of ``x`` (NaN dropped) with a seeded percentile bootstrap over its entries."""
    x = x[np.isfinite(x)]
    if x.size < 2:
        return Estimate(float(x.mean()) if x.size else NAN.value, NAN.value, NAN.value)
    idx = np.random.default_rng(seed).integers(0, x.size, (n_boot, x.size))
    return percentile_ci(float(x.mean()), x[idx].mean(1), level)


def _head_band_metrics(
    out: Rows, hp: HeadProbe, bank: StatsBank, spec: AnalysisSpec, seed: int, n: int, data_bands: bool = True
) -> None:
    """Band concentration of every head's OV and QK maps (spectral.analysis.heads.head_band_concentration):
    in the centred W_U bands (K = the first of ``bands``) and, as the null of "W_U bands are special", in
    bands of the data's own principal directions at the head's input (resid_pre, same sizes). Per layer and
    pooled over every head of the model (bootstrap over heads); the OV difference is paired per head. A null
    member (``data_bands`` False) needs the W_U-band values only."""
    model = hp.model
    K = spec.bands[0]
    U = model.unembedding_basis(centred=True)
    sizes = [int(b.shape[1]) for b in split_bands(U, K)]
    pooled: dict[str, list[np.ndarray]] = {"ov": [], "qk": [], "ov_pc": [], "qk_pc": []}
    for layer in range(hp.L):
        conc = heads.head_band_concentration(model, layer, U, sizes, n)
        site = f"attn_out.{layer}"
        for name in ("ov", "qk"):
            pooled[name].append(conc[name])
            out.add(site, f"head_{name}_conc_k{K}", _mean_boot(conc[name], spec.n_boot, seed + layer, spec.ci_level))
        src = f"resid_pre.{layer}"
        if data_bands and src in bank.sites:
            m = bank[bank.aliases.get(src, src)].total()
            if spectrum.degenerate(m) is None:
                P = spectrum.principal_basis(spectrum.covariance(m))
                pc = heads.head_band_concentration(model, layer, P, sizes, n)
                for name in ("ov", "qk"):
                    pooled[f"{name}_pc"].append(pc[name])
    names = {"ov": f"head_ov_conc_k{K}", "qk": f"head_qk_conc_k{K}"}
    for key, arrs in pooled.items():
        if not arrs:
            continue
        metric = names[key[:2]] + ("_pcband" if key.endswith("_pc") else "")
        out.add("attn_out", metric, _mean_boot(np.concatenate(arrs), spec.n_boot, seed, spec.ci_level))
    if pooled["ov_pc"] and len(pooled["ov_pc"]) == len(pooled["ov"]):
        diff = np.concatenate(pooled["ov"]) - np.concatenate(pooled["ov_pc"])
        out.add("attn_out", f"head_ov_conc_k{K}_minus_pcband", _mean_boot(diff, spec.n_boot, seed, spec.ci_level))


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank, as Spearman's definition asks)."""
    return sps.rankdata(a, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))


def _rank_corr(recv: np.ndarray, tail: np.ndarray, pos: np.ndarray | None) -> np.ndarray:
    """Spearman of (received, tail) along the last axis; partial on position when ``pos`` is given."""
    rx, ry = _ranks(recv), _ranks(tail)
    r_xy = _pearson_rows(rx, ry)
    if pos is None:
        return r_xy
    rz = _ranks(pos)
    r_xz, r_yz = _pearson_rows(rx, rz), _pearson_rows(ry, rz)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz**2) * (1 - r_yz**2))


def _spearman_boot(arr: np.ndarray, spec: AnalysisSpec, seed: int, ci: bool = True, partial: bool = False) -> Estimate:
    """Spearman of (attention received, tail-band energy) over the rows of ``arr`` (window, received, tail,
    position), partial on position when asked; bootstrap over windows (the resampled tokens re-ranked, all
    resamples at once)."""
    win, recv, tail, pos = arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2], arr[:, 3]
    z = pos if partial else None
    value = float(_rank_corr(recv, tail, z))
    if not ci:
        return Estimate(value, float("nan"), float("nan"))
    ids = np.unique(win)
    groups = [np.nonzero(win == w)[0] for w in ids]
    rng = np.random.default_rng(seed)
    picks = [np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))]) for _ in range(200)]
    boot = []
    for size in sorted({len(p) for p in picks}):  # windows may differ in length: stack resamples of one size
        idx = np.stack([p for p in picks if len(p) == size])
        boot.append(_rank_corr(recv[idx], tail[idx], None if z is None else z[idx]))
    return percentile_ci(value, np.concatenate(boot), spec.ci_level)


def _depth_metrics(out: Rows, depth: DepthProbe, spec: AnalysisSpec, weights: np.ndarray) -> None:
    """Depth spectrum of the resid_post trajectory (spectral.depth): DC share and AC low-frequency share
    with its exact layer-permutation null; bootstrap over windows."""
    rows = depth.table().rows
    if rows.shape[0] != weights.shape[1]:
        weights = bootstrap_weights(rows.shape[0], spec.n_boot, 0)
    level = spec.ci_level
    out.add("resid_post", "depth_dc_share", ratio_bootstrap(rows[:, 0], rows.sum(1), weights, level))
    k = spectrum.lowfreq_bins(rows.shape[1], spec.lowfreq_share)
    low = ratio_bootstrap(rows[:, 1 : k + 1].sum(1), rows[:, 1:].sum(1), weights, level)
    out.add("resid_post", "depth_ac_lowfreq_share", low)
    null = spectrum.seq_ac_lowfreq_null(depth.L, spec.lowfreq_share)
    out.add("resid_post", "depth_ac_lowfreq_null", Estimate(null, null, null))


def _jacobian_metrics(out: Rows, bt: BandTransfer, spec: AnalysisSpec) -> None:
    """Off-diagonal share of the JVP band transfer per layer and over layers (spectral.analysis.jacobian),
    and the MLP's minus attention's on the same positions; jackknife over position groups."""
    K, level = len(bt.band_sizes), spec.ci_level
    name = f"jvp_offdiag_k{K}"
    for sub in ("attn_out", "mlp_out"):
        for layer in sorted(bt.energy[sub]):
            out.add(f"{sub}.{layer}", name, bt.interval(sub, level, layer))
        out.add(sub, name, bt.interval(sub, level))
    out.add("mlp_out", f"{name}_minus_attn", bt.interval("mlp_out", level, minus="attn_out"))


def _modulation_metrics(out: Rows, results: list[InterventionResult], spec: AnalysisSpec, seed: int) -> None:
    """Prediction 4 on the model's output: per edited layer the KL(clean ‖ edited) and ΔNLL of mean-ablating the
    carrier, the top centred principal direction and random directions (their mean); over the edited middle
    layers the paired contrasts ``out_kl_toppc_minus_carrier`` (bootstrap over windows, every layer resampled
    with the same windows) and ``out_kl_random_minus_carrier`` (windows and random directions resampled), and
    the share of random directions whose KL is below the carrier's (``out_kl_carrier_rank_random``)."""
    level = spec.ci_level
    by_layer: dict[str, dict[str, InterventionResult]] = {}
    for r in results:
        by_layer.setdefault(r.site, {})[r.target] = r
    kl_c, kl_t, kl_r, ranks = [], [], [], []
    w = np.zeros((0, 0))  # the bootstrap weights over windows, the same for every layer (made at the first)
    for site, res in by_layer.items():
        rnd = [r for t, r in res.items() if t.startswith("ablate_random")]
        if "ablate_carrier" not in res or "ablate_toppc" not in res or not rnd:
            continue
        for name in ("carrier", "toppc"):
            r = res[f"ablate_{name}"]
            if r.kl is not None:
                out.add(site, f"out_kl_ablate_{name}", r.kl)
            out.add(site, f"out_dnll_ablate_{name}", r.delta_nll)
        kr = np.stack([r.kl_windows for r in rnd if r.kl_windows is not None], 1)  # (windows, directions)
        dr = np.stack([r.dnll_windows for r in rnd if r.dnll_windows is not None], 1)
        if w.shape[1] != kr.shape[0]:
            w = bootstrap_weights(kr.shape[0], spec.n_boot, seed)
        out.add(site, "out_kl_ablate_random", percentile_ci(float(kr.mean()), (w @ kr.mean(1)) / kr.shape[0], level))
        out.add(site, "out_dnll_ablate_random", percentile_ci(float(dr.mean()), (w @ dr.mean(1)) / dr.shape[0], level))
        c, t = res["ablate_carrier"].kl_windows, res["ablate_toppc"].kl_windows
        assert c is not None and t is not None
        kl_c.append(c)
        kl_t.append(t)
        kl_r.append(kr)
        ranks.append(float((kr.mean(0) < c.mean()).mean()))
    if not kl_c:
        return
    C, T, R = np.stack(kl_c, 1), np.stack(kl_t, 1), np.stack(kl_r, 1)  # (windows, layers[, directions])
    nw, nd = C.shape[0], R.shape[2]
    out.add("resid_post", "out_kl_ablate_carrier_mid", percentile_ci(float(C.mean()), (w @ C.mean(1)) / nw, level))
    out.add("resid_post", "out_kl_ablate_toppc_mid", percentile_ci(float(T.mean()), (w @ T.mean(1)) / nw, level))
    diff = (T - C).mean(1)  # per window, mean over layers
    out.add("resid_post", "out_kl_toppc_minus_carrier", percentile_ci(float(diff.mean()), (w @ diff) / nw, level))
    # the random directions are a sample of the null distribution: resample them too (the same for every layer)
    rng = np.random.default_rng(seed + 404)
    pick = rng.integers(0, nd, (spec.n_boot, nd))
    per_dir = R.mean(1)  # (windows, directions)
    rnd_boot = np.stack([per_dir[:, p].mean(1) for p in pick])  # (boot, windows)
    cm = C.mean(1)
    boots = ((w * (rnd_boot - cm[None, :])).sum(1)) / nw
    out.add(
        "resid_post", "out_kl_random_minus_carrier", percentile_ci(float((per_dir.mean(1) - cm).mean()), boots, level)
    )
    out.add("resid_post", "out_kl_ablate_random_mid", Estimate(float(R.mean()), float("nan"), float("nan")))
    out.add("resid_post", "out_kl_carrier_rank_random", Estimate(float(np.mean(ranks)), float("nan"), float("nan")))


def _outlier_metrics(out: Rows, probe: OutlierProbe) -> None:
    """Extremes over the whole run at every site: no sampling interval (NaN bounds)."""
    for r in probe.rows():
        for metric, name in OUTLIER_METRICS.items():
            out.add(r.site, metric, Estimate(float(getattr(r, name)), float("nan"), float("nan")))


def _linearity_metrics(out: Rows, m: Measurement) -> None:
    """LLM-Microscope's linearity of each consecutive resid_post pair, at the later site (an in-sample fit: NaN
    bounds; read it beside its upward bias ≈ d/N)."""
    from spectral.analysis.linearity import cross_second, linearity_scores

    j = m.joint
    assert j is not None
    for x, y in j.pairs:
        mx, my = m.bank[x].total(), m.bank[y].total()
        sxy = cross_second(mx, my, j.cross[f"{x}>{y}"], j.centers[x], j.centers[y])
        for name, v in zip(
            ("layer_linearity", "layer_linearity_uncentred", "layer_linearity_update"),
            linearity_scores(mx, my, sxy),
            strict=True,
        ):
            out.add(y, name, Estimate(float(v), float("nan"), float("nan")))


def _tuned_lens_metrics(out: Rows, m: Measurement, spec: AnalysisSpec, seed: int) -> None:
    """The approximate tuned lens on its held-out windows: KL, entropy, accuracy, and the logit lens's KL minus the
    tuned lens's on the very same tokens (paired: the logit lens samples the same positions)."""
    assert m.tuned is not None and m.tuned_table is not None
    windows, table = m.tuned_table
    if len(windows) == 0:
        return
    w = bootstrap_weights(len(windows), spec.n_boot, seed + 77)
    level = spec.ci_level
    col = {c: i for i, c in enumerate(TUNED_COLUMNS)}
    lens = m.lens.table() if m.lens is not None else None
    for i, site in enumerate(m.tuned.sites):
        count = table[:, i, col["count"]]
        out.add(site, "tuned_lens_kl", ratio_bootstrap(table[:, i, col["kl_sum"]], count, w, level))
        out.add(site, "tuned_lens_entropy", ratio_bootstrap(table[:, i, col["entropy_sum"]], count, w, level))
        out.add(site, "tuned_lens_acc", ratio_bootstrap(table[:, i, col["correct"]], count, w, level))
        if lens is None or site not in lens.sites:
            continue
        where = np.searchsorted(lens.index, windows)
        if (
            not (where < len(lens.index)).all()
            or not (lens.index[np.minimum(where, len(lens.index) - 1)] == windows).all()
        ):
            continue
        logit_kl = lens.column(site, "kl_sum")[where]
        if not np.isfinite(logit_kl).all() or not np.allclose(lens.column(site, "count")[where], count):
            continue
        out.add(site, "tuned_lens_kl_gain", ratio_bootstrap(logit_kl - table[:, i, col["kl_sum"]], count, w, level))


def battery_metrics(
    model: str, m: Measurement, spec: AnalysisSpec, seed: int, resonance_k: int, light: bool = False
) -> list[MetricRow]:
    """All battery metrics of one condition; ``light`` (a null member): the sequence-spectrum slope and
    the heads' effective rank and sink correlation only."""
    out = Rows(model, m.condition)
    idx = m.bank[m.bank.sites[0]].window_table().index
    weights = bootstrap_weights(len(idx), spec.n_boot, seed)
    if not light:
        _site_metrics(out, m, spec, weights)
    resid = [s for s in m.bank.sites if s.startswith("resid_post.") and m.bank[s].spectrum is not None]
    if len(resid) >= 2:
        low = partial(spectrum.seq_ac_lowfreq_share, share=spec.lowfreq_share)
        layers = [float(site_layer(s) or 0) for s in resid]
        est = spectrum.spectrum_slope_jackknife([m.bank[s] for s in resid], layers, low, spec.ci_level)
        out.add("resid_post", "seq_ac_lowfreq_slope", est)
    if not light:
        _self_similarity(out, m, spec, seed)
    if m.lens is not None:
        _lens_metrics(out, m.lens, spec, seed, resonance_k)
    if m.heads is not None:
        _head_metrics(out, m.heads, spec, seed, full_battery=not light)
        if m.bands:
            _head_band_metrics(out, m.heads, m.bank, spec, seed, resonance_k, data_bands=not light)
    if m.depth is not None:
        _depth_metrics(out, m.depth, spec, weights)
    if m.jacobian is not None:
        _jacobian_metrics(out, m.jacobian, spec)
    if m.modulation:
        _modulation_metrics(out, m.modulation, spec, seed)
    if m.outliers is not None:
        _outlier_metrics(out, m.outliers)
    if m.joint is not None and m.joint.pairs:
        _linearity_metrics(out, m)
    if m.tuned is not None and m.tuned_table is not None:
        _tuned_lens_metrics(out, m, spec, seed)
    for res in m.interventions:
        out.add(res.site, f"dnll_{res.target}", res.delta_nll)
        if res.kl is not None:
            out.add(res.site, f"kl_{res.target}", res.kl)
    return out.rows
