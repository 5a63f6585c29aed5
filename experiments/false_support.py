"""The false-support rate (spectral.calibration): random-init models treated as trained, one run each.

    .venv/bin/python experiments/false_support.py                     # the small decoders, 20 seeds each
    .venv/bin/python experiments/false_support.py --arch smollm2 --seeds 20 --windows 8 --seq-len 64

Writes reports/calibration/false_support-<arch>.md (the table), -rates.csv (the table's numbers) and .csv (one row
per seed and prediction: outcome, effect [CI], δ, null, Holm p).
"""

import argparse
import csv
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ARCHS = {
    "llama2xs-512": DATA / "llama2xs-512-hf",
    "babyllama-105": DATA / "babyllama-105-hf",
}


def smollm2_config_dir(out: Path) -> Path:
    """SmolLM2-135M's config and tokenizer (from the dequantized GGUF in the cache), no weights."""
    from spectral import zoo

    src = zoo.prepare("smollm2-135m").dir
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(str(src)).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    from spectral.calibration import base_config, false_support, rate_table, rates_csv

    ap = argparse.ArgumentParser(description="The false-support rate: random-init models treated as trained.")
    ap.add_argument(
        "--arch", default="llama2xs-512,babyllama-105", help="comma-separated: " + ", ".join(ARCHS) + ", smollm2"
    )
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--corpus", default=str(DATA / "corpora" / "tinystories_train_head.txt"))
    a = ap.parse_args(argv)
    out = ROOT / "reports" / "calibration"
    out.mkdir(parents=True, exist_ok=True)
    for arch in a.arch.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            src = smollm2_config_dir(Path(tmp) / "cfg") if arch == "smollm2" else ARCHS[arch]
            cfg = base_config(a.corpus, a.seq_len, a.windows)
            res = false_support(src, range(1, a.seeds + 1), cfg, Path(tmp) / "runs")
        title = f"{arch}: {a.windows} windows × {a.seq_len} tokens of {Path(a.corpus).name}"
        (out / f"false_support-{arch}.md").write_text(rate_table(res, title), encoding="utf-8")
        (out / f"false_support-{arch}-rates.csv").write_text(rates_csv(res, arch), encoding="utf-8")
        with open(out / f"false_support-{arch}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["arch", "seed", "prediction", "outcome", "statistic", "effect", "effect_ci_low",
                        "effect_ci_high", "margin", "null", "null_ci_low", "null_ci_high", "p_holm"])  # fmt: skip
            for r in res:
                for v in r.verdicts:
                    w.writerow([arch, r.seed, v.prediction.split()[0], v.outcome, v.statistic, v.effect,
                                v.effect_ci_low, v.effect_ci_high, v.margin, v.null, v.null_ci_low, v.null_ci_high,
                                v.p_holm])  # fmt: skip
        print(rate_table(res, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
