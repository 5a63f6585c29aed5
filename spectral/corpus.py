"""Corpora -> token windows -> padded batches with masks.

The window rule is binding (ARCHITECTURE.md, "Corpus windows"): text is read as UTF-8 with a
leading BOM dropped and universal newlines; it is tokenized whole without special tokens and
cut into consecutive, non-overlapping windows of ``seq_len`` tokens from its start (a trailing
partial window is dropped); each window gets in front the token the model was trained to see first
(:func:`bos_id`: CLS for encoders, the declared BOS for decoders, each only when its id round-trips
through the vocabulary); the first ``max_seqs`` windows are used, or a seeded random sample of them.

Multi-document sources (the built-in set, a directory, JSONL) are joined into one text with a
blank line ("\\n\\n") between documents, in file / line order, so that every implementation
sees the same tokens.
"""

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int

from spectral.config import CorpusSpec
from spectral.errors import CorpusError

BUILTIN_PATH = Path(__file__).parent / "corpora" / "builtin.jsonl"
DOC_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class CorpusText:
    """The whole text of a corpus source, normalised, with its provenance."""

    name: str
    text: str
    n_documents: int
    sha256: str  # of the normalised text (UTF-8)


@dataclass(frozen=True)
class TokenWindows:
    """Windows of token ids ready for the model (BOS already in front when there is one)."""

    ids: Int[torch.Tensor, "n_windows seq"]
    window_index: Int[torch.Tensor, " n_windows"]  # index of each window in the corpus
    has_bos: bool
    seq_len: int  # tokens per window, BOS not counted
    n_tokens: int  # tokens in the whole corpus
    n_available: int  # full windows the corpus holds
    corpus: CorpusText
    # place of each window in the run (0 .. n_run - 1) and the run's window count: buckets for CIs are
    # contiguous blocks of this order (neighbouring windows of one text are correlated), the same in
    # every shard, resumed run or subset
    position: Int[torch.Tensor, " n_windows"]
    n_run: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def head(self, n: int) -> "TokenWindows":
        """The first ``n`` windows as a run of their own (their buckets split them, not the whole run);
        ``n`` = 0 or beyond the count keeps every window."""
        if n <= 0 or n >= len(self):
            return self
        return dataclasses.replace(self.select(slice(0, n)), position=torch.arange(n), n_run=n)

    def select(self, rows: slice | torch.Tensor) -> "TokenWindows":
        """A subset of the windows (a shard, the calibration set, the intervention windows), keeping each
        window's corpus index and place in the run."""
        return dataclasses.replace(
            self, ids=self.ids[rows], window_index=self.window_index[rows], position=self.position[rows]
        )


@dataclass(frozen=True)
class Batch:
    """One forward pass worth of windows."""

    input_ids: Int[torch.Tensor, "batch seq"]
    attention_mask: Int[torch.Tensor, "batch seq"]  # 1 = real token, 0 = padding
    stat_mask: Bool[torch.Tensor, "batch seq"]  # tokens that enter statistics
    window_index: Int[torch.Tensor, " batch"]
    full: Bool[torch.Tensor, " batch"]  # window has no padding (sequence spectra use only these)
    position: Int[torch.Tensor, " batch"]  # place of each window in the run (see TokenWindows)
    n_run: int

    def buckets(self, n_buckets: int) -> Int[torch.Tensor, " batch"]:
        """Bucket of each window: ``n_buckets`` contiguous blocks of the run's windows, as equal as they come."""
        return self.position * n_buckets // self.n_run

    def select(self, rows: torch.Tensor) -> "Batch":
        """The batch restricted to some of its windows."""
        return dataclasses.replace(
            self,
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            stat_mask=self.stat_mask[rows],
            window_index=self.window_index[rows],
            full=self.full[rows],
            position=self.position[rows],
        )


