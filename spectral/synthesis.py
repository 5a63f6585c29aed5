"""Across runs: many run directories read as one table, each with its battery revision, and the registry of
the facts a written note prints, each traced to the file and row it came from.

Used by ``experiments/research_note.py`` (the research note), the app's Compare page (the outcome matrix of
any set of runs) and their tests. A fact is never typed: :class:`Facts` reads it from a file and records
where; :func:`check_facts` reads every recorded fact again and says which no longer matches.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spectral.predictions import BATTERY_REVISION, read_verdicts, stale_predictions
from spectral.predictions.decision import Verdict

# commits whose battery matches a revision, for manifests written before the revision was recorded
_REVISION_ANCHORS = ((3, "50b59fe"), (2, "552c0be"))


def battery_revision(manifest: dict[str, Any], repo: Path | None = None) -> int:
    """The battery revision a run was measured with: the manifest's own ``battery``, else the newest revision
    whose anchor commit is an ancestor of the run's ``git_commit`` (1 when neither tells)."""
    if "battery" in manifest:
        return int(manifest["battery"])
    commit = str(manifest.get("git_commit") or "").removesuffix("-dirty")
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        return 1
    for revision, anchor in _REVISION_ANCHORS:
        try:
            ok = subprocess.run(
                ["git", "merge-base", "--is-ancestor", anchor, commit],
                cwd=repo,
                capture_output=True,
                check=False,
            )
        except OSError:
            return 1
        if ok.returncode == 0:
            return revision
    return 1


@dataclass
class RunRecord:
    """One run directory (or canonical results folder) as the synthesis reads it."""

    key: str
    path: Path
    manifest: dict[str, Any]
    verdicts: list[Verdict]
    revision: int
    stale: set[str] = field(default_factory=set)  # prediction numbers an older battery cannot speak for

    @property
    def label(self) -> str:
        return self.key

    def verdict(self, number: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.prediction.split(" ", 1)[0] == number), None)


def read_record(path: Path, key: str | None = None, repo: Path | None = None) -> RunRecord | None:
    """A folder with verdicts.csv (and, for a revision, manifest.json) as a :class:`RunRecord`; None without
    verdicts.csv or with one of the threshold-era format (pass/fail, no effect or CI)."""
    vpath = path / "verdicts.csv"
    if not vpath.is_file():
        return None
    header = vpath.read_text(encoding="utf-8").split("\n", 1)[0].split(",")
    if "outcome" not in header:  # the pass/fail verdicts before nulls (no effect, no CI): not comparable
        return None
    mpath = path / "manifest.json"
    manifest = json.loads(mpath.read_text(encoding="utf-8")) if mpath.is_file() else {}
    revision = battery_revision(manifest, repo) if manifest else 1
    verdicts = read_verdicts(vpath.read_text(encoding="utf-8"))
    return RunRecord(key or path.name, path, manifest, verdicts, revision, stale_predictions(revision))


def is_current(record: RunRecord) -> bool:
    return record.revision >= BATTERY_REVISION


def outcome_table(records: list[RunRecord]) -> str:
    """CSV: one row per (run, prediction): outcome, effect with its interval, margin, Holm p, stale."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "prediction", "outcome", "statistic", "effect", "effect_ci_low", "effect_ci_high", "margin",
                "p_holm", "battery", "stale"])  # fmt: skip
    for r in records:
        for v in r.verdicts:
            n = v.prediction.split(" ", 1)[0]
            w.writerow([r.key, v.prediction, v.outcome, v.statistic, f"{v.effect:.6g}", f"{v.effect_ci_low:.6g}",
                        f"{v.effect_ci_high:.6g}", f"{v.margin:.6g}", f"{v.p_holm:.6g}", r.revision,
                        "yes" if n in r.stale else "no"])  # fmt: skip
    return buf.getvalue()


def outcome_counts(records: list[RunRecord], number: str) -> tuple[dict[str, int], list[str]]:
    """How many runs give each outcome for prediction ``number`` (an outcome an older battery measured is not
    counted: ``counts["stale"]`` says how many were left out), and the current runs that support it."""
    got = [(r.key, r.verdict(number), number in r.stale) for r in records]
    cur = [(k, v) for k, v, old in got if v is not None and not old]
    counts = {o: sum(v.outcome == o for _, v in cur) for o in ("supported", "contradicted", "inconclusive", "n/a")}
    counts["no power"] = sum(v.no_power for _, v in cur)
    counts["stale"] = sum(v is not None and old for _, v, old in got)
    return counts, [k for k, v in cur if v.outcome == "supported"]


def corpus_flips(records: list[RunRecord], keys: list[str]) -> list[tuple[str, list[str], bool]]:
    """Runs of one model on several corpora: (prediction, outcome per run, one side stale) where they differ."""
    out = []
    for key in keys:
        n = key.split(" ", 1)[0]
        outs = [v.outcome if (v := r.verdict(n)) is not None else "not run" for r in records]
        if len(set(outs)) > 1:
            out.append((key, outs, any(n in r.stale for r in records)))
    return out


# ---- facts: every number a note prints, with where it came from ------------------------------------------


def fmt_number(value: float, digits: int = 3) -> str:
    """The note's number format: ``digits`` significant digits, no exponent for ordinary magnitudes."""
    if not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-4):
        return f"{value:.{digits - 1}e}"
    text = f"{value:.{digits}g}"
    if "e" in text:  # e.g. 1.2e+03 from a 4-digit integer part: print it whole
        text = f"{value:.0f}"
    return text


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _locate(path: Path, where: dict[str, str], column: str) -> str:
    if path.suffix == ".json":
        node: Any = json.loads(path.read_text(encoding="utf-8"))
        for part in column.split("."):
            node = node[part]
        return str(node)
    rows = [r for r in _read_csv(path) if all(r.get(k) == v for k, v in where.items())]
    if len(rows) != 1:
        raise KeyError(f"{path}: {len(rows)} rows match {where} (want exactly one)")
    return rows[0][column]


