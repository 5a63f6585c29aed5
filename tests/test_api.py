"""The notebook API (``import spectral as sp``): measure in memory equals ``spectral run`` on the same text,
the caller's model comes back unchanged, Result's tables have the run directory's columns, save / open_run
round-trip, and the README's five notebook lines run on the embedded default model."""

import dataclasses

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

import spectral as sp
from spectral.analysis.metrics import MetricTable
from spectral.cli import main
from spectral.corpus import DOC_SEPARATOR
from spectral.errors import ConfigError, CorpusError
from spectral.predictions import VERDICT_COLUMNS

TEXTS = [
    "The little fox ran through the woods and found a stream. It drank and rested under a tree.",
    "A cat sat by the window, watching the rain. The rain fell all day, and the cat fell asleep.",
]
SETTINGS = dict(seq_len=16, max_seqs=8, n_boot=50, random_seeds=(1, 2), null_windows=4, formats=())


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return str(tiny_model_dir("llama"))


@pytest.fixture(scope="module")
def measured(tiny):
    model = sp.load_model(tiny)
    before = {k: v.clone() for k, v in model.hf_model.state_dict().items()}
    res = sp.measure(model, TEXTS * 3, progress=False, **SETTINGS)
    return model, before, res


def test_public_names_and_version():
    assert set(sp.__all__) >= {"load_model", "measure", "open_run", "Result", "__version__"}
    assert sp.__version__ and sp.__version__ != "0+unknown"
    with pytest.raises(AttributeError):
        sp.nothing_here  # noqa: B018


def test_measure_gives_the_callers_model_back_unchanged(measured):
    model, before, _ = measured
    after = model.hf_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # W permuted it in place, then undid it
    assert model.bridge is not None


def test_tables_have_the_run_directory_columns(measured):
    _, _, res = measured
    assert list(res.metrics.columns) == ["model", "condition", "site", "layer", "metric", "value", "ci_low", "ci_high"]
    assert list(res.verdicts.columns) == list(VERDICT_COLUMNS) and len(res.verdicts) == 11
    assert {"trained", "permuted_weights", "random_init.s1", "random_init.s2"} <= set(res.metrics["condition"])
    assert isinstance(res.figure("norm_profile"), go.Figure) and "verdicts" in res.figure_names
    with pytest.raises(KeyError, match="no figure"):
        res.figure("nope")


def test_measure_equals_spectral_run_on_the_same_text(measured, tiny, tmp_path):
    """The in-memory path and the CLI's run directory agree to the byte on metrics and verdicts."""
    _, _, res = measured
    corpus = tmp_path / "texts.txt"
    corpus.write_text(DOC_SEPARATOR.join(TEXTS * 3), encoding="utf-8")
    out = tmp_path / "run"
    args = ["run", "--model", tiny, "--corpus", str(corpus), "--seq-len", "16", "--max-seqs", "8", "--n-boot", "50"]
    args += ["--random-seeds", "1", "2", "--null-windows", "4", "--formats", "none", "--quiet", "--out", str(out)]
    assert main(args) == 0
    saved = res.save(tmp_path / "saved")
    for name in ("metrics.csv", "verdicts.csv", "sensitivity.csv"):
        assert (saved / name).read_bytes() == (out / name).read_bytes(), name
    assert (saved / "report.md").is_file() and (saved / "figures" / "norm_profile.json").is_file()


def test_save_and_open_run_round_trip(measured, tmp_path):
    _, _, res = measured
    d = res.save(tmp_path / "r")
    back = sp.open_run(d)
    a, b = res.metrics, back.metrics
    pd.testing.assert_frame_equal(a[["condition", "site", "metric"]], b[["condition", "site", "metric"]])
    np.testing.assert_allclose(a["value"].to_numpy(float), b["value"].to_numpy(float), rtol=1e-6, equal_nan=True)
    assert list(back.verdicts["outcome"]) == list(res.verdicts["outcome"])
    fig = back.figure("sequence_spectrum")  # from its saved JSON: the spectra are not in metrics.csv
    assert isinstance(fig, go.Figure) and len(fig.data) > 0
    assert MetricTable.from_csv((d / "metrics.csv").read_text()).rows[0].model == res.metrics["model"][0]


def test_bad_calls_say_what_is_wrong(tiny):
    model = sp.load_model(tiny)
    with pytest.raises(CorpusError, match="non-empty list of strings"):
        sp.measure(model, [])
    with pytest.raises(ConfigError, match="no setting named 'n_bootstrap'"):
        sp.measure(model, TEXTS, n_bootstrap=5)
    with pytest.raises(ConfigError, match="unknown probes"):
        sp.measure(model, TEXTS, probes=("lens_x",))
    with pytest.raises(ConfigError, match="must be one of"):
        sp.measure(model, TEXTS, sampling="randm")
    with pytest.raises(ConfigError, match="options"):
        sp.load_model(tiny, dtypes="float32")


def test_the_readme_notebook_lines_on_the_default_model(monkeypatch):
    """README.md's notebook lines, executed as written, on smollm2-135m (the PyPI model): only the windows
    are made small (seq_len 32, 4 windows, two R seeds on 2 windows) to keep the test short."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## In a notebook\s+```python\n(.*?)```", readme, re.S)
    assert block is not None and len(block.group(1).strip().splitlines()) <= 5
    code = block.group(1).replace(".show()", "")
    small = dict(seq_len=32, max_seqs=4, null_windows=2, random_seeds=(1, 2), progress=False)
    real = sp.measure
    monkeypatch.setattr(sp, "measure", lambda model, texts, **kw: real(model, texts, **{**kw, **small}))
    scope: dict = {"texts": TEXTS * 4}
    exec(code, scope)
    res = scope["res"]
    assert isinstance(res.figure("verdicts"), go.Figure) and len(res.verdicts) == 11
    assert set(res.verdicts["outcome"]) <= {"supported", "contradicted", "inconclusive", "n/a"}
    assert dataclasses.is_dataclass(res.config)


def test_measure_warns_on_too_few_windows_and_reports_progress(tiny, capsys):
    """Texts that give fewer windows than the intervals need are said to, and the analysis shows its progress."""
    model = sp.load_model(tiny)
    settings = dict(SETTINGS, controls=(), max_seqs=4)
    with pytest.warns(UserWarning, match=r"the texts gave \d+ windows of 16 tokens.*expect wide intervals"):
        sp.measure(model, TEXTS, progress=True, **settings)
    err = capsys.readouterr().err
    assert "sp.measure: " in err and "trained: analysing the captured statistics" in err and "analysed in" in err
