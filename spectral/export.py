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
        import kaleido

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
        # one Chromium, two tabs rendering at once (a sixth off the export on 2 cores); no MathJax (no figure has
        # TeX, and kaleido would fetch it from a CDN)
        kaleido.write_fig_from_object_sync(specs, kopts={"n": min(2, os.cpu_count() or 1), "mathjax": False})
        for name in figures:
            for ext in formats:
                os.replace(tmp / f"{name}.{ext}", fig_dir / f"{name}.{ext}")
                written[name].insert(1, f"{prefix}/{name}.{ext}")
    except Exception as exc:  # noqa: BLE001 - a missing static figure must not fail the run
        note = f"PNG/PDF/SVG figures skipped: kaleido failed ({exc.__class__.__name__}: {str(exc)[:160]})."
        log(note)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
