"""Users' own tokenizers: a word or character vocabulary file, or a Hugging Face tokenizer.json.

Three kinds beside the built-in char/byte `Tokenizer`, with the same interface (encode, decode,
stream_decoder, check_ids, vocab_size, pad_id/bos_id/eos_id, to_json; `Tokenizer.from_json`
reads them all back):

  word        WordTokenizer       vocabulary file, one token a line, id = line number (from 0);
                                  text split on whitespace, decoded joined by single spaces
  vocab-char  VocabCharTokenizer  the same file as characters: one character a line (the lines
                                  `\\n` and `\\t` stand for newline and tab); only special tokens
                                  (`<pad>`, `[UNK]`, ...) may be longer
  hf          HFTokenizer         a `tokenizers` tokenizer.json (BPE, byte-level BPE, WordPiece,
                                  WordLevel, ...); its whole content is kept in the JSON, so an
                                  export folder needs no other file

Special tokens are named by their strings (pad, bos, eos, unk), looked up in the vocabulary;
those not given are looked for under common spellings. bos, eos and unk may be absent (their id
None: no <eos> means generation stops on length or stop strings only); pad falls back to eos,
else id 0. Special tokens print nothing when decoded. JSON layout:
  {"kind": "word"|"vocab-char", "tokens": [...], "specials": {"pad": str|null, "bos": ..., "eos": ..., "unk": ...}}
  {"kind": "hf", "tokenizer": {...the tokenizer.json object...}, "specials": {...}}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from seqserve.errors import SeqserveError

SPECIAL_NAMES = ("pad", "bos", "eos", "unk")
SPELLINGS = {"pad": ("<pad>", "[PAD]"), "bos": ("<bos>", "<s>", "[BOS]", "<|startoftext|>"),
             "eos": ("<eos>", "</s>", "[EOS]", "<|endoftext|>"), "unk": ("<unk>", "[UNK]")}
LOOKS_SPECIAL = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")      # <pad>, </s>, <|endoftext|>, [UNK]
ESCAPES = {"\\n": "\n", "\\t": "\t"}                           # vocab-char lines for unwritable characters


def _shown(items, n: int = 10) -> str:
    items = list(items)
    return ", ".join(repr(t) for t in items[:n]) + (" ..." if len(items) > n else "") or "none"


def resolve_specials(given: dict | None, lookup, candidates) -> dict[str, str | None]:
    """name -> token string (or None) for every special: as given, else the first common spelling
    the vocabulary has (`lookup(token)` -> id or None). A given token it lacks is an error."""
    given = dict(given or {})
    if set(given) - set(SPECIAL_NAMES):
        raise SeqserveError(f"unknown special token name(s) {sorted(set(given) - set(SPECIAL_NAMES))}; "
                            f"expected some of {list(SPECIAL_NAMES)}")
    out = {}
    for name in SPECIAL_NAMES:
        if name in given:
            token = given[name]
            if token is not None and lookup(token) is None:
                raise SeqserveError(f"special token {name}={token!r} is not in the vocabulary; tokens there "
                                    f"that look special: {_shown(sorted(candidates()), 20)}")
            out[name] = token
        else:
            out[name] = next((s for s in SPELLINGS[name] if lookup(s) is not None), None)
    if out["pad"] is None:
        out["pad"] = out["eos"]
    return out


class _UserTokenizer:
    """Specials and the parts every user kind shares. Subclasses set kind, _lookup, _candidates,
    _declared (ids special by the vocabulary itself), vocab_size, _payload, _stream."""

    kind = ""

    def _init_specials(self):
        sp = resolve_specials(dict(self.specials), self._lookup, self._candidates)
        object.__setattr__(self, "specials", tuple(sp.items()))
        ids = {n: (None if t is None else self._lookup(t)) for n, t in sp.items()}
        for name in SPECIAL_NAMES:
            object.__setattr__(self, f"{name}_id", ids[name])
        if ids["pad"] is None:
            object.__setattr__(self, "pad_id", 0)
        object.__setattr__(self, "special_ids", frozenset(self._declared() | {i for i in ids.values() if i is not None}))

    def _declared(self) -> set[int]:
        return set()

    def decode(self, ids) -> str:
        return self.stream_decoder().feed(ids, final=True)

    def stream_decoder(self, after=()):
        """after: the ids this stream continues (a prompt): the first new word gets its space."""
        return self._stream(self, after)

    def check_ids(self, ids) -> None:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise SeqserveError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")

    def to_json(self) -> dict:
        return {"kind": self.kind, **self._payload(), "specials": dict(self.specials)}


class _VocabTokenizer(_UserTokenizer):
    """A vocabulary list (id = index): word and vocab-char."""

    def __post_init__(self):
        if not self.tokens:
            raise SeqserveError(f"the {self.kind} vocabulary is empty")
        index = {}
        for i, t in enumerate(self.tokens):
            if not isinstance(t, str) or not t:
                raise SeqserveError(f"{self.kind} vocabulary entry {i} is {t!r}; expected a non-empty string")
            if t in index:
                raise SeqserveError(f"token {t!r} appears twice in the {self.kind} vocabulary (lines "
                                    f"{index[t] + 1} and {i + 1})")
            index[t] = i
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "_index", index)
        self._check_tokens()
        self._init_specials()

    def _check_tokens(self):
        pass

    def _lookup(self, token):
        return self._index.get(token)

    def _candidates(self):
        return [t for t in self.tokens if LOOKS_SPECIAL.fullmatch(t)]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def _payload(self) -> dict:
        return {"tokens": list(self.tokens)}

    def _ids(self, pieces: list[str]) -> list[int]:
        unk = self.unk_id
        missing = sorted({p for p in pieces if p not in self._index})
        if missing and unk is None:
            raise SeqserveError(f"text has {len(missing)} {self.unit}(s) outside the vocabulary and the vocabulary "
                                f"has no unknown token: {_shown(missing)} ({len(self.tokens)} tokens in the vocabulary)")
        return [self._index.get(p, unk) for p in pieces]


@dataclass(frozen=True)
class WordTokenizer(_VocabTokenizer):
    tokens: tuple[str, ...]
    specials: tuple = ()         # (name, token) pairs, or a {name: token} dict; missing -> common spellings
    kind = "word"
    unit = "word"

    def encode(self, text: str) -> list[int]:
        return self._ids(text.split())

    def _check_tokens(self):
        bad = [t for t in self.tokens if len(t.split()) != 1]
        if bad:
            raise SeqserveError(f"word vocabulary tokens may not hold whitespace: {_shown(bad)}")


class _WordStream:
    """' word' per token (no space before the first word shown); special tokens print nothing."""

    def __init__(self, tok: WordTokenizer, after=()):
        self.tok = tok
        self.started = any(int(i) not in tok.special_ids and 0 <= int(i) < len(tok.tokens) for i in after)

    def feed(self, ids, final: bool = False) -> str:
        out = []
        for i in (int(i) for i in ids):
            if i in self.tok.special_ids or not 0 <= i < len(self.tok.tokens):
                continue
            out.append((" " if self.started else "") + self.tok.tokens[i])
            self.started = True
        return "".join(out)


@dataclass(frozen=True)
class VocabCharTokenizer(_VocabTokenizer):
    tokens: tuple[str, ...]
    specials: tuple = ()
    kind = "vocab-char"
    unit = "character"

    def encode(self, text: str) -> list[int]:
        return self._ids(list(text))

    def _check_tokens(self):
        bad = [t for t in self.tokens if len(t) > 1 and not LOOKS_SPECIAL.fullmatch(t)]
        if bad:
            raise SeqserveError(f"a character vocabulary holds single characters (and special tokens like <pad>); "
                                f"these lines are neither: {_shown(bad)}")

    def _declared(self) -> set[int]:
        return {i for i, t in enumerate(self.tokens) if len(t) > 1}


class _CharStream(_WordStream):
    def feed(self, ids, final: bool = False) -> str:
        n, skip = len(self.tok.tokens), self.tok.special_ids
        return "".join(self.tok.tokens[i] for i in (int(i) for i in ids) if i not in skip and 0 <= i < n)


WordTokenizer._stream, VocabCharTokenizer._stream = _WordStream, _CharStream


@dataclass(frozen=True)
class HFTokenizer(_UserTokenizer):
    spec: str = field(repr=False)    # the tokenizer.json text (as the library writes it back)
    specials: tuple = ()
    kind = "hf"

    def __post_init__(self):
        from tokenizers import Tokenizer as Library

        try:
            lib = Library.from_str(self.spec)
        except Exception as e:       # the library raises plain Exception
            raise SeqserveError(f"not a Hugging Face tokenizer.json: {str(e).splitlines()[0][:200]}") from None
        object.__setattr__(self, "spec", lib.to_str())
        object.__setattr__(self, "_lib", lib)
        self._init_specials()

    def _lookup(self, token):
        return self._lib.token_to_id(token)

    def _candidates(self):
        added = {t.content for t in self._lib.get_added_tokens_decoder().values() if t.special}
        return added | {t for t in self._lib.get_vocab(with_added_tokens=True) if LOOKS_SPECIAL.fullmatch(t)}

    def _declared(self) -> set[int]:
        return {i for i, t in self._lib.get_added_tokens_decoder().items() if t.special}

    @property
    def vocab_size(self) -> int:
        return self._lib.get_vocab_size(with_added_tokens=True)

    def _payload(self) -> dict:
        return {"tokenizer": json.loads(self.spec)}

    def encode(self, text: str) -> list[int]:
        """The text's ids, no special tokens added (seqserve adds <bos> itself where a task needs it)."""
        try:
            return self._lib.encode(text, add_special_tokens=False).ids
        except Exception as e:
            raise SeqserveError(f"the tokenizer cannot encode this text: {str(e).splitlines()[0][:200]}") from None

    def text(self, ids: list[int]) -> str:
        return self._lib.decode([i for i in ids if i not in self.special_ids], skip_special_tokens=True)


