"""Shared fixtures: tiny random-weight models of each family, saved as local HF directories.

Tests are offline and CPU-only. Tiny models use a character-level tokenizer built here with the
``tokenizers`` library, so they need nothing outside the repository. Tests that use the real
trained decoders and corpora in ``../shared/data`` skip (saying so) where that folder is absent.
"""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LLAMA2XS = SHARED / "llama2xs-512-hf"
BABYLLAMA = SHARED / "babyllama-105-hf"
TINYSTORIES = SHARED / "corpora" / "tinystories_train_head.txt"

needs_shared = pytest.mark.skipif(
    not LLAMA2XS.is_dir(), reason=f"real trained models and corpora not found at {SHARED} (../shared/data)"
)

from spectral.planted import CHARS  # noqa: E402  (after the offline settings above; the zoo's vocabulary)


def char_tokenizer(cls_style: bool = False):
    """A character-level fast tokenizer with <s> (:func:`spectral.planted.char_tokenizer`) or [CLS] as BOS and a
    pad token."""
    if not cls_style:
        from spectral.planted import char_tokenizer as planted_tokenizer

        return planted_tokenizer()
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(specials + CHARS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def _tiny_config(family: str):
    from transformers import BertConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    v = len(CHARS) + 5
    if family == "gpt2":
        return GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=v, n_positions=128)
    if family == "llama":
        return LlamaConfig(
            num_hidden_layers=3,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=v,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,  # llama2.c's epsilon, so the .bin round trip is exact
        )
    if family == "neox":
        return GPTNeoXConfig(
            num_hidden_layers=3,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=v,
            max_position_embeddings=128,
        )
    if family == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(
            num_hidden_layers=3,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=v,
            max_position_embeddings=128,
            initializer_range=0.2,  # attention patterns far from uniform
        )
    if family == "gemma3":  # Gemma3ForCausalLM: sandwich norms, scaled embedding, sliding + full layers
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            num_hidden_layers=3,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=8,
            intermediate_size=64,
            vocab_size=v,
            max_position_embeddings=128,
            sliding_window=6,  # shorter than the test windows
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            initializer_range=0.2,
        )
    if family == "neox_seq":  # GPT-NeoX with sequential residual (it has a resid_mid)
        cfg = _tiny_config("neox")
        cfg.use_parallel_residual = False
        return cfg
    if family == "bert":
        return BertConfig(
            num_hidden_layers=3,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=v,
            max_position_embeddings=128,
        )
    raise ValueError(family)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: family -> directory of a saved tiny random model (seeded) with its tokenizer."""
    from transformers import AutoModelForCausalLM, BertForMaskedLM

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            torch.manual_seed(0)
            cfg = _tiny_config(family)
            model = BertForMaskedLM(cfg) if family == "bert" else AutoModelForCausalLM.from_config(cfg)
            d = tmp_path_factory.mktemp(f"tiny-{family}")
            model.save_pretrained(d)
            char_tokenizer(cls_style=family == "bert").save_pretrained(d)
            made[family] = d
        return made[family]

    return make


@pytest.fixture(scope="session")
def sample_text() -> str:
    base = (
        "The quick brown fox jumps over the lazy dog. A carrier rides through the network while "
        "the content modulates it. Norms grow layer after layer, directions stay put.\n"
    )
    return base * 20
