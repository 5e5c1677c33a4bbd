"""Answers are never held back by Nagle's algorithm: the edge's sockets are TCP sockets to
asyncio (proto IPPROTO_TCP, so it sets TCP_NODELAY on every accepted connection) and the HTTP
protocol sets TCP_NODELAY itself. Without it, an answer written in two parts (head, then body)
on a kept-alive connection waited for the client's delayed ACK: 44 ms per pre-trade check."""

from __future__ import annotations

import asyncio
import socket

from monitor.web.limits import CoalescingTransport, nodelay
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


async def test_writes_of_one_loop_turn_go_out_as_one_send():
    """uvicorn writes head, body and end of a response separately; the edge sends them as one
    segment (one send(2), one wake-up of the client), in order, and close sends what is held."""
    got = asyncio.get_running_loop().create_future()

    async def accept(reader, writer):
        got.set_result(writer.transport)

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    real = await got
    sends: list[bytes] = []
    inner_write = real.write

    def counted(data):
        sends.append(bytes(data))
        inner_write(data)

    real.write = counted
    t = CoalescingTransport(real)
    t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    t.write(memoryview(b"ok"))
    t.write(b"")
    assert sends == [] and t.get_write_buffer_size() >= 40
    assert await asyncio.wait_for(r.readexactly(40), 5) == \
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert sends == [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
    t.write(b"last words")
    t.close()  # flushes what it holds before closing
    assert await asyncio.wait_for(r.read(), 5) == b"last words"
    assert len(sends) == 2 and t.is_closing()
    w.close()
    srv.close()
    await srv.wait_closed()
