"""The torch backend of the decoding loop: the same named-tensor step, run in PyTorch eager."""

from __future__ import annotations

import numpy as np
import torch

from seqserve.spec import GraphSpec


class TorchBackend:
    name = "torch"

    def __init__(self, model, graph: str = "step"):
        self.model = model.eval()
        spec = model.spec()
        self.spec: GraphSpec = spec.step if graph == "step" else spec.full

    @torch.inference_mode()
    def run(self, feeds: dict) -> dict:
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        if self.spec.name == "full":
            return {"logits": self.model(t["input_ids"]).numpy()}
        return {k: v.numpy() for k, v in self.model.run_step(t).items()}

    def to_host(self, value) -> np.ndarray:
        return value

    def from_host(self, array: np.ndarray):
        return array

    @classmethod
    def from_export(cls, export_info, graph: str = "step") -> "TorchBackend":
        from seqserve.checkpoint import load_checkpoint

        return cls(load_checkpoint(export_info.checkpoint_path).model, graph)
