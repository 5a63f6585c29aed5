"""Shared helpers of the Streamlit front end: allowed roots and path safety, cached loading of
run directories and models, readable errors, and figure blocks with PNG/SVG/PDF/CSV downloads.

The app holds no maths: pages call ``spectral`` and render the figure objects the reports use.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st

from spectral.api import MetricTable
from spectral.errors import RunDirError, SpectralError
from spectral.predictions import Verdict, read_verdicts
from spectral.predictions.decision import OUTCOMES
from spectral.runs import Manifest, read_manifest

REPO = Path(__file__).resolve().parents[1]
RUNS_DIR = Path("reports") / "runs"
UPLOAD_LIMIT_MB = 20
ROOTS_ENV = "SPECTRAL_APP_ROOTS"
SHIPPED = (REPO / "reports" / "canonical", REPO / "reports" / "field")  # the reference runs the project commits


class AppPathError(SpectralError):
    """A typed path outside the allowed roots, or one that does not exist."""


# ---------------------------------------------------------------- roots and path safety


def cli_roots(argv: list[str] | None = None) -> list[Path]:
    """Roots given after ``--`` on the ``streamlit run`` command line (``--roots A B``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--roots", nargs="*", default=[])
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return [Path(r) for r in args.roots]


def allowed_roots() -> list[Path]:
    """The working directory, the runs folder, command-line roots, ``$SPECTRAL_APP_ROOTS`` and
    roots a trusted caller put in ``st.session_state['allowed_roots']`` (tests); all resolved."""
    roots = [Path.cwd(), Path.cwd() / RUNS_DIR, *cli_roots()]
    roots += [Path(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p]
    roots += [Path(p) for p in st.session_state.get("allowed_roots", [])]
    roots += [p for p in SHIPPED if p.is_dir()]
    out: list[Path] = []
    for r in roots:
        rr = r.expanduser().resolve()
        if rr not in out:
            out.append(rr)
    return out


def safe_path(text: str | Path, *, must_exist: bool = True) -> Path:
    """Resolve a user-typed path and refuse it unless it lies under an allowed root."""
    raw = str(text).strip()
    if not raw:
        raise AppPathError("no path given")
    p = Path(raw).expanduser()
    p = (p if p.is_absolute() else Path.cwd() / p).resolve()
    roots = allowed_roots()
    if not any(p == r or p.is_relative_to(r) for r in roots):
        raise AppPathError(
            f"{p} is outside the allowed roots ({', '.join(str(r) for r in roots)}); "
            "start the app with `-- --roots DIR` to allow another folder"
        )
    if must_exist and not p.exists():
        raise AppPathError(f"{p} does not exist")
    return p


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and Path(name).expanduser().exists()


# ---------------------------------------------------------------- errors


@contextlib.contextmanager
def errors_shown(what: str = "") -> Iterator[None]:
    """Turn any exception into a readable ``st.error`` (never a traceback on the page)."""
    try:
        yield
    except SpectralError as exc:
        st.error(f"{what}{exc}")
    except Exception as exc:  # noqa: BLE001 - shown to the user, not swallowed silently
        st.error(f"{what}{exc.__class__.__name__}: {exc}")


# ---------------------------------------------------------------- run directories


@dataclass(frozen=True)
class RunData:
    """What a page needs from a run directory (read once, cached)."""

    path: str
    manifest: Manifest
    table: MetricTable
    verdicts: tuple[Verdict, ...]
    figure_csvs: dict[str, str]
    summary_only: bool = False  # a committed reference run: its summary.csv stands in for metrics.csv

    @property
    def label(self) -> str:
        corpus = Path(str(self.manifest.get("corpus", {}).get("name", "?"))).name
        return f"{self.manifest.get('model_label', '?')} · {corpus}"

    @property
    def n_layers(self) -> int:
        return int(self.manifest.get("arch", {}).get("n_layers", 0))

    @property
    def band_k(self) -> int:
        bands = self.manifest.get("config", {}).get("analysis", {}).get("bands", [10])
        return int(bands[0]) if bands else 10


def ci_level(run: RunData) -> float:
    """The run's interval level (``[analysis] ci_level``)."""
    return float(run.manifest.get("config", {}).get("analysis", {}).get("ci_level", 0.95))


def ci_label(level: float) -> str:
    """An interval level as page text: ``0.9`` -> ``"90 %"``, ``0.975`` -> ``"97.5 %"``."""
    return f"{level * 100:g} %"


def ci_levels_text(runs: Sequence[RunData]) -> str:
    """The CI level of several runs: ``"90 %"`` when they agree, else each run's (``"a: 90 %, b: 95 %"``)."""
    labels = {f"{r.label} ({Path(r.path).name})": ci_label(ci_level(r)) for r in runs}
    if len(set(labels.values())) == 1:
        return next(iter(labels.values()))
    return ", ".join(f"{name}: {lab}" for name, lab in labels.items())


# ---------------------------------------------------------------- verdict outcomes


def outcome_counts(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """How many verdicts have each outcome, in ``OUTCOMES`` order (an unknown outcome comes after them)."""
    counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    for v in verdicts:
        counts[v.outcome] = counts.get(v.outcome, 0) + 1
    return counts


def outcome_summary(counts: dict[str, int]) -> str:
    """``"2 supported, 1 contradicted, 7 inconclusive, 1 n/a"``."""
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items())


def outcome_metrics(counts: dict[str, int]) -> None:
    """One ``st.metric`` per outcome, side by side."""
    for col, (outcome, n) in zip(st.columns(len(counts)), counts.items(), strict=True):
        col.metric(outcome, n)


def run_outcomes(run_dir: Path) -> dict[str, int] | None:
    """Outcome counts of a run directory's verdicts.csv (parsed, never string-matched); None without one."""
    vpath = Path(run_dir) / "verdicts.csv"
    if not vpath.is_file():
        return None
    return outcome_counts(read_verdicts(vpath.read_text(encoding="utf-8")))


def _stamp(run_dir: Path) -> str:
    parts = []
    for name in ("manifest.json", "metrics.csv", "verdicts.csv"):
        f = run_dir / name
        parts.append(f"{name}:{f.stat().st_mtime_ns if f.exists() else 0}")
    return ";".join(parts)


@st.cache_data(show_spinner=False, max_entries=64)
def _load_run(path: str, stamp: str) -> RunData:
    run_dir = Path(path)
    manifest = read_manifest(run_dir)
    mpath = run_dir / "metrics.csv"
    summary_only = False
    if not mpath.is_file():
        status = manifest.get("status", "?")
        if status != "complete":
            raise RunDirError(
                f"{run_dir} has no metrics.csv yet (status {status}: {manifest.get('reason', 'in progress')})"
            )
        if not (run_dir / "summary.csv").is_file():
            raise RunDirError(f"{run_dir} is complete but its metrics.csv is missing (and it has no summary.csv)")
        mpath, summary_only = run_dir / "summary.csv", True  # a committed reference run ships its summary only
    table = MetricTable.from_csv(mpath.read_text(encoding="utf-8"))
    vpath = run_dir / "verdicts.csv"
    verdicts = tuple(read_verdicts(vpath.read_text(encoding="utf-8"))) if vpath.is_file() else ()
    figs = {}
    fdir = run_dir / "figures"
    if fdir.is_dir():
        figs = {f.stem: f.read_text(encoding="utf-8") for f in sorted(fdir.glob("*.csv"))}
    return RunData(str(run_dir), manifest, table, verdicts, figs, summary_only)


def load_run(run_dir: Path) -> RunData:
    """A run directory (already checked by :func:`safe_path`), cached until its files change."""
    return _load_run(str(run_dir), _stamp(run_dir))


def list_runs() -> list[Path]:
    """Run directories under the runs folder, the extra roots and the shipped reference runs (one level deep)."""
    found: list[Path] = []
    for root in [Path.cwd() / RUNS_DIR, *allowed_roots()[2:]]:
        if not root.is_dir():
            continue
        cands = [root] + sorted(p for p in root.iterdir() if p.is_dir())
        for c in cands:
            if (c / "manifest.json").is_file() and c.resolve() not in found:
                found.append(c.resolve())
    return found


def _display(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def choose_run(key: str = "run") -> RunData | None:
    """Selectbox of known runs plus a typed path (limited to allowed roots); shows errors."""
    runs = list_runs()
    preset = st.session_state.get("run_dir") or st.query_params.get("run")
    options = [_display(p) for p in runs]
    index = 0
    if preset:
        with errors_shown("run dir: "):
            pp = _display(safe_path(preset))
            if pp not in options:
                options.insert(0, pp)
            index = options.index(pp)
    col1, col2 = st.columns([2, 2])
    picked = col1.selectbox("Run directory", options, index=index if options else None, key=f"{key}_select")
    typed = col2.text_input("…or type a path (within the allowed roots)", key=f"{key}_typed")
    target = typed.strip() or picked
    if not target:
        st.info("No run directory found. Start one on the **Run** page, or type a path.")
        return None
    with errors_shown():
        run = load_run(safe_path(target))
        if run.summary_only:
            st.info(
                "A committed reference run: it ships summary.csv (the per-layer numbers the research note quotes, "
                f"{len(run.table.rows)} rows), its verdicts, report and PNG figures, not the full metrics.csv. "
                "Panels whose metrics are not in the summary say so; rerun its command (manifest) for all of them."
            )
        return run
    return None


# ---------------------------------------------------------------- pasted corpora


@contextlib.contextmanager
def pasted_corpus(text: str) -> Iterator[Path]:
    """Pasted or uploaded text as ``corpus.txt`` in a private temporary directory, removed (with the
    file) when the block ends, however it ends; the run directory lies elsewhere and stays."""
    if not text or not text.strip():
        raise AppPathError("the corpus text is empty")
    with tempfile.TemporaryDirectory(prefix="spectral-app-") as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text(text, encoding="utf-8")
        yield path


# ---------------------------------------------------------------- models

MODEL_SOURCES = ("named model", "GGUF file / local directory", "llama2.c checkpoint", "hub id")


@dataclass(frozen=True)
class ModelChoice:
    """What a model picker gives a page: the name for ``ModelSpec`` or why there is none yet."""

    name: str | None  # None: nothing that can run (a named model that is not installed, an empty path)
    tokenizer: str | None
    blocked: str | None = None  # why it cannot run, with what to do
    pip_command: str | None = None  # set when the chosen named model is not installed (nothing can run it yet)


@st.cache_data(show_spinner=False, ttl=30)
def named_models() -> list[Any]:
    """``spectral.zoo.list_models()`` (installed first), re-read every 30 s so a fresh install shows up."""
    from spectral import zoo

    return zoo.list_models()


def default_model() -> str:
    """The configuration's default model (``ModelSpec().name``)."""
    from spectral.config import ModelSpec

    return ModelSpec().name


def model_label(m: Any) -> str:
    """One line of the named-model list: name, title, licence and whether it is installed."""
    state = "installed" if m.installed else "not installed"
    return f"{m.name} — {m.title} · {m.licence} · {state}"


def _preset_model(prefix: str, preset: str | None) -> None:
    """Point the picker at ``preset`` (a query parameter) unless the user already chose something."""
    kind_key = f"{prefix}_kind"
    if kind_key in st.session_state:
        return
    names = [m.name for m in named_models()]
    target = preset or default_model()
    if target in names:
        st.session_state[kind_key], st.session_state[f"{prefix}_named"] = MODEL_SOURCES[0], target
    elif target.endswith(".bin"):
        st.session_state[kind_key], st.session_state[f"{prefix}_bin"] = MODEL_SOURCES[2], target
    elif looks_like_path(target) or target.endswith(".gguf"):
        st.session_state[kind_key], st.session_state[f"{prefix}_dir"] = MODEL_SOURCES[1], target
    else:
        st.session_state[kind_key], st.session_state[f"{prefix}_hub"] = MODEL_SOURCES[3], target


def model_picker(prefix: str, preset: str | None = None) -> ModelChoice:
    """Model source widgets (keys ``{prefix}_kind``, ``_named``, ``_dir``, ``_bin``, ``_tok``, ``_hub``): the
    named models of :mod:`spectral.zoo` (installed first, with licence; a missing one shows its pip command),
    a GGUF file or local Hugging Face directory, a llama2.c checkpoint, or a hub id."""
    _preset_model(prefix, preset)
    kind = st.radio("model source", MODEL_SOURCES, horizontal=True, key=f"{prefix}_kind")
    if kind == MODEL_SOURCES[0]:
        models = {m.name: m for m in named_models()}
        if st.session_state.get(f"{prefix}_named") not in models:
            st.session_state[f"{prefix}_named"] = default_model() if default_model() in models else next(iter(models))
        name = st.selectbox(
            "named model (installs from PyPI, no hub)",
            list(models),
            format_func=lambda n: model_label(models[n]),
            key=f"{prefix}_named",
        )
        m = models[name]
        if not m.installed:
            st.warning(f"`{m.name}` is not installed (missing: {', '.join(m.missing)}). Install it with:")
            st.code(m.pip_command, language="bash")
            return ModelChoice(None, None, f"{m.name} is not installed: {m.pip_command}", m.pip_command)
        size = f", {m.size_bytes / 2**20:.0f} MiB installed" if m.size_bytes else ""
        cache = ""
        if m.converted is False:
            cache = "; the first use dequantizes the GGUF once into the cache (a minute or more on a CPU)"
        st.caption(f"{m.title}: {m.layers} layers, d_model {m.d_model}; licence {m.licence}{size}{cache}.")
        return ModelChoice(name, None)
    if kind == MODEL_SOURCES[1]:
        path = st.text_input("a .gguf file or a local Hugging Face directory", key=f"{prefix}_dir")
        return ModelChoice(path.strip() or None, None, None if path.strip() else "no model path given")
    if kind == MODEL_SOURCES[2]:
        c1, c2 = st.columns(2)
        path = c1.text_input("llama2.c .bin checkpoint", key=f"{prefix}_bin")
        tok = c2.text_input("tokenizer directory or file", key=f"{prefix}_tok")
        return ModelChoice(path.strip() or None, tok.strip() or None, None if path.strip() else "no checkpoint given")
    st.session_state.setdefault(f"{prefix}_hub", "gpt2")
    hub = st.text_input("Hugging Face hub id (needs the hub or the local cache)", key=f"{prefix}_hub")
    return ModelChoice(hub.strip() or None, None, None if hub.strip() else "no hub id given")


@st.cache_resource(show_spinner="loading model…", max_entries=4)
def get_model(name: str, tokenizer: str | None = None, device: str = "cpu") -> Any:
    """A :class:`spectral.models.LoadedModel`, loaded once per (name, tokenizer, device)."""
    from spectral.config import ModelSpec
    from spectral.models import load_model

    return load_model(ModelSpec(name=name, tokenizer=tokenizer or None, device=device))


def checked_model_name(name: str) -> str:
    """Model names that are paths must lie under the allowed roots; ids pass unchanged."""
    name = name.strip()
    if not name:
        raise AppPathError("no model given")
    if looks_like_path(name) or Path(name).expanduser().exists():
        return str(safe_path(name))
    return name


# ---------------------------------------------------------------- figures and downloads


@st.cache_data(show_spinner=False, max_entries=64)
def _image_bytes(fig_json: str, fmt: str) -> bytes:
    import plotly.io as pio

    return pio.from_json(fig_json).to_image(format=fmt, scale=2 if fmt == "png" else 1)


MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


def figure_block(
    fig: go.Figure, name: str, csv_text: str | None = None, caption: str | None = None, natural: bool = False
) -> None:
    """Render a figure with CSV download and on-demand PNG / SVG / PDF export (kaleido); ``natural``: at the
    figure's own width (a table-like figure whose cells must not shrink, e.g. the outcome matrix)."""
    if natural:
        st.plotly_chart(fig, key=f"fig_{name}", width="content")
    else:
        st.plotly_chart(fig, key=f"fig_{name}", width="stretch")
    if caption:
        st.caption(caption)
    cols = st.columns(4)
    if csv_text is not None:
        cols[0].download_button(
            "CSV", csv_text, file_name=f"{name}.csv", mime="text/csv", key=f"csv_{name}", on_click="ignore"
        )
    state_key = f"img_{name}"
    if cols[1].button("Prepare PNG/SVG/PDF", key=f"prep_{name}"):
        fig_json = fig.to_json() or ""
        try:
            st.session_state[state_key] = {fmt: _image_bytes(fig_json, fmt) for fmt in ("png", "svg", "pdf")}
        except Exception as exc:  # noqa: BLE001 - kaleido needs a Chromium; say so instead of failing
            st.session_state[state_key] = None
            st.warning(
                f"Static export needs kaleido and a Chromium browser ({exc.__class__.__name__}: {exc}). "
                "The CSV and the interactive chart still work."
            )
    images = st.session_state.get(state_key)
    if images:
        for col, fmt in zip(cols[1:], ("png", "svg", "pdf"), strict=True):
            col.download_button(
                fmt.upper(),
                images[fmt],
                file_name=f"{name}.{fmt}",
                mime=MIME[fmt],
                key=f"dl_{fmt}_{name}",
                on_click="ignore",
            )


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A header and rows as CSV text, written by the ``csv`` module (commas, quotes and newlines in a
    field are quoted, so any token survives the round trip)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def rows_csv(table: MetricTable, keep: Any) -> str:
    return MetricTable(tuple(r for r in table.rows if keep(r))).to_csv()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def page_header(title: str, intro: str) -> None:
    st.set_page_config(page_title=f"spectral · {title}", layout="wide")
    st.title(title)
    st.caption(intro)


# ---------------------------------------------------------------- reports


def report_markdown(text: str) -> str:
    """report.md for st.markdown: image links (relative to the run, not served) become their alt text."""
    import re

    return re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"*[figure: \1]*", text)


def report_blocks(text: str) -> list[tuple[str, Any]]:
    """report.md for the Report tab, in order: ``("md", markdown)`` runs and ``("table", (header, rows))`` tables,
    each shown as a dataframe (a markdown table wider than the page runs off its right edge: the verdict table's
    notes, the per-layer tables' columns); a table's trailing "note" column becomes a list under it."""
    import re

    out: list[tuple[str, Any]] = []
    md: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            md.append(lines[i])
            i += 1
            continue
        rows = []
        while i < len(lines) and lines[i].startswith("|"):
            if not re.fullmatch(r"\|(:?-+:?\|)+", lines[i].replace(" ", "")):
                rows.append([c.strip().replace("**", "") for c in lines[i].strip().strip("|").split("|")])
            i += 1
        if md:
            out.append(("md", report_markdown("\n".join(md))))
            md = []
        header, body = rows[0], [(r + [""] * len(rows[0]))[: len(rows[0])] for r in rows[1:]]
        if len(header) > 2 and header[-1] == "note":
            out.append(("table", (header[:-1], [r[:-1] for r in body])))
            out.append(("md", "\n".join(f"- **{r[0]}** — {r[-1]}" for r in body)))
        else:
            out.append(("table", (header, body)))
    if md:
        out.append(("md", report_markdown("\n".join(md))))
    return out


def run_zip(run_dir: Path) -> bytes:
    """The run directory (without its resumable state) as a zip; made when the download is clicked."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(run_dir.rglob("*")):
            if f.is_file() and "state" not in f.relative_to(run_dir).parts[:1]:  # the resumable state stays behind
                z.write(f, Path(run_dir.name) / f.relative_to(run_dir))
    return buf.getvalue()
