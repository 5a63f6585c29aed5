"""The run directory (a contract, ARCHITECTURE.md): layout, manifest, atomic writes.

Every file is written atomically (temporary file in the same directory, fsync, rename), so a
reader never sees half a file. ``manifest.json`` carries ``status``: ``running`` while a run is
in progress, then ``complete`` or ``failed`` (with the reason); readers refuse or mark runs that
are not complete. A directory that already holds a *different* run is never overwritten unless
the caller says so.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, NotRequired, TypedDict

from spectral.errors import RunDirError

RUN_OUTPUTS = (
    "manifest.json", "metrics.csv", "verdicts.csv", "sensitivity.csv", "massive.csv", "tuned_lens.safetensors",
    "figures", "report.md", "report.html", "state",
)  # fmt: skip
STATE_DIR = "state"
PACKAGES = ("torch", "transformers", "transformer-lens", "numpy", "scipy", "plotly", "kaleido", "spectral")


def atomic_write_bytes(path: Path, data: bytes, failpoint_name: str | None = None) -> None:
    atomic_write_with(path, lambda fh: fh.write(data), failpoint_name)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object], failpoint_name: str | None = None) -> None:
    """Atomic write: ``write(fh)`` fills a temporary file in the same directory, which is fsynced and
    renamed over ``path`` (a reader sees the old file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            try:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise RunDirError(
                        f"disk full while writing {path}; the previous version is intact: free some space, then "
                        "resume (spectral run --resume RUN) or rerun"
                    ) from None
                raise
        if failpoint_name:
            failpoint(failpoint_name)  # killed here: the temporary file is written, the old one still in place
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def failpoint(name: str) -> None:
    """Fault injection for the kill-and-resume tests: with SPECTRAL_FAILPOINT=name:k the process
    SIGKILLs itself the k-th time it passes ``name`` (no effect otherwise)."""
    spec = os.environ.get("SPECTRAL_FAILPOINT")
    if not spec or spec.rsplit(":", 1)[0] != name:
        return
    _FAILPOINT_HITS[name] = _FAILPOINT_HITS.get(name, 0) + 1
    if _FAILPOINT_HITS[name] == int(spec.rsplit(":", 1)[1]):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_FAILPOINT_HITS: dict[str, int] = {}


def state_path(run_dir: Path, condition: str, shard: tuple[int, int]) -> Path:
    """Where the capture state of one condition (of one shard) lives."""
    i, n = shard
    return run_dir / STATE_DIR / (f"{condition}.pt" if n == 1 else f"{condition}.shard{i}of{n}.pt")


def save_state(path: Path, state: dict[str, Any], crc: bool = False) -> None:
    """Write a capture state atomically (temporary file, fsync, rename). ``crc``: with torch's per-record CRC32,
    for a state that outlives the run (a shard's, or ``keep_state``); without it (a transient checkpoint, dropped
    when the run completes) a save takes a sixth of the time (0.11 vs 0.68 s per 400 MB), and the atomic write
    still rules out a half-written file."""
    import torch

    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(crc)
    try:
        atomic_write_with(path, lambda fh: torch.save(state, fh), failpoint_name="state-write")  # streamed, no copy
    finally:
        torch.serialization.set_crc32_options(before)
    failpoint("state-saved")


_LIBC: Any = None


def release_memory(collect: bool = False) -> None:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere), after ``gc.collect()``
    with ``collect``. The run calls it between its phases: the d x d temporaries of one phase (a state write, the
    float64 views of a condition's moments) leave the heap fragmented, and without it their pages counted in the
    next phase's peak (~150 MB of the default job's). Fixing glibc's mmap threshold instead returned the same
    pages but made every phase ~1.5x slower (page faults)."""
    global _LIBC
    if collect:
        import gc

        gc.collect()
    if _LIBC is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c") if platform.system() == "Linux" else None
        try:
            _LIBC = ctypes.CDLL(name) if name else False
            _LIBC = _LIBC if _LIBC and hasattr(_LIBC, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def check_free_space(run_dir: Path, needed: int) -> None:
    """Refuse to start when the output filesystem cannot hold ``needed`` bytes (+64 MiB of margin)."""
    probe = run_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free = usage.free
    if usage.total > 0 and free < needed + (64 << 20):  # total 0: a pseudo filesystem, nothing to judge
        raise RunDirError(
            f"not enough free disk space for {run_dir}: the run needs about {(needed + (64 << 20)) / 2**20:,.0f} MiB "
            f"(capture state checkpoints and outputs), {free / 2**20:,.0f} MiB are free"
        )


def load_state(path: Path) -> dict[str, Any]:
    """Read a capture state with ``weights_only=True`` (tensors and plain values; no code runs)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file becomes one readable line
        raise RunDirError(f"capture state {path} cannot be read ({exc.__class__.__name__}: {exc})") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def slug(text: str) -> str:
    """A safe directory-name fragment of ``text`` (no separators, no dots at the start)."""
    base = Path(text.rstrip("/")).name or text
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip(".-")[:60] or "x"


