"""Regenerate every figure family for a list of models, and the canonical results in reports/.

    python experiments/run_all.py                 # all models of configs/models.toml, full settings
    python experiments/run_all.py --quick         # small settings, a few minutes on 2 CPU cores
    python experiments/run_all.py --models minilm,llama2xs-512

Full runs also refresh ``reports/canonical/<model>/`` (report, verdicts, PNG figures and captions,
with the credits of the model and corpus): the few generated files that are committed.
"""

import argparse
import os
import shutil
import sys

from common import FAMILIES, ROOT, ensure_run, export_family, models, portable_manifest


def canonical(run_dir, model) -> None:
    from spectral.runs import atomic_write_text

    dest = ROOT / "reports" / "canonical" / model["key"]
    # the model's own measurements (research_note.py measures them once): kept across reruns
    kept = {n: (dest / n).read_bytes() for n in ("model.json", "massive.csv") if (dest / n).is_file()}
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "figures").mkdir(parents=True)
    for name, data in kept.items():
        (dest / name).write_bytes(data)
    for f in (run_dir / "figures").iterdir():
        if f.suffix in (".png", ".txt"):
            shutil.copy2(f, dest / "figures" / f.name)
    for name in ("verdicts.csv", "sensitivity.csv"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    from spectral.synthesis import summary_csv  # the per-layer numbers the research note quotes

    atomic_write_text(dest / "summary.csv", summary_csv((run_dir / "metrics.csv").read_text(encoding="utf-8")))
    atomic_write_text(dest / "manifest.json", portable_manifest(run_dir))
    from readme_example import layer_table, verdict_table

    example = f"{layer_table(run_dir)}\n\n{verdict_table(run_dir)}\n"
    atomic_write_text(dest / "example.md", example)  # README's example tables (pasted from here)
    report = (run_dir / "report.md").read_text()
    report += (
        f"\n## Credits\n\n{model['credit']}.\n\nRegenerate: `python experiments/run_all.py --models {model['key']}`.\n"
    )
    atomic_write_text(dest / "report.md", report)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", help="comma-separated keys of configs/models.toml or model paths (default: all)")
    p.add_argument("--quick", action="store_true", help="small settings: every model in a few minutes on 2 cores")
    args = p.parse_args()
    os.chdir(ROOT)
    failed = []
    for model in models(args.models):
        try:  # one model's failure (its run directory says why) does not stop the others
            run = ensure_run(model, args.quick)
        except Exception as exc:  # noqa: BLE001
            print(f"{model['key']}: FAILED ({exc.__class__.__name__}: {exc})", file=sys.stderr)
            failed.append(model["key"])
            continue
        for fam in FAMILIES:
            export_family(fam, run, model)
        if not args.quick:
            canonical(run, model)
        print(f"{model['key']}: {run}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
