"""KServe v2 gRPC for load: grpc.aio with requests serialized once, responses left unparsed.

One channel (HTTP/2 multiplexes every request in flight); a lane is a slot that carries one call
at a time. Unary calls (infer, sequence steps) send pre-serialized `ModelInferRequest` bytes and
do not deserialize the answer: a gRPC status other than OK is the error. Generation opens one
`ModelStreamInfer` stream per request and reads responses until one is flagged
`triton_final_response` (requested with `triton_enable_empty_final_response`).
A sequence step or a generation stream is a `Routed` message: its routing key goes out as
`x-sequence-id` metadata (seqserve/serve/routing.py), outside the protobuf.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from seqserve.loadtest import calls as C
from seqserve.loadtest.calls import Call, now_ns
from seqserve.loadtest.http_client import datatype_of, raw_bytes
from seqserve.serve.routing import HEADER, routing_key

_SERVICE = "/inference.GRPCInferenceService/"


def _set_param(p, value) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


class Routed(bytes):
    """A serialized request plus the routing key it travels under (gRPC metadata `x-sequence-id`).
    Still bytes: sizes and writes are the message's."""

    key: str


def routed(payload: bytes, key) -> Routed:
    r = Routed(payload)
    r.key = routing_key(key)
    return r


def key_of(payload: bytes) -> str | None:
    return getattr(payload, "key", None)


class GrpcEncoder:
    """Serialized ModelInferRequest messages for one model."""

    def __init__(self, model: str):
        self.model = model

    @staticmethod
    def route(payload: bytes, key) -> Routed:
        return routed(payload, key)

    def infer(self, inputs: dict[str, np.ndarray], parameters: dict | None = None) -> bytes:
        r = pb.ModelInferRequest(model_name=self.model)
        for name, a in inputs.items():
            t = r.inputs.add()
            t.name, t.datatype = name, datatype_of(a)
            t.shape.extend(a.shape)
            r.raw_input_contents.append(raw_bytes(a))
        for k, v in (parameters or {}).items():
            _set_param(r.parameters[k], v)
        sid = (parameters or {}).get("sequence_id")
        return routed(r.SerializeToString(), sid) if sid else r.SerializeToString()

    def generate(self, inputs: dict[str, np.ndarray]) -> bytes:
        return self.infer(inputs, {"triton_enable_empty_final_response": True})


class GrpcClient:
    """The channel and its two methods; lanes share it."""

    def __init__(self, target, api_key: str | None, timeout: float):
        opts = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.aio.insecure_channel(target.address, options=opts)
        self.unary = self.channel.unary_unary(_SERVICE + "ModelInfer")   # bytes in, bytes out
        self.stream = self.channel.stream_stream(_SERVICE + "ModelStreamInfer",
                                                 response_deserializer=pb.ModelStreamInferResponse.FromString)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout

    def metadata_for(self, payload: bytes) -> tuple | None:
        key = key_of(payload)
        return (*self.metadata, (HEADER, key)) if key else (self.metadata or None)

    async def close(self) -> None:
        await self.channel.close(grace=None)


class GrpcLane:
    def __init__(self, client: GrpcClient, on_done):
        self.client, self.on_done = client, on_done
        self.call: Call | None = None
        self.task: asyncio.Task | None = None
        self.dead = False
        self.slot = None
        self.keep_answer = False
        self.last = b""             # the last unary answer, kept with keep_answer (client-held state)

    @classmethod
    async def open(cls, client: GrpcClient, on_done) -> "GrpcLane":
        return cls(client, on_done)

    @property
    def busy(self) -> bool:
        return self.call is not None

    def send(self, call: Call, payload: bytes, streaming: bool) -> None:
        self.call = call
        call.sent = now_ns()
        self.task = asyncio.ensure_future(self._stream(call, payload) if streaming else self._unary(call, payload))

    async def _unary(self, call: Call, payload: bytes) -> None:
        try:
            got = await self.client.unary(payload, metadata=self.client.metadata_for(payload), timeout=self.client.timeout)
            if self.keep_answer:
                self.last = got
        except grpc.aio.AioRpcError as e:
            call.fail(_kind(e), e.details() or "")
        except asyncio.CancelledError:
            return
        self._finish()

    async def _stream(self, call: Call, payload: bytes) -> None:
        rpc = self.client.stream(metadata=self.client.metadata_for(payload), timeout=self.client.timeout)
        try:
            await rpc.write(payload)
            async for resp in rpc:
                t = now_ns()
                if resp.error_message:
                    call.fail(C.STREAM, resp.error_message)
                    break
                if record_stream_response(call, resp.infer_response, t):
                    break
            else:
                call.fail(C.CLOSED, "the stream ended without a final response")
        except grpc.aio.AioRpcError as e:
            call.fail(_kind(e), e.details() or "")
        except asyncio.CancelledError:
            rpc.cancel()
            return
        rpc.cancel()
        self._finish()

    def answer(self, names) -> dict:
        from tritonclient.grpc import InferResult

        r = InferResult(pb.ModelInferResponse.FromString(self.last))
        return {n: r.as_numpy(n) for n in names}

    def abort(self, kind: str, message: str = "") -> None:
        # the server may still be working on the call: this lane (and its sequence) is not reused
        self.dead = True
        if self.task is not None:
            self.task.cancel()
        self._finish(kind, message)

    def close(self) -> None:
        self.dead = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _finish(self, kind: str = "", message: str = "") -> None:
        call, self.call = self.call, None
        if call is None:
            return
        if kind:
            call.fail(kind, message)
        elif not call.end:
            call.end = now_ns()
        self.on_done(self, call)


def _kind(e: grpc.aio.AioRpcError) -> str:
    code = e.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return C.TIMEOUT
    return f"gRPC {code.name}"


def record_stream_response(call, r: pb.ModelInferResponse, t: int) -> bool:
    """Count one streamed response of `call` (a token when it carries text, at time t); True when
    it is the final one. Shared by the grpc.aio and the HTTP/2 clients."""
    if _has_text(r):
        if call.times is None:
            call.times = []
        call.times.append(t)
        call.tokens += 1
    final = r.parameters.get("triton_final_response")
    return final is not None and final.bool_param


def _has_text(r: pb.ModelInferResponse) -> bool:
    for i, o in enumerate(r.outputs):
        if o.name == "text_output":
            if i < len(r.raw_output_contents):
                return len(r.raw_output_contents[i]) > 4      # 4-byte length prefix + text
            return any(o.contents.bytes_contents)
    return False
