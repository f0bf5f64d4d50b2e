"""The validation gate: an export passes only if every check passes (Optimum merely warns).

    onnx_checker         onnx.checker (full_check) on each graph; unreadable files fail, not crash
    dynamic_axes         every axis the spec calls dynamic is dynamic in the ONNX file; names, dtypes
    sidecar              seqserve.json's tokenizer and spec == the checkpoint's; vocabulary == logits
    torch_vs_ort         torch eager vs ONNX Runtime on the same random feeds, over a shape grid
    incremental_vs_full  step graph fed token by token / in chunks == the full graph, per position
    greedy_generation    greedy decoding through torch and ORT yields identical token ids

A quantized export (`quantize` in the sidecar) replaces torch_vs_ort with the quantization cost and
runs the fp32 rows on the graphs it keeps (validate/quantized.py).
"""

from __future__ import annotations

from pathlib import Path

from seqserve.export import load_export
from seqserve.validate import encdec, labelled, parity, quantized, seq2seq, static
from seqserve.validate.report import render_report
from seqserve.validate.results import CHECKS, CheckResult, ValidateConfig, ValidationReport
from seqserve.validate.target import Target

_RUN = {
    "onnx_checker": (static.onnx_checker, "checking full.onnx and step.onnx with onnx.checker"),
    "dynamic_axes": (static.dynamic_axes, "checking graph inputs/outputs and dynamic axes against the spec"),
    "sidecar": (static.sidecar, "checking seqserve.json against the checkpoint it ships"),
    "torch_vs_ort": (parity.torch_vs_ort, "comparing torch and ONNX Runtime outputs over the shape grid"),
    "incremental_vs_full": (parity.incremental_vs_full, "comparing step-by-step decoding with the full graph"),
    "greedy_generation": (parity.greedy_generation, "comparing greedy generation, torch vs ONNX Runtime"),
}

# Per task: a check run differently (name -> (fn, message)), or not at all (None).
_BY_TASK = {
    task: {"sidecar": (labelled.sidecar, "checking seqserve.json's labels and examples against the graphs"),
           "incremental_vs_full": (labelled.incremental_vs_full,
                                   "comparing the step graph chunk by chunk with the full graph"),
           "greedy_generation": None}
    for task in ("classify", "tag")
}
# The encoder-decoder task: the shape grid over sources, the chain from the encoder (and a padded
# source == it alone), beams (encdec.py, seq2seq.py).
_BY_TASK["seq2seq"] = {
    "sidecar": (seq2seq.sidecar, "checking seqserve.json, its source characters and examples"),
    "torch_vs_ort": (encdec.torch_vs_ort, "comparing torch and ONNX Runtime over sources and targets"),
    "incremental_vs_full": (seq2seq.incremental_vs_full, "comparing encoder once + decoder steps with the full graph"),
    "greedy_generation": (encdec.greedy_generation, "comparing generation (greedy, sampled, beams) torch vs ORT"),
}


def validate_export(path: str | Path, config: ValidateConfig = ValidateConfig(), progress=None) -> ValidationReport:
    """Run every check on an export folder. Raises SeqserveError only if the folder is unreadable."""
    info = load_export(path)
    target = Target(info, config)
    rows: list[CheckResult] = []
    checks = {**_RUN, **_BY_TASK.get(info.task, {}), **(quantized.CHECKS if info.quantized else {})}
    for name in CHECKS:
        if checks[name] is None:
            continue
        fn, message = checks[name]
        if progress:
            progress(message)
        rows += fn(target)   # checks turn every per-graph failure into rows; onnx_checker must go first
    return ValidationReport(str(info.path), info.family, rows)


__all__ = ["CHECKS", "CheckResult", "ValidateConfig", "ValidationReport", "render_report", "validate_export"]