def read_text(path: Path) -> str:
    """Read UTF-8 text, drop a leading BOM, normalise newlines; name the byte of a bad encoding."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"corpus file {path} is not UTF-8 (invalid byte at offset {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    for i, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path} line {i}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise CorpusError(f"{path} line {i}: no string field {field!r}")
        docs.append(obj[field])
    return docs


def load_corpus_text(spec: CorpusSpec) -> CorpusText:
    """Resolve ``spec.source`` to one normalised text."""
    src = spec.source
    if src == "builtin":
        docs, name = _read_jsonl(BUILTIN_PATH, "text"), "builtin"
    else:
        p = Path(src).expanduser()
        name = str(p)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*.txt") if f.is_file())
            if not files:
                raise CorpusError(f"corpus directory {p} holds no .txt files")
            docs = [read_text(f) for f in files]
        elif p.is_file():
            docs = _read_jsonl(p, spec.text_field) if p.suffix == ".jsonl" else [read_text(p)]
        else:
            raise CorpusError(f"corpus {src!r} is neither 'builtin' nor an existing file or directory")
    text = DOC_SEPARATOR.join(docs)
    if not text.strip():
        raise CorpusError(f"corpus {name} is empty")
    return CorpusText(name, text, len(docs), hashlib.sha256(text.encode("utf-8")).hexdigest())


def _vocab_size(tokenizer: Any) -> int | None:
    """Ids the tokenizer can produce: added tokens included (``len``), else ``vocab_size``."""
    try:
        return len(tokenizer)
    except TypeError:
        size = getattr(tokenizer, "vocab_size", None)
        return None if size is None else int(size)


def _round_trip(tokenizer: Any, kind: str) -> int | None:
    """The id of the ``kind`` special token (``"bos"``, ``"cls"``, ``"sep"``) when it names that token, else None.

    A tokenizer may declare a special token that its vocabulary lacks; its id is then another token
    (transformers 5 gives all-MiniLM-L6-v2 ``bos_token='<|endoftext|>'`` with id 100, which is ``[UNK]``).
    """
    token, tid = getattr(tokenizer, f"{kind}_token", None), getattr(tokenizer, f"{kind}_token_id", None)
    if token is None or tid is None or isinstance(tid, list):
        return None
    tid = int(tid)
    size = _vocab_size(tokenizer)
    if tid < 0 or (size is not None and tid >= size):
        return None
    try:
        back = tokenizer.convert_ids_to_tokens(tid)
    except (IndexError, KeyError, OverflowError, TypeError, ValueError):
        return None
    return tid if back is not None and str(back) == str(token) else None


def is_encoder_tokenizer(tokenizer: Any) -> bool:
    """BERT-style: a CLS token and a SEP token that both name themselves in the vocabulary."""
    return _round_trip(tokenizer, "cls") is not None and _round_trip(tokenizer, "sep") is not None


def bos_id(tokenizer: Any) -> int | None:
    """The token every window gets in front, or None: the rule of ARCHITECTURE.md, "Corpus windows".

    Encoders (:func:`is_encoder_tokenizer`) get CLS; decoders get the declared BOS when its id
    round-trips (``convert_ids_to_tokens(bos_token_id) == bos_token`` and the id is inside the
    vocabulary), else nothing: a BOS whose id is another token would put that token in front.
    """
    if is_encoder_tokenizer(tokenizer):
        return _round_trip(tokenizer, "cls")
    return _round_trip(tokenizer, "bos")


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """Tokenize a whole text without special tokens (long-input warnings silenced)."""
    log = logging.getLogger("transformers.tokenization_utils_base")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    finally:
        log.setLevel(old)


def make_windows(
    tokenizer: Any, spec: CorpusSpec, *, n_ctx: int | None = None, seed: int = 0, corpus: CorpusText | None = None
) -> TokenWindows:
    """Cut the corpus into windows per the binding rule; check them against the context."""
    corpus = corpus or load_corpus_text(spec)
    bos = bos_id(tokenizer)
    if bos is None and spec.require_bos:
        raise CorpusError(
            f"the tokenizer ({type(tokenizer).__name__}) has no BOS or CLS token, and corpus.require_bos is set: "
            "give a tokenizer with one, or set require_bos = false (position 0 is then a real token); a declared BOS "
            "whose id is another token in the vocabulary does not count"
        )
    width = spec.seq_len + (1 if bos is not None else 0)
    if n_ctx is not None and width > n_ctx:
        extra = " plus the BOS token" if bos is not None else ""
        raise CorpusError(f"seq_len {spec.seq_len}{extra} needs {width} positions; the model's context is {n_ctx}")
    ids = tokenize(tokenizer, corpus.text)
    n_avail = len(ids) // spec.seq_len
    if n_avail == 0:
        raise CorpusError(
            f"corpus {corpus.name} has {len(ids)} tokens, fewer than one window of seq_len {spec.seq_len}"
        )
    if spec.sampling == "random":
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(n_avail, size=min(spec.max_seqs, n_avail), replace=False))
    else:
        chosen = np.arange(min(spec.max_seqs, n_avail))
    arr = np.asarray(ids[: n_avail * spec.seq_len], dtype=np.int64).reshape(n_avail, spec.seq_len)[chosen]
    if bos is not None:
        arr = np.concatenate([np.full((arr.shape[0], 1), bos, dtype=np.int64), arr], axis=1)
    return TokenWindows(
        ids=torch.from_numpy(arr),
        window_index=torch.from_numpy(chosen.astype(np.int64)),
        has_bos=bos is not None,
        seq_len=spec.seq_len,
        n_tokens=len(ids),
        n_available=n_avail,
        corpus=corpus,
        position=torch.arange(len(chosen)),
        n_run=len(chosen),
    )


def stat_mask(attention_mask: torch.Tensor, exclude_first: bool) -> torch.Tensor:
    """Tokens that enter statistics: real tokens, without position 0 when asked."""
    mask = attention_mask.bool().clone()
    if exclude_first:
        mask[:, 0] = False
    return mask


def iter_batches(windows: TokenWindows, batch_size: int, exclude_first: bool = True) -> Iterator[Batch]:
    """Equal-length windows in order, ``batch_size`` at a time (no padding is needed)."""
    for start in range(0, len(windows), batch_size):
        ids = windows.ids[start : start + batch_size]
        att = torch.ones_like(ids)
        yield Batch(
            ids,
            att,
            stat_mask(att, exclude_first),
            windows.window_index[start : start + batch_size],
            torch.ones(ids.shape[0], dtype=torch.bool),
            windows.position[start : start + batch_size],
            windows.n_run,
        )


def pad_batch(sequences: list[list[int]], pad_id: int, window_index: list[int], exclude_first: bool = True) -> Batch:
    """Right-pad sequences of different lengths into one batch with masks (prompts, tests)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, : len(s)] = 1
    full = torch.tensor([len(s) == width for s in sequences])
    n = len(sequences)
    return Batch(ids, att, stat_mask(att, exclude_first), torch.tensor(window_index), full, torch.arange(n), n)
