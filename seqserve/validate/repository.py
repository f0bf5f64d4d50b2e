"""`seqserve validate --repository DIR`: check a whole model repository before a server sees it.

One row per model and version, in the same report the export gate uses:

    config    config.pbtxt parses strictly into Triton's ModelConfig, names its folder, was written
              by `seqserve package` (seqserve.kind, seqserve.target) and has at least one version
    version   the version folder's sidecar agrees with the config's kind; the config agrees with
              the ONNX graph (names, dtypes, dims, state pairs); a python-backend model has the
              model.py that loads seqserve's served model
    runs      ONNX Runtime loads model.onnx and runs it on a valid example (batch 1, 2 tokens,
              empty past): catches a corrupt or truncated graph
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.validate.results import CheckResult, ValidationReport

PYTHON_IMPORT = "from seqserve.triton.python_model import TritonPythonModel"


def validate_repository(path: str | Path, progress=None) -> ValidationReport:
    from seqserve.package import CONFIG, KIND_GRAPH, PYTHON_MODEL, pending_versions, read_config, resolve_versions
    from seqserve.package.triton_config import TARGETS, kind_of, target_of

    root = Path(path)
    if not root.is_dir():
        raise SeqserveError(f"model repository {root} is not a folder; expected the --repository of "
                            "`seqserve package`")
    rows: list[CheckResult] = []
    models = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not models:
        rows.append(CheckResult("config", str(root), "models", False, detail="the repository holds no model folders"))
    for model_dir in models:
        name = model_dir.name
        if progress:
            progress(f"checking {name}")
        if not (model_dir / CONFIG).is_file():
            rows.append(CheckResult("config", name, CONFIG, False, detail=f"{model_dir} has no {CONFIG}"))
            continue
        try:
            cfg = read_config(model_dir)
            kind = kind_of(cfg)
            target = target_of(cfg)
            if target not in TARGETS:
                raise SeqserveError(f"seqserve.target {target!r} is not one of {list(TARGETS)}")
        except SeqserveError as e:
            rows.append(CheckResult("config", name, CONFIG, False, detail=str(e)))
            continue
        folders = resolve_versions(model_dir)     # the resolver `seqserve serve` uses: complete versions
        versions = sorted(folders)
        pending = pending_versions(model_dir)      # an interrupted package's: ignored, noted
        rows.append(CheckResult("config", name, CONFIG, bool(versions or pending),
                                detail=f"{kind}, target {target}, versions {versions}" if versions
                                else f"{kind}, target {target}, no complete version yet" if pending
                                else f"{model_dir} has no numeric version folder"))
        for v in versions:
            rows += _version_rows(folders[v], f"{name}/{v}", cfg, kind, KIND_GRAPH[kind], PYTHON_MODEL)
        if pending:
            rows.append(CheckResult("version", name, "incomplete, ignored", True,
                                    detail=f"version(s) {pending} are not complete for every model of "
                                           "their package (an interrupted `seqserve package`); servers "
                                           "of seqserve ignore them and the next package finishes or "
                                           "removes them"))
    return ValidationReport(export=str(root), family="repository", checks=rows)


def _version_rows(folder: Path, where: str, cfg, kind: str, graph: str, python_model: str) -> list[CheckResult]:
    from seqserve.package import check_against_onnx, load_version
    from seqserve.triton.onnxruntime_backend import check_version_folder

    try:
        served = load_version(folder)
    except SeqserveError as e:
        return [CheckResult("version", where, "sidecar", False, detail=str(e))]
    problems = []
    if served.kind != kind:
        problems.append(f"its seqserve.json serves kind {served.kind!r} but config.pbtxt says {kind!r}")
    try:
        problems += check_against_onnx(cfg, served.model_path, served.info.graph(graph))
    except Exception as e:      # noqa: BLE001 - an unreadable graph is this row's failure
        problems.append(f"cannot read {served.model_path.name}: {str(e).splitlines()[0] if str(e) else e!r}")
    # triton-gpu: the load rules of Triton's onnxruntime backend, on the file it loads
    problems += check_version_folder(cfg, folder)
    if cfg.backend == "python":
        py = folder / python_model
        if not py.is_file() or PYTHON_IMPORT not in py.read_text(errors="replace"):
            problems.append(f"{py.name} is missing or does not import seqserve's TritonPythonModel "
                            f"(expected `{PYTHON_IMPORT}`)")
    rows = [CheckResult("version", where, f"{kind} on the {graph} graph", not problems,
                        detail="; ".join(problems) or "config, sidecar and ONNX graph agree")]
    rows.append(_runs(served, where, graph))
    return rows


def _runs(served, where: str, graph: str) -> CheckResult:
    from seqserve.runtime import RuntimeOptions
    from seqserve.runtime.ort import OrtBackend
    from seqserve.tasks.spec import CLASS_LOGITS, LOGITS, TAG_LOGITS, example_inputs, resolve_dims

    case = "batch=1 sequence=2 past=0"
    try:
        backend = OrtBackend(served.info, graph, RuntimeOptions(intra_op_threads=1))
        spec = served.info.graph(graph)
        sizes = {"batch": 1, "sequence": 2}
        feeds = example_inputs(spec, sizes, np.random.default_rng(0), served.info.spec.io.get("vocab_size"))
        out = backend.run(feeds)
        # the scores the graph returns: next-token logits [1, 2, V]; class [1, C] or tag [1, 2, T] logits
        name = spec.roles[LOGITS] or spec.roles[CLASS_LOGITS] or spec.name_of(TAG_LOGITS)
        logits, want = out[name], resolve_dims(spec.output(name), sizes)
        if spec.roles[LOGITS] and want[-1] != served.info.tokenizer.vocab_size:
            want = (*want[:-1], served.info.tokenizer.vocab_size)
        if logits.shape != want or not np.isfinite(logits).all():
            return CheckResult("runs", where, case, False,
                               detail=f"{name} have shape {list(logits.shape)} (expected {list(want)}) "
                                      f"or non-finite values")
    except Exception as e:      # noqa: BLE001 - a graph ORT cannot load or run is this row's failure
        msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        return CheckResult("runs", where, case, False, detail=f"ONNX Runtime cannot run it: {msg[:300]}")
    return CheckResult("runs", where, case, True, detail="ONNX Runtime loads and runs it")
