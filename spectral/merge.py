"""``spectral merge RUN_1 ... RUN_n --out RUN``: combine shard runs into the run over everything.

Each shard run (``spectral run --shard i/n``) keeps the capture state of every condition under
``RUN_i/state/``. The merge checks that the shards are complete, come from one config (apart
from the shard), one set of weights and one corpus, and cover ``0..n-1`` exactly once; then it
adds the states (exact: sums add, per-window rows concatenate), runs the interventions (they
need the model and the full-corpus carrier) and writes the same outputs as ``spectral run``.
An interrupted merge leaves ``RUN/manifest.json`` at ``running`` / ``failed``; running the same
command again redoes it (the shards are only read).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spectral.analysis.metrics import MetricRow, MetricTable
from spectral.capture import Calibration
from spectral.conditions import ConditionCapture
from spectral.config import config_from_dict
from spectral.errors import RunDirError
from spectral.figureset import FigureData, figure_data
from spectral.runner import RunResult, analyse_condition, cfg_bands, condition_models, finish_run, setup_run
from spectral.runs import Manifest, failpoint, load_state, prepare_run_dir, read_manifest, state_path, write_manifest


def _shards(runs: list[Path]) -> tuple[dict[str, Any], list[tuple[Path, Manifest]], int]:
    """(common config without shard, [(run, manifest)] ordered by shard index, n)."""
    if not runs:
        raise RunDirError("spectral merge needs at least one shard run")
    found: dict[int, tuple[Path, Manifest]] = {}
    base: dict[str, Any] | None = None
    n_all: set[int] = set()
    ident: set[tuple[Any, Any]] = set()
    for run in runs:
        man = read_manifest(run)
        if man.get("status") != "complete":
            raise RunDirError(f"shard {run} is not complete (status {man.get('status')}: {man.get('reason', '')})")
        cfg = man["config"]
        shard = cfg.get("capture", {}).get("shard")
        if not shard:
            raise RunDirError(f"{run} is not a shard run (made without --shard i/n)")
        i, n = (int(v) for v in shard.split("/"))
        if i in found:
            raise RunDirError(f"shard {i}/{n} given twice ({found[i][0]} and {run})")
        found[i] = (run, man)
        n_all.add(n)
        common = {**cfg, "capture": {**cfg["capture"], "shard": None}, "out": None}
        if base is None:
            base = common
        elif common != base:
            from spectral.runs import config_diff

            raise RunDirError(
                f"shard {run} was made with another config (differs in {', '.join(config_diff(base, common))})"
            )
        ident.add((man.get("weights_sha256"), man.get("corpus", {}).get("sha256")))
    if len(n_all) != 1:
        raise RunDirError(f"shards of different splits given: /{', /'.join(map(str, sorted(n_all)))}")
    (n,) = n_all
    missing = sorted(set(range(n)) - set(found))
    if missing:
        raise RunDirError(f"shards {', '.join(f'{i}/{n}' for i in missing)} are missing")
    if len(ident) != 1:
        raise RunDirError("the shards were made from different model weights or corpora")
    assert base is not None
    return base, [found[i] for i in range(n)], n


def merge_runs(
    runs: list[Path],
    out: Path,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    command: str | None = None,
) -> RunResult:
    """Merge complete shard runs into ``out`` (see the module docstring)."""
    t0 = time.perf_counter()
    base, shards, n = _shards([Path(r) for r in runs])
    cfg = config_from_dict({**base, "out": str(out)}, "merged config")
    s = setup_run(cfg, command or "spectral merge " + " ".join(str(r) for r in runs) + f" --out {out}")
    if s.manifest["weights_sha256"] != shards[0][1].get("weights_sha256"):
        raise RunDirError(f"the model {cfg.model.name} no longer has the weights the shards were made with")
    manifest = s.manifest
    manifest["merged_from"] = [str(r) for r, _ in shards]
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    prepare_run_dir(s.run_dir, manifest["config"], overwrite)
    write_manifest(s.run_dir, manifest)
    try:
        rows: list[MetricRow] = []
        measurements: list[FigureData] = []
        for cond, m in condition_models(s):
            paths = [state_path(r, cond, (i, n)) for i, (r, _) in enumerate(shards)]
            if not paths[0].is_file():
                log(f"{cond}: no state in the shards (skipped when they ran)")
                continue
            first = load_state(paths[0])
            cc = ConditionCapture(m, s.windows, s.sites, cfg, cond, Calibration.from_state_dict(first["calibration"]))
            cc.load_state_dict(first)
            if not cc.complete:
                raise RunDirError(f"shard state {paths[0]} is incomplete")
            for p in paths[1:]:
                cc.merge_state(load_state(p))
            failpoint("merge-condition")
            rows += analyse_condition(s, cc, manifest, timings, log)
            measurements.append(figure_data(cc.measurement(), cfg_bands(s), s.cfg.analysis.ci_level))
            del cc  # the d x d moments of this condition are no longer needed
        report = finish_run(s, rows, measurements, manifest, timings, t0, log)
    except BaseException as exc:
        manifest.update(status="failed", reason=f"{exc.__class__.__name__}: {exc}", timings=timings)
        write_manifest(s.run_dir, manifest)
        raise
    return RunResult(s.run_dir, report, MetricTable(tuple(rows)))
