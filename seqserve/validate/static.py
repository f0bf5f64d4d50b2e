"""Checks on the ONNX files themselves: onnx.checker, and the graph signature against the spec."""

from __future__ import annotations

import onnx

from seqserve.dtypes import NUMPY_OF_ONNX
from seqserve.tasks.spec import LOGITS, GraphSpec
from seqserve.validate.results import CheckResult
from seqserve.validate.target import Target, Unusable, guarded


# 1. onnx_checker ---------------------------------------------------------------------------------

def onnx_checker(t: Target) -> list[CheckResult]:
    rows = []
    for g in t.info.spec.graphs:
        path = t.info.graph_path(g)
        why = _check_file(path)
        if why:
            # Later rows name the failed check; the reason itself is shown once, here.
            t.broken[g] = f"{path.name} failed onnx_checker"
        rows.append(CheckResult("onnx_checker", g, path.name, why is None,
                                detail=f"{path.name} is not a valid ONNX model: {why}" if why
                                else "check_model(full_check=True) passed"))
    return rows


def _check_file(path) -> str | None:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: truncated or not ONNX at all
        return f"cannot be parsed as ONNX protobuf (truncated or not an ONNX file): {_first_line(e)}"
    if not model.graph.node:
        # An empty or foreign protobuf can parse as an empty ModelProto.
        return "the file parses but holds no graph nodes (empty, truncated or not an ONNX file)"
    try:
        onnx.checker.check_model(str(path), full_check=True)   # full_check adds strict shape inference
    except Exception as e:
        return _first_line(e)
    return None


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


# 2. dynamic_axes ---------------------------------------------------------------------------------

_DTYPES = NUMPY_OF_ONNX      # ONNX element type -> numpy name (seqserve/dtypes.py)


def dynamic_axes(t: Target) -> list[CheckResult]:
    rows = []
    for g, spec in t.info.spec.graphs.items():
        case = f"{len(spec.inputs)} inputs, {len(spec.outputs)} outputs"
        rows += guarded("dynamic_axes", g, case, lambda: [_axes_row(t, g, spec, case)])
    return rows


def _axes_row(t: Target, g: str, spec: GraphSpec, case: str) -> CheckResult:
    if g in t.broken:
        raise Unusable(f"skipped: {t.broken[g]}")
    graph = onnx.load(str(t.info.graph_path(g)), load_external_data=False).graph
    problems, n_dynamic = [], 0
    for kind, values, specs in (("input", graph.input, spec.inputs), ("output", graph.output, spec.outputs)):
        have = {v.name: v for v in values}
        extra = sorted(set(have) - {s.name for s in specs} - {i.name for i in graph.initializer})
        if extra:
            problems.append(f"unexpected {kind}s {extra}")
        for s in specs:
            if s.name not in have:
                problems.append(f"{kind} {s.name} is missing")
                continue
            tt = have[s.name].type.tensor_type
            dtype = _DTYPES.get(tt.elem_type, f"onnx type {tt.elem_type}")
            if dtype != s.dtype:
                problems.append(f"{kind} {s.name} is {dtype}; the spec says {s.dtype}")
            dims = list(tt.shape.dim) if tt.HasField("shape") else []
            if len(dims) != len(s.dims):
                problems.append(f"{kind} {s.name} has rank {len(dims)}; the spec says {len(s.dims)}")
                continue
            for i, (d, want) in enumerate(zip(dims, s.dims)):
                if isinstance(want, int):
                    if not d.HasField("dim_value") or d.dim_value != want:
                        problems.append(f"{kind} {s.name} axis {i} is {_dim(d)}; the spec fixes it to {want}")
                    continue
                n_dynamic += 1
                if d.HasField("dim_value"):
                    problems.append(f"{kind} {s.name} axis {i} ({want}) is fixed to {d.dim_value}; it must be dynamic")
                elif d.dim_param != want:
                    # Names tie axes together (all "batch" axes are one size); the spec's names are the contract.
                    problems.append(f"{kind} {s.name} axis {i} is named {_dim(d)}; the spec names it {want!r}")
    if problems:
        return CheckResult("dynamic_axes", g, case, False, detail="; ".join(problems))
    return CheckResult("dynamic_axes", g, case, True,
                       detail=f"names and dtypes match; {n_dynamic} dynamic axes are dynamic")


def _dim(d) -> str:
    return str(d.dim_value) if d.HasField("dim_value") else (repr(d.dim_param) if d.dim_param else "unnamed")


# 2b. sidecar -------------------------------------------------------------------------------------

def sidecar(t: Target) -> list[CheckResult]:
    """seqserve.json agrees with the weights it ships: tokenizer, vocabulary size, family spec.

    Everything downstream (server, Triton configs, clients) trusts the sidecar; a tokenizer that
    drifted from the checkpoint would decode the right ids into the wrong text.
    """
    import json

    from seqserve.checkpoint import load_checkpoint
    from seqserve.data import Tokenizer

    info, rows = t.info, []
    vocab = info.spec.full.role(LOGITS).dims[-1]
    rows.append(CheckResult("sidecar", "full+step", "tokenizer size == logits vocabulary",
                            info.tokenizer.vocab_size == vocab,
                            detail=f"tokenizer has {info.tokenizer.vocab_size} ids, logits have {vocab}"))

    def against_checkpoint() -> list[CheckResult]:
        ckpt_tok = Tokenizer.from_json(json.loads((info.checkpoint_path / "tokenizer.json").read_text()))
        model = load_checkpoint(info.checkpoint_path).model
        same_spec = model.spec() == info.spec
        return [CheckResult("sidecar", "full+step", "tokenizer == checkpoint/tokenizer.json",
                            ckpt_tok == info.tokenizer,
                            detail="identical" if ckpt_tok == info.tokenizer else
                            f"sidecar has {info.tokenizer.vocab_size} ids, the checkpoint {ckpt_tok.vocab_size}"),
                CheckResult("sidecar", "full+step", "spec == checkpoint model's spec", same_spec,
                            detail="identical" if same_spec else "tensor names, dims or state pairs differ")]

    return rows + guarded("sidecar", "full+step", "against checkpoint/", against_checkpoint)
