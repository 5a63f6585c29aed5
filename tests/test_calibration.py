"""The false-support rate on a real small decoder's architecture (spectral.calibration): random-init models
treated as trained must earn "supported" at most α = 0.05 of the time, per prediction and for any
prediction, over 20 seeds (each with its own R ensemble from other seeds)."""

import pytest
from conftest import LLAMA2XS, SHARED, needs_shared

from spectral.calibration import (
    FAKE_SEED_OFFSET,
    base_config,
    clopper_pearson,
    false_support,
    r_ensemble_seeds,
    rate_table,
    rates,
)


def test_clopper_pearson():
    assert clopper_pearson(0, 20) == (0.0, pytest.approx(0.1684, abs=1e-4))
    lo, hi = clopper_pearson(10, 20)
    assert lo == pytest.approx(0.2720, abs=1e-4) and hi == pytest.approx(0.7280, abs=1e-4)


@pytest.mark.slow
@needs_shared
def test_false_support_rate_on_a_small_decoder(tmp_path):
    cfg = base_config(str(SHARED / "corpora" / "tinystories_train_head.txt"), 64, 16)
    res = false_support(LLAMA2XS, range(1, 21), cfg, tmp_path, log=lambda _: None)
    assert len(res) == 20 and all(len(r.outcomes) == 11 for r in res)
    table = {k: (sup, n) for k, sup, _, n in rates(res)}
    over = {k: f"{s}/{n}" for k, (s, n) in table.items() if s / n > 0.05}
    assert not over, rate_table(res, "llama2xs-512 random init") + f"\nover α: {over}"


def test_each_fake_model_has_its_own_r_ensemble():
    seen: set[int] = set()
    for s in range(1, 21):
        r = r_ensemble_seeds(s, 5)
        assert len(r) == 5 and not seen & set(r) and FAKE_SEED_OFFSET + s not in r
        seen |= set(r)
    with pytest.raises(ValueError):
        r_ensemble_seeds(300, 5)
