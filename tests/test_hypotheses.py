"""Verdicts are computed from rows and thresholds: pass, fail and n/a each where they belong."""

from spectral.analysis.hypotheses import evaluate, middle_layers, read_verdicts, verdicts_csv
from spectral.analysis.metrics import MetricRow, MetricTable
from spectral.config import AnalysisSpec, VerdictSpec

ARCH_PRE = {"n_layers": 4, "norm_placement": "pre", "has_unembedding": True, "is_causal": True}


def _row(cond, site, metric, v, lo=None, hi=None):
    layer = int(site.split(".")[1]) if "." in site else None
    return MetricRow("m", cond, site, layer, metric, v, v - 0.01 if lo is None else lo, v + 0.01 if hi is None else hi)


def _table(trained_rho: float, g: float, gR: float) -> MetricTable:
    rows = [_row("trained", "resid_post", "growth_rate", g), _row("random_init", "resid_post", "growth_rate", gR)]
    for layer in range(4):
        s = f"resid_post.{layer}"
        rows += [_row("trained", s, "carrier_energy", trained_rho), _row("random_init", s, "carrier_energy", 0.2)]
        rows += [_row("trained", s, "layer_cos", 0.95), _row("random_init", s, "layer_cos", 0.8)]
        rows += [_row("trained", s, "norm_ratio", 1.2), _row("random_init", s, "norm_ratio", 1.0)]
    return MetricTable(tuple(rows))


def test_pass_fail_and_na():
    v = {x.prediction[:2].strip(): x for x in evaluate(_table(0.8, 1.3, 1.1), ARCH_PRE, VerdictSpec(), AnalysisSpec())}
    assert len(v) == 10
    assert v["1"].status == "pass" and v["2"].status == "pass" and v["5"].status == "pass"
    assert v["1"].control_value == 1.1 and v["2"].threshold == 0.5
    v2 = {
        x.prediction[:2].strip(): x for x in evaluate(_table(0.3, 1.05, 1.1), ARCH_PRE, VerdictSpec(), AnalysisSpec())
    }
    assert v2["1"].status == "fail" and v2["2"].status == "fail"
    post = dict(ARCH_PRE, norm_placement="post", has_unembedding=False)
    v3 = {x.prediction[:2].strip(): x for x in evaluate(_table(0.8, 1.3, 1.1), post, VerdictSpec(), AnalysisSpec())}
    assert v3["1"].status == "n/a" and "post-LN" in v3["1"].note
    assert v3["4"].status == "n/a" and v3["10"].status == "n/a" and v3["8"].status == "n/a"
    # thresholds live in the config, not in code
    strict = VerdictSpec(carrier_min=0.9)
    v4 = {x.prediction[:2].strip(): x for x in evaluate(_table(0.8, 1.3, 1.1), ARCH_PRE, strict, AnalysisSpec())}
    assert v4["2"].status == "fail"


def test_csv_roundtrip_and_middle_layers():
    verdicts = evaluate(_table(0.8, 1.3, 1.1), ARCH_PRE, VerdictSpec(), AnalysisSpec())
    back = read_verdicts(verdicts_csv(verdicts))
    assert [b.status for b in back] == [v.status for v in verdicts]
    assert middle_layers(5, VerdictSpec()) == [1, 2, 3]
    assert middle_layers(6, VerdictSpec()) == [2, 3]


def test_random_twin_with_zero_lens_accuracy_does_not_break_prediction_4():
    """A random twin that never predicts the next token (lens accuracy 0) gives no control ratio,
    not a ZeroDivisionError (found by the training-dynamics sweep on a tiny early checkpoint)."""
    rows = list(_table(0.8, 1.3, 1.1).rows)
    for cond, acc, mod in (("trained", 0.4, 0.38), ("random_init", 0.0, 0.0)):
        rows += [
            _row(cond, "resid_post.3", "logit_lens_acc", acc),
            _row(cond, "resid_post.3", "modulation_lens_acc", mod),
        ]
    v = {
        x.prediction[:2].strip(): x for x in evaluate(MetricTable(tuple(rows)), ARCH_PRE, VerdictSpec(), AnalysisSpec())
    }
    assert v["4"].status == "pass" and v["4"].control_value != v["4"].control_value  # NaN control
