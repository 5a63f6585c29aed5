"""Print README's example tables (per-layer numbers and the verdicts) from a run directory.

    python experiments/readme_example.py reports/runs/smollm2-135m-tinystories-full

The README's example is pasted from this output, so every number in it comes from a run;
``tests/test_readme.py`` checks the pasted tables against the committed canonical verdicts.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

COLUMNS = ("norm_mean", "layer_cos", "carrier_energy", "carrier_energy_robust", "anisotropy", "eff_rank")


def _fmt(x: float) -> str:
    if x != x:
        return "n/a"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def layer_table(run: Path) -> str:
    n_layers = int(json.loads((run / "manifest.json").read_text())["arch"]["n_layers"])
    layers = sorted({0, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})
    values: dict[tuple[str, str], float] = {}
    with (run / "metrics.csv").open() as f:
        for r in csv.DictReader(f):
            if r["condition"] == "trained":
                values[(r["site"], r["metric"])] = float(r["value"])
    lines = ["| resid_post | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for layer in layers:
        cells = [_fmt(values.get((f"resid_post.{layer}", c), float("nan"))) for c in COLUMNS]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_table(run: Path) -> str:
    level = json.loads((run / "manifest.json").read_text())["config"]["analysis"]["ci_level"]
    lines = [
        f"| prediction | outcome | statistic | effect [{level:.0%} CI] | margin δ | null | p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    with (run / "verdicts.csv").open() as f:
        for r in csv.DictReader(f):
            num = {k: float(r[k]) if r[k] else float("nan") for k in ("effect", "effect_ci_low", "effect_ci_high")}
            eff = f"{_fmt(num['effect'])} [{_fmt(num['effect_ci_low'])}, {_fmt(num['effect_ci_high'])}]"
            parts = r["note"].split("; ")
            null = next((x.removeprefix("null: ") for x in parts if x.startswith("null: ")), "")
            if r["outcome"] == "n/a":  # no effect: the reason instead
                eff, null = "–", r["note"]
            p = f"{float(r['p_holm']):.2g}" if r["p_holm"] not in ("", "nan") else "–"
            margin = _fmt(float(r["margin"])) if r["margin"] not in ("", "nan") else "–"
            lines.append(f"| {r['prediction']} | {r['outcome']} | {r['statistic']} | {eff} | {margin} | {null} | {p} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("run", type=Path)
    a = p.parse_args()
    print(layer_table(a.run) + "\n\n" + verdict_table(a.run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
