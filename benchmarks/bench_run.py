"""What the user waits for (issue 24): the default ``spectral run``, phase by phase, against the bare forwards of
the same tokens, in one process and one run.

    python benchmarks/bench_run.py                        # SmolLM2-135M, the default job, CPU
    python benchmarks/bench_run.py --profile prof.out     # + a cProfile of the run (slower: do not quote its walls)
    python benchmarks/bench_run.py --device cuda --dtype bfloat16

First the anchors, measured on the loaded model's own Hugging Face module (SDPA, logits computed; best of
``--repeat`` after a warm-up): the bare forward of the run's windows (the trained condition, and S and P, which
run the same number of tokens), of the first ``null_windows`` windows (a null member: W and R share the
architecture, so the same cost), and the bare forwards of the edited tails that the two intervention sweeps run
(for each edited layer l, layers l+1.. on the sub-windows, once per edit). Then ``spectral run`` with the default
config into a temporary directory, and its manifest's phase timings side by side with the anchors. With
``--profile`` the run goes under cProfile and the spectral functions with the largest cumulative time are listed
(the analysis and figure phases; the capture is the forward and its hooks).
"""

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import peak_mib, timed


def bare_forward(model, windows, batch_size: int, device: str):
    from spectral.corpus import iter_batches

    batches = list(iter_batches(windows, batch_size))

    def run() -> None:
        with torch.inference_mode():
            for b in batches:
                model.hf_model(input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device))

    return run


