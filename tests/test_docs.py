"""The documentation: the generated reference pages are current, the site builds with no warning
(mkdocs --strict, the API reference from the docstrings), and the tutorial notebook runs top to bottom."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_reference_pages_are_current():
    sys.path.insert(0, str(ROOT / "docs"))
    import gen_reference

    for name, make in gen_reference.FILES.items():
        assert (ROOT / "docs" / name).read_text(encoding="utf-8") == make(), (
            f"run python docs/gen_reference.py ({name})"
        )


def test_docs_build_strict(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "WARNING" not in res.stderr, res.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "Measure" in api and "open_run" in api  # the docstrings made it into the reference


def test_tutorial_notebook_runs_top_to_bottom():
    """The tutorial as a user runs it: every cell, in order, on smollm2-135m (its windows are small)."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency (scripts/setup.sh installs it)")
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "Result('smollm2-135m'" in text and "prediction" in text
