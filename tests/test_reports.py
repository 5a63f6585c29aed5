"""Reproducibility, reruns from a manifest, report rebuilding and comparisons."""

import json

import pytest

from spectral.cli import main
from spectral.compare import compare_runs
from spectral.errors import RunDirError


@pytest.fixture(scope="module")
def tiny_runs(tiny_model_dir, tmp_path_factory, sample_text):
    base = tmp_path_factory.mktemp("runs")
    corpus = base / "c.txt"
    corpus.write_text(sample_text * 3)
    args = [
        "run",
        "--model",
        str(tiny_model_dir("llama")),
        "--corpus",
        str(corpus),
        "--seq-len",
        "32",
        "--max-seqs",
        "10",
        "--batch-size",
        "4",
        "--n-boot",
        "60",
        "--quiet",
    ]
    a, b = base / "a", base / "b"
    assert main([*args, "--out", str(a)]) == 0
    assert main([*args, "--out", str(b)]) == 0
    return a, b


def test_same_config_twice_gives_identical_csvs(tiny_runs):
    a, b = tiny_runs
    for name in ("metrics.csv", "verdicts.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for fig in ("norm_profile", "band_energy", "sequence_spectrum"):
        assert (a / "figures" / f"{fig}.csv").read_bytes() == (b / "figures" / f"{fig}.csv").read_bytes()
    man = json.loads((a / "manifest.json").read_text())
    for key in ("weights_sha256", "seed", "git_commit", "packages"):
        assert key in man
    assert len(man["corpus"]["sha256"]) == 64 and man["status"] == "complete"


def test_rerun_from_manifest_and_rebuild_report(tiny_runs, tmp_path):
    a, _ = tiny_runs
    c = tmp_path / "c"
    assert main(["run", "--config", str(a / "manifest.json"), "--out", str(c), "--quiet"]) == 0
    assert (c / "metrics.csv").read_bytes() == (a / "metrics.csv").read_bytes()
    (c / "report.md").unlink()
    (c / "report.html").unlink()
    assert main(["report", str(c)]) == 0
    html = (c / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64" in html and "Verdicts" in html


def test_compare_and_refusal_of_incomplete_runs(tiny_runs, tmp_path):
    a, b = tiny_runs
    out = compare_runs([a, b], tmp_path / "cmp", ("trained", "random_init"))
    text = out.read_text()
    assert "## Verdicts side by side" in text and text.count("· random_init") >= 2
    assert (tmp_path / "cmp" / "compare.html").is_file() and (
        tmp_path / "cmp" / "figures" / "compare_layers.csv"
    ).is_file()
    man = json.loads((b / "manifest.json").read_text())
    man["status"] = "failed"
    man["reason"] = "killed"
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(RunDirError, match="is not complete \\(status failed: killed\\)"):
        compare_runs([a, b], tmp_path / "cmp2")


def test_compare_reads_each_runs_own_middle_layers_and_ci_level(tiny_runs, tmp_path):
    """The ρ-middle column uses the run's [verdicts] middle layers (it once used the defaults) and the
    caption names the run's CI level (it once said 95 % whatever the level)."""
    import shutil

    from spectral.analysis.metrics import MetricTable
    from spectral.report import fmt

    a, _ = tiny_runs
    run = tmp_path / "first-layer"
    shutil.copytree(a, run)
    man = json.loads((run / "manifest.json").read_text())
    man["config"]["verdicts"].update(middle_from=0.0, middle_to=0.0)  # layer 0 alone
    man["config"]["analysis"]["ci_level"] = 0.9
    man["model_label"] = "first-layer"
    (run / "manifest.json").write_text(json.dumps(man))
    text = compare_runs([run], tmp_path / "cmp").read_text()
    rho0 = MetricTable.from_csv((run / "metrics.csv").read_text()).get("trained", "resid_post.0", "carrier_energy")
    row = next(line for line in text.splitlines() if line.startswith("| first-layer"))
    assert row.split("|")[3].strip() == fmt(rho0.value)
    assert "(90%)" in text and "95%" not in text


def test_progress_callback_and_cancel(tiny_model_dir, tmp_path, sample_text):
    from spectral.config import CorpusSpec, ExperimentConfig, ModelSpec
    from spectral.runner import run_experiment
    from spectral.runs import read_manifest

    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text)
    cfg = ExperimentConfig(
        model=ModelSpec(name=str(tiny_model_dir("llama"))),
        corpus=CorpusSpec(source=str(corpus), seq_len=16, max_seqs=6),
        controls=("random_init",),
        formats=(),
        out=str(tmp_path / "r"),
    )
    calls = []
    run_experiment(cfg, progress=False, log=lambda s: None, on_batch=lambda c, d, t: calls.append((c, d, t)))
    # 6 windows, batches of 8; the R ensemble's five seeds (8 null windows: all 6)
    assert calls == [("trained", 1, 1)] + [(f"random_init.s{k}", 1, 1) for k in range(1, 6)]

    class Cancelled(Exception):
        pass

    def cancel(cond, done, total):
        raise Cancelled("cancelled by the user")

    cfg2 = ExperimentConfig(**{**cfg.__dict__, "out": str(tmp_path / "r2")})
    with pytest.raises(Cancelled):
        run_experiment(cfg2, progress=False, log=lambda s: None, on_batch=cancel)
    man = read_manifest(tmp_path / "r2")
    assert man["status"] == "failed" and "cancelled by the user" in man["reason"]


def test_report_subtest_words_never_read_as_the_outcome(tiny_runs):
    """In report.md's Verdicts table, the words supported / contradicted appear in a row's note other than as
    its outcome only inside a labelled sub-test that names its null; the lead of each note states the rule."""
    from spectral.predictions import read_verdicts

    a, _ = tiny_runs
    report = (a / "report.md").read_text(encoding="utf-8")
    rows = [ln for ln in report.splitlines() if ln.startswith("| ") and " | **" in ln]
    verdicts = read_verdicts((a / "verdicts.csv").read_text(encoding="utf-8"))
    assert len(rows) == len(verdicts) > 0
    for v in verdicts:
        row = next(r for r in rows if r.startswith(f"| {v.prediction} |"))
        assert f"**{v.outcome}**" in row
        if v.outcome == "n/a":
            continue
        parts = v.note.split("; ")
        if "not after Holm" in parts[0]:  # "supported by its interval but not after Holm (p_holm …)", then the rule
            parts = parts[1:]
        assert "→" in parts[0] or parts[0].startswith("no power"), parts[0]  # the rule applied, in words
        for part in parts[1:]:
            for word in ("supported", "contradicted"):
                if word in part and word != v.outcome:
                    assert part.startswith("sub-test ") and " against " in part, (v.prediction, part)
