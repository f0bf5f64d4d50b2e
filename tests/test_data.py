"""Tokenizers and corpora."""

from __future__ import annotations

import json
import zlib

import pytest

from seqserve.data import BOS, EOS, PAD, SPECIALS, Tokenizer, load_corpus
from seqserve.errors import SeqserveError

TEXT = "def f(x):\n    return x * 2  # ünïcödé ✓\n"


# --- tokenizer ---------------------------------------------------------------------------------

def test_char_tokenizer_round_trip():
    tok = Tokenizer.fit(TEXT, "char")
    assert tok.kind == "char" and tok.chars == tuple(sorted(set(TEXT)))
    assert tok.vocab_size == len(SPECIALS) + len(set(TEXT))
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT)
    assert min(ids) >= len(SPECIALS) and max(ids) < tok.vocab_size
    assert tok.decode(ids) == TEXT
    tok.check_ids(ids)


def test_byte_tokenizer_round_trip_any_text():
    tok = Tokenizer.fit("irrelevant", "byte")
    assert tok.vocab_size == len(SPECIALS) + 256
    text = TEXT + "日本語 \x00 😀"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert all(len(SPECIALS) <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens_decode_to_nothing():
    tok = Tokenizer.fit("abc", "char")
    assert (PAD, BOS, EOS) == (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.decode([BOS, *tok.encode("cab"), EOS, PAD]) == "cab"


def test_oov_characters_are_an_error_that_names_them():
    tok = Tokenizer.fit("hello world", "char")
    with pytest.raises(SeqserveError) as e:
        tok.encode("hello Zürich")
    msg = str(e.value)
    for c in "Züic":                            # outside the vocabulary; h, r, l, ... are known
        assert repr(c) in msg
    assert "4 character(s)" in msg and "'h'" not in msg


def test_out_of_range_ids_are_rejected():
    tok = Tokenizer.fit("ab", "char")
    with pytest.raises(SeqserveError, match="outside the vocabulary"):
        tok.check_ids([3, 99])


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_tokenizer_json_round_trip(kind, tmp_path):
    tok = Tokenizer.fit(TEXT, kind)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tok.to_json()))
    back = Tokenizer.from_json(json.loads(path.read_text()))
    assert back == tok
    assert back.vocab_size == tok.vocab_size
    assert back.encode(TEXT) == tok.encode(TEXT)


def test_tokenizer_json_errors():
    with pytest.raises(SeqserveError, match="specials"):
        Tokenizer.from_json({"kind": "char", "chars": ["a"], "specials": ["<s>", "</s>"]})
    with pytest.raises(SeqserveError, match="unknown tokenizer kind 'word'"):
        Tokenizer.from_json({"kind": "word", "chars": []})


def test_stream_decoder_holds_incomplete_utf8_for_byte_kind():
    tok = Tokenizer.fit("", "byte")
    ids = tok.encode("aé✓")                   # 1 + 2 + 3 bytes
    dec = tok.stream_decoder()
    pieces = [dec.feed([i]) for i in ids]
    assert pieces == ["a", "", "é", "", "", "✓"]
    assert dec.feed([], final=True) == ""
    # An incomplete sequence at the end becomes the replacement character only when final.
    dec = tok.stream_decoder()
    assert dec.feed(ids[:2]) == "a"
    assert dec.feed([], final=True) == "\ufffd"


def test_stream_decoder_char_kind_emits_each_token():
    tok = Tokenizer.fit("abc", "char")
    dec = tok.stream_decoder()
    assert [dec.feed([i]) for i in tok.encode("cab")] == ["c", "a", "b"]


# --- corpus ------------------------------------------------------------------------------------

def test_default_corpus_is_the_stdlib_split_deterministically():
    a = load_corpus(max_bytes=120_000)
    b = load_corpus(max_bytes=120_000)
    assert a == b
    assert a.train and a.val and a.files >= 2
    assert a.source.startswith("python-stdlib:")
    assert "def " in a.train and "import" in a.train
    size = len(a.train.encode()) + len(a.val.encode())
    assert size <= 120_000 + a.files            # the budget, plus one joining newline per file
    assert len(a.val) < len(a.train)


@pytest.mark.parametrize("max_bytes", [20_000, 300_000])
def test_default_corpus_validation_part_is_never_crowded_out(max_bytes):
    # Files are read in sorted order; the validation files must still get their share.
    c = load_corpus(max_bytes=max_bytes)
    assert len(c.val.encode()) >= max_bytes // 20
    assert len(c.train.encode()) >= max_bytes // 2


