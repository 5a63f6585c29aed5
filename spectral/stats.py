"""Mergeable streaming statistics of activations (the sufficient statistics of every analysis).

Per site, :class:`SiteStats` keeps, for each of ``B`` buckets of windows (contiguous blocks of the
run's windows, chosen by the caller: see ``Batch.buckets``):
the token count, Σh, Σ unit vectors û, Σ unit vectors of h − c (c: a fixed centre, for the
centred cosine), Σ‖h‖, Σ‖h‖², a log-spaced histogram of ‖h‖ (quantile sketch, ≤0.5 % relative
error), the uncentred second moment Σ h hᵀ and the sequence-axis power spectrum (Parseval-weighted one-sided
P(k) = w_k |rfft_t h|² / T, w = 1 at DC and Nyquist, 2 between, so Σ_k P(k) = Σ_t ‖h_t‖²)
(summed over dimensions, full-length windows only). Per window it keeps small scalar sums (token
count, Σ‖h‖, Σ‖h‖², and for a site with a predecessor on the residual chain Σcos and Σ norm
ratio between the two sites for the same token) so per-window bootstraps stay possible.

Storage of the d x d moments (the memory that dominates): each bucket holds its Σ (h−c)(h−c)ᵀ in
``moment_dtype`` (float32 by default, float64 on request), symmetric moments packed as their upper
triangle (d(d+1)/2 numbers); totals and leave-one-out sums are formed from the buckets in float64
when read. Per-window products are computed in float32 about the site's fixed centre c, so the
large common component is removed before rounding; the float32 bucket sums then carry a relative
error of about 1e-7·sqrt(windows per bucket) (benchmarks/RESULTS.md compares a run against
float64 storage). Every other sum is float64. Memory is O(B·d²) per site and does not grow with
the number of tokens except for a few floats per window. ``merge`` is exact (sums add, window
rows concatenate), so shards combine into the identical result. The statistics take plain
tensors: they work on activations from any source.

Devices: the accumulators (every bucket sum, the sequence spectrum, the per-window rows) live on the
device given at construction (``SiteStats(device=...)``, the CPU when none is given; ``capture.new_bank``
gives the model's device), so a GPU run sums on the GPU. The fixed centres, and every view the analyses
read (:meth:`SiteStats.total`, leave-one-out sums, :meth:`SiteStats.bucket_quadratic`, the window table),
are CPU float64. ``state_dict`` holds CPU tensors and the device's name; ``from_state_dict`` puts the
accumulators back on the ``device`` it is given, else on that recorded device (the CPU for a state
without one, or when this machine lacks that device).
"""

import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from spectral.tables import WindowTable

HIST_GAMMA = 1.01  # bin width ratio of the norm histogram
HIST_MIN_EXP = -1852  # 1.01 ** -1852 ~ 1e-8
HIST_BINS = 3704  # covers 1e-8 .. 1e8; values outside are clamped into the end bins
WINDOW_COLUMNS = (
    "count",
    "sum_norm",
    "sum_norm2",
    "pair_count",
    "sum_cos",
    "sum_ratio",
    "sum_intra",
    "sum_carrier2",  # Σ⟨h, ĉ⟩², ĉ = the site's calibration centre direction (carrier amplitude growth)
    "sum_upd_cos_stream",  # Σ cos(Δ, h_prev), Δ = h − h_prev (update alignment; with a predecessor)
    "sum_upd_cos_carrier",  # Σ cos(Δ, ĉ_prev), ĉ_prev = the predecessor's centre direction
)
MOMENT_FIELDS = ("count", "sum_h", "sum_u", "sum_u2", "sum_cu", "sum_norm", "sum_norm2", "second", "norm_hist")
EXTRA_FIELDS = ("sink_count", "sink_sum_h", "sink_second", "cross")


@dataclass(frozen=True)
class Moments:
    """Sums over a set of buckets; every moment-based statistic is a function of this."""

    n: float
    sum_h: Float[torch.Tensor, " d"]
    sum_u: Float[torch.Tensor, " d"]
    sum_u2: Float[torch.Tensor, " d"]  # Σ û_i² per dimension (rogue-dimension cosine contributions)
    sum_cu: Float[torch.Tensor, " d"]
    sum_norm: float
    sum_norm2: float
    second: Float[torch.Tensor, "d d"]
    norm_hist: Int[torch.Tensor, " bins"]
    spectrum: Float[torch.Tensor, " freq"]
    spectrum_windows: float
    sink_count: float  # tokens whose norm exceeded the site's sink threshold (0 when not tracked)
    sink_sum_h: Float[torch.Tensor, " d"]
    sink_second: Float[torch.Tensor, "d d"]
    cross: Float[torch.Tensor, "d d"] | None  # Σ w xᵀ of a write w and the stream x it read
    # position-0 tokens that the counted moments leave out (``exclude_first``), kept for the analyses about
    # sinks, which include position 0 (ARCHITECTURE.md section 1); zero when position 0 is counted already.
    # Those among them above the sink threshold are part of sink_* too, so the tokens without sinks are
    # (n + first) − sink, and the sink moments are never subtracted from the counted moments alone
    first_count: float = 0.0
    first_sum_h: Float[torch.Tensor, " d"] | None = None
    first_second: Float[torch.Tensor, "d d"] | None = None


def packed_size(d: int) -> int:
    """Numbers in the upper triangle (diagonal included) of a d x d matrix."""
    return d * (d + 1) // 2


