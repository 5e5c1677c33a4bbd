"""Answers are never held back by Nagle's algorithm: the edge's sockets are TCP sockets to
asyncio (proto IPPROTO_TCP, so it sets TCP_NODELAY on every accepted connection) and the HTTP
protocol sets TCP_NODELAY itself. Without it, an answer written in two parts (head, then body)
on a kept-alive connection waited for the client's delayed ACK: 44 ms per pre-trade check."""

from __future__ import annotations

import asyncio
import socket

from monitor.web.limits import nodelay
from monitor.web.server import AlertServer

TOKEN = "nodelay-token-0123456789abcdef"


async def test_the_listening_socket_is_tcp_so_accepted_ones_get_nodelay():
    server = AlertServer(host="127.0.0.1", port=0, token=TOKEN, snapshot=list,
                         health=lambda: {"ok": True})
    await server.start()
    try:
        socks = server.sockets
        assert socks and all(s.proto == socket.IPPROTO_TCP for s in socks)
    finally:
        await server.aclose()


async def test_nodelay_sets_the_option_on_a_connection():
    got = asyncio.get_running_loop().create_future()

    async def accept(reader, writer):
        got.set_result(writer.transport)

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    _, w = await asyncio.open_connection("127.0.0.1", port)
    transport = await got
    sock = transport.get_extra_info("socket")
    nodelay(transport)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    w.close()
    transport.close()
    srv.close()
    await srv.wait_closed()
