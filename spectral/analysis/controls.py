"""Controls S and P, and the weight-level nulls W and R's ensemble members.

* R, ``random_init.s<seed>``: the architecture at its library's init (spectral.models builds the
  first twin; :func:`reinitialise` gives it the next seed in place).
* R rescaled, ``random_scaled.s<seed>``: an R twin with every parameter tensor rescaled to the trained
  one's norm (:func:`rescale_to`, norms from :func:`parameter_norms`): the learned scale without the structure.
* W, ``permuted_weights`` (and ``permuted_weights.s<seed>`` for the further permutations of the ensemble):
  :func:`permute_weights` permutes each weight matrix's entries.

* S, ``shuffled``: the tokens of each window are permuted (BOS/CLS stays in front), seeded by the
  run seed and the window index, so sequence order is destroyed while the bag of tokens is kept.
* P, ``permuted``: the tokens stay, the position ids are permuted the same way (position 0 stays
  0), so the model sees every token at a wrong position. Models without position ids in their
  forward signature cannot run P; the run then reports it as not applicable.
"""

import dataclasses
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from spectral.corpus import Batch, TokenWindows
from spectral.scoped import seeded


def _perm(seed: int, window: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, window]).permutation(n)


def shuffle_windows(windows: TokenWindows, seed: int) -> TokenWindows:
    """Control S: every window's tokens in a seeded random order (the BOS token stays first)."""
    start = 1 if windows.has_bos else 0
    ids = windows.ids.clone()
    for i, w in enumerate(windows.window_index.tolist()):
        body = ids[i, start:]
        ids[i, start:] = body[torch.from_numpy(_perm(seed, w, body.shape[0]))]
    return dataclasses.replace(windows, ids=ids)


def permuted_positions(seed: int, has_bos: bool):
    """Control P: a function batch -> position ids, seeded per window (position 0 kept for BOS)."""

    def positions(batch: Batch) -> torch.Tensor:
        T = batch.input_ids.shape[1]
        start = 1 if has_bos else 0
        rows = []
        for w in batch.window_index.tolist():
            rows.append(np.concatenate([np.arange(start), start + _perm(seed, w, T - start)]))
        return torch.from_numpy(np.stack(rows)).long()

    return positions


def weight_matrices(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every weight matrix (two or more dimensions, embeddings included), a matrix shared by
    two modules (tied embeddings) once: what W permutes."""
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if p.ndim >= 2 and id(p) not in seen:
            seen.add(id(p))
            yield name, p


def permuted_matrices(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every matrix :func:`permute_weights` permutes, by name: the source from which each member of the
    W ensemble is drawn, and from which the trained weights come back exactly."""
    return {name: p.detach().clone() for name, p in weight_matrices(model)}


@torch.no_grad()
def restore_matrices(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy ``saved`` (from :func:`permuted_matrices`) back into the model's parameters, exactly."""
    params = dict(model.named_parameters(remove_duplicate=True))
    for name, t in saved.items():
        params[name].data.copy_(t)


@torch.no_grad()
def permute_weights(
    model: torch.nn.Module, seed: int, inverse: bool = False, source: dict[str, torch.Tensor] | None = None
) -> int:
    """Control W, in place: the entries of every weight matrix (every parameter with two or more
    dimensions, embeddings included) permuted at random, seeded per parameter name. Each matrix keeps
    its distribution of values and its norm; the learned structure is gone. Vectors (norm gains, biases)
    stay. A matrix shared by two modules (tied embeddings) is permuted once. ``inverse`` undoes the same
    seed's permutation exactly (the notebook API gives the caller's model back). ``source`` (from
    :func:`permuted_matrices`): permute those matrices into the model instead of its current ones, so that the
    members of the W ensemble follow each other without undoing the previous one (one permutation each, not
    two). Returns the count.

    Each matrix has its own generator, so the matrices are permuted on two threads, largest first (``randperm``
    is sequential; the embedding's is the longest task): the same weights as one after the other."""
    mats = sorted(weight_matrices(model), key=lambda x: -x[1].numel())

    @torch.no_grad()  # grad mode is per thread
    def one(item: tuple[str, torch.nn.Parameter]) -> None:
        name, p = item
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        flat = p.data.reshape(-1)
        # int32 indices where they fit: the same permutation as int64 (same generator draws), ~30 % faster
        dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
        perm = torch.randperm(flat.numel(), generator=g, dtype=dtype).to(flat.device)
        if source is not None:
            flat.copy_(source[name].reshape(-1).to(flat.device)[perm])
        elif inverse:  # x[perm] = y undoes y = x[perm] (no argsort of the permutation)
            flat[perm] = flat.clone()
        else:
            flat.copy_(flat[perm])

    workers = min(2, torch.get_num_threads(), len(mats))
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, mats))
    else:
        for item in mats:
            one(item)
    return len(mats)


def parameter_norms(model: torch.nn.Module) -> dict[str, float]:
    """The Frobenius norm of every parameter tensor (tied ones once), by name: what the rescaled R keeps."""
    return {n: float(p.detach().double().norm()) for n, p in model.named_parameters(remove_duplicate=True)}


@torch.no_grad()
def rescale_to(model: torch.nn.Module, norms: dict[str, float]) -> int:
    """The rescaled random twin, in place: every parameter tensor named in ``norms`` multiplied so that its
    Frobenius norm is the trained one's (matrices, norm gains and biases alike; a zero tensor stays zero). The
    twin keeps its random structure and takes the learned scale. Returns the count."""
    n = 0
    for name, p in model.named_parameters(remove_duplicate=True):
        cur = float(p.detach().double().norm())
        if name in norms and cur > 0:
            p.mul_(norms[name] / cur)
            n += 1
    return n


@torch.no_grad()
def reinitialise(model: torch.nn.Module, seed: int) -> None:
    """Give a random-weight twin a fresh library init with ``seed`` (the next member of the R ensemble
    without building the model again): every module's ``_init_weights`` under ``torch.manual_seed`` (scoped:
    the caller's random stream is restored).
    Tied matrices (input and output embeddings) are one parameter and stay tied; nothing is re-tied
    (``tie_weights`` fails on a BERT checkpoint without its MLM head)."""
    with seeded(seed):  # the caller's random stream is left as it was
        model.apply(model._init_weights)  # type: ignore[attr-defined,operator]