class Facts:
    """Numbers read from files for a note: ``csv(path, where, column)`` returns the printed string and records
    (printed, path, where, column, digits); ``literature(text, source)`` records a number quoted from a paper."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows: list[dict[str, str]] = []

    def _rel(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.root.resolve()))

    def value(self, path: Path, where: dict[str, str], column: str) -> float:
        return float(_locate(path, where, column))

    def csv(self, path: Path, where: dict[str, str], column: str, digits: int = 3, scale: float = 1.0) -> str:
        """The value at (``where``, ``column``) of a CSV file (or the dotted key ``column`` of a JSON file) times
        ``scale``, printed with ``digits`` significant digits; recorded."""
        raw = _locate(path, where, column)
        try:
            printed = fmt_number(float(raw) * scale, digits)
        except ValueError:
            printed = raw
        self.rows.append({"printed": printed, "source": self._rel(path), "where": json.dumps(where, sort_keys=True),
                          "column": column, "digits": str(digits), "scale": repr(scale)})  # fmt: skip
        return printed

    def text(self, path: Path, where: dict[str, str], column: str) -> str:
        """A text cell as it stands (a null's description, a token): recorded, the numbers in it traced."""
        raw = _locate(path, where, column)
        self.rows.append({"printed": raw, "source": self._rel(path), "where": json.dumps(where, sort_keys=True),
                          "column": column, "digits": "", "scale": ""})  # fmt: skip
        return raw

    def effect(self, path: Path, prediction: str, digits: int = 3) -> str:
        """'effect [low, high]' of one prediction from a verdicts.csv."""
        where = {"prediction": prediction}
        e, lo, hi = (self.csv(path, where, c, digits) for c in ("effect", "effect_ci_low", "effect_ci_high"))
        return f"{e} [{lo}, {hi}]"

    def literature(self, printed: str, source: str) -> str:
        self.rows.append(
            {"printed": printed, "source": source, "where": "", "column": "literature", "digits": "", "scale": ""}
        )
        return printed

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, ["printed", "source", "where", "column", "digits", "scale"], lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()


def check_facts(facts_csv: str, root: Path) -> list[str]:
    """Every recorded fact read again from its file: the mismatches (empty when the note still holds)."""
    bad = []
    for row in csv.DictReader(io.StringIO(facts_csv)):
        if row["column"] == "literature":
            continue
        path = root / row["source"]
        try:
            raw = _locate(path, json.loads(row["where"]), row["column"])
        except (KeyError, OSError) as exc:
            bad.append(f"{row['source']} {row['where']} {row['column']}: {exc}")
            continue
        try:
            scale = float(row.get("scale") or 1.0)
            again = fmt_number(float(raw) * scale, int(row["digits"])) if row["digits"] else raw
        except ValueError:
            again = raw
        if again != row["printed"]:
            bad.append(f"{row['source']} {row['where']} {row['column']}: printed {row['printed']}, file says {again}")
    return bad


NUMBER = re.compile(r"(?<![\w.\-])-?\d+\.\d+(?:e[+-]?\d+)?(?![\w.])")  # not inside names (Llama-3.2-1B)


def untraced_numbers(text: str, facts_csv: str) -> list[str]:
    """Decimal numbers in ``text`` that no recorded fact printed (measured numbers are decimals; integers in
    the prose are counts and names of layers, bands and predictions)."""
    printed = {row["printed"] for row in csv.DictReader(io.StringIO(facts_csv))}
    known = {m for p in printed for m in NUMBER.findall(p)} | printed
    return sorted({n for n in NUMBER.findall(text) if n not in known})


SUMMARY_METRICS = (
    "norm_mean",
    "growth_rate",
    "carrier_energy",
    "carrier_energy_mid",  # prediction 2's statistic, and the same with the massive-activation tokens left out
    "carrier_energy_nosink_mid",
    "anisotropy",
    "centered_anisotropy",
    "rogue_top1_share",
    "sink_fraction",
    "eff_rank",
    "band_energy_k10_b0",
    "band_energy_k10_b9",
    "logit_lens_acc",
)


def summary_csv(metrics_csv: str) -> str:
    """The trained condition's resid_post / final rows of a run's metrics.csv for :data:`SUMMARY_METRICS`:
    the few per-layer numbers a cross-model note quotes (kept beside the canonical verdicts)."""
    rows = list(csv.DictReader(io.StringIO(metrics_csv)))
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        site = r["site"]
        if (
            r["condition"] == "trained"
            and r["metric"] in SUMMARY_METRICS
            and (site.startswith("resid_post") or site == "final")
        ):
            w.writerow(r)
    return buf.getvalue()
