"""The torch backend of the decoding loop: the same named-tensor step, run in PyTorch eager."""

from __future__ import annotations

import numpy as np
import torch

from seqserve.errors import SeqserveError
from seqserve.tasks import run_graph
from seqserve.tasks.spec import GraphSpec


class TorchBackend:
    name = "torch"

    def __init__(self, model, graph: str = "step", device: str = "cpu", task=None):
        """task: the export's TaskSpec when it lays the graph out differently from model.spec()
        (an in-place KV cache: tasks/causal_lm.in_place_spec); default the model's own."""
        if device not in ("cpu", "cuda"):
            raise SeqserveError(f"unknown device {device!r}; expected cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise SeqserveError("--device cuda was asked for but this torch build sees no CUDA GPU")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.task = task or model.spec()
        self.spec: GraphSpec = self.task.graph(graph)

    @torch.inference_mode()
    def run(self, feeds: dict) -> dict:
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feeds.items()}
        return {k: v.cpu().numpy() for k, v in run_graph(self.model, self.task, self.spec, t).items()}

    def to_host(self, value) -> np.ndarray:
        return value

    def from_host(self, array: np.ndarray):
        return array

    @classmethod
    def from_export(cls, export_info, graph: str = "step", device: str = "cpu") -> "TorchBackend":
        from seqserve.export.torch_model import load_torch_model

        static = export_info.spec.extra.get("kv_cache") == "static"
        return cls(load_torch_model(export_info), graph, device, export_info.spec if static else None)
