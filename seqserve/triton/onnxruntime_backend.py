"""Triton's onnxruntime backend, as far as seqserve's repositories meet it: its load-time rules and
how Triton core feeds a sequence model's graph. One place; used by `seqserve package --target
triton-gpu` (refuse before writing), `seqserve validate --repository` and the tests' replay.

Read from the sources of Triton r25.12 (the NGC 25.12 image: onnxruntime backend with ONNX
Runtime 1.23.2). Each rule below names where it comes from and quotes the backend's message:

  onnxruntime_backend src/onnxruntime.cc
    ModelInstanceState::ModelInstanceState   expected input count = config inputs (non-optional)
                                             + batch_input + one per configured control + one per
                                             state
    ValidateBooleanSequenceControl /         every configured control is a graph input, dims [1]
    ValidateTypedSequenceControl             after the batch axis, data type as configured
    ValidateInputs                           the input count; config inputs vs graph inputs (name,
                                             datatype, CompareDimsSupported); no optional inputs
                                             with batching
    ValidateOutputs                          config outputs and state outputs vs graph outputs
    ModelState::ModelState / LoadModel       parameters it parses (execution_mode,
                                             arena_extend_strategy, cudnn_conv_algo_search) and
                                             execution accelerator names (cuda, tensorrt; openvino)
  onnxruntime_backend src/onnxruntime_utils.cc
    CompareDimsSupported                     max_batch_size > 0: first graph dim -1; dims equal
                                             where the graph's are fixed (outputs: exactly)
  backend src/backend_common.cc
    GetBooleanSequenceControlProperties      exactly one of int32/fp32/bool_false_true, 2 entries
  core src/sequence_batch_scheduler/sequence_batch_scheduler.cc
    GenerateInitialStateData                 initial_state: at most one, same data_type, a name,
                                             same rank, no -1, equal to fixed state dims
    SequenceBatch::UpdateImplicitState       state re-initialized on every START request
  core src/sequence_state.cc
    SequenceStates::Initialize               a new sequence's state has shape [1] + state dims
                                             with every -1 replaced by 1, and holds the
                                             initial_state's bytes (uninitialized memory when
                                             there is no initial_state)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqserve.dtypes import NUMPY_OF_TRITON, TRITON_OF_ONNX
from seqserve.errors import SeqserveError

ONNXRUNTIME_PLATFORMS = ("onnxruntime_onnx",)
ONNXRUNTIME_BACKEND = "onnxruntime"
DEFAULT_MODEL_FILENAME = "model.onnx"      # the backend's artifact when the config names none

BOOL_CONTROLS = ("CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY")
# core: "expected TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32, or TYPE_STRING" for CORRID
CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")

_ONNX_TO_TRITON = TRITON_OF_ONNX        # seqserve/dtypes.py
_TRITON_TO_NUMPY = NUMPY_OF_TRITON


def served_by_onnxruntime_backend(cfg) -> bool:
    """True for a config Triton hands to its onnxruntime backend AND that seqserve wrote for
    Triton (target triton-gpu). `--target seqserve` configs say platform onnxruntime_onnx too,
    but are read by seqserve's own server, which keeps sequence state itself."""
    from seqserve.package.triton_config import target_of

    return ((cfg.platform in ONNXRUNTIME_PLATFORMS or cfg.backend == ONNXRUNTIME_BACKEND)
            and target_of(cfg) == "triton-gpu")


def artifact(cfg) -> str:
    """The file the backend loads from a version folder (`default_model_filename`)."""
    return cfg.default_model_filename or DEFAULT_MODEL_FILENAME


# ---- the graph as the backend sees it ------------------------------------------------------------

@dataclass(frozen=True)
class Tensor:
    dtype: str                  # Triton type name ("TYPE_FP32"), "TYPE_INVALID" if none
    dims: tuple[int, ...]       # -1 for a symbolic or unknown axis (what ORT's GetDimensions says)


@dataclass(frozen=True)
class Signature:
    inputs: dict[str, Tensor]   # session inputs: graph inputs that are not initializers
    outputs: dict[str, Tensor]


