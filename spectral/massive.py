"""Massive activations (Sun, Chen, Kolter & Liu 2024): the few dimensions of the residual stream whose
values reach hundreds or thousands of times the median magnitude, usually at the first token and a few
delimiters.

A run measures them at every site over all its windows (:class:`spectral.outliers.OutlierProbe`, written to
``massive.csv``). :func:`massive_activations` is the same measurement on its own, for a model and some windows
outside a run (the note's per-model check, tests): one streamed pass, every resid_post layer, position 0 kept.
A ratio to the median in the hundreds or more is a massive activation in Sun et al.'s sense (they report
~1e3–1e4 for LLaMA2-7B, with 100× the median as their working cut).
"""

from __future__ import annotations

from spectral.capture import accumulate, new_bank
from spectral.corpus import TokenWindows
from spectral.models import LoadedModel
from spectral.outliers import OutlierProbe, OutlierRow, outlier_csv

MassiveRow = OutlierRow


def massive_activations(
    model: LoadedModel, windows: TokenWindows, n_windows: int | None = None, batch_size: int = 4
) -> list[OutlierRow]:
    """The outlier statistics of each resid_post layer over the first ``n_windows`` windows (all by default)."""
    sites = tuple(f"resid_post.{layer}" for layer in range(model.arch.n_layers))
    sub = windows if n_windows is None else windows.select(slice(0, n_windows))
    probe = OutlierProbe(model, sites)
    bank = new_bank(model, sites[:1], 2)  # the smallest bank: accumulate needs one
    accumulate(model, sub, bank, batch_size, exclude_first=False, probes=(probe,))
    return probe.rows()


def massive_csv(rows: list[OutlierRow]) -> str:
    return outlier_csv(rows)
