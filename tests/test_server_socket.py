"""The embedded server's listening sockets: accepted connections must get TCP_NODELAY.

asyncio sets TCP_NODELAY on an accepted connection only when the listening socket's protocol is
IPPROTO_TCP; a socket made with protocol 0 made every HTTP response wait ~40 ms for the client's
delayed ACK (measured: 44 ms p50 per LSTM step over HTTP). Checked on the accepted socket itself.
"""

from __future__ import annotations

import asyncio
import socket

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from seqserve.serve.server import _Uvicorn


def test_accepted_http_connections_have_tcp_nodelay():
    seen = {}

    async def scenario():
        srv = _Uvicorn(Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))]), "127.0.0.1", 0)
        port = await srv.start()
        listening = srv.server.servers[0].sockets[0]
        seen["proto"] = listening.proto
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        seen["reply"] = await reader.readuntil(b"ok")
        conns = list(srv.server.server_state.connections)
        seen["nodelay"] = [c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                           for c in conns]
        writer.close()
        await srv.stop()

    asyncio.run(scenario())
    assert seen["reply"].startswith(b"HTTP/1.1 200")
    assert seen["proto"] == socket.IPPROTO_TCP
    assert seen["nodelay"] and all(v != 0 for v in seen["nodelay"])
