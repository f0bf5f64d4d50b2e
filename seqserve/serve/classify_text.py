"""NAME_classify: text in, label names and probabilities out (classify and tag tasks).

The model curl users talk to through Triton's generate extension, on `seqserve serve` and, as a
python-backend model, on tritonserver:

    POST /v2/models/NAME_classify/generate {"text_input": "import asyncio", "class_count": 3}
    -> {"labels": ["asyncio", ...], "probabilities": [0.81, ...]}         classify: top class_count
    -> {"labels": ["keyword", ...], "probabilities": [0.99, ...]}         tag: one per character

It runs the export's full graph on the tokenized text (one row; no padding, no batching across
requests: a text request is small and its length is its own). Out-of-vocabulary text, an empty
text, too many tokens or a class_count outside 1..classes is a 400 naming what was expected.
"""

from __future__ import annotations

import asyncio

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.runtime.scoring import softmax
from seqserve.serve.models import ServedModelBase
from seqserve.serve.types import InferRequest, InferResponse, ServeError
from seqserve.serve.worker import now_ns
from seqserve.tasks.spec import TAG_LOGITS


class ClassifyTextModel(ServedModelBase):
    kind = "classify"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.labels = self.info.spec.io.get("labels") or []
        self.tag = self.backend.spec.roles[TAG_LOGITS] is not None

    def _parse(self, req: InferRequest) -> tuple[np.ndarray, int]:
        self.check_inputs(req)
        raw = np.asarray(req.inputs["text_input"]).reshape(-1)[0]
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if not text:
            raise ServeError(400, f"text_input is empty; model '{self.name}' classifies at least one character")
        try:
            ids = self.tokenizer.encode(text)
        except SeqserveError as e:
            raise ServeError(400, f"text_input: {e}") from None
        if self.max_context is not None and len(ids) > self.max_context:
            raise ServeError(400, f"text_input has {len(ids)} tokens; model '{self.name}' reads at most "
                                  f"{self.max_context}")
        k = len(self.labels)
        if "class_count" in req.inputs:
            k = int(np.asarray(req.inputs["class_count"]).reshape(-1)[0])
            if self.tag:
                raise ServeError(400, f"class_count applies to a classifier; model '{self.name}' tags every "
                                      "character (it returns one label per character)")
            if not 1 <= k <= len(self.labels):
                raise ServeError(400, f"class_count {k} is outside 1-{len(self.labels)}: model '{self.name}' "
                                      f"has {len(self.labels)} classes")
        return np.array([ids], np.int64), k

    async def infer(self, req: InferRequest) -> InferResponse:
        t0 = now_ns()
        try:
            ids, k = self._parse(req)
        except ServeError:
            self.stats.request_failed(now_ns() - t0)
            raise
        t_in = now_ns()
        out = await asyncio.to_thread(self.backend.run, {self.tokens_name: ids})
        t_run = now_ns()
        p = softmax(np.asarray(out[self.logits_name], np.float32)[0])
        if self.tag:             # [S, T]: the most likely tag of each character
            best = p.argmax(-1)
            names, probs = [self.labels[i] for i in best], p[np.arange(len(best)), best]
        else:                    # [C]: the k most likely classes
            order = np.argsort(-p, kind="stable")[:k]
            names, probs = [self.labels[i] for i in order], p[order]
        labels = np.empty(len(names), dtype=object)
        labels[:] = [n.encode() for n in names]
        t_out = now_ns()
        self.stats.execution(1, t_in - t0, t_run - t_in, t_out - t_run)
        self.stats.request_done(t_out - t0, 0, t_in - t0, t_run - t_in, t_out - t_run)
        return self.response(req, {"labels": labels, "probabilities": probs.astype(np.float32)})
