"""Capture overhead and memory against baselines measured in the same process (issue 6).

    python benchmarks/bench_capture.py                       # all models, 2k tokens, memory at 2k/20k/200k
    python benchmarks/bench_capture.py --models gpt2 --tokens 4096 --memory none
    python benchmarks/bench_capture.py --device cuda --dtype bfloat16   # on a GPU

Models: ``gpt2`` (GPT-2-small-shaped decoder, random weights: the compute of GPT-2 small, no
download), ``minilm`` (the embedded all-MiniLM-L6-v2, trained) and ``llama`` (a Llama-shaped
decoder of similar size: 12 layers, d_model 768, SwiGLU 2048, vocab 32000, random weights).

Variants, each timed on the same token batches (best of ``--repeat`` after a warm-up):
  (a) bare Hugging Face forward, no hooks (the library default attention, SDPA; logits computed);
  (b) Hugging Face ``output_hidden_states=True``;
  (c) TransformerLens 4 ``run_with_cache`` on the resid_post sites, the same statistics afterwards;
  (d) spectral, residual statistics: fast backend, resid_post sites (norms, layer cosines, norm
      ratios, anisotropy, carrier direction / energy / drift, d x d moments, sequence spectra);
  (e) spectral, all statistics at every site on the bridge (sub-layer writes with cross moments);
  (f) spectral, the full battery capture of ``spectral run`` (every site and every probe).
Targets (issue 6): (d) <= 1.05 x (a); (e) <= 1.25 x (a). Peak memory of (d) and (e) at 2k, 20k and
200k tokens is measured in fresh subprocesses (peak RSS on CPU, peak allocated on CUDA); the target
is that 200k stays within 5 % of 20k.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import peak_mib, timed

MODELS = ("gpt2", "minilm", "llama")


def build(kind: str, tmp: Path) -> str:
    """A model directory (or the built-in name) for ``kind``."""
    if kind == "minilm":
        return "minilm"
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024)
    else:
        cfg = LlamaConfig(
            num_hidden_layers=12,
            hidden_size=768,
            num_attention_heads=12,
            num_key_value_heads=12,
            intermediate_size=2048,
            vocab_size=32000,
            max_position_embeddings=1024,
        )
    d = tmp / kind
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, **{chr(i): i - 29 for i in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>").save_pretrained(d)
    return str(d)


def windows_for(n_tokens: int, seq_len: int, vocab: int):
    from spectral.corpus import TokenWindows

    n = max(1, n_tokens // seq_len)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(vocab, 30000), (n, seq_len + 1), generator=g)
    ids[:, 0] = 2 if vocab > 2 else 0
    return TokenWindows(ids, torch.arange(n), True, seq_len, n * seq_len, n, None, torch.arange(n), n)  # type: ignore[arg-type]


def variants(name: str, device: str, dtype: str, windows, batch_size: int):
    """name -> callable, all over the same windows."""
    from transformers import AutoModel, AutoModelForCausalLM

    from spectral.backends import backend_of
    from spectral.capture import accumulate, all_sites, new_bank
    from spectral.conditions import ConditionCapture
    from spectral.config import CaptureSpec, ExperimentConfig, ModelSpec
    from spectral.corpus import iter_batches
    from spectral.models import load_model
    from spectral.stats import SiteStats

    model = load_model(ModelSpec(name=name, device=device, dtype=dtype))  # type: ignore[arg-type]
    path = str(model.source.path)
    cls = AutoModel if not model.arch.is_causal else AutoModelForCausalLM
    hf = cls.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()  # type: ignore[arg-type]  # SDPA
    batches = list(iter_batches(windows, batch_size))
    resid = tuple(s for s in all_sites(model.arch) if s.startswith("resid_post."))
    every = all_sites(model.arch)
    d = model.arch.d_model

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                hf(input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device))

    def hidden() -> None:
        with torch.inference_mode():
            for b in batches:
                hf(
                    input_ids=b.input_ids.to(device),
                    attention_mask=b.attention_mask.to(device),
                    output_hidden_states=True,
                )

    def tl_cache() -> None:
        from spectral.capture import hook_name

        stats = {s: SiteStats(d, 10, device=device) for s in resid}
        names = {hook_name(s, model.arch): s for s in resid}
        with torch.inference_mode():
            for b in batches:
                _, cache = model.bridge.run_with_cache(
                    b.input_ids.to(device),
                    attention_mask=b.attention_mask.to(device),
                    names_filter=lambda n: n in names,
                )
                for n, s in names.items():
                    stats[s].update(cache[n], b.stat_mask, b.window_index, b.buckets(10))

    def residual_fast() -> None:
        accumulate(model, windows, new_bank(model, resid, 10), batch_size, backend=backend_of(model, "fast"))

    def all_stats() -> None:
        accumulate(model, windows, new_bank(model, every, 10), batch_size)

    cfg = ExperimentConfig(model=model_spec(name, device, dtype), capture=CaptureSpec(batch_size=batch_size))

    def battery() -> None:
        cc = ConditionCapture(model, windows, every, cfg, "trained")
        cc.run()

    return model, {
        "a bare HF forward": bare,
        "b HF output_hidden_states": hidden,
        "c TL run_with_cache + stats": tl_cache,
        "d spectral residual (fast)": residual_fast,
        "e spectral all sites (bridge)": all_stats,
        "f spectral full battery": battery,
    }


def model_spec(name: str, device: str, dtype: str):
    from spectral.config import ModelSpec

    return ModelSpec(name=name, device=device, dtype=dtype)  # type: ignore[arg-type]


def peak_child(args: argparse.Namespace, name: str, variant: str, tokens: int) -> float:
    """Peak memory (MiB) of one variant over ``tokens`` tokens, in a fresh process."""
    cmd = [sys.executable, __file__, "--_child", json.dumps([name, variant, tokens])]
    cmd += ["--device", args.device, "--dtype", args.dtype, "--seq-len", str(args.seq_len)]
    cmd += ["--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return float(out.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    name, variant, tokens = json.loads(args._child)
    from spectral.backends import backend_of
    from spectral.capture import accumulate, all_sites, new_bank
    from spectral.models import load_model

    model = load_model(model_spec(name, args.device, args.dtype))
    windows = windows_for(tokens, args.seq_len, model.arch.d_vocab)
    sites = all_sites(model.arch)
    if variant == "d":
        sites = tuple(s for s in sites if s.startswith("resid_post."))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    accumulate(
        model,
        windows,
        new_bank(model, sites, 10),
        args.batch_size,
        backend=backend_of(model, "fast" if variant == "d" else "bridge"),
    )
    print(peak_mib(args.device))


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--variants", default="abcdef", help="letters of the variants to time")
    p.add_argument("--memory", default="2048,20480,204800", help="token counts for peak memory, or 'none'")
    p.add_argument("--memory-models", default="minilm", help="models for the memory runs")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a._child:
        child(a)
        return
    from spectral.runs import package_versions

    dev = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or platform.machine()
    print(
        f"# {time.strftime('%Y-%m-%d')} · {dev} · {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads · "
        f"torch {package_versions().get('torch')} · device {a.device} · dtype {a.dtype} · {a.tokens} tokens "
        f"({a.tokens // a.seq_len} windows of {a.seq_len}, batch {a.batch_size}), best of {a.repeat}"
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        for kind in a.models.split(","):
            name = build(kind, Path(tmpdir))
            from spectral.models import load_model

            vocab = load_model(model_spec(name, a.device, a.dtype)).arch.d_vocab
            windows = windows_for(a.tokens, a.seq_len, vocab)
            model, fns = variants(name, a.device, a.dtype, windows, a.batch_size)
            n_tok = len(windows) * a.seq_len
            print(f"\n## {kind}: {model.arch.architecture}, {model.arch.n_layers} layers, d_model {model.arch.d_model}")
            print("| variant | time (s) | tokens/s | ratio to (a) |\n|---|---|---|---|")
            base = None
            for label, fn in fns.items():
                if label[0] not in a.variants:
                    continue
                t = timed(fn, a.device, a.repeat)
                base = base or t
                print(f"| {label} | {t:.3f} | {n_tok / t:,.0f} | {t / base:.3f} |", flush=True)
            if a.memory != "none" and kind in a.memory_models.split(","):
                sizes = [int(x) for x in a.memory.split(",")]
                print(f"\npeak memory (MiB, fresh process each; {'CUDA allocated' if a.device != 'cpu' else 'RSS'})")
                print("| variant | " + " | ".join(f"{s:,} tokens" for s in sizes) + " | last / previous |")
                print("|---|" + "---|" * (len(sizes) + 1))
                for v in "de":
                    peaks = [peak_child(a, name, v, s) for s in sizes]
                    ratio = peaks[-1] / peaks[-2] if len(peaks) > 1 else 1.0
                    print(f"| {v} | " + " | ".join(f"{x:,.0f}" for x in peaks) + f" | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
