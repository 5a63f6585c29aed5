"""Issue 8: the reference decoder's training script (``--quick``) and the checkpoint sweep, end to end.

Quick training (a tiny GPT-2 on a slice of Tiny Shakespeare) writes Hugging Face checkpoints at the
log-spaced steps that ``spectral.models.load_model`` loads directly, deterministically; the sweep
runs the battery on three of them and writes one table row per checkpoint and statistic plus its
figures. Hub revisions are checked with the loader and the runner patched (no network): the
revisions are requested exactly as given, in order. Offline, CPU, well under a minute on 2 cores.
"""

import csv
import json
import sys
from dataclasses import replace

import pytest
from conftest import REPO, SHARED, needs_shared

sys.path.append(str(REPO / "experiments"))

import sweep_checkpoints as sweep  # noqa: E402
import train_reference as train  # noqa: E402

from spectral.training import EOT  # noqa: E402
from spectral.trajectory import STATS  # noqa: E402

needs_corpora = pytest.mark.skipif(
    not (SHARED / "corpora" / "tinyshakespeare.txt").is_file(),
    reason=f"corpora not found at {SHARED / 'corpora'} (../shared/data)",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick-train")
    assert train.main(["--quick", "--out", str(out / "run")]) == 0
    return out / "run"


def test_checkpoint_steps_are_log_spaced():
    assert train.checkpoint_steps(40) == [0, 1, 2, 4, 8, 16, 32, 40]
    assert train.checkpoint_steps(64) == [0, 1, 2, 4, 8, 16, 32, 64]


def test_heldout_split_cuts_at_a_boundary():
    text = "".join(f"story {i} text.\n{EOT}\n" for i in range(100))
    tr, ho = train.split_document(text, 0.05)
    assert text.startswith(tr) and text.endswith(ho) and len(tr) + len(ho) >= len(text) - 1
    assert tr.endswith(EOT) and ho.startswith("story ")
    assert 0.03 < len(ho) / len(text) < 0.07


@needs_shared
@needs_corpora
def test_quick_training_writes_loadable_checkpoints(quick_run):
    from spectral.config import ModelSpec
    from spectral.models import load_model

    record = json.loads((quick_run / "training.json").read_text())
    steps = record["config"]["steps"]
    dirs = sorted(p.name for p in (quick_run / "checkpoints").iterdir())
    assert dirs == [f"step-{s:06d}" for s in train.checkpoint_steps(steps)]
    for name in (dirs[0], dirs[-1]):
        m = load_model(ModelSpec(name=str(quick_run / "checkpoints" / name)))
        assert m.arch.architecture == "GPT2LMHeadModel" and m.arch.norm_placement == "pre"
        assert m.arch.n_layers == record["config"]["n_layer"] and m.arch.d_model == record["config"]["d_model"]
        assert m.arch.has_unembedding and m.tokenizer.bos_token == EOT and m.bos_token_id is not None
    rows = list(csv.DictReader((quick_run / "loss.csv").open()))
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert val[-1] < val[0] - 0.5  # the loss drops
    assert record["final_val_loss"] < val[0] and record["unigram_baseline"] > 0
    assert (quick_run / "results" / "figures" / "loss_curve.csv").is_file()
    assert (quick_run / "results" / "training.md").read_text().count("unigram baseline") == 1


@needs_shared
@needs_corpora
def test_quick_training_is_deterministic(quick_run, tmp_path):
    assert train.main(["--quick", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "loss.csv").read_text() == (quick_run / "loss.csv").read_text()
    last = sorted((quick_run / "checkpoints").iterdir())[-1].name
    a = (quick_run / "checkpoints" / last / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "checkpoints" / last / "model.safetensors").read_bytes() == a


@needs_shared
@needs_corpora
def test_quick_sweep_one_row_per_checkpoint_and_statistic(quick_run, monkeypatch):
    monkeypatch.chdir(quick_run)
    assert sweep.main(["--run", str(quick_run), "--quick"]) == 0
    out = quick_run / "sweep"
    rows = [r for r in csv.DictReader((out / "sweep.csv").open()) if r["condition"] == "trained"]
    steps = sorted({int(r["step"]) for r in rows})
    assert (
        len(steps) == 3
        and steps[0] == 0
        and steps[-1] == json.loads((quick_run / "training.json").read_text())["config"]["steps"]
    )
    stats = {m for m, _ in STATS}
    keys = [(int(r["step"]), r["statistic"]) for r in rows]
    assert sorted(keys) == sorted((s, m) for s in steps for m in stats)  # exactly one row each
    assert all(r["loss_source"] == "training log" for r in rows)
    for name in ("sweep_overview", "sweep_carrier_energy", "sweep_growth_rate", "sweep_band_energy"):
        assert (out / "figures" / f"{name}.csv").is_file() and (out / "figures" / f"{name}.txt").is_file()
        assert (out / "figures" / f"{name}.html").is_file()
    assert (out / "final" / "verdicts.csv").is_file()
    assert "vs loss drop" in (out / "sweep.md").read_text()
    # the last checkpoint ran the random-weight control, the others none
    assert {r["step"] for r in csv.DictReader((out / "sweep.csv").open()) if r["condition"] == "random_init"} == {
        str(steps[-1])
    }


def test_hub_revisions_are_requested_in_order(tmp_path, monkeypatch, tiny_model_dir, sample_text):
    """A hub id with --revisions: every run and every loss evaluation asks for exactly those revisions."""
    tiny = str(tiny_model_dir("gpt2"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(sample_text)
    config = tmp_path / "sweep.toml"
    config.write_text((sweep.CONFIG).read_text().replace('formats = ["png"]', "formats = []"))
    runs, loads = [], []
    real_run, real_load = sweep.run_experiment, sweep.load_model

    def fake_run(cfg, **kw):
        runs.append((cfg.model.name, cfg.model.revision))
        return real_run(replace(cfg, model=replace(cfg.model, name=tiny, revision=None)), **kw)

    def fake_load(spec, **kw):
        loads.append((spec.name, spec.revision))
        return real_load(replace(spec, name=tiny, revision=None), **kw)

    monkeypatch.setattr(sweep, "run_experiment", fake_run)
    monkeypatch.setattr(sweep, "load_model", fake_load)
    monkeypatch.chdir(tmp_path)
    revisions = ["step1000", "step143000", "step3000"]  # not sorted: the order given is kept
    hub = "EleutherAI/pythia-14m"
    argv = ["--model", hub, "--revisions", ",".join(revisions), "--corpus", str(corpus), "--quick"]
    assert sweep.main([*argv, "--config", str(config), "--run", str(tmp_path / "hub")]) == 0
    assert runs == [(hub, r) for r in revisions]
    assert loads == [(hub, r) for r in revisions]
    rows = list(csv.DictReader((tmp_path / "hub" / "sweep" / "sweep.csv").open()))
    assert {int(r["step"]) for r in rows} == {1000, 143000, 3000}
    assert {r["loss_source"] for r in rows} == {"sweep windows"}
    record = json.loads((tmp_path / "hub" / "sweep" / "sweep.json").read_text())
    assert [c["revision"] for c in record["checkpoints"]] == revisions
