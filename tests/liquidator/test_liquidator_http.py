"""The liquidator's outbound HTTP (monitor/liquidator/outbound.py) against real servers on
127.0.0.1: pooled keep-alive connections (counted as the server accepts them), connect and read
timeouts on the existing retry path, Basic auth from the URL and never in the logs, TLS
verification (a self-signed certificate fails unless its CA is configured; client
certificates)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import socket
import ssl
import time
from pathlib import Path

import h11
import orjson
import pytest
import redis
from test_liquidator import (
    ORDERS,
    SECRET,
    cfg_for,
    dead_in,
    done,
    fl_event,
    orders_in,
    publish,
    run_worker,
)
from test_security import make_cert

from monitor.liquidator import HttpRepricer, Liquidator, RepriceError
from monitor.liquidator.hooks import HookError, WebhookHook
from monitor.liquidator.outbound import HttpSettings

TOKEN = "monitor-token-0123456789"
OK = (200, b'{"ok": true}')


class Server:
    """An HTTP/1.1 keep-alive server (h11 on asyncio) that counts the TCP connections it
    accepts. ``handler(request)`` -> ``(status, body)``, or None: never answer (the connection
    stays open until the client gives up or the server closes). ``silent``: accept and say
    nothing at all (not even a TLS handshake)."""

    def __init__(self, handler=None, *, tls: ssl.SSLContext | None = None,
                 silent: bool = False, delay: float = 0.0):
        self.handler = handler or (lambda req: OK)
        self.tls, self.silent, self.delay = tls, silent, delay
        self.connections = 0
        self.requests: list[dict] = []
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/orders", userinfo: str = "") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{userinfo}{'@' if userinfo else ''}127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        h = h11.Connection(h11.SERVER)
        req: dict = {}
        try:
            if self.silent:
                await self._closing.wait()
                return
            while True:
                ev = h.next_event()
                if ev is h11.NEED_DATA:
                    h.receive_data(await reader.read(65536))
                elif isinstance(ev, h11.Request):
                    req = {"method": ev.method.decode(), "path": ev.target.decode(),
                           "headers": {k.decode().lower(): v.decode() for k, v in ev.headers},
                           "conn": conn_no, "body": b""}
                elif isinstance(ev, h11.Data):
                    req["body"] += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    self.requests.append(req)
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    res = self.handler(req)
                    if inspect.isawaitable(res):
                        res = await res
                    if res is None:  # took it, never answers
                        await self._closing.wait()
                        return
                    status, body = res
                    writer.write(h.send(h11.Response(status_code=status, headers=[
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(body)))])))
                    writer.write(h.send(h11.Data(data=body)))
                    writer.write(h.send(h11.EndOfMessage()))
                    await writer.drain()
                    if h.our_state is h11.MUST_CLOSE:
                        break
                    h.start_next_cycle()
                else:  # ConnectionClosed, or the client closed mid-way
                    break
        except (h11.ProtocolError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        """Stop listening; every connection's handler ends (hanging ones are released, idle
        keep-alive ones closed), so nothing is left running on the test's loop."""
        if self.server is not None:
            self.server.close()
        self._closing.set()
        for w in list(self._writers):
            w.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


