"""Checks on the ONNX files themselves: onnx.checker, and the graph signature against the spec."""

from __future__ import annotations

import onnx

from seqserve.tasks.causal_lm import as_exported
from seqserve.tasks.signature import signature_problems
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
    problems, n_dynamic = signature_problems(graph, spec)
    if problems:
        return CheckResult("dynamic_axes", g, case, False, detail="; ".join(problems))
    return CheckResult("dynamic_axes", g, case, True,
                       detail=f"names and dtypes match; {n_dynamic} dynamic axes are dynamic")


# 2b. sidecar -------------------------------------------------------------------------------------

def sidecar(t: Target) -> list[CheckResult]:
    """seqserve.json agrees with the weights it ships: tokenizer, vocabulary size, family spec.

    Everything downstream (server, Triton configs, clients) trusts the sidecar; a tokenizer that
    drifted from the checkpoint would decode the right ids into the wrong text.
    """
    info, rows = t.info, []
    vocab = info.spec.full.role(LOGITS).dims[-1]
    rows.append(CheckResult("sidecar", "full+step", "tokenizer size == logits vocabulary",
                            info.tokenizer.vocab_size == vocab,
                            detail=f"tokenizer has {info.tokenizer.vocab_size} ids, logits have {vocab}"))

    return rows + _feature_rows(info) + against_torch_side(t, "full+step")


def against_torch_side(t: Target, graph: str) -> list[CheckResult]:
    """The sidecar == what the torch side is: a checkpoint export's checkpoint/ (tokenizer, the
    model's spec); a brought module re-imported with the exported weights (their digest, the
    adapted spec: the adapter decides as it did at export)."""
    import hashlib
    import json

    from seqserve.data import Tokenizer

    info = t.info
    if "source" in info.raw:
        def against_module() -> list[CheckResult]:
            src = info.raw["source"]
            weights = info.path / src["weights_file"]
            same_bytes = hashlib.sha256(weights.read_bytes()).hexdigest() == src.get("sha256", "")
            model = t.torch(info.spec.full.name).model
            same_spec = model.spec() == info.spec
            return [CheckResult("sidecar", graph, f"{src['weights_file']} == the weights exported", same_bytes,
                                detail="sha256 identical" if same_bytes else "the file changed since export"),
                    CheckResult("sidecar", graph, "spec == the re-imported module's, adapted", same_spec,
                                detail=f"{src.get('module', 'the module')}: identical" if same_spec else
                                "tensor names, dims or state pairs differ")]
        return guarded("sidecar", graph, "against the user's module", against_module)

    def against_checkpoint() -> list[CheckResult]:
        from seqserve.checkpoint import load_checkpoint

        ckpt_tok = Tokenizer.from_json(json.loads((info.checkpoint_path / "tokenizer.json").read_text()))
        same_spec = as_exported(load_checkpoint(info.checkpoint_path).model.spec(), info.spec) == info.spec
        return [CheckResult("sidecar", graph, "tokenizer == checkpoint/tokenizer.json", ckpt_tok == info.tokenizer,
                            detail="identical" if ckpt_tok == info.tokenizer else
                            f"sidecar has {info.tokenizer.vocab_size} ids, the checkpoint {ckpt_tok.vocab_size}"),
                CheckResult("sidecar", graph, "spec == checkpoint model's spec", same_spec,
                            detail="identical" if same_spec else "tensor names, dims, labels or state pairs differ")]
    return guarded("sidecar", graph, "against checkpoint/", against_checkpoint)


def _feature_rows(info) -> list[CheckResult]:
    """io["features"] (the width clients are told) == every FEATURES tensor's width == every held-out
    example's; nothing for a task without features."""
    from seqserve.tasks.spec import FEATURES

    if "features" not in info.spec.io:
        return []
    width = info.spec.io["features"]
    tensors = [(g.name, t) for g in info.spec.graphs.values() for t in g.inputs if t.role == FEATURES]
    bad = [f"{g}.{t.name} is {t.dims[-1]} wide" for g, t in tensors if t.dims[-1] != width]
    rows = [CheckResult("sidecar", "+".join(g for g, _ in tensors) or "none", "io features == graph feature width",
                        bool(tensors) and not bad,
                        detail="; ".join(bad) or (f"{width} features in {len(tensors)} graphs" if tensors
                                                  else "no graph takes a features tensor"))]
    examples = [e for e in info.raw.get("examples", []) if isinstance(e, dict) and "features" in e]
    widths = sorted({len(e["features"]) for e in examples if isinstance(e["features"], list)})
    rows.append(CheckResult("sidecar", "examples", "examples' feature width == io features",
                            widths in ([], [width]) and len(widths) == (1 if examples else 0),
                            detail=f"{len(examples)} examples, widths {widths}; io says {width}"))
    return rows
