"""Text in, token ids out: corpora and tokenizers."""

from seqserve.data.corpus import Corpus, load_corpus
from seqserve.data.tokenizer import BOS, EOS, PAD, SPECIALS, StreamDecoder, Tokenizer
from seqserve.data.user_tokenizers import HFTokenizer, VocabCharTokenizer, WordTokenizer, load_tokenizer

__all__ = ["BOS", "Corpus", "EOS", "HFTokenizer", "PAD", "SPECIALS", "StreamDecoder", "Tokenizer", "VocabCharTokenizer",
           "WordTokenizer", "load_corpus", "load_tokenizer"]
