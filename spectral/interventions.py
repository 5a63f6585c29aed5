"""Interventions as forward passes: ΔNLL and KL when a subspace is projected out (or mean-ablated) at a site.

The capture layer's side of :mod:`spectral.analysis.interventions` (which defines the statistics and the
edits): :func:`nll_per_window` runs the model with an edit hooked at one site, :func:`sweep` /
:func:`intervene` give ΔNLL with its paired bootstrap interval, and :func:`tail_sweep` runs the clean pass
once per batch and then only the layers after each edited one (the fast path's plain model), which equals a
full forward with the edit hooked (tests/test_interventions.py).

Hooks exist only inside a ``with`` block and are removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float

from spectral import fastpath
from spectral.analysis.interventions import (
    Edit,
    EditFn,
    InterventionResult,
    mean_ci,
    per_window_mean,
    project_out,
    scored_nll,
)
from spectral.corpus import TokenWindows, iter_batches
from spectral.errors import ConfigError, SpectralError
from spectral.models import LoadedModel
from spectral.sites import all_sites, hook_name

__all__ = ["TAIL_FAMILIES", "can_run_tails", "intervene", "nll_per_window", "sweep", "tail_layers", "tail_sweep"]


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
        delta_nll=mean_ci(diff, n_boot, seed, level),
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


TAIL_FAMILIES = ("llama", "qwen2", "gemma3_text", "gpt_neox")  # inputs_embeds enter the first layer unchanged


def can_run_tails(model: LoadedModel) -> bool:
    """Whether edits at resid_post.l can run only the layers after l (the fast path's plain model)."""
    return model.arch.model_type in TAIL_FAMILIES and fastpath.supports(model) is None


def _keeper(kept: dict[int, torch.Tensor], layer: int) -> Callable[..., None]:
    def fn(x: torch.Tensor, hook: Any = None) -> None:
        kept[layer] = x.detach()

    return fn


@contextmanager
def tail_layers(base: Any, start: int) -> Iterator[None]:
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
            nll0, logp0 = scored_nll(out, ids, mask, W.to(dev), None if bias is None else bias.to(dev), True)
            clean.append(nll0)
            for layer in layers:
                for target, fn in basis_of[layer].items():
                    h = fn(kept[layer])
                    if layer == L - 1:  # nothing after it: the final norm only
                        final = fastpath.final_norm_module(base)(h)
                    else:
                        with tail_layers(base, layer + 1):
                            final = base(inputs_embeds=h, attention_mask=att, use_cache=False).last_hidden_state
                    nll, logp = scored_nll(final, ids, mask, W.to(dev), None if bias is None else bias.to(dev), True)
                    edited.setdefault((layer, target), []).append(nll)
                    kl = (logp0.exp() * (logp0 - logp)).sum(-1).double()  # KL(clean ‖ edited) per scored token
                    kls.setdefault((layer, target), []).append(per_window_mean(kl, ids.shape[0], mask))
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
                    mean_ci(e - c, n_boot, seed, level),
                    float(c.mean()),
                    float(e.mean()),
                    mean_ci(kl, n_boot, seed, level),
                    kl,
                    e - c,
                )
            )
    return out_rows
