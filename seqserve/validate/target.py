"""The export under validation and the guard that turns any failure into a failed row.

A graph that cannot be parsed or loaded is recorded once (in `Target.broken`) and every later row
that needs it fails with that reason, so one corrupt file does not hide what else is right or wrong.
"""

from __future__ import annotations

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.causal_lm import as_exported
from seqserve.validate.results import CheckResult, ValidateConfig


class Unusable(Exception):
    """A row cannot run because something it needs (a graph, the torch model) is broken."""


class Target:
    """The export under validation, with lazily built (and cached) backends."""

    def __init__(self, info, config: ValidateConfig):
        self.info, self.config = info, config
        self.broken: dict[str, str] = {}        # graph or "torch" -> why it cannot be used
        self._ort: dict[str, object] = {}
        self._model = None

    @property
    def brought(self) -> bool:
        """A user's module (seqserve.adapters): the chain is also compared with its own forward."""
        return "source" in self.info.raw

    def full_refs(self, feeds: dict, output: str) -> dict:
        """What a chain must equal: the full graph in ONNX Runtime, and for a brought module also
        the user's own forward in torch (the full graph's torch side) -> {label: array}."""
        full = self.info.spec.full.name
        refs = {full: np.asarray(self.ort(full).run(feeds)[output])}
        if self.brought:
            refs["the user's forward (torch)"] = np.asarray(self.torch(full).run(feeds)[output])
        return refs

    def ort(self, graph: str):
        if graph in self.broken:
            raise Unusable(f"skipped: {self.broken[graph]}")
        if graph not in self._ort:
            from seqserve.runtime import ort_backend

            try:
                self._ort[graph] = ort_backend(self.info, graph)
            except SeqserveError as e:
                self.broken[graph] = str(e)
                raise Unusable(str(e)) from None
        return self._ort[graph]

    def torch(self, graph: str):
        if "torch" in self.broken:
            raise Unusable(f"skipped: {self.broken['torch']}")
        from seqserve.runtime.torch_backend import TorchBackend

        if self._model is None:
            from seqserve.export.torch_model import load_torch_model

            what = "the user's module" if "source" in self.info.raw else "the torch checkpoint"
            try:
                model = load_torch_model(self.info, self.config.module)
            except SeqserveError as e:
                self.broken["torch"] = f"{what} cannot be loaded: {e}"
                raise Unusable(self.broken["torch"]) from None
            if as_exported(model.spec(), self.info.spec) != self.info.spec:
                # Comparing against a different model would only produce confusing diffs.
                self.broken["torch"] = f"{what}'s spec differs from the export's seqserve.json"
                raise Unusable(self.broken["torch"])
            self._model = model
        return TorchBackend(self._model, graph, task=self.info.spec)


def guarded(check: str, graph: str, case: str, fn) -> list[CheckResult]:
    """Run fn() -> rows; any failure becomes one failed row (the gate reports, it does not crash)."""
    try:
        return fn()
    except Unusable as e:
        return [CheckResult(check, graph, case, False, detail=str(e))]
    except Exception as e:  # ORT/torch/onnx raise many types; all mean "this row failed"
        msg = " ".join(str(e).split())   # ORT puts the useful part (which index, got/expected) on line 2
        return [CheckResult(check, graph, case, False, detail=f"{type(e).__name__}: {msg}"[:500])]
