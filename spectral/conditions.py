"""One condition of a run: calibrate, stream the windows through the model with every probe,
and (for the trained model) run the interventions. Gives a battery
``Measurement``.

Conditions: ``trained``; the nulls ``random_init.s<seed>`` (a member of the R ensemble of seeded
random-weight twins), ``random_scaled.s<seed>`` (R rescaled to the trained norms) and ``permuted_weights``
(W, with ``permuted_weights.s<seed>`` its further permutations), each on the first ``null_windows`` windows
with the residual stream only, plus the heads for R's members and W's first permutation; the controls
``shuffled`` (S: tokens permuted within each window) and ``permuted`` (P: position ids permuted).

A :class:`ConditionCapture` is resumable and mergeable: its whole state (calibration, the
statistics bank, every probe, the number of batches done) is a dict of tensors and plain values
(``state_dict``) that ``torch.load(weights_only=True)`` reads back without unpickling code.
Calibration and the choice of token types always come from the run's *global* windows, so a
shard that captures only windows ``i::n`` holds statistics that merge exactly with the others.
Interventions need the full-corpus carrier, so they run once the capture is complete (after a
merge for sharded runs).
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from spectral.analysis.battery import Measurement
from spectral.analysis.controls import permuted_positions, shuffle_windows
from spectral.analysis.interventions import InterventionResult, mean_ablate
from spectral.analysis.jacobian import BandTransfer
from spectral.analysis.spectrum import split_bands
from spectral.backends import backend_of
from spectral.capture import Calibration, accumulate, calibrate, new_bank, select_sites
from spectral.config import ExperimentConfig
from spectral.corpus import TokenWindows
from spectral.depth import DepthProbe
from spectral.interventions import can_run_tails, intervene, nll_per_window, tail_sweep
from spectral.joint import JointProbe, chain_sites
from spectral.models import LoadedModel
from spectral.outliers import OutlierProbe
from spectral.predictions.base import is_random_member, is_scaled_member, is_w_member
from spectral.probes import CosineProbe, HeadProbe, LensProbe, TypeProbe
from spectral.sites import site_kind, site_layer
from spectral.stats import StatsBank
from spectral.tuned_lens import TunedLens, fit_tuned_lens, score

STATE_VERSION = 7  # 2: packed float32 moments, stream aliases; 3: contiguous buckets; 4: window columns; 5: depth;
# 6: outliers, joint moments (layer linearity, tuned lens), lens KL columns; 7: no heads on W's further members and
# the rescaled R


def is_null_condition(condition: str) -> bool:
    """An R ensemble member (``random_init.s<seed>``), a rescaled R member (``random_scaled.s<seed>``) or a W
    member (``permuted_weights``, ``permuted_weights.s<seed>``)."""
    return is_random_member(condition) or is_scaled_member(condition) or is_w_member(condition)


def shard_windows(windows: TokenWindows, shard: tuple[int, int]) -> TokenWindows:
    """The disjoint share ``i::n`` of the windows (shard ``i`` of ``n``)."""
    i, n = shard
    return windows.select(slice(i, None, n))


def evenly_spaced(layers: list[int], n: int) -> list[int]:
    """``n`` of ``layers`` evenly spaced from the first to the last (all of them for n = 0 or n ≥ their count)."""
    if n == 0 or n >= len(layers):
        return layers
    return sorted({layers[round(i * (len(layers) - 1) / max(n - 1, 1))] for i in range(n)})


class ConditionCapture:
    """Capture state of one condition (see the module docstring)."""

    def __init__(
        self,
        model: LoadedModel,
        windows: TokenWindows,
        sites: tuple[str, ...],
        cfg: ExperimentConfig,
        condition: str,
        calibration: Calibration | None = None,
    ) -> None:
        cap, an = cfg.capture, cfg.analysis
        # null members (each R seed, W): the residual stream and the heads on the first null_windows windows
        self.null = is_null_condition(condition)
        if self.null:
            windows = windows.head(cfg.null_windows)
        self.control = condition in ("shuffled", "permuted") or self.null  # no lens, cosine or intervention probes
        if self.control and tuple(cap.control_sites) != ("same",):
            sites = select_sites(model.arch, cap.control_sites)
        self.model, self.cfg, self.condition, self.sites = model, cfg, condition, sites
        self.positions = permuted_positions(cfg.seed, windows.has_bos) if condition == "permuted" else None
        self.windows = shuffle_windows(windows, cfg.seed) if condition == "shuffled" else windows
        self.backend = backend_of(model, cap.backend)  # "auto": the fast path where it serves the family
        if self.backend.name == "fast":
            from spectral.fastpath import check_sites

            check_sites(model, sites)
        self.calib = calibration or calibrate(
            model,
            self.windows,
            sites,
            cap.batch_size,
            cap.exclude_first,
            self.positions,
            cap.nonfinite,
            self.backend,
            cap.calibration_windows,
            self._ablation_sites(model, sites) if self._wants_lens(model) else (),
        )
        thresholds = {s: an.sink_factor * v for s, v in self.calib.median_norms.items()}
        self.bank = new_bank(
            model, sites, cap.moment_buckets, self.calib.centers, thresholds, getattr(torch, cap.moment_dtype)
        )
        self.bands: dict[int, list[torch.Tensor]] = {}
        self.lm = model.arch.has_unembedding and model.arch.is_causal
        if model.arch.has_unembedding:
            U = model.unembedding_basis()
            self.bands = {K: split_bands(U, K) for K in an.bands if K <= model.arch.d_model}
        self.resid = tuple(s for s in sites if s.startswith("resid_post."))
        self.lens: LensProbe | None = None
        if self.lm and self.bands and not self.control:
            dirs = {s: self.calib.centers[s] for s in self.resid}
            self.lens = LensProbe(
                model,
                self.resid,
                dirs,
                split_bands(model.unembedding_basis(centred=True), an.bands[0]),  # the margin's centred bands
                an.lens_positions,
                cfg.seed,
                self.calib.top_pcs,
                self.calib.centers,
            )
        elif self.lm and self.bands and is_random_member(condition):
            # R's members: the final site's margin only (prediction 10's ensemble null of its bounded share)
            self.lens = LensProbe(
                model, (), {}, split_bands(model.unembedding_basis(centred=True), an.bands[0]), an.lens_positions,
                cfg.seed,
            )  # fmt: skip
        tail = self.bands[an.bands[0]][-1] if self.bands else None
        # attention patterns and per-head outputs: the bridge, or the fast path where it serves the family. Of the
        # nulls, R's members (the heads' nulls of predictions 6 and 8) and W's first permutation (the figures);
        # W's further permutations and the rescaled R are read for growth and the carrier only (predictions 1, 2)
        heads_ok = self.backend.serves_heads
        heads_read = not self.control or is_random_member(condition) or condition == "permuted_weights"
        self.heads = (
            HeadProbe(model, cap.moment_buckets, tail, an.sink_positions, cfg.seed) if heads_ok and heads_read else None
        )
        self.types = TypeProbe(model, self.windows, self.resid, an.max_types)
        self.cosines = (
            CosineProbe(model, self.resid, cap.moment_buckets)
            if an.layer_cosine and len(self.resid) > 1 and not self.control
            else None
        )
        resid_all = [f"resid_post.{layer}" for layer in range(model.arch.n_layers)]
        self.depth = (
            DepthProbe(model, self.resid) if not self.null and all(x in self.resid for x in resid_all) else None
        )
        trained = condition == "trained"
        self.outliers = OutlierProbe(model, self.bank.own_sites) if trained and an.outliers else None
        chain = chain_sites(sites, model.arch.n_layers)
        tuned = (
            self.lens is not None
            and an.tuned_lens_windows > 0
            and chain[-1:] == (f"resid_post.{model.arch.n_layers - 1}",)
        )
        self.joint = (
            JointProbe(
                model,
                chain,
                self.calib.centers,
                an.lens_positions,
                cfg.seed,
                an.tuned_lens_windows,
                tuned,
                an.layer_linearity,
            )  # fmt: skip
            if trained and len(chain) >= 2 and (an.layer_linearity or tuned)
            else None
        )
        self.tuned: TunedLens | None = None
        self.tuned_table: tuple[Any, Any] | None = None
        self.batches_done = 0
        self.complete = False
        self.interventions: list[InterventionResult] = []
        self.modulation: list[InterventionResult] = []  # prediction 4's mean ablations, read on the output
        self.jacobian: BandTransfer | None = None

    def _ablation_sites(self, model: LoadedModel, sites: tuple[str, ...]) -> tuple[str, ...]:
        """resid_post sites of the middle layers: where prediction 4's mean ablations are read."""
        from spectral.predictions.base import middle_layers

        mid = set(middle_layers(model.arch.n_layers, self.cfg.verdicts))
        return tuple(x for x in sites if site_kind(x) == "resid_post" and site_layer(x) in mid)

    def _wants_lens(self, model: LoadedModel) -> bool:
        """The logit lens runs on a causal LM with an unembedding, outside the controls and nulls."""
        return model.arch.has_unembedding and model.arch.is_causal and not self.control

    def _probes(self) -> dict[str, Any]:
        named = {
            "lens": self.lens,
            "heads": self.heads,
            "types": self.types,
            "cosines": self.cosines,
            "depth": self.depth,
            "outliers": self.outliers,
            "joint": self.joint,
        }
        return {k: p for k, p in named.items() if p is not None}

    # ---- capture ------------------------------------------------------------------------
    def run(
        self,
        shard: tuple[int, int] = (0, 1),
        progress: str | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        checkpoint: Callable[["ConditionCapture"], None] | None = None,
        checkpoint_every: int = 0,
    ) -> None:
        """Capture this shard's windows from where the state stands; ``checkpoint(self)`` is called
        every ``checkpoint_every`` windows (rounded up to whole batches) and once at the end."""
        cap = self.cfg.capture
        every = math.ceil(checkpoint_every / cap.batch_size) if checkpoint_every > 0 else 0

        def after(done: int, total: int) -> None:
            self.batches_done = done
            if checkpoint is not None and every and done % every == 0 and done < total:
                checkpoint(self)
            if on_batch is not None:
                on_batch(done, total)

        accumulate(
            self.model,
            shard_windows(self.windows, shard),
            self.bank,
            cap.batch_size,
            cap.exclude_first,
            progress,
            tuple(self._probes().values()),
            self.positions,
            cap.nonfinite,
            after,
            start_batch=self.batches_done,
            backend=self.backend,
        )
        self.complete = True
        if checkpoint is not None:
            checkpoint(self)

    def intervene(self) -> None:
        """ΔNLL of projecting the carrier (full-corpus mean direction) or each W_U band out of resid_post
        at ``intervention_layers`` evenly spaced layers, on the first ``intervention_windows`` windows
        (the trained model only: no verdict reads a random twin's ΔNLL, and the sweep is the costliest analysis);
        scored on ``lens_positions`` sampled positions per window where the edit
        runs only the layers after its site."""
        cap, an = self.cfg.capture, self.cfg.analysis
        self.interventions = []
        if self.condition != "trained" or not (self.lm and self.bands):
            return
        if an.intervention_windows <= 0:
            return
        w = self.windows
        sub = w.select(slice(0, an.intervention_windows))
        K = an.bands[0]
        L = self.model.arch.n_layers
        n = an.intervention_layers
        chosen = [layer for layer in evenly_spaced(list(range(L)), n) if f"resid_post.{layer}" in self.resid]

        def bases(layer: int) -> dict[str, Any]:
            tot = self.bank[f"resid_post.{layer}"].total()
            mean = tot.sum_h / tot.n  # the corpus mean of h at this site
            carrier = mean / mean.norm()
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + layer)
            rnd = torch.randn(mean.shape[0], generator=g, dtype=torch.float64)
            rnd = rnd / rnd.norm()
            out: dict[str, Any] = {"carrier": carrier.float()[:, None]}
            out.update({f"band_k{K}_b{i}": U.float() for i, U in enumerate(self.bands[K])})
            if can_run_tails(self.model):  # mean ablations: the carrier's, and a random direction's (its null)
                out["ablate_carrier"] = mean_ablate(carrier, float(mean @ carrier))
                out["ablate_random"] = mean_ablate(rnd, float(mean @ rnd))
            return out

        if can_run_tails(self.model):  # each edit runs only the layers after its site
            self.interventions = tail_sweep(
                self.model, sub, chosen, bases, cap.batch_size, an.n_boot, self.cfg.seed, an.ci_level,
                cap.exclude_first, an.lens_positions,
            )  # fmt: skip
            return
        clean = nll_per_window(self.model, sub, cap.batch_size, exclude_first=cap.exclude_first)
        for layer in chosen:
            for target, basis in bases(layer).items():
                self.interventions.append(
                    intervene(
                        self.model, sub, f"resid_post.{layer}", basis, target, cap.batch_size, an.n_boot,
                        self.cfg.seed, an.ci_level, clean, cap.exclude_first,
                    )
                )  # fmt: skip

    def modulate(self) -> None:
        """Prediction 4 read on the model's own output: at ``modulation_layers`` middle layers, mean-ablate
        (amplitude set to its calibration mean) the carrier (the calibration mean's direction), the top centred
        principal direction (of the calibration set) and ``modulation_directions`` random directions at
        resid_post.l, run only the layers after it, and keep each window's KL(clean ‖ edited) and ΔNLL on
        ``modulation_positions`` sampled positions (paired: the same positions for every pass). The trained
        model only; needs a family whose tail can run alone."""
        from spectral.predictions.base import middle_layers

        cap, an = self.cfg.capture, self.cfg.analysis
        self.modulation = []
        if self.condition != "trained" or not self.lm or an.modulation_windows <= 0:
            return
        if not can_run_tails(self.model):
            return
        mid = evenly_spaced(middle_layers(self.model.arch.n_layers, self.cfg.verdicts), an.modulation_layers)
        mid = [layer for layer in mid if f"resid_post.{layer}" in self.calib.top_pcs]
        if not mid:
            return
        sub = self.windows.select(slice(0, an.modulation_windows))

        def bases(layer: int) -> dict[str, Any]:
            site = f"resid_post.{layer}"
            c = self.calib.centers[site].double().cpu()
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 31 * layer + 5)
            dirs = {"carrier": c / c.norm(), "toppc": self.calib.top_pcs[site].double().cpu()}
            for j in range(an.modulation_directions):
                r = torch.randn(c.shape[0], generator=g, dtype=torch.float64)
                dirs[f"random{j}"] = r / r.norm()
            return {f"ablate_{k}": mean_ablate(v, float(c @ v)) for k, v in dirs.items()}

        self.modulation = tail_sweep(
            self.model, sub, mid, bases, cap.batch_size, an.n_boot, self.cfg.seed, an.ci_level,
            cap.exclude_first, an.modulation_positions,
        )  # fmt: skip

    def transfer(self) -> None:
        """The Jacobian (JVP) band transfer of attention and the MLP at every layer (prediction 7), on the
        first ``jacobian_windows`` windows cut to ``jacobian_positions`` positions; the trained model and each R
        seed (R's MLPs measured the same way are the null; the isotropic chance level is reported). Recomputed
        on resume (seeded)."""
        from spectral import jacobian

        an = self.cfg.analysis
        self.jacobian = None
        if not (self.condition == "trained" or is_random_member(self.condition)):
            return  # R's MLPs measured the same way are prediction 7's null
        if not self.bands or an.jacobian_windows <= 0:
            return
        if jacobian.supports(self.model) is not None:
            return
        w = self.windows.select(slice(0, an.jacobian_windows))
        if an.jacobian_positions > 0:
            w = dataclasses.replace(w, ids=w.ids[:, : an.jacobian_positions + int(w.has_bos)])
        self.jacobian = jacobian.band_transfer(
            self.model, w, self.bands[an.bands[0]], n_windows=an.jacobian_windows, seed=self.cfg.seed,
            exclude_first=self.cfg.capture.exclude_first,
        )  # fmt: skip

    def tune(self) -> None:
        """The approximate tuned lens: translators fitted on the joint probe's fit windows, scored on its held-out
        ones (recomputed on resume: deterministic). Once per capture: the fit sums are released after the fit."""
        self.tuned, self.tuned_table = None, None
        j = self.joint
        if j is None or not j.tuned:
            return
        self.tuned = fit_tuned_lens(j, self.cfg.analysis.tuned_lens_ridge, self.cfg.model.name)
        j.release_fit()  # the fit sums are read once (the saved state keeps them for a resume)
        if self.tuned is None:
            return
        rows, target, windows = j.held_out()
        self.tuned_table = score(self.tuned, self.model, rows, target, windows, j.chain)

    def measurement(self) -> Measurement:
        return Measurement(
            self.condition,
            self.bank,
            self.bands,
            self.lens,
            self.heads,
            self.types,
            self.interventions,
            self.cosines,
            self.depth,
            self.jacobian,
            self.modulation,
            self.outliers,
            self.joint,
            self.tuned,
            self.tuned_table,
        )

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "condition": self.condition,
            "sites": list(self.sites),
            "batches_done": self.batches_done,
            "complete": self.complete,
            "calibration": self.calib.state_dict(),
            "bank": self.bank.state_dict(),
            "probes": {k: p.state_dict() for k, p in self._probes().items()},
        }

    def _check(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"capture state version {state.get('version')} is not {STATE_VERSION}")
        if state["condition"] != self.condition or list(state["sites"]) != list(self.sites):
            raise ValueError(f"capture state of {state['condition']} does not fit condition {self.condition}")
        if set(state["probes"]) != set(self._probes()):
            raise ValueError("capture state holds other probes than this configuration makes")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (made by this condition with the same config)."""
        self._check(state)
        self.bank = StatsBank.from_state_dict(state["bank"], self.model.device)
        for k, p in self._probes().items():
            p.load_state_dict(state["probes"][k])
        self.batches_done, self.complete = int(state["batches_done"]), bool(state["complete"])

    def merge_state(self, state: dict[str, Any]) -> None:
        """Add another shard's complete state (exact: sums add, per-window rows concatenate)."""
        self._check(state)
        if not state["complete"]:
            raise ValueError(f"shard state of {self.condition} is incomplete ({state['batches_done']} batches)")
        self.bank.merge(StatsBank.from_state_dict(state["bank"]))
        for k, p in self._probes().items():
            p.merge_state(state["probes"][k])
