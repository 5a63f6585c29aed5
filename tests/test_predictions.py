"""The eleven predictions decided from planted evidence: each driven to supported, to contradicted and
(with a signal too weak for its interval) to inconclusive, every n/a reason checked, Holm's correction
and the verdicts.csv round trip. The evidence is planted as metric rows of every condition (trained,
five R seeds, W, S): the decision logic is tested apart from the measurements that feed it."""

import dataclasses
import math

import numpy as np
import pytest

from spectral.analysis.metrics import MetricRow, MetricTable
from spectral.config import AnalysisSpec, VerdictSpec
from spectral.predictions import PREDICTIONS, VERDICT_COLUMNS, evaluate, middle_layers, read_verdicts, verdicts_csv
from spectral.predictions.channels import isotropic_offdiag
from spectral.predictions.decision import Interval, apply_holm, ensemble_null, holm, outcome_of, p_above

L, D = 8, 64
ARCH = {"n_layers": L, "d_model": D, "norm_placement": "pre", "has_unembedding": True, "is_causal": True}
SEEDS = range(1, 6)
CHANCE = isotropic_offdiag(D, 10)

# per statistic: (where, per-layer?, trained value if the effect is there, null value, sign of the effect)
# "null" is what the R seeds and W show (or, for in-run nulls, the quantity the effect is measured against)
PLANT = {
    "growth_rate": ("resid_post", False, 1.10, 1.02),
    "carrier_energy": ("resid_post", True, 0.80, 0.30),
    "carrier_drift": ("resid_post", True, 0.99, 0.60),
    "head_ov_conc_k10": ("attn_out", False, 0.60, 0.20),  # pooled over every head of the model
    "head_qk_conc_k10": ("attn_out", False, 0.55, 0.20),
    "attn_tail_partial_spearman": ("resid_pre", True, 0.60, 0.0),
    "sink_tail_share_excess": ("resid_pre", False, 0.30, 0.0),
    "seq_ac_lowfreq_slope": ("resid_post", False, 0.02, 0.0),
    "carrier_minus_modulation_growth": ("resid_post", False, 0.05, 0.0),
}


def _row(cond, site, metric, v, hw):
    layer = int(site.split(".")[1]) if "." in site else None
    return MetricRow("m", cond, site, layer, metric, v, v - hw, v + hw)


def _put(rows, cond, where, per_layer, metric, v, hw):
    sites = [f"{where}.{layer}" for layer in range(L)] if per_layer else [where]
    rows += [_row(cond, s, metric, v, hw) for s in sites]


