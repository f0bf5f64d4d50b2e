"""Users' own tokenizers (seqserve/data/user_tokenizers.py): word and character vocabulary files,
and Hugging Face tokenizer.json files made by the real `tokenizers` library in the test (byte-level
BPE, WordPiece, WordLevel): round trips, JSON round trips, special tokens, unknown tokens,
streamed decoding of multi-byte text, load_tokenizer's errors, and generation without an <eos>."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as Library
from tokenizers import decoders, models, pre_tokenizers, trainers

from seqserve.data import HFTokenizer, Tokenizer, VocabCharTokenizer, WordTokenizer, load_tokenizer
from seqserve.errors import SeqserveError

MULTI = ["café au lait, s'il vous plaît", "中文 文本 中文", "emoji 😀 🎉 😀 fun", "naïve résumé é"]
CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world, hello there", *MULTI] * 5


def byte_bpe(vocab_size: int = 300) -> Library:
    lib = Library(models.BPE())
    lib.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    lib.decoder = decoders.ByteLevel()
    lib.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return lib


def wordpiece() -> Library:
    lib = Library(models.WordPiece(unk_token="[UNK]"))
    lib.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    lib.decoder = decoders.WordPiece()
    lib.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    return lib


def wordlevel(unk: bool = True) -> Library:
    lib = Library(models.WordLevel(unk_token="[UNK]" if unk else None))
    lib.pre_tokenizer = pre_tokenizers.Whitespace()
    lib.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"] if unk else ["[PAD]"]))
    return lib


def hf_file(tmp_path, lib: Library, name: str = "tokenizer.json"):
    path = tmp_path / name
    lib.save(str(path))
    return path


def vocab_file(tmp_path, lines, name: str = "vocab.txt"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def json_round_trip(tok):
    back = Tokenizer.from_json(json.loads(json.dumps(tok.to_json())))
    assert back == tok and type(back) is type(tok)
    assert (back.pad_id, back.bos_id, back.eos_id, back.unk_id) == (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id)
    assert back.vocab_size == tok.vocab_size
    return back


def streamed(tok, ids) -> list[str]:
    dec = tok.stream_decoder()
    return [dec.feed([i]) for i in ids] + [dec.feed([], final=True)]


# --- Hugging Face tokenizer.json -----------------------------------------------------------------

@pytest.mark.parametrize("make", [byte_bpe, wordpiece, wordlevel])
def test_hf_round_trips_and_vocab_size(make, tmp_path):
    lib = make()
    tok = load_tokenizer(str(hf_file(tmp_path, lib)))
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf"
    assert tok.vocab_size == lib.get_vocab_size(with_added_tokens=True)
    for text in CORPUS[:6]:
        ids = tok.encode(text)
        assert ids == lib.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == lib.decode(ids, skip_special_tokens=True)
        tok.check_ids(ids)
    back = json_round_trip(tok)
    for text in CORPUS[:6]:
        assert back.encode(text) == tok.encode(text)
        assert back.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_hf_json_is_self_contained(tmp_path):
    path = hf_file(tmp_path, byte_bpe())
    d = load_tokenizer(str(path)).to_json()
    path.unlink()                                       # the original file is gone (a copied export)
    assert set(d) == {"kind", "tokenizer", "specials"} and d["tokenizer"]["model"]["type"] == "BPE"
    back = Tokenizer.from_json(json.loads(json.dumps(d)))
    assert back.decode(back.encode("中文 😀")) == "中文 😀"
    # a seqserve tokenizer JSON (it has "kind") given to load_tokenizer is read as that
    saved = tmp_path / "seqserve_tok.json"
    saved.write_text(json.dumps(d))
    assert load_tokenizer(str(saved)) == back


def test_byte_level_bpe_streams_whole_characters(tmp_path):
    tok = load_tokenizer(str(hf_file(tmp_path, byte_bpe(vocab_size=262))))   # few merges: bytes split characters
    for text in MULTI:
        ids = tok.encode(text)
        assert any("\ufffd" in tok.decode([i]) for i in ids), "expected single tokens that split a character"
        pieces = streamed(tok, ids)
        assert "".join(pieces) == tok.decode(ids) == text
        assert not any("\ufffd" in p for p in pieces)
    # an incomplete character at the very end shows as U+FFFD only when the stream ends
    ids = tok.encode("a中")
    cut = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd"))
    dec = tok.stream_decoder()
    assert dec.feed(ids[:cut]) == "a"
    assert dec.feed([], final=True) == "\ufffd"


@pytest.mark.parametrize("make", [wordpiece, wordlevel])
def test_hf_stream_equals_full_decode(make, tmp_path):
    tok = load_tokenizer(str(hf_file(tmp_path, make())))
    for text in CORPUS[:6]:
        ids = tok.encode(text)
        assert "".join(streamed(tok, ids)) == tok.decode(ids)
        # continuing a prompt: prompt + the streamed rest == decoding the whole (the space between)
        k = len(ids) // 2
        dec = tok.stream_decoder(ids[:k])
        rest = "".join(dec.feed([i]) for i in ids[k:]) + dec.feed([], final=True)
        assert tok.decode(ids[:k]) + rest == tok.decode(ids)


def test_hf_specials_defaults_and_lookup(tmp_path):
    bpe = load_tokenizer(str(hf_file(tmp_path, byte_bpe())))
    assert bpe.pad_id == 0 and bpe.eos_id == 1 and bpe.bos_id is None and bpe.unk_id is None
    assert bpe.decode([1, *bpe.encode("hi"), 0]) == "hi"             # specials print nothing
    wp = load_tokenizer(str(hf_file(tmp_path, wordpiece(), "wp.json")))
    assert (wp.pad_id, wp.unk_id, wp.bos_id, wp.eos_id) == (0, 1, None, None)
    assert wp.encode("zzz ~") and wp.unk_id in wp.encode("~")         # the model's own [UNK]
    given = load_tokenizer(str(tmp_path / "wp.json"), specials={"bos": "[CLS]", "eos": "[SEP]"})
    assert (given.bos_id, given.eos_id, given.pad_id) == (2, 3, 0)
    assert json_round_trip(given).bos_id == 2
    with pytest.raises(SeqserveError, match=r"special token eos='</s>' is not in the vocabulary.*\[CLS\]"):
        load_tokenizer(str(tmp_path / "wp.json"), specials={"eos": "</s>"})


def test_hf_wordlevel_without_unk_is_a_clear_error(tmp_path):
    tok = load_tokenizer(str(hf_file(tmp_path, wordlevel(unk=False))))
    assert tok.unk_id is None
    with pytest.raises(SeqserveError, match="cannot encode"):
        tok.encode("the zebra")


# --- vocabulary files ----------------------------------------------------------------------------

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "the", "cat", "sat", "on", "mat", "é", "中文"]


def test_word_round_trip_specials_and_stream(tmp_path):
    tok = load_tokenizer(str(vocab_file(tmp_path, WORDS)))
    assert isinstance(tok, WordTokenizer) and tok.kind == "word" and tok.vocab_size == len(WORDS)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    ids = tok.encode("the  cat\tsat\non the mat é 中文")
    assert ids == [4, 5, 6, 7, 4, 8, 9, 10]
    assert tok.decode(ids) == "the cat sat on the mat é 中文"
    assert tok.decode([1, 4, 0, 5, 2]) == "the cat"
    assert streamed(tok, [1, 4, 5, 2]) == ["", "the", " cat", "", ""]
    assert "".join(streamed(tok, ids)) == tok.decode(ids)
    assert tok.encode("the dog sat") == [4, 3, 6]                    # unknown word -> <unk>
    back = json_round_trip(tok)
    assert back.decode(ids) == tok.decode(ids)
    assert tok.to_json() == {"kind": "word", "tokens": WORDS,
                             "specials": {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}}


def test_word_without_unk_names_unknown_words(tmp_path):
    tok = load_tokenizer(str(vocab_file(tmp_path, ["[PAD]", "[EOS]", "a", "b"])))
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, None, None)
    with pytest.raises(SeqserveError, match=r"2 word\(s\) outside the vocabulary.*'dog', 'zebra'"):
        tok.encode("a zebra b dog")


def test_pad_falls_back_to_eos_then_zero(tmp_path):
    tok = load_tokenizer(str(vocab_file(tmp_path, ["x", "y", "<|endoftext|>"])))
    assert (tok.pad_id, tok.eos_id) == (2, 2)
    json_round_trip(tok)
    tok = load_tokenizer(str(vocab_file(tmp_path, ["x", "y"], "plain.txt")))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, None, None, None)
    assert json_round_trip(tok).to_json()["specials"] == dict.fromkeys(["pad", "bos", "eos", "unk"])


def test_given_specials_and_errors(tmp_path):
    path = vocab_file(tmp_path, ["[PAD]", "[STOP]", "<mask>", "a", "b"])
    tok = load_tokenizer(str(path), specials={"eos": "[STOP]", "unk": "<mask>"})
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.encode("a q") == [3, 2]
    with pytest.raises(SeqserveError, match=r"special token bos='<s>' is not in the vocabulary; .*'<mask>', '\[PAD\]', '\[STOP\]'"):
        load_tokenizer(str(path), specials={"bos": "<s>"})
    with pytest.raises(SeqserveError, match="unknown special token name"):
        load_tokenizer(str(path), specials={"start": "[PAD]"})


def test_vocab_char_level(tmp_path):
    lines = ["<pad>", "<eos>", "[UNK]", "a", "b", " ", "é", "中", "😀", "\\n"]
    path = vocab_file(tmp_path, lines)
    tok = load_tokenizer(str(path), level="char")
    assert isinstance(tok, VocabCharTokenizer) and tok.kind == "vocab-char" and tok.vocab_size == len(lines)
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, None)
    text = "ab é\n中😀"
    ids = tok.encode(text)
    assert ids == [3, 4, 5, 6, 9, 7, 8]
    assert tok.decode(ids + [1, 0]) == text
    assert "".join(streamed(tok, ids)) == text
    assert tok.encode("az") == [3, 2]
    assert json_round_trip(tok).decode(ids) == text
    with pytest.raises(SeqserveError, match="single characters.*'ab'"):
        load_tokenizer(str(vocab_file(tmp_path, ["a", "ab", "<pad>"], "bad.txt")), level="char")
    no_unk = load_tokenizer(str(vocab_file(tmp_path, ["a", "b"], "ab.txt")), level="char")
    with pytest.raises(SeqserveError, match=r"1 character\(s\) outside the vocabulary.*'z'"):
        no_unk.encode("abz")


# --- load_tokenizer and JSON errors --------------------------------------------------------------

def test_load_tokenizer_bytes_and_errors(tmp_path):
    assert load_tokenizer("bytes") == Tokenizer("byte")
    cases = [
        (str(tmp_path / "nope.txt"), {}, "not found"),
        (str(tmp_path), {}, "not a file"),
        (str(vocab_file(tmp_path, ["a"])), {"level": "bpe"}, "unknown tokenizer level 'bpe'; expected word or char"),
        (str(vocab_file(tmp_path, ["a", "b", "a"], "dup.txt")), {}, r"token 'a' appears twice .*lines 1 and 3"),
        (str(vocab_file(tmp_path, [], "empty.txt")), {}, "is empty"),
        (str(vocab_file(tmp_path, ["a", "", "b"], "gap.txt")), {}, r"empty line\(s\) \[2\]"),
        (str(vocab_file(tmp_path, ["{not json"], "broken.json")), {}, "not readable JSON"),
        (str(vocab_file(tmp_path, ['{"model": 1}'], "odd.json")), {}, "not a Hugging Face tokenizer.json"),
        ("bytes", {"specials": {"eos": "x"}}, "byte tokenizer"),
    ]
    for path, kw, match in cases:
        with pytest.raises(SeqserveError, match=match) as e:
            load_tokenizer(path, **kw)
        assert "\n" not in str(e.value)


def test_from_json_errors_and_old_layouts_unchanged():
    old = {"kind": "char", "chars": ["a", "b"], "specials": ["<pad>", "<bos>", "<eos>"]}
    tok = Tokenizer.from_json(old)
    assert tok == Tokenizer("char", ("a", "b")) and tok.to_json() == old
    assert Tokenizer.from_json({"kind": "byte", "chars": [], "specials": ["<pad>", "<bos>", "<eos>"]}) == Tokenizer("byte")
    with pytest.raises(SeqserveError, match="unknown tokenizer kind 'sentencepiece'"):
        Tokenizer.from_json({"kind": "sentencepiece"})
    with pytest.raises(SeqserveError, match="needs 'specials'"):
        Tokenizer.from_json({"kind": "word", "tokens": ["a"]})
    with pytest.raises(SeqserveError, match="appears twice"):
        Tokenizer.from_json({"kind": "word", "tokens": ["a", "a"], "specials": dict.fromkeys(["pad", "bos", "eos", "unk"])})


# --- generation without an <eos> -----------------------------------------------------------------

from test_beam import ToyLM  # noqa: E402 - fixed random logits per (last token, position)


def test_generation_and_beams_without_eos(tmp_path):
    from seqserve.generation import SamplingParams, generate_text
    from seqserve.generation.beam import BeamParams, beam_texts

    tok = load_tokenizer(str(vocab_file(tmp_path, ["a", "b", "c", "d"])))
    assert tok.eos_id is None
    be = ToyLM(tok.vocab_size)
    out = generate_text(be, tok, ["a b"], SamplingParams(max_tokens=6, greedy=True))[0]
    assert out.finish_reason == "length" and len(out.tokens) == 6
    # the text continues the prompt: the first new word gets its space, as decoding the whole would
    assert "a b" + out.text == tok.decode(tok.encode("a b") + out.tokens)
    assert out.text == " " + tok.decode(out.tokens)
    hyps = beam_texts(be, tok, ["a"], BeamParams(beams=2, max_tokens=4))[0]
    assert hyps and all(h.finish_reason == "length" and len(h.tokens) == 4 for h in hyps)
