"""The quantities the field reports, for each real LLM, beside the published numbers (issue 25).

Per LLM (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-0.5B) this makes

* a trained-model-only run (``reports/field/<key>/``: metrics.csv, massive.csv, manifest.json; the tuned lens's
  translators stay out of git) on the model's TinyStories windows with the canonical window settings: lens KL and
  entropy per layer for the logit lens and the approximate tuned lens, outliers at every site over every window,
  layer linearity and LLM-Microscope's anisotropy;
* ``nll.csv``: mean next-token NLL (nats, 95 % bootstrap CI over windows) on TinyStories and on Pride and
  Prejudice, the check that the dequantized GGUF weights are intact (a broken dequantization shows as an NLL
  near log V);
* for Qwen, ``bos.csv``: the largest |h_i| per resid_post layer with and without the leading ``<|endoftext|>``
  (its tokenizer's BOS), the same windows otherwise: does its massive activation need the first token?

``python experiments/field.py [--models smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b] [--windows 128]``;
reruns reuse a complete run with the same config. The research note reads these files (``--reuse``).
"""

import argparse
import csv
import dataclasses
import io
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, run_settings  # noqa: E402

OUT = ROOT / "reports" / "field"
LLMS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")
CORPORA = {
    "tinystories": "../shared/data/corpora/tinystories_train_head.txt",
    "austen": "../shared/data/corpora/gutenberg/pg1342.txt",
}


def field_config(name: str, windows: int, seq_len: int) -> dict:
    return {
        "model": {"name": name},
        "corpus": {"source": CORPORA["tinystories"], "seq_len": seq_len, "max_seqs": windows},
        "analysis": {
            "n_boot": 1000,
            "lens_positions": 16,
            "tuned_lens_windows": windows // 2,
            "intervention_windows": 0,
            "modulation_windows": 0,
            "jacobian_windows": 0,
        },  # fmt: skip
        "controls": [],
        "seed": 0,
        "formats": [],
        "out": str((OUT / name).relative_to(ROOT)),
    }


def field_run(name: str, windows: int, seq_len: int) -> Path:
    from common import portable_manifest

    from spectral.config import config_from_dict
    from spectral.runner import run_experiment
    from spectral.runs import atomic_write_text, read_manifest

    cfg = config_from_dict(field_config(name, windows, seq_len), "experiments/field")
    out = OUT / name
    if (out / "manifest.json").is_file():
        man = read_manifest(out)
        if man.get("status") == "complete" and man.get("config") == cfg.to_dict():
            print(f"{name}: reusing {out}")
            return out
    run_experiment(cfg, command="python experiments/field.py --models " + name, overwrite=True)
    atomic_write_text(out / "manifest.json", portable_manifest(out))  # committed: no machine paths
    return out


def nll_table(name: str, windows: int, seq_len: int) -> str:
    """Mean next-token NLL per corpus with a bootstrap CI over windows (position 0 not scored)."""
    from spectral.config import CorpusSpec, ModelSpec
    from spectral.corpus import make_windows
    from spectral.interventions import nll_per_window
    from spectral.models import load_model

    m = load_model(ModelSpec(name=name))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "corpus", "windows", "tokens_per_window", "nll", "ci_low", "ci_high", "log_vocab"])
    rng = np.random.default_rng(0)
    for key, path in CORPORA.items():
        win = make_windows(m.tokenizer, CorpusSpec(source=path, seq_len=seq_len, max_seqs=windows), n_ctx=m.arch.n_ctx)
        per = nll_per_window(m, win, 8)
        boot = np.array([per[rng.integers(0, len(per), len(per))].mean() for _ in range(1000)])
        lo, hi = np.percentile(boot, [2.5, 97.5])
        V = m.unembedding()[0].shape[1]
        w.writerow([name, key, len(win), seq_len, f"{per.mean():.4f}", f"{lo:.4f}", f"{hi:.4f}", f"{math.log(V):.3f}"])
        print(f"{name} {key}: NLL {per.mean():.3f} [{lo:.3f}, {hi:.3f}] nats (log V = {math.log(V):.2f})")
    return buf.getvalue()


