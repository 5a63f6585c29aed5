"""``spectral run``: config -> model + windows -> streamed statistics -> metrics, figures, report.

Inputs are validated (model, sites, corpus, context length, output directory) before anything
is written; from then on the manifest says ``running`` until the run is ``complete`` or
``failed`` with its reason.

Long runs survive being killed: the capture state of the condition in progress is saved every
``capture.checkpoint_every`` windows and after each condition (``RUN/state/*.pt``, atomic), and
``run_experiment(cfg, resume=True)`` (``spectral run --resume RUN``) continues from there with
the identical result. A run with ``capture.shard = "i/n"`` captures windows ``i::n`` only and
keeps its state for ``spectral merge``; under ``torchrun`` every rank is such a shard and rank 0
gathers the states, merges them and analyses (see :mod:`spectral.distributed`).
"""

from __future__ import annotations

import inspect
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectral.analysis.battery import battery_metrics
from spectral.analysis.metrics import MetricRow, MetricTable, compute_metrics
from spectral.capture import Calibration, select_sites
from spectral.conditions import ConditionCapture, is_null_condition
from spectral.config import ExperimentConfig
from spectral.corpus import CorpusText, TokenWindows, make_windows
from spectral.errors import ResumeRefused, RunDirError
from spectral.export import save_figures, start_static_export, stop_static_export
from spectral.figureset import FigureData, build_figures, figure_data
from spectral.models import LoadedModel, load_model
from spectral.predictions import BATTERY_REVISION, evaluate, sensitivity_csv, verdicts_csv
from spectral.predictions.base import is_scaled_member, is_w_member
from spectral.runs import (
    STATE_DIR,
    Manifest,
    atomic_write_text,
    check_free_space,
    config_diff,
    default_run_dir,
    failpoint,
    git_commit,
    load_state,
    package_versions,
    prepare_run_dir,
    read_manifest,
    release_memory,
    save_state,
    slug,
    state_path,
    write_manifest,
)


@dataclass(frozen=True)
class RunResult:
    """Where a finished run lies and what it measured (a shard run has no report or metrics)."""

    run_dir: Path
    report: Path | None
    metrics: MetricTable


@dataclass
class Setup:
    """Everything a run needs before its first forward pass."""

    cfg: ExperimentConfig
    run_dir: Path
    model: LoadedModel
    sites: tuple[str, ...]
    windows: TokenWindows
    label: str
    manifest: Manifest
    persist: bool = True  # capture states checkpointed in the run directory (False: in memory, nothing written)
    keep_model: bool = False  # the caller's model survives: W is undone in place, the weights are not released


