"""Corpus-wide outlier statistics at every site, streamed: massive activations as the field reports them.

Sun, Chen, Kolter & Liu (2024) report per layer the top-1/2/3 activation magnitudes |h_i| against the median
|h_i|; model cards and activation logs add the per-layer max / min and the RMS over thousands of sequences.
:class:`OutlierProbe` keeps, per site and over every real token of the run (position 0 included, and also
reported apart, since that is where massive activations live):

* per dimension the running max, min and sum of squares (and the token count);
* the three largest |h_i| over all (token, dimension) entries, with their window, position, dimension and token
  id; the same over positions ≥ 1 alone; the largest at position 0 alone;
* a histogram of |h_i| by the top 16 bits of its float32 pattern (128 bins per octave), for the median: exact up
  to half a bin (≤ 0.4 %).

Nothing is stored per token; states merge exactly (max, min, sums, the top entries re-ranked), so sharded
runs give the single run's numbers. Extreme values have no sampling interval here: metrics.csv carries them
with NaN bounds.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from spectral.corpus import Batch
from spectral.models import LoadedModel
from spectral.sites import hook_name

N_BINS = 1 << 15  # float32 |h_i| by its top 16 bits: exponent and 7 mantissa bits (128 bins per octave)
TOP = 3
META = ("window", "position", "dim", "token")  # the columns of each top entry beside its signed value


def _bin(a: torch.Tensor) -> torch.Tensor:
    """Histogram bin of float32 magnitudes |h_i| ≥ 0: the top 16 bits of the IEEE pattern (sign 0, 8 exponent bits, 7
    mantissa bits), so bins are 1/128 of an octave wide (≤ 0.78 % of the value) and binning is exact bit arithmetic."""
    return (a.contiguous().view(torch.int32) >> 16).long()


def _bin_edges(b: int) -> tuple[float, float]:
    lo = torch.tensor([b << 16], dtype=torch.int32).view(torch.float32)
    hi = torch.tensor([((b + 1) << 16) - 1], dtype=torch.int32).view(torch.float32)
    return float(lo), float(hi)


def hist_median(hist: np.ndarray) -> float:
    """The median |h_i| from the histogram: the geometric centre of the bin holding the middle entry (within half a
    bin, ≤ 0.4 %, of the exact median)."""
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    b = int(np.searchsorted(np.cumsum(hist), (total + 1) / 2))
    lo, hi = _bin_edges(b)
    return math.sqrt(lo * hi) if lo > 0 else hi / 2


def _merge_top(values: np.ndarray, meta: np.ndarray, k: int = TOP) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` entries of largest |value| (ties: lower window, position, dim first): a deterministic order, so
    shards and batch sizes give the same list."""
    keep = np.isfinite(values)
    values, meta = values[keep], meta[keep]
    order = np.lexsort((meta[:, 2], meta[:, 1], meta[:, 0], -np.abs(values)))[:k]
    v, m = values[order], meta[order]
    pad = k - len(v)
    if pad:
        v = np.concatenate([v, np.full(pad, np.nan)])
        m = np.concatenate([m, np.full((pad, len(META)), -1, dtype=np.int64)])
    return v, m


@dataclass(frozen=True)
class OutlierRow:
    """One site's outlier statistics over the run (massive.csv's columns)."""

    site: str
    layer: int | None
    n_tokens: int
    value: float  # the signed h_i of the largest |h_i| (position 0 included)
    max_abs: float
    dim: int
    position: int
    window: int
    token: str
    top2: float  # the second and third largest |h_i| (any token, any dimension)
    top3: float
    median_abs: float  # median |h_i| over every token and dimension (histogram, ≤ 0.4 %)
    ratio: float  # max_abs / median_abs (Sun et al.'s top-1 ratio)
    ratio2: float
    ratio3: float
    rms: float  # sqrt(mean h_i²) over every token and dimension
    max: float  # the largest and the smallest h_i (signed)
    min: float
    pos0_max: float  # the largest |h_i| at position 0 and its dimension
    pos0_dim: int
    rest_max: float  # the largest |h_i| at positions ≥ 1, its dimension, position and token
    rest_dim: int
    rest_position: int
    rest_token: str


