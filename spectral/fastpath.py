"""The fast capture backend: plain PyTorch hooks on an un-bridged Hugging Face module tree that
shares the bridge's weights (no copy) and runs SDPA attention.

The TransformerBridge replaces a model's submodules with its own wrappers and forces eager
attention so that it can expose attention patterns. Runs that need no attention patterns (no
head probe) do not have to pay for that: :func:`plain_model` builds the same Hugging Face class
on the meta device and *assigns* the bridge's parameter and buffer tensors to it (the same
storage, zero extra memory), with ``attn_implementation="sdpa"``. Sites map to modules:

* ``resid_pre.l`` / ``resid_post.l``: input / output of decoder (encoder) layer ``l``;
* ``embed``: output of the token embedding (pre-LN; the bridge's ``hook_embed``) or of the
  embeddings block with its LayerNorm (post-LN; ``embed_ln.hook_out``);
* ``final``: output of the final norm (pre-LN) or of the last layer (post-LN).

Other sites (``attn_out``, ``mlp_out``, ``resid_mid``) and the head probe need the bridge. The
hooks take and return the same ``fn(x, hook)`` callables as the bridge's, so the statistics and
probes are shared; ``tests/test_fastpath.py`` checks both backends agree to fp32 tolerance.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from spectral.capture import hook_name, site_layer
from spectral.errors import ConfigError
from spectral.models import LoadedModel

FAST_KINDS = ("embed", "resid_pre", "resid_post", "final")
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


def plain_model(model: LoadedModel) -> torch.nn.Module:
    """The un-bridged base model sharing ``model``'s weights (built once, cached on ``model``)."""
    cached = getattr(model, "_plain", None)
    if cached is not None:
        return cached
    import copy

    hf: Any = model.hf_model
    cfg = copy.deepcopy(hf.config)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        plain = type(hf)(cfg)
    tensors = {
        k.replace("._original_component", ""): v
        for k, v in [*hf.named_parameters(remove_duplicate=False), *hf.named_buffers(remove_duplicate=False)]
    }
    for name, old in [*plain.named_parameters(remove_duplicate=False), *plain.named_buffers(remove_duplicate=False)]:
        if name not in tensors:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = plain.get_submodule(owner_name) if owner_name else plain
        new = tensors[name]
        if isinstance(old, torch.nn.Parameter):
            owner._parameters[leaf] = torch.nn.Parameter(new.detach(), requires_grad=False)
        else:
            owner._buffers[leaf] = new
    base: Any = plain.base_model.eval()
    left = [n for n, t in [*base.named_parameters(), *base.named_buffers()] if t.is_meta]
    if left:
        raise ConfigError(f"backend 'fast' cannot rebuild {type(hf).__name__} without the bridge ({left[:3]} missing)")
    model._plain = base  # type: ignore[attr-defined]
    return base


def _layers(base: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList:
    for mod in base.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n_layers:
            return mod
    raise ConfigError(f"backend 'fast': no list of {n_layers} layers in {type(base).__name__}")


def _final_norm(base: torch.nn.Module) -> torch.nn.Module:
    for name in _NORM_NAMES:
        mod = getattr(base, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    raise ConfigError(f"backend 'fast': no final norm found in {type(base).__name__}")


def check_sites(model: LoadedModel, sites: tuple[str, ...]) -> None:
    bad = [s for s in sites if s.split(".")[0] not in FAST_KINDS]
    if bad:
        raise ConfigError(
            f"backend 'fast' captures embed, resid_pre.*, resid_post.* and final only (not {', '.join(bad[:4])}); "
            "use backend 'bridge' for sub-layer writes"
        )


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


@contextmanager
def hooks(model: LoadedModel, fwd_hooks: list[tuple[str, Callable[..., torch.Tensor]]]) -> Iterator[None]:
    """Register bridge-named hooks (``blocks.3.hook_resid_post``, ...) on the plain modules."""
    base: Any = plain_model(model)
    arch = model.arch
    by_name = {hook_name(s, arch): s for s in _all_fast_sites(model)}
    layers = _layers(base, arch.n_layers)
    handles = []
    try:
        for name, fn in fwd_hooks:
            site = by_name.get(name)
            if site is None:
                raise ConfigError(f"backend 'fast' has no hook point {name!r} (attention internals need the bridge)")
            kind, layer = site.split(".")[0], site_layer(site) or 0
            if kind == "resid_pre":

                def pre(mod: Any, args: tuple, kwargs: dict, fn: Callable = fn) -> None:
                    fn(args[0] if args else kwargs["hidden_states"], None)

                handles.append(layers[layer].register_forward_pre_hook(pre, with_kwargs=True))
                continue
            if kind == "resid_post" or (kind == "final" and arch.norm_placement == "post"):
                mod: Any = layers[arch.n_layers - 1 if kind == "final" else layer]
            elif kind == "final":
                mod = _final_norm(base)
            elif arch.norm_placement == "post":
                mod = base.embeddings
            else:
                mod = base.get_input_embeddings()

            def post(mod: Any, args: tuple, out: Any, fn: Callable = fn) -> None:
                fn(_first(out), None)

            handles.append(mod.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()


def _all_fast_sites(model: LoadedModel) -> list[str]:
    L = model.arch.n_layers
    return ["embed", *(f"{k}.{i}" for i in range(L) for k in ("resid_pre", "resid_post")), "final"]


def forward(model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> None:
    """One forward pass of the plain base model (no LM head, no cache)."""
    base = plain_model(model)
    if model.arch.is_causal:
        extra["use_cache"] = False
    with torch.inference_mode():
        base(input_ids=input_ids, attention_mask=attention_mask, **extra)
