"""The command line as a user meets it: one-line errors without a traceback or the whole usage, a version, help
without reST markup, grouped by config section."""

import subprocess
import sys

import pytest
import torch

from spectral.cli import build_parser, main, plain


def one_line_error(argv: list[str], capsys) -> str:
    """Run ``spectral ARGV``; it must exit 2 and print exactly one line to stderr, no traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    return lines[0]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["run", "--seq-len", "abc"], "spectral run: error: argument --seq-len: invalid int value: 'abc'"),
        (["run", "--no-such-flag"], "spectral run: error: unrecognized arguments: --no-such-flag"),
        (["report"], "spectral report: error: the following arguments are required: run"),
        (["bogus"], "spectral: error: argument COMMAND: invalid choice: 'bogus'"),
        (["compare", "/nonexistent/run-a"], "/nonexistent/run-a does not exist"),
        (["report", "/nonexistent/run-a"], "/nonexistent/run-a does not exist"),
        (["run", "--resume", "/nonexistent/run-a"], "cannot resume /nonexistent/run-a"),
    ],
)
def test_bad_input_gives_one_line(argv, expected, capsys):
    line = one_line_error(argv, capsys)
    assert expected in line, line
    assert "usage:" not in line


def test_compare_names_a_missing_out_after_the_runs_exist(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_text('{"status": "complete"}')
    line = one_line_error(["compare", str(run)], capsys)
    assert "compare needs --out" in line
    line = one_line_error(["compare", str(tmp_path)], capsys)  # exists, but no manifest.json
    assert "is not a run directory (no manifest.json)" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: --device cuda is valid here")
def test_unavailable_device_is_one_line_before_anything_loads(tmp_path, capsys):
    line = one_line_error(["run", "--device", "cuda", "--out", str(tmp_path / "r"), "--quiet"], capsys)
    assert "device 'cuda' is not available here" in line and "--device cpu" in line
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_version_and_help_text():
    from spectral import __version__

    out = subprocess.run([sys.executable, "-m", "spectral.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"spectral {__version__}"
    top = build_parser().format_help()
    assert "``" not in top and ":class:" not in top and "Test the carrier-signal hypothesis" in top
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    assert "``" not in run_help and ":mod:" not in run_help and ":class:" not in run_help
    for section in ("[model]", "[corpus]", "[capture]", "[analysis]", "[verdicts]"):
        assert f"\n{section}:\n" in run_help, section
    for cmd in ("report", "compare", "merge", "models", "app"):
        sub = build_parser()._subparsers._group_actions[0].choices[cmd]  # type: ignore[union-attr]
        assert sub.description, cmd
    assert plain("see :class:`spectral.x.Y` and ``z``") == "see spectral.x.Y and z"
