"""A lean gRPC client for load: HTTP/2 framed by hand on asyncio connections shared by the lanes.

Python's grpc (grpc.aio or the sync API) costs ~200-250 us of CPU per unary call here, three times
perf_analyzer's whole request, and on a machine shared with the server that shows up as server
latency. One gRPC call at a time per lane needs little of HTTP/2: the preface and SETTINGS, a
constant HPACK header block per method (literal fields, no dynamic table), one DATA frame with the
length-prefixed protobuf; back come PING and SETTINGS to acknowledge, DATA (the response messages)
and trailers with grpc-status. We advertise an HPACK table of 0 bytes, so the server's header
blocks never change decoder state and decoded blocks are cached by their bytes (the same few
blocks come back every call). Lanes share a connection (up to the server's concurrent-stream
limit, at most 100), as a gRPC channel multiplexes calls, and the frames queued in one pass of
the event loop go out in one write. A routed request (a sequence step, a generation stream:
grpc_client.Routed) adds one literal field, `x-sequence-id`, to the constant block.
Flow control: our receive windows are opened to the maximum;
a request must fit the server's initial window (64 KiB unless it says more) — else session.py
uses grpc.aio lanes (`H2Lane.fits`).
"""

from __future__ import annotations

import asyncio
import struct
from urllib.parse import unquote

import grpc
import hpack
from tritonclient.grpc import service_pb2 as pb

from seqserve.loadtest import calls as C
from seqserve.loadtest.calls import Call, now_ns
from seqserve.loadtest.grpc_client import key_of, record_stream_response
from seqserve.serve.routing import HEADER

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
CANCEL = 8
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
STREAMS_PER_CONNECTION = 100
_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _int(v: int, prefix: int, first: int) -> bytes:
    """HPACK integer with an N-bit prefix."""
    limit = (1 << prefix) - 1
    if v < limit:
        return bytes((first | v,))
    out = [first | limit]
    v -= limit
    while v >= 128:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _literal(name: bytes | int, value: bytes) -> bytes:
    """HPACK literal header field without indexing: by static-table name index, or a new name."""
    head = _int(name, 4, 0x00) if isinstance(name, int) else b"\x00" + _int(len(name), 7, 0x00) + name
    return head + _int(len(value), 7, 0x00) + value


def header_block(authority: str, path: str, api_key: str | None) -> bytes:
    """:method POST, :scheme http (static entries 3 and 6), then literals: :path (name 4),
    :authority (name 1), content-type (name 31), te, authorization (name 23)."""
    block = b"\x83\x86" + _literal(4, path.encode()) + _literal(1, authority.encode())
    block += _literal(31, b"application/grpc") + _literal(b"te", b"trailers")
    if api_key:
        block += _literal(23, f"Bearer {api_key}".encode())
    return block


