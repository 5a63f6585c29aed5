"""Config loading: defaults, TOML, manifest reruns, and one-line errors that name the key."""

import contextlib
import dataclasses
import json

import pytest

from spectral.config import CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec, config_from_dict, load_config
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


@pytest.mark.parametrize(
    "make",
    [
        lambda: CaptureSpec(backend="fats"),  # type: ignore[arg-type]
        lambda: CorpusSpec(sampling="randm"),  # type: ignore[arg-type]
        lambda: ModelSpec(dtype="float64"),  # type: ignore[arg-type]
        lambda: CaptureSpec(moment_dtype="float16"),  # type: ignore[arg-type]
        lambda: ExperimentConfig(controls=("random_init", "bogus")),  # type: ignore[arg-type]
    ],
)
def test_literals_are_checked_whatever_the_entry_point(make):
    """A Literal field holds one of its values however the config was made (once only TOML checked them:
    `backend='fats'` silently meant the bridge, `sampling='randm'` consecutive windows)."""
    with pytest.raises(ConfigError, match="must be one of"):
        make()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--backend", "fats"], "invalid choice: 'fats'"),
        (["--sampling", "randm"], "invalid choice: 'randm'"),
        (["--dtype", "float64"], "invalid choice: 'float64'"),
        (["--formats", "jpg"], "'jpg' is not one of png, pdf, svg"),
        (["--controls", "random_init,bogus"], "'bogus' is not one of"),
    ],
)
def test_cli_refuses_values_outside_a_literal_before_loading_anything(flags, message, capsys):
    from spectral.cli import main

    with pytest.raises(SystemExit) if "invalid choice" in message else contextlib.nullcontext():
        code = main(["run", *flags, "--out", "/nonexistent/never-written"])
        assert code == 2
    assert message in capsys.readouterr().err


def test_every_config_field_is_reachable_from_the_command_line():
    """The flags are derived from the dataclasses: no hand-kept table can forget a field."""
    from spectral.cli import build_parser, config_from_args, run_flags
    from spectral.config import SECTIONS

    fields = {(None, f.name) for f in dataclasses.fields(ExperimentConfig) if f.name not in SECTIONS}
    fields |= {(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert {(s, f.name) for s, f, _ in run_flags().values()} == fields
    args = build_parser().parse_args(
        ["run", "--jacobian-windows", "3", "--null-windows", "2", "--random-seeds", "7", "9", "--no-exclude-first",
         "--growth-margin", "0.01", "--formats", "none", "--control-sites", "resid_post.*", "--model", "x"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.analysis.jacobian_windows == 3 and cfg.null_windows == 2 and cfg.random_seeds == (7, 9)
    assert cfg.capture.exclude_first is False and cfg.verdicts.growth_margin == 0.01 and cfg.formats == ()
    assert cfg.capture.control_sites == ("resid_post.*",) and cfg.model.name == "x"
