"""Kill-and-resume, shards and merge, and a 2-process torchrun: each against one uninterrupted run.

Runs are killed with SIGKILL at several points (inside a state write, after a checkpoint,
between conditions, after metrics.csv, and from outside at an arbitrary moment); ``spectral run
--resume`` then gives a ``metrics.csv`` byte-identical to the uninterrupted run. Shards merged
with ``spectral merge`` and a 2-rank torchrun (gloo) match the single run to fp tolerance.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from spectral.analysis.metrics import MetricTable
from spectral.cli import main
from spectral.compare import compare_runs
from spectral.errors import RunDirError
from spectral.report import build_report

# the subprocesses inherit this process's thread settings: float32 partial sums reduce in an order that
# depends on the thread count, and byte-identity needs the same order (different counts agree to ~1e-7)
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


@pytest.fixture(scope="module")
def base(tiny_model_dir, tmp_path_factory, sample_text):
    root = tmp_path_factory.mktemp("resume")
    corpus = root / "corpus.txt"
    corpus.write_text(sample_text)
    args = ["run", "--model", str(tiny_model_dir("llama")), "--corpus", str(corpus), "--seq-len", "16"]
    args += ["--max-seqs", "12", "--batch-size", "2", "--checkpoint-every", "4", "--n-boot", "50"]
    # float64 moments: shards sum their buckets in another order than the single run, and the merge is
    # checked to 1e-7 (float32 storage is checked against float64 in test_stats)
    args += ["--moment-dtype", "float64", "--formats", "none", "--quiet"]
    ref = root / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    return {"root": root, "args": args, "ref": ref}


def _spawn(args: list[str], failpoint: str | None = None) -> subprocess.Popen:
    env = dict(ENV, SPECTRAL_FAILPOINT=failpoint) if failpoint else ENV
    return subprocess.Popen([sys.executable, "-m", "spectral.cli", *args], env=env, stderr=subprocess.PIPE)


@pytest.mark.parametrize(
    "point",
    [
        "state-write:1",  # killed inside the first checkpoint write (temporary file written, not renamed)
        "state-write:5",  # inside a later one (the condition-end save of R)
        "state-saved:2",  # right after the second checkpoint
        "condition-captured:3",  # between conditions (S captured and saved, P not started)
        "metrics-written:1",  # metrics.csv written, figures and manifest not yet
        "external",  # SIGKILL from outside once the first state file exists
    ],
)
def test_kill_and_resume_gives_identical_metrics(base, point):
    out = base["root"] / point.replace(":", "-")
    args = [*base["args"], "--out", str(out)]
    if point == "external":
        proc = _spawn(args)
        end = time.time() + 120
        while not list((out / "state").glob("*.pt")) and time.time() < end and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    else:
        proc = _spawn(args, point)
    proc.wait(300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "running"  # killed: nothing claims to be complete
    with pytest.raises(RunDirError, match="not complete"):  # readers refuse it
        compare_runs([out], base["root"] / f"cmp-{point.replace(':', '-')}")
    if not (out / "metrics.csv").exists():
        with pytest.raises(RunDirError, match=r"not complete \(status running.*--resume"):
            build_report(out)
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert (out / "metrics.csv").read_bytes() == (base["ref"] / "metrics.csv").read_bytes()
    assert (out / "verdicts.csv").read_bytes() == (base["ref"] / "verdicts.csv").read_bytes()
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and len(man["resumed"]) == 1
    assert not (out / "state").exists()  # the capture state is dropped once the run is complete


def test_resume_refuses_what_it_cannot_continue(base, capsys):
    assert main(["run", "--resume", str(base["ref"]), "--quiet"]) == 2
    assert "already complete" in capsys.readouterr().err
    assert main(["run", "--resume", str(base["root"] / "nothing-here"), "--quiet"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def _close(a: MetricTable, b: MetricTable) -> None:
    # the shards' float32 forwards batch other windows together, which moves an NLL (~3 nats) by float32
    # rounding, a few 1e-7: a ΔNLL (a difference of two NLLs) and its bootstrap bounds get atol 1e-6
    ka = {(r.condition, r.site, r.metric): r for r in a.rows}
    kb = {(r.condition, r.site, r.metric): r for r in b.rows}
    assert ka.keys() == kb.keys()
    for k, r in ka.items():
        got = np.array([kb[k].value, kb[k].ci_low, kb[k].ci_high])
        # layer linearity of the update y − x reads C_yy − C_xy − C_yx + C_xx: the cancellation lifts the float32
        # batch-composition rounding of the moments (~1e-7 relative) to ~2e-7 absolute
        atol = 1e-6 if k[2].startswith(("dnll", "layer_linearity")) else 1e-7
        np.testing.assert_allclose(got, [r.value, r.ci_low, r.ci_high], rtol=1e-7, atol=atol, err_msg=str(k))


def test_shards_merge_to_the_single_run(base, capsys):
    root = base["root"]
    shards = [root / f"shard{i}" for i in range(3)]
    for i, d in enumerate(shards):
        assert main([*base["args"], "--shard", f"{i}/3", "--out", str(d)]) == 0
        assert json.loads((d / "manifest.json").read_text())["shard"] == f"{i}/3"
    ref = MetricTable.from_csv((base["ref"] / "metrics.csv").read_text())
    assert main(["merge", *map(str, shards), "--out", str(root / "merged")]) == 0
    _close(ref, MetricTable.from_csv((root / "merged" / "metrics.csv").read_text()))
    # order of the shards does not matter (commutative), and bad sets are refused with a reason
    assert main(["merge", *map(str, shards[::-1]), "--out", str(root / "merged-rev")]) == 0
    _close(ref, MetricTable.from_csv((root / "merged-rev" / "metrics.csv").read_text()))
    capsys.readouterr()
    assert main(["merge", str(shards[0]), str(shards[2]), "--out", str(root / "bad")]) == 2
    assert "shards 1/3 are missing" in capsys.readouterr().err
    assert main(["merge", str(shards[0]), str(shards[0]), "--out", str(root / "bad")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["merge", str(base["ref"]), "--out", str(root / "bad")]) == 2
    assert "not a shard run" in capsys.readouterr().err


def test_interrupted_merge_is_marked_and_redone(base):
    root = base["root"]
    shards = [root / f"mshard{i}" for i in range(2)]
    for i, d in enumerate(shards):
        assert main([*base["args"], "--shard", f"{i}/2", "--out", str(d)]) == 0
    out = root / "merge-killed"
    proc = _spawn(["merge", *map(str, shards), "--out", str(out)], "merge-condition:2")
    proc.wait(300)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert not (out / "metrics.csv").exists()
    assert main(["merge", *map(str, shards), "--out", str(out)]) == 0  # the same command redoes it
    _close(
        MetricTable.from_csv((base["ref"] / "metrics.csv").read_text()),
        MetricTable.from_csv((out / "metrics.csv").read_text()),
    )


def test_two_process_torchrun_matches_the_single_run(base):
    out = base["root"] / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "spectral.cli", *base["args"], "--out", str(out)]
    res = subprocess.run(cmd, env=dict(ENV, SPECTRAL_DIST_BACKEND="gloo"), capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["shard"] == "0/2"
    _close(
        MetricTable.from_csv((base["ref"] / "metrics.csv").read_text()),
        MetricTable.from_csv((out / "metrics.csv").read_text()),
    )


def test_float32_shards_merge_within_accumulation_error(base):
    """With the default float32 moment storage, a run split into n shards (n drawn by a seeded RNG) merges to the
    single run within float32 accumulation error, |a − b| ≤ 1e-5·|a| + 1e-8, for every metric, calibrated or
    subset statistics included, and no energy or share is negative. Known gap (issue 24, stated in RESULTS.md):
    the jackknife bounds of the least-squares band transfer at layer 0, whose input (the embeddings of few
    distinct tokens) is rank-deficient, are checked to 1e-3 relative; lens KLs carry float32 log-sum-exp rounding,
    absolute (1e-6)."""
    import random

    root = base["root"]
    args = [a for a in base["args"]]
    i = args.index("--moment-dtype")
    args[i + 1] = "float32"
    n = random.Random(24).choice((2, 3, 4))
    ref_dir = root / "f32-ref"
    assert main([*args, "--out", str(ref_dir)]) == 0
    shards = [root / f"f32-shard{k}" for k in range(n)]
    for k, d in enumerate(shards):
        assert main([*args, "--shard", f"{k}/{n}", "--out", str(d)]) == 0
    assert main(["merge", *map(str, shards), "--out", str(root / "f32-merged")]) == 0
    ref = MetricTable.from_csv((ref_dir / "metrics.csv").read_text())
    got = {
        (r.condition, r.site, r.metric): r
        for r in MetricTable.from_csv((root / "f32-merged" / "metrics.csv").read_text()).rows
    }
    assert got.keys() == {(r.condition, r.site, r.metric) for r in ref.rows}
    bad = []
    for r in ref.rows:
        o = got[(r.condition, r.site, r.metric)]
        for what, a, b in (("value", r.value, o.value), ("lo", r.ci_low, o.ci_low), ("hi", r.ci_high, o.ci_high)):
            if not (np.isfinite(a) or np.isfinite(b)):
                continue
            rel = 1e-3 if r.metric.startswith("band_offdiag") and r.site.endswith(".0") and what != "value" else 1e-5
            # a KL is a difference of float32 log-partition functions: its rounding is absolute, ~1e-7 of the
            # logits' size, whatever the KL (the tuned lens's held-out KL sits at 1e-4 here)
            absolute = 1e-6 if "_kl" in r.metric else 1e-8
            if not abs(a - b) <= rel * abs(a) + absolute:
                bad.append((r.condition, r.site, r.metric, what, a, b))
        if "energy" in r.metric or r.metric.endswith("_share"):
            assert not o.value < 0, (r.condition, r.site, r.metric, o.value)
    assert not bad, f"{n} shards: {len(bad)} numbers differ: {bad[:40]}"
