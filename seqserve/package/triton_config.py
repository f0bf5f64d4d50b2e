"""Triton model configs (config.pbtxt) built from a family spec, parsed strictly, checked against ONNX.

The configs are Triton's own `ModelConfig` protobuf (from tritonclient), so what we write is what
Triton (and our server, which reads the same message) will parse. Three kinds per export:

    full      NAME           full graph, dynamic batching
    step      NAME_step      step graph, sequence batching; the server keeps the state pairs
    generate  NAME_generate  step graph behind a decoupled text-in/text-out model
    step_state NAME_step_state  (--stateless-step, recurrent step graphs only) the step graph
                             served statelessly with dynamic batching: the client sends every
                             state input (past_*) and gets every present_* back, so any replica
                             serves any step; no sequence controls

and three targets, which differ only in who runs the graph (the client sees the same models):

    seqserve       `seqserve serve`: ONNX Runtime in-process (platform onnxruntime_onnx for
                   full/step; backend "seqserve" for generate)
    triton-gpu     NGC tritonserver: Triton's native onnxruntime backend on KIND_GPU instances for
                   full/step (implicit state carries h/c or the KV cache; configs follow the
                   backend's load rules, seqserve/triton/onnxruntime_backend.py; where the export's
                   graph does not fit the backend, it loads a rewritten copy named by
                   default_model_filename, seqserve/package/triton_gpu_graphs.py); generate is a
                   python-backend model running seqserve's decoding loop on the GPU
    triton-python  tritonserver with the python backend only (e.g. the nvidia-pytriton wheel): all
                   three are python-backend models (model.py) running seqserve's served models;
                   the python backend ignores implicit state, so the step model keeps each
                   sequence's state itself, keyed by correlation id
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from seqserve.dtypes import TRITON_OF_KSERVE, TRITON_OF_NUMPY
from seqserve.errors import SeqserveError
from seqserve.export.sidecar import ExportInfo
from seqserve.generation.request import FIELDS as GENERATE_FIELDS
from seqserve.tasks.spec import (CLASS_LOGITS, GENERATE, MASK, POSITIONS, SOURCE_MASK, SOURCE_TOKENS, STEP, GraphSpec,
                                 TensorSpec)

ModelConfig = mc.ModelConfig

KINDS = ("full", "step", "generate", "classify", "step_state")
TARGETS = ("seqserve", "triton-gpu", "triton-python")
KIND_GRAPH = {"full": "full", "step": "step", "generate": "step",    # which ONNX graph each serves
              "classify": "full", "step_state": "step"}
SUFFIX = {"full": "", "step": "_step", "generate": "_generate", "classify": "_classify", "step_state": "_step_state"}

# NAME_step_state's config names its state pairs, "past_hidden:present_hidden,past_cell:present_cell",
# so a client knows which output feeds which input on the next step (seqserve/serve/client.py).
STATE_PAIRS = "seqserve.state_pairs"

# Graph inputs the server computes itself from the sequence it keeps (gpt's step graph); a client
# of NAME_step sends only input_ids.
DERIVED_ROLES = (MASK, POSITIONS)

# Triton's model-name rule (letters, digits, _ - .). No leading "." either: Triton skips hidden
# folders, and our temporary siblings are hidden.
MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")

# numpy dtype name -> Triton config type (seqserve/dtypes.py)
NUMPY_TO_TRITON = {n: mc.DataType.Value(t) for n, t in TRITON_OF_NUMPY.items()}

# Generation request fields besides text_input: (name, type, dims); all optional
# (seqserve/generation/request.py describes them).
GENERATE_OPTIONAL = tuple((f.name, mc.DataType.Value(TRITON_OF_KSERVE[f.datatype]), list(f.dims))
                          for f in GENERATE_FIELDS)


@dataclass(frozen=True)
class PackageOptions:
    max_batch_size: int = 16             # full and step models: rows per ORT call
    max_sequences: int = 64              # step model: sequences kept at once (oldest strategy)
    sequence_idle_seconds: float = 60.0  # step model: a sequence's state is dropped after this idle
    max_streams: int = 64                # generate model: concurrent generation streams
    target: str = "seqserve"             # who serves it: see TARGETS above
    stateless_step: bool = False         # also NAME_step_state (client-held recurrent state)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise SeqserveError(f"unknown target {self.target!r}; expected one of {list(TARGETS)}")
        for field in ("max_batch_size", "max_sequences", "max_streams"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SeqserveError(f"{field.replace('_', ' ')} must be a whole number of at least 1; got {v!r}")
        idle = self.sequence_idle_seconds
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not math.isfinite(idle) or idle <= 0:
            raise SeqserveError(f"sequence idle seconds must be a positive number; got {idle!r}")
        if int(idle * 1e6) < 1:
            raise SeqserveError(f"sequence idle seconds must be at least one microsecond; got {idle!r}")


def check_model_name(name: str) -> None:
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise SeqserveError(f"model name {name!r} is not a valid Triton model name; expected letters, "
                            "digits, '_', '-' and '.' (not starting with '.')")


def model_names(name: str) -> dict[str, str]:
    """kind -> model name."""
    return {kind: name + SUFFIX[kind] for kind in KINDS}


def triton_type(numpy_dtype: str) -> int:
    try:
        return NUMPY_TO_TRITON[numpy_dtype]
    except KeyError:
        raise SeqserveError(f"dtype {numpy_dtype!r} has no Triton data type; expected one of "
                            f"{sorted(NUMPY_TO_TRITON)}") from None


def type_name(t: int) -> str:
    return mc.DataType.Name(t)


def config_dims(t: TensorSpec) -> list[int]:
    """Dims as Triton wants them with batching on: batch axis stripped, named (dynamic) axes -1."""
    if not t.dims or t.dims[0] != "batch":
        raise SeqserveError(f"tensor {t.name} has dims {list(t.dims)}; expected the batch axis first")
    return [-1 if isinstance(d, str) else d for d in t.dims[1:]]


def kind_of(cfg: ModelConfig) -> str:
    """The `seqserve.kind` parameter of a config we wrote; a clear error for any other config."""
    kind = cfg.parameters["seqserve.kind"].string_value if "seqserve.kind" in cfg.parameters else ""
    if kind not in KINDS:
        raise SeqserveError(f"model config {cfg.name!r} has seqserve.kind {kind!r}; expected one of "
                            f"{list(KINDS)} (a config written by `seqserve package`)")
    return kind


def derived_inputs(cfg: ModelConfig) -> list[str]:
    """Graph inputs the server derives itself (parameter `seqserve.derived_inputs`)."""
    if "seqserve.derived_inputs" not in cfg.parameters:
        return []
    return [n for n in cfg.parameters["seqserve.derived_inputs"].string_value.split(",") if n]


# ---- building ---------------------------------------------------------------------------------

def build_configs(info: ExportInfo, name: str, options: PackageOptions) -> dict[str, ModelConfig]:
    """model name -> config for the three models of one export (full, step, generate)."""
    check_model_name(name)
    names = model_names(name)
    if info.spec.head != GENERATE:
        cfgs = _scoring(info, names, options)
    else:
        cfgs = {names["full"]: _full(info.spec.full, names["full"], options),
                names["step"]: _step(info.spec.step, names["step"], options),
                names["generate"]: _generate(names["generate"], options, info.spec)}
        if starts_from_once(info.spec):
            # The step state comes from once graphs (conditioned: init from features): a client
            # of NAME_step could only start from zeros, so there is none; NAME_generate runs the chain.
            del cfgs[names["step"]]
    if options.stateless_step:
        step_cfg = cfgs.get(names["step"])
        cfgs[names["step_state"]] = cfg = _step_state(_stateless_step_graph(info), names["step_state"], options)
        for o in cfg.output:        # classify/tag: the same labels and vocabulary as NAME_step
            same = next((x for x in step_cfg.output if x.name == o.name), None) if step_cfg else None
            if same is not None and same.label_filename:
                o.label_filename = same.label_filename
        if step_cfg is not None and "seqserve.vocab_size" in step_cfg.parameters:
            cfg.parameters["seqserve.vocab_size"].string_value = step_cfg.parameters["seqserve.vocab_size"].string_value
    if options.target == "triton-gpu":
        _native_graphs(info, cfgs)
    return cfgs


def _stateless_step_graph(info: ExportInfo) -> GraphSpec:
    """The step graph NAME_step_state serves, or one SeqserveError line saying why there is none."""
    what = f"--stateless-step: {info.family}"
    try:
        graph = info.spec.step
    except KeyError:
        raise SeqserveError(f"{what} has no step graph (task {info.spec.task}); nothing to serve step by step") from None
    growing = [p for p in graph.state if p.seq_axis is not None]
    if growing:
        raise SeqserveError(f"{what}'s step state is a KV cache ({growing[0].input} grows by one position per "
                            "token), which the client would send and receive whole on every step; client-held "
                            "state is for fixed-size recurrent state: serve it with server-held state "
                            f"({info.family}_step)")
    if not graph.state:
        raise SeqserveError(f"{what}'s step graph has no state pairs; there is no state for a client to hold")
    if starts_from_once(info.spec):
        raise SeqserveError(f"{what}'s step state starts from its {', '.join(g.name for g in info.spec.once)} "
                            "graph, which a client of a step model cannot run; use its _generate model")
    derived = [t.name for t in graph.inputs if t.role in DERIVED_ROLES]
    if derived:
        raise SeqserveError(f"{what}'s step graph takes {', '.join(derived)}, which only a server that keeps the "
                            "sequence can derive; client-held state is for recurrent step graphs")
    return graph


# classify: the class_logits output names this file in the model folder (one label per line), so
# Triton's classification extension (class_count) answers "score:index:label" on every server.
LABELS_FILE = "labels.txt"


def _scoring(info: ExportInfo, names: dict[str, str], options: PackageOptions) -> dict[str, ModelConfig]:
    """classify / tag: NAME (full graph, class or tag logits) and, where the task has a step graph
    (a unidirectional recurrent encoder), NAME_step (stateful: each request returns the scores of
    the stream so far); nothing is generated, so no NAME_generate."""
    cfgs = {names["full"]: _full(info.spec.full, names["full"], options)}
    if any(g.runs == STEP for g in info.spec.graphs.values()):
        cfgs[names["step"]] = _step(info.spec.step, names["step"], options)
    for cfg in cfgs.values():
        for o in cfg.output:
            if o.name == info.spec.full.roles[CLASS_LOGITS]:
                o.label_filename = LABELS_FILE
    for cfg in cfgs.values():        # token ids a load tester may synthesize: [0, vocab_size)
        cfg.parameters["seqserve.vocab_size"].string_value = str(info.spec.io["vocab_size"])
    cfgs[names["classify"]] = _classify_text(names["classify"], options)
    return cfgs


# NAME_classify: text in, label names and probabilities out, for curl users (Triton's generate
# extension: POST /v2/models/NAME_classify/generate {"text_input": "..."}). classify: the top
# class_count labels, most likely first; tag: one label per character, its probability.
CLASSIFY_INPUTS = (("text_input", mc.TYPE_STRING, [1], False), ("class_count", mc.TYPE_INT32, [1], True))
CLASSIFY_OUTPUTS = (("labels", mc.TYPE_STRING, [-1]), ("probabilities", mc.TYPE_FP32, [-1]))


def _classify_text(name: str, o: PackageOptions) -> ModelConfig:
    cfg = ModelConfig(name=name, max_batch_size=0)
    for n, t, dims, optional in CLASSIFY_INPUTS:
        cfg.input.add(name=n, data_type=t, dims=dims, optional=optional)
    for n, t, dims in CLASSIFY_OUTPUTS:
        cfg.output.add(name=n, data_type=t, dims=dims)
    _runner(cfg, o, "classify")
    return _common(cfg, "classify", o)


def label_files(info: ExportInfo, cfg: ModelConfig) -> dict[str, str]:
    """file name -> text of the label files `cfg` names (written beside its config.pbtxt)."""
    labels = info.spec.io.get("labels") or []
    return {o.label_filename: "".join(f"{x}\n" for x in labels) for o in cfg.output if o.label_filename}


def starts_from_once(spec) -> bool:
    """True when the step graph's inputs come from the task's once graphs (TaskSpec.links)."""
    return any(to == spec.step.name for _, _, to in spec.links())


def served_graphs(spec, kind: str) -> tuple[str, ...]:
    """The graphs a version folder of this kind carries, the served one first (model.onnx), then
    what runs before it once per sequence (generate of a chain task: the init/encoder graphs,
    `<graph>.onnx`). causal-lm: one graph per kind."""
    main = KIND_GRAPH[kind]
    return (main, *(g.name for g in spec.once)) if kind == "generate" else (main,)


def conditioning_inputs(spec) -> list[TensorSpec]:
    """What a generate request carries besides text: inputs of the once graphs that no once graph
    computes (conditioned: features [B, F])."""
    made = {n for g in spec.once for n in g.output_names}
    # an encoder's source ids and mask come from text_input (the source text), not as tensors
    return [t for g in spec.once for t in g.inputs if t.name not in made and t.role not in (SOURCE_TOKENS, SOURCE_MASK)]


def _native_graphs(info: ExportInfo, cfgs: dict[str, ModelConfig]) -> None:
    """triton-gpu: point Triton's onnxruntime backend at the rewritten graph where the export's
    does not fit it (seqserve/package/triton_gpu_graphs.py says why); model.onnx stays the
    export's graph, which `seqserve serve` runs from the same repository."""
    from seqserve.package.triton_gpu_graphs import BACKEND_GRAPH, needs_backend_graph

    for cfg in cfgs.values():
        kind = kind_of(cfg)
        if cfg.backend == "python" or not needs_backend_graph(info.graph_path(KIND_GRAPH[kind]),
                                                              info.graph(KIND_GRAPH[kind]), kind):
            continue
        cfg.default_model_filename = BACKEND_GRAPH
        what = ["opset-23 Attention decomposed into ops ONNX Runtime 1.23's CUDA provider runs "
                "(its Attention kernel is CPU-only)"]
        if kind == "step":
            what.append("START control input; past dropped on START; attention_mask/position_ids "
                        "derived in the graph")
        cfg.parameters["seqserve.backend_graph"].string_value = "; ".join(what)


