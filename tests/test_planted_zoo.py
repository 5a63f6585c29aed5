"""The planted-truth zoo end to end (ARCHITECTURE.md section 1, "Power"; spectral/planted.py).

For every prediction, a constructed model that truly has its property must come out *supported* and one that
truly lacks it *contradicted*, through the whole pipeline: capture, statistics, the R ensemble and W, the decision
and Holm's correction. A model shared by several predictions runs once (module-scoped cache). The generated page
docs/planted.md must show the table these runs give.
"""

from pathlib import Path

import pytest

from spectral import planted

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = [str(i) for i in range(1, 12)]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> {prediction number: Verdict}, each planted model run once."""
    work = tmp_path_factory.mktemp("zoo")
    done: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in done:
            done[name] = planted.run(name, work)
        return done[name]

    return get


@pytest.mark.parametrize("number", NUMBERS)
def test_planted_with_model_supports(zoo, number):
    v = zoo(planted.planted_for(number)[0])[number]
    assert v.outcome == "supported", v.note
    assert v.effect_ci_low > v.margin


@pytest.mark.parametrize("number", NUMBERS)
def test_planted_without_model_contradicts(zoo, number):
    v = zoo(planted.planted_for(number)[1])[number]
    assert v.outcome == "contradicted", v.note
    assert v.effect_ci_high < v.margin


def test_growth_facts_of_the_carrier_pair(zoo):
    """The carrier model grows ×1.4 per layer along its carrier; the silent twin not at all (g = 1 exactly)."""
    assert zoo("carrier")["1"].value == pytest.approx(1.4, abs=0.01)
    assert zoo("silent")["1"].value == pytest.approx(1.0, abs=1e-6)
    assert zoo("rogue")["2"].outcome == "supported"  # P3's without-model has a carrier: P3 applies to it


def _page_rows(text: str) -> dict[str, list[str]]:
    """prediction number -> the cells of its row in docs/planted.md's table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0][:1].isdigit():
            rows[cells[0].split()[0]] = cells
    return rows


def test_every_prediction_has_a_pair_and_the_page_is_current(zoo):
    """docs/planted.md shows the outcomes these runs give (names and outcomes exactly, effects to 3 digits up to
    float noise between machines)."""
    for number in NUMBERS:
        w, wo = planted.planted_for(number)
        assert w != wo
    results = {name: zoo(name) for name in planted.PLANTED}
    hint = "regenerate: python -m spectral.planted_page docs/planted.md"
    page = _page_rows((ROOT / "docs" / "planted.md").read_text(encoding="utf-8"))
    fresh = _page_rows(planted.zoo_table(results))
    assert sorted(page) == sorted(fresh) == sorted(NUMBERS), hint
    for number, cells in fresh.items():
        old = page[number]
        assert [old[i] for i in (0, 1, 2, 4, 5)] == [cells[i] for i in (0, 1, 2, 4, 5)], hint
        for i in (3, 6):
            assert float(old[i].split()[0]) == pytest.approx(float(cells[i].split()[0]), rel=0.02, abs=1e-3), hint
