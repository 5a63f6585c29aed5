"""Batch-local probes that need the model or the token ids (beside the per-site moments).

* :class:`LensProbe`: logit lens (final norm + W_U) at residual sites — agreement with the model's
  own top-1, top-1 accuracy and rank of the true next token — the same for the carrier-removed
  stream h − ⟨h, μ̂⟩μ̂ (μ̂ fixed from the calibration batch), and the top-1 logit margin of the lens
  decomposed by centred W_U band at every site (final and per layer), with its rotated-h null.
* :class:`HeadProbe`: per-head second moments of the attention outputs ``z`` (bucketed like the
  site moments) and, per token, attention received versus tail-band energy of the stream the
  attention layer reads.
* :class:`TypeProbe`: per token type, sums of unit vectors across contexts (Ethayarajh's
  self-similarity, with pairs inside one window excluded exactly).

Probes register their own hooks (through :func:`spectral.capture.accumulate`); each keeps only
per-window sums or per-token scalars, never activations.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from spectral.corpus import Batch, TokenWindows
from spectral.models import LoadedModel
from spectral.sites import hook_name
from spectral.tables import CosineMatrix, LensTable
from spectral.vocab import ModSegment, Reference, carrier_removed_logits, scan

Hook = tuple[str, Callable[..., Any]]
LENS_COLUMNS = (
    "count",
    "agree",
    "correct",
    "rank_sum",
    "mod_agree",  # carrier projected out: agrees with the model's top-1
    "mod_correct",  # carrier projected out: the true next token
    "abl_carrier_correct",  # carrier mean-ablated (its amplitude set to the calibration mean)
    "abl_toppc_correct",  # top principal direction mean-ablated (the null of prediction 4)
    "abl_random_correct",  # a seeded random direction mean-ablated (the null of prediction 4)
    "kl_sum",  # Σ KL(model's output ‖ lens) in nats (tuned-lens's forward KL; 0 at final)
    "entropy_sum",  # Σ entropy of the lens distribution in nats
)
ABLATIONS = ("carrier", "toppc", "random")


def sample_positions(mask: torch.Tensor, window_index: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``mask`` restricted to at most ``k`` of each window's allowed positions, drawn by a generator seeded
    with (seed, window index): the same positions whatever the batch or shard a window lands in."""
    out = torch.zeros_like(mask)
    for row in range(mask.shape[0]):
        allowed = torch.nonzero(mask[row]).flatten()
        if allowed.numel() <= k:
            out[row, allowed] = True
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(window_index[row]))
        out[row, allowed[torch.randperm(allowed.numel(), generator=g)[:k]]] = True
    return out