def signature(graph: str | Path | bytes) -> Signature:
    """Inputs/outputs as ORT reports them to the backend (SessionGetInputCount & co.), read with
    onnx (weights not loaded). An input that is also an initializer is an overridable
    initializer, not counted among the inputs (ValidateInputs merges those separately)."""
    import onnx

    model = (onnx.load_from_string(graph) if isinstance(graph, bytes)
             else onnx.load(str(graph), load_external_data=False))
    g = model.graph
    weights = {t.name for t in g.initializer}

    def table(values):
        out = {}
        for v in values:
            if v.name in weights:
                continue
            tt = v.type.tensor_type
            out[v.name] = Tensor(_ONNX_TO_TRITON.get(tt.elem_type, "TYPE_INVALID"),
                                 tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim))
        return out

    return Signature(table(g.input), table(g.output))


# ---- the rules -----------------------------------------------------------------------------------

def _tname(t: int) -> str:
    from tritonclient.grpc import model_config_pb2 as mc

    return mc.DataType.Name(t)


def _shape(dims) -> str:
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


def _controls(cfg) -> list[tuple[str, str, str | None, list[str]]]:
    """(kind name, tensor name, data type, problems) per configured control, as
    GetBooleanSequenceControlProperties / GetTypedSequenceControlProperties read them."""
    from tritonclient.grpc import model_config_pb2 as mc

    out = []
    seen_tensors, seen_kinds = set(), set()
    for ci in cfg.sequence_batching.control_input:
        problems = []
        if not ci.name:
            problems.append(f"sequence batching control tensor must have a name for {cfg.name}")
        if ci.name in seen_tensors:
            problems.append(f"sequence batching control tensor '{ci.name}' is specified for multiple "
                            f"control kinds for {cfg.name}")
        seen_tensors.add(ci.name)
        for c in ci.control:
            kind = mc.ModelSequenceBatching.Control.Kind.Name(c.kind)
            if kind in seen_kinds:
                problems.append(f"sequence batching specifies multiple {kind} tensors for {cfg.name}")
            seen_kinds.add(kind)
            found = [n for n, v in (("int32_false_true", c.int32_false_true), ("fp32_false_true", c.fp32_false_true),
                                    ("bool_false_true", c.bool_false_true)) if len(v)]
            if kind in BOOL_CONTROLS:
                if not found:
                    problems.append(f"sequence batching must specify either 'int32_false_true', 'fp32_false_true' "
                                    f"or 'bool_false_true' for {kind} for {cfg.name}")
                elif len(found) > 1:
                    problems.append(f"sequence batching specifies more than one from 'int32_false_true', "
                                    f"'fp32_false_true' and 'bool_false_true' for {kind} for {cfg.name}")
                elif len(getattr(c, found[0])) != 2:
                    problems.append(f"sequence batching control '{found[0]}' must have exactly 2 entries for "
                                    f"{kind} for {cfg.name}")
                dtype = {"int32_false_true": "TYPE_INT32", "fp32_false_true": "TYPE_FP32",
                         "bool_false_true": "TYPE_BOOL"}.get(found[0]) if found else None
            else:
                if found:
                    problems.append(f"sequence batching must not specify either 'int32_false_true', "
                                    f"'fp32_false_true' or 'bool_false_true' for {kind} for {cfg.name}")
                dtype = _tname(c.data_type)
                if kind == "CONTROL_SEQUENCE_CORRID" and dtype not in CORRID_TYPES:
                    problems.append(f"unexpected control data type, expected TYPE_UINT64, TYPE_INT64, "
                                    f"TYPE_UINT32, TYPE_INT32, or TYPE_STRING for {kind} for {cfg.name}")
            out.append((kind, ci.name, dtype, problems))
    return out


