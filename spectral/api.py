"""The notebook API: ``import spectral as sp``.

    model = sp.load_model("smollm2-135m")
    res = sp.measure(model, ["Once upon a time ...", "The cat sat ..."], seq_len=64)
    res.verdicts                     # one row per prediction: outcome, effect [CI], null, p_holm
    res.figure("norm_profile")       # a plotly Figure
    res.save("reports/runs/mine")    # the run directory of ``spectral run`` (metrics.csv, verdicts.csv, ...)
    sp.open_run("reports/runs/mine") # any past run, as the same Result

:func:`measure` runs what ``spectral run`` runs (the trained model, the controls S and P, the nulls W
and R) in memory: nothing is written until :meth:`Result.save`. The caller's model is given back
unchanged (W's permutation is undone in place; R's twins are loaded beside it). ``spectral run`` is
this function followed by ``save`` with checkpoints on disk (:func:`spectral.runner.run_experiment`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectral.analysis.metrics import MetricTable  # the tidy table, public for front ends
from spectral.config import CorpusSpec, ExperimentConfig, ModelSpec, config_fields, replace_field
from spectral.errors import ConfigError, CorpusError, RunDirError

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from spectral.models import LoadedModel
    from spectral.prompt import PromptTrace
    from spectral.runner import Outputs
    from spectral.runs import Manifest

METRIC_COLUMNS = ("model", "condition", "site", "layer", "metric", "value", "ci_low", "ci_high")


def load_model(name_or_path: str, **options: Any) -> LoadedModel:
    """Load a model as ``spectral run --model`` does: a named model (``smollm2-135m``, ``gemma3-270m``,
    ``qwen2.5-coder-0.5b``, ``minilm``), a .gguf file, a local Hugging Face directory, a llama2.c .bin
    (``tokenizer=`` beside it) or a hub id. ``options`` are the ``[model]`` settings: ``tokenizer``,
    ``device``, ``dtype``, ``revision``, ``trust_remote_code``, ``allow_pickle``."""
    from spectral.models import load_model as _load

    try:
        spec = ModelSpec(name=name_or_path, **options)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(ModelSpec) if f.name != "name")
        raise ConfigError(f"load_model: {exc} (options: {known})") from None
    return _load(spec)


def _field_owner(name: str) -> str | None:
    """The config section holding the field ``name`` (None: the top level): :func:`config.config_fields`, the
    same map the CLI flags come from."""
    owner = config_fields().get(name)
    if owner is None:
        raise ConfigError(f"measure: no setting named {name!r} (see `spectral run -h` for every setting)")
    return owner[0]


def _corpus_of(texts_or_corpus: str | Path | Sequence[str]) -> tuple[str, Any]:
    """(corpus source for the config, CorpusText or None) of what the caller passed."""
    from spectral.corpus import DOC_SEPARATOR, CorpusText

    if isinstance(texts_or_corpus, str | Path):
        return str(texts_or_corpus), None
    docs = list(texts_or_corpus)
    if not docs or not all(isinstance(d, str) for d in docs):
        raise CorpusError("measure: give a corpus source (path or 'builtin') or a non-empty list of strings")
    text = DOC_SEPARATOR.join(d.replace("\r\n", "\n").replace("\r", "\n") for d in docs)
    if not text.strip():
        raise CorpusError("measure: the texts are empty")
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"texts:{sha[:12]}", CorpusText(f"{len(docs)} texts", text, len(docs), sha)


PROBES = ("interventions", "jacobian", "layer_cosine")


def trace_prompt(model: LoadedModel | str, text: str, max_tokens: int = 64) -> PromptTrace:
    """One prompt's resid_post activations with its per-token norms, carrier shares, layer cosines and PCA
    trajectory (:class:`spectral.prompt.PromptTrace`; display only: one prompt has no null)."""
    from spectral.prompt import trace_prompt as _trace

    return _trace(load_model(model) if isinstance(model, str) else model, text, max_tokens)


def measure(
    model: LoadedModel | str,
    texts_or_corpus: str | Path | Sequence[str] = "builtin",
    *,
    sites: str | Iterable[str] = "all",
    controls: Iterable[str] | None = None,
    probes: Iterable[str] | None = None,
    seq_len: int | None = None,
    max_seqs: int | None = None,
    progress: bool = True,
    **settings: Any,
) -> Result:
    """Measure ``model`` on a list of texts (or a corpus source: 'builtin', a .txt / .jsonl file, a directory)
    with the full battery and decide the predictions; in memory, nothing written.

    ``sites``: site patterns ('all', 'resid_post.*', ...). ``controls``: conditions beside the trained model
    (default: the nulls R and W and the controls S and P; ``()`` for none: then most predictions are n/a).
    ``probes``: the optional costly analyses to run, any of ``PROBES`` (default all). ``settings``: any other
    config field by name (``n_boot=200``, ``random_seeds=(1, 2, 3)``, ``null_windows=4``, ...)."""
    from spectral.runner import measure_conditions, run_outputs, setup_run

    if isinstance(model, str):
        model = load_model(model)
    if model.spec is None:
        raise ConfigError("measure: the model has no spec (load it with sp.load_model)")
    if model.bridge is None:
        raise ConfigError("measure: the model's weights were released; load it again")
    source, corpus = _corpus_of(texts_or_corpus)
    cfg = ExperimentConfig(model=model.spec, corpus=CorpusSpec(source=source))
    overrides: dict[str, Any] = dict(settings)
    if seq_len is not None:
        overrides["seq_len"] = seq_len
    if max_seqs is not None:
        overrides["max_seqs"] = max_seqs
    overrides["sites"] = (sites,) if isinstance(sites, str) else tuple(sites)
    if controls is not None:
        overrides["controls"] = tuple(controls)
    chosen = set(PROBES if probes is None else probes)
    unknown = chosen - set(PROBES)
    if unknown:
        raise ConfigError(f"measure: unknown probes {sorted(unknown)}; choose from {', '.join(PROBES)}")
    if "interventions" not in chosen:
        overrides["intervention_windows"] = 0
    if "jacobian" not in chosen:
        overrides["jacobian_windows"] = 0
    if "layer_cosine" not in chosen:
        overrides["layer_cosine"] = False
    for name, value in overrides.items():
        value = tuple(value) if isinstance(value, list) else value
        cfg = replace_field(cfg, _field_owner(name), name, value)
    t0 = time.perf_counter()
    s = setup_run(cfg, "sp.measure(...)", model=model, corpus=corpus)
    s.persist, s.keep_model = False, True
    n_win = int(s.windows.ids.shape[0])
    need = max(16, cfg.null_windows)
    if n_win < need:
        warnings.warn(
            f"sp.measure: the texts gave {n_win} windows of {cfg.corpus.seq_len} tokens; the nulls use "
            f"{cfg.null_windows} windows each and per-window intervals need at least 16: expect wide intervals and "
            "inconclusive verdicts (pass more text, or a smaller seq_len)",
            stacklevel=2,
        )
    timings: dict[str, float] = {}
    say = (lambda m: print(f"sp.measure: {m}", file=sys.stderr)) if progress else (lambda m: None)
    if progress:
        say(f"{n_win} windows × {cfg.corpus.seq_len} tokens; the trained model and {len(cfg.controls)} controls/nulls")
    rows, measurements = measure_conditions(s, progress=progress, timings=timings, log=say)
    timings["total"] = time.perf_counter() - t0
    s.manifest.update(status="measured", timings=timings)
    return Result(s.manifest, run_outputs(s.manifest, rows, measurements))


class Result:
    """One run's measurements: tidy tables, verdicts, figures; in memory (from :func:`measure`) or read back
    from a run directory (:func:`open_run`)."""

    def __init__(self, manifest: Manifest, outputs: Outputs, run_dir: Path | None = None) -> None:
        self.manifest, self._out, self.run_dir = manifest, outputs, run_dir
        self._figures: dict[str, go.Figure] | None = None

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        counts: dict[str, int] = {}
        for v in self._out.verdicts:
            counts[v.outcome] = counts.get(v.outcome, 0) + 1
        outcomes = ", ".join(f"{n} {k}" for k, n in counts.items())
        return (
            f"Result({self.manifest.get('model_label')!r}, {len(self._out.table.rows)} metric rows, {outcomes}{where})"
        )

    @property
    def config(self) -> ExperimentConfig:
        from spectral.config import config_from_dict

        return config_from_dict(self.manifest["config"])

    @property
    def metrics(self) -> pd.DataFrame:
        """metrics.csv as a DataFrame: model, condition, site, layer, metric, value, ci_low, ci_high."""
        import pandas as pd

        rows = [dataclasses.astuple(r) for r in self._out.table.rows]
        df = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
        df["layer"] = df["layer"].astype("Int64")
        return df

    @property
    def verdicts(self) -> pd.DataFrame:
        """verdicts.csv as a DataFrame (ARCHITECTURE.md's columns), one row per prediction."""
        import pandas as pd

        from spectral.predictions import VERDICT_COLUMNS

        return pd.DataFrame([dataclasses.astuple(v) for v in self._out.verdicts], columns=list(VERDICT_COLUMNS))

    def _built(self) -> dict[str, go.Figure]:
        if self._figures is None:
            from spectral.runner import run_figures

            self._figures = run_figures(self.manifest, self._out)[0]
        return self._figures

    @property
    def figure_names(self) -> list[str]:
        """The figures this result can show (those a saved run holds, or those its data make)."""
        names = set(self._saved_figures())
        if self._out.measurements or not names:
            names |= set(self._built())
        return sorted(names)

    def _saved_figures(self) -> dict[str, Path]:
        if self.run_dir is None:
            return {}
        return {p.stem: p for p in sorted((self.run_dir / "figures").glob("*.json"))}

    def figure(self, name: str) -> go.Figure:
        """One figure as a plotly Figure (a saved run's own JSON when it has one; else built from the data)."""
        import plotly.io as pio

        saved = self._saved_figures()
        if name in saved and not self._out.measurements:
            return pio.from_json(saved[name].read_text(encoding="utf-8"))
        built = self._built()
        if name not in built:
            raise KeyError(f"no figure {name!r}; this result has {', '.join(self.figure_names)}")
        return built[name]

    def save(self, run_dir: str | Path, overwrite: bool = False, quiet: bool = True) -> Path:
        """Write the run directory (metrics.csv, verdicts.csv, sensitivity.csv, figures, report, manifest) as
        ``spectral run`` does; returns it."""
        from spectral.runner import write_outputs
        from spectral.runs import prepare_run_dir

        run_dir = Path(run_dir)
        manifest = copy.copy(self.manifest)  # the same run, written elsewhere
        manifest["config"] = {**self.manifest["config"], "out": str(run_dir)}
        prepare_run_dir(run_dir, manifest["config"], overwrite)
        timings = dict(manifest.get("timings", {}))
        write_outputs(run_dir, manifest, self._out, (lambda m: None) if quiet else print, timings)
        self.run_dir, self.manifest = run_dir, manifest
        return run_dir


def open_run(run_dir: str | Path) -> Result:
    """A past run directory as a :class:`Result` (its figures from their saved JSON)."""
    from spectral.predictions import read_verdicts
    from spectral.runner import Outputs
    from spectral.runs import read_manifest

    run_dir = Path(run_dir)
    man = read_manifest(run_dir)
    if man.get("status") != "complete":
        raise RunDirError(f"run {run_dir} is not complete (status {man.get('status')})")
    table = MetricTable.from_csv((run_dir / "metrics.csv").read_text(encoding="utf-8"))
    vpath, spath = run_dir / "verdicts.csv", run_dir / "sensitivity.csv"
    verdicts = read_verdicts(vpath.read_text(encoding="utf-8")) if vpath.is_file() else []
    sens = spath.read_text(encoding="utf-8") if spath.is_file() else ""
    return Result(man, Outputs(table, verdicts, sens, []), run_dir)
