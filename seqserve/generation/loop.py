"""The one decoding loop: prefill, decode step, sample, stop — over any backend.

    prefill      each prompt alone, so no padding enters a recurrent state; then the per-prompt
                 states are merged into one batch (KV caches left-padded and masked)
    decode_step  one batched backend call for every unfinished sequence
    sample       seqserve.generation.sampling
    stop         max_tokens, <eos>, stop strings (text after a stop string is never shown)
Finished sequences leave the batch, so they cost nothing in later steps.

A task whose chain has `once` graphs (an `init` from features, an encoder) runs them first, per
sequence, on that sequence's inputs (`once_inputs`); their outputs that the step graph takes by
the same name (TaskSpec.links) become the step graph's starting state (`prefill(..., start=)`,
DecodeState.empty). Such a `Chain` may also start every sequence from <bos>, so no prompt is
needed. Without once graphs nothing changes: the state starts from zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.generation.cache import DecodeState
from seqserve.generation.sampling import SamplingParams, make_rngs, sample_next
from seqserve.tasks.spec import LOGITS, TOKENS


@dataclass(frozen=True)
class TokenEvent:
    index: int                 # which prompt
    token: int                 # the sampled token id
    text: str                  # new text to show (may be empty while a stop string is pending)
    finish_reason: str | None  # None while running; "length" | "eos" | "stop" on the last event


@dataclass(frozen=True)
class Chain:
    """What runs before the step graph for each sequence, and how a sequence starts."""

    once: tuple = ()        # backends of the task's `once` graphs, in chain order (init, encoder)
    bos: bool = False       # feed <bos> before the prompt (conditioned generation: prompt optional)


def start_values(once, inputs: dict, step) -> dict:
    """Run the `once` backends in chain order on one batch of inputs (name -> array); -> the
    outputs the step graph (GraphSpec) takes as inputs, by name: its starting state, constants."""
    values = dict(inputs)
    for b in once:
        missing = [n for n in b.spec.input_names if n not in values]
        if missing:
            raise SeqserveError(f"the {b.spec.name} graph needs inputs {missing}; got {sorted(inputs)}")
        out = b.run({n: values[n] for n in b.spec.input_names})
        values.update({k: b.to_host(v) for k, v in out.items()})
    # Once-graph inputs the step also takes (an encoder's source mask) are constants for it too.
    tokens = step.roles.get(TOKENS)
    return {n: values[n] for n in step.input_names if n in values and n != tokens}


@dataclass
class Completion:
    prompt: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def prefill(backend, ids: list[int], start: dict | None = None) -> tuple[np.ndarray, DecodeState]:
    """One prompt (batch 1) -> last-position logits (1, V) and its state; `start`: the state (and
    constants) to begin from, by step-graph input name, batch 1 (start_values), else zeros."""
    state = DecodeState.empty(backend.spec, 1, backend, start)
    feeds = state.feeds(np.asarray([ids], np.int64))
    out = backend.run(feeds)
    return out[backend.spec.name_of(LOGITS)][:, -1], state.advance(feeds, out)


def decode_step(backend, state: DecodeState, tokens: np.ndarray) -> tuple[np.ndarray, DecodeState]:
    """tokens (B,) -> next logits (B, V) and the advanced state."""
    feeds = state.feeds(tokens[:, None])
    out = backend.run(feeds)
    return out[state.spec.name_of(LOGITS)][:, -1], state.advance(feeds, out)


def encode_prompts(tokenizer, prompts: Sequence[str], max_tokens: int, max_context: int | None,
                   bos: bool = False) -> list[list[int]]:
    """Token ids of every prompt (<bos> first if asked), each checked: not empty, and room in the
    model's context for max_tokens more. Any generation (sampled, beams) starts here."""
    if bos and tokenizer.bos_id is None:
        raise SeqserveError("this model's sequences start from a begin token, and the tokenizer has none")
    encoded = [([tokenizer.bos_id] if bos else []) + tokenizer.encode(p) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise SeqserveError(f"prompt {i} is empty; give at least one character")
        # The last sampled token is never fed back, so positions 0 .. len + max_tokens - 2 are used.
        if max_context is not None and len(ids) + max_tokens - 1 > max_context:
            raise SeqserveError(f"prompt {i} has {len(ids)} tokens; with max_tokens {max_tokens} it "
                                f"exceeds the model's context of {max_context} positions")
    return encoded


def generate(backend, tokenizer, prompts: Sequence[str], params: SamplingParams,
             max_context: int | None = None, chain: Chain = Chain(),
             once_inputs: Sequence[dict] | None = None) -> Iterator[TokenEvent]:
    """Yield TokenEvents as tokens are produced, for every prompt, in batch.

    chain / once_inputs: a task with once graphs (chain.once) gets one dict of their inputs per
    prompt (e.g. {"features": [1, F]}); the step state starts from what they compute.
    Prompts are checked before this returns (not at the first next()), so a bad prompt fails
    before anything is printed or sent.
    """
    if chain.once and (once_inputs is None or len(once_inputs) != len(prompts)):
        raise SeqserveError(f"this task runs {[b.spec.name for b in chain.once]} first: give one set of their "
                            f"inputs per prompt ({len(prompts)} prompts)")
    encoded = encode_prompts(tokenizer, prompts, params.max_tokens, max_context, chain.bos)
    starts = [start_values(chain.once, x, backend.spec) for x in once_inputs] if chain.once else None
    return _decode(backend, tokenizer, encoded, params, starts)


def _decode(backend, tokenizer, encoded: list[list[int]], params: SamplingParams,
            starts: list[dict] | None = None) -> Iterator[TokenEvent]:
    rngs = make_rngs(params, len(encoded))
    firsts = [prefill(backend, ids, starts[i] if starts else None) for i, ids in enumerate(encoded)]
    logits = np.concatenate([f[0] for f in firsts])
    state = DecodeState.merge([f[1] for f in firsts], backend)
    texts = [SequenceText(tokenizer, params, ids) for ids in encoded]
    rows = list(range(len(encoded)))          # prompt index of each batch row
    while True:
        nxt = sample_next(logits, params, [rngs[i] for i in rows])
        keep = []
        for r, (i, tok) in enumerate(zip(rows, nxt)):
            text, finish = texts[i].push(int(tok))
            yield TokenEvent(i, int(tok), text, finish)
            if finish is None:
                keep.append(r)
        if not keep:
            return
        if len(keep) < len(rows):
            state = state.select(keep, backend)
            rows, nxt = [rows[r] for r in keep], nxt[keep]
        logits, state = decode_step(backend, state, nxt)


def generate_text(backend, tokenizer, prompts: Sequence[str], params: SamplingParams,
                  max_context: int | None = None, chain: Chain = Chain(),
                  once_inputs: Sequence[dict] | None = None) -> list[Completion]:
    out = [Completion(p) for p in prompts]
    for ev in generate(backend, tokenizer, prompts, params, max_context, chain, once_inputs):
        c = out[ev.index]
        c.tokens.append(ev.token)
        c.text += ev.text
        c.finish_reason = ev.finish_reason or c.finish_reason
    return out


class SequenceText:
    """One sequence's output: text to show for each sampled token, and whether it finished.

    Shared by this loop and the server's generation scheduler, so both stop the same way.
    """

    def __init__(self, tokenizer, params: SamplingParams, after=()):
        """after: the ids the sequence continues (its prompt), so that a word-level or subword
        tokenizer puts the right space before the first new word."""
        self.params = params
        self.eos_id = tokenizer.eos_id
        self.stream = _TextStream(tokenizer, params.stop, after)
        self.count = 0

    def push(self, token: int) -> tuple[str, str | None]:
        """-> (new text, finish reason: None while running, else "eos" | "stop" | "length")."""
        self.count += 1
        if self.params.stop_at_eos and token == self.eos_id:
            return self.stream.flush(), "eos"
        text, stopped = self.stream.push(token)
        if stopped:
            return text, "stop"
        if self.count >= self.params.max_tokens:
            return text + self.stream.flush(), "length"
        return text, None


class _TextStream:
    """Per-sequence text: decodes tokens incrementally and holds back a possible stop string."""

    def __init__(self, tokenizer, stop: tuple[str, ...], after=()):
        self.decoder = tokenizer.stream_decoder(after)
        self.stop = stop
        self.text = ""      # decoded so far
        self.shown = 0      # characters of self.text already emitted

    def push(self, token: int) -> tuple[str, bool]:
        self.text += self.decoder.feed([token])
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            end = min(hits)
            out, self.shown = self.text[self.shown:end], end
            return out, True
        # Hold back the longest tail that could still grow into a stop string.
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        end = len(self.text) - hold
        out, self.shown = self.text[self.shown:end], max(self.shown, end)
        return out, False

    def flush(self) -> str:
        self.text += self.decoder.feed([], final=True)
        out, self.shown = self.text[self.shown:], len(self.text)
        return out
