"""Per-token similarity across layers (for prompts and small batches of activations).

The corpus-level similarity statistics (anisotropy, Ethayarajh's self- and intra-sentence
similarity) stream through :mod:`spectral.stats` and :mod:`spectral.probes`; this module holds
the direct computations the app's single-prompt view needs.
"""

import numpy as np


def layer_cosine_matrix(h: np.ndarray, skip_first: bool = True) -> np.ndarray:
    """(L, L) mean over tokens of cos(h_l, h_m) for activations h of shape (layers, tokens, d)."""
    x = h[:, 1:] if skip_first and h.shape[1] > 1 else h
    u = x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-300)
    return np.einsum("ltd,mtd->lm", u, u) / x.shape[1]
