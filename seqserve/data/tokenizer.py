"""Character- and byte-level tokenizers, saved as JSON beside the model.

Users' own tokenizers (word or character vocabulary files, Hugging Face tokenizer.json) live in
seqserve/data/user_tokenizers.py; `Tokenizer.from_json` reads every kind back.

Ids 0-2 are the special tokens; characters (or the 256 byte values) follow. The char tokenizer
has no unknown token on purpose: text outside the vocabulary is an error that names the
characters, rather than a silent substitution that changes what the model sees.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from seqserve.errors import SeqserveError

SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class Tokenizer:
    kind: str                   # "char" | "byte"
    chars: tuple[str, ...] = ()  # char kind: the vocabulary, id = index + len(SPECIALS)

    def __post_init__(self):
        if self.kind not in ("char", "byte"):
            raise SeqserveError(f"unknown tokenizer kind {self.kind!r}; expected char or byte")
        object.__setattr__(self, "_index", {c: i + len(SPECIALS) for i, c in enumerate(self.chars)})

    @staticmethod
    def fit(text: str, kind: str = "char") -> "Tokenizer":
        return Tokenizer(kind, tuple(sorted(set(text))) if kind == "char" else ())

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + (len(self.chars) if self.kind == "char" else 256)

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def encode(self, text: str) -> list[int]:
        if self.kind == "byte":
            return [b + len(SPECIALS) for b in text.encode("utf-8")]
        try:
            return [self._index[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self._index})
            shown = ", ".join(repr(c) for c in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise SeqserveError(
                f"text has {len(bad)} character(s) outside the model's vocabulary: {shown} "
                f"(the vocabulary holds the {len(self.chars)} characters seen in training)"
            ) from None

    def decode(self, ids) -> str:
        return self.stream_decoder().feed(ids, final=True)

    def stream_decoder(self, after=()) -> "StreamDecoder":
        """after: ids the stream continues (a prompt); characters and bytes need no context."""
        return StreamDecoder(self)

    def check_ids(self, ids) -> None:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise SeqserveError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": list(self.chars), "specials": list(SPECIALS)}

    @staticmethod
    def from_json(d: dict) -> "Tokenizer":
        """Any kind's to_json() back: char/byte here, the user kinds (word, vocab-char, hf) by
        user_tokenizers.from_json."""
        from seqserve.data import user_tokenizers as user

        if isinstance(d, dict) and d.get("kind") in user.KINDS:
            key = user.PAYLOAD[d["kind"]]
            if key not in d:
                raise SeqserveError(f"unknown tokenizer kind {d['kind']!r} layout: a {d['kind']} tokenizer JSON "
                                    f"holds {key!r}; got keys {sorted(d)[:8]}")
            return user.from_json(d)
        if isinstance(d, dict) and d.get("kind") not in ("char", "byte"):
            raise SeqserveError(f"unknown tokenizer kind {d.get('kind')!r}; expected one of "
                                f"{['char', 'byte', *user.KINDS]}")
        if not isinstance(d, dict) or not isinstance(d.get("chars", []), list) \
                or not all(isinstance(c, str) and len(c) == 1 for c in d.get("chars", [])):
            raise SeqserveError("tokenizer JSON must be an object with 'kind' and a list of single "
                                f"characters in 'chars'; got {str(d)[:60]}")
        if tuple(d.get("specials", SPECIALS)) != SPECIALS:
            raise SeqserveError(f"tokenizer specials {d.get('specials')} differ from {list(SPECIALS)}")
        return Tokenizer(d["kind"], tuple(d.get("chars", ())))


class StreamDecoder:
    """Turns token ids into text as they arrive; holds back incomplete UTF-8 bytes."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids, final: bool = False) -> str:
        n = len(SPECIALS)
        ids = [int(i) for i in ids if int(i) >= n]          # special tokens print nothing
        if self.tok.kind == "byte":
            return self._utf8.decode(bytes(i - n for i in ids), final=final)
        return "".join(self.tok.chars[i - n] for i in ids if i - n < len(self.tok.chars))
