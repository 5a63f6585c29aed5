"""End to end: `spectral run` writes the run directory, and its numbers equal an independent
straightforward computation over the same windows (Hugging Face hidden states + numpy)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import BABYLLAMA, LLAMA2XS, TINYSTORIES, needs_shared

from spectral.analysis.metrics import MetricTable
from spectral.cli import main
from spectral.predictions import VERDICT_COLUMNS


def _independent(model_dir, corpus, seq_len, max_seqs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    text = corpus.read_bytes().decode("utf-8").lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    wins = [[tok.bos_token_id] + ids[i * seq_len : (i + 1) * seq_len] for i in range(max_seqs)]
    x = torch.tensor(wins)
    last = {}
    hook = hf.model.layers[-1].register_forward_hook(
        lambda m, i, o: last.__setitem__("h", o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        hs = list(hf(x, output_hidden_states=True).hidden_states)
    hook.remove()
    L = hf.config.num_hidden_layers
    resid = hs[:L] + [last["h"]]  # resid_pre.0, resid_post.0 .. resid_post.L-1
    out = {}
    for layer in range(L):
        h = resid[layer + 1][:, 1:].double().numpy()  # position 0 excluded
        p = resid[layer][:, 1:].double().numpy()
        flat, pflat = h.reshape(-1, h.shape[-1]), p.reshape(-1, p.shape[-1])
        n = flat.shape[0]
        nrm = np.linalg.norm(flat, axis=1)
        u = flat / nrm[:, None]
        mu = flat.mean(0) / np.linalg.norm(flat.mean(0))
        ev = np.linalg.eigvalsh(np.cov(flat.T, bias=True))
        ev = np.clip(ev, 0, None)
        pr = ev / ev.sum()
        pr = pr[pr > 0]
        T = h.shape[1]
        P = (np.abs(np.fft.rfft(h, axis=1)) ** 2).sum(axis=(0, 2))
        P[1 : P.size - (T % 2 == 0)] *= 2  # one-sided Parseval weights
        upd = flat - pflat
        out[f"resid_post.{layer}"] = {
            "norm_mean": nrm.mean(),
            "anisotropy": ((u @ u.T).sum() - n) / (n * (n - 1)),
            "carrier_energy": ((flat @ mu) ** 2).sum() / (flat**2).sum(),
            "layer_cos": np.mean((flat * pflat).sum(1) / (nrm * np.linalg.norm(pflat, axis=1))),
            "eff_rank": math.exp(-(pr * np.log(pr)).sum()),
            "seq_dc_share": P[0] / P.sum(),
            "update_cos_stream": np.mean(
                (upd * pflat).sum(1) / (np.linalg.norm(upd, axis=1) * np.linalg.norm(pflat, axis=1))
            ),
        }
    return out


@needs_shared
def test_llama2xs_run_matches_independent_computation(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "run",
            "--model",
            str(LLAMA2XS),
            "--corpus",
            str(TINYSTORIES),
            "--seq-len",
            "64",
            "--max-seqs",
            "64",
            "--out",
            str(out),
            "--quiet",
            "--formats",
            "none",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"run directory: {out}" in printed and "report.md" in printed
    table = MetricTable.from_csv((out / "metrics.csv").read_text())
    ref = _independent(LLAMA2XS, TINYSTORIES, 64, 64)
    for site, metrics in ref.items():
        for metric, expect in metrics.items():
            row = table.get("trained", site, metric)
            assert row is not None, (site, metric)
            assert row.value == pytest.approx(expect, rel=1e-3), (site, metric, row.value, expect)
            assert row.ci_low <= row.value <= row.ci_high
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["corpus"]["n_windows"] == 64
    assert man["weights_sha256"] and man["packages"]["torch"]
    members = {f"random_init.s{k}" for k in range(1, 6)}
    nulls = {"permuted_weights", *(f"permuted_weights.s{k}" for k in range(1, 5))}  # W: 5 permutations
    nulls |= {f"random_scaled.s{k}" for k in range(1, 4)}  # R rescaled to the trained norms: 3 seeds
    assert {"trained", "shuffled", "permuted"} | nulls | members == set(table.conditions())
    verdicts = (out / "verdicts.csv").read_text().splitlines()
    assert len(verdicts) == 12 and verdicts[0] == ",".join(VERDICT_COLUMNS)
    assert all(table.get(c, "resid_post", "growth_rate") is not None for c in members)
    for name in ("norm_profile", "carrier_anisotropy"):
        assert (out / "figures" / f"{name}.html").is_file() and (out / "figures" / f"{name}.csv").is_file()
    assert "## Per layer: random_init.s1" in (out / "report.md").read_text()


def test_default_model_run_and_run_dir_rules(tmp_path, capsys):
    out = tmp_path / "mini"
    quick = ["--quiet", "--n-boot", "50", "--no-controls", "--formats", "none"]
    from spectral.config import ModelSpec

    assert ModelSpec().name == "smollm2-135m"  # the embedded default (tests/test_llms.py runs it)
    args = ["run", "--model", "minilm", "--max-seqs", "6", "--seq-len", "32", "--out", str(out), *quick]
    assert main(args) == 0
    table = MetricTable.from_csv((out / "metrics.csv").read_text())
    # MiniLM is post-LN: the norm is pinned by LayerNorm, so the growth rate is ~1
    g = table.get("trained", "resid_post", "growth_rate")
    assert g is not None and abs(g.value - 1) < 0.2
    first = (out / "metrics.csv").read_text()
    assert main(args) == 0  # the same config into the same directory: a rerun is allowed
    assert (out / "metrics.csv").read_text() == first  # and deterministic
    capsys.readouterr()
    other = ["run", "--model", "minilm", "--max-seqs", "5", "--seq-len", "32", "--out", str(out), *quick]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "already holds a different run (differs in" in err and "corpus.max_seqs" in err and "--overwrite" in err
    assert err.count("\n") == 1
    assert main([*other, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-org/no-such-model"], "unknown model 'no-such-org/no-such-model': tried"),
        (["--seq-len", "600"], "needs 601 positions; the model's context is 512"),
        (["--sites", "resid_post.9"], "site 'resid_post.9' does not exist"),
        (["--seq-len", "0"], "seq_len must be >= 1"),
    ],
)
def test_bad_input_one_line_error_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "r"
    assert main(["run", "--model", "minilm", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("spectral: error: ") and err.count("\n") == 1
    assert not out.exists()


def test_empty_corpus_and_bad_toml(tmp_path, capsys):
    empty = tmp_path / "e.txt"
    empty.write_text("")
    assert main(["run", "--corpus", str(empty), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "is empty" in capsys.readouterr().err
    bad = tmp_path / "c.toml"
    bad.write_text("[capture]\nbatch_sise = 4\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown key [capture] 'batch_sise' (did you mean 'batch_size'?)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@needs_shared
def test_battery_end_to_end_on_babyllama(tmp_path):
    out = tmp_path / "baby"
    args = ["run", "--model", str(BABYLLAMA), "--corpus", str(TINYSTORIES), "--seq-len", "48", "--max-seqs", "12"]
    assert main([*args, "--out", str(out), "--quiet", "--n-boot", "100", "--formats", "none"]) == 0
    verdicts = (out / "verdicts.csv").read_text()
    assert verdicts.count("\n") == 12 and ",n/a," not in verdicts.split("\n")[1]  # a pre-LN LM: P1 applies
    for name in ("band_energy", "band_transfer", "logit_lens", "interventions", "carrier_robustness"):
        assert (out / "figures" / f"{name}.html").is_file(), name
    assert "## Verdicts" in (out / "report.md").read_text()


def test_a_type_error_in_control_p_is_not_hidden(tiny_model_dir, tmp_path, sample_text, monkeypatch):
    """Control P is skipped only when the forward takes no position ids (checked up front); any other
    TypeError raised while capturing it propagates (it was once reported as "control P skipped")."""
    from spectral.conditions import ConditionCapture
    from spectral.config import AnalysisSpec, CorpusSpec, ExperimentConfig, ModelSpec
    from spectral.runner import run_experiment, takes_position_ids

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(sample_text, encoding="utf-8")
    cfg = ExperimentConfig(
        model=ModelSpec(name=str(tiny_model_dir("llama"))),
        corpus=CorpusSpec(source=str(corpus), seq_len=16, max_seqs=4),
        analysis=AnalysisSpec(n_boot=20, intervention_windows=0, jacobian_windows=0),
        controls=("permuted",),
        formats=(),
        out=str(tmp_path / "run"),
    )
    original = ConditionCapture.run

    def broken(self, *a, **k):
        if self.condition == "permuted":
            raise TypeError("a bug inside the capture")
        return original(self, *a, **k)

    monkeypatch.setattr(ConditionCapture, "run", broken)
    with pytest.raises(TypeError, match="a bug inside the capture"):
        run_experiment(cfg, progress=False, log=lambda s: None)

    class NoPositions:
        def forward(self, input_ids, attention_mask=None): ...

    class Fake:
        hf_model = NoPositions()

    assert not takes_position_ids(Fake())  # type: ignore[arg-type]