class _HFStream:
    """Decodes all ids so far and shows what is new; text ending in U+FFFD (a character whose
    bytes have not all arrived) is held back until more ids come or the stream ends."""

    def __init__(self, tok: HFTokenizer, after=()):
        # decode the prompt with the new ids, show only the new part: spaces come out right
        self.tok, self.ids = tok, [int(i) for i in after if 0 <= int(i) < tok.vocab_size]
        self.shown = len(tok.text(self.ids))

    def feed(self, ids, final: bool = False) -> str:
        self.ids += [int(i) for i in ids if 0 <= int(i) < self.tok.vocab_size]
        text = self.tok.text(self.ids)
        if not final:
            text = text.rstrip("\ufffd")
        out = text[self.shown:]
        self.shown = max(self.shown, len(text))
        return out


HFTokenizer._stream = _HFStream
KINDS = {"word": WordTokenizer, "vocab-char": VocabCharTokenizer, "hf": HFTokenizer}
PAYLOAD = {"word": "tokens", "vocab-char": "tokens", "hf": "tokenizer"}


def from_json(d: dict):
    """A user kind from its to_json() dict (Tokenizer.from_json sends these kinds here)."""
    kind, key = d["kind"], PAYLOAD[d["kind"]]
    specials = d.get("specials")
    if not isinstance(specials, dict) or set(specials) != set(SPECIAL_NAMES):
        raise SeqserveError(f"{kind} tokenizer JSON needs 'specials' with {list(SPECIAL_NAMES)}; got {str(specials)[:60]}")
    if kind == "hf":
        if not isinstance(d[key], dict):
            raise SeqserveError(f"hf tokenizer JSON needs the tokenizer.json object in 'tokenizer'; got {str(d[key])[:60]}")
        return HFTokenizer(json.dumps(d[key], ensure_ascii=False), specials)
    if not isinstance(d[key], list):
        raise SeqserveError(f"{kind} tokenizer JSON needs a list of strings in 'tokens'; got {str(d[key])[:60]}")
    return KINDS[kind](tuple(d[key]), specials)


