"""Config loading: defaults, TOML, manifest reruns, and one-line errors that name the key."""

import json

import pytest

from spectral.config import ExperimentConfig, config_from_dict, load_config
from spectral.errors import ConfigError


def test_toml_roundtrip_and_manifest(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('seed = 3\n[model]\nname = "x"\n[corpus]\nseq_len = 32\n[capture]\nsites = ["resid_post.*"]\n')
    cfg = load_config(p)
    assert cfg.seed == 3 and cfg.model.name == "x" and cfg.corpus.seq_len == 32
    assert cfg.capture.sites == ("resid_post.*",)
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({"status": "complete", "config": cfg.to_dict()}))
    assert load_config(m) == cfg
    assert config_from_dict(ExperimentConfig().to_dict()) == ExperimentConfig()


def test_malformed_toml_gives_line_and_column(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model]\nname = \n")
    with pytest.raises(ConfigError, match=r"malformed TOML.*line 2"):
        load_config(p)


def test_unknown_key_suggests_and_locates(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[corpus]\nsource = 'builtin'\nseq_lne = 64\n")
    with pytest.raises(ConfigError, match=r"\(line 3\): unknown key \[corpus\] 'seq_lne' \(did you mean 'seq_len'\?\)"):
        load_config(p)
    p.write_text("[modle]\nname = 'x'\n")
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        load_config(p)


def test_wrong_types_and_ranges(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[corpus]\nseq_len = 'long'\n")
    with pytest.raises(ConfigError, match=r"\[corpus\] seq_len must be an integer"):
        load_config(p)
    p.write_text("[corpus]\nseq_len = 0\n")
    with pytest.raises(ConfigError, match="seq_len must be >= 1"):
        load_config(p)
    p.write_text("[corpus]\nsampling = 'shuffled'\n")
    with pytest.raises(ConfigError, match="must be one of 'consecutive', 'random'"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
