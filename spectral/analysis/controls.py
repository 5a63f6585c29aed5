"""Controls S and P (control R, the random-weight twin, comes from spectral.models).

* S, ``shuffled``: the tokens of each window are permuted (BOS/CLS stays in front), seeded by the
  run seed and the window index, so sequence order is destroyed while the bag of tokens is kept.
* P, ``permuted``: the tokens stay, the position ids are permuted the same way (position 0 stays
  0), so the model sees every token at a wrong position. Models without position ids in their
  forward signature cannot run P; the run then reports it as not applicable.
"""

import dataclasses

import numpy as np
import torch

from spectral.corpus import Batch, TokenWindows


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