def runner_of(cfg: ModelConfig) -> str:
    """Who runs a packaged model's graphs, in words (seqserve package prints it for triton-gpu)."""
    gpu = any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in cfg.instance_group)
    where = "on the GPU" if gpu else "on the CPU"
    if cfg.backend == "python":
        return f"Triton's python backend (seqserve's {kind_of(cfg)} model, ONNX Runtime {where})"
    if cfg.backend == "seqserve":
        return "seqserve serve (its own decoding loop)"
    return f"Triton's onnxruntime backend {where}"


def target_of(cfg: ModelConfig) -> str:
    """The `seqserve.target` parameter ("seqserve" for configs written before targets existed)."""
    t = cfg.parameters["seqserve.target"].string_value if "seqserve.target" in cfg.parameters else ""
    return t or "seqserve"


def keeps_own_state(cfg: ModelConfig) -> bool:
    """True for a python-backend model: it keeps sequence state itself (the python backend ignores
    implicit state), so its config lists no `state` and the graph's state inputs are its own."""
    return cfg.backend == "python"


def _runner(cfg: ModelConfig, o: PackageOptions, kind: str) -> None:
    """Who runs the graph: platform/backend and instance group, per target."""
    gpu = o.target == "triton-gpu"
    text = kind in ("generate", "classify")     # text in: seqserve's own code, never an ONNX backend
    python = o.target == "triton-python" or (text and o.target != "seqserve")
    if python:
        cfg.backend = "python"
    elif text:
        cfg.backend = "seqserve"
    else:
        cfg.platform = "onnxruntime_onnx"
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU)
    if gpu and not python:
        # Triton's onnxruntime backend: the CUDA execution provider, its arena growing by what is
        # asked (a KV cache grows a step at a time; powers of two would waste up to half).
        cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="cuda")
        cfg.parameters["arena_extend_strategy"].string_value = "1"
    if python and gpu:
        cfg.parameters["seqserve.device"].string_value = "cuda"


