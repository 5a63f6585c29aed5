"""README's example tables are the committed canonical SmolLM2 run's, verbatim (numbers are never typed)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANON = ROOT / "reports" / "canonical" / "smollm2-135m-tinystories"


def test_readme_example_is_the_canonical_smollm2_run():
    example = CANON / "example.md"
    readme = (ROOT / "README.md").read_text()
    assert example.read_text().strip() in readme
    sys.path.insert(0, str(ROOT / "experiments"))
    from readme_example import verdict_table

    assert verdict_table(CANON) in readme  # and the verdict table is that of the committed verdicts.csv
