"""Served models: what a request to one model/version means, whatever protocol it came in on.

`ServedModelBase` holds what every kind shares: the Triton config, KServe metadata, input checks
against the config (names, datatypes, shapes, batch limit, token ids in the vocabulary) and the
statistics. The kinds differ only in how work is scheduled on their worker thread:
- FullModel (here): stateless full-sequence graph, dynamic batching of same-shape requests;
- StepModel (sequences.py): stateful sequences, server-held state, continuous batching;
- GenerateModel (generate.py): text in, streamed text out, continuous batching of streams;
- StatelessStepModel (here): the step graph with client-held state (NAME_step_state): a FullModel
  whose inputs include every past_* and whose outputs include every present_*.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from seqserve.dtypes import KSERVE_OF_TRITON
from seqserve.runtime import RuntimeOptions, ort_backend
from seqserve.serve.stats import ModelStats
from seqserve.serve.types import InferRequest, InferResponse, ServeError
from seqserve.serve.worker import Replies, Worker, now_ns
from seqserve.tasks.spec import CLASS_LOGITS, LOGITS, TAG_LOGITS, TOKENS

# What a request still queued when the drain time runs out is told (HTTP 503, gRPC UNAVAILABLE).
SHUTDOWN_MESSAGE = "the server shut down before this request ran; send it again to another replica"

INLINE_TOKENS = 8     # requests up to this many tokens may run inline on the loop (worker.py)

# Triton config data_type name -> KServe datatype: seqserve/dtypes.py
TRITON_TO_KSERVE = KSERVE_OF_TRITON


@dataclass(frozen=True)
class TensorRule:
    """What the config allows for one input: KServe datatype and full shape (-1 = any size)."""
    name: str
    datatype: str
    shape: tuple[int, ...]      # including the batch axis (-1) when max_batch_size > 0
    optional: bool


def config_json(config) -> dict:
    """Triton's model-config JSON: protobuf field names, every field shown, int64 as numbers
    (protobuf's JSON mapping writes 64-bit ints as strings; Triton converts them back)."""
    from google.protobuf import json_format

    d = json_format.MessageToDict(config, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)
    return _ints(d, config.DESCRIPTOR)


def _ints(d, descriptor):
    from google.protobuf.descriptor import FieldDescriptor as F

    wide = {F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64}
    for f in descriptor.fields:
        if f.name not in d:
            continue
        v = d[f.name]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            vf = f.message_type.fields_by_name["value"]
            if vf.message_type is not None:
                d[f.name] = {k: _ints(x, vf.message_type) for k, x in v.items()}
        elif f.message_type is not None:
            d[f.name] = [_ints(x, f.message_type) for x in v] if isinstance(v, list) else _ints(v, f.message_type)
        elif f.type in wide:
            d[f.name] = [int(x) for x in v] if isinstance(v, list) else int(v)
    return d


def parameter(config, key: str, default: str = "") -> str:
    p = config.parameters.get(key)
    return p.string_value if p is not None else default


class ServedModelBase:
    kind = ""
    decoupled = False

    def __init__(self, name: str, version: str, config, served, options: RuntimeOptions):
        from tritonclient.grpc import model_config_pb2 as mc

        self.name, self.version, self.config = name, version, config
        self.served = served                        # seqserve.package.ServedVersion
        self.info = served.info
        self.tokenizer = served.info.tokenizer
        self.vocab = self.tokenizer.vocab_size
        self.max_context = served.info.max_context
        self.stats = ModelStats(name, version)
        self.max_batch = config.max_batch_size
        batch = (-1,) if self.max_batch > 0 else ()
        self.rules = {i.name: TensorRule(i.name, TRITON_TO_KSERVE[mc.DataType.Name(i.data_type)],
                                         batch + tuple(int(d) for d in i.dims), i.optional)
                      for i in config.input}
        self.output_rules = {o.name: TensorRule(o.name, TRITON_TO_KSERVE[mc.DataType.Name(o.data_type)],
                                                batch + tuple(int(d) for d in o.dims), False)
                             for o in config.output}
        self.labels = _labels(config, served.info.path.parent)     # output -> class names (label_filename)
        # OrtBackend; StaticOrtBackend for an in-place KV cache (--kv-cache static: GenerateModel's slot pool)
        self.backend = ort_backend(served.info, served.graph, options)
        graph = self.backend.spec                   # the graph this model runs; tensors by role
        # the scores the graph returns: next-token logits, or class / tag logits (classify, tag)
        self.tokens_name = graph.name_of(TOKENS)
        self.logits_name = graph.roles[LOGITS] or graph.roles[CLASS_LOGITS] or graph.name_of(TAG_LOGITS)
        self.worker: Worker | None = None
        self.all_versions = [version]               # the repository sets every ready version

    # -- description -------------------------------------------------------------------------------

    def metadata(self) -> dict:
        def t(r: TensorRule):
            return {"name": r.name, "datatype": r.datatype, "shape": list(r.shape)}

        return {"name": self.name, "versions": self.all_versions,
                "platform": self.config.platform or self.config.backend,
                "inputs": [t(r) for r in self.rules.values()], "outputs": [t(r) for r in self.output_rules.values()]}

    def config_json(self) -> dict:
        return config_json(self.config)

    # -- request checks ------------------------------------------------------------------------------

    def check_inputs(self, req: InferRequest) -> None:
        """Names, datatypes, shapes and the batch limit, against the config. Raises ServeError 400."""
        for name in req.inputs:
            if name not in self.rules:
                raise ServeError(400, f"model '{self.name}' has no input '{name}'; its inputs are "
                                      f"{self._describe(self.rules.values())}")
        for r in self.rules.values():
            a = req.inputs.get(r.name)
            if a is None:
                if not r.optional:
                    raise ServeError(400, f"missing input '{r.name}' ({r.datatype}, shape {list(r.shape)}) "
                                          f"for model '{self.name}'")
                continue
            got = _datatype(a)
            if got != r.datatype:
                raise ServeError(400, f"input '{r.name}' has datatype {got}; model '{self.name}' expects {r.datatype}")
            if len(a.shape) != len(r.shape) or any(w != -1 and g != w for g, w in zip(a.shape, r.shape)):
                raise ServeError(400, f"input '{r.name}' has shape {list(a.shape)}; model '{self.name}' expects "
                                      f"{list(r.shape)} (-1 = any size)")
            if self.max_batch > 0 and a.shape[0] > self.max_batch:
                raise ServeError(400, f"input '{r.name}' has batch size {a.shape[0]}; model '{self.name}' "
                                      f"accepts at most max_batch_size {self.max_batch}")
            if 0 in a.shape and r.datatype != "BYTES":
                raise ServeError(400, f"input '{r.name}' has shape {list(a.shape)}: an empty tensor; send at "
                                      "least one element on every axis")
        if req.outputs:
            for o in req.outputs:
                if o.name not in self.output_rules:
                    raise ServeError(400, f"model '{self.name}' has no output '{o.name}'; its outputs are "
                                          f"{self._describe(self.output_rules.values())}")
                if o.classification is not None:
                    self._check_classification(o)

    def _check_classification(self, o) -> None:
        shape = self.output_rules[o.name].shape
        numeric = self.output_rules[o.name].datatype != "BYTES"
        classes = shape[-1] if numeric and len(shape) == 1 + (self.max_batch > 0) else -1
        if classes < 1:
            raise ServeError(400, f"output '{o.name}' of model '{self.name}' has shape {list(shape)}; the "
                                  "classification extension needs one numeric axis of classes after the batch axis")
        if o.classification > classes:
            raise ServeError(400, f"classification {o.classification} asks for more classes than output "
                                  f"'{o.name}' of model '{self.name}' has ({classes})")

    def check_token_ids(self, ids: np.ndarray, name: str | None = None) -> None:
        name = name or self.tokens_name
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
            bad = ids[(ids < 0) | (ids >= self.vocab)]
            raise ServeError(400, f"{name} holds token id {int(bad.flat[0])}, outside model '{self.name}''s "
                                  f"vocabulary of {self.vocab} tokens (ids 0-{self.vocab - 1})")

    @staticmethod
    def _describe(rules) -> str:
        return ", ".join(f"{r.name} ({r.datatype}, {list(r.shape)})" for r in rules) or "none"

    def response(self, req: InferRequest, outputs: dict, parameters: dict | None = None) -> InferResponse:
        if req.outputs:
            outputs = {o.name: outputs[o.name] if o.classification is None else
                       top_classes(outputs[o.name], o.classification, self.labels.get(o.name))
                       for o in req.outputs}
        return InferResponse(self.name, self.version, req.id, outputs, parameters or {})

    # -- lifecycle -------------------------------------------------------------------------------------

    async def stream(self, req: InferRequest):
        yield await self.infer(req)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def _labels(config, model_dir) -> dict[str, list[str]]:
    """output name -> its class names, from the label_filename file in the model folder (one per line)"""
    from pathlib import Path

    out = {}
    for o in config.output:
        if o.label_filename:
            try:
                out[o.name] = (Path(model_dir) / o.label_filename).read_text("utf-8").splitlines()
            except OSError as e:
                raise ServeError(500, f"model '{config.name}': cannot read label file {o.label_filename}: "
                                      f"{e.strerror}") from None
    return out


def top_classes(scores: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: [..., C] scores -> [..., k] BYTES "score:index[:label]",
    highest first (ties: lower index first, as a stable sort)."""
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    out = np.empty(order.shape, dtype=object)
    for pos in np.ndindex(order.shape):
        i = int(order[pos])
        text = f"{float(scores[(*pos[:-1], i)]):f}:{i}" + (f":{labels[i]}" if labels and i < len(labels) else "")
        out[pos] = text.encode()
    return out


def _datatype(a: np.ndarray) -> str:
    from seqserve.serve.types import datatype_of

    try:
        return datatype_of(a)
    except KeyError:
        return str(a.dtype)


# ------------------------------------------------------------------------------------------------
# Stateless full-sequence model with dynamic batching
# ------------------------------------------------------------------------------------------------

@dataclass
class _Job:
    inputs: dict
    rows: int
    key: tuple          # requests with the same key can be stacked on the batch axis
    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future
    t0: int


class FullModel(ServedModelBase):
    kind = "full"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.worker = _DynamicBatcher(self)
        self.worker.start()

    async def infer(self, req: InferRequest) -> InferResponse:
        t0 = now_ns()
        try:
            self.check_inputs(req)
            ids = req.inputs[self.tokens_name]
            self.check_token_ids(ids)
            if self.max_context is not None and ids.shape[1] > self.max_context:
                raise ServeError(400, f"{self.tokens_name} has {ids.shape[1]} tokens; model '{self.name}' has a "
                                      f"context of {self.max_context} positions")
            extra = {n: req.inputs[n] for n in self.backend.spec.input_names if n != self.tokens_name}
            for n, a in extra.items():          # conditioned: features [B, F], one row per sequence
                if a.shape[0] != ids.shape[0] or not np.isfinite(a).all():
                    raise ServeError(400, f"input '{n}' must hold {ids.shape[0]} rows (one per {self.tokens_name} "
                                          f"row) of finite numbers; got shape {list(a.shape)}"
                                          + ("" if np.isfinite(a).all() else " with NaN or infinite values"))
        except ServeError:
            self.stats.request_failed(now_ns() - t0)
            raise
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        feeds = {self.tokens_name: ids.astype(np.int64, copy=False), **extra}
        key = tuple((k, v.shape[1:]) for k, v in feeds.items())
        self.stats.add_pending(1)
        try:
            job = _Job(feeds, ids.shape[0], key, loop, fut, t0)
            await self.worker.dispatch(job, req.inline_ok and ids.size <= INLINE_TOKENS, lambda: self.stats.pending)
            outputs = await fut
        finally:
            self.stats.add_pending(-1)
        return self.response(req, outputs)


class _DynamicBatcher(Worker):
    """Stacks queued requests of the same shape (up to max_batch_size rows) into one ORT run, as
    Triton's dynamic batcher does with max_queue_delay 0: whatever is waiting goes together."""

    def __init__(self, model: FullModel):
        super().__init__(model.name)
        self.model = model

    def iteration(self, jobs: list[_Job]) -> None:
        groups: dict[tuple, list[list[_Job]]] = {}
        for j in jobs:
            batches = groups.setdefault(j.key, [[]])
            if sum(x.rows for x in batches[-1]) + j.rows > max(self.model.max_batch, 1):
                batches.append([])
            batches[-1].append(j)
        for batches in groups.values():
            for batch in batches:
                self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        m, replies = self.model, Replies()
        t_start = now_ns()
        feeds = batch[0].inputs if len(batch) == 1 else {
            k: np.concatenate([j.inputs[k] for j in batch]) for k in batch[0].inputs}
        t_in = now_ns()
        out = m.backend.run(feeds)
        t_run = now_ns()
        start = 0
        for j in batch:
            replies.resolve(j.loop, j.fut, {k: v[start:start + j.rows] for k, v in out.items()})
            start += j.rows
        t_out = now_ns()
        rows = sum(j.rows for j in batch)
        m.stats.execution(rows, t_in - t_start, t_run - t_in, t_out - t_run)
        for j in batch:
            m.stats.request_done(t_out - j.t0, t_start - j.t0, t_in - t_start, t_run - t_in, t_out - t_run)
        replies.flush()

    def fail_all(self, jobs: list[_Job], error: Exception) -> None:
        self._answer(jobs, ServeError(500, f"model '{self.model.name}' failed: {error}"), "BACKEND")

    def end_items(self, jobs: list[_Job]) -> None:
        self._answer(jobs, ServeError(503, SHUTDOWN_MESSAGE), "OTHER")

    def _answer(self, jobs: list[_Job], error: ServeError, reason: str) -> None:
        replies = Replies()
        for j in jobs:
            replies.resolve(j.loop, j.fut, error)
            self.model.stats.request_failed(now_ns() - j.t0, reason)
        replies.flush()


class StatelessStepModel(FullModel):
    """NAME_step_state (`seqserve package --stateless-step`): one step of a recurrent step graph
    with the state sent by the client (past_hidden/past_cell [B, layers, hidden]) and returned
    (present_*). Nothing is kept between requests, so any replica serves any step. Scheduled as
    FullModel: queued requests whose tensors have equal shapes after the batch axis (the same
    number of new tokens) are stacked into one ONNX Runtime call; each state input must hold one
    finite row per token-id row and the config's dims (a 400 names them otherwise)."""

    kind = "step_state"