def setup_run(
    cfg: ExperimentConfig, command: str | None, model: LoadedModel | None = None, corpus: CorpusText | None = None
) -> Setup:
    """Load the model (unless given: a loaded one whose spec is ``cfg.model``) and the windows (of ``corpus``
    when given, else of ``cfg.corpus.source``) and draft the manifest (nothing is written yet)."""
    config = cfg.to_dict()
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output path {run_dir} exists and is not a directory")
    model = model or load_model(cfg.model)
    sites = select_sites(model.arch, cfg.capture.sites)
    windows = make_windows(model.tokenizer, cfg.corpus, n_ctx=model.arch.n_ctx, seed=cfg.seed, corpus=corpus)
    label = slug(cfg.model.name)
    n_stat = len(windows) * (windows.ids.shape[1] - (1 if cfg.capture.exclude_first else 0))
    manifest: Manifest = {
        "status": "running",
        "config": config,
        "model_label": label,
        "command": command or "spectral run --config " + shlex.quote(str(run_dir / "manifest.json")),
        "model_source": {"kind": model.source.kind, "path": str(model.source.path)},
        "gguf": model.source.gguf or None,
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
        "battery": BATTERY_REVISION,
        "packages": package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Setup(cfg, run_dir, model, sites, windows, label, manifest)


def estimate_state_bytes(s: Setup) -> int:
    """Disk a run needs at most at once: two copies (old + new) of the largest condition's capture
    state (per site: B d x d float64 moments, cross moments for writes, sink moments) + outputs."""
    B, d, L = s.cfg.capture.moment_buckets, s.model.arch.d_model, s.model.arch.n_layers
    per_site = B * d * d * 8
    writes = sum(1 for x in s.sites if x.startswith(("attn_out.", "mlp_out.")))
    state = per_site * (2 * len(s.sites) + writes) + L * B * d * d * 8 // max(1, int(s.model.bridge.cfg.n_heads))
    return 2 * state + (32 << 20)


def _check_resumable(s: Setup) -> Manifest:
    """The manifest of the run to resume, after checking it is this run and not finished."""
    old = read_manifest(s.run_dir)
    diff = config_diff(old.get("config") or {}, s.manifest["config"])
    if diff:
        raise ResumeRefused(f"cannot resume {s.run_dir}: its config differs in {', '.join(diff)}")
    if old.get("status") == "complete":
        raise RunDirError(f"run {s.run_dir} is already complete; nothing to resume")
    for key, what in (("weights_sha256", "model weights"), ("corpus", "corpus")):
        a, b = old.get(key), s.manifest[key]
        if key == "corpus":
            a, b = (a or {}).get("sha256"), b["sha256"]
        if a != b:
            raise ResumeRefused(f"cannot resume {s.run_dir}: the {what} changed since it started")
    if old.get("battery") != s.manifest.get("battery"):  # its saved statistics lack what this battery measures
        raise ResumeRefused(
            f"cannot resume {s.run_dir}: it was started by battery revision {old.get('battery', '< 3')}, this is "
            f"revision {s.manifest.get('battery')} (start it again)"
        )
    return old


def run_experiment(
    cfg: ExperimentConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    command: str | None = None,
    on_batch: Callable[[str, int, int], None] | None = None,
    resume: bool = False,
) -> RunResult:
    """Run ``cfg`` end to end; ``on_batch(condition, done, total)`` reports progress (raise to cancel).

    ``resume=True`` continues the interrupted run in ``cfg.out`` from its last saved state.
    """
    from spectral import distributed

    t0 = time.perf_counter()
    dist = distributed.context()
    if dist is not None and cfg.capture.shard is not None:
        raise RunDirError("capture.shard and torchrun do not combine: under torchrun every rank is a shard")
    s = setup_run(cfg, command)
    shard = (dist.rank, dist.world) if dist is not None else cfg.capture.shard_pair()
    lead = dist is None or dist.rank == 0
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    manifest = s.manifest
    if shard[1] > 1:
        manifest["shard"] = f"{shard[0]}/{shard[1]}"
    if resume:
        old = _check_resumable(s)
        for tmp in (s.run_dir / STATE_DIR).glob(".*.tmp") if lead else ():
            tmp.unlink(missing_ok=True)  # a state write the kill interrupted (the previous state is intact)
        manifest["started"] = old.get("started", manifest["started"])
        manifest["resumed"] = [*old.get("resumed", []), time.strftime("%Y-%m-%dT%H:%M:%S%z")]
    elif lead:
        check_free_space(s.run_dir, estimate_state_bytes(s))  # before anything is written
        prepare_run_dir(s.run_dir, manifest["config"], overwrite)
    if dist is not None:
        dist.barrier()
    if lead:
        write_manifest(s.run_dir, manifest)
    try:
        rows, measurements = measure_conditions(s, shard, resume, progress, log, on_batch, timings, dist)
        if not lead:
            assert dist is not None
            dist.barrier()  # rank 0 analyses and writes; the others wait for it
            return RunResult(s.run_dir, None, MetricTable(()))
        if shard[1] > 1 and dist is None:
            timings["total"] = time.perf_counter() - t0
            manifest.update(status="complete", timings=timings, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            write_manifest(s.run_dir, manifest)
            log(f"shard {shard[0]}/{shard[1]} captured; combine the shards with `spectral merge`")
            return RunResult(s.run_dir, None, MetricTable(()))
        report = finish_run(s, rows, measurements, manifest, timings, t0, log)
    except BaseException as exc:
        if lead:
            manifest.update(status="failed", reason=f"{exc.__class__.__name__}: {exc}", timings=timings)
            write_manifest(s.run_dir, manifest)
        raise
    if dist is not None:
        dist.barrier()
    return RunResult(s.run_dir, report, MetricTable(tuple(rows)))


def measure_conditions(
    s: Setup,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda m: None,
    on_batch: Callable[[str, int, int], None] | None = None,
    timings: dict[str, float] | None = None,
    dist: Any = None,
) -> tuple[list[MetricRow], list[FigureData]]:
    """Capture and analyse every condition (trained, controls, nulls) in turn: the metric rows and the
    figure data. A shard (or a non-lead rank) only captures: its state is its result."""
    timings = {} if timings is None else timings
    lead = dist is None or dist.rank == 0
    rows: list[MetricRow] = []
    measurements: list[FigureData] = []
    for cond, m in _timed_models(condition_models(s), timings):
        t = time.perf_counter()
        cc = _capture(s, m, cond, shard, resume, progress, log, on_batch)
        if cc is None:
            continue
        if dist is not None:
            dist.merge_into(cc)
        timings[f"capture_{cond}"] = time.perf_counter() - t
        release_memory()  # the state write's temporaries: out of the analysis's peak
        if not lead or shard[1] > 1 and dist is None:
            continue  # a shard: its state is its result (spectral merge analyses)
        t_an = time.perf_counter()
        if progress:
            log(f"{cond}: analysing the captured statistics")
        rows += analyse_condition(s, cc, s.manifest, timings, log)
        if progress:
            log(f"{cond}: analysed in {time.perf_counter() - t_an:.1f} s")
        later_member = (
            is_scaled_member(cond)
            or is_w_member(cond)
            and cond != "permuted_weights"
            or cond.startswith("random_init.s")
            and any(x.condition.startswith("random_init") for x in measurements)
        )
        if not later_member:  # figures show R's first seed and W's first permutation; the spread is in the verdicts
            measurements.append(figure_data(cc.measurement(), cfg_bands(s), s.cfg.analysis.ci_level))
        del cc  # the d x d moments of this condition are no longer needed
        release_memory(collect=not is_null_condition(cond))
    rank = {c: i for i, c in enumerate(_CONDITION_ORDER)}
    rows.sort(key=lambda r: rank.get(r.condition.split(".")[0], len(rank)))  # stable: R's members, then rescaled
    return rows, measurements


# the order of the conditions' rows in metrics.csv (the rescaled R members are measured beside R's, listed after)
_CONDITION_ORDER = ("trained", "shuffled", "permuted", "permuted_weights", "random_init", "random_scaled")


def _timed_models(
    models: Iterator[tuple[str, LoadedModel]], timings: dict[str, float]
) -> Iterator[tuple[str, LoadedModel]]:
    """``models`` with the time each took to prepare (W's permutation with the previous one undone, an R
    seed's init) in ``timings["prepare_<condition>"]``."""
    t = time.perf_counter()
    for cond, m in models:
        if time.perf_counter() - t > 0.05:
            timings[f"prepare_{cond}"] = time.perf_counter() - t
        yield cond, m
        t = time.perf_counter()


def cfg_bands(s: Setup) -> int:
    """K of the band figures (the first of [analysis] bands)."""
    return s.cfg.analysis.bands[0]


def condition_models(s: Setup) -> Iterator[tuple[str, LoadedModel]]:
    """(condition, model) for the trained model, the controls and the nulls, in an order that never holds
    two models at once: the conditions that run the trained weights (S, P) first, then W (the trained
    weights permuted in place), then the R ensemble (one random-weight twin, given each next seed's init
    in place). ``s.model`` keeps its ``arch`` and tokenizer for the report."""
    from spectral.analysis.controls import (
        parameter_norms,
        permute_weights,
        permuted_matrices,
        reinitialise,
        rescale_to,
        restore_matrices,
    )

    cfg = s.cfg
    for cond in ("trained", *(c for c in ("shuffled", "permuted") if c in cfg.controls)):
        yield cond, s.model
    scaled = "random_scaled" in cfg.controls
    norms = parameter_norms(s.model.hf_model) if scaled else {}  # W keeps every matrix's norm; taken before it
    if "permuted_weights" in cfg.controls and cfg.permutations > 0:
        # each member is permuted from a copy of the trained matrices (one permutation per member, none undone);
        # the copy gives the trained weights back exactly where the caller keeps the model
        saved = permuted_matrices(s.model.hf_model)
        try:
            for k in range(cfg.permutations):
                seed = cfg.seed + k
                permute_weights(s.model.hf_model, seed, source=saved)
                s.model.forget_unembedding_basis()  # W's unembedding is permuted too
                yield ("permuted_weights" if k == 0 else f"permuted_weights.s{seed}"), s.model
        finally:  # after the last member, or when a member's analysis failed: the caller's weights back, exactly
            if s.keep_model:
                restore_matrices(s.model.hf_model, saved)
                s.model.forget_unembedding_basis()
        del saved
    if "random_init" in cfg.controls or scaled:
        if not s.keep_model:
            s.model.release_weights()
        twin: LoadedModel | None = None

        def fresh(seed: int) -> LoadedModel:
            nonlocal twin
            if twin is None:
                twin = load_model(cfg.model, random_init=True, seed=seed)
            else:
                reinitialise(twin.hf_model, seed)
                twin.seed = seed
                twin.forget_unembedding_basis()
            return twin

        def rescaled(m: LoadedModel) -> LoadedModel:
            rescale_to(m.hf_model, norms)
            m.forget_unembedding_basis()
            return m

        # R's seed s, then (where s is also a rescaled seed) the same init rescaled in place: one init for both
        r_seeds = cfg.random_seeds if "random_init" in cfg.controls else ()
        for seed in r_seeds:
            m = fresh(seed)
            yield f"random_init.s{seed}", m
            if scaled and seed in cfg.scaled_seeds:
                yield f"random_scaled.s{seed}", rescaled(m)
        for seed in (x for x in cfg.scaled_seeds if x not in r_seeds) if scaled else ():
            yield f"random_scaled.s{seed}", rescaled(fresh(seed))


def takes_position_ids(model: LoadedModel) -> bool:
    """Whether the model's forward accepts explicit position ids (control P feeds permuted ones)."""
    params = inspect.signature(model.hf_model.forward).parameters
    return "position_ids" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _capture(
    s: Setup,
    model: LoadedModel,
    cond: str,
    shard: tuple[int, int],
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    on_batch: Callable[[str, int, int], None] | None,
) -> ConditionCapture | None:
    """Capture one condition of this shard, from its saved state when resuming (None: P not possible)."""
    path = state_path(s.run_dir, cond, shard)
    saved = load_state(path) if s.persist and resume and path.is_file() else None
    calib = Calibration.from_state_dict(saved["calibration"]) if saved is not None else None
    if cond == "permuted" and not takes_position_ids(model):
        log(f"control P skipped: {model.arch.architecture}'s forward takes no position ids")
        return None
    cc = ConditionCapture(model, s.windows, s.sites, s.cfg, cond, calib)
    if saved is not None:
        cc.load_state_dict(saved)
        log(f"{cond}: resumed after {cc.batches_done} batches" + (" (complete)" if cc.complete else ""))
    if not cc.complete:
        desc = f"{s.label} [{cond}]" if progress else None
        cb = None if on_batch is None else (lambda done, total: on_batch(cond, done, total))
        kept = s.cfg.capture.keep_state or shard[1] > 1  # a state that outlives the run is written with its CRC32
        # a null member's capture (null_windows windows) takes seconds, and writing its state would add a sixth to
        # that to spare those seconds on a resume: not written (a resumed run captures it again, the same numbers)
        transient_null = is_null_condition(cond) and not kept
        save = (lambda c: save_state(path, c.state_dict(), crc=kept)) if s.persist and not transient_null else None
        cc.run(shard, desc, cb, save, s.cfg.capture.checkpoint_every)
    failpoint("condition-captured")
    return cc


def analyse_condition(
    s: Setup, cc: ConditionCapture, manifest: Manifest, timings: dict[str, float], log: Callable[[str], None]
) -> list[MetricRow]:
    """Interventions and every metric of one complete (possibly merged) condition."""
    cfg, cond = s.cfg, cc.condition
    t = time.perf_counter()
    # the tuned lens first: its fit sums (two d x d float64 per layer, 160 MB on SmolLM2) are released once it is
    # fitted, so that they are not held through the sweeps and the statistics (the default job's peak memory)
    phases = {"tune": cc.tune, "interventions": cc.intervene, "modulation": cc.modulate, "transfer": cc.transfer}
    for phase, step in phases.items():  # the forward-running steps of the analysis, each timed apart
        t_step = time.perf_counter()
        step()
        if time.perf_counter() - t_step > 0.05:
            timings[f"{phase}_{cond}"] = time.perf_counter() - t_step
            release_memory()
    if s.run_dir.is_dir():
        if cc.outliers is not None:
            from spectral.outliers import outlier_csv

            atomic_write_text(s.run_dir / "massive.csv", outlier_csv(cc.outliers.rows()))
        if cc.tuned is not None:
            cc.tuned.save(s.run_dir / "tuned_lens.safetensors")
    meas = cc.measurement()
    if meas.bank.excluded or meas.bank.nonfinite_counts:
        manifest.setdefault("nonfinite", {})[cond] = {
            "excluded_windows": sorted(set(meas.bank.excluded)),
            "tokens_per_site": meas.bank.nonfinite_counts,
        }
        log(f"{cond}: {len(set(meas.bank.excluded))} windows with NaN/inf excluded")
    light = is_null_condition(cond)  # a null member: what the predictions read of a null, nothing more
    from spectral.predictions.base import middle_layers

    mid = middle_layers(cc.model.arch.n_layers, cfg.verdicts)
    t_stats = time.perf_counter()
    rows = list(compute_metrics(meas.bank, s.label, cond, cfg.analysis, cfg.seed, light, mid).rows)
    release_memory()
    rows += battery_metrics(s.label, meas, cfg.analysis, cfg.seed, cfg.verdicts.resonance_top_bands, light)
    timings[f"statistics_{cond}"] = time.perf_counter() - t_stats  # the metrics from the captured sums alone
    timings[f"analysis_{cond}"] = time.perf_counter() - t
    return rows


@dataclass
class Outputs:
    """What a run writes, built in memory from its metric rows and figure data."""

    table: MetricTable
    verdicts: list[Any]  # spectral.predictions.Verdict, Holm-adjusted
    sensitivity: str  # sensitivity.csv
    measurements: list[FigureData]


def run_outputs(manifest: Manifest, rows: list[MetricRow], measurements: list[FigureData]) -> Outputs:
    """The metric table, the verdicts and the sensitivity table of a run (its config in ``manifest``)."""
    from spectral.config import config_from_dict

    cfg = config_from_dict(manifest["config"])
    table = MetricTable(tuple(rows))
    verdicts = evaluate(table, manifest["arch"], cfg.verdicts, cfg.analysis)
    return Outputs(table, verdicts, sensitivity_csv(table, manifest["arch"], cfg.verdicts, cfg.analysis), measurements)


def run_figures(manifest: Manifest, out: Outputs) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """(figures, their CSV data, their captions) of a run, from its manifest and outputs."""
    from spectral.config import config_from_dict

    cfg = config_from_dict(manifest["config"])
    corpus, arch = manifest["corpus"], manifest["arch"]
    name = Path(corpus["name"]).name
    title = f"{manifest['model_label']} · {name} · {corpus['n_windows']}×{cfg.corpus.seq_len} tokens"
    figures, data, captions = build_figures(
        out.table, out.measurements, cfg.analysis.bands[0], title, cfg.analysis.ci_level, out.verdicts
    )
    context = (
        f"Model {manifest['model_label']} ({arch['architecture']}, {arch['norm_placement']}-LN); corpus "
        f"{name}: {corpus['n_windows']} windows of {cfg.corpus.seq_len} tokens, "
        f"{corpus['n_stat_tokens']} tokens in the statistics (position 0 "
        f"{'excluded' if cfg.capture.exclude_first else 'included'}); sites {', '.join(cfg.capture.sites)}. "
        f"Bands: {cfg.analysis.ci_level:.0%} CI, "
        f"bootstrap over windows ({cfg.analysis.n_boot} resamples) for per-window statistics, jackknife over "
        f"{cfg.capture.moment_buckets} window buckets for moment statistics."
    )
    return figures, data, {k: f"{v} {context}" for k, v in captions.items()}


def write_outputs(
    run_dir: Path,
    manifest: Manifest,
    out: Outputs,
    log: Callable[[str], None],
    timings: dict[str, float],
    t0: float | None = None,
) -> Path:
    """metrics.csv, verdicts.csv, sensitivity.csv, figures, manifest ``complete`` and the report (all atomic);
    returns the report's path. ``t0``: the run's start (perf_counter), for its total time."""
    from spectral.report import build_report

    atomic_write_text(run_dir / "metrics.csv", out.table.to_csv())
    failpoint("metrics-written")
    atomic_write_text(run_dir / "verdicts.csv", verdicts_csv(out.verdicts))
    atomic_write_text(run_dir / "sensitivity.csv", out.sensitivity)
    t = time.perf_counter()
    formats = tuple(manifest["config"].get("formats", ()))
    start_static_export(formats)  # the browser starts while the figures are built
    try:
        figures, data, captions = run_figures(manifest, out)
        manifest["figures"], manifest["png_note"] = save_figures(run_dir, figures, data, captions, log, formats=formats)
    finally:
        stop_static_export()
    timings["figures"] = time.perf_counter() - t
    if t0 is not None:
        timings["total"] = time.perf_counter() - t0
    manifest.update(status="complete", timings=timings, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_manifest(run_dir, manifest)
    return build_report(run_dir)


def finish_run(
    s: Setup,
    rows: list[MetricRow],
    measurements: list[FigureData],
    manifest: Manifest,
    timings: dict[str, float],
    t0: float,
    log: Callable[[str], None],
) -> Path:
    """Write the run's outputs (:func:`write_outputs`) and drop its capture state unless asked to keep it."""
    t = time.perf_counter()
    out = run_outputs(manifest, rows, measurements)
    timings["verdicts"] = time.perf_counter() - t
    report = write_outputs(s.run_dir, manifest, out, log, timings, t0)
    if not s.cfg.capture.keep_state:
        shutil.rmtree(s.run_dir / STATE_DIR, ignore_errors=True)
    return report
