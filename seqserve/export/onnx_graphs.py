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
from seqserve.tasks import run_graph
from seqserve.tasks.signature import signature_problems
from seqserve.tasks.spec import GraphSpec, example_inputs

DEFAULTS = {"gpt": ("dynamo", 23), "transformer": ("dynamo", 23)}   # family -> (exporter, opset)
RECURRENT_DEFAULT = ("torchscript", 17)



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
    feeds = example_inputs(graph, {"batch": 2, "sequence": 3, "past_sequence": 5, "source_sequence": 7},
                           np.random.default_rng(0), model.spec().io.get("vocab_size"))
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
    """Check the ONNX graph's inputs/outputs against the spec (seqserve.tasks.signature) and name
    every axis as the spec does. Fails when a name, order, dtype or rank differs, a static size
    differs, or an axis the spec declares dynamic was fixed by the exporter."""
    path = Path(path)
    model = onnx.load(str(path))
    problems, _ = signature_problems(model.graph, graph, fix=True)
    if problems:
        raise SeqserveError(f"{path.name} does not match the task spec: " + "; ".join(problems))
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
