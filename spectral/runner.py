"""``spectral run``: config -> model + windows -> streamed statistics -> metrics, figures, report.

Inputs are validated (model, sites, corpus, context length, output directory) before anything
is written; from then on the manifest says ``running`` until the run is ``complete`` or
``failed`` with its reason.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectral.analysis.battery import Measurement, battery_metrics
from spectral.analysis.hypotheses import evaluate, verdicts_csv
from spectral.analysis.metrics import MetricTable, compute_metrics
from spectral.capture import select_sites
from spectral.config import ExperimentConfig
from spectral.corpus import make_windows
from spectral.errors import RunDirError
from spectral.export import save_figures
from spectral.figureset import build_figures
from spectral.measure import measure
from spectral.models import LoadedModel, load_model
from spectral.runs import (
    atomic_write_text,
    default_run_dir,
    git_commit,
    package_versions,
    prepare_run_dir,
    slug,
    write_manifest,
)


@dataclass(frozen=True)
class RunResult:
    """Where a finished run lies and what it measured."""

    run_dir: Path
    report: Path
    metrics: MetricTable


def run_experiment(
    cfg: ExperimentConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    command: str | None = None,
    on_batch: Callable[[str, int, int], None] | None = None,
) -> RunResult:
    """Run ``cfg`` end to end; ``on_batch(condition, done, total)`` reports progress (raise to cancel)."""
    from spectral.report import build_report

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    config = cfg.to_dict()
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output path {run_dir} exists and is not a directory")

    model = load_model(cfg.model)
    sites = select_sites(model.arch, cfg.capture.sites)
    windows = make_windows(model.tokenizer, cfg.corpus, n_ctx=model.arch.n_ctx, seed=cfg.seed)
    timings["load"] = time.perf_counter() - t0
    prepare_run_dir(run_dir, config, overwrite)

    label = slug(cfg.model.name)
    n_stat = len(windows) * (windows.ids.shape[1] - (1 if cfg.capture.exclude_first else 0))
    manifest: dict[str, Any] = {
        "status": "running",
        "config": config,
        "model_label": label,
        "command": command or "spectral run --config " + shlex.quote(str(run_dir / "manifest.json")),
        "model_source": {"kind": model.source.kind, "path": str(model.source.path)},
        "weights_sha256": model.weights_sha256(),
        "arch": {k: getattr(model.arch, k) for k in model.arch.__dataclass_fields__},
        "sites": list(sites),
        "corpus": {
            "name": windows.corpus.name,
            "sha256": windows.corpus.sha256,
            "n_documents": windows.corpus.n_documents,
            "n_tokens": windows.n_tokens,
            "n_available": windows.n_available,
            "n_windows": len(windows),
            "has_bos": windows.has_bos,
            "n_stat_tokens": n_stat,
        },
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_manifest(run_dir, manifest)
    try:
        rows = []
        measurements: list[Measurement] = []
        twin: LoadedModel | None = None
        for cond in ("trained", *cfg.controls):
            if cond == "random_init":
                twin = load_model(cfg.model, random_init=True, seed=cfg.seed)
            m = twin if cond == "random_init" and twin is not None else model
            t = time.perf_counter()
            desc = f"{label} [{cond}]" if progress else None
            try:
                cb = None if on_batch is None else (lambda done, total, cond=cond: on_batch(cond, done, total))
                meas = measure(m, windows, sites, cfg, cond, desc, cb)
            except TypeError as exc:  # a forward without position ids cannot run control P
                if cond != "permuted":
                    raise
                log(f"control P skipped: {m.arch.architecture} takes no position ids ({exc})")
                continue
            timings[f"capture_{cond}"] = time.perf_counter() - t
            if meas.bank.excluded or meas.bank.nonfinite_counts:
                manifest.setdefault("nonfinite", {})[cond] = {
                    "excluded_windows": sorted(set(meas.bank.excluded)),
                    "tokens_per_site": meas.bank.nonfinite_counts,
                }
                log(f"{cond}: {len(set(meas.bank.excluded))} windows with NaN/inf excluded")
            t = time.perf_counter()
            rows.extend(compute_metrics(meas.bank, label, cond, cfg.analysis, cfg.seed).rows)
            rows.extend(battery_metrics(label, meas, cfg.analysis, cfg.seed, cfg.verdicts.resonance_top_bands))
            timings[f"analysis_{cond}"] = time.perf_counter() - t
            measurements.append(meas)
        table = MetricTable(tuple(rows))
        atomic_write_text(run_dir / "metrics.csv", table.to_csv())
        verdicts = evaluate(table, manifest["arch"], cfg.verdicts, cfg.analysis)
        atomic_write_text(run_dir / "verdicts.csv", verdicts_csv(verdicts))

        t = time.perf_counter()
        title = f"{label} · {Path(windows.corpus.name).name} · {len(windows)}×{cfg.corpus.seq_len} tokens"
        figures, data, captions = build_figures(
            table, measurements, cfg.analysis.bands[0], title, cfg.analysis.ci_level
        )
        context = (
            f"Model {label} ({model.arch.architecture}, {model.arch.norm_placement}-LN); corpus "
            f"{Path(windows.corpus.name).name}: {len(windows)} windows of {cfg.corpus.seq_len} tokens, "
            f"{n_stat} tokens in the statistics (position 0 excluded: {cfg.capture.exclude_first}); sites "
            f"{', '.join(cfg.capture.sites)}. Bands: 95% CI, bootstrap over windows ({cfg.analysis.n_boot} "
            f"resamples) for per-window statistics, jackknife over {cfg.capture.moment_buckets} window buckets "
            "for moment statistics."
        )
        captions = {k: f"{v} {context}" for k, v in captions.items()}
        manifest["figures"], manifest["png_note"] = save_figures(
            run_dir, figures, data, captions, log, formats=cfg.formats
        )
        timings["figures"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        manifest.update(status="complete", timings=timings, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_manifest(run_dir, manifest)
        report = build_report(run_dir)
    except BaseException as exc:
        manifest.update(status="failed", reason=f"{exc.__class__.__name__}: {exc}", timings=timings)
        write_manifest(run_dir, manifest)
        raise
    return RunResult(run_dir, report, table)
