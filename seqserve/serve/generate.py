"""Text generation as a served model: text and sampling parameters in, text streamed out.

The same pieces as seqserve.generation's loop — `prefill`, `decode_step`, sampling, and
`SequenceText` for stopping — driven by a scheduler instead of a for-loop, so streams that
arrive at different times share one batch (continuous, iteration-level batching):

    each iteration:  one decode step for every active stream, as ONE batched ORT call
                     (the streams' states live in one batched DecodeState)
                     → sample each row with its own parameters → send each stream its text
                     → finished or cancelled streams leave (DecodeState.select)
                     → new streams are prefilled alone (no padding enters an RNN state) and
                       join the batch (DecodeState.merge), up to seqserve.max_streams rows.

A task with once graphs (conditioned: `init` from a `features` input) runs them in the stream's
prefill, on that stream's inputs alone; the step state starts from their outputs (start_values).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.generation.cache import DecodeState
from seqserve.generation.loop import SequenceText, decode_step, prefill, start_values
from seqserve.generation.request import SAMPLING_NUMBERS
from seqserve.generation.sampling import SamplingParams, sample_rows
from seqserve.serve.models import ServedModelBase, parameter
from seqserve.serve.types import InferRequest, InferResponse, ServeError
from seqserve.serve.worker import Replies, Worker, now_ns
from seqserve.tasks.spec import SOURCE_TOKENS

SHUTDOWN_FINISH = "shutdown"      # finish_reason of streams the server ended when it stopped
LAG_EVENTS = 64                   # queued pieces past which a lagging client gets them merged

_NUMERIC = SAMPLING_NUMBERS      # seqserve/generation/request.py


@dataclass
class _Stream:
    ids: list[int]
    params: SamplingParams
    text: SequenceText
    rng: np.random.Generator
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue                 # (text, finish_reason) tuples, or a ServeError
    t0: int
    cancelled: bool = False
    started: int = 0                      # when its prefill began (queue time ends)
    first_at: int = 0
    tokens: int = 0
    pending: int = -1                     # the token sampled last, to feed at the next step
    done: bool = field(default=False)
    once_inputs: dict | None = None       # inputs of the task's once graphs (features [1, F]), or None
    shutdown: bool = False                # ended by the server's shutdown: send the rest at once
    slot: int = -1                        # its row of the slot pool (an in-place KV cache), or -1


class GenerateModel(ServedModelBase):
    kind = "generate"
    decoupled = True

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.max_streams = int(parameter(self.config, "seqserve.max_streams", "64") or 64)
        # The chain's once graphs (this version folder's `<graph>.onnx`), run per stream at prefill;
        # their inputs that no once graph computes come with the request (conditioned: features).
        from seqserve.runtime.ort import OrtBackend

        self.once = tuple(OrtBackend(self.served.info, g, self.backend.options) for g in self.served.once)
        made = {n for b in self.once for n in b.spec.output_names}
        self.conditioning = [t for b in self.once for t in b.spec.inputs if t.name not in made]
        self.bos = bool(self.once) and bool(self.info.spec.io.get("bos"))
        # encoder-decoders (translate, seq2seq): text_input is the SOURCE; the target starts at <bos>
        self.source = any(t.role == SOURCE_TOKENS for b in self.once for t in b.spec.inputs)
        # An in-place KV cache (--kv-cache static) runs on a slot pool (slot_pool.py); else the
        # streams share one DecodeState, merged on join and selected on leave.
        self.in_place = any(p.in_place for p in self.backend.spec.state)
        if self.in_place:
            from seqserve.serve.slot_pool import SlotPoolScheduler

            self.worker = SlotPoolScheduler(self)
        else:
            self.worker = _GenerationScheduler(self)
        self.worker.start()

    # -- request -> stream ---------------------------------------------------------------------

    def _params(self, req: InferRequest) -> SamplingParams:
        """Sampling parameters from input tensors (Triton style) or request parameters (either)."""
        vals = {}
        for k in (*_NUMERIC, "stop", "greedy"):
            if k in req.inputs:
                a = req.inputs[k]
                if k == "stop":
                    vals[k] = tuple(_text(x, "stop") for x in a.reshape(-1))
                else:
                    if a.size != 1:
                        raise ServeError(400, f"input '{k}' must hold one value; got shape {list(a.shape)}")
                    vals[k] = a.reshape(-1)[0].item()
            elif k in req.parameters:
                vals[k] = req.parameters[k]
        try:
            for k, cast in _NUMERIC.items():
                if k in vals and not isinstance(vals[k], bool):
                    vals[k] = cast(vals[k])
                elif k in vals:
                    raise ValueError(k)
            if "stop" in vals:
                stop = vals["stop"]
                vals["stop"] = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
            if "greedy" in vals:
                vals["greedy"] = bool(vals["greedy"])
        except (TypeError, ValueError, OverflowError):
            raise ServeError(400, f"generation parameters must be numbers (max_tokens, top_k, seed: integers; "
                                  f"temperature, top_p: floats) and stop a string or list; got {vals}") from None
        try:
            return SamplingParams(**vals)
        except SeqserveError as e:
            raise ServeError(400, str(e)) from None

    def _open(self, req: InferRequest) -> _Stream:
        self.check_inputs(req)
        text = req.inputs.get("text_input")
        prompt = _text(text.reshape(-1)[0] if text is not None and text.size else b"", "text_input")
        params = self._params(req)
        try:
            if self.source:
                from seqserve.tasks import task_module

                source = task_module(self.info.spec.task).source_inputs(self.info.spec, self.tokenizer, prompt)
            ids = ([self.tokenizer.bos_id] if self.bos else []) + ([] if self.source else self.tokenizer.encode(prompt))
        except SeqserveError as e:
            raise ServeError(400, f"text_input: {e}") from None
        if not ids:
            raise ServeError(400, "text_input is empty; give at least one character")
        once_inputs = None
        if self.source:
            once_inputs = source
        elif self.once:
            once_inputs = {}
            for t in self.conditioning:        # dtype and shape: check_inputs, against the config
                a = req.inputs[t.name]
                if not np.isfinite(a).all():
                    raise ServeError(400, f"input '{t.name}' holds NaN or infinite values; model '{self.name}' "
                                          f"expects {list(t.dims[1:])} finite {t.dtype} numbers")
                once_inputs[t.name] = np.ascontiguousarray(a.reshape(1, *a.shape), dtype=t.dtype)
        if self.max_context is not None and len(ids) + params.max_tokens - 1 > self.max_context:
            raise ServeError(400, f"text_input has {len(ids)} tokens; with max_tokens {params.max_tokens} it exceeds "
                                  f"model '{self.name}''s context of {self.max_context} positions")
        rng = np.random.default_rng(None if params.seed is None else (params.seed, 0))
        return _Stream(ids, params, SequenceText(self.tokenizer, params, ids), rng, asyncio.get_running_loop(),
                       asyncio.Queue(), now_ns(), once_inputs=once_inputs)

    def _beams(self, req: InferRequest, params: SamplingParams):
        """BeamParams when the request asks for `beams` > 1 (input tensor or parameter), else None."""
        from seqserve.generation.beam import MAX_BEAMS, BeamParams

        def field(name):            # an input tensor of one value, or a request parameter
            raw = req.inputs[name].reshape(-1) if name in req.inputs else req.parameters.get(name)
            return raw[0].item() if isinstance(raw, np.ndarray) and raw.size == 1 else raw

        beams, penalty = field("beams"), field("length_penalty")
        if beams is None:
            if penalty is not None:
                raise ServeError(400, "length_penalty applies to beam search; give beams > 1 with it")
            return None
        if self.in_place and beams != 1:
            raise ServeError(400, f"model '{self.name}' keeps its KV cache in place on a slot pool (--kv-cache "
                                  "static); beam search is not served for it: give beams 1, or serve an export "
                                  "made with --kv-cache concat")
        try:
            if isinstance(beams, bool) or int(beams) != beams:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise ServeError(400, f"beams must be one whole number in 1..{MAX_BEAMS}; got {beams!r}") from None
        try:
            extra = {} if penalty is None else {"length_penalty": float(penalty)}
            bp = BeamParams(beams=int(beams), max_tokens=params.max_tokens, stop_at_eos=params.stop_at_eos, **extra)
        except (TypeError, ValueError):
            raise ServeError(400, f"length_penalty must be a number >= 0; got {penalty!r}") from None
        except SeqserveError as e:
            raise ServeError(400, str(e)) from None
        return bp if bp.beams > 1 else None

    async def _beam_search(self, req: InferRequest, s: _Stream, bp):
        """Beam search for one request, off the event loop: the chain's once graphs, then the step
        graph's rows reordered per beam; one final response with the best hypothesis."""
        from seqserve.generation.beam import beam_search

        def search():
            start = start_values(self.once, s.once_inputs, self.backend.spec) if self.once else None
            return beam_search(self.backend, s.ids, bp, self.tokenizer.eos_id, start)[0]

        self.stats.add_pending(1)           # the drain at shutdown waits for it like a stream
        try:
            best = await asyncio.to_thread(search)
        except Exception as e:  # noqa: BLE001 - a backend failure is this request's 500
            self.stats.request_failed(now_ns() - s.t0, "BACKEND")
            raise ServeError(500, f"model '{self.name}' failed: {e}") from None
        finally:
            self.stats.add_pending(-1)
        self.stats.request_done(now_ns() - s.t0, 0)
        text = self.tokenizer.decode([t for t in best.tokens if t != self.tokenizer.eos_id])
        return self.response(req, {"text_output": np.array([text.encode()], dtype=object),
                                   "finish_reason": np.array([best.finish_reason.encode()], dtype=object)},
                             {"triton_final_response": True})

    async def stream(self, req: InferRequest):
        t0 = now_ns()
        try:
            s = self._open(req)
            beams = self._beams(req, s.params)
        except ServeError:
            self.stats.request_failed(now_ns() - t0)
            raise
        if beams is not None:
            yield await self._beam_search(req, s, beams)
            return
        self.stats.add_pending(1)
        self.worker.submit(s)
        try:
            while True:
                first = await s.events.get()
                # Merge the backlog only when the client lags far behind or the server is
                # stopping; a client that keeps up gets one piece per token as before.
                merge = s.shutdown or s.events.qsize() > LAG_EVENTS
                text, finish, error = _coalesce(first, s.events) if merge else _one(first)
                if error is not None and not text:
                    raise error
                if finish is None and not text:
                    continue        # text held back (a possible stop string): nothing to send yet
                out = {"text_output": np.array([text.encode()], dtype=object),
                       "finish_reason": np.array([(finish or "").encode()], dtype=object)}
                params = {"triton_final_response": finish is not None}
                yield self.response(req, out, params)
                if error is not None:
                    raise error
                if finish is not None:
                    return
        finally:
            self.stats.add_pending(-1)
            if not s.done:
                s.cancelled = True        # the client went away: the worker drops the row

    async def infer(self, req: InferRequest) -> InferResponse:
        pieces, finish = [], b""
        async for r in self.stream(req):
            pieces.append(r.outputs.get("text_output", np.array([b""], dtype=object))[0])
            finish = r.outputs.get("finish_reason", np.array([b""], dtype=object))[0] or finish
        out = {"text_output": np.array([b"".join(pieces)], dtype=object),
               "finish_reason": np.array([finish], dtype=object)}
        return self.response(req, out)


