"""spectral.massive against a direct search of the captured activations, and a planted massive activation."""

import numpy as np
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
        a = acts[s].double().abs()
        assert abs(r.value) == float(a.max()) and float(a[..., r.position, r.dim].max()) == abs(r.value)
        assert r.median_abs == float(a.median()) and r.pos0_max == float(a[:, 0].max())

    # plant: position 0 of every window gets 500 along dimension 5 at the last block's output (a hook registered
    # before the measurement's own, so it sees the planted stream)
    def plant(x, hook):
        x = x.clone()
        x[:, 0, 5] = 500.0
        return x

    with hooked(model, [(hook_name(sites[-1], model.arch), plant)]):
        top = massive_activations(model, windows, 4)[-1]
    assert (top.dim, top.position, top.value) == (5, 0, 500.0) and top.ratio > 100
    assert massive_csv(rows).splitlines()[0].startswith("layer,dim,position,token,value")
    assert np.isfinite([r.ratio for r in rows]).all() and torch.is_tensor(acts[sites[0]])
