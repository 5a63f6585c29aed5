"""The fast capture backend: plain PyTorch hooks on an un-bridged Hugging Face module tree that
shares the bridge's weights (no copy) and runs SDPA attention.

The TransformerBridge replaces a model's submodules with its own wrappers, forces eager attention
and runs Python for every hook point; on real LLMs that is slow. :func:`plain_model` builds the
same Hugging Face class on the meta device and *assigns* the bridge's parameter and buffer tensors
to it (the same storage, zero extra memory). For the families in :data:`FAMILIES` (GPT-2, Llama,
Qwen2, Gemma3 text, GPT-NeoX) it serves every site and the head hooks with the bridge's
semantics (see :mod:`spectral.capture`); :func:`supports` says whether a model is one of them.
Sites map to modules of decoder layer ``l``:

* ``resid_pre.l`` / ``resid_post.l``: input / output of the layer;
* ``attn_out.l`` / ``mlp_out.l``: what the sub-layer adds to the stream, the output of the
  attention / MLP module (Gemma3's sandwich norms: of ``post_attention_layernorm`` /
  ``post_feedforward_layernorm``);
* ``resid_mid.l``: the input of the pre-MLP norm (``ln_2``, ``post_attention_layernorm``,
  Gemma3's ``pre_feedforward_layernorm``); parallel-residual NeoX has none;
* ``embed``: output of the token embedding (Gemma3's includes its sqrt(d) scale, as the bridge's
  ``hook_embed``); ``final``: output of the final norm.

Head hooks (``blocks.l.attn.hook_z`` (B, T, H, d_head), ``blocks.l.attn.hook_pattern``
(B, H, Tq, Tk)) come from the attention function ``spectral_sdpa`` registered with transformers'
``AttentionInterface``: it calls the stock SDPA function unless the current :func:`hooks` block
registered a head hook on that layer; then (pattern hooks only) it computes the attention
eagerly from the mask the model hands it (padding, causal, sliding window), as the bridge does.
Other architectures (BERT, ...) keep residual sites only (embed, resid_pre, resid_post, final).

Hooks take and return ``fn(x, hook)`` callables as the bridge's (``hook`` is None here); a
returned tensor replaces the activation, as on the bridge. ``tests/test_fastpath.py`` checks
both backends agree to fp32 tolerance.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from spectral.errors import ConfigError
from spectral.models import LoadedModel
from spectral.sites import all_sites, hook_name, site_kind, site_layer

Hook = Callable[..., Any]
RESIDUAL_KINDS = ("embed", "resid_pre", "resid_post", "final")  # the sites the plain-hook fast path serves alone
ATTN_IMPLEMENTATION = "spectral_sdpa"
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


@dataclass(frozen=True)
class Family:
    """Where a decoder family's sub-layer sites live, as submodule names of one layer."""

    attn: str  # the attention module (its attention function yields z and the pattern)
    attn_out: str  # output = attn_out
    resid_mid: str  # input = resid_mid (unused for parallel residual)
    mlp_out: str  # output = mlp_out


_LLAMA = Family("self_attn", "self_attn", "post_attention_layernorm", "mlp")
FAMILIES: dict[str, Family] = {  # Hugging Face model_type -> layout
    "gpt2": Family("attn", "attn", "ln_2", "mlp"),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "gemma3_text": Family(
        "self_attn", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"
    ),
    "gpt_neox": Family("attention", "attention", "post_attention_layernorm", "mlp"),
}

# ---- the attention function --------------------------------------------------------------------
# attention module -> {"z": [fn, ...], "pattern": [fn, ...]}; filled and emptied by hooks() only
_HEADS: dict[torch.nn.Module, dict[str, list[Hook]]] = {}


def _replaced(x: torch.Tensor, fn: Hook) -> torch.Tensor:
    out = fn(x, hook=None)  # called as the bridge calls its hooks
    return out if isinstance(out, torch.Tensor) else x