def _one(ev) -> tuple[str, str | None, BaseException | None]:
    return ("", None, ev) if isinstance(ev, BaseException) else (ev[0], ev[1], None)


def _coalesce(first, events: asyncio.Queue) -> tuple[str, str | None, BaseException | None]:
    """`first` and every event already queued behind it, as one piece: (text, finish, error).

    A client that reads slower than the model generates (a Python gRPC callback, a slow link)
    gets the backlog in one response instead of one per token, so the queue never grows past
    what one read clears, and a final event (finish_reason "shutdown" at the drain's end) reaches
    it with its next read instead of after thousands of stale pieces."""
    texts, finish, error, ev = [], None, None, first
    while True:
        if isinstance(ev, BaseException):
            error = ev
            break
        texts.append(ev[0])
        if ev[1] is not None:
            finish = ev[1]
            break
        if events.empty():
            break
        ev = events.get_nowait()
    return "".join(texts), finish, error


def _text(v, what: str) -> str:
    if isinstance(v, str):
        return v
    try:
        return bytes(v).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        raise ServeError(400, f"{what} must be UTF-8 text") from None


class _GenerationScheduler(Worker):
    def __init__(self, model: GenerateModel):
        super().__init__(model.name)
        self.model = model
        self.waiting: deque[_Stream] = deque()
        self.rows: list[_Stream] = []            # stream of each batch row
        self.state: DecodeState | None = None

    def busy(self) -> bool:
        return bool(self.rows) or bool(self.waiting)

    def iteration(self, new: list[_Stream]) -> None:
        m, replies = self.model, Replies()
        self.waiting.extend(new)
        t_start = now_ns()
        # 1. one decode step for every active row (all have a pending token)
        keep = [r for r, s in enumerate(self.rows) if not s.cancelled]
        self._shrink(keep)
        if self.rows:
            tokens = np.array([s.pending for s in self.rows], np.int64)
            t_in = now_ns()
            logits, self.state = decode_step(m.backend, self.state, tokens)
            t_run = now_ns()
            self._emit(self.rows, logits, replies)
            m.stats.execution(len(self.rows), t_in - t_start, t_run - t_in, now_ns() - t_run)
            self._shrink([r for r, s in enumerate(self.rows) if not s.done])
        # 2. admit waiting streams: prefill alone, sample the first token, join the batch
        joined, parts = [], []
        while self.waiting and len(self.rows) + len(joined) < m.max_streams:
            s = self.waiting.popleft()
            if s.cancelled:
                continue
            t0 = s.started = now_ns()
            try:
                start = start_values(m.once, s.once_inputs, m.backend.spec) if m.once else None
                logits, st = prefill(m.backend, s.ids, start)
            except Exception as e:
                s.done = True
                replies.add(s.loop, s.events.put_nowait, ServeError(500, f"model '{m.name}' failed: {e}"))
                m.stats.request_failed(now_ns() - s.t0, "BACKEND")
                continue
            t1 = now_ns()
            self._emit([s], logits, replies)
            m.stats.execution(1, 0, t1 - t0, now_ns() - t1)
            if not s.done:
                joined.append(s)
                parts.append(st)
        if joined:
            self.state = DecodeState.merge(([self.state] if self.rows else []) + parts, m.backend)
            self.rows += joined
        m.stats.active_sequences = len(self.rows)
        replies.flush()

    def _emit(self, streams: list[_Stream], logits: np.ndarray, replies: Replies) -> None:
        """Sample each row's next token and queue its text for the client."""
        nxt = sample_rows(logits, [s.params for s in streams], [s.rng for s in streams])
        m, now = self.model, now_ns()
        for s, tok in zip(streams, nxt):
            tok = int(tok)
            text, finish = s.text.push(tok)
            s.tokens += 1
            s.pending = tok
            if not s.first_at:
                s.first_at = now
                m.stats.first_token((now - s.t0) / 1e6)
            replies.add(s.loop, s.events.put_nowait, (text, finish))
            if finish is not None:
                s.done = True
                m.stats.tokens(s.tokens)
                m.stats.request_done(now - s.t0, s.started - s.t0)

    def _shrink(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        if keep:
            self.state = self.state.select(keep, self.model.backend)
        else:
            self.state = None
        self.rows = [self.rows[r] for r in keep]

    def fail_all(self, items: list[_Stream], error: Exception) -> None:
        self._end(items, ServeError(500, f"model '{self.model.name}' failed: {error}"))

    def end_items(self, items: list[_Stream]) -> None:
        # Shutdown: a stream ends like any other, with a final event, finish_reason "shutdown"
        # (SSE: a last `data:` line; gRPC: a response flagged triton_final_response).
        self._end(items, ("", SHUTDOWN_FINISH))

    def _end(self, items: list[_Stream], event) -> None:
        replies = Replies()
        for s in [*self.rows, *self.waiting, *items]:
            if not s.done:
                s.done = s.shutdown = True
                replies.add(s.loop, s.events.put_nowait, event)
        self.rows, self.state = [], None
        self.waiting.clear()
        self.model.stats.active_sequences = 0
        replies.flush()
