"""Task specs: the one description of what a model's ONNX graphs are and how they chain.

A task is a set of named graphs and how they chain. Each graph says when it runs (`once` per
sequence: an encoder, an `init` from features; `step`: once per new token or chunk, carrying
state; `full`: the whole sequence at once, teacher-forced) and its tensors — name, dtype, dims
(ints are static, strings name dynamic axes) and a **role** (token ids, mask, positions, state,
logits, ...), so readers find tensors by role, not by spelling. State pairs say which outputs
feed which inputs of the same graph on the next step (growing along `seq_axis`: a KV cache; or
fixed: RNN h/c). The task module (seqserve/tasks/<task>.py) writes the graph and tensor names
once; a family supplies dimensions. The spec goes into the export sidecar, so the exporter, the
validator, the decoding loop, the Triton config writer, the servers and the load tester read it
without torch or model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

# Named dynamic axes, shared by every task so tools can reason about them.
BATCH = "batch"
SEQ = "sequence"          # new tokens in this call
PAST = "past_sequence"    # tokens already in a KV cache
TOTAL = "total_sequence"  # past + new (attention mask, present KV)
SOURCE = "source_sequence"  # an encoder's source positions (source ids and mask, cross K/V)

# Tensor roles. Readers look tensors up by these; names are the task's business.
TOKENS = "token_ids"            # int64 [B, S]: the tokens a graph consumes
MASK = "attention_mask"         # int64 [B, TOTAL]: 1 = a real position
POSITIONS = "position_ids"      # int64 [B, S]: each new token's position
STATE = "state"                 # carried step to step (a StatePair's input or output)
LOGITS = "logits"               # float [B, S, V]: next-token scores
CLASS_LOGITS = "class_logits"   # float [B, C]: one score per class (many-to-one)
TAG_LOGITS = "tag_logits"       # float [B, S, T]: one score per tag and token (many-to-many)
FEATURES = "features"           # float [B, F]: a vector that conditions generation
SOURCE_TOKENS = "source_ids"    # int64 [B, SRC]: an encoder's input tokens
SOURCE_MASK = "source_mask"     # int64 [B, SRC]: 1 = a real source position
CONSTANT = "constant"           # computed once per sequence by a `once` graph, fed to every step
ATTENTION = "attention_weights" # float [B, S, SRC]: where each new token attended
ROLES = (TOKENS, MASK, POSITIONS, STATE, LOGITS, CLASS_LOGITS, TAG_LOGITS, FEATURES, SOURCE_TOKENS,
         SOURCE_MASK, CONSTANT, ATTENTION)

# What a task's head does with the last graph's output.
GENERATE, CLASSIFY, TAG = "generate", "classify", "tag"
HEADS = (GENERATE, CLASSIFY, TAG)

# The names a KV-cache graph gives its mask and positions (state_tensors writes them).
MASK_NAME, POSITIONS_NAME = "attention_mask", "position_ids"

# Task names older exports were written with -> the task they are now (two tasks became one).
TASK_ALIASES = {"translate": "seq2seq"}

# When a graph runs in a task's chain.
ONCE, STEP, FULL = "once", "step", "full"
RUNS = (ONCE, STEP, FULL)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                    # numpy dtype name: "int64", "float32"
    dims: tuple[int | str, ...]   # int = static size, str = named dynamic axis
    role: str = ""                # one of ROLES ("" = none the readers look for)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str)}


@dataclass(frozen=True)
class StatePair:
    """An output that becomes an input on the next step (RNN h/c, one KV-cache tensor)."""

    input: str                   # e.g. "past_key_values.0.key" / "past_hidden"
    output: str                  # e.g. "present.0.key" / "present_hidden"
    seq_axis: int | None = None  # axis that grows by S each step (KV cache); None: fixed size
    # A preallocated buffer (static size along seq_axis: the task's extra["kv_cache_length"]) that
    # the graph updates in place: bind the SAME memory as input and output. Row b holds its tokens
    # at 0 .. length_b - 1 (no padding), length_b = position_ids[b, 0]; the rest is never read.
    in_place: bool = False


@dataclass(frozen=True)
class GraphSpec:
    name: str                          # the graph's name in its task ("full", "step", ...)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: tuple[StatePair, ...] = ()
    runs: str = STEP                   # ONCE | STEP | FULL: its place in the task's chain

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name)

    def role(self, role: str) -> TensorSpec | None:
        """The input or output with this role (the first one), or None."""
        return next((t for t in (*self.inputs, *self.outputs) if t.role == role), None)

    @cached_property
    def roles(self) -> dict[str, str | None]:
        """role -> name of the first tensor with it (None if none); built once per spec, as the
        decoding loop asks once per token."""
        found: dict[str, str | None] = dict.fromkeys(ROLES)
        for t in reversed((*self.inputs, *self.outputs)):
            if t.role:
                found[t.role] = t.name
        return found

    def name_of(self, role: str) -> str:
        """The name of the tensor with this role; KeyError if the graph has none."""
        name = self.roles.get(role)
        if name is None:
            raise KeyError(f"graph {self.name!r} has no {role} tensor")
        return name

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def state_inputs(self) -> set[str]:
        return {p.input for p in self.state}

    @property
    def has_attention_mask(self) -> bool:
        return any(t.role == MASK for t in self.inputs)


@dataclass(frozen=True)
class TaskSpec:
    """A model's task: its graphs by name, in chain order, what its head does, and per-family facts.

    The chain: every `once` graph runs first, once per sequence (an encoder over the source, an
    `init` from a feature vector); its outputs feed the graphs after it by name: into a step
    graph's state inputs (an initial state) or into inputs with role CONSTANT (encoder outputs,
    cross-attention K/V: the same for every step). Then the `step` graph runs per new token or
    chunk, carrying its state pairs. A `full` graph computes the same as the chain at once.
    """

    task: str                                  # "causal-lm", ...
    family: str                                # the family that built it: "lstm", "gpt", ...
    graphs: dict[str, GraphSpec]               # name -> graph, in the order the chain runs them
    extra: dict = field(default_factory=dict)  # per-family facts (layers, heads, max_seq_len, ...)
    head: str = GENERATE                       # GENERATE | CLASSIFY | TAG
    io: dict = field(default_factory=dict)     # {"labels": [...]} (classify, tag), {"features": F}

    @property
    def once(self) -> list[GraphSpec]:
        return [g for g in self.graphs.values() if g.runs == ONCE]

    def links(self) -> list[tuple[str, str, str]]:
        """(from graph, tensor name, to graph): an output of a `once` graph that a later graph
        takes as an input of the same name."""
        out, seen = [], []
        for g in self.graphs.values():
            for t in g.inputs:
                for src in seen:
                    if t.name in src.output_names:
                        out.append((src.name, t.name, g.name))
            if g.runs == ONCE:
                seen.append(g)
        return out

    def graph(self, name: str) -> GraphSpec:
        if name not in self.graphs:
            raise KeyError(f"task {self.task!r} has no graph {name!r}; it has {list(self.graphs)}")
        return self.graphs[name]

    def runs(self, when: str) -> GraphSpec:
        """The graph that runs `when` (ONCE | STEP | FULL); KeyError if none."""
        for g in self.graphs.values():
            if g.runs == when:
                return g
        raise KeyError(f"task {self.task!r} has no graph that runs {when!r}")

    # The two graphs every current task has, found by when they run (not by name).
    @property
    def full(self) -> GraphSpec:
        return self.runs(FULL)

    @property
    def step(self) -> GraphSpec:
        return self.runs(STEP)

    def to_json(self) -> dict:
        def tensor(t: TensorSpec) -> dict:
            return {"name": t.name, "dtype": t.dtype, "dims": list(t.dims), "role": t.role}

        return {"task": self.task, "family": self.family, "extra": self.extra, "head": self.head, "io": self.io,
                "graphs": {n: {"name": g.name, "runs": g.runs,
                               "inputs": [tensor(t) for t in g.inputs],
                               "outputs": [tensor(t) for t in g.outputs],
                               "state": [{"input": p.input, "output": p.output, "seq_axis": p.seq_axis,
                                          **({"in_place": True} if p.in_place else {})}
                                         for p in g.state]}
                           for n, g in self.graphs.items()}}

    @staticmethod
    def from_json(d: dict) -> "TaskSpec":
        if "graphs" not in d:                # seqserve-export/1: {"family", "full", "step", "extra"}
            return _from_v1(d)

        def tensors(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"]), t.get("role", "")) for t in items)

        graphs = {n: GraphSpec(g["name"], tensors(g["inputs"]), tensors(g["outputs"]),
                               tuple(StatePair(**p) for p in g.get("state", ())), g.get("runs", STEP))
                  for n, g in d["graphs"].items()}
        task = TASK_ALIASES.get(d["task"], d["task"])
        return TaskSpec(task, d["family"], graphs, d.get("extra", {}), d.get("head", GENERATE), d.get("io", {}))


def _from_v1(d: dict) -> TaskSpec:
    """Exports and repositories written before tasks: causal-lm, roles given by the names that
    format used (input_ids, attention_mask, position_ids, logits, state pairs)."""
    by_name = {"input_ids": TOKENS, "attention_mask": MASK, "position_ids": POSITIONS, "logits": LOGITS}

    def graph(g: dict, runs: str) -> GraphSpec:
        state = tuple(StatePair(**p) for p in g.get("state", ()))
        stateful = {p.input for p in state} | {p.output for p in state}

        def tensors(items):
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"]),
                                    STATE if t["name"] in stateful else by_name.get(t["name"], ""))
                         for t in items)
        return GraphSpec(g["name"], tensors(g["inputs"]), tensors(g["outputs"]), state, runs)

    return TaskSpec("causal-lm", d["family"], {"full": graph(d["full"], FULL), "step": graph(d["step"], STEP)},
                    d.get("extra", {}))


def state_tensors(state: list[tuple[str, str, tuple, int | None]]):
    """A step graph's state from (input name, output name, dims of the input, seq_axis) per pair
    -> (past inputs, present outputs, StatePairs, positional inputs). A KV cache (seq_axis set)
    grows along that axis: its output's dim there is total_sequence, and the step then takes
    attention_mask [B, TOTAL] and position_ids [B, SEQ] (positional; () for fixed-size state)."""
    past, present, pairs = [], [], []
    for name_in, name_out, dims, seq_axis in state:
        out_dims = dims if seq_axis is None else (*dims[:seq_axis], TOTAL, *dims[seq_axis + 1:])
        past.append(TensorSpec(name_in, "float32", tuple(dims), STATE))
        present.append(TensorSpec(name_out, "float32", tuple(out_dims), STATE))
        pairs.append(StatePair(name_in, name_out, seq_axis))
    growing = any(p.seq_axis is not None for p in pairs)
    positional = (TensorSpec(MASK_NAME, "int64", (BATCH, TOTAL), MASK),
                  TensorSpec(POSITIONS_NAME, "int64", (BATCH, SEQ), POSITIONS)) if growing else ()
    return tuple(past), tuple(present), tuple(pairs), positional


def _by_name(tensors: tuple[TensorSpec, ...], name: str) -> TensorSpec:
    for t in tensors:
        if t.name == name:
            return t
    raise KeyError(f"no tensor named {name!r}; have {[t.name for t in tensors]}")


def resolve_dims(t: TensorSpec, sizes: dict[str, int]) -> tuple[int, ...]:
    """Concrete shape from named sizes; total_sequence defaults to past + sequence."""
    sizes = {PAST: 0, **sizes}
    sizes.setdefault(TOTAL, sizes[PAST] + sizes[SEQ])
    return tuple(d if isinstance(d, int) else sizes[d] for d in t.dims)


def example_inputs(graph: GraphSpec, sizes: dict[str, int], rng, vocab: int | None = None) -> dict:
    """Valid random feeds for a graph, by role: token ids in the vocabulary, an all-ones mask,
    the right positions, small random floats for everything else (state). vocab: the token ids'
    range; None: the graph's LOGITS width (a graph without LOGITS, a classifier's, needs it given:
    the task's io["vocab_size"])."""
    import numpy as np

    if vocab is None and graph.role(TOKENS) is not None:
        if graph.role(LOGITS) is None:
            raise ValueError(f"graph {graph.name!r} has token ids but no logits to size them by; pass vocab")
        vocab = graph.role(LOGITS).dims[-1]
    past = sizes.get(PAST, 0)
    in_place = {p.input: p.seq_axis for p in graph.state if p.in_place}
    feeds = {}
    for t in graph.inputs:
        shape = resolve_dims(t, sizes)
        if t.role in (TOKENS, SOURCE_TOKENS):
            feeds[t.name] = rng.integers(0, vocab, shape, dtype=np.int64)
        elif t.role in (MASK, SOURCE_MASK):
            feeds[t.name] = np.ones(shape, dtype=np.int64)
        elif t.role == POSITIONS:
            feeds[t.name] = np.broadcast_to(np.arange(past, past + shape[1], dtype=np.int64), shape).copy()
        else:
            feeds[t.name] = (0.5 * rng.standard_normal(shape)).astype(t.dtype)
            if t.name in in_place:           # an in-place buffer holds `past` tokens, zeros after them
                idx = [slice(None)] * len(shape)
                idx[in_place[t.name]] = slice(past, None)
                feeds[t.name][tuple(idx)] = 0
    return feeds