def _eager(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, H, Tq, dh)
    key: torch.Tensor,  # (B, H_kv, Tk, dh)
    value: torch.Tensor,  # (B, H_kv, Tk, dh)
    attention_mask: torch.Tensor | None,  # None, bool (True = attend) or additive, broadcast to (B, H, Tq, Tk)
    scaling: float | None,
    is_causal: bool | None,
    softcap: float | None,
    pattern_fns: list[Hook],
) -> torch.Tensor:
    """Attention output (B, Tq, H, dh) through an explicit softmax pattern handed to ``pattern_fns``."""
    from transformers.integrations.sdpa_attention import repeat_kv

    n_rep = int(getattr(module, "num_key_value_groups", 1))
    k, v = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, k.transpose(2, 3)) * scale  # (B, H, Tq, Tk)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    low = torch.finfo(scores.dtype).min
    if attention_mask is None:  # SDPA's is_causal path: no padding, no window narrower than the sequence
        causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", True))
        tq, tk = scores.shape[-2:]
        if causal and tq > 1:
            keep = torch.ones(tq, tk, dtype=torch.bool, device=scores.device).tril(tk - tq)
            scores = scores.masked_fill(~keep, low)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, low)
    else:
        scores = scores + attention_mask
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    for fn in pattern_fns:
        pattern = _replaced(pattern, fn)
    return torch.matmul(pattern, v).transpose(1, 2).contiguous()


def spectral_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, plus the z / pattern hooks registered on ``module`` (if any)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    active = _HEADS.get(module)
    if active is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if active["pattern"]:
        out = _eager(
            module, query, key, value, attention_mask, scaling, is_causal, kwargs.get("softcap"), active["pattern"]
        )
    else:
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    for fn in active["z"]:  # z: (B, T, H, dh), what the output projection reads
        out = _replaced(out, fn)
    return out, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, spectral_sdpa)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)  # the masks SDPA gets (else: no mask at all)


# ---- the plain model ---------------------------------------------------------------------------
def plain_model(model: LoadedModel) -> torch.nn.Module:
    """The un-bridged base model sharing ``model``'s weights, built on first use and kept with the model (its
    fast backend runs it; :meth:`~spectral.models.LoadedModel.release_weights` drops it)."""
    if model._plain is None:
        model._plain = build_plain(model)
    return model._plain


def build_plain(model: LoadedModel) -> torch.nn.Module:
    """Build the un-bridged base model sharing ``model``'s weights (:class:`spectral.backends.FastBackend`
    keeps it)."""
    import copy

    hf: Any = model.hf_model
    cfg = copy.deepcopy(hf.config)
    if model.arch.model_type in FAMILIES:
        _register()
        cfg._attn_implementation = ATTN_IMPLEMENTATION
    else:
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
    return base


def supports(model: LoadedModel) -> str | None:
    """None when the fast path serves every site and the head hooks of ``model``, else the reason."""
    arch = model.arch
    if arch.model_type not in FAMILIES:
        return (
            f"backend 'fast' serves every site only for {', '.join(FAMILIES)} (not {arch.model_type!r}, "
            f"{arch.architecture})"
        )
    if arch.norm_placement != "pre":
        return f"{arch.architecture} measured as post-LN"
    devices = set((getattr(model.hf_model, "hf_device_map", None) or {}).values())
    if len(devices) > 1:
        return "the layers are spread over several devices (device_map='auto')"
    try:
        plain_model(model)
    except ConfigError as exc:
        return str(exc)
    return None


def check_sites(model: LoadedModel, sites: tuple[str, ...]) -> None:
    """Fail early, with the reason, when the fast path cannot serve ``sites`` for ``model``."""
    reason = supports(model)
    if reason is None:
        bad = [s for s in sites if s not in all_sites(model.arch)]
        if bad:
            raise ConfigError(f"backend 'fast': no site {', '.join(bad[:4])} in {model.arch.architecture}")
        return
    bad = [s for s in sites if site_kind(s) not in RESIDUAL_KINDS]
    if bad:
        raise ConfigError(
            f"backend 'fast' captures embed, resid_pre.*, resid_post.* and final only for "
            f"{model.arch.architecture} (not {', '.join(bad[:4])}): {reason}; use backend 'bridge'"
        )


# ---- hooks -------------------------------------------------------------------------------------
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


