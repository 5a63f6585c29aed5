"""Experiment configuration: frozen, validated dataclasses loaded from TOML (or a run manifest).

Every knob of a run lives here, with its help text in the field metadata (the CLI flags and the
docs are derived from it). Validation happens in ``__post_init__`` so an invalid config can
never exist; :func:`load_config` turns TOML syntax errors, unknown keys and wrong types into a
one-line :class:`~spectral.errors.ConfigError` that names the key and its line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from spectral.errors import ConfigError

Dtype = Literal["float32", "float16", "bfloat16"]
NonFinite = Literal["fail", "exclude"]
Backend = Literal["auto", "bridge", "fast"]
MomentDtype = Literal["float32", "float64"]
Sampling = Literal["consecutive", "random"]
Control = Literal["random_init", "random_scaled", "permuted_weights", "shuffled", "permuted"]
ImageFormat = Literal["png", "pdf", "svg"]


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_literals(obj: Any) -> None:
    """Every Literal-typed field (alone, optional or in a tuple) holds one of its allowed values, however the
    object was made (TOML, the command line, Python): a typo must not silently mean something else."""
    section = next((k for k, v in SECTIONS.items() if v is type(obj)), None)
    for name, tp in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name)
        inner = get_args(tp)[0] if get_origin(tp) is tuple else tp
        if get_origin(inner) in (typing.Union, types.UnionType):
            inner = next((a for a in get_args(inner) if get_origin(a) is Literal), inner)
        if get_origin(inner) is not Literal:
            continue
        values = value if get_origin(tp) is tuple and isinstance(value, tuple) else (value,)
        allowed = get_args(inner)
        for v in values:
            if v is None and type(None) in get_args(tp):
                continue
            where = f"[{section}] {name}" if section else name
            _check(v in allowed, f"{where} must be one of {', '.join(map(repr, allowed))}, got {v!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how."""

    name: str = _help(
        "a named model ('smollm2-135m', the embedded default; 'gemma3-270m', 'qwen2.5-coder-0.5b', 'minilm': "
        "see `spectral models`), a .gguf file, a local Hugging Face directory, a llama2.c .bin checkpoint, or a "
        "Hugging Face hub id",
        "smollm2-135m",
    )
    tokenizer: str | None = _help("tokenizer directory or file (required beside a llama2.c .bin)", None)
    device: str = _help(
        "torch device for the model ('cpu', 'cuda', 'cuda:1', ...), or 'auto': accelerate's device_map spreads "
        "a model too large for one device over all visible GPUs (and CPU)",
        "cpu",
    )
    dtype: Dtype = _help("dtype the model runs in; statistics always accumulate in float64", "float32")
    revision: str | None = _help("hub revision (branch, tag, commit) for hub ids", None)
    trust_remote_code: bool = _help("allow a hub model's own Python code to run (off by default)", False)
    allow_pickle: bool = _help(
        "load pickle weights (pytorch_model.bin / .pt) when a model has no safetensors; unpickling can run "
        "arbitrary code, so only for checkpoints you trust (off by default)",
        False,
    )

    def __post_init__(self) -> None:
        _check_literals(self)
        _check(bool(self.name.strip()), "[model] name must not be empty")
        _check(
            re.fullmatch(r"cpu|cuda(:\d+)?|mps|auto", self.device) is not None,
            f"[model] device {self.device!r} is not one of cpu, cuda, cuda:N, mps, auto",
        )


@dataclass(frozen=True)
class CorpusSpec:
    """Which text and how it is cut into windows (ARCHITECTURE.md, 'Corpus windows')."""

    source: str = _help(
        "'builtin', a .txt file, a directory of .txt files, or a .jsonl file with a text field",
        "builtin",
    )
    seq_len: int = _help("tokens per window, not counting the BOS/CLS token put in front", 128)
    max_seqs: int = _help(
        "use at most this many windows (fewer if the corpus is shorter); the experiments and canonical runs use 128",
        32,
    )
    sampling: Sampling = _help(
        "'consecutive' takes the first windows; 'random' a seeded sample of all windows",
        "consecutive",
    )
    text_field: str = _help("JSONL key that holds the text", "text")
    require_bos: bool = _help(
        "fail unless the tokenizer has a BOS (or CLS) token to put in front of every window (position 0 is then "
        "a fixed token that exclude_first drops)",
        False,
    )

    def __post_init__(self) -> None:
        _check_literals(self)
        _check(1 <= self.seq_len <= 1_000_000, f"[corpus] seq_len must be >= 1, got {self.seq_len}")
        _check(self.max_seqs >= 1, f"[corpus] max_seqs must be >= 1, got {self.max_seqs}")
        _check(bool(self.source.strip()), "[corpus] source must not be empty")


