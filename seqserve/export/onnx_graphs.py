"""torch -> ONNX for one graph of a family spec, then the checks the exporters need.

Exporter choice per family (measured with torch 2.13, see DESIGN.md):
- recurrent (rnn/lstm/gru): the TorchScript exporter maps nn.RNN/LSTM/GRU to native ONNX
  RNN/LSTM/GRU ops with named dynamic axes. The dynamo exporter unrolls nn.RNN and silently fixes
  the sequence length.
- gpt: the dynamo exporter at opset 23 maps scaled_dot_product_attention to ONNX `Attention`.
Whatever the exporter, `conform_dims` then fails loudly if any axis the spec calls dynamic came out
static, and names every axis as the spec does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from seqserve.errors import SeqserveError
from seqserve.export.optimize import optimize_graph
from seqserve.dtypes import ONNX_OF_NUMPY
from seqserve.tasks import run_graph
from seqserve.tasks.spec import GraphSpec, example_inputs

DEFAULTS = {"gpt": ("dynamo", 23)}          # family -> (exporter, opset)
RECURRENT_DEFAULT = ("torchscript", 17)

_ONNX_DTYPES = ONNX_OF_NUMPY      # numpy name -> ONNX element type (seqserve/dtypes.py)


class GraphModule(torch.nn.Module):
    """Positional tensors in spec order -> tuple of outputs in spec order (what exporters want)."""

    def __init__(self, model, graph: GraphSpec):
        super().__init__()
        self.model, self.graph = model, graph
        self.spec = model.spec()

    def forward(self, *args):
        out = run_graph(self.model, self.spec, self.graph, dict(zip(self.graph.input_names, args)))
        return tuple(out[n] for n in self.graph.output_names)


def export_graph(model, graph: GraphSpec, path, exporter: str, opset: int) -> None:
    # Distinct, >1 example sizes: torch.export specializes sizes 0/1 and unifies equal sizes.
    feeds = example_inputs(graph, {"batch": 2, "sequence": 3, "past_sequence": 5},
                           np.random.default_rng(0))
    args = tuple(torch.from_numpy(feeds[n]) for n in graph.input_names)
    module = GraphModule(model, graph).eval()
    kwargs = dict(input_names=graph.input_names, output_names=graph.output_names, opset_version=opset)
    quiet = io.StringIO()
    with warnings.catch_warnings(), _quiet_torch_logs(), contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = (tuple(t.dynamic_axes or None for t in graph.inputs),)
            torch.onnx.export(module, args, str(path), dynamic_shapes=shapes, dynamo=True,
                              external_data=False, **kwargs)
        elif exporter == "torchscript":
            axes = {t.name: t.dynamic_axes for t in graph.inputs + graph.outputs if t.dynamic_axes}
            torch.onnx.export(module, args, str(path), dynamic_axes=axes, dynamo=False, **kwargs)
        else:
            raise SeqserveError(f"unknown exporter {exporter!r}; expected dynamo or torchscript")
    optimize_graph(path, graph)


def conform_dims(path, graph: GraphSpec) -> None:
    """Check the ONNX graph's inputs/outputs against the spec; name every dynamic axis as the spec.

    Fails when a name, dtype or rank differs, a static size differs, or an axis the spec declares
    dynamic was fixed by the exporter (the dynamo trap with vanilla RNNs).
    """
    path = Path(path)
    model = onnx.load(str(path))
    problems = []
    for kind, values, specs in (("input", model.graph.input, graph.inputs),
                                ("output", model.graph.output, graph.outputs)):
        names = [v.name for v in values]
        if names != [t.name for t in specs]:
            raise SeqserveError(f"{path.name}: graph {kind}s are {names}; the spec expects {[t.name for t in specs]}")
        for v, t in zip(values, specs):
            tt = v.type.tensor_type
            if tt.elem_type != _ONNX_DTYPES[t.dtype]:
                problems.append(f"{kind} {t.name} has ONNX dtype {tt.elem_type}; expected {t.dtype}")
            dims = tt.shape.dim
            if len(dims) != len(t.dims):
                problems.append(f"{kind} {t.name} has rank {len(dims)}; expected {len(t.dims)}")
                continue
            for i, (d, want) in enumerate(zip(dims, t.dims)):
                if isinstance(want, int):
                    if d.HasField("dim_value") and d.dim_value != want:
                        problems.append(f"{kind} {t.name} axis {i} is {d.dim_value}; expected {want}")
                    d.dim_value = want
                elif d.HasField("dim_value"):
                    problems.append(f"{kind} {t.name} axis {i} should be dynamic ({want}) but the "
                                    f"exporter fixed it to {d.dim_value}")
                else:
                    d.dim_param = want
    if problems:
        raise SeqserveError(f"{path.name} does not match the family spec: " + "; ".join(problems))
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet_torch_logs():
    # The exporters log about optional packages (torchvision) and deprecations at WARNING.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
