"""ONNX Runtime sessions and the ORT backend of the decoding loop.

On CPU, numpy arrays go in and come out without copies (ORT wraps contiguous numpy memory).
On CUDA the state outputs are bound to device memory with I/O binding and fed back as OrtValues,
so the KV cache / hidden state never travels to the host between steps; only logits do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqserve.errors import SeqserveError
from seqserve.tasks.spec import GraphSpec


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "cpu"            # "cpu" | "cuda"
    intra_op_threads: int = 0      # 0: one per physical core (ORT default)
    inter_op_threads: int = 1      # graphs here are sequential; parallel executor does not pay
    graph_optimization: str = "all"  # "disable" | "basic" | "extended" | "all"
    io_binding: bool | None = None   # None: on for cuda, off for cpu (no gain measured on CPU)
    # session.intra_op.allow_spinning / inter_op: None = ONNX Runtime's default (spin). Idle pool
    # threads spinning compete with the server's event loop on a small machine (serve_overhead.py).
    allow_spinning: bool | None = None

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise SeqserveError(f"unknown device {self.device!r}; expected cpu or cuda")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise SeqserveError(f"thread counts must be >= 0 (0 = ONNX Runtime's default), got "
                                f"intra-op {self.intra_op_threads}, inter-op {self.inter_op_threads}")
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise SeqserveError(f"unknown graph optimization level {self.graph_optimization!r}; "
                                "expected disable, basic, extended or all")


def create_session(path: str | Path, options: RuntimeOptions = RuntimeOptions()):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if options.allow_spinning is not None:
        flag = "1" if options.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", flag)
        so.add_session_config_entry("session.inter_op.allow_spinning", flag)
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization]
    so.log_severity_level = 3   # errors only: we report provider fallback ourselves
    providers = ["CPUExecutionProvider"]
    if options.device == "cuda":
        providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    elif options.device != "cpu":
        raise SeqserveError(f"unknown device {options.device!r}; expected cpu or cuda")
    if not Path(path).is_file():
        raise SeqserveError(f"ONNX graph {path} does not exist")
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        raise SeqserveError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None
    if options.device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise SeqserveError(
            "--device cuda was asked for but ONNX Runtime fell back to CPU: "
            f"available providers are {ort.get_available_providers()}; the CUDA provider needs "
            "onnxruntime-gpu, an NVIDIA driver and the CUDA 13 / cuDNN libraries on LD_LIBRARY_PATH")
    return session


class OrtBackend:
    """Runs one exported graph. run(feeds) -> outputs, by the spec's tensor names."""

    name = "ort"

    def __init__(self, export_info, graph: str = "step", options: RuntimeOptions = RuntimeOptions()):
        self.info = export_info
        self.spec: GraphSpec = export_info.graph(graph)
        self.options = options
        self.session = create_session(export_info.graph_path(graph), options)
        got_in, got_out = ([t.name for t in ts] for ts in (self.session.get_inputs(), self.session.get_outputs()))
        if set(got_in) != set(self.spec.input_names) or set(got_out) != set(self.spec.output_names):
            raise SeqserveError(
                f"{export_info.graph_path(graph).name} does not match the {graph} graph described in "
                f"seqserve.json: it has inputs {got_in} and outputs {got_out}; expected "
                f"{self.spec.input_names} and {self.spec.output_names}")
        use_binding = options.io_binding if options.io_binding is not None else options.device == "cuda"
        self._binding = self.session.io_binding() if use_binding else None
        self._device = "cuda" if options.device == "cuda" else "cpu"
        self._state_outputs = {p.output for p in self.spec.state}
        self._output_names = self.spec.output_names      # a property that builds a list: once
        # InferenceSession.run checks the feed names in Python (1-3 us) before calling the C++
        # session. A decode step of the small LSTM takes ~70 us, so with one feed per graph input
        # we call the C++ session directly (it rejects unknown names and wrong dtypes/shapes);
        # otherwise the public run() gives its clear "Required inputs ... are missing" error.
        native = getattr(self.session, "_sess", None)
        self._run_native = getattr(native, "run", None) if options.device == "cpu" else None
        self._n_inputs = len(self.session.get_inputs())

    def run(self, feeds: dict) -> dict:
        if self._binding is None:
            if self._run_native is not None and len(feeds) == self._n_inputs:
                return dict(zip(self._output_names, self._run_native(self._output_names, feeds, None)))
            return dict(zip(self._output_names, self.session.run(self._output_names, feeds)))
        return self._run_bound(feeds)

    def _run_bound(self, feeds: dict) -> dict:
        import onnxruntime as ort

        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                b.bind_ortvalue_input(name, value)      # state already on the device
            else:
                b.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.spec.output_names:
            # State stays where the compute is; logits come to the host for sampling.
            b.bind_output(name, self._device if name in self._state_outputs else "cpu")
        self.session.run_with_iobinding(b)
        outs = b.get_outputs()
        return {n: (v if n in self._state_outputs else v.numpy())
                for n, v in zip(self.spec.output_names, outs)}

    def to_host(self, value) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def from_host(self, array: np.ndarray):
        if self._binding is None:
            return array
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device, 0)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core counted once).

    ONNX Runtime's own default (intra_op_threads=0) is one thread per physical core; torch's
    default may differ, so benchmarks set both to this. Falls back to the logical CPU count.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    try:
        for c in cpus:
            topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
    except OSError:
        return max(len(cpus), 1)
    return max(len(cores), 1)
