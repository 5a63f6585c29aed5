"""One condition of a run: calibrate, stream the windows through the model with every probe,
and (for the trained model) run the interventions. Returns a battery ``Measurement``.

Conditions: ``trained``; controls ``random_init`` (R: the seeded random-weight twin),
``shuffled`` (S: tokens permuted within each window) and ``permuted`` (P: position ids permuted).
"""

import dataclasses
from collections.abc import Callable

import torch

from spectral.analysis.battery import Measurement
from spectral.analysis.controls import permuted_positions, shuffle_windows
from spectral.analysis.interventions import InterventionResult, intervene, nll_per_window
from spectral.analysis.spectrum import unembedding_bands
from spectral.capture import accumulate, calibrate, new_bank
from spectral.config import ExperimentConfig
from spectral.corpus import TokenWindows
from spectral.models import LoadedModel
from spectral.probes import CosineProbe, HeadProbe, LensProbe, TypeProbe


def measure(
    model: LoadedModel,
    windows: TokenWindows,
    sites: tuple[str, ...],
    cfg: ExperimentConfig,
    condition: str,
    progress: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Measurement:
    cap, an = cfg.capture, cfg.analysis
    positions = permuted_positions(cfg.seed, windows.has_bos) if condition == "permuted" else None
    if condition == "shuffled":
        windows = shuffle_windows(windows, cfg.seed)
    calib = calibrate(model, windows, sites, cap.batch_size, cap.exclude_first, positions, cap.nonfinite)
    thresholds = {s: an.sink_factor * v for s, v in calib.median_norms.items()}
    bank = new_bank(model, sites, cap.moment_buckets, calib.centers, thresholds)
    bands: dict[int, list[torch.Tensor]] = {}
    lm = model.arch.has_unembedding and model.arch.is_causal
    if model.arch.has_unembedding:
        W_U, _ = model.unembedding()
        bands = {K: unembedding_bands(W_U, K) for K in an.bands if K <= model.arch.d_model}
    resid = tuple(s for s in sites if s.startswith("resid_post."))
    lens = None
    if lm and bands:
        dirs = {s: calib.centers[s] for s in resid}
        lens = LensProbe(model, resid, dirs, bands[an.bands[0]])
    tail = bands[an.bands[0]][-1] if bands else None
    heads = HeadProbe(model, cap.moment_buckets, tail)
    types = TypeProbe(model, windows, resid, an.max_types)
    cosines = CosineProbe(model, resid, cap.moment_buckets) if an.layer_cosine and len(resid) > 1 else None
    probes = tuple(p for p in (lens, heads, types, cosines) if p is not None)
    accumulate(
        model, windows, bank, cap.batch_size, cap.exclude_first, progress, probes, positions, cap.nonfinite, on_batch
    )

    results: list[InterventionResult] = []
    if condition in ("trained", "random_init") and lm and bands and an.intervention_windows > 0:
        sub = dataclasses.replace(
            windows,
            ids=windows.ids[: an.intervention_windows],
            window_index=windows.window_index[: an.intervention_windows],
        )
        clean = nll_per_window(model, sub, cap.batch_size, exclude_first=cap.exclude_first)
        K = an.bands[0]
        for site in resid:
            mu = bank[site].total().sum_h
            bases = {"carrier": (mu / mu.norm()).float()[:, None]}
            bases.update({f"band_k{K}_b{i}": U.float() for i, U in enumerate(bands[K])})
            for target, basis in bases.items():
                results.append(
                    intervene(model, sub, site, basis, target, cap.batch_size, an.n_boot, cfg.seed, an.ci_level, clean)
                )
    return Measurement(condition, bank, bands, lens, heads, types, results, cosines)
