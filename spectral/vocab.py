"""Streaming reductions over the vocabulary: the logit lens without materialising the logits.

A lens row needs only a few numbers of its ``V`` logits (top-1, the rank of the true next token,
the top-2 for the margin, the top-1 of the carrier-removed lens). Writing the whole (rows × V)
logit matrix and reading it back for each reduction is bound by memory traffic, not by the
product: on SmolLM2 (V = 49,152) a 2,000-row product ran at ~60 GFLOP/s. :func:`scan` takes the
product in tiles of ``rows`` × ``chunk`` that stay in cache and folds each tile into running
reductions at once (~140 GFLOP/s on the same 2 cores; ``benchmarks/RESULTS.md``).

The numbers are those of the full product: the argmax is the first maximal index (ties go to the
lower token id, as ``torch.argmax``), the rank counts the logits strictly above the target's own
logit from the same tile, and the carrier-removed logits are the same combination of lens logits
and fixed basis logits that :class:`spectral.probes.LensProbe` uses.

With a reference distribution (the model's own output for each row's token), :func:`scan` also folds an
online log-sum-exp into each tile, giving every row's entropy and its forward KL(reference ‖ row) in
the same pass (the lens metrics of tuned-lens: Belrose et al. 2023): per row a running maximum m,
s = Σ exp(z − m), u = Σ exp(z − m)·z, rescaled when m grows. Then log Z = m + log s and H = log Z − u/s.
The cross term c = Σ_v p_ref(v) z(v) needs no per-element work: z = f·W + b, so c = f·(W p_ref) + b·p_ref,
with the reference's expected unembedding W p_ref taken once per reference row (:func:`reference_moments`).
Then KL(p_ref ‖ q) = −H_ref − c + log Z.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int


@dataclass(frozen=True)
class ModSegment:
    """Rows ``start:stop`` also get the top-1 of ``coef[:, :1] * (logits - b) + coef[:, 1:] @ basis + b``."""

    start: int
    stop: int
    coef: Float[torch.Tensor, "rows k1"]
    basis: Float[torch.Tensor, "k V"]


@dataclass(frozen=True)
class ScanResult:
    top1: Int[torch.Tensor, " n"]  # argmax over the vocabulary
    rank: Int[torch.Tensor, " n"]  # logits strictly above the target's (0 = the target is top-1)
    top2: Int[torch.Tensor, "m 2"] | None  # top-2 token ids of the rows asked for
    mod_top1: list[Int[torch.Tensor, " rows"]]  # per ModSegment
    entropy: Float[torch.Tensor, " n"] | None = None  # nats (with a reference)
    kl: Float[torch.Tensor, " n"] | None = None  # KL(reference ‖ row) in nats; NaN for rows without a reference


@dataclass(frozen=True)
class Reference:
    """Row i of a scan is compared with ``F_ref[of[i]]`` (``of[i] < 0``: no comparison)."""

    F_ref: Float[torch.Tensor, "m d"]
    of: Int[torch.Tensor, " n"]


def _fold_lse(mx: torch.Tensor, s: torch.Tensor, u: torch.Tensor, tile: torch.Tensor) -> None:
    """Online Σ exp(z − m) and Σ exp(z − m)·z of the tile's rows, in place (m the running maximum, float64;
    the tile's exponentials in its own dtype: each is ≤ 1 after the shift)."""
    new = torch.maximum(mx, tile.amax(-1).to(mx.dtype))
    scale = torch.exp(mx - new)  # exp(−inf) = 0 on the first tile
    e = torch.exp(tile - new[:, None].to(tile.dtype))
    s.mul_(scale).add_(e.sum(-1).to(s.dtype))
    u.mul_(scale).add_((e * tile).sum(-1).to(u.dtype))
    mx.copy_(new)