def bare_tails(model, windows, layers: list[int], edits: int, positions: int, batch_size: int, device: str):
    """What a sweep computes, bare: per batch one clean forward, then for each layer l and each of its ``edits``
    the plain model's layers l+1.. (final norm included) from the clean resid_post.l, each with the logits of
    ``positions`` rows per window (the scored positions); no hooks, no edit, no scoring."""
    from spectral import fastpath
    from spectral.corpus import iter_batches
    from spectral.interventions import tail_layers

    base = fastpath.plain_model(model)
    W, bias = model.unembedding()
    W = W.float().to(device)
    batches = [(b.input_ids.to(device), b.attention_mask.to(device)) for b in iter_batches(windows, batch_size)]
    streams = []
    with torch.inference_mode():
        for ids, att in batches:
            hs = base(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False).hidden_states
            streams.append((ids, att, {layer: hs[layer + 1] for layer in layers}))
    rows = slice(1, 1 + positions)

    def run() -> None:
        with torch.inference_mode():
            for ids, att, kept in streams:
                _ = base(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state[:, rows] @ W  # clean
                for layer in layers:
                    with tail_layers(base, layer + 1):
                        for _ in range(edits):
                            _ = (
                                base(inputs_embeds=kept[layer], attention_mask=att, use_cache=False).last_hidden_state[
                                    :, rows
                                ]
                                @ W
                            )

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--profile", help="write the run's cProfile here and list its top spectral functions")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from spectral.conditions import evenly_spaced
    from spectral.config import ExperimentConfig, ModelSpec
    from spectral.interventions import can_run_tails
    from spectral.predictions.base import middle_layers
    from spectral.runner import run_experiment, setup_run
    from spectral.runs import package_versions, read_manifest

    tmp = Path(tempfile.mkdtemp(prefix="bench_run_"))
    cfg = ExperimentConfig(model=ModelSpec(name=a.model, device=a.device, dtype=a.dtype), out=str(tmp / "run"))
    s = setup_run(cfg, None)
    model, w, cap, an = s.model, s.windows, cfg.capture, cfg.analysis
    L = model.arch.n_layers
    print(
        f"# {time.strftime('%Y-%m-%d')} · {a.model} ({model.arch.architecture}, {L} layers, d {model.arch.d_model}) · "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads · torch {package_versions().get('torch')} · "
        f"{a.device} {a.dtype} · the default job: {len(w)} windows x {w.ids.shape[1]} tokens, batch {cap.batch_size}, "
        f"null members on {min(cfg.null_windows, len(w))} windows; anchors best of {a.repeat}",
        flush=True,
    )
    anchors = {
        "trained": timed(bare_forward(model, w, cap.batch_size, a.device), a.device, a.repeat),
        "null": timed(bare_forward(model, w.head(cfg.null_windows), cap.batch_size, a.device), a.device, a.repeat),
    }
    tails: dict[str, float] = {}
    if can_run_tails(model):
        n_iv = 1 + an.bands[0] + 2  # the carrier, each W_U band, two mean ablations
        iv_layers = evenly_spaced(list(range(L)), an.intervention_layers)
        mod_layers = evenly_spaced(middle_layers(L, cfg.verdicts), an.modulation_layers)
        for name, sub, layers, edits, pos in (
            ("interventions", w.select(slice(0, an.intervention_windows)), iv_layers, n_iv, an.lens_positions),
            (
                "modulation",
                w.select(slice(0, an.modulation_windows)),
                mod_layers,
                2 + an.modulation_directions,
                an.modulation_positions,
            ),
        ):
            run = bare_tails(model, sub, layers, edits, pos, cap.batch_size, a.device)
            tails[name] = timed(run, a.device, a.repeat)
    del s, model
    print(f"anchors (s): bare forward {anchors['trained']:.2f} (run windows), {anchors['null']:.2f} (null windows); "
          + ", ".join(f"bare tails of the {k} sweep {v:.2f}" for k, v in tails.items()), flush=True)  # fmt: skip
    t0 = time.perf_counter()
    prof = cProfile.Profile() if a.profile else None
    if prof is not None:
        prof.enable()
    run_experiment(cfg, progress=False, log=lambda m: None)
    if prof is not None:
        prof.disable()
    wall = time.perf_counter() - t0
    timings: dict[str, float] = read_manifest(tmp / "run").get("timings", {})
    conds = [k.removeprefix("capture_") for k in timings if k.startswith("capture_")]
    print("\n| condition | capture | forward steps of the analysis | statistics | capture + statistics | bare forward "
          "| ratio |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for c in conds:
        steps = {k.split("_")[0]: v for k, v in timings.items() if k.endswith(f"_{c}") and k.split("_")[0] in
                 ("interventions", "modulation", "transfer", "tune")}  # fmt: skip
        cap_s, stat_s = timings[f"capture_{c}"], timings.get(f"statistics_{c}", float("nan"))
        bare = anchors["trained" if c in ("trained", "shuffled", "permuted") else "null"]
        desc = ", ".join(f"{k} {v:.1f}" for k, v in steps.items()) or "—"
        print(f"| {c} | {cap_s:.1f} | {desc} | {stat_s:.1f} | {cap_s + stat_s:.1f} | {bare:.2f} | "
              f"{(cap_s + stat_s) / bare:.1f}× |")  # fmt: skip
    for name, bare in tails.items():
        got = timings.get(f"{name}_trained")
        if got:
            print(f"\n{name} sweep (tail forwards): {got:.1f} s against bare tails {bare:.2f} s: {got / bare:.2f}×")
    nulls = [timings.get(f"statistics_{c}", 0.0) for c in conds if c not in ("trained", "shuffled", "permuted")]
    if nulls:
        print(f"statistics of a null member: median {sorted(nulls)[len(nulls) // 2]:.2f} s, max {max(nulls):.2f} s")
    prep = sum(v for k, v in timings.items() if k.startswith("prepare_"))
    floor = 3 * anchors["trained"] + (len(conds) - 3) * anchors["null"] + sum(tails.values())
    print(
        f"figures {timings.get('figures', float('nan')):.1f} s; load {timings['load']:.1f} s; preparing the null "
        f"models (W's permutations, R's inits) {prep:.1f} s; verdicts {timings.get('verdicts', 0.0):.1f} s; report "
        f"{wall - timings['total']:.1f} s; manifest total {timings['total']:.1f} s; wall of run_experiment "
        f"{wall:.1f} s; peak memory {peak_mib(a.device):,.0f} MiB\nthe bare forwards of the whole job (every "
        f"condition's windows and both sweeps' tails): {floor:.1f} s; the job is {wall / floor:.2f}× them"
    )
    if prof is not None:
        prof.dump_stats(a.profile)
        st = pstats.Stats(prof, stream=sys.stdout)
        st.sort_stats("cumulative")
        print("\ncProfile, cumulative, spectral functions:")
        st.print_stats(r"spectral/", 40)


if __name__ == "__main__":
    main()