class OutlierProbe:
    """Streamed per-site outlier statistics over every real token (see the module docstring)."""

    def __init__(self, model: LoadedModel, sites: tuple[str, ...]) -> None:
        self.model, self.sites = model, tuple(sites)
        d = model.arch.d_model
        f64 = torch.float64
        S = len(self.sites)
        self.count = torch.zeros(S, dtype=f64)
        self.pos0_count = torch.zeros(S, dtype=f64)
        self.dim_max = torch.full((S, d), -math.inf, dtype=f64)
        self.dim_min = torch.full((S, d), math.inf, dtype=f64)
        self.dim_sumsq = torch.zeros(S, d, dtype=f64)
        self.hist = torch.zeros(S, N_BINS, dtype=torch.int64)
        # per site and list (0: all positions, 1: positions >= 1, 2: position 0): TOP signed values and their META
        self.top = np.full((S, 3, TOP), np.nan)
        self.top_meta = np.full((S, 3, TOP, len(META)), -1, dtype=np.int64)
        self._batch: Batch | None = None

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        return [(hook_name(s, self.model.arch), self._make(i)) for i, s in enumerate(self.sites)]

    def begin_batch(self, batch: Batch) -> None:
        self._batch = batch

    def end_batch(self) -> None:
        self._batch = None

    def _make(self, i: int) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            self._update(i, x.detach())
            return x

        return fn

    @torch.no_grad()
    def _update(self, i: int, x: torch.Tensor) -> None:
        b = self._batch
        assert b is not None
        h = x.detach().float()  # the bit-level histogram reads float32
        real = b.attention_mask.to(h.device).bool()  # every real token, position 0 included
        full = bool(real.all())  # the usual case: no padding, no masking passes
        self.count[i] += float(real.sum())
        self.pos0_count[i] += float(real[:, 0].sum())
        if full:
            hm, a = h, h.abs()
            self.dim_max[i] = torch.maximum(self.dim_max[i], h.amax((0, 1)).double().cpu())
            self.dim_min[i] = torch.minimum(self.dim_min[i], h.amin((0, 1)).double().cpu())
        else:
            m = real[..., None]
            neg, pos = torch.tensor(-math.inf, device=h.device), torch.tensor(math.inf, device=h.device)
            self.dim_max[i] = torch.maximum(self.dim_max[i], torch.where(m, h, neg).amax((0, 1)).double().cpu())
            self.dim_min[i] = torch.minimum(self.dim_min[i], torch.where(m, h, pos).amin((0, 1)).double().cpu())
            hm = h * m
            a = hm.abs()
        # Σ h_i² per window in float32 (≤ one window of tokens), then over windows in float64: the same sums
        # whatever windows share a batch or a shard
        self.dim_sumsq[i] += (hm * hm).sum(1).double().sum(0).cpu()
        counted = a if full else a[real]
        self.hist[i] += torch.bincount(_bin(counted).reshape(-1), minlength=N_BINS).cpu()
        ids = b.input_ids
        widx = b.window_index
        d = h.shape[2]
        found = {}
        for lst, part, offset in ((1, a[:, 1:], 1), (2, a[:, :1], 0)):
            if part.shape[1] == 0:
                continue
            flat = part.reshape(-1)
            k = min(TOP, flat.numel())
            vals, where = flat.topk(k)
            ties = torch.nonzero(flat >= vals[-1]).flatten()  # every entry tied with the k-th: the merge picks
            if len(ties) <= 64 * TOP:  # among them by position, so batches and shards agree
                where, vals = ties, flat[ties]
            where = where.cpu()
            w, rest = where // (part.shape[1] * d), where % (part.shape[1] * d)
            p, dim = rest // d + offset, rest % d
            good = (vals.cpu() > 0).numpy()  # padded entries are zero: never a top entry
            signed = h[w, p, dim].double().cpu().numpy()[good]
            meta = np.stack([widx[w].numpy(), p.numpy(), dim.numpy(), ids[w, p].numpy()], 1)[good].astype(np.int64)
            found[lst] = (signed, meta)
            self.top[i, lst], self.top_meta[i, lst] = _merge_top(
                np.concatenate([self.top[i, lst], signed]), np.concatenate([self.top_meta[i, lst], meta])
            )
        # every position: the best of the two lists' candidates (the top 3 overall lie among them)
        cand = [self.top[i, 0]] + [v for v, _ in found.values()]
        cand_m = [self.top_meta[i, 0]] + [mm for _, mm in found.values()]
        self.top[i, 0], self.top_meta[i, 0] = _merge_top(np.concatenate(cand), np.concatenate(cand_m))

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "sites": list(self.sites),
            "count": self.count,
            "pos0_count": self.pos0_count,
            "dim_max": self.dim_max,
            "dim_min": self.dim_min,
            "dim_sumsq": self.dim_sumsq,
            "hist": self.hist,
            "top": torch.from_numpy(self.top.copy()),
            "top_meta": torch.from_numpy(self.top_meta.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["sites"]) != list(self.sites):
            raise ValueError("cannot load an outlier state of other sites")
        for k in ("count", "pos0_count", "dim_max", "dim_min", "dim_sumsq", "hist"):
            setattr(self, k, state[k].clone())
        self.top, self.top_meta = state["top"].numpy().copy(), state["top_meta"].numpy().copy()

    def merge_state(self, state: dict[str, Any]) -> None:
        if list(state["sites"]) != list(self.sites):
            raise ValueError("cannot merge outlier states over different sites")
        self.count += state["count"]
        self.pos0_count += state["pos0_count"]
        self.dim_max = torch.maximum(self.dim_max, state["dim_max"])
        self.dim_min = torch.minimum(self.dim_min, state["dim_min"])
        self.dim_sumsq += state["dim_sumsq"]
        self.hist += state["hist"]
        top, meta = state["top"].numpy(), state["top_meta"].numpy()
        for i in range(len(self.sites)):
            for lst in range(3):
                self.top[i, lst], self.top_meta[i, lst] = _merge_top(
                    np.concatenate([self.top[i, lst], top[i, lst]]),
                    np.concatenate([self.top_meta[i, lst], meta[i, lst]]),
                )

    # ---- results ------------------------------------------------------------------------
    def rows(self) -> list[OutlierRow]:
        from spectral.sites import site_layer

        out = []
        dec = self.model.tokenizer.decode
        for i, site in enumerate(self.sites):
            n = float(self.count[i])
            if n == 0:
                continue
            med = hist_median(self.hist[i].numpy())
            top, meta = self.top[i], self.top_meta[i]
            a = np.abs(top[0])

            def tok(m: np.ndarray) -> str:
                return dec([int(m[3])]) if m[3] >= 0 else ""

            def ratio(v: float, med: float = med) -> float:
                return v / med if med > 0 else float("inf")

            d = self.dim_sumsq.shape[1]
            out.append(
                OutlierRow(
                    site=site,
                    layer=site_layer(site),
                    n_tokens=int(n),
                    value=float(top[0, 0]),
                    max_abs=float(a[0]),
                    dim=int(meta[0, 0, 2]),
                    position=int(meta[0, 0, 1]),
                    window=int(meta[0, 0, 0]),
                    token=tok(meta[0, 0]),
                    top2=float(a[1]),
                    top3=float(a[2]),
                    median_abs=med,
                    ratio=ratio(float(a[0])),
                    ratio2=ratio(float(a[1])),
                    ratio3=ratio(float(a[2])),
                    rms=math.sqrt(float(self.dim_sumsq[i].sum()) / (n * d)),
                    max=float(self.dim_max[i].max()),
                    min=float(self.dim_min[i].min()),
                    pos0_max=float(abs(top[2, 0])) if np.isfinite(top[2, 0]) else float("nan"),
                    pos0_dim=int(meta[2, 0, 2]),
                    rest_max=float(abs(top[1, 0])) if np.isfinite(top[1, 0]) else float("nan"),
                    rest_dim=int(meta[1, 0, 2]),
                    rest_position=int(meta[1, 0, 1]),
                    rest_token=tok(meta[1, 0]),
                )
            )
        return out


OUTLIER_METRICS = {  # metrics.csv name -> OutlierRow field (extremes: NaN bounds)
    "act_max_abs": "max_abs",
    "act_top1_ratio": "ratio",
    "act_top2_ratio": "ratio2",
    "act_top3_ratio": "ratio3",
    "act_median_abs": "median_abs",
    "act_rms": "rms",
    "act_max_abs_pos0": "pos0_max",
    "act_max_abs_rest": "rest_max",
}


def outlier_csv(rows: list[OutlierRow]) -> str:
    """massive.csv: one line per site."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [f.name for f in fields(OutlierRow)]
    w.writerow(names)
    for r in rows:
        d = asdict(r)
        w.writerow(["" if d[n] is None else (f"{d[n]:.6g}" if isinstance(d[n], float) else d[n]) for n in names])
    return buf.getvalue()
