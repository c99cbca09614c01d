"""Corpora, tokenizers and the token dataset of the training lab."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from muonclip.lab.data import (
    DOC_SEPARATOR,
    DataError,
    TokenDataset,
    default_corpus,
    default_corpus_sources,
    load_corpus,
    load_text,
)
from muonclip.lab.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    TokenizerError,
    load_tokenizer,
    make_tokenizer,
)

SAMPLE = (
    "The quick brown fox jumps over the lazy dog. " * 20
    + "def f(x):\n    return x * 2\n\n" * 10
    + "Unicode: héllo wörld, 日本語, emoji 🚀.\n" * 5
)


# --------------------------------------------------------------------------- default corpus


def test_default_corpus_is_deterministic_and_sizeable():
    a = default_corpus()
    default_corpus.cache_clear()
    default_corpus_sources.cache_clear()
    b = default_corpus()
    assert a == b
    assert 1_000_000 < len(a.encode("utf-8")) < 20_000_000
    # pydoc topic text and stdlib docstrings are both in it
    assert 'The "assert" statement' in a
    assert "Assert statements are a convenient way to insert debugging assertions" in a
    assert "json.dumps\nSerialize ``obj`` to a JSON formatted ``str``." in a


def test_default_corpus_reads_no_excluded_modules():
    sources = default_corpus_sources()
    labels = [label for label, _ in sources]
    docs = [text for label, text in sources if label.startswith("doc:")]
    assert len(docs) == len(set(docs))  # identical docstrings kept once
    modules = {label[4:].split(".")[0] for label in labels if label.startswith("doc:")}
    for name in ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3"):
        assert name not in modules
    assert {"json", "collections", "email"} <= modules


def test_default_corpus_ignores_shadowing_files_in_cwd(tmp_path, monkeypatch):
    from muonclip.lab import data

    (tmp_path / "json.py").write_text('"""SHADOW DOCSTRING"""\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    files = data._stdlib_source_files("json", data._stdlib_dir())
    assert files and all(not path.startswith(str(tmp_path)) for _, path in files)
    assert {"json", "json.decoder", "json.encoder"} <= {name for name, _ in files}
    assert data._stdlib_source_files("sys", data._stdlib_dir()) == []  # built-in: no source


# --------------------------------------------------------------------------- load_text


def test_load_text_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hello\nworld\n", encoding="utf-8")
    assert load_text(p) == "hello\nworld\n"
    assert load_text(str(p)) == "hello\nworld\n"


def test_load_text_folder_sorted_and_filtered(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.md").write_text("first", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.rst").write_text("third\n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\xff")  # not a text extension
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("   \n", encoding="utf-8")
    text = load_text(tmp_path)
    assert text == DOC_SEPARATOR.join(["first", "second", "third"]) + "\n"


def test_load_text_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="does not exist") as info:
        load_text(missing)
    assert str(missing) in str(info.value)


def test_load_text_empty_file_and_folder(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty") as info:
        load_text(f)
    assert str(f) in str(info.value)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x.bin").write_bytes(b"abc")
    with pytest.raises(DataError, match="no non-empty text files"):
        load_text(d)


def test_load_text_non_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8") as info:
        load_text(p)
    assert str(p) in str(info.value)
    with pytest.raises(DataError, match="not UTF-8"):
        load_text(tmp_path)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


def test_load_corpus_dispatch(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("abcdef" * 10, encoding="utf-8")
    assert load_corpus(str(p)) == "abcdef" * 10
    assert load_corpus(str(p), max_chars=5) == "abcde"
    assert load_corpus("default", max_chars=100) == default_corpus()[:100]


# --------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_roundtrip_and_ids():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    assert tok.encode("AB") == [65, 66]
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    assert tok.encode_tensor(SAMPLE).tolist() == tok.encode(SAMPLE)
    assert tok.encode_tensor("").numel() == 0
    assert tok.decode([0xC3]) == "\ufffd"  # invalid UTF-8 from a model does not raise
    with pytest.raises(TokenizerError):
        tok.decode([256])


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_tokenizer_roundtrip_property(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_tensor(text).tolist() == ids


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(SAMPLE * 3, vocab_size=300)


def test_bpe_train_encode_decode(bpe):
    assert 256 < bpe.vocab_size <= 300
    ids = bpe.encode(SAMPLE)
    assert len(ids) < len(SAMPLE.encode("utf-8"))  # it actually merges
    assert bpe.decode(ids) == SAMPLE
    assert bpe.encode_tensor(SAMPLE).tolist() == ids
    with pytest.raises(TokenizerError):
        bpe.decode([bpe.vocab_size])


def test_bpe_training_is_deterministic(bpe):
    again = BPETokenizer.train(SAMPLE * 3, vocab_size=300)
    assert again.to_json() == bpe.to_json()


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_bpe_roundtrip_property(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_bad_args():
    with pytest.raises(TokenizerError, match=">= 256"):
        BPETokenizer.train(SAMPLE, vocab_size=100)
    with pytest.raises(TokenizerError, match="empty"):
        BPETokenizer.train("", vocab_size=300)


def test_tokenizer_save_load(tmp_path, bpe):
    p = bpe.save(tmp_path / "run" / "tokenizer.json")
    loaded = load_tokenizer(p)
    assert isinstance(loaded, BPETokenizer)
    assert loaded == bpe
    assert loaded.encode(SAMPLE) == bpe.encode(SAMPLE)
    json.loads(p.read_text(encoding="utf-8"))  # plain JSON

    q = ByteTokenizer().save(tmp_path / "byte.json")
    assert isinstance(load_tokenizer(q), ByteTokenizer)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(bad)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="neither"):
        load_tokenizer(other)


def test_make_tokenizer():
    assert isinstance(make_tokenizer("byte"), ByteTokenizer)
    assert isinstance(make_tokenizer("bpe", SAMPLE, 280), BPETokenizer)
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        make_tokenizer("wordpiece")
    with pytest.raises(TokenizerError, match="needs text"):
        make_tokenizer("bpe")


# --------------------------------------------------------------------------- TokenDataset


@pytest.fixture(scope="module")
def ds() -> TokenDataset:
    tokens = torch.arange(10_000) % 251  # position is recoverable from the id pattern
    return TokenDataset(tokens, val_fraction=0.1, seed=3, vocab_size=256)


def test_split_is_disjoint_and_complete(ds):
    assert ds.n_train == 9_000 and ds.n_val == 1_000
    assert torch.equal(torch.cat([ds.train, ds.val]), ds.tokens)
    assert ds.train.data_ptr() + ds.n_train * ds.tokens.element_size() == ds.val.data_ptr()
    assert ds.tokens.dtype == torch.uint8


def test_windows_stay_inside_their_split():
    n = 2_000
    ds = TokenDataset(torch.arange(n, dtype=torch.int32), val_fraction=0.25)
    x, y = ds.get_batch("train", 256, 16, torch.Generator().manual_seed(0))
    assert int(y.max()) < ds.n_train
    for xv, yv in ds.val_batches(4, 32, 16):
        assert int(xv.min()) >= ds.n_train and int(yv.max()) < n


def test_batch_shapes_dtype_and_shift(ds):
    x, y = ds.batch_at(0, batch_size=8, seq_len=32)
    assert x.shape == y.shape == (8, 32)
    assert x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])
    # y is the token after x in the underlying stream (ids increase by 1 mod 251)
    assert torch.equal(y, (x + 1) % 251)


def test_batch_at_is_deterministic(ds):
    a = ds.batch_at(17, 4, 16)
    b = ds.batch_at(17, 4, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = ds.batch_at(18, 4, 16)
    assert not torch.equal(a[0], c[0])
    other_seed = ds.batch_at(17, 4, 16, seed=4)
    assert not torch.equal(a[0], other_seed[0])
    # a fresh dataset object (e.g. after a restart) gives the same batches
    again = TokenDataset(ds.tokens.clone(), val_fraction=0.1, seed=3)
    assert torch.equal(again.batch_at(17, 4, 16)[0], a[0])


def test_get_batch_resumes_from_generator_state(ds):
    gen = torch.Generator().manual_seed(123)
    ds.get_batch("train", 4, 8, gen)
    state = gen.get_state()
    expected = ds.get_batch("train", 4, 8, gen)
    gen2 = torch.Generator()
    gen2.set_state(state)
    got = ds.get_batch("train", 4, 8, gen2)
    assert torch.equal(expected[0], got[0])


def test_val_batches_fixed_and_spread(ds):
    a = ds.val_batches(3, 4, 16)
    b = ds.val_batches(3, 4, 16)
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=False):
        assert xa.shape == (4, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
    one = ds.val_batches(1, 1, 16)
    assert torch.equal(one[0][0][0], ds.val[:16].long())


def test_dataset_errors(ds):
    with pytest.raises(DataError, match="fewer than seq_len"):
        ds.val_batches(1, 2, 5_000)
    with pytest.raises(DataError, match="unknown split"):
        ds.get_batch("test", 2, 4)
    with pytest.raises(DataError, match="val_fraction"):
        TokenDataset(torch.arange(100), val_fraction=0.0)
    with pytest.raises(DataError, match="1-D"):
        TokenDataset(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(DataError, match="outside the vocabulary"):
        TokenDataset(torch.arange(300), vocab_size=256)
    with pytest.raises(DataError, match="step"):
        ds.batch_at(-1, 2, 4)


def test_from_text_and_state_dict(bpe):
    byte_ds = TokenDataset.from_text(SAMPLE, ByteTokenizer(), seed=1)
    assert len(byte_ds) == len(SAMPLE.encode("utf-8"))
    assert byte_ds.vocab_size == 256
    bpe_ds = TokenDataset.from_text(SAMPLE, bpe, val_fraction=0.2)
    assert bpe_ds.tokens.dtype == torch.int16
    assert bpe.decode(bpe_ds.tokens.tolist()) == SAMPLE
    state = byte_ds.state_dict()
    TokenDataset.from_text(SAMPLE, ByteTokenizer(), seed=1).check_state_dict(state)
    with pytest.raises(DataError, match="fingerprint"):
        TokenDataset.from_text(SAMPLE + "x", ByteTokenizer(), seed=1).check_state_dict(state)