@dataclass(frozen=True)
class CaptureSpec:
    """Which sites are captured and how the statistics are bucketed."""

    sites: tuple[str, ...] = _help(
        "site names or patterns ('all', 'resid_post.*', 'attn_out.3', 'embed', 'final')", ("all",)
    )
    batch_size: int = _help("windows per forward pass", 8)
    exclude_first: bool = _help("exclude position 0 (BOS/CLS, attention sink) from statistics", True)
    moment_buckets: int = _help(
        "contiguous blocks of the run's windows (neighbouring windows are correlated) whose d x d moments are "
        "kept apart for CIs (jackknife, Student t with B-1 df)",
        5,
    )
    calibration_windows: int = _help(
        "the calibration set: the first N windows of the run (the same for every batch size), one extra forward "
        "pass that fixes each site's centre (centred cosine, centred moments, the lens carrier) and median norm "
        "(sink threshold)",
        4,
    )
    moment_dtype: MomentDtype = _help(
        "storage of the per-bucket d x d moments (packed upper triangles; totals are formed in float64): "
        "'float32' (4x less memory than the old float64 buckets; ~1e-7 relative error) or 'float64'",
        "float32",
    )
    control_sites: tuple[str, ...] = _help(
        "sites captured for the controls S (shuffled) and P (permuted positions), whose verdicts read only the "
        "residual stream; 'same' = the trained model's sites",
        ("embed", "resid_post.*", "final"),
    )
    nonfinite: NonFinite = _help(
        "NaN/inf in an activation: 'fail' names the first site and window; 'exclude' drops such windows "
        "(costs one extra checking pass per batch) and reports how many",
        "fail",
    )
    backend: Backend = _help(
        "'auto' (fast where it serves the architecture, else bridge), 'bridge' (TransformerLens hooks) or 'fast' "
        "(plain PyTorch hooks on the Hugging Face modules with SDPA attention: every site and the head outputs for "
        "Llama, Qwen2, Gemma3, GPT-2 and GPT-NeoX; residual sites only for other families)",
        "auto",
    )
    checkpoint_every: int = _help(
        "save the capture state every N windows (and after each condition but the null members, whose capture "
        "takes seconds: a resumed run captures them again) so --resume can continue; 0 = only after each condition",
        512,
    )
    keep_state: bool = _help("keep the capture state (state/*.pt) after a complete run (shard runs always do)", False)
    shard: str | None = _help("capture only the disjoint share i::n of the windows ('i/n'); see spectral merge", None)

    def shard_pair(self) -> tuple[int, int]:
        if self.shard is None:
            return (0, 1)
        i, n = self.shard.split("/")
        return int(i), int(n)

    def __post_init__(self) -> None:
        _check_literals(self)
        _check(len(self.sites) > 0, "[capture] sites must list at least one site or 'all'")
        _check(self.checkpoint_every >= 0, f"[capture] checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.shard is not None:
            m = re.fullmatch(r"(\d+)/(\d+)", self.shard)
            _check(
                m is not None and int(m[2]) >= 1 and 0 <= int(m[1]) < int(m[2]),
                f"[capture] shard must be 'i/n' with 0 <= i < n, got {self.shard!r}",
            )
        _check(1 <= self.batch_size <= 4096, f"[capture] batch_size must be in 1..4096, got {self.batch_size}")
        _check(
            2 <= self.moment_buckets <= 1000,
            f"[capture] moment_buckets must be in 2..1000, got {self.moment_buckets}",
        )
        _check(self.calibration_windows >= 1, "[capture] calibration_windows must be >= 1")


ROGUE_SENSITIVITY = 4.0  # the sensitivity table's variant removes this many times the rogue share of d_model


@dataclass(frozen=True)
class AnalysisSpec:
    """Statistical settings of the analyses (thresholds of the verdicts live here too)."""

    n_boot: int = _help("bootstrap resamples over windows for per-window statistics", 1000)
    ci_level: float = _help("confidence level of every interval", 0.95)
    growth_first_layer: int = _help("first resid_post layer included in the log-linear growth fit", 1)
    lowfreq_share: float = _help(
        "share of the lowest non-zero frequency bins (at least one) in seq_ac_lowfreq_share", 0.1
    )
    bands: tuple[int, ...] = _help("numbers K of equal W_U singular-vector bands (band_energy_k{K}_b{i})", (10, 20))
    sink_factor: float = _help("a token is a sink / massive activation when ‖h‖ > factor × median ‖h‖", 10.0)
    rogue_k: int = _help("the fewest top rogue dimensions removed in the robustness checks (prediction 3)", 3)
    rogue_share: float = _help(
        "rogue dimensions removed as a share of d_model: k = max(rogue_k, round(rogue_share × d)) (prediction 3)",
        0.005,
    )
    max_types: int = _help("most frequent token types tracked for self-similarity", 500)
    intervention_windows: int = _help(
        "windows used for ΔNLL interventions (0 = skip them); the experiments use 8, the default main job 4 "
        "to keep its time budget",
        4,
    )
    intervention_layers: int = _help(
        "resid_post layers edited in the ΔNLL sweep, evenly spaced from the first to the last (0 = every layer); "
        "each edit runs only the layers after its site",
        4,
    )
    modulation_windows: int = _help(
        "windows whose output is read by prediction 4's mean ablations (carrier, top centred principal direction, "
        "random directions) at the middle layers; 0 = skip them (the canonical runs use 16)",
        8,
    )
    modulation_layers: int = _help(
        "middle layers (of [verdicts] middle_from..middle_to) edited for prediction 4, evenly spaced; 0 = every "
        "middle layer (the canonical runs)",
        4,
    )
    modulation_positions: int = _help(
        "positions per window (a seeded sample, the same for the clean and every edited pass) whose next-token "
        "distribution prediction 4 scores; 0 = every position",
        32,
    )
    modulation_directions: int = _help(
        "random directions mean-ablated at each of those layers: the null distribution of prediction 4 (the "
        "canonical runs use 20)",
        8,
    )
    jacobian_windows: int = _help(
        "windows whose tokens linearise attention and the MLP for the Jacobian (JVP) band transfer of prediction 7 "
        "(0 = skip it)",
        1,
    )
    jacobian_positions: int = _help(
        "positions of each such window probed (its first ones: a prefix is a valid causal input); 0 = all; "
        "the canonical runs use 2 windows × 64",
        32,
    )
    sublayer_spectra: bool = _help(
        "also compute the eigen-spectrum metrics (eff_rank, participation_ratio, isoscore, carrier_energy_top_pc) "
        "and the robust-carrier variants at attn_out / mlp_out / resid_mid (~0.3 s per site and condition on 2 "
        "cores; no prediction reads them); false: only at embed, resid_pre/resid_post and final",
        False,
    )
    lens_positions: int = _help(
        "positions per window (a seeded sample, the same for every layer) read by the vocabulary-sized probes "
        "(logit lens, band margin); 0 = every position",
        8,
    )
    sink_positions: int = _help(
        "positions per window (a seeded sample, the same for every layer) whose (attention received, tail-band "
        "energy) pair is kept for the attention-sink Spearman: memory stays flat in the corpus size; 0 = every "
        "position",
        16,
    )
    layer_cosine: bool = _help(
        "corpus-level layer x layer cosine matrix of resid_post (holds one batch's unit vectors per layer)", True
    )
    layer_linearity: bool = _help(
        "LLM-Microscope's layer-to-layer linearity of consecutive resid_post layers, from streamed cross moments "
        "(one d x d product per layer and batch)",
        True,
    )
    outliers: bool = _help(
        "corpus-wide outlier statistics at every site (max / min / RMS per dimension, the top-3 |h_i| against "
        "the median, position 0 apart): massive.csv and the act_* metrics",
        True,
    )
    tuned_lens_windows: int = _help(
        "held-out windows (odd place in the run) on which the approximate tuned lens is scored; it is fitted in "
        "closed form on the even windows (0 = no tuned lens)",
        32,
    )
    tuned_lens_ridge: float = _help(
        "ridge of the tuned lens's least-squares translators, toward the identity (the logit lens), as a share of "
        "the mean eigenvalue of the input covariance",
        1e-3,
    )

    def rogue_dims(self, d: int, factor: float = 1.0) -> int:
        """k of the rogue-dimension checks for a model of width ``d``: a share of d, at least ``rogue_k``
        (``factor`` scales the share: the sensitivity table's variant, :data:`ROGUE_SENSITIVITY`)."""
        return max(self.rogue_k, round(factor * self.rogue_share * d))

    def __post_init__(self) -> None:
        _check_literals(self)
        _check(self.n_boot >= 10, f"[analysis] n_boot must be >= 10, got {self.n_boot}")
        _check(0.5 < self.ci_level < 1.0, f"[analysis] ci_level must be in (0.5, 1), got {self.ci_level}")
        _check(self.growth_first_layer >= 0, "[analysis] growth_first_layer must be >= 0")
        _check(0.0 < self.lowfreq_share <= 1.0, "[analysis] lowfreq_share must be in (0, 1]")
        _check(all(k >= 2 for k in self.bands) and len(self.bands) > 0, "[analysis] bands must be integers >= 2")
        _check(self.sink_factor > 1.0, "[analysis] sink_factor must be > 1")
        _check(self.rogue_k >= 1, "[analysis] rogue_k must be >= 1")
        _check(0.0 <= self.rogue_share < 0.5, "[analysis] rogue_share must be in [0, 0.5)")
        _check(self.jacobian_windows >= 0, "[analysis] jacobian_windows must be >= 0")
        _check(self.jacobian_positions >= 0, "[analysis] jacobian_positions must be >= 0")
        _check(self.max_types >= 1, "[analysis] max_types must be >= 1")
        _check(self.intervention_windows >= 0, "[analysis] intervention_windows must be >= 0")
        _check(self.intervention_layers >= 0, "[analysis] intervention_layers must be >= 0")
        _check(self.modulation_windows >= 0, "[analysis] modulation_windows must be >= 0")
        _check(self.modulation_layers >= 0, "[analysis] modulation_layers must be >= 0")
        _check(self.modulation_positions >= 0, "[analysis] modulation_positions must be >= 0")
        _check(self.modulation_directions >= 1, "[analysis] modulation_directions must be >= 1")
        _check(self.lens_positions >= 0, "[analysis] lens_positions must be >= 0")
        _check(self.sink_positions >= 0, "[analysis] sink_positions must be >= 0")
        _check(self.tuned_lens_windows >= 0, "[analysis] tuned_lens_windows must be >= 0")
        _check(self.tuned_lens_ridge >= 0, "[analysis] tuned_lens_ridge must be >= 0")


@dataclass(frozen=True)
class VerdictSpec:
    """Margins of the eleven predictions (ARCHITECTURE.md section 1): a prediction is supported when its
    effect's interval lies above its margin δ (and survives Holm), contradicted when it lies below."""

    middle_from: float = _help("middle layers start at this fraction of depth", 0.25)
    middle_to: float = _help("middle layers end at this fraction of depth (inclusive)", 0.75)
    alpha: float = _help("family-wise error rate of the run's predictions (Holm)", 0.05)
    growth_margin: float = _help("P1: δ of g(trained) − g(null), growth rate per layer", 0.005)
    growth_r2_min: float = _help("P1: steady growth needs the log-linear fit's R² at least this", 0.8)
    growth_layer_share_max: float = _help(
        "P1: steady growth has no single layer holding more than this share of the positive log growth", 0.5
    )
    carrier_margin: float = _help("P2: δ of ρ(trained) − ρ(null) over the middle layers", 0.05)
    exclude_massive: bool = _help(
        "P2 / P9: decide on ρ and the low-frequency share with the massive-activation tokens (sinks: ‖h‖ above "
        "sink_factor × the median) left out (the sensitivity table's variant)",
        False,
    )
    drift_margin: float = _help("P2: δ of carrier_drift(trained) − carrier_drift(null) over the middle layers", 0.0)
    robust_margin: float = _help(
        "P3: the carrier may lose at most this much ρ beyond its null to z-scoring, rogue dimensions or sinks "
        "(the margin is −robust_margin)",
        0.1,
    )
    modulation_kl_margin: float = _help(
        "P4: mean-ablating the carrier must change the model's output (KL to the clean output, nats per token) "
        "this much less than mean-ablating the top centred principal direction, and may change it at most this "
        "much more than a random direction does",
        0.01,
    )
    alignment_margin_sqrt_d: float = _help(
        "P5: δ × √d of the update/stream cosine over its nulls (δ = this / √d_model: 1 is one standard deviation "
        "of a random direction's cosine per token)",
        1.0,
    )
    head_margin: float = _help("P6: δ of the heads' top-n W_U band share over R's heads and over data-PC bands", 0.02)
    mixing_margin: float = _help("P7: δ of the MLP's off-diagonal band transfer over chance and attention", 0.02)
    sink_tail_margin: float = _help(
        "P8: δ of the sink tokens' tail-band energy share minus their window's other tokens', over R's", 0.02
    )
    lowpass_margin: float = _help("P9: δ of seq_ac_lowfreq_share over its permutation null (middle layers)", 0.02)
    resonance_top_bands: int = _help("P10: number of top W_U bands (of K = first of [analysis] bands)", 2)
    resonance_margin: float = _help("P10: δ of the top centred bands' margin share over the rotated-h null", 0.05)
    resonance_slope_margin: float = _help(
        "P10: δ of the per-layer rise (slope per layer) of that share's excess over its rotated-h null", 0.0
    )
    carrier_growth_margin: float = _help("P11: δ of carrier − modulation growth rate, over 0 and over R", 0.0)

    def __post_init__(self) -> None:
        _check_literals(self)
        _check(0 <= self.middle_from <= self.middle_to <= 1, "[verdicts] need 0 <= middle_from <= middle_to <= 1")
        _check(self.resonance_top_bands >= 1, "[verdicts] resonance_top_bands must be >= 1")
        _check(0 < self.alpha < 1, f"[verdicts] alpha must be in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run: model, corpus, capture, analysis, controls, seed and output directory."""

    model: ModelSpec = field(default_factory=ModelSpec)
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    capture: CaptureSpec = field(default_factory=CaptureSpec)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    verdicts: VerdictSpec = field(default_factory=VerdictSpec)
    controls: tuple[Control, ...] = _help(
        "conditions run beside the trained model: the nulls random_init (R, an ensemble of random-weight twins, "
        "one per random_seeds entry), random_scaled (R rescaled: each twin's parameters rescaled to the trained "
        "ones' norms, one per scaled_seeds entry) and permuted_weights (W, every weight matrix's entries permuted, "
        "permutations of them), and the controls shuffled (S, tokens shuffled within windows) and permuted (P, "
        "permuted position ids)",
        ("random_init", "random_scaled", "permuted_weights", "shuffled", "permuted"),
    )
    random_seeds: tuple[int, ...] = _help(
        "seeds of the R ensemble (each a random-weight twin at the library's init; at least 2 give a "
        "between-seed spread, 5 or more a usable one)",
        (1, 2, 3, 4, 5),
    )
    scaled_seeds: tuple[int, ...] = _help(
        "seeds of the rescaled R ensemble (control random_scaled: a random-weight twin whose every parameter "
        "tensor is rescaled to the trained one's Frobenius norm, so the learned scale is kept and the learned "
        "structure is not; prediction 1's second deciding null); a seed that is also an R seed is that R member's "
        "init, rescaled",
        (1, 2, 3),
    )
    permutations: int = _help(
        "weight permutations of W (seeds seed, seed + 1, ...; the first is condition permuted_weights, the others "
        "permuted_weights.s<seed>): W's null is their prediction interval, the between-permutation spread in it",
        5,
    )
    null_windows: int = _help(
        "windows per null member (each R seed and W): the first N of the run's windows (0 = all); their "
        "between-seed spread, not their windows, limits the null's interval",
        8,
    )
    seed: int = _help("seed of window sampling, W's permutation, the bootstrap and the in-run nulls", 0)
    formats: tuple[ImageFormat, ...] = _help("static figure formats exported through kaleido", ("png", "pdf", "svg"))
    out: str | None = _help("run directory (default: reports/runs/<model>-<corpus>-...)", None)

    def __post_init__(self) -> None:
        _check_literals(self)
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        bad = [f for f in self.formats if f not in get_args(ImageFormat)]
        _check(not bad, f"formats {bad} not supported; choose from png, pdf, svg (or none)")
        bad = [c for c in self.controls if c not in get_args(Control)]
        _check(not bad, f"controls {bad} unknown; choose from {', '.join(get_args(Control))}")
        _check(len(self.random_seeds) >= 1, "random_seeds must list at least one seed")
        _check(len(set(self.random_seeds)) == len(self.random_seeds), f"random_seeds repeat: {self.random_seeds}")
        _check(all(x >= 0 for x in self.random_seeds), f"random_seeds must be >= 0, got {self.random_seeds}")
        _check(self.null_windows >= 0, f"null_windows must be >= 0, got {self.null_windows}")
        _check(self.permutations >= 1, f"permutations must be >= 1, got {self.permutations}")
        _check(len(self.scaled_seeds) >= 1, "scaled_seeds must list at least one seed")
        _check(len(set(self.scaled_seeds)) == len(self.scaled_seeds), f"scaled_seeds repeat: {self.scaled_seeds}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "corpus": CorpusSpec,
    "capture": CaptureSpec,
    "analysis": AnalysisSpec,
    "verdicts": VerdictSpec,
}


def _line_of(text: str | None, key: str) -> str:
    if not text:
        return ""
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", line) or line.strip() == f"[{key}]":
            return f" (line {i})"
    return ""


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            return _convert(value, arg, where)
    if origin is Literal:
        if value not in get_args(tp):
            opts = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where} must be one of {opts}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = get_args(tp)[0]
        return tuple(_convert(v, inner, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str, text: str | None, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in SECTIONS or cls is not ExperimentConfig]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if cls is ExperimentConfig and key in SECTIONS:
            continue
        if key not in names:
            close = difflib.get_close_matches(key, names + (list(SECTIONS) if cls is ExperimentConfig else []), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{source}{_line_of(text, key)}: unknown key {prefix}{key!r}{hint}")
        where = f"{source}{_line_of(text, key)}: {prefix}{key}"
        kwargs[key] = _convert(value, hints[key], where)
    if cls is ExperimentConfig:
        for section, scls in SECTIONS.items():
            sub = data.get(section, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{source}{_line_of(text, section)}: [{section}] must be a table")
            kwargs[section] = _build(scls, sub, f"[{section}] ", text, source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        # JSON escapes are TOML basic-string escapes; TOML also wants DEL escaped, and no surrogate pairs
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def to_toml(cfg: ExperimentConfig) -> str:
    """The config as TOML that :func:`load_config` reads back to an equal config (None = omitted)."""
    data = cfg.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if k not in SECTIONS and v is not None]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in data[section].items() if v is not None]
    return "\n".join(lines) + "\n"


def config_from_dict(data: dict[str, Any], source: str = "config", text: str | None = None) -> ExperimentConfig:
    """Build a validated :class:`ExperimentConfig` from nested plain data (TOML/JSON shaped)."""
    return _build(ExperimentConfig, data, "", text, source)


def load_config(path: str | Path) -> ExperimentConfig:
    """Load a TOML config, or the resolved config of a past run from its ``manifest.json``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 at byte {exc.start}") from None
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        data = data.get("config", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a JSON object")
        return config_from_dict(data, str(p))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: malformed TOML: {exc}") from None
    return config_from_dict(data, str(p), text)


def config_fields() -> dict[str, tuple[str | None, dataclasses.Field[Any], type]]:
    """Every settable field of the config by name: (its section, or None for the top level; the field; the
    dataclass that holds it). Field names are unique across sections (checked here): the CLI flags and the
    notebook API's keywords are these names."""
    out: dict[str, tuple[str | None, dataclasses.Field[Any], type]] = {}
    owners: list[tuple[str | None, type]] = [(None, ExperimentConfig), *SECTIONS.items()]
    for section, cls in owners:
        for f in dataclasses.fields(cls):
            if section is None and f.name in SECTIONS:
                continue
            if f.name in out:  # pragma: no cover - a new field that repeats a name
                raise AssertionError(f"config field {f.name} appears in two sections: rename one")
            out[f.name] = (section, f, cls)
    return out


def replace_field(cfg: ExperimentConfig, section: str | None, name: str, value: Any) -> ExperimentConfig:
    """Return ``cfg`` with one field replaced (used for CLI overrides), re-validated."""
    try:
        if section is None:
            return dataclasses.replace(cfg, **{name: value})
        sub = dataclasses.replace(getattr(cfg, section), **{name: value})
        return dataclasses.replace(cfg, **{section: sub})
    except ConfigError as exc:
        raise ConfigError(f"command line: {exc}") from None
