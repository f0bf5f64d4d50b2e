"""DecodeState: everything a batch of sequences carries from one step to the next.

Built from the step graph's spec alone, so it works for every family:
- state tensors by input name (RNN h/c `[B, L, H]`; KV cache `[B, heads, P, head_dim]`);
- for graphs with an attention mask, the mask `[B, P]` (1 = real token) and each row's next
  position, so rows of different lengths can share a batch with left padding.
Merging pads each state tensor that has a `seq_axis` on the left (and masks the padding);
fixed-size states are simply concatenated. Continuous batching uses the same merge/select.
An in-place KV cache (StatePair.in_place: a static buffer per row, no mask) needs no padding:
each row keeps its own length (its next position), so merge only stacks rows.

A task's chain may start the state from its `once` graphs (`start`: an init graph's outputs under
the step graph's state input names) instead of zeros; `start` values for step inputs that are not
state (role CONSTANT: encoder outputs, cross-attention K/V) are kept in `fixed` and fed unchanged
at every step. Rows of `fixed` move with their sequence in merge/select/row, so a beam's
`select([0, 0, 1])` copies them as it copies the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seqserve.tasks.spec import MASK, PAST, POSITIONS, SOURCE, TOKENS, GraphSpec, resolve_dims


@dataclass(frozen=True)
class DecodeState:
    spec: GraphSpec
    state: dict                    # past input name -> tensor (numpy or backend-native)
    mask: np.ndarray | None        # (B, P) int64, only for graphs with an attention_mask
    positions: np.ndarray          # (B,) int64: position of each row's next token
    fixed: dict = field(default_factory=dict)  # input name -> tensor fed unchanged every step (B first)

    @property
    def batch(self) -> int:
        return len(self.positions)

    @staticmethod
    def empty(spec: GraphSpec, batch: int, backend, start: dict | None = None) -> "DecodeState":
        """The state before the first token: zeros, or `start` (name -> array with `batch` rows:
        what the task's once graphs computed for these sequences) where it names a graph input."""
        start = start or {}
        unknown = set(start) - set(spec.input_names)
        if unknown:
            raise ValueError(f"start values {sorted(unknown)} are not inputs of the {spec.name} graph")
        state = {t.name: backend.from_host(np.ascontiguousarray(start[t.name]) if t.name in start else
                                           np.zeros(resolve_dims(t, {"batch": batch, "sequence": 0, PAST: 0}), t.dtype))
                 for t in spec.inputs if t.name in spec.state_inputs}
        fixed = {k: backend.from_host(np.ascontiguousarray(v)) for k, v in start.items() if k not in spec.state_inputs}
        mask = np.zeros((batch, 0), np.int64) if spec.has_attention_mask else None
        return DecodeState(spec, state, mask, np.zeros(batch, np.int64), fixed)

    def feeds(self, input_ids: np.ndarray) -> dict:
        """Graph inputs for token ids (B, S): the tokens, the state, and (KV-cache graphs) the
        mask and positions; every tensor found by its role in the spec."""
        # Called once per generated token: no cast or arithmetic that a one-token step does not need.
        B, S = input_ids.shape
        names = self.spec.roles
        feeds = {names[TOKENS]: input_ids if input_ids.dtype == np.int64 else input_ids.astype(np.int64)}
        feeds.update(self.state)
        if self.fixed:
            feeds.update(self.fixed)
        if self.mask is not None:
            feeds[names[MASK]] = np.concatenate([self.mask, np.ones((B, S), np.int64)], axis=1)
        if names[POSITIONS] is not None:   # an in-place cache takes positions alone (its lengths)
            feeds[names[POSITIONS]] = (self.positions[:, None] if S == 1
                                       else self.positions[:, None] + np.arange(S, dtype=np.int64))
        return feeds

    def advance(self, feeds: dict, outputs: dict) -> "DecodeState":
        """The state after running `feeds` (from self.feeds) and getting `outputs`."""
        state = {p.input: outputs[p.output] for p in self.spec.state}
        names = self.spec.roles
        # The mask just fed already covers the new tokens: reuse it rather than build it again.
        return DecodeState(self.spec, state, feeds.get(names[MASK]),
                           self.positions + feeds[names[TOKENS]].shape[1], self.fixed)

    @staticmethod
    def merge(parts: list["DecodeState"], backend) -> "DecodeState":
        """Stack several states into one batch (rows in order), left-padding KV caches."""
        spec = parts[0].spec
        if len(parts) == 1:
            return parts[0]
        width = max(p.mask.shape[1] for p in parts) if parts[0].mask is not None else 0
        state = {}
        for pair in spec.state:
            host = [backend.to_host(p.state[pair.input]) for p in parts]
            if pair.seq_axis is not None:
                host = [_left_pad(h, pair.seq_axis, width - h.shape[pair.seq_axis]) for h in host]
            state[pair.input] = backend.from_host(np.concatenate(host, axis=0))
        mask = None
        if parts[0].mask is not None:
            mask = np.concatenate([_left_pad(p.mask, 1, width - p.mask.shape[1]) for p in parts])
        # Constants stack on the batch axis; sources of different lengths are right-padded along
        # the source axis (zeros: the source mask, a constant too, then masks the padding).
        fixed = {}
        for k in parts[0].fixed:
            host = [backend.to_host(p.fixed[k]) for p in parts]
            axes = [i for i, d in enumerate(spec.input(k).dims) if d == SOURCE]
            for ax in axes:
                n = max(h.shape[ax] for h in host)
                host = [np.pad(h, [(0, n - h.shape[ax]) if i == ax else (0, 0) for i in range(h.ndim)]) for h in host]
            fixed[k] = backend.from_host(np.concatenate(host))
        return DecodeState(spec, state, mask, np.concatenate([p.positions for p in parts]), fixed)

    def select(self, rows, backend) -> "DecodeState":
        """Keep only `rows` (finished sequences leave the batch).

        Left padding that no remaining row needs is cut off, so when a long sequence leaves a
        server's batch the others stop paying for its cache length.
        """
        rows = np.asarray(rows)
        mask = None if self.mask is None else self.mask[rows]
        cut = 0
        if mask is not None and mask.shape[1]:
            real = mask.any(axis=0)
            cut = int(real.argmax()) if real.any() else mask.shape[1]
            mask = mask[:, cut:]
        axes = {p.input: p.seq_axis for p in self.spec.state}
        state = {}
        for k, v in self.state.items():
            host = backend.to_host(v)[rows]
            if cut and axes.get(k) is not None:
                host = np.ascontiguousarray(np.take(host, np.arange(cut, host.shape[axes[k]]), axis=axes[k]))
            state[k] = backend.from_host(host)
        fixed = {k: backend.from_host(backend.to_host(v)[rows]) for k, v in self.fixed.items()}
        return DecodeState(self.spec, state, mask, self.positions[rows], fixed)

    def row(self, r: int, backend) -> "DecodeState":
        """Row r as a batch-1 state, without the left padding it only had for its batch-mates.
        Basic slicing: on CPU these are views, no copy."""
        mask = None if self.mask is None else self.mask[r:r + 1]
        cut = 0
        if mask is not None and mask.shape[1]:
            cut = int(mask[0].argmax()) if mask.any() else mask.shape[1]
            mask = mask[:, cut:]
        axes = {p.input: p.seq_axis for p in self.spec.state}
        state = {}
        for k, v in self.state.items():
            idx = [slice(r, r + 1)]
            if cut and axes.get(k) is not None:
                idx += [slice(None)] * (axes[k] - 1) + [slice(cut, None)]
            state[k] = backend.from_host(backend.to_host(v)[tuple(idx)])
        fixed = {k: backend.from_host(backend.to_host(v)[r:r + 1]) for k, v in self.fixed.items()}
        return DecodeState(self.spec, state, mask, self.positions[r:r + 1], fixed)


def _left_pad(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    if n <= 0:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (n, 0)
    return np.pad(a, pad)
