"""Joint moments of residual-stream sites, streamed: layer-to-layer linearity and the tuned lens's fit.

:class:`JointProbe` reads the residual chain (``embed`` when captured, then every ``resid_post.l``) and keeps

* for each consecutive pair (x = the earlier site, y = the later) the cross moment Σ (x − c_x)(y − c_y)ᵀ over the
  statistics' tokens (c: the calibration centres, so float32 products lose nothing to the carrier); with the
  sites' own moments (the statistics bank, same tokens) this gives LLM-Microscope's linearity scores
  (:mod:`spectral.analysis.linearity`);
* for the tuned lens (:mod:`spectral.tuned_lens`), over the *fit* windows (even place in the run):
  Σ x̃x̃ᵀ, Σ x̃ỹᵀ, Σ x̃ and Σ ỹ of every chain site x against the last layer's residual y; and over the
  first ``eval_windows`` *held-out* windows (odd place) the raw rows of every chain site at the logit
  lens's sampled positions, with their next tokens, on which the fitted lens is scored.

Sums add and rows concatenate, so shards merge exactly. Activations are held within one forward pass only (the
fit windows' rows until the last layer has fired).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from spectral.corpus import Batch
from spectral.models import LoadedModel
from spectral.sites import hook_name


def chain_sites(sites: tuple[str, ...], n_layers: int) -> tuple[str, ...]:
    """``embed`` (when captured) and the resid_post sites, in forward order."""
    out = ["embed"] if "embed" in sites else []
    out += [f"resid_post.{layer}" for layer in range(n_layers) if f"resid_post.{layer}" in sites]
    return tuple(out)


def consecutive_pairs(chain: tuple[str, ...]) -> list[tuple[str, str]]:
    """(x, y) pairs of adjacent sites of the chain with no layer between them."""
    from spectral.sites import site_layer

    def depth(s: str) -> int:
        return -1 if s == "embed" else int(site_layer(s) or 0)

    return [(a, b) for a, b in zip(chain, chain[1:], strict=False) if depth(b) == depth(a) + 1]


class JointProbe:
    """Cross moments of consecutive chain sites, and the tuned lens's fit sums and held-out rows."""

    def __init__(
        self,
        model: LoadedModel,
        chain: tuple[str, ...],
        centers: dict[str, torch.Tensor],
        lens_positions: int,
        seed: int,
        eval_windows: int,
        tuned: bool = True,
        linearity: bool = True,
    ) -> None:
        self.model = model
        self.chain: tuple[str, ...] = tuple(chain)
        self.pairs = consecutive_pairs(self.chain) if linearity else []
        d = model.arch.d_model
        f64 = torch.float64
        self.centers = {s: centers[s].detach().to("cpu", f64) for s in self.chain}
        self.cross = {f"{x}>{y}": torch.zeros(d, d, dtype=f64) for x, y in self.pairs}
        self.cross_n = torch.zeros((), dtype=f64)
        self.tuned = tuned and len(self.chain) >= 2
        self.target = self.chain[-1] if self.chain else ""  # the last layer's residual: what the translators aim at
        self.lens_positions, self.seed, self.eval_windows = lens_positions, seed, eval_windows
        src = self.chain[:-1] if self.tuned else ()
        self.fit_xx = {s: torch.zeros(d, d, dtype=f64) for s in src}
        self.fit_xy = {s: torch.zeros(d, d, dtype=f64) for s in src}
        self.fit_x = {s: torch.zeros(d, dtype=f64) for s in self.chain} if self.tuned else {}
        self.fit_n = torch.zeros((), dtype=f64)
        self.fit_released = False
        # held-out rows: per chunk (tokens, chain sites, d) float32, their next tokens and windows
        self.eval_rows: list[torch.Tensor] = []
        self.eval_target: list[torch.Tensor] = []
        self.eval_window: list[torch.Tensor] = []
        self._batch: Batch | None = None
        self._held: dict[str, torch.Tensor] = {}
        self._fit_rows: dict[str, torch.Tensor] = {}
        self._eval_now: dict[str, torch.Tensor] = {}
        self._sel: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        return [(hook_name(s, self.model.arch), self._make(s)) for s in self.chain]

    def begin_batch(self, batch: Batch) -> None:
        self._batch, self._held, self._fit_rows, self._eval_now, self._sel = batch, {}, {}, {}, None

    def _selection(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fit-token mask, held-out lens-token mask, the held-out tokens' next ids) of the batch."""
        if self._sel is not None:
            return self._sel
        from spectral.probes import sample_positions

        b = self._batch
        assert b is not None
        stat = b.stat_mask.bool()
        place = b.position  # the window's place in the run (the same in every shard), not its corpus index
        fit = stat & (place % 2 == 0)[:, None]
        held = (place % 2 == 1) & (place // 2 < self.eval_windows)
        lens = stat.clone()
        lens[:, -1] = False
        lens[:, :-1] &= b.attention_mask[:, 1:].bool()
        if self.lens_positions > 0:
            lens = sample_positions(lens, b.window_index, self.lens_positions, self.seed)
        lens &= held[:, None]
        target = torch.zeros_like(b.input_ids)
        target[:, :-1] = b.input_ids[:, 1:]
        self._sel = (fit, lens, target[lens])
        return self._sel

    def _make(self, site: str) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            self._update(site, x.detach())
            return x

        return fn

    @torch.no_grad()
    def _update(self, site: str, x: torch.Tensor) -> None:
        b = self._batch
        assert b is not None
        f32 = torch.float64 if x.dtype == torch.float64 else torch.float32
        dev = x.device
        stat = b.stat_mask.to(dev).bool()
        xc = (x.to(f32) - self.centers[site].to(dev, f32)) * stat[..., None]  # zero rows outside the statistics
        for a, c in self.pairs:
            if c == site and a in self._held:
                prev = self._held.pop(a)
                self.cross[f"{a}>{c}"] += (prev.reshape(-1, prev.shape[-1]).T @ xc.reshape(-1, xc.shape[-1])).to(
                    "cpu", torch.float64
                )
                if a == self.pairs[0][0]:
                    self.cross_n += float(stat.sum())
        if any(a == site for a, _ in self.pairs):
            self._held[site] = xc
        if not self.tuned:
            return
        fit, lens, _ = self._selection()
        fr = xc[fit.to(dev)]  # (n_fit, d), centred
        self.fit_x[site] += fr.sum(0).to("cpu", torch.float64)
        if site != self.target:
            self.fit_xx[site] += (fr.T @ fr).to("cpu", torch.float64)
            self._fit_rows[site] = fr
        else:
            self.fit_n += float(fit.sum())
            for s, r in self._fit_rows.items():
                self.fit_xy[s] += (r.T @ fr).to("cpu", torch.float64)
            self._fit_rows = {}
        if bool(lens.any()):
            self._eval_now[site] = x[lens.to(dev)].detach().to("cpu", torch.float32)

    def end_batch(self) -> None:
        if self.tuned and self._eval_now and len(self._eval_now) == len(self.chain):
            _, lens, target = self._selection()
            b = self._batch
            assert b is not None
            self.eval_rows.append(torch.stack([self._eval_now[s] for s in self.chain], 1))
            self.eval_target.append(target.cpu())
            self.eval_window.append(b.window_index[:, None].expand_as(lens)[lens].cpu())
        self._batch, self._held, self._fit_rows, self._eval_now = None, {}, {}, {}

    # ---- state --------------------------------------------------------------------------
    def _rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.model.arch.d_model
        if not self.eval_rows:
            empty = torch.zeros(0, len(self.chain), d)
            return empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        win = torch.cat(self.eval_window)
        order = torch.argsort(win, stable=True)
        return torch.cat(self.eval_rows)[order], torch.cat(self.eval_target)[order], win[order]

    def release_fit(self) -> None:
        """Drop the tuned lens's fit sums (Σ x̃x̃ᵀ, Σ x̃ỹᵀ: two d x d float64 per chain site) once the translators are
        fitted: the analysis holds them no longer. The probe cannot be fitted, saved or merged after this."""
        self.fit_xx, self.fit_xy = {}, {}
        self.fit_released = True

    def state_dict(self) -> dict[str, Any]:
        if self.fit_released:
            raise RuntimeError("the joint probe's fit sums were released after the tuned lens's fit: no state to save")
        rows, target, win = self._rows()
        return {
            "chain": list(self.chain),
            "cross": dict(self.cross),
            "cross_n": self.cross_n,
            "fit_xx": dict(self.fit_xx),
            "fit_xy": dict(self.fit_xy),
            "fit_x": dict(self.fit_x),
            "fit_n": self.fit_n,
            "eval_rows": rows,
            "eval_target": target,
            "eval_window": win,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["chain"]) != list(self.chain):
            raise ValueError("cannot load a joint-moment state of another residual chain")
        self.fit_released = False
        self.cross = {k: v.clone() for k, v in state["cross"].items()}
        self.fit_xx = {k: v.clone() for k, v in state["fit_xx"].items()}
        self.fit_xy = {k: v.clone() for k, v in state["fit_xy"].items()}
        self.fit_x = {k: v.clone() for k, v in state["fit_x"].items()}
        self.cross_n, self.fit_n = state["cross_n"].clone(), state["fit_n"].clone()
        self.eval_rows, self.eval_target, self.eval_window = [], [], []
        if len(state["eval_window"]):
            self.eval_rows = [state["eval_rows"].clone()]
            self.eval_target = [state["eval_target"].clone()]
            self.eval_window = [state["eval_window"].clone()]

    def merge_state(self, state: dict[str, Any]) -> None:
        if self.fit_released:
            raise RuntimeError("the joint probe's fit sums were released after the tuned lens's fit: cannot merge")
        if list(state["chain"]) != list(self.chain):
            raise ValueError("cannot merge joint-moment states over different chains")
        for name in ("cross", "fit_xx", "fit_xy", "fit_x"):
            mine = getattr(self, name)
            for k, v in state[name].items():
                mine[k] += v
        self.cross_n += state["cross_n"]
        self.fit_n += state["fit_n"]
        if len(state["eval_window"]):
            self.eval_rows.append(state["eval_rows"].clone())
            self.eval_target.append(state["eval_target"].clone())
            self.eval_window.append(state["eval_window"].clone())

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(rows (tokens, chain, d), next tokens, windows) of the held-out lens tokens, by window."""
        rows, target, win = self._rows()
        return rows, target, win.numpy()
