"""Saving figures: NAME.html (interactive, offline), NAME.png / .pdf / .svg (kaleido, one Chromium
for all of them), NAME.csv (the data behind it) and NAME.txt (its caption). Every file lands
atomically; where no browser exists the HTML, CSV and caption are still written and one line says
why the static files are missing."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spectral.runs import atomic_write_text

STATIC_FORMATS = ("png", "pdf", "svg")


def browser_for_png() -> str | None:
    """Path of a Chromium/Chrome that kaleido can drive, or None."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _kaleido_options() -> dict[str, Any]:
    # one Chromium, two tabs rendering at once (a sixth off the export on 2 cores); no MathJax (no figure has TeX, and
    # kaleido would fetch it from a CDN)
    return {"n": min(2, os.cpu_count() or 1), "mathjax": False}


def start_static_export(formats: tuple[str, ...]) -> bool:
    """Start kaleido's Chromium in the background (kaleido's sync server) when static figures will be written: its
    start (~2.5 s on 2 cores) then overlaps the building of the figures instead of preceding their export.
    :func:`save_figures` uses it and stops it; :func:`stop_static_export` stops it where no export follows."""
    if not formats or browser_for_png() is None:
        return False
    try:
        import kaleido

        kaleido.start_sync_server(**_kaleido_options(), silence_warnings=True)
        return True
    except Exception:  # noqa: BLE001 - the export starts its own browser then
        return False


def stop_static_export() -> None:
    """Stop the browser :func:`start_static_export` started (nothing when none runs)."""
    try:
        import kaleido

        kaleido.stop_sync_server(silence_warnings=True)
    except Exception:  # noqa: BLE001
        pass


def _server_thread() -> Any:
    """The thread of kaleido's running sync server, or None."""
    import kaleido

    server = getattr(kaleido, "_global_server", None)
    if server is None or not server.is_running():
        return None
    return getattr(server, "_thread", None)


def _export(specs: list[dict[str, Any]]) -> None:
    """Write ``specs`` with kaleido: through the browser :func:`start_static_export` started when it runs (watched:
    a browser that died while starting fails the export instead of hanging it), else with a browser of its own."""
    import kaleido

    thread = _server_thread()
    if thread is None:
        kaleido.write_fig_from_object_sync(specs, kopts=_kaleido_options())
        return
    import threading

    done: dict[str, Any] = {}

    def call() -> None:
        try:
            kaleido.write_fig_from_object_sync(specs)  # failed figures surface as missing files, as without the server
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done["exc"] = exc

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        if worker.is_alive() and not thread.is_alive():
            raise RuntimeError("kaleido's browser stopped while starting")
    if "exc" in done:
        raise done["exc"]


def save_figures(
    out_dir: Path,
    figures: dict[str, Any],
    data: dict[str, str],
    captions: dict[str, str],
    log: Callable[[str], None],
    prefix: str = "figures",
    formats: tuple[str, ...] = STATIC_FORMATS,
) -> tuple[dict[str, list[str]], str | None]:
    """Write every figure under ``out_dir/prefix``; returns the files per figure (relative to
    ``out_dir``) and a note when static export was impossible."""
    from plotly.offline import get_plotlyjs

    from spectral.plotting import declutter_ticks

    fig_dir = out_dir / prefix
    fig_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(fig_dir / "plotly.min.js", get_plotlyjs())  # shared by the HTML figures, offline
    written: dict[str, list[str]] = {}
    for fig in figures.values():
        declutter_ticks(fig)
    for name, fig in figures.items():
        atomic_write_text(fig_dir / f"{name}.html", fig.to_html(include_plotlyjs="directory", full_html=True))
        atomic_write_text(fig_dir / f"{name}.json", fig.to_json())
        atomic_write_text(fig_dir / f"{name}.csv", data[name])
        atomic_write_text(fig_dir / f"{name}.txt", captions.get(name, "") + "\n")
        written[name] = [f"{prefix}/{name}.{ext}" for ext in ("html", "json", "csv", "txt")]
    note = None
    if not formats:
        return written, None
    if browser_for_png() is None:
        note = (
            "PNG/PDF/SVG figures skipped: no Chromium/Chrome for kaleido "
            "(install Debian's chromium or set BROWSER_PATH)."
        )
        log(note)
        return written, note
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=fig_dir))
    try:
        specs = [
            {
                "fig": fig.to_plotly_json(),
                "path": tmp / f"{name}.{ext}",
                # the layout's own size (kaleido's default would ignore it); PNG at twice the resolution
                "opts": {
                    "format": ext,
                    "width": fig.layout.width or 720,
                    "height": fig.layout.height or 420,
                    "scale": 2 if ext == "png" else 1,
                },  # fmt: skip
            }
            for name, fig in figures.items()
            for ext in formats
        ]
        _export(specs)
        for name in figures:
            for ext in formats:
                os.replace(tmp / f"{name}.{ext}", fig_dir / f"{name}.{ext}")
                written[name].insert(1, f"{prefix}/{name}.{ext}")
    except Exception as exc:  # noqa: BLE001 - a missing static figure must not fail the run
        note = f"PNG/PDF/SVG figures skipped: kaleido failed ({exc.__class__.__name__}: {str(exc)[:160]})."
        log(note)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        stop_static_export()
    return written, note


def print_pdf(html: Path, pdf: Path) -> str | None:
    """Print a self-contained HTML page to PDF with headless Chromium; None on success, else why not."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return f"no Chromium found: {pdf.name} not written"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
           f"--print-to-pdf={pdf}", html.resolve().as_uri()]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    return None if pdf.is_file() else f"Chromium failed ({done.returncode}): {done.stderr[-300:]}"
