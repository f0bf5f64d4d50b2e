"""int8 quantization of an export's graphs (`seqserve export --quantize int8`), ONNX Runtime's tools.

Layout: the fp32 graphs stay (`full.onnx`, `step.onnx`: the reference the gate compares with) and
each gets a quantized sibling (`full.int8.onnx`, ...). The sidecar's `graphs` name the quantized
files (what `ExportInfo.graph_path`, the ORT backend, `package` and the servers use),
`fp32_graphs` the originals, `quantize` the method and `quantization` what was done per graph;
`heldout.txt` is held-out text from the corpus the checkpoint trained on, for the gate's cost row.

Methods (measured, ORT 1.31, GPT small decode at batch 1 on 2 cores; see DESIGN.md):

    int8         quantize_dynamic, QInt8 weights per tensor: MatMul with a constant weight becomes
                 DynamicQuantizeLinear + MatMulInteger (standard ONNX ops; ORT fuses them into
                 DynamicQuantizeMatMul), native LSTM becomes com.microsoft DynamicQuantizeLSTM. The
                 fastest measured (QUInt8 and per-channel were 5-20% slower, no more accurate). The
                 activation scale is computed per call over the whole tensor: a row's result
                 depends slightly on the other rows of its batch and on the chunking.
    int8-block   MatMulNBits, 8-bit weights in blocks of 32, accuracy level 4 (int8 compute with
                 per-row, per-block activation scales: a row's result does not depend on its batch);
                 ~10% slower than int8 at batch 1. LSTM as int8.

GRU and RNN ops have no dynamic-quantization path in ONNX Runtime (its IntegerOps registry: Conv,
MatMul, com.microsoft Attention, LSTM, Gather, ...), nor has Gemm: those stay fp32, and the
sidecar says so per graph.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import onnx

from seqserve.errors import SeqserveError

METHODS = ("int8", "int8-block")
HELDOUT_FILE = "heldout.txt"
HELDOUT_CHARS = 8192
QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
                 "MatMulNBits", "QuantizeLinear", "DequantizeLinear"}
_WEIGHT_OPS = ("MatMul", "Gemm", "LSTM", "GRU", "RNN")   # ops whose weights could be int8


def check_method(method: str | None, task: str) -> None:
    if method is None:
        return
    if method not in METHODS:
        raise SeqserveError(f"unknown --quantize {method!r}; expected one of {', '.join(METHODS)}")
    if task != "causal-lm":
        raise SeqserveError(f"--quantize supports causal-lm exports (its gate measures held-out bits per token); "
                            f"this is a {task} model")


def quantized_name(graph: str) -> str:
    return f"{graph}.int8.onnx"


def quantize_graph(src: Path, dst: Path, method: str) -> dict:
    """Write the quantized `dst` from the fp32 `src`; returns what was quantized and what stayed fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    before = _weight_ops(src)
    quiet = (logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer"))
    levels = [q.level for q in quiet]
    for q in quiet:                  # the tools log a "please pre-process" warning per call
        q.setLevel(logging.ERROR)
    try:
        if method == "int8-block":
            from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                        MatMulNBitsQuantizer)

            q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=DefaultWeightOnlyQuantConfig(
                block_size=32, is_symmetric=True, accuracy_level=4, bits=8))
            q.process()
            q.model.save_model_to_file(str(dst), False)
            if before.get("LSTM"):
                quantize_dynamic(dst, dst, op_types_to_quantize=["LSTM"], weight_type=QuantType.QInt8)
        else:
            quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "LSTM"], weight_type=QuantType.QInt8,
                             per_channel=False, extra_options={"MatMulConstBOnly": True})
    except Exception as e:   # the tools raise assorted types; say which graph
        raise SeqserveError(f"quantizing {src.name} ({method}) failed: {' '.join(str(e).split())[:300]}") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    model = onnx.load(str(dst), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    int8 = {k: v for k, v in sorted(ops.items()) if k in QUANTIZED_OPS}
    if not int8:
        raise SeqserveError(f"quantizing {src.name} changed nothing: no MatMul with constant weights and no LSTM")
    return {"file": dst.name, "quantized_ops": int8,
            "fp32_weight_ops": {k: v for k, v in sorted(ops.items()) if k in _WEIGHT_OPS},
            "bytes_fp32": src.stat().st_size, "bytes": dst.stat().st_size}


def _weight_ops(path: Path) -> Counter:
    model = onnx.load(str(path), load_external_data=False)
    return Counter(n.op_type for n in model.graph.node if n.op_type in _WEIGHT_OPS)


def heldout_text(training: dict | None, chars: int = HELDOUT_CHARS) -> tuple[str | None, str]:
    """(held-out text, where it came from) from the checkpoint's training record: the validation
    split of the corpus it trained on, read the way training read it (seqserve.data.load_corpus);
    (None, why) when the record names none or the corpus is no longer there."""
    cfg = (training or {}).get("config") or {}
    if not cfg or "max_corpus_bytes" not in cfg:
        return None, "the checkpoint has no training record naming its corpus"
    from seqserve.data import load_corpus

    try:
        corpus = load_corpus(cfg.get("corpus"), cfg["max_corpus_bytes"])
    except SeqserveError as e:
        return None, f"the training corpus cannot be read: {e}"
    if len(corpus.val) < 64:
        return None, f"the training corpus has only {len(corpus.val)} held-out characters"
    return corpus.val[:chars], f"validation split of {corpus.source} (first {min(chars, len(corpus.val))} characters)"


def quantize_export(tmp: Path, spec, method: str, training: dict | None, tokenizer, progress=None) -> dict:
    """Quantize every graph in the export folder `tmp` (fp32 graphs already checked); returns the
    sidecar fields (graphs -> quantized files, fp32_graphs, quantize, quantization)."""
    per_graph = {}
    for name in spec.graphs:
        if progress:
            progress(f"quantizing {name} graph ({method})")
        dst = tmp / quantized_name(name)
        per_graph[name] = quantize_graph(tmp / f"{name}.onnx", dst, method)
        onnx.checker.check_model(str(dst), full_check=True)
    text, source = heldout_text(training)
    if text is not None:
        try:
            tokenizer.encode(text)
        except SeqserveError as e:
            text, source = None, f"the held-out text does not encode with the export's tokenizer: {e}"
    heldout = {"file": None, "why": source}
    if text is not None:
        (tmp / HELDOUT_FILE).write_text(text, encoding="utf-8")
        heldout = {"file": HELDOUT_FILE, "source": source, "chars": len(text)}
    from onnxruntime import __version__ as ort_version

    detail = {"int8": {"tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                       "per_channel": False, "op_types": ["MatMul", "LSTM"], "MatMulConstBOnly": True},
              "int8-block": {"tool": "onnxruntime.quantization.MatMulNBitsQuantizer", "bits": 8, "block_size": 32,
                             "accuracy_level": 4, "symmetric": True, "lstm": "quantize_dynamic QInt8"}}[method]
    return {"graphs": {name: g["file"] for name, g in per_graph.items()},
            "fp32_graphs": {name: f"{name}.onnx" for name in spec.graphs},
            "quantize": method,
            "quantization": {**detail, "onnxruntime": ort_version, "graphs": per_graph, "heldout": heldout}}
