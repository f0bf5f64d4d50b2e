"""Export a checkpoint to ONNX: the full-sequence graph, the incremental (step) graph, a sidecar.

    EXPORT/full.onnx          input_ids -> logits
    EXPORT/step.onnx          input_ids + state -> logits + next state (KV cache for gpt)
    EXPORT/seqserve.json      family spec, tokenizer, versions, options
    EXPORT/checkpoint/        the source weights (for torch-side validation and the torch backend)

The folder is written to a temporary sibling and renamed into place, so a failed export leaves a
previous export at the same path intact.

Reading an export (`load_export`, `ExportInfo`: seqserve.export.sidecar) needs no torch; writing one
(`export_checkpoint`: seqserve.export.exporter) does, and is imported only when asked for, so the
servers and Triton's python-backend stub never load torch.
"""

from __future__ import annotations

from seqserve.export.sidecar import ExportInfo, load_export

__all__ = ["ExportInfo", "ExportOptions", "export_checkpoint", "load_export"]


def __getattr__(name: str):
    if name in ("ExportOptions", "export_checkpoint"):
        from seqserve.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'seqserve.export' has no attribute {name!r}")
