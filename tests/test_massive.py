"""spectral.massive / spectral.outliers against a direct search of the captured activations, a planted massive
activation, and shards merged against the single pass."""

import numpy as np
import pytest
import torch

from spectral.capture import capture_activations, hook_name, hooked
from spectral.config import CorpusSpec, ModelSpec
from spectral.corpus import iter_batches, make_windows
from spectral.massive import massive_activations, massive_csv
from spectral.models import load_model


def test_massive_activations_match_a_direct_search_and_find_a_planted_one(tiny_model_dir, tmp_path, sample_text):
    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=16, max_seqs=4))
    sites = tuple(f"resid_post.{i}" for i in range(model.arch.n_layers))
    batch = next(iter_batches(windows, 4, exclude_first=False))
    acts = capture_activations(model, batch, sites)
    rows = massive_activations(model, windows, 4)
    for r, s in zip(rows, sites, strict=True):
        h = acts[s].double()
        a = h.abs()
        assert abs(r.value) == float(a.max()) and float(a[..., r.position, r.dim].max()) == abs(r.value)
        assert r.median_abs == pytest.approx(float(a.median()), rel=0.004)  # half a histogram bin
        assert r.pos0_max == float(a[:, 0].max()) and r.rest_max == float(a[:, 1:].max())
        top = a.flatten().topk(3).values
        assert (r.max_abs, r.top2, r.top3) == pytest.approx(tuple(top.tolist()), rel=1e-6)
        assert r.rms == pytest.approx(float(h.pow(2).mean().sqrt()), rel=1e-6)  # float32 sums per window
        assert (r.max, r.min) == pytest.approx((float(h.max()), float(h.min())), rel=1e-6)
        assert r.n_tokens == h.shape[0] * h.shape[1]

    # plant: position 0 of every window gets 500 along dimension 5 at the last block's output (a hook registered
    # before the measurement's own, so it sees the planted stream)
    def plant(x, hook):
        x = x.clone()
        x[:, 0, 5] = 500.0
        return x

    with hooked(model, [(hook_name(sites[-1], model.arch), plant)]):
        top = massive_activations(model, windows, 4)[-1]
    assert (top.dim, top.position, top.value) == (5, 0, 500.0) and top.ratio > 100
    assert massive_csv(rows).splitlines()[0].startswith("site,layer,n_tokens,value,max_abs")
    assert np.isfinite([r.ratio for r in rows]).all() and torch.is_tensor(acts[sites[0]])


def test_outlier_shards_merge_to_the_single_pass(tiny_model_dir, tmp_path, sample_text):
    """Two disjoint shards of the windows, merged, give the single pass's state exactly (max, min, sums, the
    top entries, the histogram)."""
    from spectral.capture import accumulate, new_bank
    from spectral.outliers import OutlierProbe

    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    p = tmp_path / "t.txt"
    p.write_text(sample_text)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=16, max_seqs=6))
    sites = ("resid_post.0", "mlp_out.1", "resid_post.2")

    def probe(w, batch):
        pr = OutlierProbe(model, sites)
        accumulate(model, w, new_bank(model, sites[:1], 2), batch, exclude_first=False, probes=(pr,))
        return pr

    whole = probe(windows, 4).state_dict()
    merged = probe(windows.select(slice(0, None, 2)), 2)
    merged.merge_state(probe(windows.select(slice(1, None, 2)), 3).state_dict())
    for k, v in merged.state_dict().items():
        if k == "sites":
            continue
        if k in ("dim_sumsq", "count", "pos0_count"):
            torch.testing.assert_close(v, whole[k], rtol=1e-12, atol=0)
        else:
            assert torch.equal(torch.nan_to_num(v, nan=-7.0), torch.nan_to_num(whole[k], nan=-7.0)), k