def _common(cfg: ModelConfig, kind: str, o: PackageOptions) -> ModelConfig:
    cfg.version_policy.latest.num_versions = 1      # serve the newest version only
    cfg.parameters["seqserve.kind"].string_value = kind
    cfg.parameters["seqserve.target"].string_value = o.target
    return cfg


def _add_tensors(dest, tensors) -> None:
    for t in tensors:
        dest.add(name=t.name, data_type=triton_type(t.dtype), dims=config_dims(t))


def _full(graph: GraphSpec, name: str, o: PackageOptions) -> ModelConfig:
    cfg = ModelConfig(name=name, max_batch_size=o.max_batch_size)
    _add_tensors(cfg.input, graph.inputs)
    _add_tensors(cfg.output, graph.outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = 0   # no waiting: batch what is queued
    cfg.dynamic_batching.SetInParent()                      # present even though all fields are 0
    _runner(cfg, o, "full")
    return _common(cfg, "full", o)


def _step(graph: GraphSpec, name: str, o: PackageOptions) -> ModelConfig:
    native = o.target == "triton-gpu"          # Triton's own onnxruntime backend runs the graph
    growing = any(p.seq_axis is not None for p in graph.state)
    # A KV cache's past axis differs between sequences, and Triton's native backend stacks the
    # implicit states of a batch as they are: one sequence per execution there.
    batch = 1 if native and growing else o.max_batch_size
    cfg = ModelConfig(name=name, max_batch_size=batch)
    state_in = graph.state_inputs
    state_out = {p.output for p in graph.state}
    # attention_mask/position_ids come from the sequence the server keeps: our server and the
    # python backend derive them; under triton-gpu the backend's graph derives them itself
    # (triton_gpu_graphs.add_sequence_start). A client of NAME_step sends input_ids only.
    derived = [t.name for t in graph.inputs if t.role in DERIVED_ROLES]
    _add_tensors(cfg.input, [t for t in graph.inputs if t.name not in state_in and t.name not in derived])
    _add_tensors(cfg.output, [t for t in graph.outputs if t.name not in state_out])
    sb = cfg.sequence_batching
    sb.max_sequence_idle_microseconds = int(o.sequence_idle_seconds * 1e6)
    C = mc.ModelSequenceBatching.Control
    # Triton's onnxruntime backend feeds every configured control to the graph and refuses to load
    # a model whose graph lacks one ("configuration specified sequence control 'START', but model
    # does not provide that input", onnxruntime.cc ValidateBooleanSequenceControl). Core resets
    # implicit state on START by itself, so under triton-gpu only the KV-cache graph takes START
    # (to drop Triton's 1-long initial past); recurrent step graphs take no control at all.
    if native:
        controls = (("START", C.CONTROL_SEQUENCE_START),) if growing else ()
    else:
        controls = (("START", C.CONTROL_SEQUENCE_START), ("END", C.CONTROL_SEQUENCE_END),
                    ("READY", C.CONTROL_SEQUENCE_READY))
    for ctl_name, kind in controls:
        sb.control_input.add(name=ctl_name).control.add(kind=kind, int32_false_true=[0, 1])
    if not native:
        sb.control_input.add(name="CORRID").control.add(kind=C.CONTROL_SEQUENCE_CORRID, data_type=mc.TYPE_UINT64)
    # Implicit state: Triton's native backend carries it; the python backend would ignore it
    # (the model keeps state itself), so triton-python configs leave it out.
    for pair in (graph.state if o.target != "triton-python" else ()):
        t = graph.input(pair.input)
        dims = config_dims(t)
        st = sb.state.add(input_name=pair.input, output_name=pair.output,
                          data_type=triton_type(t.dtype), dims=dims)
        # A new sequence starts from zeros. Triton core gives a new sequence's state the state
        # dims with every -1 replaced by 1 and the initial_state's bytes (core sequence_state.cc,
        # SequenceStates::Initialize), so under triton-gpu the initial KV cache is 1 long (the
        # graph drops it on START); seqserve's own server starts it empty.
        first = 1 if native else 0
        st.initial_state.add(data_type=st.data_type, dims=[first if d == -1 else d for d in dims],
                             zero_data=True, name="zeros")
    sb.oldest.max_candidate_sequences = o.max_sequences
    sb.oldest.max_queue_delay_microseconds = 0
    _runner(cfg, o, "step")
    if derived:
        cfg.parameters["seqserve.derived_inputs"].string_value = ",".join(derived)
    return _common(cfg, "step", o)


def _step_state(graph: GraphSpec, name: str, o: PackageOptions) -> ModelConfig:
    """NAME_step_state: the step graph's own tensors, every one required (token ids and each past_*
    in; logits and each present_* out), dynamic batching, no sequence controls. The state inputs are
    required, not optional (zeros when absent): Triton's onnxruntime backend refuses optional inputs
    on a model that batches ("optional input ... is not supported for models that support
    batching", onnxruntime.cc ValidateInputs), and the signature is the same on every target. A
    client starts a sequence by sending zeros."""
    cfg = ModelConfig(name=name, max_batch_size=o.max_batch_size)
    _add_tensors(cfg.input, graph.inputs)
    _add_tensors(cfg.output, graph.outputs)
    cfg.dynamic_batching.max_queue_delay_microseconds = 0
    cfg.dynamic_batching.SetInParent()
    _runner(cfg, o, "step_state")
    cfg.parameters[STATE_PAIRS].string_value = ",".join(f"{p.input}:{p.output}" for p in graph.state)
    return _common(cfg, "step_state", o)


def state_pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """[(past input, present output)] of a NAME_step_state config (its seqserve.state_pairs)."""
    text = cfg.parameters[STATE_PAIRS].string_value if STATE_PAIRS in cfg.parameters else ""
    return [tuple(x.split(":", 1)) for x in text.split(",") if ":" in x]


def _generate(name: str, o: PackageOptions, spec=None) -> ModelConfig:
    cfg = ModelConfig(name=name, max_batch_size=0)
    cfg.model_transaction_policy.decoupled = True    # many responses (text pieces) per request
    conditioning = conditioning_inputs(spec) if spec is not None else []
    # conditioned: the features of ONE sequence ([F]: batch axis stripped, as JSON and clients
    # send a vector), and text_input becomes an optional prefix
    for t in conditioning:
        cfg.input.add(name=t.name, data_type=triton_type(t.dtype), dims=config_dims(t))
    cfg.input.add(name="text_input", data_type=mc.TYPE_STRING, dims=[1], optional=bool(conditioning))
    for n, t, dims in GENERATE_OPTIONAL:
        cfg.input.add(name=n, data_type=t, dims=dims, optional=True)
    cfg.output.add(name="text_output", data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name="finish_reason", data_type=mc.TYPE_STRING, dims=[1])
    cfg.parameters["seqserve.max_streams"].string_value = str(o.max_streams)
    if spec is not None and spec.io.get("source_chars"):
        # encoder-decoder: what a source may hold, so a load tester synthesizes valid sources
        cfg.parameters["seqserve.source_chars"].string_value = spec.io["source_chars"]
        cfg.parameters["seqserve.max_source_len"].string_value = str(spec.io.get("max_source_len") or "")
    _runner(cfg, o, "generate")
    return _common(cfg, "generate", o)


# ---- text form --------------------------------------------------------------------------------

def to_pbtxt(cfg: ModelConfig) -> str:
    text = text_format.MessageToString(cfg)
    # proto3 omits enum fields at their default, and CONTROL_SEQUENCE_START is 0: spell it out so a
    # reader sees all four controls (parsing gives the same message either way).
    return re.sub(r"(\n( *)control \{\n)(?!\2  kind: )", r"\1\2  kind: CONTROL_SEQUENCE_START\n", text)


def parse_config(text: str, where: str) -> ModelConfig:
    """Strict parse (unknown fields and enum values fail), errors naming `where` and the line."""
    cfg = ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        msg = str(e).split(" : ", 1)[-1]    # drop the "line:col" prefix; we say it our way
        raise SeqserveError(f"{where}:{e.GetLine()}:{e.GetColumn()}: {msg} "
                            "(expected a Triton ModelConfig in protobuf text format)") from None
    return cfg


# ---- checking against the ONNX graph ------------------------------------------------------------

@dataclass(frozen=True)
class _OnnxTensor:
    data_type: int          # Triton type
    dims: tuple[int, ...]   # every axis; -1 for a named or unknown one


def onnx_signature(onnx_path: str | Path) -> tuple[dict[str, _OnnxTensor], dict[str, _OnnxTensor]]:
    """(inputs, outputs) of an ONNX graph by name, in Triton's terms; weights are not loaded."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    g = model.graph
    weights = {i.name for i in g.initializer}     # old IRs list initializers among the inputs

    def table(values) -> dict[str, _OnnxTensor]:
        out = {}
        for v in values:
            if v.name in weights:
                continue
            tt = v.type.tensor_type
            try:
                dtype = triton_type(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name)
            except (KeyError, SeqserveError, TypeError, ValueError):
                dtype = mc.TYPE_INVALID
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            out[v.name] = _OnnxTensor(dtype, dims)
        return out

    return table(g.input), table(g.output)


def _compare(role: str, name: str, data_type: int, dims: list[int], have: dict[str, _OnnxTensor],
             batched: bool) -> list[str]:
    """Problems with one config tensor against the ONNX tensor of the same name."""
    if name not in have:
        return [f"{role} {name} is not an ONNX graph {role.split()[-1]} (the graph has {sorted(have)})"]
    t, problems = have[name], []
    if data_type != t.data_type:
        problems.append(f"{role} {name} has data_type {type_name(data_type)} in the config but "
                        f"{type_name(t.data_type)} in the ONNX graph")
    onnx_dims = list(t.dims)
    if batched:
        if not onnx_dims or onnx_dims[0] != -1:
            problems.append(f"{role} {name} has ONNX dims {onnx_dims}; with max_batch_size > 0 the "
                            "first axis must be a dynamic batch axis")
            return problems
        onnx_dims = onnx_dims[1:]
    if list(dims) != onnx_dims:
        problems.append(f"{role} {name} has dims {list(dims)} in the config but {onnx_dims} in the "
                        f"ONNX graph{' (after the batch axis)' if batched else ''}")
    return problems


def check_against_onnx(cfg: ModelConfig, onnx_path: str | Path, spec: GraphSpec) -> list[str]:
    """What in `cfg` disagrees with the ONNX graph it will serve; [] when they agree.

    full/step configs: every input, output and state tensor must exist in the graph with the same
    data type and dims (after the batch axis when max_batch_size > 0), and every graph input must be
    fed (a config input, a state input, a sequence control, or one the server derives). The
    onnxruntime backend's own rules (triton-gpu) are checked by seqserve.triton.onnxruntime_backend. A generate config's tensors
    are text, so only its graph is checked: it must be `spec` (the step graph, state pairs included).
    """
    inputs, outputs = onnx_signature(onnx_path)
    problems: list[str] = []
    text_kind = cfg.parameters["seqserve.kind"].string_value if "seqserve.kind" in cfg.parameters else ""
    if text_kind == "classify":      # text in: only the graph it runs is checked (the full graph)
        for t in spec.inputs:
            problems += _compare("input", t.name, triton_type(t.dtype), _dims(t), inputs, batched=False)
        for t in spec.outputs:
            problems += _compare("output", t.name, triton_type(t.dtype), _dims(t), outputs, batched=False)
        return problems
    if text_kind == "generate":
        for t in spec.inputs:
            problems += _compare("input", t.name, triton_type(t.dtype), _dims(t), inputs, batched=False)
        for t in spec.outputs:
            problems += _compare("output", t.name, triton_type(t.dtype), _dims(t), outputs, batched=False)
        if not spec.state:
            problems.append(f"graph spec {spec.name!r} has no state pairs; a generate model serves the step graph")
        return problems

    batched = cfg.max_batch_size > 0
    if text_kind == "step_state":       # the state pairs are plain inputs and outputs, named in the config
        pairs = state_pairs(cfg)
        if set(pairs) != {(p.input, p.output) for p in spec.state}:
            problems.append(f"{STATE_PAIRS} {pairs} is not the {spec.name} graph's state pairs "
                            f"{[(p.input, p.output) for p in spec.state]}")
        for p in spec.state:
            if p.input not in {t.name for t in cfg.input} or p.output not in {t.name for t in cfg.output}:
                problems.append(f"state pair {p.input} -> {p.output} of the {spec.name} graph is not a config "
                                "input and output")
    for t in cfg.input:
        problems += _compare("input", t.name, t.data_type, list(t.dims), inputs, batched)
    for t in cfg.output:
        problems += _compare("output", t.name, t.data_type, list(t.dims), outputs, batched)
    states = list(cfg.sequence_batching.state)
    for s in states:
        problems += _compare("state input", s.input_name, s.data_type, list(s.dims), inputs, batched)
        problems += _compare("state output", s.output_name, s.data_type, list(s.dims), outputs, batched)
    have_pairs = {(s.input_name, s.output_name) for s in states}
    own = keeps_own_state(cfg)
    for p in spec.state:
        if own or text_kind == "step_state":    # kept by the model itself, or by the client
            break
        if (p.input, p.output) not in have_pairs:
            problems.append(f"state pair {p.input} -> {p.output} of the {spec.name} graph has no "
                            "sequence_batching state in the config")
    fed = {t.name for t in cfg.input} | {s.input_name for s in states} | set(derived_inputs(cfg)) \
        | {c.name for c in cfg.sequence_batching.control_input}
    if own and cfg.sequence_batching.ByteSize():
        fed |= set(spec.state_inputs)
    for n in inputs:
        if n not in fed:
            problems.append(f"ONNX graph input {n} is fed by nothing in the config (not an input, "
                            "a state input_name, or in seqserve.derived_inputs)")
    return problems


def _dims(t: TensorSpec) -> list[int]:
    return [-1 if isinstance(d, str) else d for d in t.dims]