def log_partition(
    F: Float[torch.Tensor, "n d"], W: Float[torch.Tensor, "d V"], bias: Float[torch.Tensor, " V"] | None,
    chunk: int = 2048,
) -> tuple[Float[torch.Tensor, " n"], Float[torch.Tensor, " n"]]:  # fmt: skip
    """(log Z, entropy) of softmax(F @ W + b) per row, tile by tile (float64 accumulators)."""
    n = F.shape[0]
    dev = F.device
    mx = torch.full((n,), -torch.inf, dtype=torch.float64, device=dev)
    s, u = torch.zeros(n, dtype=torch.float64, device=dev), torch.zeros(n, dtype=torch.float64, device=dev)
    for c0 in range(0, W.shape[1], chunk):
        L = F @ W[:, c0 : c0 + chunk]
        if bias is not None:
            L += bias[c0 : c0 + chunk]
        _fold_lse(mx, s, u, L.double())
    lse = mx + torch.log(s)
    return lse, lse - u / s


def reference_moments(
    F: Float[torch.Tensor, "m d"], W: Float[torch.Tensor, "d V"], bias: Float[torch.Tensor, " V"] | None,
    chunk: int = 2048,
) -> tuple[Float[torch.Tensor, " m"], Float[torch.Tensor, "m d"], Float[torch.Tensor, " m"]]:  # fmt: skip
    """Per reference row: its entropy, its expected unembedding W p (d) and b·p, with p = softmax(F @ W + b)
    (a second pass over the vocabulary once log Z is known; the reference rows are few)."""
    lse, ent = log_partition(F, W, bias, chunk)
    m = torch.zeros(F.shape[0], W.shape[0], dtype=torch.float64, device=F.device)
    beta = torch.zeros(F.shape[0], dtype=torch.float64, device=F.device)
    for c0 in range(0, W.shape[1], chunk):
        L = (F @ W[:, c0 : c0 + chunk]).double()
        if bias is not None:
            L += bias[c0 : c0 + chunk].double()
        P = torch.exp(L - lse[:, None])
        m += P @ W[:, c0 : c0 + chunk].T.double()
        if bias is not None:
            beta += P @ bias[c0 : c0 + chunk].double()
    return ent, m, beta


def carrier_removed_logits(
    logits: Float[torch.Tensor, "n C"],
    coef: Float[torch.Tensor, "n k1"],
    basis: Float[torch.Tensor, "k C"],
    bias: Float[torch.Tensor, " C"] | None,
) -> Float[torch.Tensor, "n C"]:
    """``coef[:, :1] * (logits - b) + coef[:, 1:] @ basis + b``: the carrier-removed lens from the lens logits and
    the logits of the norm's fixed vectors (:meth:`spectral.probes.LensProbe._span`), over any vocabulary slice."""
    base = logits if bias is None else logits - bias
    out = coef[:, :1] * base + coef[:, 1:] @ basis
    return out if bias is None else out + bias


def _fold_max(best: torch.Tensor, arg: torch.Tensor, tile: torch.Tensor, offset: int) -> None:
    """Running (max, first argmax) of ``tile`` columns offset by ``offset``, in place."""
    i = tile.argmax(-1)
    m = tile.gather(1, i[:, None])[:, 0]
    upd = m > best  # strict: an equal later value keeps the earlier (lower) index
    best.copy_(torch.where(upd, m, best))
    arg.copy_(torch.where(upd, i + offset, arg))


