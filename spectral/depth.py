"""Depth spectrum (ARCHITECTURE.md section 1): each token's trajectory over the resid_post layers as a
signal, and how much of its energy sits at low "depth frequencies".

:class:`DepthProbe` hooks every resid_post site of a forward pass and accumulates, per token, the DFT
over layers X_k = Σ_l h_l e^{−2πi k l / L} (k = 0 … L/2, every dimension) through an L × L Gram
matrix: Σ_d |X_k,d|² = Σ_{l,m} cos(2πk(l − m)/L) ⟨h_l, h_m⟩, and only per-window sums are kept, so each
window needs Σ_t ⟨h_l(t), h_m(t)⟩ alone: one (L × T·d) · (T·d × L) product per window for every
frequency. At the end of a batch it keeps, per window, the
Parseval-weighted one-sided power P(k) = w_k |X_k|² / L summed over the window's counted tokens and the
dimensions (w = 1 at DC and at Nyquist for even L, 2 between: Σ_k P(k) = Σ_l ‖h_l‖²).
Metrics (spectral.analysis.battery):
``depth_dc_share`` = P(0)/ΣP, the energy share of the token's mean over layers (the part of h that
stays put through depth), and ``depth_ac_lowfreq_share`` with its exact layer-permutation null
``depth_ac_lowfreq_null`` (the same definitions as the sequence spectrum's, over layers). Memory: one
copy of the batch's counted resid_post tokens (L × tokens × d float32) until the batch ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from spectral.corpus import Batch
from spectral.models import LoadedModel
from spectral.sites import hook_name, site_kind, site_layer
from spectral.tables import DepthTable


def parseval_weights(L: int) -> torch.Tensor:
    """w_k / L for the one-sided DFT of length L (k = 0 … L//2)."""
    F = L // 2 + 1
    w = torch.full((F,), 2.0 / L, dtype=torch.float64)
    w[0] = 1.0 / L
    if L % 2 == 0:
        w[-1] = 1.0 / L
    return w


class DepthProbe:
    """Per-window depth power spectra of the resid_post trajectory (see the module docstring)."""

    def __init__(self, model: LoadedModel, sites: tuple[str, ...]) -> None:
        layers = sorted(site_layer(s) or 0 for s in sites if site_kind(s) == "resid_post")
        if layers != list(range(model.arch.n_layers)):
            raise ValueError("the depth spectrum needs every resid_post layer")
        self.model, self.L = model, len(layers)
        self.F = self.L // 2 + 1
        k = torch.arange(self.F, dtype=torch.float64)[:, None, None]
        lag = torch.arange(self.L, dtype=torch.float64)[:, None] - torch.arange(self.L, dtype=torch.float64)[None, :]
        self.kernel = torch.cos(2 * math.pi * k * lag[None] / self.L)  # (F, L, L): Re e^{-2πik(l-m)/L}
        self.weights = parseval_weights(self.L)
        self.rows: list[np.ndarray] = []  # per batch (windows, F)
        self.index: list[np.ndarray] = []
        self._batch: Batch | None = None
        self._held: dict[int, torch.Tensor] = {}  # layer -> (windows, T·d) float32, uncounted tokens zeroed

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        return [(hook_name(f"resid_post.{layer}", self.model.arch), self._add(layer)) for layer in range(self.L)]

    def begin_batch(self, batch: Batch) -> None:
        self._batch, self._held = batch, {}

    def _add(self, layer: int) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            b = self._batch
            assert b is not None
            m = b.stat_mask.to(x.device)[..., None]
            self._held[layer] = (x.detach().float() * m).reshape(x.shape[0], -1)  # (windows, T·d)
            return x

        return fn

    def end_batch(self) -> None:
        b = self._batch
        assert b is not None and len(self._held) == self.L
        H = torch.stack([self._held[layer] for layer in range(self.L)], 1)  # (windows, L, T·d)
        self._held = {}
        G = torch.bmm(H, H.transpose(1, 2)).double().cpu()  # (windows, L, L): Σ_t ⟨h_l(t), h_m(t)⟩
        rows = torch.einsum("wlm,klm->wk", G, self.kernel) * self.weights  # (windows, F)
        self.rows.append(rows.numpy())
        self.index.append(b.window_index.numpy().copy())

    def table(self) -> DepthTable:
        """(window_index (W,), power rows (W, F)) by window."""
        if not self.rows:
            return DepthTable(np.zeros(0, dtype=np.int64), np.zeros((0, self.F)))
        idx = np.concatenate(self.index)
        order = np.argsort(idx, kind="stable")
        return DepthTable(idx[order], np.concatenate(self.rows)[order])

    def state_dict(self) -> dict[str, Any]:
        t = self.table()
        idx, rows = t.index, t.rows
        return {"index": torch.from_numpy(idx), "rows": torch.from_numpy(rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self.index = [], []
        self.merge_state(state)

    def merge_state(self, state: dict[str, Any]) -> None:
        if len(state["index"]):
            self.index.append(state["index"].numpy().copy())
            self.rows.append(state["rows"].numpy().copy())
