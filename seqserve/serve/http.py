"""Triton's HTTP/REST API (KServe v2 + Triton's extensions) as a plain Starlette app.

Plain `Route`s and `Response`s, no middleware stack beyond Starlette's own: per-request overhead
is the router plus codec. Every handler goes through `_endpoint`, which applies the API key and
turns `ServeError` into its status with {"error": message}; anything else is a bug, logged with
its traceback and answered 500 {"error": ...} so that clients always get JSON.
"""

from __future__ import annotations

import hmac
import logging
import zlib

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from seqserve.serve.base import Repository
from seqserve.serve.codec import (bad, decode_generate, decode_http_infer, dumps,
                                  encode_generate, encode_http_infer, load_json)
from seqserve.serve.types import InferResponse, ServeError

log = logging.getLogger("seqserve.serve.http")

_NOT_SUPPORTED = ("shared memory, tracing and log settings are not supported by this server; "
                  "send tensors in the request body instead")


def _json(obj, status: int = 200) -> Response:
    return Response(dumps(obj), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _empty(status: int) -> Response:
    return Response(b"", status)


def _too_large(size: int | str, limit: int) -> ServeError:
    return ServeError(413, f"request body is {size} bytes, more than the {limit}-byte limit "
                           f"(max_request_bytes)")


def _byte_count(value: str, header: str) -> int:
    value = value.strip()
    if not (value.isascii() and value.isdigit()):   # isdigit alone admits "²"
        raise bad(f"{header} must be a byte count, got {value!r}")
    return int(value)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes: from Content-Length before reading anything,
    and while reading a chunked body; a compressed body is limited after decompression too."""
    length = request.headers.get("content-length")
    if length is not None:
        if _byte_count(length, "Content-Length") > limit:
            raise _too_large(int(length), limit)
        body = await request.body()
    else:
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _too_large(f"more than {total - len(chunk)}", limit)
            chunks.append(chunk)
        body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise bad(f"Content-Encoding {encoding!r} is not supported; expected gzip, deflate or "
                  f"identity")
    # tritonclient's "deflate" is zlib.compress (zlib header), "gzip" is gzip.compress.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise bad(f"request body is not valid {encoding} data: {e}") from None
    if len(data) > limit:
        raise _too_large("more than that once decompressed", limit)
    if not inflater.eof:
        raise bad(f"request body is truncated {encoding} data")
    return data


def _header_length(request: Request) -> int | None:
    value = request.headers.get("inference-header-content-length")
    return None if value is None else _byte_count(value, "Inference-Header-Content-Length")


def _model_version(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params["model"], params.get("version", "")


def _merge_stream(pieces: list[InferResponse], request) -> InferResponse:
    """One generate response from a decoupled model's stream: text_output pieces concatenated,
    every other output (finish_reason, ...) as its last response sent it."""
    merged = InferResponse(model=request.model, version=request.version, id=request.id)
    text = []
    for piece in pieces:
        merged.model, merged.version = piece.model or merged.model, piece.version or merged.version
        merged.parameters.update(piece.parameters)
        for name, array in piece.outputs.items():
            if name == "text_output":
                text.extend(item if isinstance(item, bytes) else str(item).encode()
                            for item in np.asarray(array).reshape(-1))
            else:
                merged.outputs[name] = array
    if text or any("text_output" in p.outputs for p in pieces):
        joined = np.empty(1, dtype=object)
        joined[0] = b"".join(text)
        merged.outputs = {"text_output": joined, **merged.outputs}
    return merged


def _sse(obj) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def _authorizer(api_key: str | None):
    """check(request) raising ServeError 401 unless it carries 'Authorization: Bearer <key>'
    (a no-op without a key). One check for the API and the metrics port."""
    expected = f"Bearer {api_key}".encode() if api_key else None

    def check(request: Request) -> None:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise ServeError(401, "missing or wrong API key: send the header "
                                      "'Authorization: Bearer <key>'")
    return check


def make_app(repo: Repository, *, api_key: str | None = None,
             max_request_bytes: int = 64 << 20) -> Starlette:
    """The HTTP front end; `api_key` guards every route but /v2/health/*."""
    authorize = _authorizer(api_key)

    def endpoint(handler, public: bool = False):
        async def run(request: Request) -> Response:
            try:
                if not public:
                    authorize(request)
                return await handler(request)
            except ServeError as e:
                if e.status >= 500 and e.status != 503:
                    log.error("%s %s: %s", request.method, request.url.path, e.message)
                return _error(e.status, e.message)
            except ClientDisconnect:
                return _empty(400)   # nobody is listening any more
            except Exception as e:
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return _error(500, f"internal server error: {type(e).__name__}: {e}")
        return run

    async def body_of(request: Request) -> bytes:
        return await _read_body(request, max_request_bytes)

    async def live(request):
        return _empty(200 if repo.live() else 503)

    async def ready(request):
        return _empty(200 if repo.ready() else 503)

    async def server_metadata(request):
        return _json(repo.server_metadata())

    async def model_metadata(request):
        return _json(repo.get(*_model_version(request)).metadata())

    async def model_ready(request):
        repo.get(*_model_version(request))   # 404 unknown, 503 not ready
        return _empty(200)

    async def model_config(request):
        return _json(repo.get(*_model_version(request)).config_json())

    async def model_stats(request):
        return _json(repo.stats_json(*_model_version(request)))

    async def all_stats(request):
        return _json(repo.stats_json())

    async def infer(request):
        name, version = _model_version(request)
        model = repo.get(name, version)
        header_length = _header_length(request)
        req = decode_http_infer(name, version, await body_of(request), header_length)
        resp = await model.infer(req)
        body, header_length = encode_http_infer(resp, req)
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_length)})

    async def generate_request(request):
        name, version = _model_version(request)
        model = repo.get(name, version)
        req = decode_generate(model.config, await body_of(request))
        req.model, req.version = name, version
        return model, req

    async def generate(request):
        model, req = await generate_request(request)
        if model.decoupled:
            resp = _merge_stream([piece async for piece in model.stream(req)], req)
        else:
            resp = await model.infer(req)
        return _json(encode_generate(resp, req))

    async def generate_stream(request):
        model, req = await generate_request(request)
        stream = aiter(model.stream(req))
        try:   # errors before the first response still get a proper HTTP status
            first = await anext(stream)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _close(stream)
            raise

        async def events():
            try:
                if first is not None:
                    yield _sse(encode_generate(first, req))
                async for piece in stream:
                    yield _sse(encode_generate(piece, req))
            except ServeError as e:   # the 200 status is already sent: report in the stream
                yield _sse({"error": e.message})
            except Exception as e:
                log.exception("unexpected error streaming %s", request.url.path)
                yield _sse({"error": f"internal server error: {type(e).__name__}: {e}"})
            finally:   # client gone or done: let the model drop the sequence
                await _close(stream)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def repository_index(request):
        body = await body_of(request)
        ready_only = False
        if body.strip():
            doc = load_json(body, "repository index request")
            if not isinstance(doc, dict) or doc.keys() - {"ready"} \
                    or not isinstance(doc.get("ready", False), bool):
                raise bad(f"repository index request must be {{}} or {{\"ready\": true|false}}, "
                          f"got {body[:200].decode('utf-8', 'replace')}")
            ready_only = doc.get("ready", False)
        return _json(repo.index(ready_only=ready_only))

    async def load_params(request) -> dict:
        body = await body_of(request)
        doc = load_json(body, "request") if body.strip() else {}
        params = doc.get("parameters", {}) if isinstance(doc, dict) else None
        if not isinstance(params, dict) or doc.keys() - {"parameters"}:
            raise bad("expected an empty body or {\"parameters\": {...}}")
        return params

    async def load(request):
        params = await load_params(request)
        if "config" in params or any(key.startswith("file:") for key in params):
            raise bad("loading with a config or file override is not supported; models load "
                      "from the repository folder as packaged")
        await repo.load(request.path_params["model"])
        return _empty(200)

    async def unload(request):
        await load_params(request)   # unload_dependents: nothing depends on anything here
        await repo.unload(request.path_params["model"])
        return _empty(200)

    async def not_supported(request):
        raise bad(_NOT_SUPPORTED)

    model = "/v2/models/{model}"
    versioned = [model, model + "/versions/{version}"]
    # The router tries routes in order: inference first, it is the hot path.
    routes = [Route(base + "/infer", endpoint(infer), methods=["POST"]) for base in versioned]
    routes += [
        Route("/v2/health/live", endpoint(live, public=True), methods=["GET"]),
        Route("/v2/health/ready", endpoint(ready, public=True), methods=["GET"]),
        Route("/v2", endpoint(server_metadata), methods=["GET"]),
        Route("/v2/models/stats", endpoint(all_stats), methods=["GET"]),
        Route("/v2/repository/index", endpoint(repository_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", endpoint(load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", endpoint(unload), methods=["POST"]),
    ]
    for base in versioned:
        routes += [
            Route(base, endpoint(model_metadata), methods=["GET"]),
            Route(base + "/ready", endpoint(model_ready), methods=["GET"]),
            Route(base + "/config", endpoint(model_config), methods=["GET"]),
            Route(base + "/stats", endpoint(model_stats), methods=["GET"]),
            Route(base + "/generate", endpoint(generate), methods=["POST"]),
            Route(base + "/generate_stream", endpoint(generate_stream), methods=["POST"]),
            Route(base + "/trace/setting", endpoint(not_supported), methods=["GET", "POST"]),
        ]
    for prefix in ("/v2/systemsharedmemory", "/v2/cudasharedmemory", "/v2/trace/setting",
                   "/v2/logging"):
        routes.append(Route(prefix + "{rest:path}", endpoint(not_supported),
                            methods=["GET", "POST"]))
    return Starlette(routes=routes, exception_handlers=_HANDLERS)


async def _close(stream) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        # Shielded: after a client disconnect Starlette cancels the response's scope, and anyio
        # cancellation would interrupt the model's own cleanup at its first await.
        with anyio.CancelScope(shield=True):
            await close()


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    """The router's own 404/405 (and anything else Starlette raises), as JSON."""
    if exc.status_code == 404:
        message = (f"no route {request.method} {request.url.path}; see Triton's HTTP API, "
                   f"e.g. POST /v2/models/<model>/infer")
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
    else:
        message = exc.detail
    return Response(dumps({"error": message}), exc.status_code, headers=exc.headers,
                    media_type="application/json")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, f"internal server error: {type(exc).__name__}: {exc}")


_HANDLERS = {HTTPException: _http_exception, Exception: _unexpected}


def make_metrics_app(repo: Repository, *, api_key: str | None = None) -> Starlette:
    """GET /metrics: Prometheus text exposition with Triton's metric names. With `api_key` it
    needs the same bearer token as the API (model names and traffic are not for everyone;
    Prometheus sends it with `authorization: {credentials: ...}` in its scrape config)."""
    authorize = _authorizer(api_key)

    async def metrics(request: Request) -> Response:
        try:
            authorize(request)
            return Response(repo.metrics_text(), media_type="text/plain; version=0.0.4")
        except ServeError as e:
            return _error(e.status, e.message)
        except Exception as e:
            log.exception("metrics failed")
            return _error(500, f"internal server error: {type(e).__name__}: {e}")

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])],
                     exception_handlers=_HANDLERS)