class H2Lane:
    """One call at a time, as a stream of a shared H2Connection."""

    def __init__(self, conn: "H2Connection", on_done):
        self.conn, self.on_done = conn, on_done
        self.call: Call | None = None
        self.stream_id = 0
        self.streaming = False
        self.status: str | None = None          # grpc-status from the trailers
        self.message = ""
        self.data = bytearray()                 # received gRPC messages (length-prefixed)
        self.dead = False
        self.slot = None

    @property
    def busy(self) -> bool:
        return self.call is not None

    def answer(self, names) -> dict:
        """The last unary response's output tensors `names` (its message is kept in self.data)."""
        from tritonclient.grpc import InferResult

        n = int.from_bytes(self.data[1:5], "big")
        r = InferResult(pb.ModelInferResponse.FromString(bytes(self.data[5:5 + n])))
        return {k: r.as_numpy(k) for k in names}

    def fits(self, size: int) -> bool:
        """Whether a request of `size` bytes fits the server's flow-control windows."""
        return size + 5 <= min(self.conn.peer_window, self.conn.conn_window)

    def send(self, call: Call, payload: bytes, streaming: bool) -> None:
        self.call, self.streaming, self.status, self.message = call, streaming, None, ""
        self.data = bytearray()
        call.sent = now_ns()
        self.conn.start(self, payload)

    def abort(self, kind: str, message: str = "") -> None:
        """Give up on the call in flight: cancel its stream; the server may still be working on it,
        so this lane (and a sequence it carries) is not used again."""
        self.dead = True
        self.conn.cancel(self)
        self.finish(kind, message)

    def close(self) -> None:
        self.dead = True
        self.conn.release(self)

    def finish(self, kind: str = "", message: str = "") -> None:
        call, self.call = self.call, None
        if call is None:
            return
        self.conn.streams.pop(self.stream_id, None)
        if kind:
            call.fail(kind, message)
        elif self.status not in (None, "0"):
            code = _CODES.get(int(self.status), self.status) if self.status.isdigit() else self.status
            call.fail(C.TIMEOUT if code == "DEADLINE_EXCEEDED" else f"gRPC {code}", self.message)
        elif self.status is None and not self.streaming:
            call.fail(C.BAD_RESPONSE, "the call ended without a grpc-status")
        if not call.end:
            call.end = now_ns()
        if self.conn.dead:
            self.dead = True
        self.on_done(self, call)

    # -- what arrives for this lane's stream -----------------------------------------------------------

    def headers(self, fields) -> None:
        for name, value in fields:
            if name == b"grpc-status":
                self.status = value.decode()
            elif name == b"grpc-message":
                self.message = unquote(value.decode(errors="replace"))
            elif name == b":status" and value != b"200" and self.call is not None:
                self.call.fail(f"HTTP {value.decode()}", "not a gRPC answer")

    def messages(self, t: int) -> None:
        """Streams: each complete response message is one event (a token when it carries text)."""
        if not self.streaming:
            return                              # unary: the answer is not parsed, only its status
        d, call = self.data, self.call
        while len(d) >= 5:
            n = int.from_bytes(d[1:5], "big")
            if len(d) < 5 + n:
                break
            resp = pb.ModelStreamInferResponse.FromString(bytes(d[5:5 + n]))
            del d[:5 + n]
            if resp.error_message:
                call.fail(C.STREAM, resp.error_message)
                continue
            if record_stream_response(call, resp.infer_response, t):
                self.conn.cancel(self)          # the server may keep the stream open: we are done
                self.status = "0"
                self.finish()
                return


