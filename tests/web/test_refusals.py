"""Hostile clients of the AlertServer are refused with the right status or close code and counted
by reason in stats() and on /metrics (mm_server_refused_total), while a good client carries on:
wrong tokens, oversize and flooding websocket messages, path traversal (encoded variants),
malformed HTTP, TCP connection floods, silent connections."""

from __future__ import annotations

import asyncio
import logging
import re

import orjson
import pytest
from conftest import raw_get
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from monitor.web.server import REFUSALS, AlertServer

TOKEN = "refusal-test-token-5a0c93e1d7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def make_server(tmp_path):
    servers = []

    async def make(**kw):
        s = AlertServer(token=TOKEN, snapshot=lambda: [], health=lambda: {"ok": True},
                        registry=CollectorRegistry(), close_timeout=0.5, **kw)
        _, port = await s.start()
        servers.append(s)
        return s, port

    yield make
    for s in servers:
        await s.aclose()


async def metric(port: int) -> dict[str, float]:
    st, _, body = await raw_get(port, "/metrics", AUTH)
    assert st == 200
    return {m[1]: float(m[2]) for m in
            re.finditer(r'mm_server_refused_total\{reason="(\w+)"\} ([0-9.e+]+)', body.decode())}


async def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    await w.drain()
    try:
        return await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()


async def test_every_reason_is_exported_from_zero(make_server):
    s, port = await make_server()
    m = await metric(port)
    assert set(m) == set(REFUSALS) and all(v == 0 for v in m.values())


async def test_wrong_tokens_refused_and_counted(make_server):
    s, port = await make_server()
    for hdr in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
                {"Authorization": f"Basic {TOKEN}"}, {"Cookie": f"mm_desk_{port}={TOKEN}"}):
        assert (await raw_get(port, "/metrics", hdr))[0] == 401
        with pytest.raises(InvalidStatus) as ei:
            async with connect(f"ws://127.0.0.1:{port}/ws/alerts", additional_headers=hdr):
                pass
        assert ei.value.response.status_code == 401
    assert (await metric(port))["auth"] == 10
    assert s.stats()["refused"]["auth"] == 10


async def test_oversize_and_flood_close_the_client_others_unaffected(make_server):
    s, port = await make_server(max_message_bytes=2048, max_inbound_per_s=20)
    url = f"ws://127.0.0.1:{port}/ws/alerts"
    async with connect(url, additional_headers=AUTH) as good, \
            connect(url, additional_headers=AUTH) as big, \
            connect(url, additional_headers=AUTH) as flood:
        await big.send("x" * 4096)
        with pytest.raises(ConnectionClosed) as ei:
            await asyncio.wait_for(big.recv(), 5)
        assert ei.value.rcvd.code == 1009
        for _ in range(200):  # 20/s allows bursts of 40
            try:
                await flood.send('{"subscribe": {}}')
            except ConnectionClosed:
                break
        with pytest.raises(ConnectionClosed) as ei:
            while True:
                await asyncio.wait_for(flood.recv(), 5)
        assert ei.value.rcvd.code == 1008 and "too many" in ei.value.rcvd.reason
        # the well-behaved client still subscribes and receives live events
        await good.send('{"subscribe": {"tiers": ["MARGIN_CALL"]}}')
        assert orjson.loads(await good.recv())["kind"] == "SUBSCRIBED"
        s.broadcast([{"seq": 1, "tier": "MARGIN_CALL", "previous_tier": "WARNING",
                      "account_id": "A", "kind": "TIER_CHANGE"}])
        assert orjson.loads(await asyncio.wait_for(good.recv(), 5))["seq"] == 1
    m = await metric(port)
    assert m["oversize"] == 1 and m["flood"] == 1


async def test_slow_but_polite_clients_are_not_flood(make_server):
    s, port = await make_server(max_inbound_per_s=20)
    async with connect(f"ws://127.0.0.1:{port}/ws/alerts", additional_headers=AUTH) as ws:
        for _ in range(30):  # a burst under 2x the rate
            await ws.send('{"subscribe": {}}')
        for _ in range(30):
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "SUBSCRIBED"
    assert s.stats()["refused"]["flood"] == 0


async def test_path_traversal_refused_and_counted(make_server, tmp_path):
    root = tmp_path / "www"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<h1>desk</h1>")
    (tmp_path / "secret.txt").write_text("do not serve")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    s, port = await make_server(static_dir=root)
    evil = ["/../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt", "/js/../../secret.txt",
            "/js/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt",
            "/link", "/%00", "/js%5c..%5c..%5csecret.txt", "/..\\secret.txt",
            "/" + "../" * 30 + "etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd"]
    for path in evil:
        st, _, body = await raw_get(port, path, AUTH)
        assert st == 404, path
        assert b"do not serve" not in body and b"root:" not in body
    for path in ("/missing.js", "/%252e%252e/secret.txt", "/js/"):  # inside the root: plain 404
        assert (await raw_get(port, path, AUTH))[0] == 404, path
    assert (await raw_get(port, "/js/../index.html", AUTH))[0] == 200  # stays inside
    m = await metric(port)
    assert m["traversal"] == len(evil) and m["not_found"] == 3


async def test_malformed_http_refused_and_counted(make_server, caplog, tmp_path):
    (tmp_path / "app.js").write_text("1")
    s, port = await make_server(static_dir=tmp_path)
    assert await raw(port, b"HELLO\r\n\r\n") == b""  # not HTTP: closed without an answer
    for method in (b"DELETE", b"PUT", b"OPTIONS"):
        resp = await raw(port, method + b" /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 405"), method
    resp = await raw(port, b"GET /healthz HTTP/1.1\r\n" + b"".join(
        f"X-{i}: y\r\n".encode() for i in range(300)) + b"\r\n")
    assert resp.startswith(b"HTTP/1.1 431")
    resp = await raw(port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 414")
    await asyncio.sleep(0.1)
    assert (await metric(port))["bad_request"] == 6
    # bytes after the head before the answer; a half-close right after the request
    await raw(port, b"GET /healthz HTTP/1.1\r\n\r\n\xac\x91\xb3\xa08\xcb\xd6")
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /app.js?token={TOKEN} HTTP/1.1\r\n\r\n".encode())  # answered after an await
    w.write_eof()
    assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 200")
    w.close()
    # a repeated Host / Origin is not trusted, and not an error
    (tmp_path / "index.html").write_text("<h1>desk</h1>")
    st, _, _ = await raw_get(port, f"/index.html?token={TOKEN}", {"Host": "a", "Origin": "b"})
    assert st == 200
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await raw_get(port, "/healthz"))[0] == 200  # still serving


async def test_silent_connections_time_out_and_tcp_cap(make_server):
    s, port = await make_server(open_timeout=0.5, max_tcp_connections=4)
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert s.stats()["tcp_open"] == 4
    r, w = await asyncio.open_connection("127.0.0.1", port)  # the fifth: closed at once
    assert await asyncio.wait_for(r.read(), 2) == b""
    w.close()
    for r, _ in conns:  # the silent four are closed after open_timeout
        assert await asyncio.wait_for(r.read(), 5) == b""
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.1)
    assert s.stats()["tcp_open"] == 0
    m = await metric(port)
    assert m["tcp_full"] == 1 and m["handshake_timeout"] == 4
