"""ONNX Runtime backend for a step graph whose KV cache is updated in place (StatePair.in_place).

The graph (export/static_cache.py) takes past_key_values.{i}.key/value [B, H, MAX, hd] and returns
present.{i}.key/value of the same shape. With I/O binding, ONE OrtValue over the caller's numpy
buffer is bound as both, so GroupQueryAttention writes the S new positions of each row into it
and nothing else is copied or allocated (unbound, ORT allocates, zeroes and copies the whole
buffer every call: 8x slower, measured). Row b of the buffer is that sequence's slot: positions
0 .. position_ids[b, 0] - 1 hold its cache, whatever follows is never read.

So the state outputs ARE the state inputs (the same numpy arrays, now holding the new tokens):
DecodeState.advance keeps them, and the next call finds them still bound (nothing re-bound). The
other inputs (token ids, positions) and the logits live in arrays owned here, bound once per
shape and refilled in place. On CPU only; a CUDA static cache is the GPU work of issue 13.
"""

from __future__ import annotations

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.runtime.ort import OrtBackend, RuntimeOptions
from seqserve.tasks.spec import LOGITS, POSITIONS, TOKENS


class StaticOrtBackend(OrtBackend):
    """run(feeds) like OrtBackend; the in-place state inputs are updated and returned as outputs."""

    name = "ort"

    def __init__(self, export_info, graph: str = "step", options: RuntimeOptions = RuntimeOptions()):
        if options.device != "cpu":
            raise SeqserveError("a static (in-place) KV cache export runs on the CPU for now; "
                                "export with --kv-cache concat for --device cuda")
        super().__init__(export_info, graph, options)
        self._buffers = {p.input: p.output for p in self.spec.state if p.in_place}
        self._logits = self.spec.name_of(LOGITS)
        self._tokens, self._positions = self.spec.name_of(TOKENS), self.spec.name_of(POSITIONS)
        self._io = self.session.io_binding()
        self._held: dict = {}          # input name -> (array, OrtValue) bound in self._io

    def run(self, feeds: dict) -> dict:
        ids = feeds[self._tokens]
        B, S = ids.shape
        if S > 1 and B > 1 and np.any(np.asarray(feeds[self._positions])[:, 0]):
            # GroupQueryAttention refuses a chunk after a past at batch > 1: each row alone, on
            # a view of its slot (basic slicing of a C-contiguous buffer: still in place).
            rows = [self._run_bound({k: v[r:r + 1] for k, v in feeds.items()}, self.session.io_binding(), {})
                    for r in range(B)]
            return {self._logits: np.concatenate([r[self._logits] for r in rows]),
                    **{out: feeds[inp] for inp, out in self._buffers.items()}}
        return self._run_bound(feeds, self._io, self._held)

    def _run_bound(self, feeds: dict, io, held: dict) -> dict:
        import onnxruntime as ort

        out = {}
        for name, value in feeds.items():
            if name in self._buffers:
                arr = np.ascontiguousarray(value, dtype=np.float32)     # no copy for our own buffers
                if name not in held or held[name][0] is not arr:
                    ov = ort.OrtValue.ortvalue_from_numpy(arr)
                    io.bind_ortvalue_input(name, ov)
                    io.bind_ortvalue_output(self._buffers[name], ov)    # the same memory: in place
                    held[name] = (arr, ov)
                out[self._buffers[name]] = arr
            else:
                self._refill(io, held, name, np.asarray(value), io.bind_ortvalue_input)
        B, S = feeds[self._tokens].shape
        logits = self._refill(io, held, self._logits, None, io.bind_ortvalue_output,
                              (B, S, self.spec.output(self._logits).dims[-1]))
        self.session.run_with_iobinding(io)
        out[self._logits] = logits.copy()                              # ours is refilled next call
        return out

    @staticmethod
    def _refill(io, held, name, value, bind, shape=None):
        """An array owned here for `name`, bound once per shape; `value` copied into it."""
        import onnxruntime as ort

        shape = value.shape if value is not None else shape
        dtype = value.dtype if value is not None else np.float32
        got = held.get(name)
        if got is None or got[0].shape != shape or got[0].dtype != dtype:
            arr = np.empty(shape, dtype)
            ov = ort.OrtValue.ortvalue_from_numpy(arr)
            bind(name, ov)
            held[name] = got = (arr, ov)
        if value is not None:
            np.copyto(got[0], value)
        return got[0]

    def to_host(self, value) -> np.ndarray:
        return value

    def from_host(self, array: np.ndarray):
        return np.ascontiguousarray(array)


def has_in_place_state(spec) -> bool:
    return any(p.in_place for p in spec.state)
