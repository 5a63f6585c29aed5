"""The streamed vocabulary scan equals the reductions of the full logit matrix."""

import pytest
import torch

from spectral.vocab import ModSegment, scan


@pytest.mark.parametrize("with_bias", [False, True])
def test_scan_equals_the_full_product(with_bias):
    g = torch.Generator().manual_seed(0)
    n, d, V = 70, 24, 1000
    F = torch.randn(n, d, generator=g)
    W = torch.randn(d, V, generator=g)
    W[:, 700] = W[:, 3]  # a tie across chunks: the lower id wins, as torch.argmax
    bias = torch.randn(V, generator=g) if with_bias else None
    target = torch.randint(0, V, (n,), generator=g)
    coef = torch.randn(30, 3, generator=g)
    basis = torch.randn(2, V, generator=g)
    res = scan(F, W, bias, target, [ModSegment(10, 40, coef, basis)], top2=(50, 70), chunk=128, rows=32)

    L = F @ W + (0 if bias is None else bias)
    assert torch.equal(res.top1, L.argmax(-1))
    t = L.gather(1, target[:, None])
    assert torch.equal(res.rank, (L > t).sum(-1))
    assert res.top2 is not None
    assert torch.equal(res.top2, L[50:70].topk(2, -1).indices)
    base = L[10:40] - (0 if bias is None else bias)
    M = coef[:, :1] * base + coef[:, 1:] @ basis + (0 if bias is None else bias)
    assert torch.equal(res.mod_top1[0], M.argmax(-1))


def test_a_tie_with_the_target_is_not_counted_above_it():
    F = torch.ones(1, 2)
    W = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    res = scan(F, W, None, torch.tensor([1]), chunk=1)
    assert res.rank.tolist() == [0] and res.top1.tolist() == [0]
