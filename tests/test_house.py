"""The module graph, read from the code's imports (every import: module level, inside functions, under
TYPE_CHECKING): no import circle, the analysis runs no forward pass, the front ends use public names only."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "spectral"
# the modules that run (or hook) forward passes; the analysis turns what they captured into statistics
FORWARD = {
    "spectral.capture",
    "spectral.fastpath",
    "spectral.backends",
    "spectral.conditions",
    "spectral.runner",
    "spectral.interventions",
    "spectral.jacobian",
    "spectral.distributed",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from spectral import zoo`` counts as spectral.zoo)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known and m != "spectral"}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m} for m, p in mods.items()}


def test_no_import_circle():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_analysis_and_predictions_run_no_forward_pass():
    g = graph()
    bad = {
        m: sorted(g[m] & FORWARD)
        for m in g
        if m.startswith(("spectral.analysis", "spectral.predictions")) and g[m] & FORWARD
    }
    assert not bad, f"statistics modules importing the forward-pass layer: {bad}"
    assert "spectral.sites" in g and "spectral.models" not in g["spectral.sites"]  # site names know no loader
    assert "spectral.backends" not in g["spectral.fastpath"] and "spectral.backends" not in g["spectral.models"]


def test_front_ends_import_public_names_only():
    """The app imports no private name and nothing from spectral.analysis (it goes through the public modules)."""
    known = set(modules())
    for path in sorted((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spectral"):
                assert not node.module.startswith("spectral.analysis"), (path.name, node.module)
                assert node.module in known or node.module == "spectral", (path.name, node.module)
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path.name, node.module, private)
