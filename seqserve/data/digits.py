"""scikit-learn's bundled 8x8 digit images as feature vectors, each with the text it should produce.

    features  float32 [N, 64]: the 8x8 grey levels (0-16 in the file) scaled to 0-1, row by row
    text      the digit's name in words ("zero" ... "nine")

The images ship inside the scikit-learn wheel (`sklearn.datasets.load_digits` reads a file in the
package), so nothing is downloaded. Every fifth image is held out, so the split is the same on
every machine and the held-out examples an export carries were never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqserve.errors import SeqserveError

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WIDTH = 64          # features per image: 8 x 8 pixels
HOLD_OUT_EVERY = 5  # image i is held out when i % 5 == 0


@dataclass(frozen=True)
class Captions:
    features: np.ndarray     # float32 [N, F]
    texts: tuple[str, ...]   # N target texts

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class DigitCaptions:
    train: Captions
    val: Captions
    source: str              # where the data came from, for the training record


def load_digit_captions() -> DigitCaptions:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SeqserveError("the conditioned family trains on scikit-learn's digits; install scikit-learn") from None
    import sklearn

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)                      # (N, 64) in 0..1
    texts = np.array([NAMES[int(t)] for t in d.target])
    held = np.arange(len(x)) % HOLD_OUT_EVERY == 0
    return DigitCaptions(Captions(x[~held], tuple(texts[~held])), Captions(x[held], tuple(texts[held])),
                         f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})")