def rule_controls(cfg, sig: Signature) -> list[str]:
    """Every configured control is a graph input with dims [1] (after the batch axis) and the
    control's data type (ValidateBooleanSequenceControl / ValidateTypedSequenceControl)."""
    problems = []
    batched = cfg.max_batch_size > 0
    for kind, name, dtype, own in _controls(cfg):
        problems += own
        t = sig.inputs.get(name)
        if t is None:
            problems.append(f"configuration specified sequence control '{name}', but model does not "
                            f"provide that input ({kind})")
            continue
        debatched = t.dims[1:] if batched else t.dims
        if batched and (not t.dims or t.dims[0] != -1):
            problems.append(f"model '{cfg.name}', tensor '{name}': for the model to support batching the "
                            "shape should have at least 1 dimension and the first dimension must be -1; but "
                            f"shape expected by the model is {_shape(t.dims)}")
        if list(debatched) != [1]:
            problems.append(f"unable to load model '{cfg.name}', sequence control '{name}' in model has dims "
                            f"{_shape(debatched)} but dims [1] is expected")
        if dtype is not None and dtype != t.dtype:
            problems.append(f"unable to load model '{cfg.name}', sequence control '{name}', the model expects "
                            f"data-type {t.dtype} but the model configuration specifies data-type {dtype}")
    return problems


def expected_input_count(cfg) -> int:
    n = sum(1 for i in cfg.input if not i.optional) + len(cfg.batch_input)
    if cfg.HasField("sequence_batching"):
        n += len({kind for kind, *_ in _controls(cfg)})
        n += len(cfg.sequence_batching.state)
    return n


def rule_input_count(cfg, sig: Signature) -> list[str]:
    """ValidateInputs: "configuration expects N inputs, model provides M" (inputs + controls +
    states must be exactly the graph's inputs)."""
    want = expected_input_count(cfg)
    if len(sig.inputs) != want:
        return [f"unable to load model '{cfg.name}', configuration expects {want} inputs, model provides "
                f"{len(sig.inputs)} (config: inputs {[i.name for i in cfg.input]}, controls "
                f"{[c.name for c in cfg.sequence_batching.control_input]}, states "
                f"{[s.input_name for s in cfg.sequence_batching.state]}; graph: {sorted(sig.inputs)})"]
    return []


def _compare_dims(cfg, name: str, model_shape, dims, exact: bool) -> list[str]:
    """CompareDimsSupported (onnxruntime_utils.cc)."""
    model_shape, dims = list(model_shape), [int(d) for d in dims]
    if cfg.max_batch_size > 0:
        if not model_shape or model_shape[0] != -1:
            return [f"model '{cfg.name}', tensor '{name}': for the model to support batching the shape should "
                    "have at least 1 dimension and the first dimension must be -1; but shape expected by the "
                    f"model is {_shape(model_shape)}"]
        full = [-1] + dims
        ok = len(model_shape) == len(full) and all(
            m == f for m, f in zip(model_shape, full) if exact or m != -1)
        if not ok:
            return [f"model '{cfg.name}', tensor '{name}': the model expects {len(model_shape)} dimensions "
                    f"(shape {_shape(model_shape)}) but the model configuration specifies {len(full)} dimensions "
                    "(an initial batch dimension because max_batch_size > 0 followed by the explicit tensor "
                    f"shape, making complete shape {_shape(full)})"]
        return []
    ok = len(model_shape) == len(dims) and all(m == d for m, d in zip(model_shape, dims) if exact or m != -1)
    if not ok:
        return [f"model '{cfg.name}', tensor '{name}': the model expects {len(model_shape)} dimensions (shape "
                f"{_shape(model_shape)}) but the model configuration specifies {len(dims)} dimensions (shape "
                f"{_shape(dims)})"]
    return []


def rule_inputs(cfg, sig: Signature) -> list[str]:
    """ValidateInputs: each config input is a graph input, of the same datatype and dims."""
    problems = [f"unable to load model '{cfg.name}', optional input '{io.name}' is not supported "
                "for models that support batching" for io in cfg.input if io.optional and cfg.max_batch_size != 0]
    return problems + _rule_tensors(cfg, cfg.input, sig.inputs, "input", exact=False)


def rule_outputs(cfg, sig: Signature) -> list[str]:
    """ValidateOutputs: each config output is a graph output, same datatype, dims compared exactly."""
    return _rule_tensors(cfg, cfg.output, sig.outputs, "output", exact=True)


