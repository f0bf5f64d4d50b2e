"""Graph specs: the one description of a model family's ONNX graphs.

A family's spec says, once, everything the rest of seqserve needs: tensor names, dtypes, dims
(ints are static, strings name dynamic axes), and which outputs feed which inputs on the next
step (state pairs). The exporter, the validator, the runtime cache and (later) the Triton config
writer and the server all read it; it is written into the export sidecar so none of them needs
torch or the model code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Named dynamic axes, shared by every family so tools can reason about them.
BATCH = "batch"
SEQ = "sequence"          # new tokens in this call
PAST = "past_sequence"    # tokens already in a KV cache
TOTAL = "total_sequence"  # past + new (attention mask, present KV)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                    # numpy dtype name: "int64", "float32"
    dims: tuple[int | str, ...]   # int = static size, str = named dynamic axis

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str)}


@dataclass(frozen=True)
class StatePair:
    """An output that becomes an input on the next step (RNN h/c, one KV-cache tensor)."""

    input: str                   # e.g. "past_key_values.0.key" / "past_hidden"
    output: str                  # e.g. "present.0.key" / "present_hidden"
    seq_axis: int | None = None  # axis that grows by S each step (KV cache); None: fixed size


@dataclass(frozen=True)
class GraphSpec:
    name: str                          # "full" or "step"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    state: tuple[StatePair, ...] = ()

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name)

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
        return "attention_mask" in self.input_names


@dataclass(frozen=True)
class FamilySpec:
    family: str
    full: GraphSpec
    step: GraphSpec
    extra: dict = field(default_factory=dict)  # per-family facts (layers, heads, ...)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "FamilySpec":
        def graph(g: dict) -> GraphSpec:
            return GraphSpec(
                name=g["name"],
                inputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in g["inputs"]),
                outputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in g["outputs"]),
                state=tuple(StatePair(**p) for p in g.get("state", ())),
            )

        return FamilySpec(d["family"], graph(d["full"]), graph(d["step"]), d.get("extra", {}))


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


def example_inputs(graph: GraphSpec, sizes: dict[str, int], rng) -> dict:
    """Valid random feeds for a graph: ids in the vocabulary, all-ones mask, right positions."""
    import numpy as np

    vocab = graph.output("logits").dims[-1]
    past = sizes.get(PAST, 0)
    feeds = {}
    for t in graph.inputs:
        shape = resolve_dims(t, sizes)
        if t.name == "input_ids":
            feeds[t.name] = rng.integers(0, vocab, shape, dtype=np.int64)
        elif t.name == "attention_mask":
            feeds[t.name] = np.ones(shape, dtype=np.int64)
        elif t.name == "position_ids":
            feeds[t.name] = np.broadcast_to(np.arange(past, past + shape[1], dtype=np.int64), shape).copy()
        else:
            feeds[t.name] = (0.5 * rng.standard_normal(shape)).astype(t.dtype)
    return feeds