def world(mode: str, skip: tuple[str, ...] = ()) -> MetricTable:
    """Evidence where every prediction holds ("strong"), is reversed ("reversed"), or is there but too
    weak for its interval ("weak": half the effect, intervals ten times wider than it)."""
    k = {"strong": 1.0, "reversed": -1.0, "weak": 0.5}[mode]
    hw = 0.002 if mode != "weak" else 5.0
    rows: list[MetricRow] = []
    for metric, (where, per_layer, t, n) in PLANT.items():
        _put(rows, "trained", where, per_layer, metric, n + k * (t - n), hw)
        for s in SEEDS:  # the R ensemble: a small between-seed spread
            _put(rows, f"random_init.s{s}", where, per_layer, metric, n + 0.001 * (s - 3), 0.002)
        _put(rows, "permuted_weights", where, per_layer, metric, n, 0.002)
    _put(rows, "trained", "resid_post", False, "growth_r2", 0.97, 0)
    _put(rows, "trained", "resid_post", False, "growth_max_layer_share", 0.2, 0)
    _put(rows, "trained", "resid_post", False, "carrier_growth_rate", 1.1, 0)
    _put(rows, "trained", "resid_post", False, "modulation_growth_rate", 1.05, 0)
    # in-run nulls: the planted effect is the paired difference or the distance from an exact null
    keep = 0.0 if k > 0 else -0.5  # what the robustness steps cost the carrier
    for m in ("carrier_keep_zscored", "carrier_keep_norogue3", "carrier_keep_nosink"):
        _put(rows, "trained", "resid_post", True, m, keep if mode != "weak" else -0.1, hw)
    # the output's KL with the carrier / top PC / random directions mean-ablated, and the paired differences
    kc, kt, kr = (0.01, 0.50, 0.05) if k > 0 else (0.60, 0.50, 0.05)
    weak = mode == "weak"
    for name, v in (("carrier", kc), ("toppc", kt), ("random", kr)):
        _put(rows, "trained", "resid_post", False, f"out_kl_ablate_{name}_mid", v, hw)
    _put(rows, "trained", "resid_post", False, "out_kl_toppc_minus_carrier", 0.01 if weak else kt - kc, hw)
    _put(rows, "trained", "resid_post", False, "out_kl_random_minus_carrier", -0.005 if weak else kr - kc, hw)
    _put(rows, "trained", "resid_post", True, "update_cos_stream", 0.3 * k, hw)
    for s in SEEDS:  # R's updates: as aligned as random directions; R's MLPs: near the isotropic chance
        _put(rows, f"random_init.s{s}", "resid_post", True, "update_cos_stream", 0.001 * (s - 3), 0.002)
        _put(rows, f"random_init.s{s}", "mlp_out", False, "jvp_offdiag_k10", CHANCE + 0.001 * (s - 3), 0.002)
    _put(rows, "trained", "resid_post", True, "update_cos_carrier", 0.2 * k, hw)
    _put(rows, "trained", "resid_post", True, "norm_ratio", 1.0 + 0.1 * k, hw)
    _put(rows, "trained", "mlp_out", True, "band_offdiag_k10", CHANCE + 0.05 * k, hw)
    # the heads' OV concentration in the data's own PC bands, and the paired difference per head
    _put(rows, "trained", "attn_out", False, "head_ov_conc_k10_pcband", 0.3, hw)
    _put(rows, "trained", "attn_out", False, "head_ov_conc_k10_minus_pcband", 0.3 * k, hw)
    # the JVP transfer: the MLP's off-diagonal share against chance and against attention's (paired)
    _put(rows, "trained", "mlp_out", False, "jvp_offdiag_k10", CHANCE + 0.05 * k, hw)
    _put(rows, "trained", "attn_out", False, "jvp_offdiag_k10", CHANCE - 0.05 * k, hw)
    _put(rows, "trained", "mlp_out", False, "jvp_offdiag_k10_minus_attn", 0.1 * k, hw)
    _put(rows, "trained", "resid_post", True, "seq_ac_lowfreq_null", 0.1, 0)
    _put(rows, "trained", "resid_post", True, "seq_ac_lowfreq_share", 0.1 + 0.3 * k, hw)
    _put(rows, "shuffled", "resid_post", True, "seq_ac_lowfreq_share", 0.12, hw)
    # prediction 10's bounded per-token share: the excess over the rotated-h null at the final site and per layer
    ex = {"strong": 0.5, "reversed": -0.15, "weak": 0.25}[mode]
    m10 = "cband_margin_abs_top2_share_k10"
    _put(rows, "trained", "final", False, m10, 0.2 + ex, hw)
    _put(rows, "trained", "final", False, f"{m10}_rotnull", 0.2, hw)
    for s in SEEDS:  # R's own share (a random model's embeddings may already align h with W_U)
        _put(rows, f"random_init.s{s}", "final", False, m10, 0.2 + 0.001 * (s - 3), 0.002)
    _put(rows, "trained", "final", False, f"{m10}_excess", ex, hw)
    _put(rows, "trained", "final", False, "cband_margin_top2_share_k10", 0.2 + ex, hw)  # the signed sum: reported
    for layer in range(L):  # the per-layer excess over the rotated-h null rises (falls) with depth
        _put(rows, "trained", f"resid_post.{layer}", False, f"{m10}_excess", 0.05 * k * layer / L, hw)
    _put(rows, "trained", "resid_post", False, f"{m10}_excess_slope", 0.05 * k, hw)
    return MetricTable(tuple(r for r in rows if r.metric not in skip and r.condition not in skip))


