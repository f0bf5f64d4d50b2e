"""Triton's gRPC service (inference.GRPCInferenceService) on grpc.aio.

Same Repository, same codec strictness as HTTP. `ServeError.status` maps to a gRPC status code;
anything else is a bug, logged and answered INTERNAL. ModelStreamInfer handles each request of a
stream concurrently and writes responses as they come (one writer, a bounded queue between them,
so a slow reader slows the producers instead of growing memory).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import logging
import time

import grpc
from google.protobuf.json_format import ParseDict
from google.protobuf.message_factory import GetMessageClass
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from seqserve.serve.base import Repository
from seqserve.serve.codec import bad, decode_grpc_infer, encode_grpc_infer
from seqserve.serve.types import InferRequest, ServeError

log = logging.getLogger("seqserve.serve.grpc")

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_PUBLIC = frozenset({"ServerLive", "ServerReady"})   # like /v2/health/*: no API key needed
_STREAM_QUEUE = 256
_WAKE = object()     # a stream's queue item that carries no response: look at the state again
# Inline runs over gRPC (worker.py). grpc.aio hands the loop one new RPC per pass, so concurrent
# ModelInfer calls each look alone after the yields that catch concurrent HTTP requests, and running
# them inline cost continuous batching. Instead, a ModelInfer may run inline only while the
# servicer has seen no sign of concurrency for _CALM_S: another ModelInfer in flight when one
# arrives, or one arriving within _BURST_GAP_S of the previous one's answer (a waiting RPC
# is handed over within tens of microseconds; one client's next call comes after a round trip:
# encode, write, the client's parse and send, our read - several hundred microseconds here).
_BURST_GAP_S = 100e-6
_CALM_S = 1.0


class Undecodable:
    """What the request deserializer returns for bytes that are not the RPC's message: the
    handler answers INVALID_ARGUMENT instead of grpcio's UNKNOWN "Unexpected DecodeError"."""

    def __init__(self, message_type: str, error: Exception):
        self.message = (f"the request is not a valid {message_type} protobuf message ({error}); "
                        f"send an inference.{message_type} as Triton's gRPC API defines it")