def _rule_tensors(cfg, items, graph_tensors: dict, kind: str, exact: bool) -> list[str]:
    """The check ValidateInputs and ValidateOutputs share: name, datatype, dims (reshape honoured)."""
    problems = []
    for io in items:
        t = graph_tensors.get(io.name)
        if t is None:
            problems.append(f"unexpected inference {kind} '{io.name}', allowed {kind}s are: "
                            + ", ".join(sorted(graph_tensors)))
            continue
        if _tname(io.data_type) != t.dtype:
            problems.append(f"unable to load model '{cfg.name}', configuration expects datatype "
                            f"{_tname(io.data_type)} for {kind} '{io.name}', model provides {t.dtype}")
        dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        if t.dims:
            problems += _compare_dims(cfg, io.name, t.dims, dims, exact=exact)
    return problems


def rule_states(cfg, sig: Signature) -> list[str]:
    """Each state's output_name is a graph output of its data_type (ValidateOutputs, "for output
    state"); its input_name is a graph input of that type and rank, with the batch axis first when
    max_batch_size > 0 (the backend binds it like any input, so ORT checks type and shape at run
    time: caught here before that)."""
    problems = []
    for s in cfg.sequence_batching.state:
        dtype = _tname(s.data_type)
        out = sig.outputs.get(s.output_name)
        if out is None:
            problems.append(f"unexpected inference output '{s.output_name}', allowed outputs are: "
                            + ", ".join(sorted(sig.outputs)) + " (a state output_name)")
        elif out.dtype != dtype:
            problems.append(f"unable to load model '{cfg.name}', configuration expects datatype {dtype} for "
                            f"output state '{s.output_name}', model provides {out.dtype}")
        inp = sig.inputs.get(s.input_name)
        if inp is None:
            problems.append(f"state input_name '{s.input_name}' is not an input of the model (the graph has "
                            f"{sorted(sig.inputs)})")
            continue
        if inp.dtype != dtype:
            problems.append(f"state '{s.input_name}' has data_type {dtype} but the model's input is {inp.dtype}")
        problems += _compare_dims(cfg, s.input_name, inp.dims, list(s.dims), exact=False)
        if out is not None and out.dims:
            problems += _compare_dims(cfg, s.output_name, out.dims, list(s.dims), exact=False)
    return problems


def state_start_shape(cfg, s) -> list[int]:
    """The shape of a state on a sequence's first request (SequenceStates::Initialize)."""
    return ([1] if cfg.max_batch_size > 0 else []) + [1 if d == -1 else int(d) for d in s.dims]


def rule_initial_state(cfg, sig: Signature | None = None) -> list[str]:
    """GenerateInitialStateData's checks, then the one that bites: the state starts with shape
    [1] + dims (-1 -> 1) backed by the initial_state's bytes, so those must be the same size (a
    [heads, 0, head_dim] initial KV cache gives a [1, heads, 1, head_dim] tensor over 0 bytes and
    ONNX Runtime refuses it: "not enough space"). Without initial_state the memory is not zeroed
    (core allocates it uninitialized): seqserve requires zero_data."""
    problems = []
    for s in cfg.sequence_batching.state:
        where = f"state input '{s.input_name}'"
        if len(s.initial_state) > 1:
            problems.append(f"initial_state field for {where} must contain exactly one or zero element. "
                            f"Found '{len(s.initial_state)}' elements.")
            continue
        if not s.initial_state:
            problems.append(f"{where} has no initial_state: Triton starts it from uninitialized memory; "
                            "expected initial_state { zero_data: true } with dims = state dims, -1 -> 1")
            continue
        init = s.initial_state[0]
        if init.data_type != s.data_type:
            problems.append(f"The data type used for 'initial_state' field of state '{s.input_name}' does not "
                            "match the state data type.")
        if not init.name:
            problems.append(f"Field 'name' must be set when using initial_state for {where}.")
        if len(init.dims) != len(s.dims):
            problems.append(f"Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions "
                            f"for {where}. {len(init.dims)} != {len(s.dims)}")
            continue
        for i, d in zip(init.dims, s.dims):
            if i == -1:
                problems.append(f"'initial_state' field for state input name '{s.input_name}' contains variable "
                                "dimensions.")
                break
            if d != -1 and i != d:
                problems.append(f"'initial_state' dim for input name '{s.input_name}' doesn't match 'state' dim "
                                f"description. {i} != {d}")
                break
        else:
            start = [1 if d == -1 else d for d in s.dims]
            if list(init.dims) != start:
                problems.append(
                    f"{where}: a new sequence's state has shape {_shape(state_start_shape(cfg, s))} (the state "
                    f"dims with -1 -> 1, sequence_state.cc) but initial_state dims {_shape(init.dims)} hold "
                    f"{int(np.prod(init.dims))} elements instead of {int(np.prod(start))}: ONNX Runtime refuses "
                    "the first request (not enough space); use initial_state dims "
                    f"{_shape(start)}")
        if init.WhichOneof("state_data") != "zero_data":
            problems.append(f"{where}: initial_state must be zero_data (seqserve's graphs start from zeros)")
    return problems


