"""Band transfer of each sub-layer's actual map, measured: one forward pass with dual numbers (forward-mode AD).

The capture layer's side of :mod:`spectral.analysis.jacobian` (the definitions, the result type
:class:`~spectral.analysis.jacobian.BandTransfer` and its intervals): hooks on each sub-layer's input set a
fresh probe tangent, hooks on its output read J v.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from spectral.analysis.jacobian import BandTransfer
from spectral.corpus import TokenWindows, iter_batches
from spectral.models import LoadedModel


class _Done(Exception):
    """Raised by the last reader: nothing after the last probed sub-layer needs computing."""


def _hook_names(model: LoadedModel, layer: int) -> dict[str, tuple[str, str]]:
    """(input hook, output hook) of each sub-layer, in the bridge's names; the output hook is after the
    sub-layer's own output norm where the family has one (Gemma's sandwich norms)."""
    names = set(model.bridge.hook_dict)
    p = f"blocks.{layer}"
    attn_out = f"{p}.ln1_post.hook_out" if f"{p}.ln1_post.hook_out" in names else f"{p}.attn.hook_out"
    mlp_out = f"{p}.ln2_post.hook_out" if f"{p}.ln2_post.hook_out" in names else f"{p}.mlp.hook_out"
    return {"attn_out": (f"{p}.ln1.hook_in", attn_out), "mlp_out": (f"{p}.ln2.hook_in", mlp_out)}


def supports(model: LoadedModel) -> str | None:
    """Why the JVP transfer cannot run on ``model`` (None: it can)."""
    if model.arch.norm_placement != "pre":
        return "needs a pre-LN model (the sub-layer's input norm is part of its map)"
    names = set(model.bridge.hook_dict)
    for layer in range(model.arch.n_layers):
        for a, b in _hook_names(model, layer).values():
            if a not in names or b not in names:
                return f"the bridge has no hook {a if a not in names else b}"
    return None


def band_transfer(
    model: LoadedModel,
    windows: TokenWindows,
    bands: list[torch.Tensor],
    *,
    n_windows: int = 1,
    groups: int = 8,
    seed: int = 0,
    exclude_first: bool = True,
    layers: list[int] | None = None,
) -> BandTransfer:
    """E_ij of attention and the MLP at ``layers`` (default all), on the first ``n_windows`` windows."""
    why = supports(model)
    if why:
        raise ValueError(f"JVP band transfer: {why}")
    K = len(bands)
    U = torch.cat(bands, dim=1).float().to(model.device)  # (d, d) sorted basis, bands contiguous
    sizes = [int(b.shape[1]) for b in bands]
    layers = list(range(model.arch.n_layers)) if layers is None else layers
    sub = windows.select(slice(0, min(n_windows, len(windows))))
    T = int(sub.ids.shape[1])
    gen = torch.Generator().manual_seed(seed)
    energy = {s: {layer: np.zeros((groups, K, K)) for layer in layers} for s in ("attn_out", "mlp_out")}
    band_of = torch.repeat_interleave(torch.arange(K), torch.tensor(sizes)).to(model.device)  # (d,) band per column
    cur: dict[str, torch.Tensor] = {}  # the window in flight: its scored positions and their groups
    last = max(layers)

    def probe(shape: torch.Size, device: torch.device) -> torch.Tensor:
        z = torch.randn(shape, generator=gen).to(device)  # (K, T, d): row i restricted to band i
        keep = (band_of[None, :] == torch.arange(K, device=device)[:, None]).float()  # (K, d)
        return ((z @ U) * keep[:, None, :]) @ U.T

    def inject(x: torch.Tensor, hook: object) -> torch.Tensor:
        primal = fwAD.unpack_dual(x).primal
        return fwAD.make_dual(primal, probe(primal.shape, primal.device).to(primal.dtype))

    def reader(s: str, layer: int):  # noqa: ANN202
        def read(x: torch.Tensor, hook: object) -> torch.Tensor:
            t = fwAD.unpack_dual(x).tangent
            if t is None:
                raise RuntimeError(f"no tangent reached {s} of layer {layer}")
            e = (t.float() @ U).pow(2)  # (K_in, T, d): energy per basis direction
            e = torch.zeros(K, T, K, device=e.device).index_add_(2, band_of, e)  # (K_in, T, K_out)
            mask = cur["mask"]
            acc = torch.zeros(groups, K, K, device=e.device, dtype=torch.float64)
            acc.index_add_(0, cur["group"][mask], e[:, mask].permute(1, 0, 2).double())
            energy[s][layer] += acc.cpu().numpy()
            if s == "mlp_out" and layer == last:
                raise _Done
            return x

        return read

    hooks = []
    for layer in layers:
        for s, (a, b) in _hook_names(model, layer).items():
            hooks += [(a, inject), (b, reader(s, layer))]
    for w, batch in enumerate(iter_batches(sub, 1, exclude_first)):
        ids = batch.input_ids.to(model.device).expand(K, -1)
        cur["mask"] = batch.stat_mask[0].to(model.device)  # (T,)
        # position group of each position over all windows used: contiguous groups of the run's positions
        flat = w * T + torch.arange(T, device=model.device)
        cur["group"] = (flat * groups // (len(sub) * T)).clamp_max(groups - 1)
        try:
            with torch.no_grad(), fwAD.dual_level(), model.bridge.hooks(fwd_hooks=hooks):
                model.bridge(ids, return_type=None)
        except _Done:
            pass
    return BandTransfer(energy, tuple(sizes))