def read_vocab(path: Path, level: str) -> tuple[str, ...]:
    """One token a line (line ends stripped; word lines also lose surrounding spaces)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SeqserveError(f"vocabulary file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise SeqserveError(f"vocabulary file {path} is empty")
    if level == "word":
        lines = [ln.strip() for ln in lines]
    else:
        lines = [ESCAPES.get(ln, ln) for ln in lines]
    empty = [i + 1 for i, ln in enumerate(lines) if not ln]
    if empty:
        raise SeqserveError(f"vocabulary file {path} has empty line(s) {empty[:5]}; every line must hold a token")
    return tuple(lines)


def load_tokenizer(path: str, level: str | None = None, specials: dict[str, str] | None = None):
    """The CLI's tokenizer: "bytes" -> byte tokenizer; a .json file -> a Hugging Face tokenizer.json
    (or a seqserve tokenizer JSON, one with "kind"); any other file -> a vocabulary, word level
    (default) or char level. specials: {"pad"|"bos"|"eos"|"unk": token string}."""
    from seqserve.data.tokenizer import Tokenizer

    if level not in (None, "word", "char"):
        raise SeqserveError(f"unknown tokenizer level {level!r}; expected word or char")
    if path == "bytes":
        if level is not None or specials:
            raise SeqserveError("the byte tokenizer has fixed special tokens and no level; give neither")
        return Tokenizer("byte")
    p = Path(path)
    if not p.exists():
        raise SeqserveError(f"tokenizer file {path} not found (give a vocabulary file, a tokenizer.json or 'bytes')")
    if not p.is_file():
        raise SeqserveError(f"tokenizer path {path} is not a file; give a vocabulary file or a tokenizer.json")
    if p.suffix.lower() != ".json":
        tokens = read_vocab(p, level or "word")
        return (VocabCharTokenizer if level == "char" else WordTokenizer)(tokens, specials or {})
    if level is not None:
        raise SeqserveError(f"{path} is a JSON tokenizer; a level applies to vocabulary files only")
    try:
        text = p.read_text(encoding="utf-8")
        d = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SeqserveError(f"tokenizer file {path} is not readable JSON: {e}") from None
    if isinstance(d, dict) and "kind" in d:
        if specials:
            raise SeqserveError(f"{path} is a seqserve tokenizer JSON with its special tokens fixed; give no specials")
        try:
            return Tokenizer.from_json(d)
        except SeqserveError as e:
            raise SeqserveError(f"{path}: {e}") from None
    try:
        return HFTokenizer(text, specials or {})
    except SeqserveError as e:
        raise SeqserveError(f"{path}: {e}") from None
