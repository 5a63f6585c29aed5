"""The ten predictions (ARCHITECTURE.md section 1) evaluated from metrics.csv -> verdicts.csv.

Each verdict is computed from measured rows, thresholds from ``[verdicts]`` in the config, and
the controls (R: random weights, S: shuffled tokens, P: permuted positions). ``n/a`` is given only
where a prediction cannot apply (post-LN norm pinning, no LM head, control not run) and says why.
Averages over the "middle" layers carry the average of the per-layer CI bounds (conservative for
positively correlated layers); this is stated in the report.
"""

import csv
import io
import math
from dataclasses import astuple, dataclass

import numpy as np

from spectral.analysis.metrics import MetricRow, MetricTable
from spectral.config import AnalysisSpec, VerdictSpec

VERDICT_COLUMNS = (
    "prediction",
    "status",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "control_value",
    "threshold",
    "note",
)
NAN = float("nan")


@dataclass(frozen=True)
class Verdict:
    """One line of verdicts.csv."""

    prediction: str
    status: str  # pass | fail | n/a
    statistic: str
    value: float
    ci_low: float
    ci_high: float
    control_value: float
    threshold: float
    note: str


def verdicts_csv(verdicts: list[Verdict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(VERDICT_COLUMNS)
    for v in verdicts:
        w.writerow([f"{x:.6g}" if isinstance(x, float) else x for x in astuple(v)])
    return buf.getvalue()


def read_verdicts(text: str) -> list[Verdict]:
    out = []
    for d in csv.DictReader(io.StringIO(text)):
        v, lo, hi, ctrl, thr = (float(d[k]) if d[k] not in ("", "nan") else NAN for k in VERDICT_COLUMNS[3:8])
        out.append(Verdict(d["prediction"], d["status"], d["statistic"], v, lo, hi, ctrl, thr, d["note"]))
    return out


def middle_layers(n_layers: int, spec: VerdictSpec) -> list[int]:
    lo, hi = spec.middle_from * (n_layers - 1), spec.middle_to * (n_layers - 1)
    layers = [layer for layer in range(n_layers) if lo - 1e-9 <= layer <= hi + 1e-9]
    return layers or [n_layers // 2]


class _Agg:
    """Averages of metric rows over layers for one condition."""

    def __init__(self, table: MetricTable, condition: str) -> None:
        self.t, self.c = table, condition

    def rows(self, kind: str, metric: str, layers: list[int] | None = None) -> list[MetricRow]:
        rows = [r for r in self.t.series(self.c, kind, metric) if layers is None or r.layer in layers]
        return [r for r in rows if math.isfinite(r.value)]

    def mean(self, kind: str, metric: str, layers: list[int] | None = None) -> tuple[float, float, float]:
        rows = self.rows(kind, metric, layers)
        if not rows:
            return NAN, NAN, NAN
        return tuple(float(np.nanmean([getattr(r, a) for r in rows])) for a in ("value", "ci_low", "ci_high"))  # type: ignore[return-value]

    def one(self, site: str, metric: str) -> tuple[float, float, float]:
        r = self.t.get(self.c, site, metric)
        return (r.value, r.ci_low, r.ci_high) if r is not None else (NAN, NAN, NAN)


def evaluate(table: MetricTable, arch: dict, spec: VerdictSpec, analysis: AnalysisSpec) -> list[Verdict]:
    """All ten verdicts."""
    conds = set(table.conditions())
    T = _Agg(table, "trained")
    R = _Agg(table, "random_init") if "random_init" in conds else None
    S = _Agg(table, "shuffled") if "shuffled" in conds else None
    L = int(arch["n_layers"])
    mid = middle_layers(L, spec)
    post_ln = arch["norm_placement"] == "post"
    lm = bool(arch["has_unembedding"]) and bool(arch.get("is_causal", True))
    K = analysis.bands[0]
    out: list[Verdict] = []

    def add(p, status, stat, vals, control, thr, note):
        out.append(Verdict(p, status, stat, vals[0], vals[1], vals[2], control, thr, note))

    def decide(ok: bool) -> str:
        return "pass" if ok else "fail"

    # 1. norm growth is learned
    g, gR = T.one("resid_post", "growth_rate"), (R.one("resid_post", "growth_rate") if R else (NAN,) * 3)
    if post_ln:
        add(
            "1 norm growth is learned",
            "n/a",
            "growth_rate",
            g,
            gR[0],
            NAN,
            "post-LN: every block ends in a LayerNorm, so the residual norm cannot grow",
        )
    elif R is None:
        add("1 norm growth is learned", "n/a", "growth_rate", g, NAN, NAN, "control R (random_init) not run")
    else:
        add(
            "1 norm growth is learned",
            decide(g[1] > gR[2]),
            "growth_rate",
            g,
            gR[0],
            gR[2],
            f"g per layer, trained CI low {g[1]:.4f} vs random-weight CI high {gR[2]:.4f}",
        )

    # 2. a carrier exists
    rho = T.mean("resid_post", "carrier_energy", mid)
    vals = [r.value for r in T.rows("resid_post", "carrier_energy", mid)]
    spread = max(vals) - min(vals) if vals else NAN
    rhoR = R.mean("resid_post", "carrier_energy", mid) if R else (NAN,) * 3
    ok = rho[1] > spec.carrier_min and spread <= spec.carrier_spread_max and (R is None or rho[1] > rhoR[2])
    add(
        "2 a carrier exists",
        decide(ok),
        f"carrier_energy mean over layers {mid}",
        rho,
        rhoR[0],
        spec.carrier_min,
        f"spread {spread:.3f} (max {spec.carrier_spread_max}); random-weight mean {rhoR[0]:.3f}",
    )

    # 3. not just rogue dimensions, massive activations or sinks
    rob = T.mean("resid_post", "carrier_energy_robust", mid)
    robR = R.mean("resid_post", "carrier_energy_robust", mid) if R else (NAN,) * 3
    parts = {
        n: T.mean("resid_post", n, mid)[0]
        for n in ("carrier_energy_zscored", f"carrier_energy_norogue{analysis.rogue_k}", "carrier_energy_nosink")
    }
    add(
        "3 carrier is not rogue dimensions or sinks",
        decide(rob[1] > spec.robust_carrier_min),
        "carrier_energy_robust (z-scored, top rogue dims and sinks removed)",
        rob,
        robR[0],
        spec.robust_carrier_min,
        "; ".join(f"{k} {v:.3f}" for k, v in parts.items()),
    )

    # 4. modulation carries content
    last = f"resid_post.{L - 1}"
    full, mod = T.one(last, "logit_lens_acc"), T.one(last, "modulation_lens_acc")
    if not lm:
        add(
            "4 modulation carries content",
            "n/a",
            "modulation_lens_acc / logit_lens_acc",
            (NAN,) * 3,
            NAN,
            spec.modulation_keep,
            "no trained causal LM head in the checkpoint: no logit lens",
        )
    else:
        ratio = (mod[0] / full[0], mod[1] / full[0], mod[2] / full[0]) if full[0] > 0 else (NAN,) * 3
        r_full = R.one(last, "logit_lens_acc")[0] if R else NAN
        ctrl = R.one(last, "modulation_lens_acc")[0] / r_full if R and r_full > 0 else NAN  # R may predict nothing
        add(
            "4 modulation carries content",
            decide(ratio[0] >= spec.modulation_keep),
            f"modulation_lens_acc / logit_lens_acc at {last}",
            ratio,
            ctrl,
            spec.modulation_keep,
            f"next-token accuracy with the carrier removed {mod[0]:.3f} vs full {full[0]:.3f}",
        )

    # 5. direction kept while the norm grows
    cos, ratio_n = T.mean("resid_post", "layer_cos", mid), T.mean("resid_post", "norm_ratio", mid)
    cosR = R.mean("resid_post", "layer_cos", mid) if R else (NAN,) * 3
    if post_ln:
        add(
            "5 direction kept while norm grows",
            "n/a",
            "layer_cos",
            cos,
            cosR[0],
            spec.layer_cos_min,
            "post-LN: the norm is reset by LayerNorm after every block",
        )
    else:
        ok = cos[0] > spec.layer_cos_min and ratio_n[0] > spec.norm_ratio_min and (R is None or cos[1] > cosR[2])
        add(
            "5 direction kept while norm grows",
            decide(ok),
            f"layer_cos mean over layers {mid}",
            cos,
            cosR[0],
            spec.layer_cos_min,
            f"norm_ratio {ratio_n[0]:.3f} (threshold {spec.norm_ratio_min}); random-weight layer_cos {cosR[0]:.3f}",
        )

    # 6. attention selects channels
    rank = T.mean("attn_out", "head_eff_rank_frac")
    ov, null = T.mean("attn_out", "head_overlap"), T.mean("attn_out", "head_overlap_null")
    ok = rank[0] < spec.head_rank_frac_max and ov[2] < null[1]
    if not math.isfinite(rank[0]):
        add(
            "6 attention selects channels",
            "n/a",
            "head_eff_rank_frac (mean over layers)",
            (NAN,) * 3,
            NAN,
            spec.head_rank_frac_max,
            "no per-head outputs in this run (they need capture.backend = 'bridge')",
        )
    else:
        add(
            "6 attention selects channels",
            decide(ok),
            "head_eff_rank_frac (mean over layers)",
            rank,
            R.mean("attn_out", "head_eff_rank_frac")[0] if R else NAN,
            spec.head_rank_frac_max,
            f"head subspace overlap {ov[0]:.3f} [{ov[1]:.3f}, {ov[2]:.3f}] vs random "
            f"subspaces {null[0]:.3f} [{null[1]:.3f}, {null[2]:.3f}]",
        )

    # 7. the MLP mixes bands more than attention
    mlp, att = T.mean("mlp_out", f"band_offdiag_k{K}"), T.mean("attn_out", f"band_offdiag_k{K}")
    if not math.isfinite(mlp[0]) or not math.isfinite(att[0]):
        why = (
            "no trained unembedding: no W_U bands"
            if not arch.get("has_unembedding")
            else "needs the attn_out and mlp_out sites with their inputs (capture them on the bridge backend)"
        )
        add("7 the MLP mixes", "n/a", f"band_offdiag_k{K}", (NAN,) * 3, NAN, 0.0, why)
    else:
        diff = (mlp[0] - att[0], mlp[1] - att[2], mlp[2] - att[1])
        diffR = R.mean("mlp_out", f"band_offdiag_k{K}")[0] - R.mean("attn_out", f"band_offdiag_k{K}")[0] if R else NAN
        add(
            "7 the MLP mixes",
            decide(diff[1] > 0),
            f"band_offdiag_k{K} mlp_out minus attn_out",
            diff,
            diffR,
            0.0,
            f"off-diagonal band transfer: MLP {mlp[0]:.3f}, attention {att[0]:.3f}; control: the same difference "
            "for random weights",
        )

    # 8. dark-band sink
    sp = T.mean("resid_pre", "attn_tail_spearman")
    if not math.isfinite(sp[0]):
        add(
            "8 dark-band sink",
            "n/a",
            "attn_tail_spearman",
            (NAN,) * 3,
            NAN,
            0.0,
            "no trained unembedding: no tail band",
        )
    else:
        spR = R.mean("resid_pre", "attn_tail_spearman")[0] if R else NAN
        add(
            "8 dark-band sink",
            decide(sp[1] > 0),
            "attn_tail_spearman (mean over layers)",
            sp,
            spR,
            0.0,
            "Spearman of attention received vs tail-band energy; position 0 excluded",
        )

    # 9. low-pass along the sequence
    sl = T.one("resid_post", "dc_fraction_slope")
    slR = R.one("resid_post", "dc_fraction_slope") if R else (NAN,) * 3
    slS = S.one("resid_post", "dc_fraction_slope") if S else (NAN,) * 3
    if R is None or S is None:
        add("9 low-pass along the sequence", "n/a", "dc_fraction_slope", sl, NAN, 0.0, "needs controls R and S")
    else:
        ok = sl[1] > 0 and sl[0] > slR[2] and sl[0] > slS[2]
        add(
            "9 low-pass along the sequence",
            decide(ok),
            "dc_fraction_slope per layer",
            sl,
            max(slR[0], slS[0]),
            0.0,
            f"random weights {slR[0]:.4f}, shuffled tokens {slS[0]:.4f}",
        )

    # 10. resonance
    n = spec.resonance_top_bands
    share = T.one("final", f"band_margin_top{n}_share_k{K}")
    if not lm:
        add(
            "10 resonance",
            "n/a",
            f"band_margin_top{n}_share_k{K}",
            (NAN,) * 3,
            NAN,
            spec.resonance_share_min,
            "no trained causal LM head in the checkpoint",
        )
    else:
        shR = R.one("final", f"band_margin_top{n}_share_k{K}")[0] if R else NAN
        add(
            "10 resonance",
            decide(share[1] > spec.resonance_share_min),
            f"band_margin_top{n}_share_k{K}",
            share,
            shR,
            spec.resonance_share_min,
            f"share of the final top-1 logit margin in the top {n} of {K} W_U bands",
        )
    return out
