"""Prediction 7's Jacobian band transfer and prediction 6's head band concentration against independent
computations: the probe estimate of E_ij against its exact expectation Σ ‖U_jᵀ J U_i‖_F² from full
Jacobians (reverse mode, autograd.functional), the off-diagonal share of an isotropic map against its
chance level, and the low-rank band energies of a head's map against the explicit d × d product."""

import numpy as np
import pytest
import torch

from spectral import jacobian
from spectral.analysis import heads
from spectral.analysis.spectrum import split_bands
from spectral.config import CorpusSpec, ModelSpec
from spectral.corpus import make_windows
from spectral.models import load_model
from spectral.predictions.channels import isotropic_offdiag

K = 4


def _exact_energy(model, ids, layer, sub, bands):
    """Σ_t,s ‖U_jᵀ J_ts U_i‖_F² of one sub-layer from its full Jacobian (all positions at once)."""
    names = jacobian._hook_names(model, layer)[sub]
    keep = {}

    def grab(x, hook):
        keep["x"] = x.detach().clone()
        return x

    with torch.no_grad(), model.bridge.hooks(fwd_hooks=[(names[0], grab)]):
        model.bridge(ids, return_type=None)
    x0 = keep["x"]

    def f(x):
        out = {}

        def put(h, hook):
            return x

        def get(h, hook):
            out["y"] = h
            return h

        with model.bridge.hooks(fwd_hooks=[(names[0], put), (names[1], get)]):
            model.bridge(ids, return_type=None)
        return out["y"]

    J = torch.autograd.functional.jacobian(f, x0).reshape(x0.numel(), x0.numel()).double()  # (T·d out, T·d in)
    T, d = x0.shape[1], x0.shape[2]
    J = J.reshape(T, d, T, d)
    E = np.zeros((K, K))
    for i, Ui in enumerate(bands):
        for j, Uj in enumerate(bands):
            E[i, j] = float(torch.einsum("da,tdse,eb->tsab", Uj.double(), J, Ui.double()).pow(2).sum())
    return E, T


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_jvp_transfer_matches_the_exact_jacobian_expectation(tiny_model_dir, family):
    model = load_model(ModelSpec(name=str(tiny_model_dir(family))))
    bands = split_bands(model.unembedding_basis(), K)
    windows = make_windows(model.tokenizer, CorpusSpec(seq_len=12, max_seqs=40))
    n = len(windows)
    bt = jacobian.band_transfer(model, windows, bands, n_windows=n, groups=8, seed=0, exclude_first=False)
    for sub in ("attn_out", "mlp_out"):
        exact = np.zeros((K, K))
        for w in range(n):
            E, _ = _exact_energy(model, windows.ids[w : w + 1], 1, sub, bands)
            exact += E
        got = bt.energy[sub][1].sum(0)
        share_exact = 1 - np.trace(exact) / exact.sum()
        # the probe estimate: unbiased for each E_ij; over 40 windows × 13 positions the share is within a few %
        assert bt.offdiag(sub, 1) == pytest.approx(share_exact, abs=0.03), (family, sub)
        assert got.sum() == pytest.approx(exact.sum(), rel=0.15), (family, sub)


def test_isotropic_map_sits_at_chance():
    """A random Gaussian map (the isotropic case) has off-diagonal share 1 − Σ (d_j/d)² in expectation."""
    d = 60
    U = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]
    bands = split_bands(U, 7)
    g = torch.Generator().manual_seed(0)
    E = np.zeros((7, 7))
    for _ in range(200):
        J = torch.randn(d, d, generator=g, dtype=torch.float64)
        for i, Ui in enumerate(bands):
            v = Ui @ torch.randn(Ui.shape[1], generator=g, dtype=torch.float64)
            y = J @ v
            E[i] += np.array([float((Uj.T @ y).pow(2).sum()) for Uj in bands])
    assert 1 - np.trace(E) / E.sum() == pytest.approx(isotropic_offdiag(d, 7), abs=0.01)


def test_head_band_energies_match_the_explicit_map():
    g = torch.Generator().manual_seed(1)
    H, d, r = 3, 24, 4
    A, B = torch.randn(H, d, r, generator=g).double(), torch.randn(H, d, r, generator=g).double()
    U = torch.linalg.qr(torch.randn(d, d, generator=g).double())[0]
    sizes = [len(x) for x in np.array_split(np.arange(d), 5)]
    read, write = heads.band_read_write(A, B, U, sizes)
    edges = np.cumsum([0, *sizes])
    for h in range(H):
        M = A[h] @ B[h].T
        for b in range(5):
            Ub = U[:, edges[b] : edges[b + 1]]
            assert read[h, b] == pytest.approx(float((Ub.T @ M).pow(2).sum()), rel=1e-5)
            assert write[h, b] == pytest.approx(float((M @ Ub).pow(2).sum()), rel=1e-5)


def test_planted_selective_heads_are_concentrated(tiny_model_dir):
    """Heads whose W_V reads and W_O writes only the top centred W_U band concentrate all their OV energy
    there (top-1 share 1); the random heads of the same model sit near the band-size share."""
    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    U = model.unembedding_basis(centred=True).float()
    sizes = [int(b.shape[1]) for b in split_bands(U, K)]
    before = heads.head_band_concentration(model, 0, U, sizes, 1)["ov"]
    assert np.all(before < 0.6)
    attn = model.bridge.blocks[0].attn._original_component
    top = U[:, : sizes[0]]  # (d, 8)
    g1 = heads.norm_gain(model.bridge.blocks[0].ln1, model.arch.d_model).float()
    with torch.no_grad():
        P = top @ top.T
        attn.v_proj.weight.copy_(attn.v_proj.weight @ P / g1[None, :])  # reads only band 0 after the gain
        attn.o_proj.weight.copy_(P @ attn.o_proj.weight)  # writes only band 0
    after = heads.head_band_concentration(model, 0, U, sizes, 1)["ov"]
    assert np.allclose(after, 1.0, atol=1e-5)


def test_centred_basis_from_the_shared_gram_equals_the_direct_one(tiny_model_dir):
    """W_c W_cᵀ = W Wᵀ − V m mᵀ: the centred bases made from the cached Gram span the same bands."""
    from spectral.analysis.spectrum import unembedding_basis

    model = load_model(ModelSpec(name=str(tiny_model_dir("llama"))))
    W = model.unembedding()[0].double()
    direct = split_bands(unembedding_basis(W - W.mean(1, keepdim=True)), K)
    shared = split_bands(model.unembedding_basis(centred=True), K)
    for a, b in zip(direct, shared, strict=True):
        assert torch.allclose(a @ a.T, b @ b.T, atol=1e-8)