def outcomes(table: MetricTable, arch=ARCH, spec: VerdictSpec | None = None) -> dict[str, object]:
    return {v.prediction.split()[0]: v for v in evaluate(table, arch, spec or VerdictSpec(), AnalysisSpec())}


@pytest.mark.parametrize(
    "mode,expected", [("strong", "supported"), ("reversed", "contradicted"), ("weak", "inconclusive")]
)
def test_every_prediction_reaches_each_outcome(mode, expected):
    got = outcomes(world(mode))
    assert len(got) == 11 == len(PREDICTIONS)
    # prediction 3 is n/a where prediction 2 is not supported: without a carrier there is nothing to keep
    want = {k: ("n/a" if k == "3" and expected != "supported" else expected) for k in got}
    wrong = {k: (v.outcome, v.note) for k, v in got.items() if v.outcome != want[k]}  # type: ignore[attr-defined]
    assert not wrong, wrong
    for key, v in got.items():
        if key == "3" and expected != "supported":
            assert "prediction 2 is" in v.note  # type: ignore[attr-defined]
            continue
        assert math.isfinite(v.effect) and v.effect_ci_low <= v.effect <= v.effect_ci_high  # type: ignore[attr-defined]
        assert "null: " in v.note and v.note.split(";")[0].endswith(  # type: ignore[attr-defined]
            ("inconclusive (no power)", "→ inconclusive") if mode == "weak" else f"→ {expected}"
        ), v.note  # type: ignore[attr-defined]
        assert math.isfinite(v.power) or v.power == math.inf  # type: ignore[attr-defined]
        if expected in ("supported", "contradicted"):
            assert v.p_holm < 0.05  # type: ignore[attr-defined]
        if expected == "supported":
            assert v.effect_ci_low > v.margin  # type: ignore[attr-defined]
        if mode == "weak" and math.isfinite(v.power):  # intervals wider than the reachable effect: no power
            assert v.note.startswith("no power"), v.note  # type: ignore[attr-defined]


def test_rogue_carrier_is_contradicted_where_a_carrier_exists():
    """Prediction 3 with a carrier (P2 supported) that every robustness step costs half of ρ: contradicted."""
    rows = [r for r in world("strong").rows if not r.metric.startswith("carrier_keep")]
    for m in ("carrier_keep_zscored", "carrier_keep_norogue3", "carrier_keep_nosink"):
        _put(rows, "trained", "resid_post", True, m, -0.4, 0.002)
    v = outcomes(MetricTable(tuple(rows)))["3"]
    assert v.outcome == "contradicted" and v.margin == pytest.approx(-0.1 * 0.8)  # type: ignore[attr-defined]


def test_contradicted_needs_power():
    """An effect reliably below δ is not "contradicted" where even the largest reachable effect could not clear δ:
    prediction 4 with a top-PC edit that barely changes the output (KL 0.005 < δ 0.01) is inconclusive, no power."""
    rows = [r for r in world("reversed").rows if not r.metric.startswith("out_kl")]
    for name, v in (("carrier", 0.004), ("toppc", 0.005), ("random", 0.004)):
        _put(rows, "trained", "resid_post", False, f"out_kl_ablate_{name}_mid", v, 0.0005)
    _put(rows, "trained", "resid_post", False, "out_kl_toppc_minus_carrier", 0.001, 0.0005)
    _put(rows, "trained", "resid_post", False, "out_kl_random_minus_carrier", 0.0, 0.0005)
    v = outcomes(MetricTable(tuple(rows)))["4"]
    assert v.outcome == "inconclusive" and v.note.startswith("no power") and v.power == pytest.approx(0.005)  # type: ignore[attr-defined]


