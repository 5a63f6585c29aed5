"""Site names: where in the forward pass an activation is read.

A site is a kind and, inside a block, a layer: ``embed``, ``resid_pre.l``, ``attn_out.l``, ``resid_mid.l``,
``mlp_out.l``, ``resid_post.l`` and ``final`` (what each holds: :mod:`spectral.capture`). Names are the
strings of the run-directory contract (metrics.csv's ``site`` column); :class:`Site` is their typed form.
This module needs no torch and no capture: analyses, probes and front ends read names from here.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, NamedTuple

from spectral.errors import ConfigError

if TYPE_CHECKING:
    from spectral.arch import ArchInfo

KINDS = ("embed", "resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "final")


class Site(NamedTuple):
    """A site: ``kind`` (one of :data:`KINDS`) and ``layer`` (None for ``embed`` and ``final``)."""

    kind: str
    layer: int | None = None

    @classmethod
    def parse(cls, name: str) -> Site:
        """``"resid_post.3"`` -> ``Site("resid_post", 3)``; ``"final"`` -> ``Site("final")``. Also takes a bare
        kind (``"resid_post"``, the per-model rows of metrics.csv) as a site without a layer."""
        kind, _, layer = name.partition(".")
        if kind not in KINDS or (layer and not layer.isdigit()):
            raise ValueError(f"not a site name: {name!r} (kinds: {', '.join(KINDS)}; e.g. resid_post.3)")
        return cls(kind, int(layer) if layer else None)

    def __str__(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    @property
    def name(self) -> str:
        return str(self)


def site_kind(site: str) -> str:
    """The kind of a site name (``resid_post`` for ``resid_post.3``)."""
    return Site.parse(site).kind


SUBLAYER_SITES = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


def all_sites(arch: ArchInfo) -> tuple[str, ...]:
    """Every site of this architecture, in forward order."""
    names = ["embed"]
    for layer in range(arch.n_layers):
        for kind in SUBLAYER_SITES:
            if kind == "resid_mid" and arch.parallel_residual:
                continue
            names.append(f"{kind}.{layer}")
    names.append("final")
    return tuple(names)


def select_sites(arch: ArchInfo, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """Resolve names / glob patterns ('all', 'resid_post.*') to sites, in forward order."""
    valid = all_sites(arch)
    chosen: set[str] = set()
    for pat in patterns:
        hits = valid if pat == "all" else tuple(s for s in valid if fnmatch.fnmatchcase(s, pat))
        if not hits:
            raise ConfigError(
                f"site {pat!r} does not exist for {arch.architecture} ({arch.n_layers} layers); "
                f"valid: embed, final, {{{','.join(SUBLAYER_SITES)}}}.0..{arch.n_layers - 1}"
                + (" (no resid_mid: parallel residual)" if arch.parallel_residual else "")
            )
        chosen.update(hits)
    return tuple(s for s in valid if s in chosen)


def site_layer(site: str) -> int | None:
    """Layer index of a site name (None for embed / final)."""
    return Site.parse(site).layer


def hook_name(site: str, arch: ArchInfo) -> str:
    """The bridge hook point that holds ``site`` (what each site holds: :mod:`spectral.capture`)."""
    kind, layer = Site.parse(site)
    post = arch.norm_placement == "post"
    if kind == "embed":
        return "embed_ln.hook_out" if post else "hook_embed"
    if kind == "final":
        return f"blocks.{arch.n_layers - 1}.hook_resid_post" if post else "ln_final.hook_out"
    if post and kind == "attn_out":
        return f"blocks.{layer}.attn.o.hook_out"
    if post and kind == "resid_mid":
        return f"blocks.{layer}.ln1.hook_out"
    if post and kind == "mlp_out":
        return f"blocks.{layer}.mlp.out.hook_out"
    return f"blocks.{layer}.hook_{kind}"


def residual_predecessors(sites: tuple[str, ...], arch: ArchInfo) -> dict[str, str]:
    """For each resid_post.l: the residual-chain site before it (resid_pre.0 or resid_post.l-1)."""
    out = {}
    for layer in range(arch.n_layers):
        site = f"resid_post.{layer}"
        prev = "resid_pre.0" if layer == 0 else f"resid_post.{layer - 1}"
        if site in sites and prev in sites:
            out[site] = prev
    return out


def write_inputs(sites: tuple[str, ...], arch: ArchInfo) -> dict[str, str]:
    """For each attn_out.l / mlp_out.l: the stream that sub-layer read (for band transfer)."""
    out = {}
    for layer in range(arch.n_layers):
        pairs = [(f"attn_out.{layer}", f"resid_pre.{layer}")]
        mlp_in = f"resid_pre.{layer}" if arch.parallel_residual else f"resid_mid.{layer}"
        pairs.append((f"mlp_out.{layer}", mlp_in))
        out.update({w: x for w, x in pairs if w in sites and x in sites})
    return out


RESIDUAL_KINDS = ("embed", "resid_pre", "resid_mid", "resid_post", "final")


def stream_aliases(sites: tuple[str, ...]) -> dict[str, str]:
    """resid_pre.l -> resid_post.l-1 where both are captured: every block reads exactly what the block
    before it wrote (tests/test_capture.py checks the tensors are equal), so one set of statistics
    serves both names (half the d x d moments of the residual chain)."""
    out = {}
    for s in sites:
        kind, layer = Site.parse(s)
        if kind == "resid_pre" and layer:
            prev = str(Site("resid_post", layer - 1))
            if prev in sites:
                out[s] = prev
    return out
