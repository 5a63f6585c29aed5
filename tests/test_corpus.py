"""The binding window rule, the sources, and the corpus errors."""

import json

import pytest
from conftest import char_tokenizer

from spectral.config import CorpusSpec
from spectral.corpus import BUILTIN_PATH, iter_batches, load_corpus_text, make_windows
from spectral.errors import CorpusError


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
