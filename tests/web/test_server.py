"""AlertServer with real websocket and HTTP clients: auth, routes, snapshot + live, filters,
slow-client isolation, connection cap, message size limit, static files, token redaction."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time

import orjson
import pytest
from conftest import raw_get
from prometheus_client import CollectorRegistry, Gauge
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from monitor.adapters.outbox import encode_event
from monitor.web.server import AlertServer

TOKEN = "tok-3f9a1c77e2b54d0c9e1a"
TIERS = ["NORMAL", "WARNING", "MARGIN_CALL", "FORCED_LIQUIDATION"]


def ev(i: int, tier: str = "MARGIN_CALL", prev: str = "WARNING", account: str | None = None,
       pad: int = 0) -> dict:
    e = {"event_id": f"e-{i}", "seq": i, "account_id": account or f"C{i:06d}", "tier": tier,
         "previous_tier": prev, "ratio": 1.2473, "assets": 580000.0, "liabilities": 465000.0,
         "trigger": {"symbol": "600000.SH", "price": 9.0}, "kind": "TIER_CHANGE"}
    if pad:
        e["pad"] = "p" * pad
    return e


class World:
    def __init__(self) -> None:
        self.snapshot = [ev(-3, "FORCED_LIQUIDATION", "MARGIN_CALL", "S1"),
                         ev(-2, "MARGIN_CALL", "WARNING", "S2"),
                         ev(-1, "WARNING", "NORMAL", "S3")]
        self.health = {"ok": True, "feed": "live", "redis": {"connected": True}}


@pytest.fixture
def world():
    return World()


@pytest.fixture
async def make_server(world):
    servers: list[AlertServer] = []

    async def make(**kw) -> tuple[AlertServer, int]:
        reg = CollectorRegistry()
        Gauge("mm_test_gauge", "a test gauge", registry=reg).set(7)
        kw.setdefault("close_timeout", 0.5)
        s = AlertServer(token=TOKEN, snapshot=lambda: world.snapshot,
                        health=lambda: world.health, registry=reg, **kw)
        host, port = await s.start()
        assert host == "127.0.0.1" and port > 0
        servers.append(s)
        return s, port

    yield make
    for s in servers:
        await s.aclose()


def ws_url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/ws/alerts{query}"


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}




async def recv_json(ws, timeout: float = 5.0) -> dict:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str)  # text frames
    return orjson.loads(msg)


async def expect_silence(ws, timeout: float = 0.2) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), timeout)


async def test_auth_on_every_protected_route(make_server, world):
    s, port = await make_server()
    for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer nope"}},
                   {"additional_headers": {"Authorization": f"Basic {TOKEN}"}}):
        with pytest.raises(InvalidStatus) as ei:
            async with connect(ws_url(port), **kwargs):
                pass
        assert ei.value.response.status_code == 401
    for q in ("?token=nope", "?token=", f"?token={TOKEN}x"):
        with pytest.raises(InvalidStatus) as ei:
            async with connect(ws_url(port, q)):
                pass
        assert ei.value.response.status_code == 401
    # 401 and nothing else: no snapshot leaks into the body
    st, hdrs, body = await raw_get(port, "/ws/alerts")
    assert st == 401 and body == b"Unauthorized.\n" and "bearer" in hdrs["www-authenticate"].lower()
    # right token, either way
    async with connect(ws_url(port), additional_headers=auth()) as ws:
        assert (await recv_json(ws))["event_id"] == "e--3"
    async with connect(ws_url(port, f"?token={TOKEN}")) as ws:
        assert (await recv_json(ws))["event_id"] == "e--3"
    # /metrics needs the token
    assert (await raw_get(port, "/metrics"))[0] == 401
    assert (await raw_get(port, "/metrics?token=bad"))[0] == 401
    st, hdrs, body = await raw_get(port, "/metrics", auth())
    assert st == 200 and b"mm_test_gauge 7.0" in body and hdrs["content-type"].startswith(
        "text/plain")
    assert (await raw_get(port, f"/metrics?token={TOKEN}"))[0] == 200
    # /healthz is open; 503 when not ok
    st, hdrs, body = await raw_get(port, "/healthz")
    assert st == 200 and orjson.loads(body) == world.health
    assert hdrs["content-type"] == "application/json"
    world.health = {"ok": False, "reason": "feed stale"}
    st, _, body = await raw_get(port, "/healthz")
    assert st == 503 and orjson.loads(body)["reason"] == "feed stale"
    # anything else
    assert (await raw_get(port, "/nope"))[0] == 404
    assert (await raw_get(port, "/ws/alerts/extra", auth()))[0] == 404
    assert s.stats()["rejected_auth"] == 9


async def test_snapshot_on_connect_then_live_events_and_heartbeat(make_server, world):
    s, port = await make_server()
    assert not inspect.iscoroutinefunction(s.broadcast)
    async with connect(ws_url(port), additional_headers=auth()) as ws:
        got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)]
        assert got == [encode_event(e).decode() for e in world.snapshot]
        live = [ev(i, TIERS[i % 4], TIERS[(i + 1) % 4]) for i in range(50)]
        s.broadcast(live[:20])
        s.broadcast(live[20:])
        got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(50)]
        assert got == [encode_event(e).decode() for e in live]  # same bytes as Redis `data`
        # heartbeats are latest-wins, never queued
        s.broadcast_summary({"ts": 1, "accounts": 10})
        s.broadcast_summary({"kind": "SUMMARY", "ts": 2, "accounts": 10})
        assert await recv_json(ws) == {"kind": "HEARTBEAT", "ts": 2, "accounts": 10}
        await expect_silence(ws)
        # broadcast from another thread hops onto the loop
        t = threading.Thread(target=s.broadcast, args=([ev(99)],))
        t.start()
        t.join()
        assert (await recv_json(ws))["event_id"] == "e-99"
        assert s.stats()["clients"] == 1 and s.stats()["messages_sent"] == 55
    await asyncio.sleep(0.05)
    assert s.stats()["clients"] == 0


async def test_subscription_filters(make_server, world):
    s, port = await make_server()
    async with connect(ws_url(port), additional_headers=auth()) as a, \
            connect(ws_url(port), additional_headers=auth()) as b, \
            connect(ws_url(port), additional_headers=auth()) as everything, \
            connect(ws_url(port, "?tiers=FORCED_LIQUIDATION&accounts=S1,S2"),
                    additional_headers=auth()) as q:
        for ws in (a, b, everything):
            for _ in range(3):
                await recv_json(ws)
        # the connect-time filter applies to the snapshot too
        assert (await recv_json(q))["account_id"] == "S1"
        await expect_silence(q, 0.1)
        await a.send(orjson.dumps({"subscribe": {"tiers": ["MARGIN_CALL"]}}).decode())
        await b.send(orjson.dumps({"subscribe": {"accounts": ["C1", "C2"], "tiers": []}}))
        assert await recv_json(a) == {"kind": "SUBSCRIBED", "tiers": ["MARGIN_CALL"],
                                      "accounts": None}
        assert await recv_json(b) == {"kind": "SUBSCRIBED", "tiers": None,
                                      "accounts": ["C1", "C2"]}
        live = [ev(i, TIERS[i % 4], TIERS[(i + 1) % 4], account=f"C{i % 5}") for i in range(40)]
        s.broadcast(live)
        want_a = [e for e in live if "MARGIN_CALL" in (e["tier"], e["previous_tier"])]
        want_b = [e for e in live if e["account_id"] in ("C1", "C2")]
        assert [await recv_json(a) for _ in want_a] == want_a
        assert [await recv_json(b) for _ in want_b] == want_b
        assert [await recv_json(everything) for _ in live] == live
        for ws in (a, b, everything, q):
            await expect_silence(ws, 0.1)
        # bad subscriptions get an error frame; the filter is unchanged
        await a.send("not json")
        assert (await recv_json(a))["kind"] == "ERROR"
        await a.send(orjson.dumps({"subscribe": {"tiers": ["BOGUS"]}}).decode())
        assert "unknown tiers" in (await recv_json(a))["error"]
        # empty subscription = everything again
        await a.send('{"subscribe": {}}')
        assert (await recv_json(a))["tiers"] is None
        s.broadcast([ev(100, "NORMAL", "WARNING")])
        assert (await recv_json(a))["event_id"] == "e-100"
    # an invalid connect-time filter is refused with 1008
    async with connect(ws_url(port, "?tiers=BOGUS"), additional_headers=auth()) as bad:
        with pytest.raises(ConnectionClosed) as ei:
            await asyncio.wait_for(bad.recv(), 5)
        assert ei.value.rcvd is not None and ei.value.rcvd.code == 1008


async def test_stalled_client_is_dropped_while_others_get_everything(make_server):
    s, port = await make_server(client_queue=50)
    received: list[str] = []
    fast = await connect(ws_url(port), additional_headers=auth(), max_size=None)
    # the stalled client never calls recv(); with max_queue=1 it also stops reading the socket
    stalled = await connect(ws_url(port), additional_headers=auth(), max_queue=1, max_size=None)
    for _ in range(3):
        await fast.recv()

    async def reader():
        try:
            async for m in fast:
                received.append(m)
        except ConnectionClosed:
            pass

    rt = asyncio.create_task(reader())
    sent: list[str] = []
    i = 0
    t0 = time.monotonic()
    max_call = 0.0
    while s.stats()["dropped_slow"] == 0:
        assert time.monotonic() - t0 < 20, "stalled client was never dropped"
        chunk = [ev(i + k, pad=16_000) for k in range(20)]
        i += 20
        c0 = time.perf_counter()
        s.broadcast(chunk)
        max_call = max(max_call, time.perf_counter() - c0)
        sent += [encode_event(e).decode() for e in chunk]
        deadline = time.monotonic() + 10
        while len(received) < len(sent):  # the healthy client keeps up
            assert time.monotonic() < deadline, "fast client stopped receiving"
            await asyncio.sleep(0.001)
    assert max_call < 0.5  # broadcast never waits for a client (generous bound)
    # after the drop, the healthy client still gets everything
    more = [ev(i + k) for k in range(40)]  # (a burst > client_queue would drop it too)
    s.broadcast(more)
    sent += [encode_event(e).decode() for e in more]
    deadline = time.monotonic() + 10
    while len(received) < len(sent):
        assert time.monotonic() < deadline, (len(received), len(sent), s.stats(), fast.state)
        await asyncio.sleep(0.005)
    assert received == sent
    st = s.stats()
    assert st["dropped_slow"] == 1 and st["clients"] == 1
    # the stalled client's connection is terminated (close frame 1013, or aborted if the
    # close frame could not even be written)
    with pytest.raises(ConnectionClosed) as ei:
        async with asyncio.timeout(10):
            while True:
                await stalled.recv()
    rcvd = ei.value.rcvd
    assert rcvd is None or (rcvd.code == 1013 and "queue full" in rcvd.reason)
    await fast.close()
    await rt


async def test_connection_cap(make_server):
    s, port = await make_server(max_connections=3)
    clients = [await connect(ws_url(port), additional_headers=auth()) for _ in range(3)]
    with pytest.raises(InvalidStatus) as ei:
        await connect(ws_url(port), additional_headers=auth())
    assert ei.value.response.status_code == 503
    assert s.stats()["rejected_full"] == 1
    # plain HTTP routes still work at the cap
    assert (await raw_get(port, "/healthz"))[0] == 200
    await clients.pop().close()
    await asyncio.sleep(0.05)
    clients.append(await connect(ws_url(port), additional_headers=auth()))
    for c in clients:
        await c.close()


async def test_oversize_inbound_message_closes_connection(make_server):
    s, port = await make_server(max_message_bytes=4096)
    async with connect(ws_url(port), additional_headers=auth()) as ws:
        for _ in range(3):
            await ws.recv()
        await ws.send('{"subscribe": {"accounts": ["C1"]}}')  # small is fine
        assert (await recv_json(ws))["kind"] == "SUBSCRIBED"
        big = orjson.dumps({"subscribe": {"accounts": [f"C{i:06d}" for i in range(1000)]}})
        assert len(big) > 4096
        await ws.send(big.decode())
        with pytest.raises(ConnectionClosed) as ei:
            await asyncio.wait_for(ws.recv(), 5)
        assert ei.value.rcvd is not None and ei.value.rcvd.code == 1009
    await asyncio.sleep(0.05)
    assert s.stats()["oversize_closed"] == 1 and s.stats()["clients"] == 0


async def test_static_files_need_token_and_stay_inside_root(make_server, tmp_path):
    root = tmp_path / "www"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<h1>risk desk</h1>")
    (root / "js" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("do not serve")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    s, port = await make_server(static_dir=root)
    assert (await raw_get(port, "/"))[0] == 401
    st, hdrs, body = await raw_get(port, "/", auth())
    assert st == 200 and body == b"<h1>risk desk</h1>" and hdrs["content-type"].startswith(
        "text/html")
    st, hdrs, body = await raw_get(port, f"/js/app.js?token={TOKEN}")
    assert st == 200 and body == b"console.log(1)"
    for evil in ("/../secret.txt", "/%2e%2e/secret.txt", "/js/%2E%2E/%2E%2E/secret.txt",
                 "/..%2fsecret.txt", "/link", "/%00", "//etc/passwd", "/js/../../secret.txt",
                 "/missing.html"):
        st, _, body = await raw_get(port, evil, auth())
        assert st == 404, evil
        assert b"do not serve" not in body


async def test_tokens_never_logged(make_server, caplog):
    caplog.set_level(logging.DEBUG)
    s, port = await make_server()
    async with connect(ws_url(port, f"?token={TOKEN}")) as ws:
        await ws.recv()
    async with connect(ws_url(port), additional_headers=auth()) as ws:
        await ws.recv()
    with pytest.raises(InvalidStatus):
        async with connect(ws_url(port, "?token=wrong-token-value")):
            pass
    await raw_get(port, f"/metrics?token={TOKEN}")
    ours = [r for r in caplog.records if r.name.startswith("monitor")]
    assert any(r.name == "monitor.web.server.websockets" and "< GET /ws/alerts?token=***" in
               r.getMessage() for r in ours)  # the library's debug request log is captured...
    for rec in ours:  # ...with tokens redacted (the test's own client logs them, not us)
        assert TOKEN not in rec.getMessage() and "wrong-token-value" not in rec.getMessage()
