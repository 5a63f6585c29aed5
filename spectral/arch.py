"""What the analyses need to know about an architecture (:class:`ArchInfo`), apart from how it is loaded.

Site names (:mod:`spectral.sites`) and every analysis read these facts; the loader (:mod:`spectral.models`)
fills them in. This module imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NormPlacement = Literal["pre", "post"]


@dataclass(frozen=True)
class ArchInfo:
    """Facts about a loaded architecture that the analyses depend on."""

    architecture: str  # Hugging Face class, e.g. "LlamaForCausalLM"
    model_type: str  # Hugging Face model_type, e.g. "llama"
    n_layers: int
    d_model: int
    d_vocab: int
    n_ctx: int  # maximum positions, BOS included
    norm_placement: NormPlacement
    parallel_residual: bool  # attention and MLP read the same input (GPT-NeoX, GPT-J)
    has_unembedding: bool  # the checkpoint holds a trained LM head (or ties one)
    is_causal: bool
