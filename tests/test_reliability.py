"""Reliability: property-based tests (hypothesis) and the bad inputs of issue 7 not covered elsewhere.

Properties: configs round-trip through TOML; random garbage in a config file only ever raises a
one-line ConfigError; merging statistics is associative and commutative; statistics do not depend
on the batch size or the order of the windows. Bad inputs: a tokenizer without BOS when BOS is
required, no free disk space, a disk that fills during a write, an output directory that cannot
be written, and run names that try to leave the runs folder.
"""

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spectral.config import (
    AnalysisSpec,
    CaptureSpec,
    CorpusSpec,
    ExperimentConfig,
    ModelSpec,
    VerdictSpec,
    config_from_dict,
    load_config,
    to_toml,
)
from spectral.errors import ConfigError, CorpusError, RunDirError, SpectralError
from spectral.stats import SiteStats

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20).filter(str.strip)

configs = st.builds(
    ExperimentConfig,
    model=st.builds(ModelSpec, name=text, device=st.sampled_from(["cpu", "cuda", "cuda:1"]), revision=st.none() | text),
    corpus=st.builds(
        CorpusSpec,
        source=text,
        seq_len=st.integers(1, 4096),
        max_seqs=st.integers(1, 10**6),
        sampling=st.sampled_from(["consecutive", "random"]),
        require_bos=st.booleans(),
    ),
    capture=st.builds(
        CaptureSpec,
        sites=st.lists(
            st.sampled_from(["all", "resid_post.*", "embed", "final", "attn_out.2"]), min_size=1, max_size=3
        ).map(tuple),
        batch_size=st.integers(1, 4096),
        moment_buckets=st.integers(2, 1000),
        checkpoint_every=st.integers(0, 10**6),
        backend=st.sampled_from(["bridge", "fast"]),
        shard=st.none() | st.integers(1, 9).flatmap(lambda n: st.integers(0, n - 1).map(lambda i: f"{i}/{n}")),
    ),
    analysis=st.builds(
        AnalysisSpec,
        n_boot=st.integers(10, 10**5),
        ci_level=st.floats(0.5, 0.999, exclude_min=True),
        bands=st.lists(st.integers(2, 64), min_size=1, max_size=3).map(tuple),
    ),
    verdicts=st.just(VerdictSpec()),
    controls=st.lists(st.sampled_from(["random_init", "shuffled", "permuted"]), unique=True).map(tuple),
    seed=st.integers(0, 2**31),
    formats=st.lists(st.sampled_from(["png", "pdf", "svg"]), unique=True).map(tuple),
    out=st.none() | text,
)


@FAST
@given(cfg=configs)
def test_config_round_trips_through_toml(cfg, tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg), encoding="utf-8")
    assert load_config(p) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


@FAST
@given(junk=st.text(max_size=300))
def test_garbage_config_text_gives_a_message_never_a_traceback(junk, tmp_path):
    p = tmp_path / "junk.toml"
    p.write_text(junk, encoding="utf-8")
    try:
        load_config(p)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
tree = st.recursive(
    scalar,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "model",
        "corpus",
        "capture",
        "analysis",
        "verdicts",
        "seed",
        "controls",
        "formats",
        "name",
        "seq_len",
        "sites",
        "bands",
    ]
)


@FAST
@given(
    data=st.dictionaries(
        keys | st.text(max_size=6), tree | st.dictionaries(keys | st.text(max_size=6), tree, max_size=4), max_size=5
    )
)
def test_garbage_config_structures_give_a_message(data):
    try:
        config_from_dict(data)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


def _chunk(seed: int, n_windows: int, offset: int, d: int = 5, T: int = 7) -> SiteStats:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_windows, T, d, generator=g, dtype=torch.float64) + 2.0
    st_ = SiteStats(
        d, 3, center=torch.full((d,), 1.5, dtype=torch.float64), sink_threshold=6.0, moment_dtype=torch.float64
    )
    mask = torch.ones(n_windows, T, dtype=torch.bool)
    mask[:, 0] = False
    st_.update(
        h, mask, torch.arange(offset, offset + n_windows), torch.arange(offset, offset + n_windows) % 3, prev=h.flip(-1)
    )
    return st_


def _same(a: SiteStats, b: SiteStats) -> None:
    ta, tb = a.total(), b.total()
    assert ta.n == tb.n
    for f in ("sum_h", "sum_u", "second", "sink_second", "spectrum"):
        torch.testing.assert_close(getattr(ta, f), getattr(tb, f), rtol=1e-12, atol=1e-12)
    ta, tb = a.window_table(), b.window_table()
    ia, ra, ib, rb = ta.index, ta.rows, tb.index, tb.rows
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(ra, rb, rtol=1e-12, atol=1e-12)


@FAST
@given(
    seeds=st.lists(st.integers(0, 10**6), min_size=3, max_size=3),
    sizes=st.lists(st.integers(1, 4), min_size=3, max_size=3),
)
def test_merge_is_associative_and_commutative(seeds, sizes):
    offs = np.cumsum([0, *sizes])
    parts = lambda: [_chunk(s, n, int(o)) for s, n, o in zip(seeds, sizes, offs, strict=False)]  # noqa: E731
    a, b, c = parts()
    left = a.merge(b).merge(c)  # (a + b) + c
    a, b, c = parts()
    right = a.merge(b.merge(c))  # a + (b + c)
    _same(left, right)
    a, b, c = parts()
    _same(left, c.merge(a).merge(b))  # another order