def rule_batching(cfg, sig: Signature) -> list[str]:
    """max_batch_size vs batch axes: with max_batch_size > 0 every graph input and output has a
    variable first axis (CompareDimsSupported; AutoCompleteMaxBatch's "model does not support
    batching while non-zero max_batch_size is specified"), and a state that grows (a -1 state dim:
    a KV cache) cannot be batched: the backend stacks the batch's states as one buffer shaped like
    the first request's ("All requests must have equally-sized input tensors so use any request as
    the representative", SetInputTensors), so sequences with pasts of different lengths would be
    read as garbage. Such a model needs max_batch_size <= 1."""
    problems = []
    if cfg.max_batch_size > 0:
        for role, table in (("input", sig.inputs), ("output", sig.outputs)):
            for name, t in table.items():
                if not t.dims or t.dims[0] != -1:
                    problems.append(f"model '{cfg.name}' sets max_batch_size {cfg.max_batch_size} but graph "
                                    f"{role} '{name}' has shape {_shape(t.dims)}: model does not support "
                                    "batching while non-zero max_batch_size is specified")
    if cfg.max_batch_size > 1:
        for s in cfg.sequence_batching.state:
            if -1 in list(s.dims):
                problems.append(f"state '{s.input_name}' has a variable dim {_shape(s.dims)} with max_batch_size "
                                f"{cfg.max_batch_size}: the onnxruntime backend stacks a batch's states as one "
                                "buffer shaped like the first request's; use max_batch_size 1")
    return problems


def rule_accelerators_and_parameters(cfg, sig: Signature | None = None) -> list[str]:
    """ModelState / LoadModel: GPU execution accelerators are "tensorrt" or "cuda", CPU ones
    "openvino" ("unknown Execution Accelerator 'X' is requested"); the model-level parameters the
    backend parses take the values it knows (execution_mode 0|1, arena_extend_strategy 0|1,
    cudnn_conv_algo_search 0|1|2; an unparsable number fails the load)."""
    problems = []
    ea = cfg.optimization.execution_accelerators
    for a in ea.gpu_execution_accelerator:
        if a.name not in ("tensorrt", "cuda"):
            problems.append(f"unknown Execution Accelerator '{a.name}' is requested")
    for a in ea.cpu_execution_accelerator:
        if a.name != "openvino":
            problems.append(f"unknown Execution Accelerator '{a.name}' is requested")
    allowed = {"execution_mode": ("0", "1"), "arena_extend_strategy": ("0", "1"),
               "cudnn_conv_algo_search": ("0", "1", "2")}
    for key, values in allowed.items():
        if key in cfg.parameters and cfg.parameters[key].string_value not in values:
            v = cfg.parameters[key].string_value
            problems.append(f"unsupported {key} value '{v}' is requested (the backend accepts "
                            f"{', '.join(values)})")
    return problems


RULES = (rule_controls, rule_input_count, rule_inputs, rule_outputs, rule_states, rule_initial_state,
         rule_batching, rule_accelerators_and_parameters)