class LensProbe:
    """Logit lens, carrier-removed lens and band decomposition of the final top-1 margin."""

    def __init__(
        self,
        model: LoadedModel,
        sites: tuple[str, ...],
        carrier_dirs: dict[str, torch.Tensor],
        bands: list[torch.Tensor],
        positions: int = 0,
        seed: int = 0,
        top_pcs: dict[str, torch.Tensor] | None = None,
        centers: dict[str, torch.Tensor] | None = None,
    ) -> None:
        W, b = model.unembedding()
        self.model = model
        self.positions, self.seed = positions, seed  # positions per window read (0 = all), seeded per window
        self.sites = tuple(s for s in sites if s != "final") + ("final",)
        self.W = W.float()  # (d, V)
        self.bias = None if b is None else b.float()
        norm = model.final_norm()
        self.norm: Callable[[torch.Tensor], torch.Tensor] = norm if norm is not None else (lambda x: x)
        self.dirs = {s: (v / v.norm()).float().to(model.device) for s, v in carrier_dirs.items()}
        self.bands = [U.float().to(model.device) for U in bands]  # the margin's bands (centred W_U)
        self.rows: list[np.ndarray] = []  # per batch (windows, sites, columns)
        # per batch (windows, sites, 2 (K + 1) + 2 K): per site, the top-1 vs top-2 margin of its lens split into
        # per-band parts and the bias part, then the same for the rotated-h null, then per band the sum over the
        # window's tokens of its share of the token's |margin contribution| (real, then rotated). The null's own
        # top-2 needs a second vocabulary scan of every lens row (on every 4th row only, the null's sampling noise
        # at one layer was as large as the effect; the full scan cost no measurable time in the main job)
        self.margins: list[np.ndarray] = []
        d = W.shape[0]
        q, r = torch.linalg.qr(
            torch.randn(d, d, generator=torch.Generator().manual_seed(seed + 4242), dtype=torch.float64)
        )
        self.rotation = (q * torch.sign(torch.diagonal(r))).float().to(model.device)  # Haar-distributed
        self.index: list[np.ndarray] = []
        self._batch: Batch | None = None
        self._sel: tuple[torch.Tensor, torch.Tensor] | None = None
        self._top1: dict[str, torch.Tensor] = {}
        self._mod_top1: dict[str, torch.Tensor] = {}
        self._acc: dict[str, torch.Tensor] = {}
        self._margin_real: dict[str, torch.Tensor] = {}  # per site (tokens, K + 1)
        self._margin_rot: dict[str, torch.Tensor] = {}  # per site (null rows, K + 1)
        # per site: (site, lens rows f, [(edit key, edited rows g or None, span coefficients or None)])
        self._pending: list[tuple[str, torch.Tensor, list[tuple[str, torch.Tensor | None, torch.Tensor | None]]]] = []
        self.rows_per_product = 512  # the scan's row tile
        # per edit key (the site for the carrier projection, "site#ablation" for a mean ablation): the norm of
        # the edit's direction and norm(0), and their logits
        self._mod_basis: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._zero_logits: torch.Tensor | None = None
        # mean ablations (prediction 4): per site, (name, unit direction v, the amplitude h·v is set to)
        self.ablations: dict[str, list[tuple[str, torch.Tensor, float]]] = {}
        if top_pcs is not None and centers is not None:
            g = torch.Generator().manual_seed(seed * 7919 + 17)
            for s in (x for x in self.sites if x in self.dirs and x in top_pcs):
                c = centers[s].double()
                rnd = torch.randn(W.shape[0], generator=g, dtype=torch.float64)
                dirs = {
                    "carrier": self.dirs[s].double().cpu(),
                    "toppc": top_pcs[s].double(),
                    "random": rnd / rnd.norm(),
                }
                self.ablations[s] = [
                    (name, v.float().to(model.device), float(c.cpu() @ v.cpu())) for name, v in dirs.items()
                ]

    def _logits(self, f: torch.Tensor) -> torch.Tensor:
        out = f @ self.W.to(f.device)
        return out if self.bias is None else out + self.bias.to(f.device)

    def _span(
        self,
        site: str,
        f: torch.Tensor,
        g: torch.Tensor,
        dtype: torch.dtype,
        key: str | None = None,
        direction: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Coefficients that give the carrier-removed lens, ``norm(h - (h·u)u) @ W + b``, from the lens logits.

        A final norm that rescales each token by a scalar and then applies a fixed affine map (RMSNorm,
        LayerNorm, Gemma's (1 + w) RMSNorm, none) sends ``h - (h·u)u`` into the span of ``norm(h)``,
        ``norm(u)`` and ``norm(0)``, so its logits are the same combination of ``logits - b``,
        ``norm(u) @ W`` and ``norm(0) @ W``: no second vocabulary product. The coefficients are a per-token
        least squares in d (normal equations in float64); None where the span does not reproduce
        ``g = norm(h - (h·u)u)`` to 1e-5 (another kind of norm): then the full product is taken.
        """
        key = key or site
        vecs = (self._mod_basis.get(key) or self._basis(site, f.device, dtype, key, direction))[0]
        A = torch.cat([f[:, None, :], vecs[None].expand(len(f), -1, -1)], 1).double()  # (n, 1+k, d)
        gd = g.double()
        coef, info = torch.linalg.solve_ex(A @ A.transpose(1, 2), A @ gd[..., None])  # (n, 1+k, 1)
        coef = coef[..., 0]
        if bool(info.any()) or not bool(torch.isfinite(coef).all()):  # a singular span: take the full product
            return None
        err = (torch.einsum("nk,nkd->nd", coef, A) - gd).norm(dim=-1) / gd.norm(dim=-1).clamp_min(1e-30)
        if len(err) and float(err.max()) > 1e-5:
            return None
        return coef.float()

    def _mod_logits(self, key: str, logits: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(logits.device)
        return carrier_removed_logits(logits, coef, self._mod_basis[key][1], bias)

    @torch.no_grad()
    def _basis(
        self,
        site: str,
        device: torch.device,
        dtype: torch.dtype,
        key: str | None = None,
        direction: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = key or site
        z = (self.dirs[site] if direction is None else direction).to(device, dtype)[None]
        vecs = torch.cat([self.norm(z), self.norm(torch.zeros_like(z))]).float()
        size = vecs.norm(dim=-1)
        keep = size > 1e-12 * max(float(size.max()), 1e-30)  # norm(0) = 0 without a bias
        W = self.W.to(device)
        if self._zero_logits is None:  # norm(0) is the same for every site and edit: its logits are taken once
            self._zero_logits = vecs[1:] @ W
        logits = torch.cat([vecs[:1] @ W, self._zero_logits])
        self._mod_basis[key] = (vecs[keep], logits[keep])  # (k, d), (k, V)
        return self._mod_basis[key]

    def hooks(self) -> list[Hook]:
        return [(hook_name(s, self.model.arch), self._make(s)) for s in self.sites]

    def begin_batch(self, batch: Batch) -> None:
        self._batch, self._sel, self._pending = batch, None, []
        self._top1, self._mod_top1, self._acc = {}, {}, {}
        self._margin_real, self._margin_rot = {}, {}

    def _tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self._batch
        assert b is not None
        if self._sel is not None:
            return self._sel
        mask = b.stat_mask.clone()
        mask[:, -1] = False
        mask[:, :-1] &= b.attention_mask[:, 1:].bool()  # a next token must exist
        if self.positions > 0:
            mask = sample_positions(mask, b.window_index, self.positions, self.seed)
        target = torch.zeros_like(b.input_ids)
        target[:, :-1] = b.input_ids[:, 1:]
        self._sel = (mask, target[mask])
        return self._sel

    def _make(self, site: str) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            mask, _ = self._tokens()
            raw = x.detach()[mask.to(x.device)]  # (n, d) in the model's dtype (the norm's weights match it)
            h = raw.float()
            f = h if site == "final" else self.norm(raw).float()
            edits: list[tuple[str, torch.Tensor | None, torch.Tensor | None]] = []
            if site in self.dirs and site != "final":
                # an edit h + β v (β per token) stays in the span of norm(h), norm(v), norm(0): no second product
                u = self.dirs[site].to(h.device)
                g = self.norm((h - (h @ u)[:, None] * u).to(raw.dtype)).float()
                coef = self._span(site, f, g, raw.dtype)
                edits.append((site, None if coef is not None else g, coef))
                for name, v, amp in self.ablations.get(site, []):
                    v = v.to(h.device)
                    g = self.norm((h + (amp - h @ v)[:, None] * v).to(raw.dtype)).float()
                    key = f"{site}#{name}"
                    coef = self._span(site, f, g, raw.dtype, key, v)
                    edits.append((key, None if coef is not None else g, coef))
            self._pending.append((site, f, edits))  # scanned at the batch's end, with the model's output
            return x

        return fn

    def _flush(self) -> None:
        """One streamed vocabulary scan for the batch's sites (:func:`spectral.vocab.scan`: the logits are
        reduced tile by tile, never written whole), the model's output (the ``final`` rows) the reference of
        every lens row's entropy and KL."""
        if not self._pending:
            return
        _, target = self._tokens()
        parts: list[torch.Tensor] = []
        mods: list[ModSegment] = []
        # per site: (site, first and last lens row, per edit: (key, its ModSegment's index or None, first row
        # of its own product where the span failed, or None))
        where: list[tuple[str, int, int, list[tuple[str, int | None, int | None]]]] = []
        at = 0
        for site, f, edits in self._pending:
            parts.append(f)
            a, at = at, at + len(f)
            placed = []
            for key, g, coef in edits:
                mod = fb = None
                if coef is not None:
                    mod = len(mods)
                    mods.append(ModSegment(a, a + len(f), coef, self._mod_basis[key][1]))
                elif g is not None:  # the span failed: the edited rows take their own product
                    parts.append(g)
                    fb, at = at, at + len(g)
                placed.append((key, mod, fb))
            where.append((site, a, a + len(f), placed))
        F = torch.cat(parts)
        dev = F.device
        tgt = target.to(dev)
        ref = None
        final = [p[1] for p in self._pending if p[0] == "final"]
        if final:
            of = torch.full((len(F),), -1, dtype=torch.long, device=dev)
            for _, a, b, _ in where:
                of[a:b] = torch.arange(b - a, device=dev)
            ref = Reference(final[0], of)
        # every row is one of the selected tokens (lens rows and fallback rows alike) in the same order
        full_tgt = tgt.repeat(len(parts))
        bias = None if self.bias is None else self.bias.to(dev)
        res = scan(
            F, self.W.to(dev), bias, full_tgt, mods, (0, len(F)), rows=self.rows_per_product, ref=ref
        )  # top-2 of every row: margins
        assert res.top2 is not None
        null_rows: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (site, lens rows, their targets)
        for site, a, b, placed in where:
            self._top1[site] = res.top1[a:b].cpu()
            rank = res.rank[a:b].cpu().double()
            nan = torch.full((b - a,), float("nan"), dtype=torch.float64)
            kl = nan if res.kl is None else res.kl[a:b].cpu().double()
            if ref is not None and torch.equal(F[a:b], ref.F_ref):  # this lens is the output itself: KL exactly 0
                kl = torch.zeros_like(kl)
            ent = nan if res.entropy is None else res.entropy[a:b].cpu().double()
            self._acc[site] = torch.stack([(self._top1[site] == target).double(), rank, kl, ent], 1)
            for key, mod, fb in placed:
                if mod is not None:
                    self._mod_top1[key] = res.mod_top1[mod].cpu()
                elif fb is not None:
                    self._mod_top1[key] = res.top1[fb : fb + (b - a)].cpu()
            self._margin_real[site] = self._margin_parts(F[a:b], res.top2[a:b])
            null_rows.append((site, F[a:b], tgt))
        self._margin_null(null_rows)
        self._pending = []

    def _margin_parts(self, f: torch.Tensor, top2: torch.Tensor) -> torch.Tensor:
        """(n, K + 1): the top-1 vs top-2 logit margin of each row split over the bands, and the bias part."""
        W = self.W.to(f.device)
        dw = W[:, top2[:, 0]].T - W[:, top2[:, 1]].T  # (n, d)
        parts = [((dw @ U) * (f @ U)).sum(-1) for U in self.bands]
        bias = (
            self.bias.to(f.device)[top2[:, 0]] - self.bias.to(f.device)[top2[:, 1]]
            if self.bias is not None
            else torch.zeros_like(parts[0])
        )
        return torch.stack(parts + [bias], 1).double().cpu()

    def _margin_null(self, rows: list[tuple[str, torch.Tensor, torch.Tensor]]) -> None:
        """The rotated-h null's band parts: the rows turned by a fixed random rotation (same W_U, same norms,
        no alignment with it), their own top-2 found by one second scan for all the sites of a flush."""
        if not rows:
            return
        f = torch.cat([r[1] for r in rows])
        rot = f @ self.rotation.to(f.device)
        bias = None if self.bias is None else self.bias.to(f.device)
        res = scan(rot, self.W.to(f.device), bias, torch.cat([r[2] for r in rows]), (), (0, len(rot)))
        assert res.top2 is not None
        at = 0
        for site, fr, _ in rows:
            self._margin_rot[site] = self._margin_parts(rot[at : at + len(fr)], res.top2[at : at + len(fr)])
            at += len(fr)

    def end_batch(self) -> None:
        b = self._batch
        assert b is not None
        self._flush()
        mask, target = self._tokens()
        nw = b.input_ids.shape[0]
        tok_window = torch.arange(nw)[:, None].expand_as(mask)[mask]
        model_top1 = self._top1["final"]
        rows = torch.zeros(nw, len(self.sites), len(LENS_COLUMNS), dtype=torch.float64)
        for i, site in enumerate(self.sites):
            acc = self._acc[site]
            cols = [torch.ones(len(target), dtype=torch.float64), (self._top1[site] == model_top1).double()]
            cols += [acc[:, 0], acc[:, 1]]
            mod = self._mod_top1.get(site)
            nan = torch.full_like(acc[:, 0], float("nan"))
            if mod is not None:
                cols += [(mod == model_top1).double(), (mod == target).double()]
            else:
                cols += [nan, nan]
            for name in ABLATIONS:
                abl = self._mod_top1.get(f"{site}#{name}")
                cols.append((abl == target).double() if abl is not None else nan)
            cols += [acc[:, 2], acc[:, 3]]
            rows[:, i, :].index_add_(0, tok_window, torch.stack(cols, 1))
        K1 = len(self.bands) + 1
        K = K1 - 1
        marg = torch.zeros(nw, len(self.sites), 2 * K1 + 2 * K, dtype=torch.float64)
        for i, site in enumerate(self.sites):
            marg[:, i, :K1].index_add_(0, tok_window, self._margin_real[site])
            marg[:, i, K1 : 2 * K1].index_add_(0, tok_window, self._margin_rot[site])
            # the bounded per-token statistic of prediction 10: each band's share of the token's |margin
            # contribution| (band parts only), summed per window; the same for the rotated-h null
            for at, parts in ((2 * K1, self._margin_real[site]), (2 * K1 + K, self._margin_rot[site])):
                a = parts[:, :K].abs()
                marg[:, i, at : at + K].index_add_(0, tok_window, a / a.sum(1, keepdim=True).clamp_min(1e-300))
        self.rows.append(rows.numpy())
        self.margins.append(marg.numpy())
        self.index.append(b.window_index.numpy().copy())

    def state_dict(self) -> dict[str, Any]:
        t = self.table()
        idx, rows, margins = t.index, t.rows, t.margins
        return {"sites": list(self.sites), "index": torch.from_numpy(idx), "rows": torch.from_numpy(rows),
                "margins": torch.from_numpy(margins)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self.margins, self.index = [], [], []
        self.merge_state(state)

    def merge_state(self, state: dict[str, Any]) -> None:
        if list(state["sites"]) != list(self.sites):
            raise ValueError("cannot merge logit-lens states over different sites")
        if len(state["index"]):
            self.index.append(state["index"].numpy().copy())
            rows = state["rows"].numpy().copy()
            if rows.shape[-1] < len(LENS_COLUMNS):  # written before the KL columns existed
                pad = np.full(rows.shape[:-1] + (len(LENS_COLUMNS) - rows.shape[-1],), np.nan)
                rows = np.concatenate([rows, pad], -1)
            self.rows.append(rows)
            self.margins.append(state["margins"].numpy().copy())

    def table(self) -> LensTable:
        """(window_index (W,), lens rows (W, sites, columns), margin rows (W, sites, 2 (K + 1) + 2 K): per site
        the band parts and bias part of the lens's top-1 margin, then those of the rotated-h null, then the
        per-band |contribution| shares summed over tokens, real and rotated), by window."""
        idx = np.concatenate(self.index)
        order = np.argsort(idx, kind="stable")
        rows, margins = np.concatenate(self.rows)[order], np.concatenate(self.margins)[order]
        return LensTable(idx[order], rows, margins, self.sites, LENS_COLUMNS)


class HeadProbe:
    """Per-head z moments (bucketed) and attention received vs tail-band energy per token."""

    def __init__(
        self, model: LoadedModel, n_buckets: int, tail_band: torch.Tensor | None, positions: int = 0, seed: int = 0
    ) -> None:
        cfg = model.bridge.cfg
        self.model, self.n_buckets = model, n_buckets
        self.positions, self.seed = positions, seed  # (received, tail) pairs kept per window (0 = all), seeded
        self.L, self.H, self.dh = model.arch.n_layers, int(cfg.n_heads), int(cfg.d_head)
        f64 = torch.float64
        self.z_second = torch.zeros(self.L, n_buckets, self.H, self.dh, self.dh, dtype=f64)
        self.z_sum = torch.zeros(self.L, n_buckets, self.H, self.dh, dtype=f64)
        self.z_count = torch.zeros(self.L, n_buckets, dtype=f64)
        self.tail = None if tail_band is None else tail_band.float().to(model.device)
        # per layer: (n, 4) rows of window, received attention, tail-band energy, position (position 0 included:
        # sinks live there)
        self.pairs: list[list[np.ndarray]] = [[] for _ in range(self.L)]
        self._batch: Batch | None = None
        self._tail_energy: dict[int, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        pairs = []
        for layer in range(self.L):
            arr = np.concatenate(self.pairs[layer]) if self.pairs[layer] else np.zeros((0, 4))
            pairs.append(torch.from_numpy(arr[np.argsort(arr[:, 0], kind="stable")]))
        return {"z_second": self.z_second, "z_sum": self.z_sum, "z_count": self.z_count, "pairs": pairs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.z_second, self.z_sum, self.z_count = (state[k].clone() for k in ("z_second", "z_sum", "z_count"))
        self.pairs = [[p.numpy().copy()] if len(p) else [] for p in state["pairs"]]

    def merge_state(self, state: dict[str, Any]) -> None:
        if state["z_second"].shape != self.z_second.shape:
            raise ValueError("cannot merge head states of different shapes")
        self.z_second += state["z_second"]
        self.z_sum += state["z_sum"]
        self.z_count += state["z_count"]
        for layer, p in enumerate(state["pairs"]):
            if len(p):
                self.pairs[layer].append(p.numpy().copy())

    def W_O(self, layer: int) -> np.ndarray:
        """(heads, d_head, d_model) output weights of a layer."""
        return self.model.bridge.blocks[layer].attn.W_O.detach().double().cpu().numpy()

    def hooks(self) -> list[Hook]:
        out: list[Hook] = []
        for layer in range(self.L):
            out.append((f"blocks.{layer}.attn.hook_z", self._z(layer)))
            if self.tail is not None:
                out.append((hook_name(f"resid_pre.{layer}", self.model.arch), self._resid(layer)))
                out.append((f"blocks.{layer}.attn.hook_pattern", self._pattern(layer)))
        return out

    def begin_batch(self, batch: Batch) -> None:
        self._batch = batch
        self._tail_energy = {}

    def end_batch(self) -> None:
        pass

    def _z(self, layer: int) -> Callable[..., torch.Tensor]:
        def fn(z: torch.Tensor, hook: object) -> torch.Tensor:
            b = self._batch
            assert b is not None
            mask = b.stat_mask
            zz = z.detach().to("cpu", torch.float32)[mask]  # (n, H, dh)
            bucket = b.buckets(self.n_buckets)[torch.arange(mask.shape[0])[:, None].expand_as(mask)[mask]]
            for k in torch.unique(bucket).tolist():
                sel = zz[bucket == k]
                # Σ z zᵀ = Σ (z - m)(z - m)ᵀ + n m mᵀ with m the bucket's batch mean: the product in float32 about
                # the mean loses nothing to a large common component, the shift back is float64
                s = sel.double().sum(0)  # (H, dh)
                m = s / sel.shape[0]
                c = (sel - m.float()).transpose(0, 1)  # (H, n, dh)
                self.z_second[layer, k] += torch.bmm(c.transpose(1, 2), c).double() + sel.shape[0] * (
                    m[:, :, None] * m[:, None, :]
                )
                self.z_sum[layer, k] += s
                self.z_count[layer, k] += sel.shape[0]
            return z

        return fn

    def _resid(self, layer: int) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            assert self.tail is not None
            h = x.detach().float()
            e = (h @ self.tail.to(h.device)).pow(2).sum(-1) / h.pow(2).sum(-1).clamp_min(1e-30)
            self._tail_energy[layer] = e.cpu()
            return x

        return fn

    def _pattern(self, layer: int) -> Callable[..., torch.Tensor]:
        def fn(p: torch.Tensor, hook: object) -> torch.Tensor:
            b = self._batch
            assert b is not None
            A = p.detach().float().mean(1).cpu()  # (batch, q, k), averaged over heads
            valid_q = b.attention_mask.bool()
            A = A * valid_q[:, :, None]
            if self.model.arch.is_causal:  # key j can be seen by queries i >= j
                n_q = torch.flip(torch.cumsum(torch.flip(valid_q.double(), [1]), 1), [1])
            else:
                n_q = valid_q.double().sum(1, keepdim=True).expand_as(valid_q)
            received = A.sum(1).double() / n_q.clamp_min(1)  # (batch, k)
            mask = b.stat_mask
            if self.positions > 0:
                mask = sample_positions(mask, b.window_index, self.positions, self.seed)
            mask = mask.clone()
            mask[:, 0] = valid_q[:, 0]  # position 0 always: the sink analyses include it
            win = b.window_index[:, None].expand_as(mask)[mask].double()
            pos = torch.arange(mask.shape[1])[None, :].expand_as(mask)[mask].double()
            tail = self._tail_energy[layer][mask].double()
            self.pairs[layer].append(torch.stack([win, received[mask], tail, pos], 1).numpy())
            return p

        return fn


class TypeProbe:
    """Self-similarity by token type (Ethayarajh 2019) at chosen sites, across windows only."""

    def __init__(self, model: LoadedModel, windows: TokenWindows, sites: tuple[str, ...], max_types: int) -> None:
        ids = windows.ids[:, 1:] if windows.has_bos else windows.ids
        uniq, counts = torch.unique(ids, return_counts=True)
        order = counts.argsort(descending=True)
        chosen = [int(t) for t in uniq[order] if int(counts[uniq == t]) >= 2][:max_types]
        self.types = torch.tensor(chosen, dtype=torch.long)
        self.lookup = torch.full((int(windows.ids.max()) + 1,), -1, dtype=torch.long)
        self.lookup[self.types] = torch.arange(len(chosen))
        d, K = model.arch.d_model, len(chosen)
        self.model, self.sites = model, sites
        self.S = {s: torch.zeros(K, d, dtype=torch.float64) for s in sites}  # Σ û per type
        self.Q = {s: torch.zeros(K, dtype=torch.float64) for s in sites}  # Σ_windows ‖Σ û in window‖²
        self.n = torch.zeros(K, dtype=torch.float64)
        self.C = torch.zeros(K, dtype=torch.float64)  # Σ_windows n_tw²
        self._batch: Batch | None = None

    def hooks(self) -> list[Hook]:
        return [(hook_name(s, self.model.arch), self._make(s)) for s in self.sites]

    def _selection(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = self._batch
        assert b is not None
        ids = b.input_ids.clamp_max(len(self.lookup) - 1)
        t = self.lookup[ids]
        mask = b.stat_mask & (t >= 0)
        win = torch.arange(ids.shape[0])[:, None].expand_as(ids)[mask]
        return mask, t[mask], win

    def begin_batch(self, batch: Batch) -> None:
        self._batch = batch
        _, t, win = self._selection()
        nw = batch.input_ids.shape[0]
        key = t * nw + win
        per = torch.zeros(len(self.types) * nw, dtype=torch.float64).index_add_(0, key, torch.ones(len(key)).double())
        self.n.index_add_(0, t, torch.ones(len(t), dtype=torch.float64))
        self.C += (per.view(len(self.types), nw) ** 2).sum(1)

    def end_batch(self) -> None:
        pass

    def _make(self, site: str) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            mask, t, win = self._selection()
            h = x.detach().to("cpu", torch.float64)[mask]
            u = h / h.norm(dim=1, keepdim=True).clamp_min(1e-300)
            nw = x.shape[0]
            self.S[site].index_add_(0, t, u)
            keys, inv = torch.unique(t * nw + win, return_inverse=True)  # the (type, window) pairs present
            per = torch.zeros(len(keys), u.shape[1], dtype=torch.float64).index_add_(0, inv, u)
            self.Q[site].index_add_(0, keys // nw, per.pow(2).sum(1))
            return x

        return fn

    def state_dict(self) -> dict[str, Any]:
        return {"types": self.types, "S": dict(self.S), "Q": dict(self.Q), "n": self.n, "C": self.C}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not torch.equal(state["types"], self.types):
            raise ValueError("cannot restore self-similarity state chosen over other token types")
        self.S = {s: v.clone() for s, v in state["S"].items()}
        self.Q = {s: v.clone() for s, v in state["Q"].items()}
        self.n, self.C = state["n"].clone(), state["C"].clone()

    def merge_state(self, state: dict[str, Any]) -> None:
        if not torch.equal(state["types"], self.types):
            raise ValueError("cannot merge self-similarity states chosen over other token types")
        for s in self.sites:
            self.S[s] += state["S"][s]
            self.Q[s] += state["Q"][s]
        self.n += state["n"]
        self.C += state["C"]

    def self_similarity(self, site: str) -> np.ndarray:
        """Per type: mean cosine over pairs of occurrences in different windows (NaN if none)."""
        pairs = self.n**2 - self.C
        sims = (self.S[site].pow(2).sum(1) - self.Q[site]) / pairs
        return torch.where(pairs > 0, sims, torch.full_like(sims, float("nan"))).numpy()


class CosineProbe:
    """Corpus-level layer × layer cosine: mean over tokens of cos(h_l, h_m) for the same token.

    The unit vectors of the batch's sites are held until the batch ends (sites × tokens × d
    float32 on the model's device, the only probe that holds activations, for one batch); the
    per-pair sums are kept per bucket of windows (contiguous blocks) for a jackknife interval.
    """

    def __init__(self, model: LoadedModel, sites: tuple[str, ...], n_buckets: int) -> None:
        self.model, self.sites, self.n_buckets = model, sites, n_buckets
        n = len(sites)
        self.sums = torch.zeros(n_buckets, n, n, dtype=torch.float64)
        self.count = torch.zeros(n_buckets, dtype=torch.float64)
        self._batch: Batch | None = None
        self._units: dict[str, torch.Tensor] = {}

    def hooks(self) -> list[Hook]:
        return [(hook_name(s, self.model.arch), self._make(s)) for s in self.sites]

    def begin_batch(self, batch: Batch) -> None:
        self._batch, self._units = batch, {}

    def _make(self, site: str) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            b = self._batch
            assert b is not None
            h = x.detach()[b.stat_mask.to(x.device)].float()
            self._units[site] = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            return x

        return fn

    def end_batch(self) -> None:
        b = self._batch
        assert b is not None
        U = torch.stack([self._units[s] for s in self.sites])  # (sites, n, d)
        mask = b.stat_mask
        bucket = b.buckets(self.n_buckets)[torch.arange(mask.shape[0])[:, None].expand_as(mask)[mask]]
        for k in torch.unique(bucket).tolist():
            sel = (bucket == k).to(U.device)
            Uk = U[:, sel].reshape(len(self.sites), -1)  # (sites, n d): one float32 product, summed in float64
            self.sums[k] += (Uk @ Uk.T).to("cpu", torch.float64)
            self.count[k] += float(sel.sum())
        self._units = {}

    def state_dict(self) -> dict[str, Any]:
        return {"sites": list(self.sites), "sums": self.sums, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.count = state["sums"].clone(), state["count"].clone()

    def merge_state(self, state: dict[str, Any]) -> None:
        if list(state["sites"]) != list(self.sites):
            raise ValueError("cannot merge layer-cosine states over different sites")
        self.sums += state["sums"]
        self.count += state["count"]

    def matrix(self, level: float) -> CosineMatrix:
        """(value, ci_low, ci_high), each (sites, sites); jackknife over the non-empty buckets."""
        from spectral.analysis.intervals import bucket_jackknife

        keep = [k for k in range(self.n_buckets) if self.count[k] > 0]
        shape = self.sums.shape[1:]

        def cos(sums: np.ndarray, count: np.ndarray) -> np.ndarray:
            return sums / max(float(count), 1.0)

        est = bucket_jackknife([self.sums.numpy(), self.count.numpy()], cos, level, keep)
        value, lo, hi = (np.array([getattr(e, a) for e in est]).reshape(shape) for a in ("value", "ci_low", "ci_high"))
        return CosineMatrix(value, lo, hi, self.sites)