def test_a_subtest_without_power_is_reported_not_decided():
    """Prediction 2 with its drift against W at the ceiling (W's drift 1 − 5e-5: no effect can clear δ by an interval's
    width) and every other test supported, the drift against R among them: supported, the blind null of the drift
    named in the note as not decided on (test_contradicted_needs_power: a statistic tested only blind decides)."""
    rows = [r for r in world("strong").rows if not (r.condition == "permuted_weights" and r.metric == "carrier_drift")]
    _put(rows, "permuted_weights", "resid_post", True, "carrier_drift", 1 - 5e-5, 5e-5)
    v = outcomes(MetricTable(tuple(rows)))["2"]
    assert v.outcome == "supported", v.note  # type: ignore[attr-defined]
    assert "(blind beside another null of this statistic: reported, not decided on)" in v.note  # type: ignore[attr-defined]


def test_subtests_name_their_null_and_never_read_as_the_outcome():
    """Every sub-test in a note is labelled "sub-test", names its null ("against ...") and states its own rule; the
    bare words of another outcome appear only inside such a labelled sub-test."""
    for mode in ("strong", "reversed", "weak"):
        for v in evaluate(world(mode), ARCH, VerdictSpec(), AnalysisSpec()):
            if v.outcome == "n/a":
                continue
            parts = v.note.split("; ")
            for part in parts[1:]:
                for word in ("supported", "contradicted"):
                    if word in part and word != v.outcome:
                        assert part.startswith("sub-test ") and " against " in part, (v.prediction, part)


def test_not_applicable_reasons():
    post = outcomes(world("strong"), dict(ARCH, norm_placement="post"))
    for k in ("1", "5", "7", "11"):
        assert post[k].outcome == "n/a" and "post-LN" in post[k].note  # type: ignore[attr-defined]
    assert post["2"].outcome == "supported"  # type: ignore[attr-defined]
    no_head = outcomes(world("strong"), dict(ARCH, has_unembedding=False, is_causal=True))
    for k, why in (("4", "LM head"), ("6", "unembedding"), ("7", "unembedding"), ("8", "tail band"), ("10", "LM head")):
        assert no_head[k].outcome == "n/a" and why in no_head[k].note, k  # type: ignore[attr-defined]
    nulls = tuple(f"random_init.s{s}" for s in SEEDS) + ("permuted_weights",)
    bare = outcomes(world("strong", skip=nulls))
    assert bare["1"].outcome == "n/a" and "random-weight ensemble R" in bare["1"].note  # type: ignore[attr-defined]
    assert bare["2"].outcome == "n/a" and "none was run" in bare["2"].note  # type: ignore[attr-defined]
    for k in ("6", "8"):
        assert bare[k].outcome == "n/a" and "random-weight ensemble R" in bare[k].note  # type: ignore[attr-defined]
    no_jvp = outcomes(world("strong", skip=("jvp_offdiag_k10", "jvp_offdiag_k10_minus_attn")))
    assert no_jvp["7"].outcome == "n/a" and "jvp_offdiag" in no_jvp["7"].note  # type: ignore[attr-defined]
    missing = outcomes(world("strong", skip=("cband_margin_abs_top2_share_k10",)))
    assert missing["10"].outcome == "n/a" and "did not measure" in missing["10"].note  # type: ignore[attr-defined]


def test_resonance_without_a_rise_with_depth_is_contradicted():
    """Prediction 10 has two parts: a final share above the rotated-h null is not enough when the per-layer
    excess falls with depth; without the per-layer slope (an older run) the final share decides alone."""
    slope = "cband_margin_abs_top2_share_k10_excess_slope"
    rows = [r for r in world("strong").rows if r.metric != slope]
    flat = rows + [MetricRow("m", "trained", "resid_post", None, slope, -0.03, -0.04, -0.02)]
    v = outcomes(MetricTable(tuple(flat)))["10"]
    assert v.outcome == "contradicted" and v.statistic.endswith("_excess_slope (per layer)")  # type: ignore[attr-defined]
    assert "rotated-h null is flat" in v.note  # type: ignore[attr-defined]
    older = outcomes(MetricTable(tuple(rows)))["10"]
    assert older.outcome == "supported" and older.statistic == "cband_margin_abs_top2_share_k10"  # type: ignore[attr-defined]