def check_config(cfg, graph: str | Path | bytes) -> list[str]:
    """Every load-time rule of the onnxruntime backend (and Triton core's sequence batcher) that
    `cfg` breaks against `graph` (the artifact it will load); [] when Triton will load it."""
    try:
        sig = signature(graph)
    except Exception as e:  # noqa: BLE001 - an unreadable graph is the problem
        return [f"cannot read the model's graph: {str(e).splitlines()[0] if str(e) else e!r}"]
    problems = []
    for rule in RULES:
        problems += rule(cfg, sig)
    return problems


def check_version_folder(cfg, folder: str | Path) -> list[str]:
    """check_config on the artifact the backend loads from a version folder; [] for configs that
    are not for Triton's onnxruntime backend."""
    if not served_by_onnxruntime_backend(cfg):
        return []
    path = Path(folder) / artifact(cfg)
    if not path.is_file():
        return [f"{path.name} (the config's default_model_filename, what the onnxruntime backend loads) "
                f"is missing from {folder}"]
    problems = [f"{path.name}: {p}" for p in check_config(cfg, path)]
    if problems:
        return problems
    return [f"{path.name}: {p}" for p in first_request(cfg, path)]


def first_request(cfg, graph: str | Path | bytes) -> list[str]:
    """Run one request as Triton would (a sequence's first, START set, for a sequence model):
    input_ids [1, 2] of token 0 (and zeros for a fixed-size float input: conditioned's features);
    the logits must come back finite, [1, 2, V]."""
    from tritonclient.grpc import model_config_pb2 as mc

    from seqserve.tasks.classify import OUTPUT_NAME as CLASS_OUTPUT

    inputs = {}
    for io in cfg.input:
        if io.optional:
            continue
        fixed_float = io.data_type == mc.TYPE_FP32 and all(d > 0 for d in io.dims)
        if io.name != "input_ids" and not fixed_float:
            return [f"cannot make a request: config input '{io.name}' is neither input_ids nor a fixed-size FP32 tensor"]
        if fixed_float:
            inputs[io.name] = np.zeros(((1,) if cfg.max_batch_size > 0 else ()) + tuple(io.dims), np.float32)
        else:
            inputs["input_ids"] = np.zeros((1, 2) if cfg.max_batch_size > 0 else (2,), np.int64)
    try:
        out = SequenceModel(cfg, graph, strict=False).infer(inputs, corrid=1, start=True, end=True)
    except Exception as e:  # noqa: BLE001 - the failure Triton would answer is the problem
        return [f"the first request fails as Triton feeds it: {str(e).splitlines()[0] if str(e) else e!r}"]
    # causal-lm: logits [1, 2, V]; classify/tag: the config's one output, class [1, C] / tag [1, 2, T]
    name = "logits" if "logits" in out or not cfg.output else cfg.output[0].name
    logits, want = out.get(name), (1, 2) if name != CLASS_OUTPUT else (1,)
    if logits is None or logits.shape[:len(want)] != want or not np.isfinite(logits).all():
        return [f"the first request as Triton feeds it returned {name} of shape "
                f"{None if logits is None else list(logits.shape)} or non-finite values"]
    return []


# ---- how Triton feeds the graph (for replay tests and `validate --repository`) --------------------

class BackendError(SeqserveError):
    """What Triton would answer: a load failure or a failed request."""


@dataclass
class _Sequence:
    corrid: int
    states: dict = field(default_factory=dict)   # state input name -> np.ndarray (with batch axis)


