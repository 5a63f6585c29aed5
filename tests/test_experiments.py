"""An experiment script in --quick mode writes its family's figures, verdicts and resolved config."""

import json
import subprocess
import sys

from conftest import REPO, needs_shared


@needs_shared
def test_quick_family_script(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "experiments" / "norm_growth.py"),
        "--models",
        "llama2xs-512",
        "--quick",
        "--reports",
        str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    dest = tmp_path / "figures" / "norm_growth" / "llama2xs-512"
    assert (dest / "norm_profile.csv").is_file() and (dest / "norm_profile.txt").is_file()
    record = json.loads((dest / "config.json").read_text())
    assert record["run_config"]["seed"] == 0 and record["run_config"]["corpus"]["seq_len"] == 32
    assert [v["prediction"][0] for v in record["verdicts"]] == ["1", "5"]
    assert (tmp_path / "runs" / "llama2xs-512-quick" / "manifest.json").is_file()


def test_run_settings_come_from_run_toml_and_families_cannot_carry_any(tmp_path, monkeypatch):
    """Every family once had [run]/[quick] tables, but only norm_growth.toml's were read: the others did
    nothing. The run's settings now live in configs/run.toml; a family file holding any is refused."""
    import importlib.util

    # experiments/common.py by path: another module named "common" (the app's) may already be imported
    spec = importlib.util.spec_from_file_location("experiments_common", REPO / "experiments" / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "experiments"))
    spec.loader.exec_module(common)

    for name in ("norm_growth", "bands", "carrier", "controls", "interventions", "lenses", "sequence_spectra"):
        assert set(common.family(name)) == {"figures", "verdicts"}, name
    assert common.run_settings(True)["seq_len"] == 32 and common.run_settings(False)["max_seqs"] == 128
    (tmp_path / "odd.toml").write_text("figures = []\nverdicts = []\n[run]\nseq_len = 64\n")
    (tmp_path / "run.toml").write_text("[run]\nseq_len = 7\n[quick]\nseq_len = 5\n")
    monkeypatch.setattr(common, "CONFIGS", tmp_path)
    import pytest

    with pytest.raises(ValueError, match="belong in configs/run.toml"):
        common.family("odd")
    assert common.run_settings(False)["seq_len"] == 7


def test_an_interrupted_canonical_run_is_resumed_not_started_again(tmp_path, monkeypatch):
    """experiments/run_all.py on a run directory an interrupted run left (same config) goes on from its saved
    state; a complete one is reused; one a resume refuses (another battery revision) is started again."""
    import importlib.util

    import pytest

    import spectral.runner
    from spectral.errors import ResumeRefused, RunDirError

    spec = importlib.util.spec_from_file_location("experiments_common_resume", REPO / "experiments" / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "experiments"))
    spec.loader.exec_module(common)
    calls: list[dict] = []
    status = {"value": "running", "refuse": False}

    def fake_run(cfg, **kw):
        calls.append(kw)
        if kw.get("resume") and status["refuse"]:
            raise ResumeRefused(f"cannot resume {cfg.out}: it was started by battery revision 4, this is revision 5")
        out = tmp_path / "runs" / "llama2xs-512-quick"
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"status": status["value"], "config": cfg.to_dict()}
        (out / "manifest.json").write_text(json.dumps(manifest))

    monkeypatch.setattr(spectral.runner, "run_experiment", fake_run)
    model = {"key": "llama2xs-512", "name": "llama2xs-512", "corpus": "builtin"}
    common.ensure_run(model, True, tmp_path)  # nothing there: a fresh run
    assert calls[-1]["overwrite"] is True and calls[-1]["resume"] is False
    common.ensure_run(model, True, tmp_path)  # the first was interrupted (status "running"): resumed
    assert calls[-1]["overwrite"] is False and calls[-1]["resume"] is True
    status["refuse"] = True
    common.ensure_run(model, True, tmp_path)  # the resume refused: started again, overwriting
    assert calls[-2]["resume"] is True and calls[-1]["overwrite"] is True and not calls[-1].get("resume")
    status["value"] = "complete"
    common.ensure_run(model, True, tmp_path)  # now complete (written by the last call): reused, no call
    n = len(calls)
    common.ensure_run(model, True, tmp_path)
    assert len(calls) == n
    path = tmp_path / "runs" / "llama2xs-512-quick" / "manifest.json"
    path.write_text(path.read_text().replace('"complete"', '"running"'))  # interrupted again

    def no_space(cfg, **kw):
        raise RunDirError("not enough free disk space")

    monkeypatch.setattr(spectral.runner, "run_experiment", no_space)
    with pytest.raises(RunDirError, match="disk"):  # any other refusal is not swallowed by a fresh start
        common.ensure_run(model, True, tmp_path)
