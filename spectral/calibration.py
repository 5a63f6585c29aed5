"""The false-support rate of the battery: random-init models treated as trained (ARCHITECTURE.md section 1,
"Power").

A model at its library's random init has none of the hypothesis's learned properties, so every
"supported" it earns is a false support. :func:`false_support` builds such a model from an architecture
(a Hugging Face config directory: the small decoders of ``../shared/data`` or SmolLM2's config), one per
seed, saves it with the architecture's tokenizer and runs the whole pipeline on it — its own R ensemble
from other seeds, W, and every in-run null — exactly as ``spectral run`` would on a trained checkpoint.
:func:`rate_table` gives, per prediction and for "any prediction", the share of seeds with outcome
supported and its exact (Clopper–Pearson) 95 % interval; the battery is calibrated where each share is at
most α = 0.05. experiments/false_support.py writes the table; tests/test_calibration.py checks it on a
small decoder (slow-marked).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats as sps

from spectral.config import AnalysisSpec, CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec
from spectral.predictions.decision import Verdict

FAKE_SEED_OFFSET = 1000  # the "trained" random model's seeds: far from the R ensemble's (1..n)


@dataclass(frozen=True)
class SeedOutcome:
    """One random-init model's verdicts: prediction number → outcome (and the run's directory)."""

    seed: int
    outcomes: dict[str, str]
    run_dir: str
    verdicts: tuple[Verdict, ...] = ()  # the run's Verdicts (effect, interval, δ, null of each deciding test)


def random_model_dir(arch_dir: str | Path, seed: int, out: Path) -> Path:
    """A Hugging Face directory with ``arch_dir``'s config and tokenizer and weights at the library's init for
    ``seed`` (every module's ``_init_weights`` under ``torch.manual_seed``: the same init as R's members)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from spectral.analysis.controls import reinitialise

    cfg = AutoConfig.from_pretrained(str(arch_dir))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    reinitialise(model, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(arch_dir)).save_pretrained(out)
    return out


def base_config(corpus: str, seq_len: int, windows: int) -> ExperimentConfig:
    """The run each random model gets: the defaults of ``spectral run`` (R of five seeds, W, S, P, every
    in-run null) on ``windows`` windows of ``seq_len`` tokens, no figures."""
    return ExperimentConfig(
        corpus=CorpusSpec(source=corpus, seq_len=seq_len, max_seqs=windows),
        capture=CaptureSpec(batch_size=8),
        analysis=AnalysisSpec(n_boot=200),
        formats=(),
    )


def r_ensemble_seeds(seed: int, n: int) -> tuple[int, ...]:
    """The R ensemble of fake-trained model ``seed`` (1, 2, …): n seeds of its own, disjoint from every other
    fake model's ensemble and from the fake models' seeds. One shared ensemble would make the 20 runs one draw of
    R: the prediction interval's coverage holds over R's draws, so a shared draw with a small spread turns into
    false supports for many seeds at once (the first measurement on babyllama-105: 5/20)."""
    if seed < 1 or n * seed >= FAKE_SEED_OFFSET:
        raise ValueError(f"fake seed {seed} with {n} R seeds would overlap the fake models' seeds")
    return tuple(range(n * (seed - 1) + 1, n * seed + 1))


def false_support(
    arch_dir: str | Path,
    seeds: Sequence[int],
    cfg: ExperimentConfig,
    out: Path,
    log: Callable[[str], None] = print,
) -> list[SeedOutcome]:
    """Run the battery on a random-init model of ``arch_dir``'s architecture for each seed, with an R ensemble of
    ``len(cfg.random_seeds)`` seeds of its own (:func:`r_ensemble_seeds`). Run directories go under ``out``."""
    from spectral.predictions import read_verdicts
    from spectral.runner import run_experiment

    got = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in seeds:
            r_seeds = r_ensemble_seeds(s, len(cfg.random_seeds))
            mdir = random_model_dir(arch_dir, FAKE_SEED_OFFSET + s, Path(tmp) / f"random-{s}")
            run_dir = out / f"seed{s}"
            c = dataclasses.replace(cfg, model=ModelSpec(name=str(mdir)), out=str(run_dir), random_seeds=r_seeds)
            res = run_experiment(c, overwrite=True, progress=False, log=lambda _: None)
            verdicts = read_verdicts((res.run_dir / "verdicts.csv").read_text(encoding="utf-8"))
            got.append(
                SeedOutcome(
                    s, {v.prediction.split()[0]: v.outcome for v in verdicts}, str(res.run_dir), tuple(verdicts)
                )
            )
            shutil.rmtree(mdir, ignore_errors=True)
            sup = [k for k, o in got[-1].outcomes.items() if o == "supported"]
            log(f"seed {s}: supported {', '.join(sup) or 'none'}")
    return got


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a rate k/n."""
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(sps.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def rates(results: Sequence[SeedOutcome]) -> list[tuple[str, int, int, int]]:
    """Per prediction (and "any"): (name, seeds supported, seeds contradicted, seeds with a decided outcome
    or not: all)."""
    keys = sorted({k for r in results for k in r.outcomes}, key=lambda k: int(k))
    n = len(results)
    out = []
    for k in keys:
        sup = sum(r.outcomes.get(k) == "supported" for r in results)
        con = sum(r.outcomes.get(k) == "contradicted" for r in results)
        out.append((k, sup, con, n))
    anyk = sum(any(o == "supported" for o in r.outcomes.values()) for r in results)
    out.append(("any", anyk, 0, n))
    return out


def rate_table(results: Sequence[SeedOutcome], title: str, alpha: float = 0.05) -> str:
    """Markdown: per prediction the false-support rate with its exact 95 % interval, and whether it is ≤ α."""
    lines = [
        f"### {title}",
        "",
        f"{len(results)} random-init models treated as trained (seeds {', '.join(str(r.seed) for r in results)}), "
        "each with its own R ensemble from other seeds. A 'supported' here is a false support.",
        "",
        "| prediction | supported | rate | exact 95 % CI | ≤ α | contradicted (a random model lacks the property) |",
        "|---|---|---|---|---|---|",
    ]
    for k, sup, con, n in rates(results):
        lo, hi = clopper_pearson(sup, n)
        name = "any prediction" if k == "any" else f"P{k}"
        ok = "yes" if sup / n <= alpha else "**no**"
        lines.append(
            f"| {name} | {sup}/{n} | {sup / n:.3f} | [{lo:.3f}, {hi:.3f}] | {ok} | {con if k != 'any' else ''} |"
        )
    return "\n".join(lines) + "\n"


def rates_csv(results: Sequence[SeedOutcome], arch: str) -> str:
    """CSV of the rate table: arch, prediction ("1" … "11", "any"), supported, contradicted, n, rate and its exact
    95 % interval (the research note reads its numbers from here)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arch", "prediction", "supported", "contradicted", "n", "rate", "rate_ci_low", "rate_ci_high"])
    for k, sup, con, n in rates(results):
        lo, hi = clopper_pearson(sup, n)
        w.writerow([arch, k, sup, con if k != "any" else "", n, f"{sup / n:.4g}", f"{lo:.4g}", f"{hi:.4g}"])
    return buf.getvalue()
