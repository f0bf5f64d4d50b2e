"""The one ONNX-vs-spec signature check: an ONNX graph's inputs and outputs against a GraphSpec.

The exporter runs it with `fix=True` right after torch wrote the graph (then the spec's static
sizes and dynamic-axis names are written into the file: exporters name axes their own way); the
validator runs it read-only on the file it is given. Both report the same problems in the same
words: a missing or unexpected tensor, a dtype, a rank, a static size, an axis the spec calls
dynamic that the exporter fixed (the dynamo trap with vanilla RNNs), a dynamic axis named
otherwise than the spec (names tie axes together: every "batch" is one size).
"""

from __future__ import annotations

from seqserve.dtypes import NUMPY_OF_ONNX
from seqserve.tasks.spec import GraphSpec


def signature_problems(graph, spec: GraphSpec, fix: bool = False) -> tuple[list[str], int]:
    """graph: an onnx GraphProto. -> (problems, number of dynamic axes checked).

    fix=True (the exporter): inputs and outputs must also come in the spec's order, and every
    axis is set to the spec's static size or dynamic name where that is not a contradiction."""
    problems, n_dynamic = [], 0
    initializers = {i.name for i in graph.initializer}
    for kind, values, specs in (("input", graph.input, spec.inputs), ("output", graph.output, spec.outputs)):
        names = [v.name for v in values if v.name not in initializers]
        if fix and names != [t.name for t in specs]:
            problems.append(f"graph {kind}s are {names}; the spec expects {[t.name for t in specs]}")
            continue
        have = {v.name: v for v in values}
        extra = sorted(set(names) - {t.name for t in specs})
        if extra:
            problems.append(f"unexpected {kind}s {extra}")
        for t in specs:
            if t.name not in have:
                problems.append(f"{kind} {t.name} is missing")
                continue
            tt = have[t.name].type.tensor_type
            dtype = NUMPY_OF_ONNX.get(tt.elem_type, f"onnx type {tt.elem_type}")
            if dtype != t.dtype:
                problems.append(f"{kind} {t.name} is {dtype}; the spec says {t.dtype}")
            dims = tt.shape.dim if tt.HasField("shape") else []
            if len(dims) != len(t.dims):
                problems.append(f"{kind} {t.name} has rank {len(dims)}; the spec says {len(t.dims)}")
                continue
            for i, (d, want) in enumerate(zip(dims, t.dims)):
                if isinstance(want, int):
                    if d.HasField("dim_value") and d.dim_value != want or not (fix or d.HasField("dim_value")):
                        problems.append(f"{kind} {t.name} axis {i} is {_dim(d)}; the spec fixes it to {want}")
                    elif fix:
                        d.dim_value = want
                    continue
                n_dynamic += 1
                if d.HasField("dim_value"):
                    problems.append(f"{kind} {t.name} axis {i} ({want}) is fixed to {d.dim_value}; it must be "
                                    "dynamic")
                elif fix:
                    d.dim_param = want
                elif d.dim_param != want:
                    problems.append(f"{kind} {t.name} axis {i} is named {_dim(d)}; the spec names it {want!r}")
    return problems, n_dynamic


def _dim(d) -> str:
    return str(d.dim_value) if d.HasField("dim_value") else (repr(d.dim_param) if d.dim_param else "unnamed")
