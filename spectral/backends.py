"""How a forward pass is run and hooked: the backend, an object the loaded model owns.

* :class:`BridgeBackend`: TransformerLens 4's ``TransformerBridge`` (every hook point of every family).
* :class:`FastBackend`: plain PyTorch hooks on the un-bridged Hugging Face modules with SDPA
  (:mod:`spectral.fastpath`), equal to the bridge and several times cheaper; it serves every site and the
  head hooks for the common decoder families, the residual sites for the others.

``backend_of(model, name)`` ("bridge", "fast" or "auto") builds one once and keeps it with the model (the
fast one runs the plain module sharing the model's weights); capture, probes and interventions take the object, never
a name. Hook names are the bridge's (``blocks.3.hook_resid_post``) whatever the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from spectral import fastpath

if TYPE_CHECKING:
    from spectral.models import LoadedModel

Hook = tuple[str, Callable[..., Any]]
NAMES = ("bridge", "fast")


class Backend:
    """Registers bridge-named hooks for a block and runs forward passes without logits."""

    name: str = ""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    @property
    def serves_heads(self) -> bool:
        """Whether attention patterns and per-head outputs (``attn.hook_pattern`` / ``attn.hook_z``) are served."""
        return True

    @contextmanager
    def hooks(self, fwd_hooks: list[Hook]) -> Iterator[None]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.source.name!r})"


class BridgeBackend(Backend):
    name = "bridge"

    @contextmanager
    def hooks(self, fwd_hooks: list[Hook]) -> Iterator[None]:
        with self.model.bridge.hooks(fwd_hooks=fwd_hooks):
            yield

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> None:
        with torch.inference_mode():
            self.model.bridge(input_ids, return_type=None, attention_mask=attention_mask, **extra)


class FastBackend(Backend):
    name = "fast"

    @property
    def plain(self) -> torch.nn.Module:
        """The un-bridged base model sharing the model's weights (built on first use)."""
        return fastpath.plain_model(self.model)

    @property
    def serves_heads(self) -> bool:
        return fastpath.supports(self.model) is None

    @contextmanager
    def hooks(self, fwd_hooks: list[Hook]) -> Iterator[None]:
        with fastpath.hooks(self.model, fwd_hooks):
            yield

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> None:
        fastpath.forward(self.model, input_ids, attention_mask, **extra)


def make_backend(model: LoadedModel, name: str) -> Backend:
    """The backend called ``name``; "auto" is the fast one where it serves the family completely."""
    if name == "auto":
        name = "fast" if fastpath.supports(model) is None else "bridge"
    if name == "bridge":
        return BridgeBackend(model)
    if name == "fast":
        return FastBackend(model)
    raise ValueError(f"unknown backend {name!r} (bridge, fast or auto)")


def backend_of(model: LoadedModel, name: str = "bridge") -> Backend:
    """The backend that runs and hooks ``model``'s forward passes: "bridge", "fast" or "auto" (fast where it
    serves the family completely); built once and kept with the model."""
    cache = model._backends
    if name not in cache:
        b = make_backend(model, name)
        cache.setdefault(b.name, b)
        cache[name] = cache[b.name]
    return cache[name]
