"""Massive activations (Sun, Chen, Kolter & Liu 2024): the few dimensions of the residual stream whose
values reach hundreds or thousands of times the median magnitude, usually at the first token and a few
delimiters. Measured here per resid_post layer on a handful of windows (position 0 included, since that
is where they live), to name each model's dimensions and magnitudes beside its carrier statistics.

For each layer: the largest |h_i| over every token and dimension, where it sits (dimension, position,
token), the median |h_i| of the layer, their ratio, and the same for position 0 alone and for the other
positions alone. A ratio in the hundreds or more is a massive activation in Sun et al.'s sense (they report
~1e3–1e4 for LLaMA2-7B, with 100× the median as their working cut).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields

import torch

from spectral.capture import capture_activations
from spectral.corpus import TokenWindows, iter_batches
from spectral.models import LoadedModel


@dataclass(frozen=True)
class MassiveRow:
    """The largest activation of one resid_post layer."""

    layer: int
    dim: int  # the dimension of the largest |h_i| over all tokens
    position: int  # its position in the window (0 = the first token / BOS)
    token: str
    value: float  # h_i there (signed)
    median_abs: float  # median |h_i| over every token and dimension of the layer
    ratio: float  # |value| / median_abs
    pos0_max: float  # the largest |h_i| at position 0
    rest_max: float  # the largest |h_i| at positions ≥ 1
    rest_dim: int  # its dimension


def massive_activations(model: LoadedModel, windows: TokenWindows, n_windows: int = 4) -> list[MassiveRow]:
    """The largest activation of each resid_post layer over the first ``n_windows`` windows (position 0 kept)."""
    sites = tuple(f"resid_post.{layer}" for layer in range(model.arch.n_layers))
    sub = windows.select(slice(0, n_windows))
    acts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    ids: list[torch.Tensor] = []
    for batch in iter_batches(sub, n_windows, exclude_first=False):
        got = capture_activations(model, batch, sites)
        for s in sites:
            acts[s].append(got[s])
        ids.append(batch.input_ids)
    tok = torch.cat(ids)  # (W, T)
    out = []
    for layer, s in enumerate(sites):
        h = torch.cat(acts[s]).double()  # (W, T, d)
        a = h.abs()
        flat = int(a.argmax())
        w, rest = divmod(flat, a.shape[1] * a.shape[2])
        pos, dim = divmod(rest, a.shape[2])
        med = float(a.median())
        rest_a = a[:, 1:] if a.shape[1] > 1 else a
        r_flat = int(rest_a.argmax())
        out.append(
            MassiveRow(
                layer=layer,
                dim=dim,
                position=pos,
                token=model.tokenizer.decode([int(tok[w, pos])]),
                value=float(h[w, pos, dim]),
                median_abs=med,
                ratio=float(a[w, pos, dim]) / med if med > 0 else float("inf"),
                pos0_max=float(a[:, 0].max()),
                rest_max=float(rest_a.max()),
                rest_dim=r_flat % a.shape[2],
            )
        )
    return out


def massive_csv(rows: list[MassiveRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [f.name for f in fields(MassiveRow)]
    w.writerow(names)
    for r in rows:
        d = asdict(r)
        w.writerow([f"{d[n]:.6g}" if isinstance(d[n], float) else d[n] for n in names])
    return buf.getvalue()
