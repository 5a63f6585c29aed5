"""Causal interventions: ΔNLL when a subspace is projected out of the residual stream at a site.

This is the ``interventions`` row of ARCHITECTURE.md section 1. The observational metrics (band
energy, carrier energy, ...) say *where* the residual stream's energy sits; an intervention says
whether the model *uses* it: the subspace spanned by a basis (the carrier direction, or one band
of the unembedding's left singular vectors from :func:`band_bases`) is removed at one site with a
forward hook, and the next-token negative log-likelihood is compared with the clean run on the
same windows.

Definitions (binding): the NLL of a window is the mean cross-entropy of its next-token
predictions, targets ``input_ids[:, 1:]`` from positions ``:-1``; by default the prediction made
at position 0 (BOS / first token) is excluded, like every other statistic of the suite. ΔNLL is
the mean over windows of ``NLL_edited - NLL_clean``; its interval is a seeded percentile
bootstrap over windows (:func:`~spectral.analysis.intervals.bootstrap_weights`), the windows
being paired so the CI is that of the mean paired difference.

Hooks exist only inside :func:`nll_per_window` (a ``with`` block) and are removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float

from spectral.analysis.intervals import Estimate, bootstrap_weights, percentile_ci
from spectral.analysis.spectrum import unembedding_bands
from spectral.corpus import TokenWindows, iter_batches
from spectral.errors import ConfigError, SpectralError
from spectral.models import LoadedModel
from spectral.sites import all_sites, hook_name

EditFn = Callable[[torch.Tensor], torch.Tensor]
Edit = tuple[str, EditFn]


@dataclass(frozen=True)
class InterventionResult:
    """ΔNLL of removing one subspace (``target``) at one ``site``; NLLs in nats per token."""

    site: str
    target: str  # e.g. "carrier" or "band_k10_b3"
    delta_nll: Estimate  # mean over windows of NLL_edited - NLL_clean, bootstrap CI over windows
    clean_nll: float
    edited_nll: float
    kl: Estimate | None = None  # mean over windows of KL(clean ‖ edited) of the next-token distributions (nats)
    kl_windows: np.ndarray | None = None  # (windows,) the per-window KL behind ``kl`` (paired statistics)
    dnll_windows: np.ndarray | None = None  # (windows,) the per-window ΔNLL behind ``delta_nll``


def _check_lm(model: LoadedModel) -> None:
    arch = model.arch
    if not (arch.has_unembedding and arch.is_causal):
        raise SpectralError(f"interventions need a causal LM head; {arch.architecture} has none")


def _check_site(model: LoadedModel, site: str) -> str:
    valid = all_sites(model.arch)
    if site not in valid:
        raise ConfigError(
            f"intervention site {site!r} does not exist for {model.arch.architecture}; valid: {', '.join(valid)}"
        )
    return hook_name(site, model.arch)


@contextmanager
def _edit_hooks(model: LoadedModel, edit: Edit | None) -> Iterator[None]:
    if edit is None:
        yield
        return
    site, fn = edit
    name = _check_site(model, site)

    def hook_fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return fn(x)

    with model.bridge.hooks(fwd_hooks=[(name, hook_fn)]):
        yield


def nll_per_window(
    model: LoadedModel,
    windows: TokenWindows,
    batch_size: int,
    edit: Edit | None = None,
    exclude_first: bool = True,
) -> np.ndarray:
    """Mean next-token NLL of each window (float64, shape ``(n_windows,)``), optionally edited.

    ``edit`` is ``(site, fn)``: ``fn(h)`` replaces the activation at that site in every forward pass.
    """
    _check_lm(model)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    width = int(windows.ids.shape[1])
    if width - 1 - int(exclude_first) < 1:
        raise SpectralError(f"windows of {width} positions leave no next-token target to score")
    out: list[np.ndarray] = []
    dev = model.device
    with _edit_hooks(model, edit), torch.inference_mode():
        for batch in iter_batches(windows, batch_size, exclude_first):
            ids = batch.input_ids.to(dev)
            att = batch.attention_mask.to(dev)
            logits = model.bridge(ids, attention_mask=att, return_type="logits")
            logp = logits[:, :-1].float()
            targets = ids[:, 1:]
            nll = F.cross_entropy(logp.reshape(-1, logp.shape[-1]), targets.reshape(-1), reduction="none")
            nll = nll.reshape(targets.shape).double()
            mask = att[:, 1:].bool().clone()
            if exclude_first:
                mask[:, 0] = False
            per = (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
            out.append(per.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def _caster(t64: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``cast(h) = (h, t)`` both in h's dtype promoted to at least float32 and on h's device (``t`` converted
    once per device and dtype): the edits compute in float32 or wider and return h's dtype."""
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def cast(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.promote_types(h.dtype, torch.float32)
        key = (h.device, dtype)
        if key not in cache:
            cache[key] = t64.to(device=h.device, dtype=dtype)
        return h.to(dtype), cache[key]

    return cast


def project_out(basis: Float[torch.Tensor, "d k"]) -> EditFn:
    """``fn(h) = h - (h Q) Qᵀ`` with ``Q`` an orthonormal basis of span(``basis``) (QR).

    The projection runs in float32 (or h's dtype when wider) on h's device; the result has h's dtype.
    """
    if basis.ndim != 2:
        raise SpectralError(f"a basis must be a (d, k) matrix, got shape {tuple(basis.shape)}")
    d, k = int(basis.shape[0]), int(basis.shape[1])
    if k == 0:
        raise SpectralError("a basis needs at least one direction")
    b64 = basis.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(b64).all()):
        raise SpectralError("the basis holds non-finite values")
    q, r = torch.linalg.qr(b64, mode="reduced")
    diag = r.diagonal().abs()
    if k > d or float(diag.min()) <= 1e-10 * max(float(diag.max()), 1e-300):
        raise SpectralError(f"the basis of {k} directions in R^{d} is rank-deficient (a zero or repeated direction)")
    cast = _caster(q)

    def fn(h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != d:
            raise SpectralError(f"basis has dimension {d} but the activation has {h.shape[-1]}")
        x, Q = cast(h)
        return (x - (x @ Q) @ Q.T).to(h.dtype)

    return fn


def mean_ablate(direction: torch.Tensor, mean: float) -> EditFn:
    """``fn(h) = h + (m − h·v) v``: the component along the unit vector v replaced by its corpus mean m
    (the rest of h untouched); the edit of a mean ablation, which keeps the stream's typical amplitude
    where a projection would set it to zero."""
    v64 = direction.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    cast = _caster(v64 / v64.norm())

    def fn(h: torch.Tensor) -> torch.Tensor:
        x, v = cast(h)
        return (x + (mean - x @ v)[..., None] * v).to(h.dtype)

    return fn


def _mean_ci(diff: np.ndarray, n_boot: int, seed: int, level: float) -> Estimate:
    value = float(diff.mean())
    if diff.size < 2 or n_boot < 1:
        return Estimate(value, float("nan"), float("nan"))
    w = bootstrap_weights(diff.size, n_boot, seed)
    return percentile_ci(value, (w @ diff) / diff.size, level)


def intervene(
    model: LoadedModel,
    windows: TokenWindows,
    site: str,
    basis: Float[torch.Tensor, "d k"],
    target: str,
    batch_size: int,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    clean: np.ndarray | None = None,
    exclude_first: bool = True,
) -> InterventionResult:
    """ΔNLL of projecting span(``basis``) out at ``site`` (``clean``: precomputed clean NLLs, scored on the
    same positions: ``exclude_first`` must be what they were computed with)."""
    _check_lm(model)
    _check_site(model, site)
    if clean is None:
        clean = nll_per_window(model, windows, batch_size, exclude_first=exclude_first)
    elif clean.shape != (len(windows),):
        raise SpectralError(f"clean NLLs have shape {clean.shape}, expected ({len(windows)},)")
    edited = nll_per_window(model, windows, batch_size, edit=(site, project_out(basis)), exclude_first=exclude_first)
    diff = edited - clean
    return InterventionResult(
        site=site,
        target=target,
        delta_nll=_mean_ci(diff, n_boot, seed, level),
        clean_nll=float(clean.mean()),
        edited_nll=float(edited.mean()),
    )


def sweep(
    model: LoadedModel,
    windows: TokenWindows,
    sites: tuple[str, ...],
    bases: dict[str, torch.Tensor],
    batch_size: int,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    exclude_first: bool = True,
) -> list[InterventionResult]:
    """Every (site, target) pair, sites outer and targets in dict order; the clean pass runs once."""
    _check_lm(model)
    for site in sites:
        _check_site(model, site)
    clean = nll_per_window(model, windows, batch_size, exclude_first=exclude_first)
    return [
        intervene(model, windows, site, basis, target, batch_size, n_boot, seed, level, clean, exclude_first)
        for site in sites
        for target, basis in bases.items()
    ]


def band_bases(W_U: Float[torch.Tensor, "d V"], K: int) -> dict[str, torch.Tensor]:
    """The unembedding's left singular vectors, by singular value descending, in K contiguous bands.

    Band sizes follow ``numpy.array_split`` on the d directions; ``band_k{K}_b0`` is the top band,
    the last one the "dark" tail. Values are (d, k_i) float32 tensors on the CPU.
    """
    if W_U.ndim != 2:
        raise SpectralError(f"W_U must be a (d, V) matrix, got shape {tuple(W_U.shape)}")
    d = int(W_U.shape[0])
    if not 1 <= K <= d:
        raise ConfigError(f"number of bands K must be in 1..{d} (d_model), got {K}")
    return {f"band_k{K}_b{i}": U.float().contiguous() for i, U in enumerate(unembedding_bands(W_U, K))}


TAIL_FAMILIES = ("llama", "qwen2", "gemma3_text", "gpt_neox")  # inputs_embeds enter the first layer unchanged


def can_run_tails(model: LoadedModel) -> bool:
    """Whether edits at resid_post.l can run only the layers after l (the fast path's plain model)."""
    from spectral import fastpath

    return model.arch.model_type in TAIL_FAMILIES and fastpath.supports(model) is None


def _keeper(kept: dict[int, torch.Tensor], layer: int) -> Callable[..., None]:
    def fn(x: torch.Tensor, hook: Any = None) -> None:
        kept[layer] = x.detach()

    return fn


@contextmanager
def _tail(base: Any, start: int) -> Iterator[None]:
    """Within the block, ``base`` runs only its layers ``start:`` (inputs_embeds = the stream entering them)."""
    layers, cfg = base.layers, base.config
    kinds = getattr(cfg, "layer_types", None)
    try:
        base.layers = torch.nn.ModuleList(list(layers)[start:])
        if kinds is not None:
            cfg.layer_types = list(kinds)[start:]
        yield
    finally:
        base.layers = layers
        if kinds is not None:
            cfg.layer_types = kinds


def _per_window(values: torch.Tensor, n_windows: int, mask: torch.Tensor) -> np.ndarray:
    """Mean over each window's scored positions of per-token ``values`` (in ``mask`` order)."""
    win = torch.arange(n_windows, device=mask.device)[:, None].expand_as(mask)[mask]
    tot = torch.zeros(n_windows, dtype=torch.float64, device=mask.device).index_add_(0, win, values)
    cnt = torch.zeros(n_windows, dtype=torch.float64, device=mask.device).index_add_(0, win, torch.ones_like(values))
    return (tot / cnt.clamp_min(1)).cpu().numpy()


def _scored_nll(
    final: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None,
    with_logp: bool = False,
) -> Any:
    """Mean NLL per window over the scored positions (``mask`` marks positions whose next token is scored);
    with ``with_logp`` also the scored rows' log-probabilities (for KL)."""
    f = final[mask].float()
    logits = f @ W if b is None else f @ W + b
    target = torch.zeros_like(ids)
    target[:, :-1] = ids[:, 1:]
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(1, target[mask][:, None])[:, 0].double()
    per = _per_window(nll, ids.shape[0], mask)
    return (per, logp) if with_logp else per


def tail_sweep(
    model: LoadedModel,
    windows: TokenWindows,
    layers: list[int],
    bases: Callable[[int], dict[str, torch.Tensor | EditFn]],
    batch_size: int,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    exclude_first: bool = True,
    positions: int = 0,
) -> list[InterventionResult]:
    """ΔNLL and KL(clean ‖ edited) of each edit of ``bases(l)`` at resid_post.l, for each l in ``layers``: a
    (d, k) basis is projected out, a callable is applied as it is (:func:`mean_ablate`).

    The clean pass runs once per batch and keeps resid_post.l; each edit then runs only layers l+1..L-1
    (and the final norm and W_U) from the edited stream, which equals a full forward with the edit hooked
    at resid_post.l (tests/test_interventions.py). ``positions`` > 0 scores a seeded sample of that many
    positions per window (the same for the clean and every edited pass: paired)."""
    from spectral import fastpath
    from spectral.probes import sample_positions

    _check_lm(model)
    base: Any = fastpath.plain_model(model)
    W, bias = model.unembedding()
    W = W.float()
    bias = None if bias is None else bias.float()
    L = model.arch.n_layers
    names = {hook_name(f"resid_post.{layer}", model.arch): layer for layer in layers}
    clean: list[np.ndarray] = []
    edited: dict[tuple[int, str], list[np.ndarray]] = {}
    kls: dict[tuple[int, str], list[np.ndarray]] = {}
    dev = model.device
    basis_of = {layer: {t: B if callable(B) else project_out(B) for t, B in bases(layer).items()} for layer in layers}
    for batch in iter_batches(windows, batch_size, exclude_first):
        ids, att = batch.input_ids.to(dev), batch.attention_mask.to(dev)
        mask = batch.stat_mask.clone()
        mask[:, -1] = False
        mask[:, :-1] &= batch.attention_mask[:, 1:].bool()
        if positions > 0:
            mask = sample_positions(mask, batch.window_index, positions, seed)
        mask = mask.to(dev)
        kept: dict[int, torch.Tensor] = {}
        hooks = [(n, _keeper(kept, layer)) for n, layer in names.items()]
        with torch.inference_mode():
            with fastpath.hooks(model, hooks):
                out = base(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
            nll0, logp0 = _scored_nll(out, ids, mask, W.to(dev), None if bias is None else bias.to(dev), True)
            clean.append(nll0)
            for layer in layers:
                for target, fn in basis_of[layer].items():
                    h = fn(kept[layer])
                    if layer == L - 1:  # nothing after it: the final norm only
                        final = fastpath.final_norm_module(base)(h)
                    else:
                        with _tail(base, layer + 1):
                            final = base(inputs_embeds=h, attention_mask=att, use_cache=False).last_hidden_state
                    nll, logp = _scored_nll(final, ids, mask, W.to(dev), None if bias is None else bias.to(dev), True)
                    edited.setdefault((layer, target), []).append(nll)
                    kl = (logp0.exp() * (logp0 - logp)).sum(-1).double()  # KL(clean ‖ edited) per scored token
                    kls.setdefault((layer, target), []).append(_per_window(kl, ids.shape[0], mask))
    c = np.concatenate(clean)
    out_rows = []
    for layer in layers:
        for target in basis_of[layer]:
            e = np.concatenate(edited[(layer, target)])
            kl = np.concatenate(kls[(layer, target)])
            out_rows.append(
                InterventionResult(
                    f"resid_post.{layer}",
                    target,
                    _mean_ci(e - c, n_boot, seed, level),
                    float(c.mean()),
                    float(e.mean()),
                    _mean_ci(kl, n_boot, seed, level),
                    kl,
                    e - c,
                )
            )
    return out_rows
