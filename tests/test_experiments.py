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