@torch.no_grad()
def scan(
    F: Float[torch.Tensor, "n d"],
    W: Float[torch.Tensor, "d V"],
    bias: Float[torch.Tensor, " V"] | None,
    target: Int[torch.Tensor, " n"],
    mods: Sequence[ModSegment] = (),
    top2: tuple[int, int] | None = None,
    chunk: int = 2048,
    rows: int = 512,
    ref: Reference | None = None,
) -> ScanResult:
    """Top-1, target rank, top-2 (rows ``top2 = (start, stop)``) and carrier-removed top-1 of ``F @ W + b``;
    with ``ref``, each row's entropy and KL(reference ‖ row) as well."""
    n, V = F.shape[0], W.shape[1]
    dev = F.device
    f64 = torch.float64
    mx = torch.full((n,), -torch.inf, dtype=f64, device=dev)  # online log-sum-exp (used with a reference)
    se, ue = torch.zeros(n, dtype=f64, device=dev), torch.zeros(n, dtype=f64, device=dev)
    ce = h_ref = torch.zeros(n, dtype=f64, device=dev)
    has = torch.zeros(n, dtype=torch.bool, device=dev)
    if ref is not None:
        ent_ref, m_ref, beta_ref = reference_moments(ref.F_ref, W, bias, chunk)
        has = (ref.of >= 0).to(dev)
        of = ref.of.clamp_min(0).to(dev)
        ce = (F.double() * m_ref[of]).sum(-1) + beta_ref[of]  # Σ_v p_ref(v) z(v) = f·(W p_ref) + b·p_ref
        h_ref = ent_ref[of]
    neg = torch.full((n,), -torch.inf, dtype=F.dtype, device=dev)
    best, arg = neg.clone(), torch.zeros(n, dtype=torch.long, device=dev)
    above = torch.zeros(n, dtype=torch.long, device=dev)
    t = (F * W[:, target].T).sum(-1) + (0 if bias is None else bias[target])  # (n,) the target's logit
    self_above = torch.zeros(n, dtype=torch.long, device=dev)
    mbest = [torch.full((s.stop - s.start,), -torch.inf, dtype=F.dtype, device=dev) for s in mods]
    marg = [torch.zeros(s.stop - s.start, dtype=torch.long, device=dev) for s in mods]
    t2v = t2i = None
    if top2 is not None:
        m2 = top2[1] - top2[0]
        t2v = torch.full((m2, 2), -torch.inf, dtype=F.dtype, device=dev)
        t2i = torch.zeros(m2, 2, dtype=torch.long, device=dev)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        Fr, tr = F[r0:r1], t[r0:r1, None]
        for c0 in range(0, V, chunk):
            c1 = min(V, c0 + chunk)
            L = Fr @ W[:, c0:c1]  # (r, C): stays in cache
            if bias is not None:
                L += bias[c0:c1]
            _fold_max(best[r0:r1], arg[r0:r1], L, c0)
            above[r0:r1] += (L > tr).sum(-1)
            if ref is not None:
                _fold_lse(mx[r0:r1], se[r0:r1], ue[r0:r1], L)
            inside = (target[r0:r1] >= c0) & (target[r0:r1] < c1)  # the target's own column is not "above"
            own = L.gather(1, (target[r0:r1] - c0).clamp(0, c1 - c0 - 1)[:, None])[:, 0]
            self_above[r0:r1] += (inside & (own > tr[:, 0])).long()
            b_tile = None if bias is None else bias[c0:c1]
            for k, s in enumerate(mods):
                a, b = max(s.start, r0), min(s.stop, r1)
                if a >= b:
                    continue
                c = s.coef[a - s.start : b - s.start]
                M = carrier_removed_logits(L[a - r0 : b - r0], c, s.basis[:, c0:c1], b_tile)
                _fold_max(mbest[k][a - s.start : b - s.start], marg[k][a - s.start : b - s.start], M, c0)
            if top2 is not None and t2v is not None and t2i is not None:
                a, b = max(top2[0], r0), min(top2[1], r1)
                if a < b:
                    v, i = L[a - r0 : b - r0].topk(min(2, c1 - c0), dim=-1)
                    sl = slice(a - top2[0], b - top2[0])
                    allv = torch.cat([t2v[sl], v], 1)
                    alli = torch.cat([t2i[sl], i + c0], 1)
                    # stable: on equal values the earlier (lower) id first, as topk of the full row
                    order = torch.sort(allv, dim=1, descending=True, stable=True).indices[:, :2]
                    t2v[sl], t2i[sl] = allv.gather(1, order), alli.gather(1, order)
    if ref is None:
        return ScanResult(arg, above - self_above, t2i, marg)
    lse = mx + torch.log(se)
    kl = (lse - ce - h_ref).clamp_min(0.0)  # ≥ 0 up to round-off
    kl = torch.where(has, kl, torch.full_like(kl, float("nan")))
    return ScanResult(arg, above - self_above, t2i, marg, lse - ue / se, kl)
