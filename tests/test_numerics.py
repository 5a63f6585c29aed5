"""NaN/inf in activations: fail naming the site and window, or exclude the windows and say so."""

import pytest
import torch

from spectral.capture import accumulate, new_bank
from spectral.config import CorpusSpec, ModelSpec
from spectral.corpus import make_windows
from spectral.errors import NumericsError
from spectral.models import load_model


@pytest.fixture()
def poisoned(tiny_model_dir, tmp_path):
    model = load_model(ModelSpec(name=str(tiny_model_dir("gpt2"))))
    p = tmp_path / "t.txt"
    p.write_text("abcdefgh" * 6 + "Z" + "abcdefgh" * 6)  # 'Z' appears once, in window 3 (seq_len 16)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=16, max_seqs=6))
    z = model.tokenizer.convert_tokens_to_ids("Z")
    with torch.no_grad():
        model.hf_model.transformer.wte.weight[z] = float("inf")  # an overflowing embedding row
    return model, windows


def test_nonfinite_fails_with_site_and_window(poisoned):
    model, windows = poisoned
    bank = new_bank(model, ("embed", "resid_post.1"), 2)
    with pytest.raises(NumericsError, match=r"NaN/inf\) at site embed, window 3, position \d+"):
        accumulate(model, windows, bank, 4)


def test_nonfinite_windows_excluded_and_rest_exact(poisoned):
    model, windows = poisoned
    bank = accumulate(model, windows, new_bank(model, ("embed", "resid_post.1"), 2), 4, nonfinite="exclude")
    assert bank.excluded == [3] and bank.nonfinite_counts["embed"] >= 1
    keep = [i for i in range(len(windows)) if i != 3]
    clean = windows.select(torch.tensor(keep))
    ref = accumulate(model, clean, new_bank(model, ("embed", "resid_post.1"), 2), 4)
    for s in ("embed", "resid_post.1"):
        assert torch.allclose(bank[s].total().second, ref[s].total().second)
        assert bank[s].total().n == ref[s].total().n


def test_fp16_overflow_is_caught_like_any_inf(tiny_model_dir, tmp_path):
    """A model run in float16 whose activations overflow fails at the first site where inf appears,
    named with its window: token embedding 65000 + position embedding 1000 > 65504, float16's largest
    value, so the sum GPT-2 forms for resid_pre.0 overflows although every weight is finite."""
    model = load_model(ModelSpec(name=str(tiny_model_dir("gpt2")), dtype="float16"))
    p = tmp_path / "t.txt"
    p.write_text("abcdefgh" * 6 + "Z" + "abcdefgh" * 6)
    windows = make_windows(model.tokenizer, CorpusSpec(source=str(p), seq_len=16, max_seqs=6))
    z = model.tokenizer.convert_tokens_to_ids("Z")
    with torch.no_grad():
        model.hf_model.transformer.wte.weight[z] = 65000.0
        model.hf_model.transformer.wpe.weight.add_(1000.0)
    assert all(torch.isfinite(p).all() for p in model.hf_model.parameters())
    sites = ("embed", "resid_pre.0", "resid_post.0", "resid_post.1", "resid_post.2", "final")
    with pytest.raises(NumericsError, match=r"NaN/inf\) at site resid_pre.0, window 3, position \d+"):
        accumulate(model, windows, new_bank(model, sites, 2), 4)