_TRI: dict[tuple[int, str], torch.Tensor] = {}


def _triu_flat(d: int, device: torch.device | str) -> torch.Tensor:
    """Flat indices (row-major) of the upper triangle of a d x d matrix, cached per device."""
    key = (d, str(device))
    if key not in _TRI:
        i, j = torch.triu_indices(d, d)
        _TRI[key] = (i * d + j).to(device)
    return _TRI[key]


_TRI_T: dict[tuple[int, str], torch.Tensor] = {}


def unpack_symmetric(packed: torch.Tensor, d: int) -> torch.Tensor:
    """(..., d(d+1)/2) upper triangles -> (..., d, d) symmetric matrices."""
    key = (d, str(packed.device))
    if key not in _TRI_T:
        i, j = torch.triu_indices(d, d)
        _TRI_T[key] = (j * d + i).to(packed.device)  # the mirrored (lower) positions
    lead = packed.shape[:-1]
    full = torch.empty(*lead, d * d, dtype=packed.dtype, device=packed.device)
    full[..., _TRI_T[key]] = packed
    full[..., _triu_flat(d, packed.device)] = packed
    return full.reshape(*lead, d, d)


def _seq_power(x: torch.Tensor) -> torch.Tensor:
    """(w, F) Parseval-weighted one-sided power along the positions of windows x (w, T, d), summed over the
    dimensions: Σ_k P(k) = Σ_t ‖h_t‖² per window."""
    T = x.shape[1]
    # positions made the contiguous (last) axis first: the transform along a strided axis is ~10x slower on the CPU
    spec = torch.fft.rfft(x.transpose(1, 2).contiguous(), dim=-1)  # (w, d, F)
    power = torch.view_as_real(spec).pow(2).sum(dim=(1, 3))  # (w, F) |X_k|² summed over dimensions
    weight = torch.full((power.shape[1],), 2.0 / T, dtype=power.dtype, device=power.device)
    weight[0] = 1.0 / T
    if T % 2 == 0:
        weight[-1] = 1.0 / T  # the Nyquist bin has no mirror image
    return power * weight


def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.cpu()


def _restore_device(recorded: object) -> torch.device:
    """The device a state recorded (a string), or the CPU when it records none or this machine lacks it."""
    if not isinstance(recorded, str):
        return torch.device("cpu")
    try:
        device = torch.device(recorded)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError):  # e.g. a CUDA device on a CPU-only machine
        return torch.device("cpu")
    return device


def hist_bin(norms: torch.Tensor) -> torch.Tensor:
    """Histogram bin of each norm (0 and tiny values go to bin 0)."""
    e = torch.floor(torch.log(norms.clamp_min(torch.finfo(norms.dtype).tiny)) / math.log(HIST_GAMMA)) - HIST_MIN_EXP
    return e.clamp(0, HIST_BINS - 1).long()


def hist_value(bins: np.ndarray) -> np.ndarray:
    """Representative value (geometric bin centre) of histogram bins."""
    return HIST_GAMMA ** (bins + HIST_MIN_EXP + 0.5)


def _bucket_products(
    bucket: Int[torch.Tensor, " batch"], a: Float[torch.Tensor, "batch seq d"], b: Float[torch.Tensor, "batch seq e"]
) -> list[tuple[int, torch.Tensor]]:
    """(bucket, Σ aᵀ b over the tokens of the batch's windows in that bucket): one product per bucket.

    When ``b is a`` only the upper triangle of each product is valid (the strict lower one is left
    uninitialised): it is formed from row strips, 5/8 of the multiply-adds (1.7x faster at d 576)."""
    out = []
    for k in torch.unique(bucket).tolist():
        sel = bucket == k
        x = a[sel].reshape(-1, a.shape[-1])
        out.append((k, _upper_gram(x) if b is a else x.T @ b[sel].reshape(-1, b.shape[-1])))
    return out


def _upper_gram(x: Float[torch.Tensor, "n d"], strips: int = 4) -> Float[torch.Tensor, "d d"]:
    """xᵀ x with only the upper triangle (diagonal included) computed: strip i is x_iᵀ x[:, e_i:]."""
    d = x.shape[1]
    if d < 64:
        return x.T @ x
    e = [round(i * d / strips) for i in range(strips + 1)]
    out = torch.empty(d, d, dtype=x.dtype, device=x.device)
    for i in range(strips):
        out[e[i] : e[i + 1], e[i] :] = x[:, e[i] : e[i + 1]].T @ x[:, e[i] :]
    return out


CACHED_SITES = 6  # sites whose float64 views stay cached at once (least recently used dropped)
_CACHE: "OrderedDict[int, weakref.ref[SiteStats]]" = OrderedDict()


