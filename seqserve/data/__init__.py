"""Text in, token ids out: corpora and tokenizers."""

from seqserve.data.corpus import Corpus, load_corpus
from seqserve.data.tokenizer import BOS, EOS, PAD, SPECIALS, StreamDecoder, Tokenizer

__all__ = ["BOS", "Corpus", "EOS", "PAD", "SPECIALS", "StreamDecoder", "Tokenizer", "load_corpus"]
