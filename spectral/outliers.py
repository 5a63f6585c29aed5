"""Corpus-wide outlier statistics at every site, streamed: massive activations as the field reports them.

Sun, Chen, Kolter & Liu (2024) report per layer the top-1/2/3 activation magnitudes |h_i| against the median
|h_i|; model cards and activation logs add the per-layer max / min and the RMS over thousands of sequences.
:class:`OutlierProbe` keeps, per site and over every real token of the run (position 0 included, and also
reported apart, since that is where massive activations live):

* per dimension the running max, min and sum of squares (and the token count);
* the three largest |h_i| over all (token, dimension) entries, with their window, position, dimension and token
  id; the same over positions ≥ 1 alone; the largest at position 0 alone;
* a histogram of |h_i| in log bins (:data:`BINS_PER_DECADE` per decade), for the median: exact up to the bin
  width (half a bin: ≈ ±0.6 % at 200 bins per decade).

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

BINS_PER_DECADE = 200
LOG_MIN, LOG_MAX = -10, 8  # |h_i| below 1e-10 (zeros included) go to bin 0; above 1e8 to the last bin
N_BINS = (LOG_MAX - LOG_MIN) * BINS_PER_DECADE + 2
TOP = 3
META = ("window", "position", "dim", "token")  # the columns of each top entry beside its signed value


def _bin(a: torch.Tensor) -> torch.Tensor:
    """Histogram bin of |h_i| values (float32 or float64 tensor of magnitudes)."""
    idx = torch.floor((torch.log10(a.clamp_min(10.0**LOG_MIN)) - LOG_MIN) * BINS_PER_DECADE).long() + 1
    idx = torch.where(a < 10.0**LOG_MIN, torch.zeros_like(idx), idx)
    return idx.clamp(0, N_BINS - 1)


def hist_median(hist: np.ndarray) -> float:
    """The median |h_i| from the histogram: the geometric centre of the bin holding the middle entry."""
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    b = int(np.searchsorted(np.cumsum(hist), (total + 1) / 2))
    if b == 0:
        return 0.0
    return float(10.0 ** (LOG_MIN + (b - 1 + 0.5) / BINS_PER_DECADE))


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
    median_abs: float  # median |h_i| over every token and dimension (histogram, ±0.6 %)
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
        h = x.float() if x.dtype != torch.float64 else x
        real = b.attention_mask.to(h.device).bool()  # every real token, position 0 included
        m = real[..., None]
        self.count[i] += float(real.sum())
        self.pos0_count[i] += float(real[:, 0].sum())
        neg, pos = torch.tensor(-math.inf, device=h.device), torch.tensor(math.inf, device=h.device)
        self.dim_max[i] = torch.maximum(self.dim_max[i], torch.where(m, h, neg).amax((0, 1)).double().cpu())
        self.dim_min[i] = torch.minimum(self.dim_min[i], torch.where(m, h, pos).amin((0, 1)).double().cpu())
        hm = h * m
        self.dim_sumsq[i] += (hm.double() ** 2).sum((0, 1)).cpu()
        a = hm.abs()
        self.hist[i] += torch.bincount(_bin(a[real]).reshape(-1), minlength=N_BINS).cpu()
        ids = b.input_ids
        widx = b.window_index
        d = h.shape[2]
        for lst, part, offset in ((0, a, 0), (1, a[:, 1:], 1), (2, a[:, :1], 0)):
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
            good = vals.cpu() > 0  # padded entries are zero: never a top entry
            signed = h[w, p, dim].double().cpu().numpy()[good.numpy()]
            meta = np.stack([widx[w].numpy(), p.numpy(), dim.numpy(), ids[w, p].numpy()], 1)[good.numpy()]
            cand_v = np.concatenate([self.top[i, lst], signed])
            cand_m = np.concatenate([self.top_meta[i, lst], meta.astype(np.int64)])
            self.top[i, lst], self.top_meta[i, lst] = _merge_top(cand_v, cand_m)

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