def test_unsteady_growth_is_contradicted_even_when_g_beats_the_nulls():
    rows = [r for r in world("strong").rows if r.metric != "growth_max_layer_share"]
    rows.append(MetricRow("m", "trained", "resid_post", None, "growth_max_layer_share", 0.9, 0.9, 0.9))
    v = outcomes(MetricTable(tuple(rows)))["1"]
    assert v.outcome == "contradicted" and "largest layer share 0.900" in v.note  # type: ignore[attr-defined]


def test_one_seed_uses_its_own_interval_and_says_so():
    drop = tuple(f"random_init.s{s}" for s in (2, 3, 4, 5)) + ("permuted_weights",)
    v = outcomes(world("strong", skip=drop))["1"]
    assert v.outcome == "supported" and "1 seed" in v.note  # type: ignore[attr-defined]


def test_margins_live_in_the_config():
    strict = VerdictSpec(carrier_margin=0.6)  # the planted ρ effect is 0.5
    v = outcomes(world("strong"), spec=strict)["2"]
    assert v.outcome == "contradicted" and v.margin == 0.6  # type: ignore[attr-defined]


def test_ensemble_null_is_a_prediction_interval_and_effects_add_in_quadrature():
    null = ensemble_null([1.0, 1.1, 0.9, 1.05, 0.95], 0.95, "R")
    sd = float(np.std([1.0, 1.1, 0.9, 1.05, 0.95], ddof=1))
    from scipy import stats

    hw = stats.t.ppf(0.975, 4) * sd * math.sqrt(1 + 1 / 5)
    assert null.interval.value == pytest.approx(1.0) and null.interval.high - 1.0 == pytest.approx(hw)
    assert "5 seeds" in null.name
    assert outcome_of(Interval(0.5, 0.1, 0.9), 0.0) == "supported"
    assert outcome_of(Interval(0.5, -0.1, 0.9), 0.0) == "inconclusive"
    assert outcome_of(Interval(0.02, -0.03, 0.04), 0.05) == "contradicted"  # inside the equivalence band
    assert p_above(Interval(0.0, -1.96, 1.96), 0.0, 0.95) == pytest.approx(0.5)
    assert p_above(Interval(1.96, 0.0, 3.92), 0.0, 0.95) == pytest.approx(0.025, rel=1e-3)


def test_holm():
    adj = holm([0.01, 0.04, float("nan"), 0.03])
    assert adj[0] == pytest.approx(0.03) and adj[3] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06)
    assert math.isnan(adj[2])


def test_holm_turns_a_lone_ci_pass_into_inconclusive():
    """Eleven supported outcomes at p = 0.02 each: every interval clears its margin, Holm does not."""
    verdicts = evaluate(world("strong"), ARCH, VerdictSpec(), AnalysisSpec())
    planted = [dataclasses.replace(v, p_value=0.02, p_holm=float("nan")) for v in verdicts]
    adjusted = apply_holm(planted, 0.05)
    assert all(v.outcome == "inconclusive" and "not after Holm" in v.note for v in adjusted)
    assert all(v.p_holm == pytest.approx(0.22) for v in adjusted)
    one = apply_holm([planted[0]], 0.05)[0]  # a single test keeps its outcome
    assert one.outcome == "supported" and one.p_holm == pytest.approx(0.02)


def test_csv_roundtrip_and_middle_layers():
    verdicts = evaluate(world("strong"), ARCH, VerdictSpec(), AnalysisSpec())
    text = verdicts_csv(verdicts)
    assert text.splitlines()[0] == ",".join(VERDICT_COLUMNS)
    back = read_verdicts(text)
    assert [b.outcome for b in back] == [v.outcome for v in verdicts]
    assert [b.effect for b in back] == pytest.approx([v.effect for v in verdicts], rel=1e-5)
    assert middle_layers(5, VerdictSpec()) == [1, 2, 3]
    assert middle_layers(6, VerdictSpec()) == [2, 3]