def default_run_dir(cfg: dict[str, Any]) -> Path:
    m, c = cfg["model"], cfg["corpus"]
    name = f"{slug(m['name'])}-{slug(c['source'])}-L{c['seq_len']}-n{c['max_seqs']}-s{cfg['seed']}"
    return Path("reports") / "runs" / name


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class Manifest(TypedDict):
    """manifest.json: what a run directory says about itself (the run-directory contract, ARCHITECTURE.md). The
    required keys are written when the run starts; the others appear when they apply (and older runs lack
    ``battery``: read it with ``.get``)."""

    status: str  # running | complete | failed
    config: dict[str, Any]  # the resolved ExperimentConfig (config_from_dict reads it back)
    model_label: str
    command: str
    model_source: dict[str, Any]
    gguf: dict[str, Any] | None  # sha256, quant_type, ... of a GGUF source
    weights_sha256: str | None
    arch: dict[str, Any]  # ArchInfo: n_layers, d_model, norm_placement, has_unembedding, is_causal, ...
    sites: list[str]
    corpus: dict[str, Any]  # name, sha256, n_windows, n_tokens, has_bos, ...
    seed: int
    git_commit: str | None
    packages: dict[str, str]
    started: str
    battery: NotRequired[int]  # spectral.predictions.BATTERY_REVISION of the code that measured it
    reason: NotRequired[str]  # why it failed
    finished: NotRequired[str]
    resumed: NotRequired[list[str]]
    shard: NotRequired[str]
    merged_from: NotRequired[list[str]]
    nonfinite: NotRequired[dict[str, Any]]  # NaN/inf tokens seen, windows left out (nonfinite = "exclude")
    figures: NotRequired[dict[str, list[str]]]
    png_note: NotRequired[str | None]
    timings: NotRequired[dict[str, float]]


def read_manifest(run_dir: Path) -> Manifest:
    p = run_dir / "manifest.json"
    if not run_dir.exists():
        raise RunDirError(f"{run_dir} does not exist")
    if not p.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no manifest.json)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{p} is corrupt (line {exc.lineno}: {exc.msg})") from None


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the config fields that differ between two config dicts."""
    out = []
    for sec, val in new.items():
        if isinstance(val, dict):
            prior = old.get(sec)
            before: dict[str, Any] = prior if isinstance(prior, dict) else {}
            out += [f"{sec}.{k}" for k in val if before.get(k) != val[k]]
        elif old.get(sec) != val:
            out.append(sec)
    return sorted(out)


def prepare_run_dir(run_dir: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Create ``run_dir`` or check that reusing it cannot destroy another run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output path {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        manifest = run_dir / "manifest.json"
        if not manifest.is_file():
            raise RunDirError(f"output directory {run_dir} holds files that are not a spectral run; pass --overwrite")
        old = read_manifest(run_dir).get("config")
        if old != config:
            diff = config_diff(old if isinstance(old, dict) else {}, config)
            raise RunDirError(
                f"output directory {run_dir} already holds a different run (differs in {', '.join(diff) or 'config'});"
                " pass --overwrite or choose another --out"
            )
    if overwrite and (run_dir / "manifest.json").is_file():
        for name in RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"output directory {run_dir} is not writable: {exc.strerror}") from None


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