class SiteStats:
    """Bucketed, mergeable accumulators of one site (see module docstring)."""

    def __init__(
        self,
        d: int,
        n_buckets: int,
        center: torch.Tensor | None = None,
        sink_threshold: float | None = None,
        cross: bool = False,
        device: torch.device | str | None = None,
        moment_dtype: torch.dtype = torch.float32,
    ) -> None:
        B = n_buckets
        f64 = torch.float64
        self.d, self.n_buckets = d, B
        self.moment_dtype = moment_dtype
        self.device = torch.device(device or "cpu")  # where the sums live (the model's device)
        self.center = None if center is None else center.detach().to("cpu", f64).clone()
        self.prev_center: torch.Tensor | None = None  # the predecessor's centre (update alignment), set by the bank
        with torch.device(self.device):
            self._alloc(B, d, sink_threshold, cross)
        self.spectrum: torch.Tensor | None = None  # (B, F), sized by the first full window
        # the same spectrum with each window's sinks (‖h‖ > sink_threshold) set to the mean of its other tokens:
        # the massive-activation-excluded variant (sites that track sinks only)
        self.spectrum_nosink: torch.Tensor | None = None
        self.spectrum_nosink_ok = True  # False for a state saved before it existed: its windows are missing
        self.spectrum_skipped = 0  # full windows of another length than the first one
        self.spectrum_len = 0  # positions T of the windows in the spectrum (0 until the first full window)
        self._win_index: list[np.ndarray] = []
        self._win_rows: list[torch.Tensor] = []
        self._total: dict[str, torch.Tensor | None] | None = None  # packed sums over all buckets
        self._total_m: Moments | None = None  # their Moments view (unpacked, shifted back)
        self._fields: dict[str, torch.Tensor | None] | None = None
        self._loo: dict[int, Moments] = {}
        # the position-0 vectors of windows whose position 0 is real but not counted (sites that track sinks
        # only): one float64 row per window, with its bucket; they become first_* (and pos-0 sinks) in views
        self._first_h: list[torch.Tensor] = []
        self._first_b: list[torch.Tensor] = []

    def _alloc(self, B: int, d: int, sink_threshold: float | None, cross: bool) -> None:
        f64 = torch.float64
        self.count = torch.zeros(B, dtype=f64)
        self.sum_h = torch.zeros(B, d, dtype=f64)
        self.sum_u = torch.zeros(B, d, dtype=f64)
        self.sum_u2 = torch.zeros(B, d, dtype=f64)
        self.sum_cu = torch.zeros(B, d, dtype=f64)
        self.sum_norm = torch.zeros(B, dtype=f64)
        self.sum_norm2 = torch.zeros(B, dtype=f64)
        self.second = torch.zeros(B, packed_size(d), dtype=self.moment_dtype)  # upper triangles
        self.norm_hist = torch.zeros(B, HIST_BINS, dtype=torch.int64)
        # tokens with ‖h‖ above sink_threshold (massive activations / sinks): their own moments
        self.sink_threshold = sink_threshold
        track = sink_threshold is not None
        self.sink_count = torch.zeros(B if track else 0, dtype=f64)
        self.sink_sum_h = torch.zeros(B if track else 0, d, dtype=f64)
        self.sink_second: torch.Tensor | None = None  # (B, d(d+1)/2), allocated when the first sink shows up
        self.cross = torch.zeros(B, d, d, dtype=self.moment_dtype) if cross else None
        self.spectrum_windows = torch.zeros(B, dtype=f64)

    # ---- accumulation -------------------------------------------------------------------
    def update(
        self,
        h: Float[torch.Tensor, "batch seq d"],
        mask: Bool[torch.Tensor, "batch seq"],
        window_index: Int[torch.Tensor, " batch"],
        bucket: Int[torch.Tensor, " batch"],
        full: Bool[torch.Tensor, " batch"] | None = None,
        prev: Float[torch.Tensor, "batch seq d"] | None = None,
        inp: Float[torch.Tensor, "batch seq d"] | None = None,
        first: Bool[torch.Tensor, " batch"] | None = None,
    ) -> None:
        """Add one batch. ``prev``: the predecessor site on the residual chain (same tokens);
        ``inp``: for a write site (attn_out / mlp_out), the stream it read (cross moment); ``first``: the
        windows whose position 0 is a real token left out of ``mask`` (kept aside on a site that tracks
        sinks: analyses about sinks include position 0).

        Work is done per window (sums over positions, then into the window's bucket) in float32
        on the activation's device (float64 when given float64), without device syncs except one
        look for sink tokens; every sum is carried in float64. The d x d moment is taken of h - c
        (c: the site's fixed centre) so that float32 loses nothing to a large common component;
        :meth:`_make` shifts it back exactly in float64.
        """
        self._drop_views()
        f64 = torch.float64
        f32 = f64 if h.dtype == f64 else torch.float32  # the working precision: float64 input stays float64
        x = h.detach().to(f32)
        dev = x.device
        mask_c = mask.to("cpu")
        widx = window_index.to("cpu").long()
        bucket = bucket.to("cpu").long()  # (batch,) on the CPU: grouping needs no device sync
        if bool(((bucket < 0) | (bucket >= self.n_buckets)).any()):
            raise ValueError(f"bucket indices must lie in 0..{self.n_buckets - 1}, got {bucket.tolist()}")
        if full is None:
            full = torch.ones(x.shape[0], dtype=torch.bool)
        norms = x.norm(dim=-1)  # (B, T)
        self._update_spectrum(x, norms, mask_c, bucket, full.to("cpu"))

        m = mask_c.to(dev, f32).unsqueeze(-1)  # (B, T, 1)
        # (B, T): 1/‖h‖ on counted non-zero tokens, 0 elsewhere (a zero vector has no direction); the clamp keeps
        # 1/‖h‖² finite in float32 (norms below 1e-18 are round-off, not activations)
        inv = torch.where(norms > 0, m[..., 0] / norms.clamp_min(1e-18), 0.0)
        count_w = m.sum((1, 2))  # (B,)
        norm_w = (norms * m[..., 0]).sum(1)
        norm2_w = (norms.pow(2) * m[..., 0]).sum(1)
        bucket_d = bucket.to(dev)

        def add(acc: torch.Tensor, per_window: torch.Tensor) -> None:
            acc.index_add_(
                0, bucket_d.to(acc.device), per_window.to(acc.device, acc.dtype)
            )  # no-op moves on one device

        add(self.count, count_w)
        # weighted sums over positions as batched products (one pass each, no full-size temporaries but x²)
        add(self.sum_u, torch.bmm(inv[:, None, :], x)[:, 0])  # Σ û
        add(self.sum_u2, torch.bmm((inv * inv)[:, None, :], x * x)[:, 0])  # Σ û_i²
        if self.center is not None:
            c = self.center.to(dev, f32)
            xc = x - c
            xm = xc * m  # masked tokens are zero rows
            cn = xc.norm(dim=-1)
            cinv = torch.where(cn > 0, m[..., 0] / cn.clamp_min(1e-18), 0.0)
            add(self.sum_cu, torch.bmm(cinv[:, None, :], xc)[:, 0])
            # Σh = Σ(h - c) + n c: the shifted sum is small, so float32 loses nothing to the common part
            xm_sum = xm.sum(1)
            add(self.sum_h, xm_sum.to(f64) + count_w.to(f64)[:, None] * self.center.to(dev))
            wsum = (xm_sum + count_w[:, None] * c)[:, None, :]  # Σ_t m h per window (B, 1, d)
        else:
            xc = xm = x * m
            wsum = xm.sum(1, keepdim=True)
            add(self.sum_h, wsum[:, 0])
        add(self.sum_norm, norm_w)
        add(self.sum_norm2, norm2_w)
        # norm histogram: every token, weighted by its mask (no boolean selection: no device sync)
        tok_bucket = bucket_d.unsqueeze(1).expand_as(norms).reshape(-1)
        self.norm_hist.index_put_(
            (tok_bucket.to(self.norm_hist.device), hist_bin(norms).reshape(-1).to(self.norm_hist.device)),
            m[..., 0].reshape(-1).long().to(self.norm_hist.device),
            accumulate=True,
        )
        # d x d moments: one batched product per window (masked tokens are zero rows), summed into buckets;
        # no device sync (on the H200 this beat per-bucket products gathered by index: 1.41x vs 1.70x of
        # the bare bf16 forward for GPT-2)
        tri = _triu_flat(self.d, dev)
        if dev.type == "cpu" and self.second.dtype == torch.float32:
            # float32 storage on the CPU: one product per bucket (tokens of its windows stacked) is cheaper, the
            # upper-triangle gather is paid once per bucket, not per window (4.6 vs 6.0 ms at d 576). Its float32
            # sum then depends on which windows share a batch (~1e-7); float64 storage keeps per-window
            # products, so shards and batch sizes agree to float64 rounding
            for b, prod in _bucket_products(bucket, xm, xm):
                self.second[b] += prod.reshape(-1)[tri].to(self.second.dtype)
        else:
            add(self.second, torch.bmm(xm.transpose(1, 2), xm).reshape(x.shape[0], -1)[:, tri])
        if inp is not None and self.cross is not None:
            xw, xin = x * m, inp.detach().to(f32)
            if dev.type == "cpu" and self.cross.dtype == torch.float32:  # one product per bucket, as above
                for b, prod in _bucket_products(bucket, xw, xin):
                    self.cross[b] += prod
            else:
                add(self.cross, torch.bmm(xw.transpose(1, 2), xin))
        if self.sink_threshold is not None:
            sm = (norms > self.sink_threshold).to(f32) * m[..., 0]  # (B, T)
            if bool(sm.any()):  # sinks are rare: one device sync to look, then only the sink tokens
                add(self.sink_count, sm.sum(1))
                sel = sm.bool()
                xs = x[sel].double()  # (n_sink, d)
                tb = tok_bucket[sel.reshape(-1)]
                self.sink_sum_h.index_add_(0, tb.to(self.device), xs.to(self.device))
                if self.sink_second is None:
                    self.sink_second = torch.zeros(
                        self.n_buckets, packed_size(self.d), dtype=self.moment_dtype, device=self.device
                    )
                tri_s = _triu_flat(self.d, xs.device)
                for b in torch.unique(tb).tolist():
                    xb = xs[tb == b]
                    self.sink_second[b] += (xb.T @ xb).reshape(-1)[tri_s].to(self.device, self.moment_dtype)

        # per-window scalar sums
        nw = x.shape[0]
        rows = torch.zeros(nw, len(WINDOW_COLUMNS), dtype=f64, device=dev)
        rows[:, 0] = count_w.double()
        rows[:, 1] = norm_w.double()
        rows[:, 2] = norm2_w
        if prev is not None:
            p = prev.detach().to(f32)
            pn = p.norm(dim=-1)
            cos = (p * x).sum(-1) / (pn * norms).clamp_min(1e-30)
            rows[:, 3] = count_w.double()
            rows[:, 4] = (cos * m[..., 0]).sum(1).double()
            rows[:, 5] = (norms / pn.clamp_min(1e-30) * m[..., 0]).sum(1).double()
            delta = x - p  # the update this site adds to its predecessor
            dn = delta.norm(dim=-1)
            dinv = torch.where(dn > 0, m[..., 0] / dn.clamp_min(1e-30), 0.0)  # a zero update has no direction
            rows[:, 8] = ((delta * p).sum(-1) / pn.clamp_min(1e-30) * dinv).sum(1).double()
            if self.prev_center is not None and float(self.prev_center.norm()) > 0:
                cp = (self.prev_center / self.prev_center.norm()).to(dev, f32)
                rows[:, 9] = ((delta @ cp) * dinv).sum(1).double()
            else:
                rows[:, 9] = float("nan")
        if self.center is not None and float(self.center.norm()) > 0:
            chat = (self.center / self.center.norm()).to(dev, f32)
            rows[:, 7] = ((x @ chat).pow(2) * m[..., 0]).sum(1).double()
        else:
            rows[:, 7] = float("nan")
        # intra-sentence similarity (Ethayarajh): cos of each token with its window's mean
        intra = (x * wsum).sum(-1) / (norms * wsum.norm(dim=-1)).clamp_min(1e-30)
        rows[:, 6] = (intra * m[..., 0]).sum(1).double()
        self._win_index.append(widx.numpy().copy())
        self._win_rows.append(rows.to(self.device))
        if first is not None and self.sink_threshold is not None:
            sel = first.to("cpu").bool()
            if bool(sel.any()):
                self._first_h.append(h[sel.to(h.device), 0].detach().to("cpu", f64))
                self._first_b.append(bucket[sel].clone())

    def _update_spectrum(
        self, h: torch.Tensor, norms: torch.Tensor, mask: torch.Tensor, bucket: torch.Tensor, full: torch.Tensor
    ) -> None:
        sel = torch.nonzero(full).flatten()
        if sel.numel() == 0:
            return
        start = int(torch.nonzero(mask[sel[0]]).min()) if mask[sel[0]].any() else 0
        x = h[sel.to(h.device), start:, :]  # (w, T', d): positions from the first counted one
        n_freq = x.shape[1] // 2 + 1
        if self.spectrum is None:
            self.spectrum = torch.zeros(self.n_buckets, n_freq, dtype=torch.float64, device=self.device)
            self.spectrum_len = x.shape[1]
        if x.shape[1] != self.spectrum_len:
            self.spectrum_skipped += int(sel.numel())
            return
        power = _seq_power(x)
        idx = bucket[sel].to(self.device)
        self.spectrum.index_add_(0, idx, power.to(self.device, torch.float64))
        if self.sink_threshold is not None:
            self._update_spectrum_nosink(x, norms[sel.to(norms.device), start:], power, idx)
        self.spectrum_windows.index_add_(0, idx, torch.ones(sel.numel(), dtype=torch.float64, device=self.device))

    def _update_spectrum_nosink(
        self, x: torch.Tensor, norms: torch.Tensor, power: torch.Tensor, idx: torch.Tensor
    ) -> None:
        """:attr:`spectrum_nosink`: each window's sink tokens (‖h‖ above the sink threshold: massive activations)
        replaced by the mean of its other tokens, so a sink position carries no deviation from the window mean
        and adds no power at any non-zero frequency. Only the windows that hold a sink are transformed again;
        the others add the power already computed."""
        assert self.spectrum is not None and self.sink_threshold is not None
        if not self.spectrum_nosink_ok:
            return
        if self.spectrum_nosink is None:
            self.spectrum_nosink = torch.zeros_like(self.spectrum)
        sink = norms > self.sink_threshold  # (w, T)
        has = sink.any(1)
        if bool(has.any()):  # sinks are rare: one device sync to look
            power = power.clone()
            rows = torch.nonzero(has).flatten()
            xs, ss = x[rows], sink[rows].unsqueeze(-1)
            keep = (~ss).to(x.dtype)
            mean = (xs * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1.0)
            power[rows] = _seq_power(torch.where(ss, mean, xs))
        self.spectrum_nosink.index_add_(0, idx, power.to(self.device, torch.float64))

    def _summed(self, mine: torch.Tensor | None, theirs: torch.Tensor) -> torch.Tensor:
        """``mine + theirs`` on this site's device, in place where it may be (a tensor made inside a forward's
        inference_mode is cloned first; a missing one starts as a copy of ``theirs``)."""
        if mine is None:
            return theirs.to(self.device, copy=True)
        if mine.is_inference():
            mine = mine.clone()
        return mine.add_(theirs.to(self.device))

    # ---- views ----------------------------------------------------------------------------
    def _drop_views(self) -> None:
        """Forget the cached float64 views (bucket sums, total, leave-one-out sums): after an update or a
        merge they are stale, and on eviction from the LRU they are recomputed when read again."""
        self._total, self._total_m, self._fields, self._loo = None, None, None, {}

    def _touch(self) -> None:
        """Mark this site's cached views as recently used; drop those of the least recently used sites
        beyond :data:`CACHED_SITES` (a d x d float64 view is B + 6 matrices per site: keeping every
        site's would cost GBs on a real model; analyses read a few sites at a time)."""
        key = id(self)
        _CACHE.pop(key, None)
        _CACHE[key] = weakref.ref(self)
        while len(_CACHE) > CACHED_SITES:
            _, ref = _CACHE.popitem(last=False)
            old = ref()
            if old is not None:
                old._drop_views()

    def _bucket_fields(self) -> dict[str, torch.Tensor | None]:
        """Per-bucket sums as CPU float64 tensors (analyses run on the CPU); cached until the next
        update or merge, so the jackknife's leave-one-out views do not copy them again. The symmetric
        moments stay packed here: sums over buckets are taken packed and :meth:`_make` unpacks the one
        d x d matrix a view needs (B times less unpacking than unpacking every bucket)."""
        self._touch()
        if self._fields is None:
            fields = {k: None if v is None else v.cpu() for k, v in self._device_fields().items()}
            for k in ("second", "sink_second", "cross"):
                v = fields[k]
                if v is not None:
                    fields[k] = v.double()
            self._fields = fields
        return self._fields

    def _device_fields(self) -> dict[str, torch.Tensor | None]:
        spec = self.spectrum if self.spectrum is not None else torch.zeros(self.n_buckets, 1, dtype=torch.float64)
        track = self.sink_count.numel() > 0
        return {
            "n": self.count,
            "sum_h": self.sum_h,
            "sum_u": self.sum_u,
            "sum_u2": self.sum_u2,
            "sum_cu": self.sum_cu,
            "sum_norm": self.sum_norm,
            "sum_norm2": self.sum_norm2,
            "second": self.second,
            "norm_hist": self.norm_hist,
            "spectrum": spec,
            "spectrum_windows": self.spectrum_windows,
            "sink_count": self.sink_count if track else None,
            "sink_sum_h": self.sink_sum_h if track else None,
            "sink_second": (
                None
                if not track
                else self.sink_second
                if self.sink_second is not None
                else torch.zeros(self.n_buckets, packed_size(self.d), dtype=torch.float64)
            ),
            "cross": self.cross,
        }

    def first_tokens(self) -> tuple[Float[torch.Tensor, "n d"], Int[torch.Tensor, " n"]]:
        """The kept position-0 vectors (CPU float64) and their buckets."""
        if not self._first_h:
            return torch.zeros(0, self.d, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
        return torch.cat(self._first_h), torch.cat(self._first_b)

    def _first_moments(self, leave_out: int | None) -> dict[str, object]:
        """first_* of a view, and the position-0 sinks' moments to add to sink_* (all buckets but ``leave_out``)."""
        h, b = self.first_tokens()
        if leave_out is not None:
            h = h[b != leave_out]
        thr = self.sink_threshold
        sink = h[h.norm(dim=-1) > thr] if thr is not None else h[:0]
        return {
            "first_count": float(h.shape[0]),
            "first_sum_h": h.sum(0),
            "first_second": h.T @ h,
            "sink": (float(sink.shape[0]), sink.sum(0), sink.T @ sink),
        }

    def _make(self, values: dict[str, torch.Tensor | None], leave_out: int | None = None) -> Moments:
        d = self.d
        f64 = torch.float64
        scalars = ("n", "sum_norm", "sum_norm2", "spectrum_windows", "sink_count")
        out: dict[str, object] = {}
        for k, v in values.items():
            if k in scalars:
                out[k] = float(v) if v is not None else 0.0
            elif k in ("second", "sink_second") and v is not None:
                out[k] = unpack_symmetric(v, d)  # summed packed (see _bucket_fields)
            else:
                out[k] = v
        if values["sink_sum_h"] is None:
            out["sink_sum_h"] = torch.zeros(d, dtype=f64)
            out["sink_second"] = torch.zeros(d, d, dtype=f64)
        if self.center is not None:  # stored: Σ (h-c)(h-c)ᵀ; wanted: Σ h hᵀ
            c, n = self.center, float(out["n"])  # type: ignore[arg-type]
            # Σ h hᵀ = Σ(h-c)(h-c)ᵀ + c sᵀ + s cᵀ + n c cᵀ with s = Σ(h-c) = Σh - n c: two rank-1 updates with
            # s + n c / 2 = Σh - n c / 2
            s = values["sum_h"] - 0.5 * n * c  # type: ignore[operator]
            out["second"] = torch.addr(torch.addr(out["second"], c, s), s, c)  # type: ignore[arg-type]
        if self._first_h:
            first = self._first_moments(leave_out)
            n0, s0, q0 = first.pop("sink")  # type: ignore[misc]
            out.update(first)
            out["sink_count"] = float(out["sink_count"]) + n0  # type: ignore[arg-type]
            out["sink_sum_h"] = out["sink_sum_h"] + s0  # type: ignore[operator]
            out["sink_second"] = out["sink_second"] + q0  # type: ignore[operator]
        return Moments(**out)  # type: ignore[arg-type]

    def bucket_quadratic(self, U: Float[torch.Tensor, "d k"]) -> Float[torch.Tensor, "buckets k"]:
        """uᵀ (Σ h hᵀ) u per bucket for each column u of ``U``, in float64, without forming the float64
        moments: the stored centred part Σ(h−c)(h−c)ᵀ is read in its storage precision, the shift back
        (2 (uᵀc)(uᵀs), s = Σh − n c / 2) is float64. Linear in the data, so totals and leave-one-out
        values are sums of the rows (one product per bucket serves the whole jackknife)."""
        second = self.second.to("cpu")
        dt = second.dtype
        Uw = U.to("cpu", dt)
        S = unpack_symmetric(second, self.d)  # (B, d, d) in the storage dtype
        q = ((S @ Uw) * Uw).sum(1).double()  # (B, k)
        if self.center is not None:
            c = self.center
            s = self.sum_h.to("cpu") - 0.5 * self.count.to("cpu")[:, None] * c
            Ud = U.to("cpu", torch.float64)
            q += 2.0 * (c @ Ud)[None, :] * (s @ Ud)
        # Σ (uᵀh)² over a bucket is never negative; float32 storage of the centred part can leave −1e-9 where the
        # true energy is ~0 (an embedding's tail bands): that is rounding, clamped, so no energy or share is < 0
        return q.clamp_min(0.0)

    def total(self) -> Moments:
        """Sums over all buckets (cached until the next update or merge)."""
        self._touch()
        if self._total is None:
            self._total = {k: None if v is None else v.sum(0) for k, v in self._bucket_fields().items()}
        if self._total_m is None:
            self._total_m = self._make(self._total)
        return self._total_m

    def leave_one_out(self, bucket: int) -> Moments:
        """Sums over all buckets but one (for the jackknife; cached until :meth:`release`)."""
        self._touch()
        if bucket in self._loo:
            return self._loo[bucket]
        self._loo[bucket] = self._leave_one_out(bucket)
        return self._loo[bucket]

    def release(self) -> None:
        """Drop the cached leave-one-out sums and bucket views (call when done with this site's statistics)."""
        self._loo, self._fields = {}, None

    def _leave_one_out(self, bucket: int) -> Moments:
        self.total()
        assert self._total is not None
        fields = self._bucket_fields()
        return self._make(
            {k: None if v is None else v - fields[k][bucket] for k, v in self._total.items()},  # type: ignore[index]
            leave_out=bucket,
        )

    def nonempty_buckets(self) -> list[int]:
        count = self.count.cpu()
        return [b for b in range(self.n_buckets) if count[b] > 0]

    def window_table(self) -> WindowTable:
        """(window_index (W,), rows (W, len(WINDOW_COLUMNS))) sorted by window index; columns by name."""
        if not self._win_index:
            return WindowTable(np.zeros(0, dtype=np.int64), np.zeros((0, len(WINDOW_COLUMNS))), WINDOW_COLUMNS)
        idx = np.concatenate(self._win_index)
        rows = torch.cat([r.cpu() for r in self._win_rows]).numpy()
        order = np.argsort(idx, kind="stable")
        return WindowTable(idx[order], rows[order], WINDOW_COLUMNS)

    # ---- merge and serialisation --------------------------------------------------------
    def merge(self, other: "SiteStats") -> "SiteStats":
        """Add ``other`` into ``self`` (exact); returns ``self``."""
        if (self.d, self.n_buckets) != (other.d, other.n_buckets):
            raise ValueError("cannot merge statistics with different d or bucket count")
        if (self.center is None) != (other.center is None) or (
            self.center is not None and other.center is not None and not torch.equal(self.center, other.center)
        ):
            raise ValueError("cannot merge statistics centred on different points")
        if (self.sink_threshold, self.cross is None) != (other.sink_threshold, other.cross is None):
            raise ValueError("cannot merge statistics with different sink thresholds or cross moments")
        if self.moment_dtype != other.moment_dtype:
            raise ValueError(f"cannot merge {self.moment_dtype} moments with {other.moment_dtype} ones")
        self._drop_views()
        for name in MOMENT_FIELDS + EXTRA_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None:
                mine.add_(theirs.to(mine.device))
            elif theirs is not None:  # allocated lazily on the other side only (sink moments)
                setattr(self, name, theirs.to(self.device, copy=True))
        if other.spectrum is not None:
            if self.spectrum is not None and (
                self.spectrum.shape != other.spectrum.shape or self.spectrum_len != other.spectrum_len
            ):
                raise ValueError("cannot merge sequence spectra of different window lengths")
            self.spectrum = self._summed(self.spectrum, other.spectrum)
        if not (self.spectrum_nosink_ok and other.spectrum_nosink_ok):
            self.spectrum_nosink, self.spectrum_nosink_ok = None, False
        elif other.spectrum_nosink is not None:
            self.spectrum_nosink = self._summed(self.spectrum_nosink, other.spectrum_nosink)
        self.spectrum_windows.add_(other.spectrum_windows.to(self.device))
        self.spectrum_skipped += other.spectrum_skipped
        self.spectrum_len = self.spectrum_len or other.spectrum_len
        theirs = other.window_table()
        idx, rows = theirs.index, theirs.rows
        self._win_index.append(idx)
        self._win_rows.append(torch.from_numpy(rows).to(self.device))
        self._first_h += [t.clone() for t in other._first_h]
        self._first_b += [t.clone() for t in other._first_b]
        return self

    def state_dict(self) -> dict[str, object]:
        mine = self.window_table()
        idx, rows = mine.index, mine.rows
        return {
            "d": self.d,
            "n_buckets": self.n_buckets,
            "center": self.center,
            "sink_threshold": self.sink_threshold,
            "moment_dtype": str(self.moment_dtype).removeprefix("torch."),
            "device": str(self.device),
            **{name: _cpu(getattr(self, name)) for name in MOMENT_FIELDS + EXTRA_FIELDS},
            "spectrum": _cpu(self.spectrum),
            "spectrum_nosink": _cpu(self.spectrum_nosink),
            "spectrum_windows": self.spectrum_windows.cpu(),
            "spectrum_skipped": self.spectrum_skipped,
            "spectrum_len": self.spectrum_len,
            "window_index": torch.from_numpy(idx),
            "window_rows": torch.from_numpy(rows),
            "prev_center": self.prev_center,
            "first_h": self.first_tokens()[0],
            "first_bucket": self.first_tokens()[1],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, object], device: torch.device | str | None = None) -> "SiteStats":
        """The statistics ``state_dict`` saved, their accumulators on ``device`` (default: the device the
        state records, see the module docstring)."""
        d, B = int(state["d"]), int(state["n_buckets"])  # type: ignore[arg-type]
        center = state["center"]
        thr = state.get("sink_threshold")
        out = cls(
            d,
            B,
            center if isinstance(center, torch.Tensor) else None,
            float(thr) if isinstance(thr, int | float) else None,  # type: ignore[arg-type]
            state.get("cross") is not None,
            device=torch.device(device) if device is not None else _restore_device(state.get("device")),
            moment_dtype=getattr(torch, str(state.get("moment_dtype", "float64"))),
        )
        dev = out.device
        for name in MOMENT_FIELDS + EXTRA_FIELDS:
            value = state.get(name)
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.to(dev, copy=True))
        spec = state["spectrum"]
        out.spectrum = spec.to(dev, copy=True) if isinstance(spec, torch.Tensor) else None
        spec = state.get("spectrum_nosink")  # absent in states saved before it existed
        out.spectrum_nosink = spec.to(dev, copy=True) if isinstance(spec, torch.Tensor) else None
        out.spectrum_nosink_ok = out.spectrum is None or out.spectrum_nosink is not None or thr is None
        out.spectrum_windows = state["spectrum_windows"].to(dev, copy=True)  # type: ignore[union-attr]
        out.spectrum_skipped = int(state["spectrum_skipped"])  # type: ignore[arg-type]
        out.spectrum_len = int(state.get("spectrum_len", 0))  # type: ignore[arg-type]
        out._win_index = [state["window_index"].numpy().copy()]  # type: ignore[union-attr]
        out._win_rows = [state["window_rows"].to(dev, copy=True)]  # type: ignore[union-attr]
        pc = state.get("prev_center")
        out.prev_center = pc.clone() if isinstance(pc, torch.Tensor) else None
        fh, fb = state.get("first_h"), state.get("first_bucket")
        if isinstance(fh, torch.Tensor) and isinstance(fb, torch.Tensor) and fh.shape[0] > 0:
            out._first_h, out._first_b = [fh.to(torch.float64).clone()], [fb.long().clone()]
        return out


