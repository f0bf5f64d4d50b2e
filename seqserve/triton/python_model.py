"""Triton's python backend running seqserve's served models (the `triton-python` target, and the
generate model of `triton-gpu`).

Each version folder written by `seqserve package` for a python-backend model holds a two-line
model.py that imports `TritonPythonModel` from here. It builds the SAME served model class the
embedded server uses (FullModel, StepModel or GenerateModel: seqserve.serve), so batching,
sequence state, generation and every input check are one implementation for both servers:

    Triton ──execute(requests)──▶ TritonPythonModel ──InferRequest──▶ served model (asyncio loop
       ◀── responses / response_sender ◀──── InferResponse / ServeError ◀──  on a thread of ours)

- full: Triton's dynamic batcher hands over a list of requests; all are submitted at once and the
  model's own batcher stacks same-shape ones into one ONNX Runtime call.
- step: Triton's sequence batcher (oldest strategy) sends START/END/READY/CORRID as control inputs.
  The python backend ignores implicit state, so the StepModel keeps each sequence's state keyed by
  correlation id, frees it on END or after max_sequence_idle_microseconds; a request with READY=0
  (a direct-strategy filler slot) is answered without touching any state.
- generate (decoupled): execute() returns at once; each request streams its text pieces through
  its response sender, the last with TRITONSERVER_RESPONSE_COMPLETE_FINAL.

`triton_python_backend_utils` exists only inside Triton's stub: it is imported in initialize().
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np

CONTROLS = ("START", "END", "READY", "CORRID")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import os

        import triton_python_backend_utils as pb_utils

        if int(np.__version__.split(".")[0]) >= 2 and not os.environ.get("SEQSERVE_STUB_NUMPY2_OK"):
            # Measured with Triton 2.51: its stub is built for the numpy 1 ABI, and under numpy 2
            # every output tensor reaches the client empty. Refuse to load rather than serve that.
            raise RuntimeError(
                f"this python-backend stub runs numpy {np.__version__}; Triton's stub (2.51) needs numpy 1.x "
                "or every output arrives empty. Start it with `seqserve serve --engine triton` (which gives "
                "the stub a numpy-1 overlay of this environment) or install seqserve[triton]; set "
                "SEQSERVE_STUB_NUMPY2_OK=1 for a Triton whose stub is built for numpy 2")

        from seqserve.package import load_version, read_config
        from seqserve.package.triton_config import kind_of
        from seqserve.runtime import RuntimeOptions
        from seqserve.serve.repository import _model_class

        self.pb = pb_utils
        model_dir = Path(args["model_repository"])
        version = str(args["model_version"])
        config = read_config(model_dir)                 # the strict protobuf, as our server reads it
        served = load_version(model_dir / version)
        kind = kind_of(config)
        params = config.parameters
        device = params["seqserve.device"].string_value if "seqserve.device" in params else ""
        if not device:
            device = "cuda" if args.get("model_instance_kind") == "GPU" else "cpu"
        threads = int(params["seqserve.intra_op_threads"].string_value) \
            if "seqserve.intra_op_threads" in params else 1
        options = RuntimeOptions(device=device, intra_op_threads=threads)
        self.kind = kind
        self.model = _model_class(kind)(args["model_name"], version, config, served, options)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"]))
        self.input_names = [i.name for i in config.input]
        self.ready_zeros = {o.name: o for o in config.output}   # READY=0 answer
        # The served models are asyncio code (the embedded server's loop); here they get a loop of
        # their own on a thread, and execute() hands requests to it.
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="seqserve-loop", daemon=True)
        self.thread.start()

    # -- requests ---------------------------------------------------------------------------------

    def _request(self, request):
        """A Triton request as seqserve's InferRequest (None for a READY=0 filler)."""
        from seqserve.serve.types import InferRequest, RequestedOutput

        inputs, controls = {}, {}
        for name in (*self.input_names, *CONTROLS):
            t = self.pb.get_input_tensor_by_name(request, name)
            if t is None:
                continue
            a = t.as_numpy()
            if name in CONTROLS:
                controls[name] = a.reshape(-1)[0].item() if a.size else 0
            else:
                inputs[name] = a
        from seqserve.serve.codec import check_parameters

        params: dict = {}
        try:
            params = json.loads(request.parameters() or "{}")
        except (TypeError, ValueError):
            params = {}
        check_parameters(params, "request parameters")   # the embedded server's rule, ServeError 400
        if self.kind == "step":
            if controls.get("READY", 1) == 0:
                return None
            corrid = controls.get("CORRID") or request.correlation_id()
            params.update(sequence_id=corrid, sequence_start=bool(controls.get("START", 0)),
                          sequence_end=bool(controls.get("END", 0)))
        wanted = request.requested_output_names()
        outputs = [RequestedOutput(n) for n in wanted] if wanted else None
        return InferRequest(model=self.model.name, version=self.model.version, id=request.request_id(),
                            inputs=inputs, outputs=outputs, parameters=params)

    def _response(self, result):
        from seqserve.serve.types import ServeError

        pb = self.pb
        if isinstance(result, ServeError):
            return pb.InferenceResponse(output_tensors=[], error=self._error(result))
        if isinstance(result, BaseException):
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                f"model '{self.model.name}' failed: {result}"))
        return pb.InferenceResponse(output_tensors=[pb.Tensor(n, _contiguous(a)) for n, a in result.outputs.items()])

    def _error(self, e):
        pb = self.pb
        code = {400: "INVALID_ARG", 404: "NOT_FOUND", 413: "INVALID_ARG", 429: "UNAVAILABLE",
                503: "UNAVAILABLE"}.get(getattr(e, "status", 500), "INTERNAL")
        try:
            return pb.TritonError(e.message, getattr(pb.TritonError, code))
        except (AttributeError, TypeError):      # a stub without error codes
            return pb.TritonError(e.message)

    def _filler(self):
        """The answer to a READY=0 request: zeros of each output, state untouched."""
        from tritonclient.grpc import model_config_pb2 as mc

        from seqserve.serve.types import DATATYPES
        from seqserve.serve.models import TRITON_TO_KSERVE

        out = []
        for o in self.ready_zeros.values():
            dtype = DATATYPES[TRITON_TO_KSERVE[mc.DataType.Name(o.data_type)]]
            shape = [1] + [max(int(d), 1) for d in o.dims]
            out.append(self.pb.Tensor(o.name, np.zeros(shape, dtype=dtype)))
        return self.pb.InferenceResponse(output_tensors=out)

    async def _infer(self, req):
        try:
            return await self.model.infer(req)
        except BaseException as e:        # noqa: BLE001 - every failure becomes that request's error
            return e

    async def _stream(self, req, sender) -> None:
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        sent_final = False
        try:
            async for r in self.model.stream(req):
                last = bool(r.parameters.get("triton_final_response"))
                sender.send(self._response(r), flags=final if last else 0)
                sent_final = last
        except BaseException as e:        # noqa: BLE001
            sender.send(self._response(e), flags=final)
            sent_final = True
        if not sent_final:
            sender.send(flags=final)

    # -- Triton's entry points ----------------------------------------------------------------------

    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                sender = request.get_response_sender()
                try:
                    req = self._request(request)
                except Exception as e:      # noqa: BLE001
                    sender.send(self._response(e), flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                asyncio.run_coroutine_threadsafe(self._stream(req, sender), self.loop)
            return None
        pending = []
        for request in requests:
            try:
                req = self._request(request)
            except Exception as e:          # noqa: BLE001
                pending.append(e)
                continue
            pending.append(None if req is None else
                           asyncio.run_coroutine_threadsafe(self._infer(req), self.loop))
        return [self._filler() if p is None else
                self._response(p if isinstance(p, BaseException) else p.result()) for p in pending]

    def finalize(self) -> None:
        self.model.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def _contiguous(a: np.ndarray) -> np.ndarray:
    # pb_utils.Tensor reads the array's own buffer: a view (a row of a batch, a slice of ORT's
    # output) came back empty (measured, Triton 2.51), so hand it an array that owns its data.
    return a if a.base is None and a.flags.c_contiguous else np.array(a, order="C", copy=True)
