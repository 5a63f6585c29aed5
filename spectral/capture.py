"""Residual-stream capture on a TransformerLens 4 ``TransformerBridge``.

Site names are architecture independent (:mod:`spectral.sites`): ``embed``, ``resid_pre.l``, ``attn_out.l``,
``resid_mid.l``, ``mlp_out.l``, ``resid_post.l`` and ``final``. What each one holds:

* pre-LN decoders (GPT-2, Llama, GPT-NeoX): ``embed`` is the token embedding (``hook_embed``;
  GPT-2 adds learned positions on top, so ``resid_pre.0`` differs from it), ``attn_out`` and
  ``mlp_out`` are the sub-layer writes, ``resid_mid = resid_pre + attn_out`` and
  ``resid_post = resid_mid + mlp_out`` exactly, ``final`` is the output of the final norm
  (what the unembedding reads). Parallel-residual blocks (GPT-NeoX) have no ``resid_mid``.
* post-LN encoders (BERT family): ``embed`` is the normalised embedding sum (= Hugging Face
  ``hidden_states[0]``), ``attn_out`` the attention output projection before the add,
  ``resid_mid = LN1(resid_pre + attn_out)``, ``mlp_out`` the FFN output projection before the
  add, ``resid_post = LN2(resid_mid + mlp_out)`` (= ``hidden_states[l+1]``); ``final`` equals
  ``resid_post`` of the last layer (an encoder has no final norm). The sums do not hold.

Hooks exist only inside :func:`capture` (a context manager, removed in ``finally``).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from jaxtyping import Float
from tqdm import tqdm

from spectral.backends import Backend, backend_of
from spectral.corpus import Batch, TokenWindows, iter_batches
from spectral.errors import NumericsError
from spectral.models import LoadedModel
from spectral.sites import (  # noqa: F401 - the site names' home is spectral.sites; re-exported for callers
    RESIDUAL_KINDS,
    SUBLAYER_SITES,
    Site,
    all_sites,
    hook_name,
    residual_predecessors,
    select_sites,
    site_layer,
    stream_aliases,
    write_inputs,
)
from spectral.stats import SiteStats, StatsBank


@contextmanager
def hooked(
    model: LoadedModel, hooks: list[tuple[str, Callable[..., Any]]], backend: Backend | None = None
) -> Iterator[None]:
    """Bridge-named hooks registered for the block on ``backend`` (default: the model's bridge), removed on
    exit, also on error."""
    with (backend or backend_of(model)).hooks(hooks):
        yield


@contextmanager
def capture(
    model: LoadedModel,
    sites: tuple[str, ...],
    sink: Callable[[str, torch.Tensor], None],
    backend: Backend | None = None,
) -> Iterator[None]:
    """Within the block, every forward pass calls ``sink(site, activation)`` for each site.

    Activations are passed on unchanged; hooks are removed when the block exits, also on error.
    """

    def make(site: str) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            sink(site, x)
            return x

        return fn

    with hooked(model, [(hook_name(s, model.arch), make(s)) for s in sites], backend):
        yield


def forward(
    model: LoadedModel, batch: Batch, position_ids: torch.Tensor | None = None, backend: Backend | None = None
) -> None:
    """One forward pass without computing logits (hooks do the work), on ``backend`` (default: the bridge)."""
    dev = model.device
    extra = {} if position_ids is None else {"position_ids": position_ids.to(dev)}
    (backend or backend_of(model)).forward(batch.input_ids.to(dev), batch.attention_mask.to(dev), **extra)


def capture_activations(
    model: LoadedModel, batch: Batch, sites: tuple[str, ...]
) -> dict[str, Float[torch.Tensor, "batch seq d"]]:
    """Activations of a small batch at ``sites`` (float32, CPU). For prompts and tests only."""
    got: dict[str, torch.Tensor] = {}
    with capture(model, sites, lambda s, x: got.__setitem__(s, x.detach().float().cpu().clone())):
        forward(model, batch)
    return got


def new_bank(
    model: LoadedModel,
    sites: tuple[str, ...],
    n_buckets: int,
    centers: dict[str, torch.Tensor] | None = None,
    sink_thresholds: dict[str, float] | None = None,
    moment_dtype: torch.dtype = torch.float32,
) -> StatsBank:
    """Empty statistics for ``sites``: residual sites track sink tokens, writes their inputs."""
    d = model.arch.d_model
    inputs = write_inputs(sites, model.arch)
    aliases = stream_aliases(sites)
    stats = [
        SiteStats(
            d,
            n_buckets,
            None if centers is None else centers[s],
            None if sink_thresholds is None or Site.parse(s).kind not in RESIDUAL_KINDS else sink_thresholds[s],
            cross=s in inputs,
            device=model.device,
            moment_dtype=moment_dtype,
        )
        for s in sites
        if s not in aliases
    ]
    preds = residual_predecessors(sites, model.arch)
    bank = StatsBank(sites, preds, stats, inputs, aliases)
    if centers is not None:
        for site, prev in preds.items():
            if site not in aliases:
                bank[site].prev_center = centers[prev].detach().to("cpu", torch.float64).clone()
    return bank


class Probe(Protocol):
    """Something that reads the forward pass through its own hooks (see spectral.probes)."""

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]: ...
    def begin_batch(self, batch: Batch) -> None: ...
    def end_batch(self) -> None: ...


_LIBC: Any = None


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    glibc raises its mmap threshold each time a large block is freed, after which the per-batch
    buffers (MBs each) come from the heap and are not given back: RSS then grows by tens of MB per
    batch (measured: MiniLM 0.7 -> 3 GB over 60 batches). Trimming after every batch (~4 ms a call)
    keeps memory flat (every 8 batches: +11 % from 20k to 200k tokens); fixing the threshold instead
    (mallopt) made every forward 25-45 % slower."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import os
        import sys

        _LIBC = False
        if sys.platform.startswith("linux") and os.environ.get("SPECTRAL_MALLOC") != "default":
            try:
                _LIBC = ctypes.CDLL("libc.so.6")
                _LIBC.malloc_trim  # noqa: B018 - glibc only
            except (OSError, AttributeError):
                _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def nonfinite_tokens(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) real tokens whose vector holds a NaN/inf, on ``x``'s device.

    A NaN/inf anywhere in a vector makes its sum non-finite: one reduction, no full-size boolean tensor. The sum
    is taken in float32 at least (a float16 sum of finite values overflows at 65504), so only a vector whose
    float32 sum overflows (|sum| > 3e38, where the statistics would overflow too) is flagged wrongly."""
    xs = x.detach()
    bad = ~torch.isfinite(xs.sum(dim=-1, dtype=torch.promote_types(xs.dtype, torch.float32)))
    return bad & attention_mask.bool().to(x.device)


def nonfinite_error(site: str, window: int, position: int, n_tokens: int) -> NumericsError:
    """The one-line error for NaN/inf activations (capture and calibration)."""
    return NumericsError(
        f"non-finite activations (NaN/inf) at site {site}, window {window}, position {position} ({n_tokens} tokens "
        "in this batch); set [capture] nonfinite = 'exclude' to drop such windows"
    )


def accumulate(
    model: LoadedModel,
    windows: TokenWindows,
    bank: StatsBank,
    batch_size: int,
    exclude_first: bool = True,
    progress: str | None = None,
    probes: tuple[Probe, ...] = (),
    positions: Callable[[Batch], torch.Tensor] | None = None,
    nonfinite: str = "fail",
    on_batch: Callable[[int, int], None] | None = None,
    start_batch: int = 0,
    backend: Backend | None = None,
) -> StatsBank:
    """Stream every window through the model, updating ``bank`` (and probes) inside the hooks.

    A site another site depends on (its residual predecessor, or the input of a write) is held
    only until its last consumer has fired, so memory stays at a few activation tensors.
    NaN/inf at any site either fails with the site and window named (``nonfinite="fail"``) or,
    with ``"exclude"``, a checking pass finds such windows first and they are left out
    (``bank.excluded`` lists them, ``bank.nonfinite_counts`` counts bad values per site).
    ``start_batch`` skips the batches a resumed run has already added.
    """
    consumers: dict[str, int] = {}
    for dep in list(bank.predecessors.values()) + list(bank.inputs.values()):
        consumers[dep] = consumers.get(dep, 0) + 1
    held: dict[str, torch.Tensor] = {}
    left: dict[str, int] = {}
    current: list[Batch] = []

    def take(site: str | None) -> torch.Tensor | None:
        if site is None or site not in held:
            return None
        x = held[site]
        left[site] -= 1
        if left[site] == 0:
            del held[site]
        return x

    def sink(site: str, x: torch.Tensor) -> None:
        b = current[0]
        bad = nonfinite_tokens(x, b.attention_mask)
        if bool(bad.any()):
            row, pos = (int(v) for v in torch.nonzero(bad)[0])
            raise nonfinite_error(site, int(b.window_index[row]), pos, int(bad.sum()))
        prev = take(bank.predecessors.get(site))
        inp = take(bank.inputs.get(site))
        if site not in bank.aliases:  # an alias's statistics were added under the site it repeats
            first = (b.attention_mask[:, 0] > 0) & ~b.stat_mask[:, 0].bool()  # position 0 real, not counted
            bank[site].update(x, b.stat_mask, b.window_index, b.buckets(bank[site].n_buckets), b.full, prev, inp, first)
        if site in consumers:
            held[site] = x.detach()
            left[site] = consumers[site]

    batches = list(iter_batches(windows, batch_size, exclude_first))
    bar = tqdm(batches, desc=progress, unit="batch", disable=progress is None, leave=False)
    extra = [h for p in probes for h in p.hooks()]
    for i, batch in enumerate(bar):
        if i < start_batch:
            continue
        if nonfinite == "exclude":  # a checking pass without the statistics' hooks
            checked = _drop_nonfinite(model, bank, batch, positions, backend)
            if checked is None:
                continue
            batch = checked
        current[:] = [batch]
        held.clear()
        with capture(model, bank.sites, sink, backend), hooked(model, extra, backend):
            for p in probes:
                p.begin_batch(batch)
            forward(model, batch, None if positions is None else positions(batch), backend)
            for p in probes:
                p.end_batch()
        if model.device.type == "cpu":  # the host heap holds activations only on the CPU
            release_free_memory()
        if on_batch is not None:  # progress for front ends; raising here cancels the run
            on_batch(i + 1, len(batches))
    return bank


def _drop_nonfinite(
    model: LoadedModel,
    bank: StatsBank,
    batch: Batch,
    positions: Callable[[Batch], torch.Tensor] | None,
    backend: Backend | None = None,
) -> Batch | None:
    """Checking pass: the batch without its windows that hold NaN/inf at any site (None if empty)."""
    bad_rows = torch.zeros(batch.input_ids.shape[0], dtype=torch.bool)

    def check(site: str) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            bad = nonfinite_tokens(x, batch.attention_mask).cpu()
            if bool(bad.any()):
                bank.nonfinite_counts[site] = bank.nonfinite_counts.get(site, 0) + int(bad.sum())
                bad_rows.logical_or_(bad.any(dim=1))
            return x

        return fn

    hooks = [(hook_name(s, model.arch), check(s)) for s in bank.sites]
    with hooked(model, hooks, backend):
        forward(model, batch, None if positions is None else positions(batch), backend)
    if not bool(bad_rows.any()):
        return batch
    bank.excluded.extend(int(w) for w in batch.window_index[bad_rows])
    keep = ~bad_rows
    if not bool(keep.any()):
        return None
    return batch.select(keep)


@dataclass(frozen=True)
class Calibration:
    """Per-site facts from the calibration set (the run's first windows), fixed for the rest of the run."""

    centers: dict[str, torch.Tensor]  # site means: centre of the centred cosine, carrier for the lens
    median_norms: dict[str, float]
    top_pcs: dict[str, torch.Tensor] = field(default_factory=dict)  # top principal directions

    def state_dict(self) -> dict[str, Any]:
        return {"centers": dict(self.centers), "median_norms": dict(self.median_norms), "top_pcs": dict(self.top_pcs)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Calibration":
        medians = {k: float(v) for k, v in state["median_norms"].items()}
        return cls(dict(state["centers"]), medians, dict(state.get("top_pcs", {})))


def calibrate(
    model: LoadedModel,
    windows: TokenWindows,
    sites: tuple[str, ...],
    batch_size: int,
    exclude_first: bool = True,
    positions: Callable[[Batch], torch.Tensor] | None = None,
    nonfinite: str = "fail",
    backend: Backend | None = None,
    n_windows: int = 4,
    pc_sites: tuple[str, ...] = (),
) -> Calibration:
    """Site means and median norms over the calibration set: the first ``n_windows`` windows of the
    run (fixed by the config, so the centres do not depend on ``batch_size``), ``batch_size`` at a time.

    Only Σh, the token count and the norms of each site are kept (no d x d moments: calibrating a
    30-layer model used to allocate a second statistics bank). Windows with NaN/inf at any site fail
    the run or, with ``nonfinite="exclude"``, are left out of the calibration. ``pc_sites`` also get the
    top principal direction of their centred covariance over the calibration set (the null direction of
    prediction 4's ablations)."""
    sums: dict[str, torch.Tensor] = {}
    seconds: dict[str, torch.Tensor] = {}
    norms: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    count = 0
    for batch in iter_batches(windows.select(slice(0, max(1, n_windows))), batch_size, exclude_first):
        got: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        bad = torch.zeros(batch.input_ids.shape[0], dtype=torch.bool)

        def sink(site: str, x: torch.Tensor, batch: Batch = batch, got=got, bad=bad) -> None:
            h = x.detach().to("cpu", torch.float32)
            nonfin = nonfinite_tokens(h, batch.attention_mask)
            if bool(nonfin.any()):
                if nonfinite == "fail":
                    row, pos = (int(v) for v in torch.nonzero(nonfin)[0])
                    raise nonfinite_error(site, int(batch.window_index[row]), pos, int(nonfin.sum()))
                bad.logical_or_(nonfin.any(dim=1))
            m = batch.stat_mask[..., None].double()
            h = torch.nan_to_num(h.double(), nan=0.0, posinf=0.0, neginf=0.0)
            got[site] = ((h * m).sum(1), h.norm(dim=-1))  # per-window sums (B, d), norms (B, T): no activations
            if site in pc_sites:
                hm = (h * m).reshape(-1, h.shape[-1])
                seconds[site] = seconds.get(site, 0) + hm.T @ hm  # Σ h hᵀ over the counted tokens

        with capture(model, sites, sink, backend):
            forward(model, batch, None if positions is None else positions(batch), backend)
        keep = batch.stat_mask & ~bad[:, None]
        count += int(keep.sum())
        for s in sites:
            win_sums, win_norms = got[s]
            sums[s] = sums.get(s, 0) + win_sums[~bad].sum(0)
            norms[s].append(win_norms[keep])
    n = max(count, 1)
    centers = {s: sums[s] / n for s in sites}
    medians = {s: float(torch.cat(norms[s]).median()) if count else float("nan") for s in sites}
    top_pcs = {}
    for s in pc_sites:
        if s in seconds and count > 1:
            cov = seconds[s] / n - torch.outer(centers[s], centers[s])
            _, vecs = torch.linalg.eigh(cov.float())
            top_pcs[s] = vecs[:, -1].double()
    return Calibration(centers, medians, top_pcs)
