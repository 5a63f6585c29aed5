"""Capture cost on a real LLM (issue 12): SmolLM2-135M (dequantized Q4_1 GGUF), CPU, one process.

    python benchmarks/bench_llm.py                              # smollm2-135m, 64 windows of the built-in corpus
    python benchmarks/bench_llm.py --model qwen2.5-coder-0.5b --windows 16 --memory none
    python benchmarks/bench_llm.py --device cuda --dtype bfloat16   # on a GPU

Every variant runs over the same windows of real text (the built-in corpus, 128 tokens + BOS), best of
``--repeat`` after a warm-up, and is printed as a ratio to (a) measured in the same process:
  (a) bare Hugging Face forward (AutoModelForCausalLM, SDPA, logits computed): the anchor;
  (d) residual statistics: resid_post sites on the fast path (d x d moments, spectra, norms, cosines);
  (f) the full battery capture of ``spectral run`` for the trained model: every site, the logit lens
      (sampled positions), head moments and attention sinks, self-similarity, the layer x layer cosine
      (``ConditionCapture.run``; its calibration pass is timed separately and reported beside it).
Targets: (f) <= 2.0 x (a), (d) <= 1.05 x (a). Then: the size of one condition's state file (target
<= 1 GB), the precision of float32 vs float64 moment storage on the same windows (largest relative
difference of the moment metrics), and peak RSS of (d) and (f) at two corpus sizes in fresh processes
(target: flat within 5 %).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import peak_mib, timed


def windows(model, n: int, seq_len: int):
    from spectral.config import CorpusSpec
    from spectral.corpus import make_windows

    return make_windows(model.tokenizer, CorpusSpec(source="builtin", seq_len=seq_len, max_seqs=n))


def repeat_windows(w, n: int):
    """``n`` windows cycling over ``w`` (memory runs beyond the corpus; each gets its own index)."""
    import dataclasses

    reps = -(-n // len(w))
    ids = w.ids.repeat(reps, 1)[:n]
    return dataclasses.replace(w, ids=ids, window_index=torch.arange(n), position=torch.arange(n), n_run=n)


def config(args: argparse.Namespace, **capture):
    from spectral.config import CaptureSpec, ExperimentConfig, ModelSpec

    return ExperimentConfig(
        model=ModelSpec(name=args.model, device=args.device, dtype=args.dtype),
        capture=CaptureSpec(batch_size=args.batch_size, **capture),
    )


def peak_child(args: argparse.Namespace, variant: str, n_windows: int) -> float:
    cmd = [sys.executable, __file__, "--_child", json.dumps([variant, n_windows]), "--model", args.model]
    cmd += ["--device", args.device, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=7200)
    return float(out.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    from spectral.backends import backend_of
    from spectral.capture import accumulate, all_sites, new_bank
    from spectral.conditions import ConditionCapture
    from spectral.models import load_model

    variant, n = json.loads(args._child)
    model = load_model(config(args).model)
    w = repeat_windows(windows(model, 10_000, 128), n)
    if variant == "d":
        resid = tuple(s for s in all_sites(model.arch) if s.startswith("resid_post."))
        accumulate(model, w, new_bank(model, resid, 5), args.batch_size, backend=backend_of(model, "fast"))
    else:
        ConditionCapture(model, w, all_sites(model.arch), config(args), "trained").run()
    print(peak_mib(args.device))


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--memory", default="160,1600", help="window counts (x128 tokens) for peak RSS, or 'none'")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a._child:
        child(a)
        return
    from transformers import AutoModelForCausalLM

    from spectral.analysis.metrics import compute_metrics
    from spectral.backends import backend_of
    from spectral.capture import accumulate, all_sites, new_bank
    from spectral.conditions import ConditionCapture
    from spectral.models import load_model
    from spectral.runs import package_versions

    model = load_model(config(a).model)
    w = windows(model, a.windows, 128)
    n_tok = len(w) * 129
    print(
        f"# {time.strftime('%Y-%m-%d')} · {a.model} ({model.arch.architecture}, {model.arch.n_layers} layers, d "
        f"{model.arch.d_model}, vocab {model.arch.d_vocab}) · {os.cpu_count()} CPUs, {torch.get_num_threads()} "
        f"torch threads · torch {package_versions().get('torch')} · {a.device} {a.dtype} · {len(w)} windows x 129 "
        f"tokens of the built-in corpus, batch {a.batch_size}, best of {a.repeat}"
    )
    hf = AutoModelForCausalLM.from_pretrained(str(model.source.path), dtype=getattr(torch, a.dtype)).to(a.device)
    hf.eval()
    from spectral.corpus import iter_batches

    batches = list(iter_batches(w, a.batch_size))

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                hf(input_ids=b.input_ids.to(a.device), attention_mask=b.attention_mask.to(a.device))

    resid = tuple(s for s in all_sites(model.arch) if s.startswith("resid_post."))
    every = all_sites(model.arch)

    def residual() -> None:
        accumulate(model, w, new_bank(model, resid, 5), a.batch_size, backend=backend_of(model, "fast"))

    cfg = config(a)
    holder: dict = {}

    def battery() -> None:
        t = time.perf_counter()
        cc = ConditionCapture(model, w, every, cfg, "trained")
        holder["calibration"] = time.perf_counter() - t
        cc.run()
        holder["cc"] = cc

    print("| variant | time (s) | tokens/s | ratio to (a) |\n|---|---|---|---|")
    base = timed(bare, a.device, a.repeat)
    print(f"| a bare HF forward | {base:.2f} | {n_tok / base:,.0f} | 1.000 |", flush=True)
    t = timed(residual, a.device, a.repeat)
    print(f"| d residual statistics (fast) | {t:.2f} | {n_tok / t:,.0f} | {t / base:.3f} |", flush=True)
    t_cal: list[float] = []

    def battery_run() -> None:
        battery()
        t_cal.append(holder["calibration"])

    t = timed(battery_run, a.device, a.repeat) - min(t_cal)
    print(f"| f full battery capture | {t:.2f} | {n_tok / t:,.0f} | {t / base:.3f} |", flush=True)
    print(f"\ncalibration pass of (f) (one extra forward on the first windows): {min(t_cal):.2f} s")
    cc = holder["cc"]
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "state.pt"
        torch.save(cc.state_dict(), f)
        print(f"state file of one condition: {f.stat().st_size / 2**30:.3f} GiB ({len(cc.bank.own_sites)} sites "
              f"stored, {len(cc.bank.aliases)} aliases, B = {cc.bank[every[0]].n_buckets})")  # fmt: skip

    # precision of float32 vs float64 moment storage, same windows, residual sites
    tables = {}
    for dt in ("float32", "float64"):
        cc2 = ConditionCapture(model, w, resid, config(a, moment_dtype=dt), "trained")
        cc2.run()
        tables[dt] = {
            (r.site, r.metric): r.value for r in compute_metrics(cc2.bank, "m", "trained", cfg.analysis, 0).rows
        }
    worst: dict[str, float] = {}
    for key, v64 in tables["float64"].items():
        v32 = tables["float32"][key]
        if v64 == v64 and abs(v64) > 0:
            worst[key[1]] = max(worst.get(key[1], 0.0), abs(v32 - v64) / abs(v64))
    print("\nfloat32 vs float64 moment storage, largest relative difference over resid_post layers:")
    print(", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items(), key=lambda kv: -kv[1])))

    if a.memory != "none":
        sizes = [int(x) for x in a.memory.split(",")]
        print("\npeak RSS (MiB, fresh process each)")
        print("| variant | " + " | ".join(f"{s * 128:,} tokens" for s in sizes) + " | last / first |")
        print("|---|" + "---|" * (len(sizes) + 1))
        for v in "df":
            peaks = [peak_child(a, v, s) for s in sizes]
            print(f"| {v} | " + " | ".join(f"{x:,.0f}" for x in peaks) + f" | {peaks[-1] / peaks[0]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