@pytest.fixture
async def serve():
    made: list[Server] = []

    async def make(handler=None, **kw) -> Server:
        s = await Server(handler, **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


@pytest.fixture
def r(redis_fresh):
    client = redis.Redis.from_url(redis_fresh.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A server certificate for 127.0.0.1 and, apart, a client certificate (both self-signed:
    each is its own CA)."""
    s, c = tmp_path_factory.mktemp("server-cert"), tmp_path_factory.mktemp("client-cert")
    (scert, skey), (ccert, ckey) = make_cert(s), make_cert(c)
    return {"cert": scert, "key": skey, "client_cert": ccert, "client_key": ckey}


def server_tls(certs: dict[str, Path], *, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    if client_ca is not None:  # mutual TLS: a client certificate signed by client_ca
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


def account_handler(req: dict):
    """GET /api/account?id=… like the monitor: a fresh plan for any account."""
    if req["headers"].get("authorization") != f"Bearer {TOKEN}":
        return 401, b"Unauthorized.\n"
    aid = req["path"].split("id=", 1)[1]
    return 200, orjson.dumps({
        "account_id": aid, "tier": "FORCED_LIQUIDATION", "liquidation_status": "REQUIRED",
        "shortfall": 0.0, "server_ns": time.time_ns(),
        "plan": {"orders": [{"symbol": "600036.SH", "side": "sell", "qty": 300, "price": 5.5,
                             "value": 1650.0}], "ratio_after": 1.5, "residual": 0.0}})


# ------------------------------------------------------------------------------ reuse

async def test_deliveries_reuse_one_connection(redis_fresh, r, serve):
    srv = await serve()
    publish(r, *(fl_event(f"run-c{i}", f"C{i}") for i in range(6)))
    w = await run_worker(cfg_for(redis_fresh.url, hook=srv.url(), webhook_secret=SECRET,
                                 concurrency=1))
    assert w.stats["sent"] == 6 and len(srv.requests) == 6
    assert srv.connections == 1  # six POSTs, one TCP connection
    assert {q["headers"]["idempotency-key"] for q in srv.requests} == {
        f"run-c{i}" for i in range(6)}


async def test_the_pool_is_bounded_by_concurrency(redis_fresh, r, serve):
    srv = await serve(delay=0.05)
    publish(r, *(fl_event(f"run-b{i}", f"B{i}") for i in range(16)))
    w = await run_worker(cfg_for(redis_fresh.url, hook=srv.url(), webhook_secret=SECRET,
                                 concurrency=3))
    assert w.stats["sent"] == 16 and len(srv.requests) == 16
    assert 1 <= srv.connections <= 3


async def test_repricing_reuses_one_connection(redis_fresh, r, serve):
    srv = await serve(account_handler)
    old = time.time_ns() - 60 * 10**9
    publish(r, *(fl_event(f"run-rp{i}", f"RP{i}", priced_ns=old) for i in range(4)))
    w = await run_worker(cfg_for(redis_fresh.url, hook=f"redis:{ORDERS}", max_plan_age=5.0,
                                 repricer=srv.url(""), repricer_token=TOKEN, concurrency=1,
                                 confirm_plans=False))  # re-pricing only
    assert w.stats["repriced"] == 4 and [o["qty"] for o in orders_in(r)] == [300] * 4
    assert [q["path"] for q in srv.requests] == [f"/api/account?id=RP{i}" for i in range(4)]
    assert srv.connections == 1


async def test_the_client_is_closed_with_the_worker_and_made_again(redis_fresh, r, serve):
    srv = await serve()
    hook = WebhookHook(srv.url(), SECRET)
    cfg = cfg_for(redis_fresh.url, webhook_secret=SECRET, concurrency=1)
    for n in (1, 2):  # the same hook object, two workers one after the other
        publish(r, fl_event(f"run-x{n}", f"X{n}"))
        await asyncio.wait_for(Liquidator(cfg, hook=hook).run(until_idle=0.3), 30)
        assert hook._client._client is None  # closed when the worker stopped
    assert len(srv.requests) == 2 and srv.connections == 2


class SwallowsCancel:
    """The worker's Redis client, except that XCLAIM takes a while and, like redis-py can with a
    command in flight, swallows a cancellation and returns normally."""

    def __init__(self, client):
        self._inner = client
        self.swallow = True

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def xclaim(self, *args, **kw):
        if self.swallow:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.6)
        return await self._inner.xclaim(*args, **kw)


async def test_a_slow_call_ends_even_if_the_heartbeat_swallows_its_cancel(redis_fresh, r, serve):
    """The delivery's heartbeat (lock refresh + XCLAIM every ~0.17 s here) is inside XCLAIM when
    the 0.3 s POST returns; it must stop anyway, or the entry's task never finishes and keeps
    its lock alive for ever."""
    import redis.asyncio as aioredis

    srv = await serve(delay=0.3)
    publish(r, fl_event("run-hb", "HB"))
    client = SwallowsCancel(aioredis.from_url(redis_fresh.url))
    w = Liquidator(cfg_for(redis_fresh.url, hook=srv.url(), webhook_secret=SECRET),
                   client=client)
    task = asyncio.create_task(w.run(until_idle=0.3))
    try:
        finished, _ = await asyncio.wait([task], timeout=15)
        if not finished:  # unstick the heartbeat that outlived its cancel, then fail
            client.swallow = False
            for t in asyncio.all_tasks():
                if t.get_coro().__name__ == "_heartbeat":
                    t.cancel()
            await asyncio.wait_for(task, 30)
            pytest.fail("the delivery never ended: its heartbeat outlived the cancel")
    finally:
        await client.aclose()
    assert w.stats["sent"] == 1 and done(r, "run-hb")["outcome"] == "sent"
    assert not r.exists("margin:liq:lock:run-hb")


# ------------------------------------------------------------------------------ timeouts

def full_backlog() -> tuple[socket.socket, list[socket.socket], int]:
    """A listening socket whose accept queue is full: a further connect never completes (the
    kernel drops its SYN), so only a connect timeout ends it."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.settimeout(0.2)
        try:
            c.connect(("127.0.0.1", port))
        except OSError:
            c.close()
            break
        fillers.append(c)
    return lst, fillers, port


@pytest.mark.parametrize("where", ["tcp", "tls"])
async def test_a_connect_timeout_is_retried_then_dead_lettered(redis_fresh, r, serve, where):
    """No connection within webhook_connect_timeout (TCP: the accept queue is full; TLS: the
    server never answers the handshake), while the read timeout is long: each attempt ends
    after the connect timeout, on the hook-failure retry path."""
    held: list[socket.socket] = []
    if where == "tcp":
        lst, held, port = full_backlog()
        held.append(lst)
        url = f"http://127.0.0.1:{port}/orders"
    else:
        srv = await serve(silent=True)
        url = f"https://127.0.0.1:{srv.port}/orders"
    try:
        publish(r, fl_event("run-ct", "CT"))
        t0 = time.monotonic()
        w = await run_worker(cfg_for(redis_fresh.url, hook=url, webhook_secret=SECRET,
                                     max_attempts=3, webhook_connect_timeout=0.3,
                                     webhook_timeout=30.0))
        took = time.monotonic() - t0
    finally:
        for s in held:
            s.close()
    assert w.stats["hook_failures"] == 3 and w.stats["dead_letter"] == 1
    (d,) = dead_in(r)
    assert d["event_id"] == "run-ct" and "failed 3 time(s)" in d["reason"]
    assert "ConnectTimeout" in d["reason"]
    assert 0.9 <= took < 10  # 3 × 0.3 s and backoff; nowhere near the 30 s read timeout
    if where == "tls":
        assert srv.connections == 3 and not srv.requests


async def test_a_read_timeout_is_retried_and_the_next_attempt_delivers(redis_fresh, r, serve):
    """The receiver takes the first request and never answers: after webhook_timeout (the
    read timeout; the connect timeout is long) the attempt fails and the retry sends the same
    body with the same Idempotency-Key on a new connection."""
    srv = await serve(lambda req: None if len(srv.requests) == 1 else OK)
    publish(r, fl_event("run-rt", "RT"))
    t0 = time.monotonic()
    w = await run_worker(cfg_for(redis_fresh.url, hook=srv.url(), webhook_secret=SECRET,
                                 webhook_timeout=0.3, webhook_connect_timeout=30.0))
    assert time.monotonic() - t0 < 10
    assert w.stats["hook_failures"] == 1 and w.stats["sent"] == 1
    assert done(r, "run-rt")["outcome"] == "sent"
    a, b = srv.requests
    assert a["body"] == b["body"] and a["headers"]["idempotency-key"] == "run-rt"
    assert (a["conn"], b["conn"]) == (1, 2)  # a timed-out connection is never reused


async def test_timeouts_are_separate(serve):
    """Directly on the hook: a silent TLS server trips the connect timeout only, a server that
    never answers trips the read timeout only, a full pool the pool timeout."""
    silent = await serve(silent=True)
    hang = await serve(lambda req: None)
    long = 30.0
    cases = [
        (f"https://127.0.0.1:{silent.port}/o", HttpSettings(connect_timeout=0.2,
                                                             read_timeout=long),
         "ConnectTimeout"),
        (hang.url(), HttpSettings(connect_timeout=long, read_timeout=0.2), "ReadTimeout"),
    ]
    for url, settings, want in cases:
        hook = WebhookHook(url, SECRET, http=settings)
        t0 = time.monotonic()
        with pytest.raises(HookError, match=want) as ei:
            await hook.send([{"order_id": "o-0"}], "k")
        assert time.monotonic() - t0 < 5 and type(ei.value) is HookError  # retried kind
        await hook.aclose()
    hook = WebhookHook(hang.url(), SECRET, http=HttpSettings(
        connect_timeout=long, read_timeout=2.0, pool_timeout=0.2, max_connections=1))
    first = asyncio.create_task(hook.send([{"order_id": "o-1"}], "k1"))  # holds the one conn
    await asyncio.sleep(0.1)
    with pytest.raises(HookError, match="PoolTimeout"):
        await hook.send([{"order_id": "o-2"}], "k2")
    with pytest.raises(HookError, match="ReadTimeout"):
        await first
    await hook.aclose()


async def test_repricer_timeouts_are_retried_kinds(serve):
    hang = await serve(lambda req: None)
    rp = HttpRepricer(hang.url(""), TOKEN, http=HttpSettings(read_timeout=0.2))
    with pytest.raises(RepriceError, match="ReadTimeout") as ei:
        await rp.reprice({"account_id": "P1"})
    assert type(ei.value) is RepriceError  # not PermanentRepriceError: the worker retries
    await rp.aclose()


# ------------------------------------------------------------------------------ auth, logs

async def test_basic_auth_from_the_url_reaches_the_server_and_never_the_logs(
        redis_fresh, r, serve, caplog):
    user, password = "oms-gw", "pa:ss@w0rd/secret"
    quoted = "pa%3Ass%40w0rd%2Fsecret"
    srv = await serve(lambda req: (503, b"busy") if len(srv.requests) == 1 else OK)
    url = srv.url("/orders?password=q-secret-77&desk=1", userinfo=f"{user}:{quoted}")
    publish(r, fl_event("run-ba", "BA"))
    with caplog.at_level("DEBUG"):
        w = await run_worker(cfg_for(redis_fresh.url, hook=url, webhook_secret=SECRET))
    b64 = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert [q["headers"]["authorization"] for q in srv.requests] == [f"Basic {b64}"] * 2
    assert srv.requests[0]["path"] == "/orders?password=q-secret-77&desk=1"
    assert w.stats["sent"] == 1 and w.stats["hook_failures"] == 1
    text = caplog.text
    assert "HTTP 503" in text and "HTTP Request: POST" in text  # ours and httpx's lines
    assert f"{user}:***@127.0.0.1" in text  # the hook's name: masked
    for secret in (password, quoted, b64, "q-secret-77", SECRET):
        assert secret not in text
    assert all(secret not in str(v) for v in (w.stats, w.hook.name, w.hook.url)
               for secret in (password, quoted))


# ------------------------------------------------------------------------------ TLS

async def test_tls_is_verified_unless_the_ca_is_configured(redis_fresh, r, serve, certs):
    srv = await serve(tls=server_tls(certs))
    publish(r, fl_event("run-t1", "T1"))
    w = await run_worker(cfg_for(redis_fresh.url, hook=srv.url(), webhook_secret=SECRET,
                                 max_attempts=2))
    (d,) = dead_in(r)  # the system CA store does not know a self-signed certificate
    assert d["event_id"] == "run-t1" and "CERTIFICATE_VERIFY_FAILED" in d["reason"]
    assert w.stats["hook_failures"] == 2 and not srv.requests  # retried, as connect errors are
    publish(r, *(fl_event(f"run-t{i}", f"T{i}") for i in range(2, 5)))
    w = await run_worker(cfg_for(redis_fresh.url, hook=srv.url(), webhook_secret=SECRET,
                                 webhook_ca_file=str(certs["cert"]), concurrency=1))
    assert w.stats["sent"] == 3 and len(srv.requests) == 3
    assert srv.connections == 1  # one for three POSTs (failed handshakes never get this far)


async def test_a_client_certificate_for_mutual_tls(serve, certs):
    srv = await serve(tls=server_tls(certs, client_ca=certs["client_cert"]))
    base = {"ca_file": str(certs["cert"]), "connect_timeout": 5.0, "read_timeout": 5.0}
    without = WebhookHook(srv.url(), SECRET, http=HttpSettings(**base))
    with pytest.raises(HookError):  # the server refuses the handshake: retried kind
        await without.send([{"order_id": "m-0"}], "m")
    await without.aclose()
    assert not srv.requests
    hook = WebhookHook(srv.url(), SECRET, http=HttpSettings(
        **base, client_cert=str(certs["client_cert"]), client_key=str(certs["client_key"])))
    for i in range(3):
        await hook.send([{"order_id": f"m-{i}"}], f"m{i}")
    await hook.aclose()
    assert len(srv.requests) == 3 and srv.connections == 1


async def test_repricer_over_tls_with_the_monitors_certificate(serve, certs):
    srv = await serve(account_handler, tls=server_tls(certs))
    rp = HttpRepricer(srv.url(""), TOKEN, http=HttpSettings(ca_file=str(certs["cert"])))
    plans = [await rp.reprice({"account_id": f"P{i}"}) for i in range(3)]
    await rp.aclose()
    assert [p["orders"][0]["qty"] for p in plans] == [300] * 3 and srv.connections == 1
    bad = HttpRepricer(srv.url(""), TOKEN)
    with pytest.raises(RepriceError, match="CERTIFICATE_VERIFY_FAILED"):
        await bad.reprice({"account_id": "P1"})
    await bad.aclose()


def test_unusable_tls_files_are_refused_at_start(redis_fresh, tmp_path, certs):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cfg = cfg_for(redis_fresh.url, hook="https://127.0.0.1:1/orders", webhook_secret=SECRET)
    for key, value, want in [("webhook_ca_file", str(tmp_path / "missing.pem"), "CA file"),
                             ("webhook_ca_file", str(junk), "CA file"),
                             ("webhook_client_cert", str(junk), "client certificate"),
                             ("webhook_client_key", str(certs["client_key"]), "without")]:
        c = cfg_for(redis_fresh.url, hook=cfg.hook, webhook_secret=SECRET, **{key: value})
        with pytest.raises(ValueError, match=f"webhook: .*{want}"):
            Liquidator(c)
    c = cfg_for(redis_fresh.url, repricer="https://127.0.0.1:1", repricer_token=TOKEN,
                repricer_ca_file=str(junk))
    with pytest.raises(ValueError, match="repricer: cannot use the CA file"):
        Liquidator(c)
    from monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="webhook_connect_timeout"):
        cfg_for(redis_fresh.url, webhook_connect_timeout=0).check()
