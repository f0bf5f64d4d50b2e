"""A lean KServe v2 HTTP client for load: one keep-alive connection per lane, requests pre-encoded.

Why not tritonclient or aiohttp: their per-request cost in Python (~100-200 us of CPU) would be
measured as server latency and, on a machine shared with the server, slow the server down. Here a
request is bytes prepared before the run (Triton's binary tensor extension: JSON header +
raw tensors), written with one `transport.write`, and the response is parsed by httptools (C)
with three callbacks; the body is read only for errors and for server-sent events. Measured
client cost: ~30-60 us of CPU per request (see benchmarks/README.md).

    enc = HttpEncoder(target, model, api_key)
    payload = enc.infer({"input_ids": ids})               # bytes: the whole HTTP request
    lane = await HttpLane.open(target, on_done)           # on_done(lane, call) when finished
    lane.send(call, payload, streaming=False)
"""

from __future__ import annotations

import asyncio
import json

import httptools
import numpy as np

from seqserve.loadtest import calls as C
from seqserve.dtypes import kserve_datatype
from seqserve.loadtest.calls import Call, now_ns
from seqserve.serve.routing import HEADER, routing_key

datatype_of = kserve_datatype      # seqserve/dtypes.py


def raw_bytes(a: np.ndarray) -> bytes:
    """Tensor contents as Triton's binary extension and gRPC raw contents carry them (BYTES: each
    element as a 4-byte little-endian length + the bytes)."""
    if datatype_of(a) != "BYTES":
        return np.ascontiguousarray(a).tobytes()
    out = bytearray()
    for v in a.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        out += len(b).to_bytes(4, "little") + b
    return bytes(out)


class HttpEncoder:
    """Whole HTTP/1.1 requests (request line + headers + body) for one model."""

    def __init__(self, target, model: str, api_key: str | None = None, outputs: tuple[str, ...] = ()):
        self.host = f"{target.host}:{target.port}".encode()
        self.model, self.outputs = model, outputs
        self.auth = f"Authorization: Bearer {api_key}\r\n".encode() if api_key else b""

    def _request(self, path: str, body: bytes, extra: bytes = b"") -> bytes:
        return (b"POST %s HTTP/1.1\r\nHost: %s\r\n%s%sContent-Length: %d\r\n\r\n"
                % (path.encode(), self.host, self.auth, extra, len(body))) + body

    @staticmethod
    def route(payload: bytes, key) -> bytes:
        """The request with the routing key header (`x-sequence-id`) after its request line."""
        line = payload.index(b"\r\n") + 2
        return payload[:line] + b"%s: %s\r\n" % (HEADER.encode(), routing_key(key).encode()) + payload[line:]

    def infer(self, inputs: dict[str, np.ndarray], parameters: dict | None = None) -> bytes:
        """POST /v2/models/M/infer with binary input tensors, asking for binary outputs. A
        sequence step (parameters with `sequence_id`) also carries it as the routing key header."""
        header = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": datatype_of(a),
                              "parameters": {"binary_data_size": len(raw_bytes(a))}} for n, a in inputs.items()],
                  "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in self.outputs]}
        if parameters:
            header["parameters"] = parameters
        head = json.dumps(header, separators=(",", ":")).encode()
        body = head + b"".join(raw_bytes(a) for a in inputs.values())
        sid = (parameters or {}).get("sequence_id")
        route = b"%s: %s\r\n" % (HEADER.encode(), routing_key(sid).encode()) if sid else b""
        return self._request(f"/v2/models/{self.model}/infer", body,
                             b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\n%s"
                             % (len(head), route))

    def generate(self, fields: dict) -> bytes:
        """POST /v2/models/M/generate_stream (server-sent events), Triton's generate extension."""
        return self._request(f"/v2/models/{self.model}/generate_stream", json.dumps(fields).encode(),
                             b"Content-Type: application/json\r\nAccept: text/event-stream\r\n")


class HttpLane(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, on_done):
        self.on_done = on_done          # on_done(lane, call): the call finished (ok or failed)
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.call: Call | None = None
        self.streaming = False
        self.status = 0
        self.body = bytearray()
        self.t_data = 0
        self.dead = False
        self.slot = None                # the workload's state for this lane (a sequence, ...)
        self.keep_answer = False        # keep a 200 body for answer() (client-held state)
        self.header_length = None

    @classmethod
    async def open(cls, target, on_done, timeout: float = 10.0) -> "HttpLane":
        loop = asyncio.get_running_loop()
        ssl = None
        if target.https:
            import ssl as _ssl
            ssl = _ssl.create_default_context()
        _, lane = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_done), target.host, target.port, ssl=ssl), timeout)
        return lane

    @property
    def busy(self) -> bool:
        return self.call is not None

    def answer(self, names) -> dict:
        """The last 200 response's output tensors `names` (kept only with keep_answer)."""
        from tritonclient.http import InferResult

        r = InferResult.from_response_body(bytes(self.body), header_length=self.header_length)
        return {n: r.as_numpy(n) for n in names}

    def send(self, call: Call, payload: bytes, streaming: bool) -> None:
        self.call, self.streaming, self.status = call, streaming, 0
        self.header_length = None
        if self.body:
            self.body = bytearray()
        call.sent = now_ns()
        self.transport.write(payload)

    def abort(self, kind: str, message: str = "") -> None:
        """Give up on the call in flight (timeout, end of level): fail it, close the connection."""
        self.dead = True
        if self.transport is not None:
            self.transport.abort()
        self._finish(kind, message)

    def close(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.streaming:
            self.t_data = now_ns()      # every event in this read arrived now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.abort(C.BAD_RESPONSE, "unexpected protocol upgrade")
        except httptools.HttpParserError as e:
            self.abort(C.BAD_RESPONSE, f"unparseable HTTP response: {e}")

    def connection_lost(self, exc) -> None:
        self.dead = True
        if self.call is not None:
            self._finish(C.CLOSED, str(exc) if exc else "the server closed the connection")

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.keep_answer and name.lower() == b"inference-header-content-length":
            self.header_length = int(value)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            if len(self.body) < 4096:
                self.body += body
        elif self.streaming:
            self.body += body
            self._events()
        elif self.keep_answer:
            self.body += body

    def on_message_complete(self) -> None:
        call = self.call
        if call is None:
            return
        if self.status != 200:
            call.fail(f"HTTP {self.status}", _error_text(bytes(self.body)))
        elif self.streaming:
            self._events(final=True)
        if not self.parser.should_keep_alive():
            self.dead = True
            self.transport.close()
        self._finish()

    # -- server-sent events ------------------------------------------------------------------------------

    def _events(self, final: bool = False) -> None:
        buf, call = self.body, self.call
        while True:
            i = buf.find(b"\n\n")
            if i < 0:
                if not final or not buf.strip():
                    break
                i = len(buf)
            event, buf = bytes(buf[:i]), buf[i + 2:]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                try:
                    ev = json.loads(line[5:])
                except ValueError:
                    call.fail(C.BAD_RESPONSE, f"server-sent event is not JSON: {line[:100]!r}")
                    continue
                if "error" in ev:
                    call.fail(C.STREAM, str(ev["error"]))
                elif ev.get("text_output"):
                    if call.times is None:
                        call.times = []
                    call.times.append(self.t_data)
                    call.tokens += 1
        self.body = buf

    def _finish(self, kind: str = "", message: str = "") -> None:
        call, self.call = self.call, None
        if call is None:
            return
        if kind:
            call.fail(kind, message)
        elif not call.end:
            call.end = now_ns()
        self.on_done(self, call)


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))[:300]
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")
