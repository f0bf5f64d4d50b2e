"""What is sent: inputs synthesized from the model's metadata (or read from a file), encoded once.

- infer:    a pool of requests with random valid inputs, sent round-robin;
- sequence: each lane runs sequences of --sequence-length steps with a fresh sequence id,
            `sequence_start` on the first step and `sequence_end` on the last; against a model
            with client-held state (NAME_step_state: seqserve.state_pairs) each lane holds its
            sequence's state instead: zeros on the first step, then each response's present_*
            sent as the next request's past_* (no sequence id, no routing key);
- generate: one streamed request per prompt (`text_input`, plus `max_tokens` when the model has it;
            a model conditioned on a vector, e.g. `features` FP32 [F], gets a random one in [0, 1)).

Every request of a sequence carries its id as the routing key (`x-sequence-id` header or gRPC
metadata; the encoders add it from `sequence_id`), and every generation stream a key of its own,
so a consistent-hash proxy in front of several replicas keeps each on one (seqserve/serve/routing.py).

Synthesized inputs: variable axes (-1) get --input-length (default 1), the batch axis 1; integer
inputs get token ids in [0, vocab) where vocab is the last dim of the `logits` output (else
[0, 16)); floats N(0, 1); BYTES short ASCII strings. Optional inputs are left out.
The perf_analyzer JSON data format is read too (`{"data": [{"input_ids": [1, 2]}, ...]}`; for
sequences a list per sequence), so both tools can send the same data.
"""

from __future__ import annotations

import json
import os
from itertools import count
from pathlib import Path

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.dtypes import NUMPY
from seqserve.loadtest.config import LoadTestConfig
from seqserve.loadtest.discovery import ModelInfo, Tensor

POOL = 16                 # distinct synthesized requests (infer) / step inputs (sequence)
PROMPT_CHARS = 32         # default length of a synthesized prompt
UNKNOWN_VOCAB = 16        # integer inputs of a model without a logits output: ids in [0, 16)
_WORDS = ("the", "def", "return", "self", "value", "import", "class", "for", "in", "if", "not", "none",
          "data", "name", "list", "item", "line", "text", "file", "path", "and", "or", "is", "with")
_NP = NUMPY                 # KServe datatype -> numpy dtype (seqserve/dtypes.py)


def _shape(t: Tensor, info: ModelInfo, length: int) -> tuple[int, ...]:
    batched = info.max_batch_size > 0
    return tuple(1 if (batched and i == 0 and d == -1) else (length if d == -1 else d)
                 for i, d in enumerate(t.shape))


