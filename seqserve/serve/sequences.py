"""Stateful sequences, as Triton's sequence batcher: the server keeps each sequence's state.

A request carries `sequence_id` (int or string), `sequence_start`, `sequence_end` and
`input_ids [1, S]`; the response is `logits [1, S, V]`. The state between requests (RNN h/c
`[1, layers, hidden]`, or the KV cache `[1, heads, past, head_dim]` with its mask and position)
lives in a batch-1 `DecodeState` per sequence.

Continuous batching: each worker iteration takes the next request of every sequence that has one
(never two of the same sequence: their order matters), groups them by S, stacks their states with
`DecodeState.merge` and runs ONE ORT call per group. Sequences join and leave between iterations.
Limits come from the config: `oldest.max_candidate_sequences` (active sequences) and
`max_sequence_idle_microseconds` (idle ones are evicted and their memory freed).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from seqserve.generation.cache import DecodeState
from seqserve.serve.models import INLINE_TOKENS, SHUTDOWN_MESSAGE, ServedModelBase
from seqserve.serve.types import InferRequest, InferResponse, ServeError
from seqserve.serve.worker import Replies, Worker, now_ns


@dataclass
class _Step:
    seq: "_Sequence"
    ids: np.ndarray          # (1, S) int64
    end: bool
    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future
    t0: int


@dataclass
class _Sequence:
    id: int | str
    state: DecodeState | None = None        # None until the first step has run
    tokens: int = 0                         # tokens submitted so far (checked against the context)
    last_used: float = field(default_factory=time.monotonic)
    queue: deque = field(default_factory=deque)   # its requests not yet run, in order
    ended: bool = False


class SequenceTable:
    """Active sequences by id, with the config's limits. Used from the event loop (start/lookup at
    submission, so errors come back before anything is queued) and from the worker (eviction)."""

    def __init__(self, model_name: str, max_sequences: int, idle_seconds: float):
        self.model_name, self.max, self.idle = model_name, max_sequences, idle_seconds
        self.active: dict = {}
        self.expired: OrderedDict = OrderedDict()    # recently evicted ids, for a clearer error
        self.lock = threading.Lock()

    def start(self, sid) -> _Sequence:
        with self.lock:
            old = self.active.get(sid)
            if old is not None and old.queue:
                raise ServeError(400, f"sequence {sid!r} of model '{self.model_name}' was started again while "
                                      "its earlier requests are still running; wait for their responses first")
            if old is None and len(self.active) >= self.max:
                raise ServeError(429, f"model '{self.model_name}' already holds {self.max} active sequences "
                                      "(oldest.max_candidate_sequences in its config.pbtxt); end one with "
                                      f"sequence_end=true or wait for idle ones to expire after {self.idle:g} s")
            seq = _Sequence(sid)          # START on an active id restarts it, as in Triton
            self.active[sid] = seq
            self.expired.pop(sid, None)
            return seq

    def lookup(self, sid) -> _Sequence:
        with self.lock:
            seq = self.active.get(sid)
            if seq is not None:
                seq.last_used = time.monotonic()
                return seq
            if sid in self.expired:
                raise ServeError(404, f"sequence {sid!r} of model '{self.model_name}' expired after {self.idle:g} s "
                                      "without requests and its state was freed; start it again with "
                                      "sequence_start=true")
            raise ServeError(400, f"sequence {sid!r} is not active in model '{self.model_name}'; its first "
                                  "request needs sequence_start=true")

    def remove(self, seq: _Sequence) -> None:
        with self.lock:
            if self.active.get(seq.id) is seq:
                del self.active[seq.id]
            seq.state = None

    def evict_idle(self) -> int:
        now, n = time.monotonic(), 0
        with self.lock:
            for sid, seq in list(self.active.items()):
                if not seq.queue and now - seq.last_used > self.idle:
                    del self.active[sid]
                    seq.state = None
                    self.expired[sid] = now
                    n += 1
            while len(self.expired) > 10_000:
                self.expired.popitem(last=False)
        return n

    def __len__(self) -> int:
        return len(self.active)


class StepModel(ServedModelBase):
    kind = "step"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        sb = self.config.sequence_batching
        max_seq = sb.oldest.max_candidate_sequences if sb.HasField("oldest") else 0
        max_seq = max_seq or (self.max_batch or 1)        # Triton's direct strategy: one slot per batch row
        idle = (sb.max_sequence_idle_microseconds or 1_000_000) / 1e6   # Triton's default is 1 s
        self.table = SequenceTable(self.name, max_seq, idle)
        self.worker = _SequenceScheduler(self)
        self.worker.start()

    async def infer(self, req: InferRequest) -> InferResponse:
        t0 = now_ns()
        try:
            step = self._admit(req, t0)
        except ServeError:
            self.stats.request_failed(now_ns() - t0)
            raise
        self.stats.add_pending(1)
        try:
            await self.worker.dispatch(step, req.inline_ok and step.ids.shape[1] <= INLINE_TOKENS, lambda: self.stats.pending)
            logits = await step.fut
        finally:
            self.stats.add_pending(-1)
        return self.response(req, {self.logits_name: logits}, {"sequence_id": step.seq.id})

    def _admit(self, req: InferRequest, t0: int) -> _Step:
        self.check_inputs(req)
        p = req.parameters
        sid = p.get("sequence_id", 0)
        if sid in (0, "", None):
            raise ServeError(400, f"model '{self.name}' is stateful: send a non-zero sequence_id, with "
                                  "sequence_start=true on a sequence's first request and sequence_end=true on its last")
        ids = req.inputs[self.tokens_name]
        if ids.shape[0] != 1:
            raise ServeError(400, f"{self.tokens_name} has batch size {ids.shape[0]}; a sequence request carries one row "
                                  "(shape [1, S]): send other sequences under their own sequence_id")
        self.check_token_ids(ids)
        seq = self.table.start(sid) if p.get("sequence_start") else self.table.lookup(sid)
        if seq.ended:
            raise ServeError(400, f"sequence {sid!r} already ended (sequence_end=true)")
        if self.max_context is not None and seq.tokens + ids.shape[1] > self.max_context:
            raise ServeError(400, f"sequence {sid!r} would reach {seq.tokens + ids.shape[1]} tokens; model "
                                  f"'{self.name}' has a context of {self.max_context} positions")
        seq.tokens += ids.shape[1]
        end = bool(p.get("sequence_end"))
        seq.ended = end
        loop = asyncio.get_running_loop()
        step = _Step(seq, ids.astype(np.int64, copy=False), end, loop, loop.create_future(), t0)
        seq.queue.append(step)       # order within the sequence; the worker pops from the left
        return step


class _SequenceScheduler(Worker):
    def __init__(self, model: StepModel):
        super().__init__(model.name)
        self.model = model
        self.waiting: deque[_Sequence] = deque()    # sequences with queued steps, in arrival order
        self._next_evict = time.monotonic()

    def busy(self) -> bool:
        return bool(self.waiting)

    def wait_timeout(self) -> float:
        return min(1.0, self.model.table.idle / 4)

    def on_idle_tick(self) -> None:
        if time.monotonic() >= self._next_evict:
            self.model.table.evict_idle()
            self.model.stats.active_sequences = len(self.model.table)
            self._next_evict = time.monotonic() + self.wait_timeout()

    def iteration(self, new: list[_Step]) -> None:
        m = self.model
        # A sequence's own queue is the truth; a submitted step is only a wake-up. Its step may
        # already have run: the loop appends to seq.queue before it submits, so an iteration that
        # found the sequence waiting can run the step first (then the step is a no-op here).
        for st in new:
            if st.seq.queue and st.seq not in self.waiting:   # (short: at most the active sequences)
                self.waiting.append(st.seq)
        # One step per sequence per iteration, up to max_batch_size rows per ORT call.
        ready, later = [], deque()
        while self.waiting:
            seq = self.waiting.popleft()
            if seq.queue:
                (ready if len(ready) < max(m.max_batch, 1) else later).append(seq)
        groups: dict[int, list[_Step]] = {}
        for seq in ready:
            st = seq.queue[0]
            groups.setdefault(st.ids.shape[1], []).append(st)
        replies = Replies()
        for steps in groups.values():
            self._run(steps, replies)
        replies.flush()
        for seq in ready:
            if seq.queue:
                later.append(seq)
        self.waiting = later
        self.on_idle_tick()

    def _run(self, steps: list[_Step], replies: Replies) -> None:
        m = self.model
        t_start = now_ns()
        parts = [st.seq.state or DecodeState.empty(m.backend.spec, 1, m.backend) for st in steps]
        state = DecodeState.merge(parts, m.backend)
        feeds = state.feeds(steps[0].ids if len(steps) == 1 else np.concatenate([st.ids for st in steps]))
        t_in = now_ns()
        try:
            out = m.backend.run(feeds)
        except Exception as e:
            for st in steps:
                st.seq.queue.popleft()
                m.table.remove(st.seq)
                replies.resolve(st.loop, st.fut, ServeError(500, f"model '{m.name}' failed on sequence "
                                                                 f"{st.seq.id!r}: {e}; the sequence was ended"))
                m.stats.request_failed(now_ns() - st.t0, "BACKEND")
            return
        t_run = now_ns()
        new = state.advance(feeds, out)
        logits = out[m.logits_name]
        for r, st in enumerate(steps):
            seq = st.seq
            seq.queue.popleft()
            seq.last_used = time.monotonic()
            if st.end:
                m.table.remove(seq)             # frees its state now
            else:
                seq.state = new if len(steps) == 1 else new.row(r, m.backend)
            replies.resolve(st.loop, st.fut, logits[r:r + 1])
        t_out = now_ns()
        m.stats.execution(len(steps), t_in - t_start, t_run - t_in, t_out - t_run)
        for st in steps:
            m.stats.request_done(t_out - st.t0, t_start - st.t0, t_in - t_start, t_run - t_in, t_out - t_run)
        m.stats.active_sequences = len(m.table)

    def fail_all(self, items: list[_Step], error: Exception) -> None:
        self._answer(items, ServeError(500, f"model '{self.model.name}' failed: {error}"))

    def end_items(self, items: list[_Step]) -> None:
        self._answer(items, ServeError(503, SHUTDOWN_MESSAGE + "; its sequence was ended"))

    def _answer(self, items: list[_Step], error: ServeError) -> None:
        """Every queued step (waiting sequences and just-submitted ones) gets `error`; their
        sequences end."""
        replies = Replies()
        seqs = list(dict.fromkeys([*self.waiting, *(st.seq for st in items)]))
        for seq in seqs:
            while seq.queue:
                st = seq.queue.popleft()
                replies.resolve(st.loop, st.fut, error)
            self.model.table.remove(seq)
        self.waiting.clear()
        replies.flush()
