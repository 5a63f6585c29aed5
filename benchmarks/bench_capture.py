"""Capture overhead against baselines measured in the same process (issue 6, first cut).

    python benchmarks/bench_capture.py [--tokens 2048] [--seq-len 128] [--layers 12] [--d-model 768]

Model: a GPT-2-small-shaped decoder with random weights (same compute as GPT-2 small, no
download). Prints tokens/s and the ratio of each variant's time to the bare Hugging Face forward:
(a) bare HF forward (eager attention, as the bridge uses), (b) HF ``output_hidden_states``,
(c) TransformerBridge ``run_with_cache`` on the residual sites + the same statistics afterwards,
(d) spectral streaming capture of the resid_post sites, (e) spectral capture of every site.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch


def build(layers: int, d_model: int, tmp: Path):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_embd=d_model, n_head=max(1, d_model // 64), n_positions=1024)
    GPT2LMHeadModel(cfg).save_pretrained(tmp)
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, **{chr(i): i - 29 for i in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>").save_pretrained(tmp)


def timed(fn, repeat: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    a = p.parse_args()

    from transformers import AutoModelForCausalLM

    from spectral.capture import accumulate, all_sites, new_bank
    from spectral.config import ModelSpec
    from spectral.corpus import TokenWindows, iter_batches
    from spectral.models import load_model

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        build(a.layers, a.d_model, tmp)
        model = load_model(ModelSpec(name=str(tmp)))
        hf = AutoModelForCausalLM.from_pretrained(str(tmp), attn_implementation="eager").eval()
        n = max(1, a.tokens // a.seq_len)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 90, (n, a.seq_len), generator=g)
        windows = TokenWindows(ids, torch.arange(n), False, a.seq_len, n * a.seq_len, n, None)  # type: ignore[arg-type]
        batches = list(iter_batches(windows, a.batch_size))
        resid = tuple(s for s in all_sites(model.arch) if s.startswith("resid_post."))

        def bare() -> None:
            with torch.inference_mode():
                for b in batches:
                    hf(b.input_ids)

        def hidden() -> None:
            with torch.inference_mode():
                for b in batches:
                    hf(b.input_ids, output_hidden_states=True)

        def tl_cache() -> None:
            from spectral.stats import SiteStats

            stats = {s: SiteStats(model.arch.d_model, 10) for s in resid}
            names = [f"blocks.{int(s.split('.')[1])}.hook_resid_post" for s in resid]
            with torch.inference_mode():
                for b in batches:
                    _, cache = model.bridge.run_with_cache(b.input_ids, names_filter=lambda n: n in names)
                    for s, name in zip(resid, names, strict=True):
                        stats[s].update(cache[name], b.stat_mask, b.window_index)

        def spectral_resid() -> None:
            accumulate(model, windows, new_bank(model, resid, 10), a.batch_size)

        def spectral_all() -> None:
            accumulate(model, windows, new_bank(model, all_sites(model.arch), 10), a.batch_size)

        tokens = n * a.seq_len
        print(
            f"GPT-2-shaped random model: {a.layers} layers, d_model {a.d_model}; {tokens} tokens; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        base = None
        for name, fn in (
            ("a bare HF forward", bare),
            ("b HF output_hidden_states", hidden),
            ("c bridge run_with_cache + stats", tl_cache),
            ("d spectral resid_post sites", spectral_resid),
            ("e spectral every site", spectral_all),
        ):
            t = timed(fn)
            base = base or t
            print(f"{name:36s} {t:8.2f} s  {tokens / t:9.0f} tok/s  ratio {t / base:5.2f}")


if __name__ == "__main__":
    main()
