"""What the validation gate produces: one CheckResult row per comparison, gathered in a report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# The checks, in the order they run (and are reported).
CHECKS = ("onnx_checker", "dynamic_axes", "sidecar", "torch_vs_ort", "incremental_vs_full", "greedy_generation")


@dataclass(frozen=True)
class ValidateConfig:
    atol: float = 1e-4                     # |ort - torch| <= atol + rtol * |torch|, elementwise
    rtol: float = 1e-3
    batches: tuple[int, ...] = (1, 3)      # shape grid for torch_vs_ort
    sequences: tuple[int, ...] = (1, 5)
    pasts: tuple[int, ...] = (0, 4)        # KV-cache lengths (gpt)
    generate_tokens: int = 32              # tokens torch and ORT must generate identically
    seed: int = 0
    module: str | None = None              # brought exports: FILE.py:FACTORY instead of the sidecar's
    tolerance: float = 0.02                # quantized exports: held-out bits <= fp32's * (1 + tolerance)

    def __post_init__(self):
        from seqserve.errors import SeqserveError

        if not (self.atol >= 0 and self.rtol >= 0):
            raise SeqserveError(f"tolerances must be >= 0, got atol={self.atol} rtol={self.rtol}")
        if not math.isfinite(self.tolerance):
            raise SeqserveError(f"--tolerance must be a finite number, got {self.tolerance}")
        if self.generate_tokens < 1:
            raise SeqserveError(f"tokens must be >= 1, got {self.generate_tokens}")
        if min((*self.batches, *self.sequences), default=0) < 1 or min(self.pasts, default=0) < 0:
            raise SeqserveError("the shape grid needs batch and sequence sizes >= 1 and past sizes >= 0")


@dataclass
class CheckResult:
    check: str                   # one of CHECKS
    graph: str                   # "full" | "step" | "full+step"
    case: str                    # e.g. "batch=3 sequence=5 past=4 output=logits"
    passed: bool
    max_abs: float | None = None  # the atol that would have passed with rtol=0
    max_rel: float | None = None  # largest |a-b|/|b| over non-zero reference values
    atol: float | None = None     # the tolerance the row was judged with
    rtol: float | None = None
    detail: str = ""              # why it failed, or short info


@dataclass
class ValidationReport:
    export: str
    family: str
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        # An empty report is a failure: a gate that checked nothing must not open.
        return bool(self.checks) and all(r.passed for r in self.checks)

    def rows(self, check: str) -> list[CheckResult]:
        return [r for r in self.checks if r.check == check]

    def summary(self) -> dict:
        out = {}
        for name in [*CHECKS, *sorted({r.check for r in self.checks} - set(CHECKS))]:
            rows = self.rows(name)
            if not rows:
                continue
            out[name] = {
                "passed": all(r.passed for r in rows),
                "rows": len(rows),
                "failed": sum(not r.passed for r in rows),
                "max_abs": _max(r.max_abs for r in rows),
                "max_rel": _max(r.max_rel for r in rows),
            }
        return out

    def to_json(self) -> dict:
        return {
            "export": self.export,
            "family": self.family,
            "passed": self.passed,
            "summary": _finite(self.summary()),
            "checks": [_finite(asdict(r)) for r in self.checks],
        }


def _max(values) -> float | None:
    vals = [v for v in values if v is not None]
    if any(not math.isfinite(v) for v in vals):
        return math.inf      # max() would drop a NaN depending on order; a NaN row means "unbounded"
    return max(vals) if vals else None


def _finite(d: dict) -> dict:
    # Strict JSON has no NaN/Infinity; the failing row's detail already says what was non-finite.
    def fix(v):
        if isinstance(v, dict):
            return _finite(v)
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return {k: fix(v) for k, v in d.items()}
