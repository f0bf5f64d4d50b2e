"""Translation pairs: numbers written in digits -> the same numbers written in words.

    source  "1999"
    target  "one thousand, nine hundred and ninety-nine"   (num2words, lang="en"; "fr", "de", ...)

num2words is a rule-based library from the package registry (pure Python, no data files), so the
pairs are real text produced on the machine and nothing is downloaded at run time. The task needs
what translation needs: the target is longer than the source and its words depend on source
positions far apart ("nine hundred" comes from the second digit, "and" from the last two), so an
encoder-decoder must attend across the source. Every fifth number is held out (i % 5 == 0), so
the split is the same on every machine and the examples an export carries were never trained on.

Shared by every encoder-decoder family (task `translate`: transformer, seq2seq).
"""

from __future__ import annotations

from dataclasses import dataclass

from seqserve.errors import SeqserveError

HOLD_OUT_EVERY = 5      # number i is held out when i % 5 == 0
DEFAULT_LIMIT = 10_000  # numbers 0 .. limit-1


@dataclass(frozen=True)
class Pairs:
    sources: tuple[str, ...]   # source texts ("1999")
    targets: tuple[str, ...]   # target texts, one per source

    def __len__(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class Translation:
    train: Pairs
    val: Pairs
    source: str                # where the pairs come from (recorded in the checkpoint)

    @property
    def text(self) -> str:
        """Every character of both sides (a char tokenizer's vocabulary)."""
        return "".join(self.train.sources + self.train.targets + self.val.sources + self.val.targets)


def load_number_pairs(lang: str = "en", limit: int = DEFAULT_LIMIT) -> Translation:
    """The numbers 0 .. limit-1 as (digits, words in `lang`) pairs, split train / held out."""
    try:
        from num2words import num2words
    except ImportError:
        raise SeqserveError("translation pairs need the num2words package: pip install num2words") from None
    try:
        words = [num2words(i, lang=lang) for i in range(limit)]
    except NotImplementedError:
        raise SeqserveError(f"num2words has no language {lang!r}") from None
    rows = [(str(i), w) for i, w in enumerate(words)]
    train = [r for i, r in enumerate(rows) if i % HOLD_OUT_EVERY]
    val = [r for i, r in enumerate(rows) if not i % HOLD_OUT_EVERY]

    def pairs(rs) -> Pairs:
        return Pairs(tuple(s for s, _ in rs), tuple(t for _, t in rs))

    return Translation(pairs(train), pairs(val), f"num2words {lang} 0..{limit - 1}")