@FAST
@given(batch=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_statistics_invariant_to_batch_size_and_window_order(batch, seed):
    g = torch.Generator().manual_seed(seed)
    n, T, d = 7, 6, 4
    h = torch.randn(n, T, d, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(n, T, dtype=torch.bool)
    mask[:, 0] = False
    idx = torch.arange(n)

    def run(order: torch.Tensor, bs: int) -> SiteStats:
        s = SiteStats(d, 3, center=torch.zeros(d, dtype=torch.float64), sink_threshold=8.0, moment_dtype=torch.float64)
        for i in range(0, n, bs):
            sel = order[i : i + bs]
            s.update(h[sel], mask[sel], idx[sel], idx[sel] % 3)
        return s

    ref = run(idx, n)
    _same(ref, run(idx, batch))
    _same(ref, run(torch.randperm(n, generator=g), batch))


def test_tokenizer_without_bos_when_bos_is_required(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from spectral.corpus import make_windows

    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    p = tmp_path / "t.txt"
    p.write_text("a b " * 50)
    assert not make_windows(fast, CorpusSpec(source=str(p), seq_len=4, max_seqs=2)).has_bos
    with pytest.raises(CorpusError, match="has no BOS or CLS token, and corpus.require_bos is set"):
        make_windows(fast, CorpusSpec(source=str(p), seq_len=4, max_seqs=2, require_bos=True))


def _cfg(tiny_model_dir, out: Path) -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelSpec(name=str(tiny_model_dir("llama"))),
        corpus=CorpusSpec(source="builtin", seq_len=8, max_seqs=2),
        controls=(),
        formats=(),
        out=str(out),
    )


def test_no_free_disk_space_is_refused_before_writing(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    from spectral.runner import run_experiment

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 << 20))
    out = tmp_path / "full"
    with pytest.raises(RunDirError, match=r"not enough free disk space for .*full: the run needs about [\d,]+ MiB"):
        run_experiment(_cfg(tiny_model_dir, out), progress=False)
    assert not out.exists()


def test_disk_full_during_a_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from spectral import runs

    target = tmp_path / "metrics.csv"
    runs.atomic_write_text(target, "old\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", full)
    with pytest.raises(RunDirError, match=r"disk full while writing .*metrics.csv; the previous version is intact"):
        runs.atomic_write_text(target, "new\n" * 1000)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left behind


def test_output_directory_that_cannot_be_written(tiny_model_dir, tmp_path):
    from spectral.runner import run_experiment

    if os.geteuid() == 0:  # root ignores file modes; sysfs refuses new directories even to root
        out = Path("/sys/spectral-test-run")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "run"
    with pytest.raises(RunDirError, match="is not writable"):
        run_experiment(_cfg(tiny_model_dir, out), progress=False)


def test_run_names_cannot_leave_the_runs_folder():
    from spectral.runs import default_run_dir

    for name in ("../../etc/passwd", "..", "/abs/path/../x", "a/../../b", "..\\..\\win"):
        cfg = ExperimentConfig(model=ModelSpec(name=name), corpus=CorpusSpec(source="../../" + name)).to_dict()
        d = default_run_dir(cfg)
        assert d.parent == Path("reports") / "runs" and ".." not in d.parts and "/" not in d.name, d


def test_every_input_error_is_a_spectral_error():
    for exc in (ConfigError, CorpusError, RunDirError):
        assert issubclass(exc, SpectralError)


def test_one_jackknife_core_matches_the_textbook_formula():
    """intervals.delete_one / bucket_jackknife (the one jackknife behind moments, spectra, bands, heads and
    cosines): the grouped delete-one interval of a ratio of bucket sums, written out by hand."""
    from scipy import stats as sps

    from spectral.analysis.intervals import bucket_jackknife, delete_one

    rng = np.random.default_rng(3)
    num, den = rng.random((6, 2)), rng.random(6) + 1.0  # 6 buckets, a 2-vector statistic
    est = bucket_jackknife([num, den], lambda a, b: a / b, 0.9, range(6))
    value = num.sum(0) / den.sum()
    loo = np.stack([(num.sum(0) - num[b]) / (den.sum() - den[b]) for b in range(6)])
    se = np.sqrt(5 / 6 * ((loo - loo.mean(0)) ** 2).sum(0))
    t = sps.t.ppf(0.95, 5)
    for i in range(2):
        assert est[i].value == pytest.approx(value[i])
        assert (est[i].ci_low, est[i].ci_high) == pytest.approx((value[i] - t * se[i], value[i] + t * se[i]))
    # fewer than two buckets or a non-finite value: no interval
    assert np.isnan(delete_one(lambda b: 1.0, [0], 0.9)[0].ci_low)
    assert np.isnan(delete_one(lambda b: float("nan"), [0, 1, 2], 0.9)[0].ci_high)


def test_states_round_trip_with_and_without_crc_and_leave_the_option_alone(tmp_path):
    """A transient checkpoint is written without torch's per-record CRC32, a kept one (a shard's) with it; both read
    back equal, and the process-wide CRC setting is as the caller had it, even when the write fails."""
    import torch

    from spectral import runs

    state = {"bank": {"second": torch.randn(5, 100)}, "batches_done": 3}
    for crc in (False, True):
        path = tmp_path / f"s{crc}.pt"
        runs.save_state(path, state, crc=crc)
        back = runs.load_state(path)
        assert torch.equal(back["bank"]["second"], state["bank"]["second"]) and back["batches_done"] == 3
        assert torch.serialization.get_crc32_options() is True
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        runs.save_state(tmp_path / "x.pt", {"bad": lambda: 0})  # cannot be pickled: the write fails
    assert torch.serialization.get_crc32_options() is True