class SequenceModel:
    """One Triton model on the onnxruntime backend, fed as Triton core feeds it (ONNX Runtime on
    CPU stands in for the GPU). Loading applies check_config (the backend refuses such a model);
    `strict=False` skips that to see what requests would then do.

    Requests: `infer(inputs, corrid=..., start=..., end=...)` with the client's tensors (batch axis
    included when max_batch_size > 0); `execute(batch)` runs several requests of different
    sequences as one execution, as the oldest-strategy batcher does (at most max_batch_size rows).
    Implicit state: reset on START (UpdateImplicitState) to the state dims with -1 -> 1 holding the
    initial_state's bytes (SequenceStates::Initialize); each output state becomes the next input
    (SequenceState's update callback); END frees it. Controls: each configured control_input is
    sent as the core's override tensor ([1] per row; START/END as the request's flags, READY 1,
    CORRID the id)."""

    def __init__(self, cfg, graph: str | Path | bytes, strict: bool = True):
        import onnxruntime as ort

        self.cfg = cfg
        if strict:
            problems = check_config(cfg, graph)
            if problems:
                raise BackendError(f"failed to load '{cfg.name}': " + "; ".join(problems))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        src = graph if isinstance(graph, bytes) else str(graph)
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.sequences: dict[int, _Sequence] = {}
        self.executions = 0

    @staticmethod
    def from_folder(model_dir: str | Path, version: int | str = 1, strict: bool = True) -> "SequenceModel":
        from seqserve.package import read_config

        cfg = read_config(model_dir)
        return SequenceModel(cfg, Path(model_dir) / str(version) / artifact(cfg), strict)

    # -- the core's side --------------------------------------------------------------------------

    def _initial_states(self) -> dict:
        out = {}
        for s in self.cfg.sequence_batching.state:
            shape = state_start_shape(self.cfg, s)
            dtype = _TRITON_TO_NUMPY[_tname(s.data_type)]
            if s.initial_state:
                init = s.initial_state[0]
                data = np.zeros(int(np.prod(init.dims)), dtype)      # zero_data: memset 0
            else:
                data = np.full(int(np.prod(shape)), np.nan, dtype)   # uninitialized memory
            want = int(np.prod(shape))
            if data.size != want:
                # The backend wraps the state buffer in an OrtValue of the state's shape; ONNX
                # Runtime checks the buffer is large enough (CreateTensorWithDataAsOrtValue).
                raise BackendError(
                    f"request for '{self.cfg.name}' failed: input '{s.input_name}' shape {_shape(shape)}: not "
                    f"enough space: expected {want * data.itemsize}, got {data.size * data.itemsize}")
            out[s.input_name] = data.reshape(shape)
        return out

    def _control_values(self, start: bool, end: bool, corrid: int) -> dict:
        feeds = {}
        for kind, name, dtype, _ in _controls(self.cfg):
            np_type = _TRITON_TO_NUMPY.get(dtype or "", np.int32)
            if kind == "CONTROL_SEQUENCE_CORRID":
                value = corrid
            else:
                ci = next(c for ci in self.cfg.sequence_batching.control_input if ci.name == name
                          for c in ci.control)
                pair = list(ci.int32_false_true or ci.fp32_false_true or ci.bool_false_true)
                on = {"CONTROL_SEQUENCE_START": start, "CONTROL_SEQUENCE_END": end,
                      "CONTROL_SEQUENCE_READY": True}[kind]
                value = pair[1] if on else pair[0]
            shape = [1, 1] if self.cfg.max_batch_size > 0 else [1]
            feeds[name] = np.full(shape, value, np_type)
        return feeds

    def infer(self, inputs: dict, corrid: int, start: bool = False, end: bool = False) -> dict:
        return self.execute([(inputs, corrid, start, end)])[0]

    def execute(self, batch: list[tuple[dict, int, bool, bool]]) -> list[dict]:
        """One execution of several requests (each of its own sequence), as the backend runs it:
        inputs, controls and states concatenated on the batch axis."""
        mbs = self.cfg.max_batch_size
        rows = []
        for inputs, corrid, start, end in batch:
            if self.cfg.HasField("sequence_batching") and len({c for _, c, _, _ in batch}) != len(batch):
                raise BackendError("one execution holds one request per sequence")
            seq = self.sequences.get(corrid)
            if not self.cfg.HasField("sequence_batching"):
                seq = _Sequence(corrid)                  # a stateless model: nothing is kept
            elif start:
                seq = self.sequences[corrid] = _Sequence(corrid, self._initial_states())
            elif seq is None:
                raise BackendError(f"inference request for sequence {corrid} to model '{self.cfg.name}' must "
                                   "specify the START flag on the first request of the sequence")
            feeds = {io.name: inputs[io.name] for io in self.cfg.input}
            feeds.update(self._control_values(start, end, corrid))
            feeds.update(seq.states)
            rows.append((seq, feeds, end))
        n_rows = sum(f[self.cfg.input[0].name].shape[0] if mbs > 0 else 1 for _, f, _ in rows)
        if n_rows > max(mbs, 1):
            raise BackendError(f"batch size {n_rows} for '{self.cfg.name}', max allowed is {mbs}")
        if mbs > 0:
            feeds = {}
            for name in rows[0][1]:
                parts = [f[name] for _, f, _ in rows]
                if len({p.shape[1:] for p in parts}) > 1:
                    raise BackendError(f"'{name}' has different shapes across the batch "
                                       f"({[list(p.shape) for p in parts]}); the backend reads them as the first's")
                feeds[name] = np.concatenate(parts, axis=0)
        else:
            feeds = rows[0][1]
        try:
            values = self.session.run(self.outputs, feeds)
        except Exception as e:      # noqa: BLE001 - ORT's own error is what Triton would return
            raise BackendError(f"onnx runtime error: {str(e).splitlines()[0]}") from None
        self.executions += 1
        out = dict(zip(self.outputs, values))
        results, offset = [], 0
        for seq, f, end in rows:
            b = f[self.cfg.input[0].name].shape[0] if mbs > 0 else 1
            cut = (lambda a: a[offset:offset + b]) if mbs > 0 else (lambda a: a)
            for s in self.cfg.sequence_batching.state:
                seq.states[s.input_name] = np.ascontiguousarray(cut(out[s.output_name]))
            results.append({io.name: cut(out[io.name]) for io in self.cfg.output})
            if end:
                self.sequences.pop(seq.corrid, None)
            offset += b
        return results