class H2Connection(asyncio.Protocol):
    def __init__(self, pool: "H2Pool"):
        self.pool = pool
        self.transport = None
        self.buf = bytearray()
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 0
        self.blocks: dict[bytes, list] = {}      # decoded header blocks, by their bytes
        self.streams: dict[int, H2Lane] = {}
        self.lanes: set[H2Lane] = set()
        self.next_id = 1
        self.max_streams = STREAMS_PER_CONNECTION
        self.peer_window = DEFAULT_WINDOW        # the server's initial stream window
        self.conn_window = DEFAULT_WINDOW        # what we may still send on the connection
        self.max_frame = 16384                   # the server's SETTINGS_MAX_FRAME_SIZE
        self.blocked: list[tuple[int, bytes, bytes]] = []   # (stream, headers, message) waiting for the connection window
        self.consumed = 0
        self.headers_open = b""                  # a header block waiting for CONTINUATION frames
        self.out: list[bytes] = []
        self.dead = False
        self.ready = asyncio.get_event_loop().create_future()

    # -- sending ------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue bytes; everything queued in this pass of the event loop goes out in one write."""
        if not self.out:
            asyncio.get_event_loop().call_soon(self._flush)
        self.out.append(data)

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def start(self, lane: H2Lane, payload: bytes) -> None:
        sid = self.next_id
        self.next_id += 2
        lane.stream_id = sid
        self.streams[sid] = lane
        msg = b"\x00" + len(payload).to_bytes(4, "big") + payload
        key = key_of(payload)
        block = self.pool.block if key is None else self.pool.block + _literal(HEADER.encode(), key.encode())
        if self.blocked or len(msg) > self.conn_window:
            self.blocked.append((sid, block, msg))
            return
        self._send_message(sid, block, msg)

    def _send_message(self, sid: int, block: bytes, msg: bytes) -> None:
        self.conn_window -= len(msg)
        out = [frame(HEADERS, END_HEADERS, sid, block)]
        step = self.max_frame
        for i in range(0, len(msg), step):
            out.append(frame(DATA, END_STREAM if i + step >= len(msg) else 0, sid, msg[i:i + step]))
        self._write(b"".join(out))

    def _unblock(self) -> None:
        while self.blocked and len(self.blocked[0][2]) <= self.conn_window:
            sid, block, msg = self.blocked.pop(0)
            if sid in self.streams:                  # not cancelled meanwhile
                self._send_message(sid, block, msg)

    def cancel(self, lane: H2Lane) -> None:
        if self.streams.pop(lane.stream_id, None) is not None and not self.dead:
            self._write(frame(RST_STREAM, 0, lane.stream_id, CANCEL.to_bytes(4, "big")))

    def release(self, lane: H2Lane) -> None:
        self.lanes.discard(lane)
        if not self.lanes:
            self.dead = True
            if self.transport is not None:
                self._flush()
                self.transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        settings = struct.pack(">HIHIHI", 0x1, 0, 0x2, 0, 0x4, MAX_WINDOW)   # no HPACK table, no push, big windows
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")))

    def connection_lost(self, exc) -> None:
        self.dead = True
        why = str(exc) if exc else "the server closed the connection"
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        for lane in list(self.streams.values()):
            lane.dead = True
            lane.finish(C.CLOSED, why)
        for lane in self.lanes:
            lane.dead = True

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, t = 0, now_ns()
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            try:
                self._frame(kind, flags, stream, payload, t)
            except Exception as e:               # a frame we cannot make sense of: give up on the connection
                self.transport.abort()
                for lane in list(self.streams.values()):
                    lane.finish(C.BAD_RESPONSE, f"HTTP/2: {type(e).__name__}: {e}")
                return
        del buf[:pos]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes, t: int) -> None:
        if kind == DATA:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            self.consumed += len(payload)
            if self.consumed > MAX_WINDOW // 2:          # keep the connection window open
                self._write(frame(WINDOW_UPDATE, 0, 0, self.consumed.to_bytes(4, "big")))
                self.consumed = 0
            lane = self.streams.get(stream)
            if lane is not None:
                lane.data += payload
                lane.messages(t)
                if flags & END_STREAM and lane.call is not None:
                    lane.finish()
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
            self.headers_open += payload
            if not flags & END_HEADERS:
                return
            block, self.headers_open = self.headers_open, b""
            fields = self.blocks.get(block)
            if fields is None:
                fields = self.decoder.decode(block, raw=True)
                if len(self.blocks) < 1024:
                    self.blocks[block] = fields
            lane = self.streams.get(stream)
            if lane is not None:
                lane.headers(fields)
                if flags & END_STREAM:
                    lane.finish()
        elif kind == SETTINGS:
            if not flags & ACK:
                for i in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack(">HI", payload[i:i + 6])
                    if key == 0x4:
                        self.peer_window = value
                    elif key == 0x3:
                        self.max_streams = max(1, min(value, STREAMS_PER_CONNECTION))
                    elif key == 0x5:
                        self.max_frame = value
                self._write(frame(SETTINGS, ACK, 0))
                if not self.ready.done():
                    self.ready.set_result(True)
        elif kind == PING:
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            if stream == 0:
                self.conn_window += int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                self._unblock()
        elif kind == RST_STREAM:
            lane = self.streams.get(stream)
            if lane is not None:
                lane.finish(C.CLOSED, f"the server reset the stream (HTTP/2 error {int.from_bytes(payload[:4], 'big')})")
        elif kind == GOAWAY:
            self.dead = True                     # no new streams here; calls it already took may finish
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            for sid, lane in list(self.streams.items()):
                if sid > last:
                    lane.finish(C.CLOSED, "the server is going away (GOAWAY)")


class H2Pool:
    """Connections to one server, each carrying up to its stream limit of lanes."""

    def __init__(self, target, path: str, api_key: str | None, timeout: float = 10.0):
        self.target, self.path, self.timeout = target, path, timeout
        self.block = header_block(target.address, path, api_key)     # the same for every call
        self.conns: list[H2Connection] = []
        self._opening: asyncio.Future | None = None

    async def lane(self, on_done) -> H2Lane:
        while True:
            for c in self.conns:
                if not c.dead and len(c.lanes) < c.max_streams:
                    lane = H2Lane(c, on_done)
                    c.lanes.add(lane)
                    return lane
            if self._opening is None:            # one connection opened at a time, shared by the waiters
                self._opening = asyncio.ensure_future(self._connect())
            opening = self._opening
            try:
                await asyncio.shield(opening)
            finally:
                if self._opening is opening and opening.done():
                    self._opening = None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.conns = [c for c in self.conns if not c.dead]
        _, conn = await asyncio.wait_for(loop.create_connection(lambda: H2Connection(self), self.target.host,
                                                                self.target.port), self.timeout)
        try:
            await asyncio.wait_for(asyncio.shield(conn.ready), self.timeout)   # the server's SETTINGS arrived
        except BaseException:
            conn.transport.abort()
            raise
        self.conns.append(conn)