def synthesize(t: Tensor, shape: tuple[int, ...], vocab: int | None, rng: np.random.Generator) -> np.ndarray:
    dt = _NP.get(t.datatype)
    if dt is None:
        raise SeqserveError(f"input '{t.name}' has datatype {t.datatype}, which the load tester cannot synthesize")
    if t.datatype == "BYTES":
        return np.array([" ".join(rng.choice(_WORDS, 2)).encode() for _ in range(int(np.prod(shape)))],
                        dtype=object).reshape(shape)
    if t.datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dt, np.integer):
        high = min(vocab or UNKNOWN_VOCAB, int(np.iinfo(dt).max))
        return rng.integers(0, high, shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def synthesized_inputs(info: ModelInfo, cfg: LoadTestConfig, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    length = cfg.input_length or 1
    wanted = [t for t in info.inputs if not t.optional]
    return [{t.name: synthesize(t, _shape(t, info, length), info.vocab, rng) for t in wanted} for _ in range(n)]


# ---- perf_analyzer's input data JSON ------------------------------------------------------------

def _tensor_from_json(t: Tensor, value, info: ModelInfo, where: str) -> np.ndarray:
    if isinstance(value, dict):
        if "b64" in value:
            raise SeqserveError(f"{where}: b64 input data is not supported; give \"content\" as a list")
        content, shape = value.get("content"), value.get("shape")
    else:
        content, shape = value, None
    if not isinstance(content, list):
        raise SeqserveError(f"{where}: input '{t.name}' should be a list of values (or {{\"content\": [...], "
                            f"\"shape\": [...]}})")
    flat = np.array(content, dtype=_NP[t.datatype] if t.datatype != "BYTES" else object).reshape(-1)
    dims = t.shape[1:] if info.max_batch_size > 0 else t.shape
    if shape is None:
        fixed = int(np.prod([d for d in dims if d != -1])) if dims else 1
        free = [i for i, d in enumerate(dims) if d == -1]
        if len(free) > 1:
            raise SeqserveError(f"{where}: input '{t.name}' has several variable axes: give its \"shape\"")
        shape = [flat.size // max(fixed, 1) if d == -1 else d for d in dims]
    if int(np.prod(shape)) != flat.size:
        raise SeqserveError(f"{where}: input '{t.name}' has {flat.size} values, which do not fill shape {list(shape)}")
    if t.datatype == "BYTES":
        flat = np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=object)
    a = flat.reshape(shape)
    return a[None] if info.max_batch_size > 0 else a


def load_input_data(path: Path, info: ModelInfo, sequences: bool) -> list:
    """perf_analyzer's --input-data JSON: a list of steps (dicts of inputs), or for sequence
    models a list of sequences, each a list of steps."""
    try:
        data = json.loads(Path(path).read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SeqserveError(f"--prompts {path}: not perf_analyzer input data ({{\"data\": [...]}}): {e}") from None
    if not isinstance(data, list) or not data:
        raise SeqserveError(f"--prompts {path}: \"data\" should be a non-empty list")
    names = {t.name for t in info.inputs}
    required = [t for t in info.inputs if not t.optional]

    def step(entry, where):
        if not isinstance(entry, dict):
            raise SeqserveError(f"{where}: expected an object of inputs, got {type(entry).__name__}")
        unknown = set(entry) - names
        if unknown:
            raise SeqserveError(f"{where}: model '{info.name}' has no input {sorted(unknown)[0]!r}")
        missing = [t.name for t in required if t.name not in entry]
        if missing:
            raise SeqserveError(f"{where}: input '{missing[0]}' is missing")
        return {t.name: _tensor_from_json(t, entry[t.name], info, where) for t in info.inputs if t.name in entry}

    if sequences:
        seqs = [s if isinstance(s, list) else [s] for s in data]
        return [[step(e, f"--prompts {path}: sequence {i} step {j}") for j, e in enumerate(s)] for i, s in enumerate(seqs)]
    if any(isinstance(e, list) for e in data):
        data = [e for s in data for e in (s if isinstance(s, list) else [s])]
    return [step(e, f"--prompts {path}: entry {i}") for i, e in enumerate(data)]


def load_prompts(path: Path) -> list[str]:
    """Prompts: a .json list of strings, .jsonl (a string or {"text_input"|"prompt": ...} per line),
    or plain text with one prompt per line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            prompts = json.loads(text)
            if isinstance(prompts, dict):
                prompts = prompts.get("prompts") or prompts.get("data")
        elif path.suffix == ".jsonl":
            prompts = []
            for line in text.splitlines():
                if line.strip():
                    v = json.loads(line)
                    prompts.append(v if isinstance(v, str) else v.get("text_input", v.get("prompt")))
        else:
            prompts = [line for line in text.splitlines() if line.strip()]
    except (ValueError, AttributeError) as e:
        raise SeqserveError(f"--prompts {path}: {e}") from None
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise SeqserveError(f"--prompts {path}: expected a list of non-empty prompts (strings)")
    return prompts


def synthesized_prompts(n: int, chars: int, seed: int) -> list[str]:
    """Lower-case words and spaces, `chars` long: characters every text tokenizer knows."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = []
        while sum(len(w) + 1 for w in words) < chars:
            words.append(str(rng.choice(_WORDS)))
        out.append(" ".join(words)[:chars])
    return out


def synthesized_sources(n: int, chars: str, longest: int, seed: int) -> list[str]:
    """Encoder-decoder sources: 1 to `longest` characters drawn from `chars` (the source vocabulary)."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(chars), int(rng.integers(1, longest + 1)))) for _ in range(n)]


# ---- workloads ----------------------------------------------------------------------------------

class _Rotation:
    """Pre-encoded requests sent in turn; the lanes keep no per-slot state."""
    streaming = False

    def __init__(self, payloads: list[bytes]):
        self.payloads = payloads
        self.largest = max(len(p) for p in payloads)
        self._i = count()

    def new_slot(self):
        return None

    def next(self, slot) -> bytes:
        return self.payloads[next(self._i) % len(self.payloads)]

    def probe(self) -> bytes:
        return self.payloads[0]


class InferWorkload(_Rotation):
    def __init__(self, encoder, samples: list[dict]):
        super().__init__([encoder.infer(s) for s in samples])


class _Sequence:
    __slots__ = ("seq_id", "step", "steps")

    def __init__(self):
        self.seq_id, self.step, self.steps = 0, 0, None


class SequenceWorkload:
    """Each slot runs one sequence at a time: step 0 starts it, step L-1 ends it; the next step
    of a slot is sent only after the previous one was answered, so the server sees them in order."""
    streaming = False

    def __init__(self, encoder, sequences: list[list[dict]], length: int | None, id_base: int):
        self.encoder, self.sequences, self.length = encoder, sequences, length
        self.largest = max(len(encoder.infer(step, {"sequence_id": 1 << 62, "sequence_start": True,
                                                     "sequence_end": True})) for seq in sequences for step in seq)
        self._ids = count(id_base)
        self._pick = count()
        self.started = self.completed = 0

    def new_slot(self) -> _Sequence:
        return _Sequence()

    def next(self, slot: _Sequence) -> bytes:
        if slot.step == 0:
            slot.seq_id = next(self._ids)
            slot.steps = self.sequences[next(self._pick) % len(self.sequences)]
            self.started += 1
        n = self.length or len(slot.steps)
        i = slot.step
        params = {"sequence_id": slot.seq_id, "sequence_start": i == 0, "sequence_end": i == n - 1}
        payload = self.encoder.infer(slot.steps[i % len(slot.steps)], params)
        slot.step = 0 if i == n - 1 else i + 1
        if i == n - 1:
            self.completed += 1
        return payload

    def closing(self, slot: _Sequence) -> bytes | None:
        """The request that ends the slot's sequence if it is in the middle of one (its next step,
        flagged sequence_end): sent at the end of a level, so the server frees its state now rather
        than when it expires (and its limit on active sequences is not used up by a load test)."""
        if slot is None or slot.step == 0:
            return None
        params = {"sequence_id": slot.seq_id, "sequence_start": False, "sequence_end": True}
        payload = self.encoder.infer(slot.steps[slot.step % len(slot.steps)], params)
        slot.step = 0
        return payload

    def probe(self) -> bytes:
        """A one-step sequence (start and end), its own id."""
        params = {"sequence_id": next(self._ids), "sequence_start": True, "sequence_end": True}
        return self.encoder.infer(self.sequences[0][0], params)


class _HeldSequence:
    __slots__ = ("step", "steps", "state")

    def __init__(self):
        self.step, self.steps, self.state = 0, None, None


class StateFeedbackWorkload:
    """--workload sequence against NAME_step_state: each slot runs one sequence at a time and holds
    its state; a request is encoded when it is due (its state is the previous response's), so
    this workload costs the client an encode and a decode per request that the others do not."""
    streaming = False
    needs_answer = True         # the runner hands each answered call's lane to answered()

    def __init__(self, encoder, sequences: list[list[dict]], length: int | None, info: ModelInfo):
        self.encoder, self.sequences, self.length = encoder, sequences, length
        self.pairs = [tuple(p) for p in info.state_pairs]
        specs = {t.name: t for t in info.inputs}
        self.zeros = {p: np.zeros([1, *specs[p].shape[1:]], dtype=_NP[specs[p].datatype]) for p, _ in self.pairs}
        self.sequences = [[{k: v for k, v in s.items() if k not in self.zeros} for s in seq] for seq in sequences]
        self.largest = max(len(encoder.infer({**s, **self.zeros})) for seq in self.sequences for s in seq)
        self._pick = count()
        self.started = self.completed = 0
        self.state_bytes = sum(a.nbytes for a in self.zeros.values())     # sent per request (and returned)

    def new_slot(self) -> _HeldSequence:
        return _HeldSequence()

    def next(self, slot: _HeldSequence) -> bytes:
        if slot.step == 0:
            slot.steps = self.sequences[next(self._pick) % len(self.sequences)]
            slot.state = self.zeros
            self.started += 1
        return self.encoder.infer({**slot.steps[slot.step % len(slot.steps)], **slot.state})

    def answered(self, slot: _HeldSequence, call, lane) -> None:
        """The response's present_* become the slot's state; a failed step starts a new sequence."""
        if slot is None:
            return
        got = None if call.error else lane.answer([o for _, o in self.pairs])
        n = self.length or len(slot.steps)
        if got is None or any(got.get(o) is None for _, o in self.pairs):
            slot.step = 0
            return
        slot.state = {p: got[o] for p, o in self.pairs}
        slot.step = (slot.step + 1) % n
        if slot.step == 0:
            self.completed += 1

    def probe(self) -> bytes:
        return self.encoder.infer({**self.sequences[0][0], **self.zeros})


class GenerateWorkload(_Rotation):
    """Pre-encoded generate requests in turn, each sent under a routing key of its own."""
    streaming = True

    def __init__(self, payloads: list[bytes], route, id_base: int):
        super().__init__(payloads)
        self.route = route              # route(payload, key): the encoder's
        self._keys = count(id_base)

    def next(self, slot) -> bytes:
        return self.route(super().next(slot), next(self._keys))

    def probe(self) -> bytes:
        return self.route(super().probe(), next(self._keys))


def conditioning(info: ModelInfo, rng) -> dict[str, np.ndarray]:
    """Required generate inputs besides text (conditioned: features [F]): random in [0, 1) (the
    digit features' range), one draw per prompt."""
    out = {}
    for t in info.inputs:
        if t.optional or t.name == "text_input" or t.datatype == "BYTES":
            continue
        if any(d < 0 for d in t.shape) or not t.datatype.startswith("FP"):
            raise SeqserveError(f"model '{info.name}' needs input '{t.name}' ({t.datatype} {list(t.shape)}) to "
                                "generate; only fixed-size float inputs can be synthesized")
        out[t.name] = rng.random(t.shape).astype(_NP[t.datatype])
    return out


def generate_fields(info: ModelInfo, prompt: str, max_tokens: int, extra: dict | None = None) -> dict:
    fields: dict = {"text_input": prompt}
    if info.input("max_tokens") is not None:
        fields["max_tokens"] = max_tokens
    for k, v in (extra or {}).items():
        fields[k] = v.tolist()
    return fields


def build_workload(info: ModelInfo, cfg: LoadTestConfig, encoder, protocol: str):
    """The workload object for cfg.workload, its requests encoded for `protocol`."""
    seed = cfg.seed
    if cfg.workload == "generate":
        prompts = (load_prompts(cfg.prompts) if cfg.prompts is not None
                   else synthesized_prompts(POOL, cfg.input_length or PROMPT_CHARS, seed))
        if cfg.prompts is None and conditioning(info, np.random.default_rng(0)):
            prompts = [""] * POOL      # conditioned: the text is optional (a prefix), the vector is the input
        elif cfg.prompts is None and info.source_chars:     # encoder-decoder: sources it accepts
            prompts = synthesized_sources(POOL, info.source_chars, min(cfg.input_length or PROMPT_CHARS,
                                                                       info.max_source or PROMPT_CHARS), seed)
        payloads, rng = [], np.random.default_rng(seed)
        for p in prompts:
            extra = conditioning(info, rng)
            fields = generate_fields(info, p, cfg.max_tokens, extra)
            if protocol == "http":
                payloads.append(encoder.generate(fields))
            else:
                arrays = {"text_input": np.array([p.encode()], dtype=object), **extra}
                if "max_tokens" in fields:
                    t = info.input("max_tokens")
                    arrays["max_tokens"] = np.array([cfg.max_tokens], dtype=_NP[t.datatype])
                if info.max_batch_size > 0:
                    arrays = {k: v[None] for k, v in arrays.items()}
                payloads.append(encoder.generate(arrays))
        return GenerateWorkload(payloads, encoder.route, _id_base())
    sequences = cfg.workload == "sequence"
    if cfg.prompts is not None:
        data = load_input_data(cfg.prompts, info, sequences)
    else:
        data = synthesized_inputs(info, cfg, POOL, seed)
        if sequences:
            data = [data]      # one pool of steps, cycled by every sequence
    if sequences and info.state_pairs and not info.sequence:
        return StateFeedbackWorkload(encoder, data, cfg.sequence_length if cfg.prompts is None else None, info)
    if sequences:
        return SequenceWorkload(encoder, data, cfg.sequence_length if cfg.prompts is None else None, _id_base())
    return InferWorkload(encoder, data)


def _id_base() -> int:
    """Sequence ids / routing keys: a random block per run, so two load tests on one server never
    share one."""
    return 1 + int.from_bytes(os.urandom(5), "little") * 1024