# ---- sizing Triton's CUDA memory pool ------------------------------------------------------------

def implicit_state_bytes(cfg, max_context: int) -> int:
    """Device memory the implicit state of a sequence model can hold at once: per sequence, every
    state at full context (a -1 dim = max_context), twice (the input state and the output state
    the step writes exist together), times the sequences Triton keeps (oldest
    max_candidate_sequences). What `--cuda-memory-pool-byte-size` should cover."""
    if not cfg.HasField("sequence_batching") or not cfg.sequence_batching.state:
        return 0
    per_seq = 0
    for s in cfg.sequence_batching.state:
        n = int(np.prod([max_context if d == -1 else int(d) for d in s.dims]))
        per_seq += n * np.dtype(_TRITON_TO_NUMPY[_tname(s.data_type)]).itemsize
    sb = cfg.sequence_batching
    sequences = (sb.oldest.max_candidate_sequences if sb.HasField("oldest") else 0) or max(cfg.max_batch_size, 1)
    return 2 * per_seq * sequences


def repository_state_bytes(root: str | Path) -> dict[str, int]:
    """implicit_state_bytes of every triton-gpu sequence model in a repository (newest version's
    context length), by model name."""
    from seqserve.package import list_versions, load_version, read_config

    out = {}
    for model_dir in sorted(p for p in Path(root).iterdir() if (p / "config.pbtxt").is_file()):
        cfg = read_config(model_dir)
        if not served_by_onnxruntime_backend(cfg) or not cfg.sequence_batching.state:
            continue
        versions = list_versions(model_dir)
        if not versions:
            continue
        info = load_version(model_dir / str(versions[-1])).info
        out[model_dir.name] = implicit_state_bytes(cfg, info.max_context or 1)
    return out


if __name__ == "__main__":       # python -m seqserve.triton.onnxruntime_backend REPOSITORY
    import sys

    sizes = repository_state_bytes(sys.argv[1] if len(sys.argv) > 1 else "model_repository")
    for name, n in sizes.items():
        print(f"{name}: {n / 2**20:.1f} MiB of implicit state at full context")
    print(f"--cuda-memory-pool-byte-size=0:{sum(sizes.values())}  (at least; plus room for activations)")
