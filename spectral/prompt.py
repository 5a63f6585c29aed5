"""One prompt through the model, for display: each token's norm and carrier share across layers, the layer
x layer cosine, the tokens' trajectories in the top principal components and the logit lens's top token per
layer. The maths of the app's Single-prompt page, usable from a notebook (``sp.trace_prompt``).

Carrier share of a token = ⟨h, μ̂⟩² / ‖h‖², μ̂ the mean direction of this prompt's tokens at that layer
(position 0 excluded, as in the run's statistics). Display only: one prompt has no null and no interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from jaxtyping import Float

from spectral.analysis.carrier import decompose
from spectral.analysis.similarity import layer_cosine_matrix
from spectral.capture import capture_activations
from spectral.corpus import bos_id, pad_batch, tokenize
from spectral.errors import CorpusError
from spectral.models import LoadedModel


@dataclass(frozen=True)
class PromptTrace:
    """The resid_post activations of one prompt (BOS/CLS included as position 0 where the tokenizer has one)."""

    tokens: list[str]
    h: Float[np.ndarray, "layers tokens d"]
    ids: tuple[int, ...] = ()

    @property
    def n_layers(self) -> int:
        return int(self.h.shape[0])

    @cached_property
    def norms(self) -> Float[np.ndarray, "layers tokens"]:
        """‖h‖ of each token at each layer."""
        return np.linalg.norm(self.h, axis=-1)

    @cached_property
    def carrier_share(self) -> Float[np.ndarray, "layers tokens"]:
        """⟨h, μ̂_l⟩² / ‖h‖² per token and layer, μ̂_l the mean direction of the prompt's tokens (position 0
        excluded; the only token when the prompt has one)."""
        out = np.zeros(self.h.shape[:2])
        for layer in range(self.n_layers):
            x = torch.as_tensor(self.h[layer])
            mu = x[1:].mean(0) if x.shape[0] > 1 else x[0]
            coeff, _ = decompose(x, mu)
            out[layer] = (coeff**2 / (x.norm(dim=-1) ** 2).clamp_min(1e-30)).numpy()
        return out

    def layer_cosine(self) -> Float[np.ndarray, "layers layers"]:
        """Mean over tokens (position 0 excluded) of cos(h_l, h_m) for the same token."""
        return layer_cosine_matrix(self.h)

    def pca_trajectory(self, k: int = 2) -> Float[np.ndarray, "layers tokens k"]:
        """Every token at every layer in the top-``k`` principal components of all (layer, token) points."""
        flat = self.h.reshape(-1, self.h.shape[-1])
        centred = flat - flat.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return (centred @ vt[:k].T).reshape(self.n_layers, self.h.shape[1], k)


def trace_prompt(model: LoadedModel, text: str, max_tokens: int = 64) -> PromptTrace:
    """Capture resid_post.0..L-1 for one prompt (at most ``max_tokens`` tokens, plus BOS where there is one)."""
    ids = tokenize(model.tokenizer, text)[:max_tokens]
    if not ids:
        raise CorpusError("the prompt has no tokens")
    b = bos_id(model.tokenizer)
    if b is not None:
        ids = [b, *ids]
    if len(ids) > model.arch.n_ctx:
        raise CorpusError(f"the prompt has {len(ids)} tokens; the model's context is {model.arch.n_ctx}")
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    sites = tuple(f"resid_post.{layer}" for layer in range(model.arch.n_layers))
    acts = capture_activations(model, pad_batch([ids], int(pad), [0]), sites)
    h = np.stack([acts[s][0].numpy() for s in sites]).astype(np.float64)
    return PromptTrace([model.tokenizer.decode([i]) for i in ids], h, tuple(ids))


def lens_top_tokens(model: LoadedModel, trace: PromptTrace) -> list[list[str]] | None:
    """Top-1 token of final norm + W_U at each resid_post layer, per token (None without an unembedding)."""
    if not model.arch.has_unembedding:
        return None
    w, bias = model.unembedding()
    norm = model.final_norm()
    out = []
    with torch.inference_mode():
        for layer in range(trace.n_layers):
            x = torch.as_tensor(trace.h[layer], dtype=w.dtype, device=w.device)
            if norm is not None:
                x = norm(x)
            logits = x @ w + (0 if bias is None else bias)
            out.append([model.tokenizer.decode([int(i)]) for i in logits.argmax(-1).tolist()])
    return out
