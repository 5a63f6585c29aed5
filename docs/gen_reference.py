"""Write docs/predictions.md and docs/config.md from the code (the prediction objects and the config
dataclasses), so the reference cannot drift: tests/test_docs.py checks the committed files are current.

    python docs/gen_reference.py
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def predictions_md() -> str:
    from spectral.config import VerdictSpec
    from spectral.predictions import PREDICTIONS

    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(VerdictSpec)}
    lines = [
        "# Predictions",
        "",
        "The eleven predictions of the carrier-signal hypothesis as the code decides them (generated from",
        "`spectral.predictions` by `docs/gen_reference.py`). Each is an intersection-union test over its",
        "comparisons: **supported** when every effect's interval lies above its margin δ and the Holm-adjusted",
        'p-value of "effect ≤ δ" is below α; **contradicted** when a test that has power lies below δ and the',
        'Holm-adjusted p-value of "effect ≥ δ" (Bonferroni over the prediction\'s tests) is below α;',
        '**inconclusive** otherwise, with the reason "no power" where a test\'s largest reachable effect (the',
        "`power` column) lies within its interval's width of δ (a blind null of a statistic that another null",
        "tests with power is reported and decides nothing); **n/a** with its reason when the model",
        "or run cannot answer. The effect is trained − null; a null from the random-weight ensemble R is the",
        "prediction interval of a new seed, t·sd·√(1 + 1/n). Every prediction is driven to supported and to",
        "contradicted by constructed models in [the planted-truth zoo](planted.md).",
        "",
    ]
    for p in PREDICTIONS:
        lines += [f"## {p.key}", "", p.explanation, "", f"- statistic: `{p.statistic}`"]
        lines.append("- reads: " + ", ".join(f"`{m}`" for m in p.needs))
        lines.append("")
    lines += ["## Margins and α (`[verdicts]`)", "", "| setting | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in helps.items()]
    return "\n".join(lines) + "\n"


def _type_name(tp: typing.Any) -> str:
    text = str(tp).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "").replace(" | ", " or ")


def config_md() -> str:
    from spectral.config import SECTIONS, ExperimentConfig

    lines = [
        "# Configuration",
        "",
        "Every setting of a run (generated from `spectral.config` by `docs/gen_reference.py`). A TOML file",
        "(`spectral run --config my.toml`) sets them by section; each is also a flag of `spectral run`",
        "(`--field-name`; `--model` is `[model] name`, `--corpus` is `[corpus] source`) and a keyword of",
        "`sp.measure`. A run's `manifest.json` holds its resolved config and reruns it.",
        "",
    ]
    owners: list[tuple[str | None, type]] = [(None, ExperimentConfig), *SECTIONS.items()]
    for section, cls in owners:
        hints = typing.get_type_hints(cls)
        lines += [
            f"## {'top level' if section is None else f'[{section}]'}",
            "",
            "| field | type | default | meaning |",
        ]
        lines.append("|---|---|---|---|")
        for f in dataclasses.fields(cls):
            if section is None and f.name in SECTIONS:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            meaning = f.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{_type_name(hints[f.name])}` | `{default!r}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


FILES = {"predictions.md": predictions_md, "config.md": config_md}


def main() -> int:
    for name, make in FILES.items():
        (DOCS / name).write_text(make(), encoding="utf-8")
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