def test_single_file_is_split_at_90_percent(tmp_path):
    text = "".join(f"line {i}\n" for i in range(200))
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    c = load_corpus(f)
    cut = int(len(text) * 0.9)
    assert (c.train, c.val, c.files, c.source) == (text[:cut], text[cut:], 1, str(f))


def test_single_file_too_small(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("short")
    with pytest.raises(SeqserveError, match="need at least 100"):
        load_corpus(f)


def test_single_file_that_is_not_text(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"\xff\xfe\x00binary\x80" * 50)
    with pytest.raises(SeqserveError, match="is not UTF-8 text"):
        load_corpus(f)


def _name_in_split(prefix: str, val: bool) -> str:
    for i in range(1000):
        name = f"{prefix}{i}.txt"
        if (zlib.crc32(name.encode()) % 10 == 9) == val:
            return name
    raise AssertionError("no name found")


def test_folder_corpus_splits_by_path_hash_and_skips_binary_files(tmp_path):
    train_name, val_name = _name_in_split("t", False), _name_in_split("v", True)
    (tmp_path / train_name).write_text("training text " * 20)
    (tmp_path / val_name).write_text("validation text " * 5)
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)   # not UTF-8
    c = load_corpus(tmp_path)
    assert c.train == "training text " * 20
    assert c.val == "validation text " * 5
    assert c.files == 2 and c.source == str(tmp_path)
    assert load_corpus(tmp_path) == c


def test_binary_files_larger_than_the_budget_are_skipped_too(tmp_path):
    (tmp_path / _name_in_split("t", False)).write_text("training text " * 20)
    (tmp_path / _name_in_split("v", True)).write_text("validation text " * 5)
    (tmp_path / "a_blob.bin").write_bytes(bytes(range(128, 256)) * 400)   # read first, cut at the limit
    c = load_corpus(tmp_path, max_bytes=2_000)
    assert c.files == 2 and c.train == "training text " * 20


def test_a_file_cut_inside_a_character_keeps_the_whole_characters(tmp_path):
    text = "aé✓" * 200                                   # 1 + 2 + 3 bytes per repeat
    f = tmp_path / "u.txt"
    f.write_text(text)
    for limit in (1000, 1001, 1002):
        c = load_corpus(f, max_bytes=limit)
        got = c.train + c.val
        assert text.startswith(got) and len(text[: len(got)].encode()) > limit - 3


def _names_in_split(prefix: str, val: bool, n: int) -> list[str]:
    names = [f"{prefix}{i}.txt" for i in range(1000) if (zlib.crc32(f"{prefix}{i}.txt".encode()) % 10 == 9) == val]
    return names[:n]


@pytest.mark.parametrize("val", [False, True])
def test_folder_whose_files_all_fall_in_one_part_is_split_90_10(tmp_path, val):
    # With a few files, all of them hash into the same part surprisingly often (5 files: ~59%).
    names = _names_in_split("f", val, 4)
    texts = [f"text of file {i}\n" * 30 for i in range(4)]
    for name, text in zip(names, texts):
        (tmp_path / name).write_text(text)
    (tmp_path / "zz.bin").write_bytes(bytes(range(128, 256)) * 4)          # not text: skipped
    c = load_corpus(tmp_path)
    whole = "\n".join(t for _, t in sorted(zip(names, texts)))
    cut = int(len(whole) * 0.9)
    assert (c.train, c.val, c.files, c.source) == (whole[:cut], whole[cut:], 4, str(tmp_path))
    assert load_corpus(tmp_path) == c
    # The whole budget is used (not only the one part's share of it).
    small = load_corpus(tmp_path, max_bytes=1_000)
    assert 995 <= len((small.train + small.val).encode()) <= 1_000 + 4


def test_folder_with_one_text_file(tmp_path):
    (tmp_path / _name_in_split("t", True)).write_text("text " * 100)
    c = load_corpus(tmp_path)
    assert c.train + c.val == "text " * 100 and len(c.train) == 450 and c.files == 1


def test_folder_without_enough_text(tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SeqserveError, match="holds 0 characters of UTF-8 text in 0 readable file"):
        load_corpus(tmp_path)
    (tmp_path / "a.txt").write_text("short")
    with pytest.raises(SeqserveError, match="need at least 100"):
        load_corpus(tmp_path)


def test_missing_corpus_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(SeqserveError) as e:
        load_corpus(missing)
    assert str(missing) in str(e.value) and "does not exist" in str(e.value)
