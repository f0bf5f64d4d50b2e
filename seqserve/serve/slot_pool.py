"""Continuous batching on a slot pool: the generation scheduler for an in-place KV cache.

An export made with `seqserve export --kv-cache static[:N]` has a step graph whose KV cache is a
static buffer `[B, H, N, hd]` per layer, updated in place (export/static_cache.py, run by
runtime/static_ort.py with one buffer bound as past and present). Here the server allocates ONE
such buffer per state input with B = seqserve.max_streams rows (slots):

    join       a stream takes the lowest free slot; nothing else moves (no merge, no padding)
    prefill    its prompt is fed in chunks, into its slot's row (a view: in place), at most
               seqserve.prefill_chunk tokens per scheduler iteration over all joining streams,
               so the running streams keep getting a token every iteration (chunked prefill)
    decode     one batched call for every decoding stream, over the view `buffer[:hi]` of the
               slots up to the highest decoding one (basic slicing of a C-contiguous buffer: no
               copy); each row's own position (its length) is fed, so rows of different lengths
               share the call without padding; rows in the view that are not decoding (free,
               or still prefilling) are fed their current length and their output is ignored
               (what they write at that position is overwritten before anything reads it)
    leave      the slot is marked free (its length 0); nothing is copied or zeroed

Lowest-free-slot allocation keeps the decoding slots packed at the front, so the view is about
as wide as the number of decoding streams (seqserve.slot_rows "all": always every slot).
"""

from __future__ import annotations

import heapq

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.serve.generate import _GenerationScheduler, _Stream
from seqserve.serve.models import parameter
from seqserve.serve.types import ServeError
from seqserve.serve.worker import Replies, now_ns
from seqserve.tasks.spec import LOGITS, PAST, POSITIONS, TOKENS, resolve_dims

PREFILL_CHUNK = 16        # prompt tokens fed per scheduler iteration while other streams decode


class SlotPool:
    """One `[slots, H, N, hd]` buffer per in-place state input, and each slot's length."""

    def __init__(self, spec, slots: int):
        pairs = [p for p in spec.state if p.in_place]
        if not pairs or len(pairs) != len(spec.state):
            raise SeqserveError(f"the {spec.name} graph's state is not an in-place KV cache; no slot pool")
        self.tokens, self.positions = spec.name_of(TOKENS), spec.name_of(POSITIONS)
        other = set(spec.input_names) - {self.tokens, self.positions} - {p.input for p in pairs}
        if other:
            raise SeqserveError(f"the {spec.name} graph takes {sorted(other)} besides tokens, positions and its "
                                "KV cache; a slot pool feeds only those")
        self.slots = slots
        self.buffers = {p.input: np.zeros(resolve_dims(spec.input(p.input), {"batch": slots, "sequence": 0, PAST: 0}),
                                          spec.input(p.input).dtype) for p in pairs}
        self.length = next(iter(self.buffers.values())).shape[2]
        self.lengths = np.zeros(slots, np.int64)         # positions 0 .. lengths[s] - 1 hold slot s's cache
        self._free = list(range(slots))
        self._prefix: dict[int, dict] = {}              # hi -> views buffer[:hi] (the same objects: bound once)
        self._row: dict[int, dict] = {}                 # slot -> views buffer[s:s + 1]

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self) -> int:
        slot = heapq.heappop(self._free)
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        heapq.heappush(self._free, slot)

    def reset(self) -> None:
        self.lengths[:] = 0
        self._free = list(range(self.slots))

    def prefix(self, hi: int) -> dict:
        v = self._prefix.get(hi)
        if v is None:
            v = self._prefix[hi] = {k: b[:hi] for k, b in self.buffers.items()}
        return v

    def row(self, slot: int) -> dict:
        v = self._row.get(slot)
        if v is None:
            v = self._row[slot] = {k: b[slot:slot + 1] for k, b in self.buffers.items()}
        return v


