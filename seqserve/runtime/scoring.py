"""Text in, labels out: the head of the classify and tag tasks over one backend (ORT or torch).

    classify_texts  -> per text: (label, probability) pairs, most likely first
    tag_texts       -> per text: (piece of text, tag) runs, consecutive characters of one tag merged

Texts run one at a time (no padding enters a graph; the tasks have no mask).
"""

from __future__ import annotations

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.spec import CLASS_LOGITS, TAG_LOGITS, TOKENS


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _scores(backend, tokenizer, text: str, max_context: int | None) -> np.ndarray:
    if not text:
        raise SeqserveError("the text is empty; give at least one character")
    ids = tokenizer.encode(text)
    if max_context is not None and len(ids) > max_context:
        raise SeqserveError(f"the text has {len(ids)} tokens; the model reads at most {max_context}")
    g = backend.spec
    out = backend.run({g.name_of(TOKENS): np.array([ids], np.int64)})
    return np.asarray(out[g.roles[CLASS_LOGITS] or g.name_of(TAG_LOGITS)])[0]


def classify_texts(backend, tokenizer, labels: list[str], texts: list[str], top: int,
                   max_context: int | None = None) -> list[list[tuple[str, float]]]:
    if not 1 <= top <= len(labels):
        raise SeqserveError(f"--top must be 1-{len(labels)} (the model has {len(labels)} labels), got {top}")
    out = []
    for text in texts:
        p = softmax(_scores(backend, tokenizer, text, max_context))
        order = np.argsort(-p, kind="stable")[:top]
        out.append([(labels[i], float(p[i])) for i in order])
    return out


def tag_texts(backend, tokenizer, labels: list[str], texts: list[str],
              max_context: int | None = None) -> list[list[tuple[str, str]]]:
    if tokenizer.kind != "char":
        raise SeqserveError("tagging prints one tag per character; this model's tokenizer is byte-level")
    out = []
    for text in texts:
        tags = _scores(backend, tokenizer, text, max_context).argmax(-1)
        runs: list[tuple[str, str]] = []
        for ch, t in zip(text, tags):
            if runs and runs[-1][1] == labels[t]:
                runs[-1] = (runs[-1][0] + ch, labels[t])
            else:
                runs.append((ch, labels[t]))
        out.append(runs)
    return out


def classify_remote(url: str, model: str, text: str, class_count: int | None = None,
                    api_key: str | None = None, timeout: float = 30.0) -> list[tuple[str, float]]:
    """POST the text to a server's NAME_classify model through Triton's generate extension
    (seqserve serve or tritonserver) -> (label, probability) pairs as the server returns them."""
    import json
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise SeqserveError(f"--url must be http://HOST:PORT (the generate extension is HTTP), got {url!r}")
    body = {"text_input": text, **({"class_count": class_count} if class_count else {})}
    req = urllib.request.Request(f"{url.rstrip('/')}/v2/models/{model}/generate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json",
                                  **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise SeqserveError(f"{url} answered {e.code} for model {model!r}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise SeqserveError(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None
    labels, probs = doc.get("labels"), doc.get("probabilities")
    labels, probs = ([labels], [probs]) if isinstance(labels, str) else (labels, probs)
    if not isinstance(labels, list) or not isinstance(probs, list):
        raise SeqserveError(f"model {model!r} on {url} did not answer labels and probabilities; is it a NAME_classify "
                            "model (seqserve package of a classifier or tagger)?")
    return list(zip(labels, map(float, probs)))