def bos_table(name: str, windows: int, seq_len: int) -> str:
    """Largest |h_i| per resid_post layer with and without a leading special token: the windows as the run makes
    them (with the tokenizer's BOS, for Qwen ``<|endoftext|>``) against the same windows without it; for a tokenizer
    without a BOS, ``<|endoftext|>`` put in front instead. Does the massive activation need the first token?"""
    from spectral.config import CorpusSpec, ModelSpec
    from spectral.corpus import make_windows
    from spectral.massive import massive_activations
    from spectral.models import load_model

    m = load_model(ModelSpec(name=name))
    win = make_windows(m.tokenizer, CorpusSpec(source=CORPORA["tinystories"], seq_len=seq_len, max_seqs=windows),
                       n_ctx=m.arch.n_ctx)  # fmt: skip
    if win.has_bos:
        lead = m.tokenizer.convert_ids_to_tokens(int(win.ids[0, 0]))
        with_lead, without = win, dataclasses.replace(win, ids=win.ids[:, 1:], has_bos=False)
    else:
        lead = "<|endoftext|>"
        eot = m.tokenizer.convert_tokens_to_ids(lead)
        col = torch.full((len(win), 1), int(eot), dtype=win.ids.dtype)
        with_lead, without = dataclasses.replace(win, ids=torch.cat([col, win.ids], 1), has_bos=True), win
    a_rows, b_rows = massive_activations(m, with_lead), massive_activations(m, without)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ("max_abs", "position", "token", "dim", "pos0_max", "ratio", "median_abs", "rms")
    w.writerow(["layer", "lead"] + [f"{c}_with" for c in cols] + [f"{c}_without" for c in cols])
    for a, b in zip(a_rows, b_rows, strict=True):
        cells = [a.layer, lead]
        for r in (a, b):
            cells += [f"{r.max_abs:.6g}", r.position, r.token, r.dim, f"{r.pos0_max:.6g}", f"{r.ratio:.6g}",
                      f"{r.median_abs:.6g}", f"{r.rms:.6g}"]  # fmt: skip
        w.writerow(cells)
    ta, tb = max(a_rows, key=lambda r: r.max_abs), max(b_rows, key=lambda r: r.max_abs)
    print(f"{name}: max |h| with a leading {lead!r} {ta.max_abs:.4g} (layer {ta.layer}, position {ta.position}); "
          f"without {tb.max_abs:.4g} (layer {tb.layer}, position {tb.position})")  # fmt: skip
    return buf.getvalue()


def summary_table(name: str, out: Path) -> str:
    """The per-model numbers the note quotes that are not single cells of a run's files (a mean over layers, the
    layer of a maximum), computed here from metrics.csv and massive.csv so the note can cite one cell each."""
    from spectral.analysis.metrics import MetricTable

    table = MetricTable.from_csv((out / "metrics.csv").read_text())
    L = int(read_json(out / "manifest.json")["arch"]["n_layers"])

    def value(site: str, metric: str) -> float:
        r = table.get("trained", site, metric)
        return float("nan") if r is None else r.value

    layers = list(range(L))
    lin = [value(f"resid_post.{i}", "layer_linearity") for i in layers if i > 0]
    rows = {
        "layers": L,
        "linearity_mean": float(np.nanmean(lin)),
        "linearity_min": float(np.nanmin(lin)),
    }
    with (out / "massive.csv").open() as f:
        resid = [r for r in csv.DictReader(f) if r["site"].startswith("resid_post.")]
    top = max(resid, key=lambda r: float(r["max_abs"]))
    rows.update(max_abs=float(top["max_abs"]), max_abs_layer=int(top["layer"]), max_abs_position=int(top["position"]),
                max_abs_ratio=float(top["ratio"]))  # fmt: skip
    mid = [r for r in resid if 5 <= int(r["layer"]) <= L - 4] or resid
    low = min(mid, key=lambda r: float(r["min"]))
    rows.update(min_h_mid=float(low["min"]), min_h_mid_layer=int(low["layer"]))
    by_layer = {int(r["layer"]): r for r in resid}
    rows.update(rms_first=float(by_layer[0]["rms"]), rms_last=float(by_layer[L - 1]["rms"]))
    ratio_top = max(resid, key=lambda r: float(r["ratio"]))
    rows.update(top1_ratio_max=float(ratio_top["ratio"]), top1_ratio_layer=int(ratio_top["layer"]))
    for key, layer in (("l0", 0), ("l1", 1), ("mid", L // 2), ("penult", L - 2)):
        rows[f"logit_kl_{key}"] = value(f"resid_post.{layer}", "logit_lens_kl")
        rows[f"tuned_kl_{key}"] = value(f"resid_post.{layer}", "tuned_lens_kl")
        rows[f"layer_{key}"] = layer
    gains = [value(f"resid_post.{i}", "tuned_lens_kl_gain") for i in range(L - 1)]
    rows["tuned_better_layers"] = int(sum(
        1 for i in range(L - 1) if (r := table.get("trained", f"resid_post.{i}", "tuned_lens_kl_gain")) and r.ci_low > 0
    ))  # fmt: skip
    rows["tuned_layers"] = sum(1 for g in gains if np.isfinite(g))
    lens_path = out / "tuned_lens.safetensors"
    if lens_path.is_file():
        from spectral.tuned_lens import TunedLens

        rows["tuned_fit_tokens"] = TunedLens.load(lens_path).n_fit
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "quantity", "value"])
    for k, v in rows.items():
        w.writerow([name, k, f"{v:.6g}" if isinstance(v, float) else v])
    return buf.getvalue()


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def main() -> None:
    from spectral.runs import atomic_write_text

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", default=",".join(LLMS))
    ap.add_argument("--windows", type=int, default=run_settings(False)["max_seqs"])
    ap.add_argument("--seq-len", type=int, default=run_settings(False)["seq_len"])
    ap.add_argument("--nll-windows", type=int, default=32)
    args = ap.parse_args()
    for name in args.models.split(","):
        out = field_run(name, args.windows, args.seq_len)
        if not (out / "nll.csv").is_file():
            atomic_write_text(out / "nll.csv", nll_table(name, args.nll_windows, args.seq_len))
        if name.startswith("qwen") and not (out / "bos.csv").is_file():
            atomic_write_text(out / "bos.csv", bos_table(name, args.nll_windows, args.seq_len))
        atomic_write_text(out / "summary.csv", summary_table(name, out))


if __name__ == "__main__":
    main()
