"""The research note (experiments/research_note.py): every number it prints is read again from the file it
cites, no decimal number in it is untraced, and building it twice gives the same note."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from spectral.synthesis import Facts, check_facts, read_record, untraced_numbers

ROOT = Path(__file__).resolve().parents[1]
SMALL = "minilm,llama2xs-512,babyllama-105,babyllama-361"  # canonical runs whose model.json / massive.csv are committed


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _note_module(monkeypatch):
    """experiments/research_note.py as its command line runs it: beside experiments/common.py, which must win
    over the app's module of the same name that the app tests may have imported first."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    monkeypatch.setitem(sys.modules, "common", _load("common", ROOT / "experiments" / "common.py"))
    spec = importlib.util.spec_from_file_location("research_note", ROOT / "experiments" / "research_note.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_number_in_the_note_is_traced_to_a_run_file(tmp_path, monkeypatch):
    for key in SMALL.split(","):
        if not (ROOT / "reports" / "canonical" / key / "massive.csv").is_file():
            pytest.skip(f"reports/canonical/{key}/massive.csv is not committed (the note would load the model)")
    note = _note_module(monkeypatch)
    monkeypatch.chdir(ROOT)
    args = ["--reuse", "--models", SMALL, "--no-pdf", "--formats", ""]
    assert note.main([*args, "--out", str(tmp_path / "a")]) == 0
    md = (tmp_path / "a" / "note.md").read_text()
    facts = (tmp_path / "a" / "facts.csv").read_text()
    assert check_facts(facts, ROOT) == []
    assert untraced_numbers(md, facts) == []
    assert "## Prediction 11 norm growth is carrier growth" in md and "![Outcome matrix]" in md
    assert len(facts.splitlines()) > 100
    # the Findings read each prediction out: small models (none of these four reaches 100 M parameters) counted apart
    assert "**Prediction 4: modulation carries content.** Of 4 runs measured by the current battery" in md
    assert "The small decoders and MiniLM (4 runs):" in md and "The LLMs:" not in md
    # a second build gives the very same note and facts
    assert note.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "note.md").read_text() == md
    assert (tmp_path / "b" / "facts.csv").read_text() == facts


def test_a_changed_run_file_is_caught(tmp_path):
    src = ROOT / "reports" / "canonical" / "llama2xs-512"
    if not (src / "verdicts.csv").is_file():
        pytest.skip("reports/canonical/llama2xs-512 is not committed")
    copy = tmp_path / "run"
    shutil.copytree(src, copy)
    rec = read_record(copy)
    assert rec is not None and rec.verdict("1") is not None
    facts = Facts(tmp_path)
    printed = facts.effect(copy / "verdicts.csv", rec.verdicts[0].prediction)
    assert check_facts(facts.to_csv(), tmp_path) == []
    text = (copy / "verdicts.csv").read_text().replace(f"{rec.verdicts[0].effect:g}", "0.123456", 1)
    (copy / "verdicts.csv").write_text(text)
    assert check_facts(facts.to_csv(), tmp_path), printed
    assert untraced_numbers(f"effect {printed} and a typed 0.4242", facts.to_csv()) == ["0.4242"]


def test_the_committed_note_still_matches_its_runs():
    """reports/note as committed: every fact read again from the committed run files, no untraced decimal."""
    note = ROOT / "reports" / "note"
    if not (note / "facts.csv").is_file():
        pytest.skip("reports/note is not built (python experiments/research_note.py --reuse)")
    facts = (note / "facts.csv").read_text()
    assert check_facts(facts, ROOT) == []
    assert untraced_numbers((note / "note.md").read_text(), facts) == []
