"""Shared driver of the experiment scripts (one script + one TOML per figure family).

Every family draws on the same battery run of a model (``spectral run`` computes every statistic
once), so a run is made once per (model, settings) under ``reports/runs/`` and reused while its
resolved config is unchanged. Each family then exports its figures (PDF/SVG/PNG/HTML + CSV +
caption) with its verdicts and its resolved config to ``reports/figures/<family>/<model>/``.
Everything is seeded (seed 0) and written only under ``reports/``.
"""

import argparse
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"
FAMILIES = ("norm_growth", "carrier", "sequence_spectra", "bands", "lenses", "interventions", "controls")


def portable_manifest(run_dir: Path) -> str:
    """A run's manifest.json (config, versions, commit) without this machine's paths, for committing: the venv,
    the repository and home prefixes become ".venv/", relative and "~/"."""
    text = (run_dir / "manifest.json").read_text()
    roots = {str(run_dir.resolve().parents[2]) + "/", str(ROOT.resolve()) + "/"}  # the run's checkout and this one
    venv = str(Path(sys.prefix).resolve()) + "/"  # installed packages (GGUF files, MiniLM) live in the venv
    for prefix, repl in [(venv, ".venv/"), *((r, "") for r in roots), (str(Path.home()) + "/", "~/")]:
        text = text.replace(json.dumps(prefix)[1:-1], repl)
    return text


def models(selection: str | None = None) -> list[dict[str, Any]]:
    """Models from configs/models.toml, optionally only the comma-separated keys (or paths) given."""
    listed = tomllib.loads((CONFIGS / "models.toml").read_text())["model"]
    if not selection:
        return listed
    out = []
    for key in selection.split(","):
        found = [m for m in listed if m["key"] == key]
        out += found or [{"key": Path(key).name, "name": key, "corpus": "builtin", "credit": "user-supplied model"}]
    return out


def run_settings(quick: bool) -> dict[str, Any]:
    """The battery run's settings (configs/run.toml, [quick] or [run]): one run per model serves every family."""
    return tomllib.loads((CONFIGS / "run.toml").read_text())["quick" if quick else "run"]


def family(name: str) -> dict[str, Any]:
    """A figure family's figures and verdicts; run settings there would do nothing, so they are refused."""
    data = tomllib.loads((CONFIGS / f"{name}.toml").read_text())
    stray = sorted(set(data) - {"figures", "verdicts"})
    if stray:
        raise ValueError(f"configs/{name}.toml: {', '.join(stray)} belong in configs/run.toml (one run serves all)")
    from spectral.figureset import FIGURES  # the registry the runner saves and the app shows

    unknown = sorted(set(data.get("figures", [])) - set(FIGURES))
    if unknown:
        raise ValueError(f"configs/{name}.toml: no figure {', '.join(unknown)} (the registry has {', '.join(FIGURES)})")
    return data


def ensure_run(model: dict[str, Any], quick: bool, reports: Path | None = None) -> Path:
    """The battery run of ``model``: a complete run with the same config is reused, an interrupted one resumed
    from its saved state, anything else made now."""
    from spectral.config import config_from_dict
    from spectral.errors import ResumeRefused
    from spectral.runner import run_experiment
    from spectral.runs import read_manifest

    st = run_settings(quick)
    out = (reports or ROOT / "reports") / "runs" / f"{model['key']}-{'quick' if quick else 'full'}"
    analysis = ("n_boot", "intervention_windows", "jacobian_windows", "jacobian_positions", "modulation_layers",
                "modulation_directions", "modulation_windows")  # fmt: skip
    data = {
        "model": {"name": model["name"]},
        "corpus": {"source": model["corpus"], "seq_len": st["seq_len"], "max_seqs": st["max_seqs"]},
        "analysis": {k: st[k] for k in analysis},
        "null_windows": st["null_windows"],
        "seed": 0,
        "out": os.path.relpath(out, ROOT) if out.is_relative_to(ROOT) else str(out),
        "formats": st["formats"],
    }
    cfg = config_from_dict(data, "experiments")
    resume = False
    if (out / "manifest.json").is_file():
        man = read_manifest(out)
        if man.get("config") == cfg.to_dict():
            if man.get("status") == "complete":
                return out
            resume = True  # an interrupted run of this very config: go on from its saved state
    command = f"python experiments/run_all.py --models {model['key']}" + (" --quick" if quick else "")
    try:
        run_experiment(cfg, overwrite=not resume, resume=resume, progress=sys.stderr.isatty(), command=command)
    except ResumeRefused as exc:
        if not resume:
            raise
        # started by another battery revision, or the weights or corpus changed since: its state cannot serve
        print(f"{exc}; starting {out} again", file=sys.stderr)
        run_experiment(cfg, overwrite=True, progress=sys.stderr.isatty(), command=command)
    return out


def export_family(name: str, run_dir: Path, model: dict[str, Any], reports: Path | None = None) -> Path:
    """Copy the family's figures and verdicts out of a run, with the resolved config."""
    from spectral.predictions import read_verdicts
    from spectral.runs import atomic_write_text, read_manifest

    fam = family(name)
    dest = (reports or ROOT / "reports") / "figures" / name / model["key"]
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for fig in fam["figures"]:
        for f in sorted((run_dir / "figures").glob(f"{fig}.*")):
            shutil.copy2(f, dest / f.name)
            copied.append(f.name)
    if (run_dir / "figures" / "plotly.min.js").is_file():
        shutil.copy2(run_dir / "figures" / "plotly.min.js", dest / "plotly.min.js")
    verdicts = read_verdicts((run_dir / "verdicts.csv").read_text())
    chosen = [v for v in verdicts if int(v.prediction.split()[0]) in fam["verdicts"]]
    man = read_manifest(run_dir)
    record = {
        "family": name,
        "family_config": fam,
        "model": model,
        "run": os.path.relpath(run_dir, ROOT),
        "run_config": man["config"],
        "weights_sha256": man["weights_sha256"],
        "corpus": man["corpus"],
        "git_commit": man["git_commit"],
        "figures": copied,
        "verdicts": [
            {
                "prediction": v.prediction,
                "outcome": v.outcome,
                "value": v.value,
                "ci_low": v.ci_low,
                "ci_high": v.ci_high,
                "null": v.null,
                "effect": v.effect,
                "effect_ci_low": v.effect_ci_low,
                "effect_ci_high": v.effect_ci_high,
                "p_holm": v.p_holm,
                "note": v.note,
            }
            for v in chosen
        ],
    }
    atomic_write_text(dest / "config.json", json.dumps(record, indent=2, default=str) + "\n")
    return dest


def main(name: str, argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=f"figure family '{name}' for a list of models")
    p.add_argument("--models", help="comma-separated keys of configs/models.toml or model paths (default: all)")
    p.add_argument("--quick", action="store_true", help="small settings: every model in a few minutes on 2 cores")
    p.add_argument("--reports", type=Path, help="write under this folder instead of reports/")
    args = p.parse_args(argv)
    reports = args.reports.resolve() if args.reports else None
    os.chdir(ROOT)
    for model in models(args.models):
        run = ensure_run(model, args.quick, reports)
        print(f"{name}: {export_family(name, run, model, reports)}")
    return 0
