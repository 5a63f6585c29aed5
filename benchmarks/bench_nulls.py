"""Preparing the null models and saving the capture states, before and after (issue 24), paired in one process.

    python benchmarks/bench_nulls.py                  # SmolLM2-135M, the default job's ensembles
    python benchmarks/bench_nulls.py --model ../shared/data/babyllama-105-hf

The default job prepares W's 5 permutations and R's 5 seeds plus the 3 rescaled seeds, and saves every
condition's capture state. *Before*: each W member permuted in place with int64 ``randperm`` and undone by
regenerating the same permutation before the next (9 permutations); a rescaled seed initialised afresh (8
inits); states written with torch's per-record CRC32. *After* (the code now): each W member drawn from a copy of the
trained matrices with an int32 ``randperm`` (the same permutation: 5 permutations, nothing undone); a rescaled seed
that is also an R seed rescales R's init in place (5 inits); transient states written without the CRC. The two are
timed alternately (ABAB...) so that a drift of the machine hits both alike; the script checks that both give the
same weights. A second W row compares the matrices permuted one after the other (the code of the morning of
2026-12-06) with two threads (the code now; each matrix has its own generator: the same weights, checked).
Prints seconds and the after/before ratio of each phase.
"""

import argparse
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@torch.no_grad()
def permute_before(model: torch.nn.Module, seed: int, inverse: bool = False) -> None:
    """The W permutation as it was (int64 randperm, undone in place by regenerating it)."""
    from spectral.analysis.controls import weight_matrices

    for name, p in weight_matrices(model):
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        flat = p.data.reshape(-1)
        perm = torch.randperm(flat.numel(), generator=g)
        if inverse:
            flat[perm] = flat.clone()
        else:
            flat.copy_(flat[perm])


@torch.no_grad()
def permute_one_thread(model: torch.nn.Module, seed: int, source: dict[str, torch.Tensor]) -> None:
    """W's member drawn from the copy as the run did this morning: the matrices one after the other."""
    from spectral.analysis.controls import weight_matrices

    for name, p in weight_matrices(model):
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        flat = p.data.reshape(-1)
        perm = torch.randperm(flat.numel(), generator=g, dtype=torch.int32)
        flat.copy_(source[name].reshape(-1)[perm])


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--repeat", type=int, default=2, help="alternating before/after pairs per phase")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from spectral.analysis.controls import (
        parameter_norms,
        permute_weights,
        permuted_matrices,
        reinitialise,
        rescale_to,
        restore_matrices,
    )
    from spectral.config import ExperimentConfig, ModelSpec
    from spectral.models import load_model
    from spectral.runs import save_state

    cfg = ExperimentConfig(model=ModelSpec(name=a.model))
    trained = load_model(cfg.model)
    hf = trained.hf_model
    seeds = [cfg.seed + k for k in range(cfg.permutations)]
    norms = parameter_norms(hf)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} · {a.model} · {sum(x.numel() for x in hf.parameters()):,} parameters · "
          f"{torch.get_num_threads()} torch threads · W {len(seeds)} permutations, R seeds {cfg.random_seeds}, "
          f"rescaled seeds {cfg.scaled_seeds} · {a.repeat} alternating pairs, best of each", flush=True)  # fmt: skip

    def w_before() -> None:  # what the run did: 5 permutations, the first 4 undone (9 randperms)
        for k, seed in enumerate(seeds):
            permute_before(hf, seed)
            if k < len(seeds) - 1:
                permute_before(hf, seed, inverse=True)

    def w_after() -> None:  # what the run does: a copy, then 5 permutations drawn from it
        saved = permuted_matrices(hf)
        for seed in seeds:
            permute_weights(hf, seed, source=saved)

    original = permuted_matrices(hf)  # restores the trained weights between the timed calls (untimed)

    # both give the same permuted weights (and the trained ones back)
    ref = {n: t.clone() for n, t in hf.state_dict().items()}
    permute_before(hf, seeds[1])
    want = {n: t.clone() for n, t in hf.state_dict().items()}
    permute_before(hf, seeds[1], inverse=True)
    saved = permuted_matrices(hf)
    permute_weights(hf, seeds[1], source=saved)
    assert all(torch.equal(want[n], t) for n, t in hf.state_dict().items()), "W differs between before and after"
    restore_matrices(hf, saved)
    permute_one_thread(hf, seeds[1], saved)
    assert all(torch.equal(want[n], t) for n, t in hf.state_dict().items()), "W differs between one thread and two"
    restore_matrices(hf, saved)
    assert all(torch.equal(ref[n], t) for n, t in hf.state_dict().items())
    del ref, want, saved

    twin = load_model(cfg.model, random_init=True, seed=1)

    def r_before() -> None:
        for s in cfg.random_seeds:
            reinitialise(twin.hf_model, s)
        for s in cfg.scaled_seeds:
            reinitialise(twin.hf_model, s)
            rescale_to(twin.hf_model, norms)

    def r_after() -> None:
        for s in cfg.random_seeds:
            reinitialise(twin.hf_model, s)
            if s in cfg.scaled_seeds:
                rescale_to(twin.hf_model, norms)
        for s in (x for x in cfg.scaled_seeds if x not in cfg.random_seeds):
            reinitialise(twin.hf_model, s)
            rescale_to(twin.hf_model, norms)

    tmp = Path(tempfile.mkdtemp(prefix="bench_nulls_"))
    state = {"second": [torch.randn(5, 576 * 577 // 2) for _ in range(122)]}  # the trained bank's packed moments
    mib = sum(t.numel() * 4 for t in state["second"]) / 2**20

    def save(crc: bool):
        return lambda: save_state(tmp / "s.pt", state, crc=crc)

    def w_one_thread() -> None:
        saved = permuted_matrices(hf)
        for seed in seeds:
            permute_one_thread(hf, seed, saved)

    phases = {
        "W: 5 permutations": (w_before, w_after),
        "W: 5 permutations from the copy, one thread vs two": (w_one_thread, w_after),
        "R 5 seeds + rescaled 3 seeds: inits": (r_before, r_after),
        f"one capture state of {mib:.0f} MiB (the trained condition's moments)": (save(True), save(False)),
    }
    print(f"{'phase':<64} {'before (s)':>10} {'after (s)':>10} {'ratio':>7}")
    for name, (before, after) in phases.items():
        best = {"before": float("inf"), "after": float("inf")}
        for _ in range(a.repeat):
            for which, fn in (("before", before), ("after", after)):
                t = time.perf_counter()
                fn()
                best[which] = min(best[which], time.perf_counter() - t)
                restore_matrices(hf, original)
        print(f"{name:<64} {best['before']:>10.2f} {best['after']:>10.2f} {best['after'] / best['before']:>7.2f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
