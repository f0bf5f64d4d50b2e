"""The torch side of an export: the model its graphs were exported from.

A checkpoint export ships `checkpoint/` (seqserve's own families); a brought module's export
records where the module came from (sidecar "source") and ships the exported weights, which
go back into the re-imported module (seqserve.adapters.load_source_model).
"""

from __future__ import annotations


def load_torch_model(info, module: str | None = None):
    """-> the nn.Module implementing the model interface (seqserve/adapters/protocol.py), eval mode.
    module: FILE.py:FACTORY to re-import instead of the sidecar's (brought exports only)."""
    if "source" in info.raw:
        from seqserve.adapters import load_source_model

        return load_source_model(info, module).eval()
    from seqserve.checkpoint import load_checkpoint

    return load_checkpoint(info.checkpoint_path).model