class StatsBank:
    """The statistics of one condition: one :class:`SiteStats` per captured site."""

    def __init__(
        self,
        sites: tuple[str, ...],
        predecessors: dict[str, str],
        stats: list[SiteStats],
        inputs: dict[str, str] | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.sites = sites
        self.predecessors = predecessors  # site -> the residual-chain site before it
        self.inputs = inputs or {}  # write site -> the stream it read
        # site -> the site that holds the very same tensor (resid_pre.l is resid_post.l-1): one statistics object
        self.aliases = aliases or {}
        self.excluded: list[int] = []  # windows left out for NaN/inf (capture nonfinite = "exclude")
        self.nonfinite_counts: dict[str, int] = {}  # site -> tokens with NaN/inf seen there
        own = [s for s in sites if s not in self.aliases]
        self._stats = dict(zip(own, stats, strict=True))
        for alias, target in self.aliases.items():
            self._stats[alias] = self._stats[target]

    @property
    def own_sites(self) -> tuple[str, ...]:
        """The sites whose statistics are kept (not aliases), in forward order."""
        return tuple(s for s in self.sites if s not in self.aliases)

    def __getitem__(self, site: str) -> "SiteStats":
        return self._stats[site]

    def merge(self, other: "StatsBank") -> "StatsBank":
        if self.sites != other.sites or self.aliases != other.aliases:
            raise ValueError("cannot merge banks over different sites")
        for s in self.own_sites:
            self._stats[s].merge(other[s])
        self.excluded.extend(other.excluded)
        for k, v in other.nonfinite_counts.items():
            self.nonfinite_counts[k] = self.nonfinite_counts.get(k, 0) + v
        return self

    def state_dict(self) -> dict[str, object]:
        return {
            "sites": list(self.sites),
            "predecessors": dict(self.predecessors),
            "inputs": dict(self.inputs),
            "aliases": dict(self.aliases),
            "stats": [self._stats[s].state_dict() for s in self.own_sites],
            "excluded": list(self.excluded),
            "nonfinite_counts": dict(self.nonfinite_counts),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, object], device: torch.device | str | None = None) -> "StatsBank":
        """The bank ``state_dict`` saved, every site's accumulators on ``device`` (as in
        :meth:`SiteStats.from_state_dict`)."""
        sites = tuple(state["sites"])  # type: ignore[arg-type]
        stats = [SiteStats.from_state_dict(s, device) for s in state["stats"]]  # type: ignore[union-attr]
        bank = cls(
            sites,
            dict(state["predecessors"]),  # type: ignore[arg-type]
            stats,
            dict(state.get("inputs", {})),  # type: ignore[arg-type]
            dict(state.get("aliases", {})),  # type: ignore[arg-type]
        )
        bank.excluded = [int(w) for w in state.get("excluded", [])]  # type: ignore[union-attr]
        bank.nonfinite_counts = {str(k): int(v) for k, v in dict(state.get("nonfinite_counts", {})).items()}  # type: ignore[arg-type]
        return bank
