"""Red-team cases against the Starlette/uvicorn edge (monitor/web/), with real sockets against a
real AlertServer: a slowloris from one address while another is served, a trickling request
cut at the head deadline, an over-long static path component, credentials in debug logs,
mixed right and wrong credentials, pipelining and a chunked POST."""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time

import orjson
import pytest
from conftest import raw_get
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from monitor.web.server import AlertServer

TOKEN = "redteam-token-3c9e51d07a2b48f6"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRONG = "wrong-token-5e0b7a61c2d94f38"


@pytest.fixture
async def make_server(tmp_path):
    servers = []

    async def make(**kw):
        kw.setdefault("close_timeout", 0.5)
        s = AlertServer(token=TOKEN, snapshot=lambda: [], health=lambda: {"ok": True},
                        registry=CollectorRegistry(), **kw)
        _, port = await s.start()
        servers.append(s)
        return s, port

    yield make
    for s in servers:
        await s.aclose()


async def read_response(r: asyncio.StreamReader, timeout: float = 5.0):
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
    line, *rest = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
    body = await asyncio.wait_for(r.readexactly(int(hdrs.get("content-length", 0))), timeout)
    return int(line.split()[1]), hdrs, body


async def healthz_from(port: int, source: str, timeout: float = 3.0) -> bool:
    """One /healthz from the loopback address `source`; True when answered 200 in time."""
    try:
        async with asyncio.timeout(timeout):
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            try:
                w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, _ = await read_response(r, timeout)
                return status == 200
            finally:
                w.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def test_slowloris_from_one_address_does_not_starve_another(make_server):
    """600 half-open connections from 127.0.0.1 (a partial head each, then a byte every 2 s,
    reopened when cut) while 127.0.0.2 asks /healthz every 0.25 s: the per-client cap turns
    all but 64 of them away at once, the head deadline cuts those 64, and at least 90% of the
    legitimate client's requests are answered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        if hard != resource.RLIM_INFINITY and hard < 2048:
            pytest.skip(f"needs ~1300 file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    s, port = await make_server()  # the defaults: 64 per client, 512 in all, 5 s head deadline
    n_attackers, attempts = 600, 0
    stop = asyncio.Event()

    async def attacker(i: int) -> None:
        nonlocal attempts
        while not stop.is_set() and attempts < 20_000:  # bounded: 20,000 connections at most
            attempts += 1
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            try:
                w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                while not stop.is_set():
                    try:  # closed by the server: EOF (or a reset)
                        if await asyncio.wait_for(r.read(1), 2.0) == b"":
                            break
                    except TimeoutError:
                        w.write(b"a")  # a byte every 2 s
            except OSError:
                pass
            finally:
                w.close()
            await asyncio.sleep(1.0)  # and again: the flood lasts the whole test

    tasks = [asyncio.create_task(attacker(i)) for i in range(n_attackers)]
    try:
        await asyncio.sleep(1.0)  # the flood is in place
        answered = []
        t_end = time.monotonic() + 10.0  # two head deadlines
        while time.monotonic() < t_end:
            answered.append(await healthz_from(port, "127.0.0.2"))
            await asyncio.sleep(0.25)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    share = sum(answered) / len(answered)
    refused = s.stats()["refused"]
    assert share >= 0.9, (share, len(answered), refused)
    assert refused["client_full"] > 0 and refused["handshake_timeout"] >= 64, refused
    assert refused["tcp_full"] == 0  # the per-client cap held them off first
    deadline = time.monotonic() + 10
    while s.stats()["tcp_open"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert s.stats()["tcp_open"] == 0


async def test_a_trickling_request_is_cut_at_the_head_deadline(make_server):
    """uvicorn's own keep-alive timer restarts on every byte; the edge's request deadline does
    not: a byte every 0.3 s does not keep a request alive past open_timeout."""
    s, port = await make_server(open_timeout=1.0)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    w.write(b"GET /healthz HTTP/1.1\r\n")
    closed = False
    while time.monotonic() - t0 < 5:
        try:
            if await asyncio.wait_for(r.read(1), 0.3) == b"":
                closed = True
                break
        except TimeoutError:
            w.write(b"X")
    w.close()
    assert closed and time.monotonic() - t0 < 2.5
    assert s.stats()["refused"]["handshake_timeout"] == 1
    # a kept-alive connection: the deadline starts again with the next request's first byte
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    assert (await read_response(r))[0] == 200
    await asyncio.sleep(0.7)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    assert (await read_response(r))[0] == 200  # 1.4 s after connecting: still served
    w.write(b"GET /heal")
    assert await asyncio.wait_for(r.read(), 3) == b""
    w.close()
    assert s.stats()["refused"]["handshake_timeout"] == 2


async def test_an_overlong_path_component_is_a_quiet_counted_404(make_server, tmp_path, caplog):
    (tmp_path / "index.html").write_text("<p>desk</p>")
    s, port = await make_server(static_dir=tmp_path)
    caplog.set_level(logging.INFO)
    st, _, body = await raw_get(port, "/" + "a" * 300, AUTH)
    assert st == 404 and body == b"Not found.\n"
    st, _, _ = await raw_get(port, "/js/" + "b" * 256 + "/x.js", AUTH)
    assert st == 404
    r, w = await asyncio.open_connection("127.0.0.1", port)  # beyond the request line limit
    w.write(b"GET /" + b"c" * 9000 + b" HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"\r\n")
    assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 414")
    w.close()
    await asyncio.sleep(0.1)
    refused = s.stats()["refused"]
    assert refused["not_found"] == 2 and refused["bad_request"] == 1
    assert refused["traversal"] == 0
    ours = [rec for rec in caplog.records if rec.name.startswith(("monitor", "uvicorn"))
            and not rec.getMessage().startswith("alert server listening")]
    assert [rec.getMessage() for rec in ours if rec.levelno >= logging.WARNING
            and "unparsable HTTP" not in rec.getMessage()] == []
    assert not [rec for rec in caplog.records if rec.exc_info]


AUTH_LINE = f"Authorization: Bearer {TOKEN}\r\n".encode()


async def test_no_credential_in_any_log_line_at_debug(make_server, tmp_path, caplog):
    (tmp_path / "index.html").write_text("<p>desk</p>")
    (tmp_path / "desk.js").write_text("1")
    s, port = await make_server(static_dir=tmp_path)
    caplog.set_level(1)  # everything, uvicorn's TRACE included
    # the token in a query whose name is percent-encoded (parse_qs decodes it: it works)
    assert (await raw_get(port, f"/metrics?%74oken={TOKEN}"))[0] == 200
    assert (await raw_get(port, f"/metrics?%74%6F%6b%65%6e={TOKEN}"))[0] == 200
    assert (await raw_get(port, f"/metrics?%74oken={WRONG}"))[0] == 401
    assert (await raw_get(port, "/metrics", AUTH))[0] == 200
    assert (await raw_get(port, "/metrics", {"Authorization": f"Bearer {WRONG}"}))[0] == 401
    # the desk session: Set-Cookie out, Cookie in (HTTP and websocket)
    st, hdrs, _ = await raw_get(port, f"/?token={TOKEN}")
    assert st == 200
    cookie = hdrs["set-cookie"].split(";")[0]
    session = cookie.split("=", 1)[1]
    assert len(session) == 64
    assert (await raw_get(port, "/desk.js", {"Cookie": cookie}))[0] == 200
    async with connect(f"ws://127.0.0.1:{port}/ws/alerts?snapshot=0",
                       additional_headers={"Cookie": cookie},
                       origin=f"http://127.0.0.1:{port}") as ws:
        s.broadcast_summary({"x": 1})
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "HEARTBEAT"
    async with connect(f"ws://127.0.0.1:{port}/ws/alerts?%74oken={TOKEN}&snapshot=0") as ws:
        s.broadcast_summary({"x": 2})
        await asyncio.wait_for(ws.recv(), 5)
    async with connect(f"ws://127.0.0.1:{port}/ws/alerts?snapshot=0",
                       additional_headers=AUTH) as ws:
        s.broadcast_summary({"x": 3})
        await asyncio.wait_for(ws.recv(), 5)
    with pytest.raises(InvalidStatus):
        async with connect(f"ws://127.0.0.1:{port}/ws/alerts?%74oken={WRONG}"):
            pass
    assert (await raw_get(port, "/logout", {"Cookie": cookie}))[0] == 303
    await asyncio.sleep(0.1)
    # the test's own websocket client logs what it sends; the server side must not
    server_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any(r.name == "monitor.web.server.websockets" and r.levelno == logging.DEBUG
               for r in server_side), "the library's debug log was not in play"
    assert any("?%74oken=***" in r.getMessage() or "token=***" in r.getMessage()
               for r in server_side)
    for rec in server_side:
        text = rec.getMessage() + (logging.Formatter().formatException(rec.exc_info)
                                   if rec.exc_info else "")
        for secret in (TOKEN, WRONG, session):
            assert secret not in text, (rec.name, text)


async def test_every_credential_given_must_be_right(make_server):
    s, port = await make_server()
    bad_header = {"Authorization": f"Bearer {WRONG}"}
    assert (await raw_get(port, f"/metrics?token={TOKEN}", bad_header))[0] == 401
    assert (await raw_get(port, f"/metrics?token={WRONG}", AUTH))[0] == 401
    assert (await raw_get(port, f"/metrics?token={TOKEN}&token={WRONG}"))[0] == 401
    with pytest.raises(InvalidStatus) as ei:
        async with connect(f"ws://127.0.0.1:{port}/ws/alerts?token={TOKEN}",
                           additional_headers=bad_header):
            pass
    assert ei.value.response.status_code == 401
    assert s.stats()["refused"]["auth"] == 4
    # both right: fine
    assert (await raw_get(port, f"/metrics?token={TOKEN}", AUTH))[0] == 200


async def test_pipelined_gets_and_a_chunked_post(make_server):
    seen = []

    def post(path: str, body: bytes):
        seen.append(body)
        return 200, orjson.dumps({"path": path, "n": len(body)})

    s, port = await make_server(post=post)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE + b"\r\n")
    st1, h1, b1 = await read_response(r)
    st2, h2, b2 = await read_response(r)
    assert (st1, orjson.loads(b1)) == (200, {"ok": True})
    assert st2 == 200 and b"mm_server_refused_total" in b2
    assert h2["connection"] == "close"  # nothing more was waiting
    assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()
    # chunked
    body = orjson.dumps({"account_id": "A", "type": "cash_withdrawal", "amount": "1"})
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]))
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"POST /api/pretrade HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE +
            b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n" + chunks +
            b"0\r\n\r\n")
    st, hdrs, out = await read_response(r)
    assert st == 200 and orjson.loads(out) == {"path": "/api/pretrade", "n": len(body)}
    assert seen == [body] and "connection" not in hdrs  # a POST keeps the connection
    # a chunked body over the cap: 413, counted, closed
    big = b"4000\r\n" + b"y" * 0x4000 + b"\r\n"
    w.write(b"POST /api/pretrade HTTP/1.1\r\nHost: x\r\n" + AUTH_LINE +
            b"Transfer-Encoding: chunked\r\n\r\n" + big * 2 + b"0\r\n\r\n")
    st, hdrs, out = await read_response(r)
    assert st == 413 and orjson.loads(out)["code"] == "too_large"
    assert hdrs["connection"] == "close"
    w.close()
    assert s.stats()["refused"]["too_large"] == 1


async def test_one_client_address_is_capped(make_server):
    s, port = await make_server(max_connections_per_client=3)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(r.read(), 2) == b""  # the fourth: closed at once
    w.close()
    assert await healthz_from(port, "127.0.0.2")  # another address is served
    assert s.stats()["refused"]["client_full"] == 1
    for _, hw in held:
        hw.close()
    await asyncio.sleep(0.2)
    metrics = (await raw_get(port, "/metrics", AUTH))[2].decode()
    assert re.search(r'mm_server_refused_total\{reason="client_full"\} 1\.0', metrics)


async def test_a_websocket_elsewhere_is_a_counted_404(make_server):
    s, port = await make_server()
    for path in ("/ws/other", "/ws/alerts/extra", "/"):
        with pytest.raises(InvalidStatus) as ei:
            async with connect(f"ws://127.0.0.1:{port}{path}", additional_headers=AUTH):
                pass
        assert ei.value.response.status_code == 404, path
    assert s.stats()["refused"]["not_found"] == 3
