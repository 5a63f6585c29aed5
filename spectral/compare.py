"""``spectral compare RUN [RUN ...] --out DIR``: several runs (models, checkpoints, corpora or
conditions) on shared axes, with a table of the key statistics and the verdicts side by side.

Only complete runs are read (a running or failed run is refused with its status). Each series is
one (run, condition); by default the trained condition of every run, ``--conditions`` adds
controls (e.g. ``trained,random_init`` compares a model with its random-weight twin).
"""

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spectral import plotting
from spectral.analysis.metrics import MetricTable
from spectral.config import VerdictSpec
from spectral.errors import RunDirError
from spectral.export import save_figures
from spectral.predictions import middle_layers, read_verdicts
from spectral.report import fmt, markdown_to_html
from spectral.runs import Manifest, atomic_write_text, prepare_run_dir, read_manifest

PANELS = (
    ("resid_post", "norm_mean", "mean ‖h‖"),
    ("resid_post", "carrier_energy", "carrier energy ρ"),
    ("resid_post", "anisotropy", "anisotropy"),
    ("resid_post", "layer_cos", "layer cosine"),
    ("resid_post", "eff_rank", "effective rank"),
    ("resid_post", "seq_ac_lowfreq_share", "low-frequency share (sequence)"),
)


def _load(run: Path) -> tuple[Manifest, MetricTable, list]:
    man = read_manifest(run)
    if man.get("status") != "complete":
        raise RunDirError(f"run {run} is not complete (status {man.get('status')}: {man.get('reason', 'in progress')})")
    table = MetricTable.from_csv((run / "metrics.csv").read_text(encoding="utf-8"))
    vpath = run / "verdicts.csv"
    verdicts = read_verdicts(vpath.read_text(encoding="utf-8")) if vpath.is_file() else []
    return man, table, verdicts


def run_verdict_spec(man: Mapping[str, Any]) -> VerdictSpec:
    """The run's own ``[verdicts]`` settings (its middle layers, margins), defaults for what it lacks."""
    names = {f.name for f in dataclasses.fields(VerdictSpec)}
    given = man.get("config", {}).get("verdicts", {}) or {}
    return VerdictSpec(**{k: v for k, v in given.items() if k in names})


def run_ci_level(man: Mapping[str, Any]) -> float:
    return float(man.get("config", {}).get("analysis", {}).get("ci_level", 0.95))


def mean_middle(table: MetricTable, cond: str, metric: str, n_layers: int, spec: VerdictSpec) -> float:
    mid = middle_layers(n_layers, spec)
    vals = [r.value for r in table.series(cond, "resid_post", metric) if r.layer in mid and math.isfinite(r.value)]
    return sum(vals) / len(vals) if vals else float("nan")


def compare_runs(
    runs: list[Path],
    out: Path,
    conditions: tuple[str, ...] = ("trained",),
    relative: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``out/compare.md``, ``out/compare.html`` and ``out/figures/``; returns the markdown path."""
    if not runs:
        raise RunDirError("compare needs at least one run directory")
    loaded = [(run, *_load(run)) for run in runs]
    prepare_run_dir(out, {"compare": {"runs": [str(r) for r in runs], "conditions": list(conditions)}}, overwrite)
    series: list[plotting.Series] = []
    specs: dict[str, VerdictSpec] = {}  # series label -> its run's [verdicts]
    for _run, man, table, _ in loaded:
        for cond in plotting.pick_conditions(conditions, list(table.conditions())):  # random_init: R's first seed
            if cond in table.conditions():
                label = f"{man['model_label']} · {Path(man['corpus']['name']).name}" + (
                    "" if cond == "trained" else f" · {cond}"
                )
                series.append(plotting.Series(label, int(man["arch"]["n_layers"]), table, cond))
                specs[label] = run_verdict_spec(man)
    if not series:
        raise RunDirError(f"none of the runs holds the conditions {', '.join(conditions)}")
    fig = plotting.overlay(series, PANELS, "Runs compared", relative)
    rows = [r for s in series for r in s.table.rows if r.condition == s.condition and r.site.startswith("resid_post")]
    data = MetricTable(tuple(rows)).to_csv()
    caption = (
        "Per-layer statistics of resid_post for "
        + "; ".join(s.label for s in series)
        + f". x: {'relative depth l/(L-1)' if relative else 'layer'}; bands: each run's CIs ("
        + ", ".join(sorted({f"{run_ci_level(man):.0%}" for _, man, _, _ in loaded}))
        + ")."
    )
    files, note = save_figures(
        out, {"compare_layers": fig}, {"compare_layers": data}, {"compare_layers": caption}, print
    )
    lines = [
        "# spectral comparison",
        "",
        "Runs: " + ", ".join(f"`{r}`" for r in runs),
        "",
        "## Key statistics",
        "",
        "| series | growth_rate g [CI] | ρ middle | anisotropy middle | layer_cos middle | eff_rank middle | "
        "seq_ac_lowfreq_slope |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in series:
        g = s.table.get(s.condition, "resid_post", "growth_rate")
        dc = s.table.get(s.condition, "resid_post", "seq_ac_lowfreq_slope")
        gtxt = f"{fmt(g.value)} [{fmt(g.ci_low)}, {fmt(g.ci_high)}]" if g else "–"
        cells = [
            fmt(mean_middle(s.table, s.condition, m, s.n_layers, specs[s.label]))
            for m in ("carrier_energy", "anisotropy", "layer_cos", "eff_rank")
        ]
        lines.append(f"| {s.label} | {gtxt} | " + " | ".join(cells) + f" | {fmt(dc.value) if dc else '–'} |")
    lines += [
        "",
        "## Verdicts side by side",
        "",
        "| prediction | " + " | ".join(man["model_label"] for _, man, _, _ in loaded) + " |",
        "|---|" + "---|" * len(loaded),
    ]
    names = list(dict.fromkeys(v.prediction for _, _, _, verdicts in loaded for v in verdicts))
    for name in names:
        cells = []
        for _, _, _, verdicts in loaded:
            v = next((x for x in verdicts if x.prediction == name), None)
            cells.append(
                f"{v.outcome} (effect {fmt(v.effect)} [{fmt(v.effect_ci_low)}, {fmt(v.effect_ci_high)}])" if v else "–"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Figure",
        "",
        f"![compare_layers]({next(f for f in files['compare_layers'] if f.endswith('.png'))})"
        if any(f.endswith(".png") for f in files["compare_layers"])
        else (note or ""),
        f"*{caption}*",
        "Files: " + ", ".join(f"[{Path(f).suffix[1:]}]({f})" for f in files["compare_layers"]),
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(out / "compare.md", text)
    atomic_write_text(out / "compare.html", markdown_to_html(text, out, "spectral comparison"))
    return out / "compare.md"
