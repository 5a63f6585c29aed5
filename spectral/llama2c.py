"""Read llama2.c checkpoints (``.bin``) into a Hugging Face ``LlamaForCausalLM``.

Two layouts are understood: the legacy export (a header of 7 int32, then fp32 weights, a
negative vocabulary size meaning an unshared classifier) and the version-1 export (magic
``ak42``, version 1, 256-byte header). llama2.c applies rotary embeddings to interleaved
pairs (0,1), (2,3), ... while Hugging Face rotates halves; the q/k rows are permuted per head
so the Hugging Face model computes exactly what ``run.c`` computes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral.errors import ModelLoadError

MAGIC_V1 = 0x616B3432


@dataclass(frozen=True)
class Llama2cHeader:
    """Hyper-parameters stored in a llama2.c checkpoint header."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    version: int  # 0 = legacy export, 1 = version-1 export
    offset: int  # byte offset of the first weight


HEADER_BYTES = 256  # the version-1 header; the legacy one is its first 28 bytes


def read_header(path: Path) -> Llama2cHeader:
    """Parse the header of a llama2.c checkpoint, reading only its first bytes (not the weights)."""
    with path.open("rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < 28:
        raise ModelLoadError(f"{path}: too short for a llama2.c checkpoint header")
    (magic,) = struct.unpack("<I", raw[:4])
    if magic == MAGIC_V1:
        (version,) = struct.unpack("<i", raw[4:8])
        if version != 1:
            raise ModelLoadError(f"{path}: llama2.c export version {version} is not supported (only 0 and 1)")
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[8:36])
        shared = bool(raw[36])
        return Llama2cHeader(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len, shared, 1, 256)
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    header = Llama2cHeader(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len, vocab > 0, 0, 28)
    if min(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len) <= 0 or dim % n_heads:
        raise ModelLoadError(f"{path}: header {header} is not a llama2.c checkpoint")
    return header


def _permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved-pair rotary rows (llama2.c / Meta) -> rotate-half rows (Hugging Face)."""
    d1, d2 = w.shape
    return w.view(n_heads, d1 // n_heads // 2, 2, d2).transpose(1, 2).reshape(d1, d2)


def load_llama2c(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """Return (LlamaConfig, state_dict in Hugging Face naming) for a llama2.c ``.bin``."""
    from transformers import LlamaConfig

    h = read_header(path)
    head = h.dim // h.n_heads
    kv_dim = head * h.n_kv_heads
    data = np.fromfile(path, dtype=np.float32, offset=h.offset)
    pos = 0

    def take(*shape: int) -> torch.Tensor:
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.size:
            raise ModelLoadError(f"{path}: file ends before all weights of {h} were read")
        t = torch.from_numpy(data[pos : pos + n].copy()).view(*shape)
        pos += n
        return t

    L = h.n_layers
    sd: dict[str, torch.Tensor] = {}
    if h.version == 0:
        emb = take(h.vocab_size, h.dim)
        rms_att, wq, wk = take(L, h.dim), take(L, h.dim, h.dim), take(L, kv_dim, h.dim)
        wv, wo = take(L, kv_dim, h.dim), take(L, h.dim, h.dim)
        rms_ffn = take(L, h.dim)
        w1, w2, w3 = take(L, h.hidden_dim, h.dim), take(L, h.dim, h.hidden_dim), take(L, h.hidden_dim, h.dim)
        rms_final = take(h.dim)
        take(h.seq_len, head // 2)  # freq_cis_real (recomputed by the model)
        take(h.seq_len, head // 2)  # freq_cis_imag
    else:
        rms_att, rms_ffn, rms_final = take(L, h.dim), take(L, h.dim), take(h.dim)
        emb = take(h.vocab_size, h.dim)
        wq, wk = take(L, h.dim, h.dim), take(L, kv_dim, h.dim)
        wv, wo = take(L, kv_dim, h.dim), take(L, h.dim, h.dim)
        w1, w2, w3 = take(L, h.hidden_dim, h.dim), take(L, h.dim, h.hidden_dim), take(L, h.hidden_dim, h.dim)
    wcls = emb if h.shared_classifier else take(h.vocab_size, h.dim)
    if pos != data.size:
        raise ModelLoadError(f"{path}: {data.size - pos} unread floats after the weights of {h}")

    sd["model.embed_tokens.weight"] = emb
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = rms_att[i]
        sd[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        sd[p + "self_attn.q_proj.weight"] = _permute_for_hf(wq[i], h.n_heads)
        sd[p + "self_attn.k_proj.weight"] = _permute_for_hf(wk[i], h.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = wv[i]
        sd[p + "self_attn.o_proj.weight"] = wo[i]
        sd[p + "mlp.gate_proj.weight"] = w1[i]
        sd[p + "mlp.down_proj.weight"] = w2[i]
        sd[p + "mlp.up_proj.weight"] = w3[i]
    sd["model.norm.weight"] = rms_final
    sd["lm_head.weight"] = wcls
    config = LlamaConfig(
        hidden_size=h.dim,
        intermediate_size=h.hidden_dim,
        num_hidden_layers=L,
        num_attention_heads=h.n_heads,
        num_key_value_heads=h.n_kv_heads,
        vocab_size=h.vocab_size,
        max_position_embeddings=h.seq_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=h.shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        architectures=["LlamaForCausalLM"],
    )
    return config, sd