def _pre_hook(fn: Hook) -> Callable[..., Any]:
    """A forward pre-hook handing the module's first input (``hidden_states``) to ``fn``."""

    def pre(mod: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = args[0] if args else kwargs["hidden_states"]
        new = _replaced(x, fn)
        if new is x:
            return None
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    return pre


def _post_hook(fn: Hook) -> Callable[..., Any]:
    """A forward hook handing the module's output (its first element, for a tuple) to ``fn``."""

    def post(mod: Any, args: tuple, out: Any) -> Any:
        x = out[0] if isinstance(out, tuple | list) else out
        new = _replaced(x, fn)
        if new is x:
            return None
        return (new, *out[1:]) if isinstance(out, tuple | list) else new

    return post


def _site_module(model: LoadedModel, base: Any, site: str) -> tuple[torch.nn.Module, bool]:
    """(module, reads its input) that holds ``site``."""
    arch = model.arch
    kind, layer = site_kind(site), site_layer(site) or 0
    layers = _layers(base, arch.n_layers)
    if kind == "resid_pre":
        return layers[layer], True
    if kind == "resid_post" or (kind == "final" and arch.norm_placement == "post"):
        return layers[arch.n_layers - 1 if kind == "final" else layer], False
    if kind == "final":
        return _final_norm(base), False
    if kind == "embed":
        return (base.embeddings if arch.norm_placement == "post" else base.get_input_embeddings()), False
    fam = FAMILIES[arch.model_type]
    name = {"attn_out": fam.attn_out, "mlp_out": fam.mlp_out, "resid_mid": fam.resid_mid}[kind]
    return layers[layer].get_submodule(name), kind == "resid_mid"


def _hook_points(model: LoadedModel) -> dict[str, tuple[str, str | int]]:
    """Bridge hook name -> ("site", site) or ("z" | "pattern", layer) that the fast path serves."""
    full = supports(model) is None
    sites = [s for s in all_sites(model.arch) if full or site_kind(s) in RESIDUAL_KINDS]
    points: dict[str, tuple[str, str | int]] = {hook_name(s, model.arch): ("site", s) for s in sites}
    if full:
        for layer in range(model.arch.n_layers):
            points[f"blocks.{layer}.attn.hook_z"] = ("z", layer)
            points[f"blocks.{layer}.attn.hook_pattern"] = ("pattern", layer)
    return points


@contextmanager
def hooks(model: LoadedModel, fwd_hooks: list[tuple[str, Hook]]) -> Iterator[None]:
    """Register bridge-named hooks (``blocks.3.hook_resid_post``, ``blocks.3.attn.hook_z``, ...) on
    the plain modules for the block; all of them are removed on exit, also on error."""
    base: Any = plain_model(model)
    points = _hook_points(model)
    handles = []
    heads: list[tuple[torch.nn.Module, str, Hook]] = []
    try:
        for name, fn in fwd_hooks:
            point = points.get(name)
            if point is None:
                raise ConfigError(
                    f"backend 'fast' has no hook point {name!r} for {model.arch.architecture} "
                    f"({supports(model) or 'not a site or head hook'}); use backend 'bridge'"
                )
            what, where = point
            if what == "site":
                mod, reads_input = _site_module(model, base, str(where))
                if reads_input:
                    handles.append(mod.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True))
                else:
                    handles.append(mod.register_forward_hook(_post_hook(fn)))
                continue
            layer_mod = _layers(base, model.arch.n_layers)[int(where)]
            attn = layer_mod.get_submodule(FAMILIES[model.arch.model_type].attn)
            _HEADS.setdefault(attn, {"z": [], "pattern": []})[what].append(fn)
            heads.append((attn, what, fn))
        yield
    finally:
        for h in handles:
            h.remove()
        for attn, what, fn in heads:
            entry = _HEADS.get(attn)
            if entry is not None and fn in entry[what]:
                entry[what].remove(fn)
                if not entry["z"] and not entry["pattern"]:
                    del _HEADS[attn]


def forward(model: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> None:
    """One forward pass of the plain base model (no LM head, no cache)."""
    base = plain_model(model)
    if model.arch.is_causal:
        extra["use_cache"] = False
    with torch.inference_mode():
        base(input_ids=input_ids, attention_mask=attention_mask, **extra)


def final_norm_module(base: torch.nn.Module) -> torch.nn.Module:
    """The final norm of a plain base model (what the unembedding reads)."""
    return _final_norm(base)