class SlotPoolScheduler(_GenerationScheduler):
    """_GenerationScheduler's streams, sampling and shutdown; state in a SlotPool instead of a
    DecodeState that is merged and selected. self.rows: the decoding streams."""

    def __init__(self, model):
        super().__init__(model)
        cfg = model.config
        self.pool = SlotPool(model.backend.spec, model.max_streams)
        self.chunk = int(parameter(cfg, "seqserve.prefill_chunk", str(PREFILL_CHUNK)) or PREFILL_CHUNK)
        if self.chunk < 1:
            raise SeqserveError(f"model {model.name}: seqserve.prefill_chunk must be at least 1, got {self.chunk}")
        self.all_rows = (parameter(cfg, "seqserve.slot_rows", "prefix") or "prefix") == "all"
        self.prefilling: list[_Stream] = []
        self.logits = model.backend.spec.name_of(LOGITS)

    def busy(self) -> bool:
        return bool(self.rows) or bool(self.prefilling) or bool(self.waiting)

    def iteration(self, new: list[_Stream]) -> None:
        m, pool, replies = self.model, self.pool, Replies()
        self.waiting.extend(new)
        self._leave(lambda s: s.cancelled)
        # 1. one decode step for every decoding stream: one call over buffer[:hi]
        if self.rows:
            t_start = now_ns()
            slots = [s.slot for s in self.rows]
            hi = pool.slots if self.all_rows else max(slots) + 1
            tokens = np.zeros((hi, 1), np.int64)
            tokens[slots, 0] = [s.pending for s in self.rows]
            feeds = {pool.tokens: tokens, pool.positions: pool.lengths[:hi, None].copy(), **pool.prefix(hi)}
            t_in = now_ns()
            out = m.backend.run(feeds)
            t_run = now_ns()
            pool.lengths[slots] += 1
            self._emit(self.rows, out[self.logits][slots, -1], replies)
            m.stats.execution(len(slots), t_in - t_start, t_run - t_in, now_ns() - t_run)
            self._leave(lambda s: s.done)
        # 2. admit waiting streams into free slots
        while self.waiting and pool.free:
            s = self.waiting.popleft()
            if s.cancelled:
                continue
            s.started, s.slot = now_ns(), pool.take()
            self.prefilling.append(s)
        # 3. prefill: chunks of the joining prompts into their slots; nobody decoding: no limit
        budget = self.chunk if self.rows else None
        for s in list(self.prefilling):
            if budget is not None and budget <= 0:
                break
            done = int(pool.lengths[s.slot])
            k = len(s.ids) - done if budget is None else min(len(s.ids) - done, budget)
            t0 = now_ns()
            try:
                feeds = {pool.tokens: np.asarray([s.ids[done:done + k]], np.int64),
                         pool.positions: np.arange(done, done + k, dtype=np.int64)[None], **pool.row(s.slot)}
                out = m.backend.run(feeds)
            except Exception as e:
                s.done = True
                self.prefilling.remove(s)
                pool.release(s.slot)
                replies.add(s.loop, s.events.put_nowait, ServeError(500, f"model '{m.name}' failed: {e}"))
                m.stats.request_failed(now_ns() - s.t0, "BACKEND")
                continue
            t1 = now_ns()
            pool.lengths[s.slot] += k
            if budget is not None:
                budget -= k
            if done + k < len(s.ids):
                continue
            self.prefilling.remove(s)                  # the whole prompt is in: its first token
            self._emit([s], out[self.logits][:, -1], replies)
            m.stats.execution(1, 0, t1 - t0, now_ns() - t1)
            if s.done:
                pool.release(s.slot)
            else:
                self.rows.append(s)
        m.stats.active_sequences = len(self.rows) + len(self.prefilling)
        replies.flush()

    def _leave(self, gone) -> None:
        for group in (self.rows, self.prefilling):
            keep = [s for s in group if not gone(s)]
            if len(keep) < len(group):
                for s in group:
                    if gone(s):
                        self.pool.release(s.slot)
                group[:] = keep

    def _end(self, items: list[_Stream], event) -> None:
        self.rows = self.rows + self.prefilling
        self.prefilling = []
        super()._end(items, event)
        self.pool.reset()