def _deserializer(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception as e:          # DecodeError, or RuntimeWarning-style C++ parse errors
            return Undecodable(message_class.DESCRIPTOR.name, e)
    return parse


def grpc_code(status: int) -> grpc.StatusCode:
    if status in _CODES:
        return _CODES[status]
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


def _rpc(method):
    """Unary handler wrapper: ServeError -> its code, anything else -> logged INTERNAL."""
    @functools.wraps(method)
    async def run(self, request, context):
        try:
            if isinstance(request, Undecodable):
                raise bad(request.message)
            return await method(self, request, context)
        except ServeError as e:
            if e.status >= 500 and e.status != 503:
                log.error("%s: %s", method.__name__, e.message)
            await context.abort(grpc_code(e.status), e.message)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal server error: {type(e).__name__}: {e}")
    return run


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """An error for one request of a stream; the stream stays open (Triton does the same)."""
    out = pb.ModelStreamInferResponse(error_message=message)
    out.infer_response.id = request.id
    out.infer_response.model_name = request.model_name
    out.infer_response.model_version = request.model_version
    out.infer_response.parameters["triton_final_response"].bool_param = True
    return out


class _Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repo: Repository):
        self.repo = repo
        self.ending = False
        self._streams: set = set()      # a wake-up per open ModelStreamInfer call
        self._in_flight = 0             # ModelInfer calls being handled
        self._last_answer = 0.0         # when the last one returned (time.monotonic)
        self._concurrent_until = 0.0    # no inline runs before this time

    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.repo.live())

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.repo.ready())

    @_rpc
    async def ModelReady(self, request, context):
        try:
            self.repo.get(request.name, request.version)
        except ServeError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc
    async def ServerMetadata(self, request, context):
        meta = self.repo.server_metadata()
        return pb.ServerMetadataResponse(name=meta.get("name", ""), version=meta.get("version", ""),
                                         extensions=meta.get("extensions", []))

    @_rpc
    async def ModelMetadata(self, request, context):
        meta = self.repo.get(request.name, request.version).metadata()
        return ParseDict(meta, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    @_rpc
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self.repo.get(request.name, request.version).config)

    @_rpc
    async def ModelStatistics(self, request, context):
        # Triton's statistics JSON uses the protobuf's own field names.
        stats = self.repo.stats_json(request.name, request.version)
        return ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    @_rpc
    async def RepositoryIndex(self, request, context):
        index = pb.RepositoryIndexResponse()
        for entry in self.repo.index(ready_only=request.ready):
            index.models.add(name=entry.get("name", ""), version=str(entry.get("version", "")),
                             state=entry.get("state", ""), reason=entry.get("reason", ""))
        return index

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        if any(key == "config" or key.startswith("file:") for key in request.parameters):
            raise bad("loading with a config or file override is not supported; models load "
                      "from the repository folder as packaged")
        await self.repo.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        await self.repo.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_rpc
    async def ModelInfer(self, request, context):
        now = time.monotonic()
        if self._in_flight or now - self._last_answer < _BURST_GAP_S:
            self._concurrent_until = now + _CALM_S
        self._in_flight += 1
        try:
            req = decode_grpc_infer(request)
            req.inline_ok = now >= self._concurrent_until
            resp = await self.repo.get(req.model, req.version).infer(req)
            return encode_grpc_infer(resp, req)
        finally:
            self._in_flight -= 1
            self._last_answer = time.monotonic()

    def end_streams(self) -> None:
        """Shutdown (after the models ended every request with a terminal answer): each open
        ModelStreamInfer call ends with status OK once the responses it owes are written, instead
        of waiting for a client that may keep its side open, or being cut UNAVAILABLE."""
        self.ending = True
        for wake in list(self._streams):
            wake()

    async def ModelStreamInfer(self, request_iterator, context):
        queue: asyncio.Queue = asyncio.Queue(_STREAM_QUEUE)
        tasks: set[asyncio.Task] = set()

        def wake() -> None:
            if queue.empty():
                queue.put_nowait(_WAKE)

        async def handle(request) -> None:
            try:
                if isinstance(request, Undecodable):
                    request, message = pb.ModelInferRequest(), request.message
                    raise bad(message)
                async for response in self._stream_one(request):
                    await queue.put(response)
            except ServeError as e:
                await queue.put(_stream_error(request, e.message))
            except Exception as e:
                log.exception("unexpected error in ModelStreamInfer")
                await queue.put(_stream_error(
                    request, f"internal server error: {type(e).__name__}: {e}"))
            finally:            # (before its done-callback runs: the writer looks at `tasks`)
                tasks.discard(asyncio.current_task())
                wake()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(handle(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:   # the client closed its side: finish what it asked for
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read())
        self._streams.add(wake)
        try:
            while (response := await queue.get()) is not None:
                if response is not _WAKE:
                    yield response
                if self.ending and not tasks and queue.empty():
                    return      # shutdown: everything owed was written; end with status OK
        finally:   # done, or the client went away: stop producing for it
            self._streams.discard(wake)
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(self, request: pb.ModelInferRequest):
        """Stream responses for one request, flagged like Triton: every response carries
        triton_final_response; a decoupled model whose stream ends without a response flagged
        final gets an empty final response if the client asked for it."""
        req: InferRequest = decode_grpc_infer(request)
        model = self.repo.get(req.model, req.version)
        want_empty_final = req.parameters.pop("triton_enable_empty_final_response", False)
        final_sent = False
        async for resp in model.stream(req):
            final = bool(resp.parameters.get("triton_final_response")) or not model.decoupled
            resp.parameters["triton_final_response"] = final
            final_sent = final_sent or final
            yield pb.ModelStreamInferResponse(infer_response=encode_grpc_infer(resp, req))
        if not final_sent and want_empty_final:
            empty = pb.ModelInferResponse(model_name=req.model, model_version=req.version,
                                          id=req.id)
            empty.parameters["triton_final_response"].bool_param = True
            yield pb.ModelStreamInferResponse(infer_response=empty)


def _unimplemented(name: str):
    async def method(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"{name} is not supported by this server (no shared memory, tracing "
                            f"or log settings); send tensors in the request instead")
    method.__name__ = name
    return method


# Every RPC of the service not implemented above answers UNIMPLEMENTED with a reason (the
# generated base class's versions are synchronous, which grpc.aio would reject).
for _method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in _Servicer.__dict__:
        setattr(_Servicer, _method.name, _unimplemented(_method.name))


class _ApiKey(grpc.aio.ServerInterceptor):
    """Requires metadata 'authorization: Bearer <key>' on every RPC but the health checks."""

    def __init__(self, key: str):
        self._expected = f"Bearer {key}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.rsplit("/", 1)[-1] in _PUBLIC:
            return handler
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) \
                    and hmac.compare_digest(value.encode(), self._expected):
                return handler
        return _deny(handler)


def _deny(handler):
    message = "missing or wrong API key: send metadata 'authorization: Bearer <key>'"

    async def deny(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = dict(request_deserializer=handler.request_deserializer,
                  response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


def _handlers(servicer: _Servicer) -> grpc.GenericRpcHandler:
    """The service's method handlers, as grpc's generated add_..._to_server builds them, but with
    a request deserializer that never raises (see Undecodable)."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[
            (method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(getattr(servicer, method.name),
                                     request_deserializer=_deserializer(request_class),
                                     response_serializer=response_class.SerializeToString)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def make_grpc_server(repo: Repository, *, host: str, port: int, api_key: str | None = None,
                     max_request_bytes: int = 64 << 20) -> grpc.aio.Server:
    """The gRPC front end, bound but not started: `await server.start()` inside the running loop
    (create it there too). `server.bound_port` is the port actually bound (for port=0)."""
    server = grpc.aio.server(
        interceptors=[_ApiKey(api_key)] if api_key else None,
        options=[("grpc.max_receive_message_length", max_request_bytes),
                 ("grpc.max_send_message_length", -1),
                 # gRPC sets SO_REUSEPORT by default: a second server on the same port would
                 # silently share its traffic instead of failing to start.
                 ("grpc.so_reuseport", 0)])
    servicer = _Servicer(repo)
    server.add_generic_rpc_handlers((_handlers(servicer),))
    server.servicer = servicer
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server.bound_port = server.add_insecure_port(address)
    except RuntimeError as e:   # grpc's only word for it; callers expect OSError for ports
        raise OSError(errno.EADDRINUSE, f"gRPC cannot listen on {address} ({e})") from None
    return server
