"""The static export of a run's figures (PNG, PDF, SVG through kaleido's Chromium): cold vs started early (issue 24).

    python benchmarks/bench_export.py RUN_DIR            # a complete run (its figures/*.json are the figures)
    python benchmarks/bench_export.py RUN_DIR --repeat 3

*Cold*: what the run did before, a browser started by the export itself. *Early*: the run now starts the browser
(:func:`spectral.export.start_static_export`) before it builds the figures (~2.2 s on the default job, measured
apart); here a pause of ``--build`` seconds stands in for that build and is not counted, so the *early* time is what
the export adds after the build. Both write the same files (checked). The two are timed alternately (ABAB...), best
of ``--repeat`` each; prints seconds and the ratio.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("run", type=Path, help="a complete run directory")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--build", type=float, default=2.2, help="seconds standing in for building the figures")
    a = p.parse_args()
    import plotly.io as pio

    from spectral.export import browser_for_png, save_figures, start_static_export, stop_static_export

    if browser_for_png() is None:
        sys.exit("no Chromium/Chrome: nothing to export")
    paths = sorted((a.run / "figures").glob("*.json"))
    if not paths:
        sys.exit(f"{a.run}/figures has no figure JSON: not a complete run")
    figures = {f.stem: pio.read_json(f) for f in paths}
    data = {k: "" for k in figures}
    formats = ("png", "pdf", "svg")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} · {len(figures)} figures × {len(formats)} formats from {a.run} · "
          f"best of {a.repeat}, alternating")  # fmt: skip
    best = {"cold": float("inf"), "early": float("inf")}
    written: dict[str, list[str]] = {}
    for _ in range(a.repeat):
        for mode in ("cold", "early"):
            out = Path(tempfile.mkdtemp(prefix="bench_export_"))
            if mode == "early":
                start_static_export(formats)
                time.sleep(a.build)  # the figures being built
            t = time.perf_counter()
            try:
                files, note = save_figures(out, figures, data, {}, print, formats=formats)
            finally:
                stop_static_export()
            best[mode] = min(best[mode], time.perf_counter() - t)
            assert note is None, note
            got = sorted(f.name for f in (out / "figures").iterdir())
            assert written.setdefault("files", got) == got, "cold and early wrote different files"
            shutil.rmtree(out)
    print(f"{'export (after the figures are built)':<40} {'cold (s)':>9} {'early (s)':>9} {'ratio':>6}")
    print(f"{len(figures) * len(formats)} files{'':<32} {best['cold']:>9.2f} {best['early']:>9.2f} "
          f"{best['early'] / best['cold']:>6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
