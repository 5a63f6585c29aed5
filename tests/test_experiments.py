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