def test_sensitivity_table_varies_the_rogue_share():
    """The rogue-share variant reads carrier_keep_norogue{k} for k = 4 × the share of d, and reports a flip
    when removing that many rogue dimensions costs the carrier (d = 1024: k 5 in the run, 20 in the variant)."""
    import csv
    import io

    from spectral.predictions import sensitivity_csv

    rows = [dataclasses.replace(r, metric="carrier_keep_norogue5") if r.metric == "carrier_keep_norogue3" else r
            for r in world("strong").rows]  # fmt: skip
    costly = [dataclasses.replace(r, metric="carrier_keep_norogue20", value=-0.5, ci_low=-0.51, ci_high=-0.49)
              for r in rows if r.metric == "carrier_keep_norogue5"]  # fmt: skip
    arch = dict(ARCH, d_model=1024)
    table = list(
        csv.DictReader(
            io.StringIO(sensitivity_csv(MetricTable(tuple(rows + costly)), arch, VerdictSpec(), AnalysisSpec()))
        )
    )
    p3 = next(r for r in table if r["prediction"].startswith("3 "))
    assert p3["run"] == "supported" and p3["rogue share 0.02 of d (k = 20)"] == "contradicted" and p3["flips"] == "yes"
    # without the variant's metric the column is left out
    plain = sensitivity_csv(MetricTable(tuple(rows)), arch, VerdictSpec(), AnalysisSpec())
    assert "rogue share" not in plain.splitlines()[0]


def test_sensitivity_table_leaves_massive_activations_out():
    """The massive-activation variant decides P2 on carrier_energy_nosink and P9 on seq_ac_lowfreq_share_nosink
    (each condition's own): a carrier that lived in the massive tokens (the trained ρ at the null's level without
    them) and a smoothness that did (the share at its permutation null) flip, the other predictions do not; a run
    without the variant's metrics has no such column."""
    import csv
    import io

    from spectral.predictions import sensitivity_csv

    base = list(world("strong").rows)
    name = "massive-activation tokens left out (P2, P9)"
    plain = sensitivity_csv(MetricTable(tuple(base)), ARCH, VerdictSpec(), AnalysisSpec())
    assert name not in plain.splitlines()[0]

    def variant(rows):
        return {r["prediction"].split()[0]: r for r in csv.DictReader(io.StringIO(
            sensitivity_csv(MetricTable(tuple(rows)), ARCH, VerdictSpec(), AnalysisSpec())))}  # fmt: skip

    same = [dataclasses.replace(r, metric=f"{r.metric}_nosink") for r in base
            if r.metric in ("carrier_energy", "seq_ac_lowfreq_share")]  # fmt: skip
    mid = [_row("trained", "resid_post", "seq_ac_lowfreq_share_nosink_mid", 0.4, 0.002)]
    got = variant(base + same + mid)
    assert got["2"]["run"] == got["2"][name] == "supported" and got["9"][name] == "supported"
    assert all(r["flips"] == "no" for r in got.values())
    gone = [dataclasses.replace(r, value=0.30, ci_low=0.298, ci_high=0.302) if r.condition == "trained"
            and r.metric == "carrier_energy_nosink" else r for r in same]  # fmt: skip
    mid = [_row("trained", "resid_post", "seq_ac_lowfreq_share_nosink_mid", 0.1, 0.002)]
    got = variant(base + gone + mid)
    assert got["2"]["run"] == "supported" and got["2"][name] in ("contradicted", "inconclusive")
    assert got["9"]["run"] == "supported" and got["9"][name] in ("contradicted", "inconclusive")
    assert got["2"]["flips"] == got["9"]["flips"] == "yes" and got["1"]["flips"] == "no"
