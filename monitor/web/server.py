"""Alert server: one port for the websocket alert channel and a few plain HTTP routes.

Built on ``websockets.asyncio.server.serve``; plain HTTP GETs are answered from
``process_request`` before any websocket handshake.

Routes
------
``/ws/alerts`` (websocket, token required)
    On connect the client receives the snapshot of open breaches (``snapshot()``), one text frame
    per event, then every live event passed to :meth:`AlertServer.broadcast`, each as one text
    frame holding exactly the bytes of the Redis stream's ``data`` field. Heartbeats
    ``{"kind": "HEARTBEAT", ...summary}`` come from :meth:`AlertServer.broadcast_summary`
    (latest wins per client, never queued). The client may send
    ``{"subscribe": {"tiers": [...], "accounts": [...]}}``; an empty or absent list means
    everything. An event matches ``tiers`` when its ``tier`` *or* ``previous_tier`` is listed
    (so a subscriber also sees an account leave the tier). The server answers
    ``{"kind": "SUBSCRIBED", "tiers": [...]|null, "accounts": [...]|null}`` and filters every
    live event queued after that frame; a bad message gets ``{"kind": "ERROR", "error": ...}``.
    The same filter may be given at connect time as ``?tiers=A,B&accounts=X,Y`` and then also
    applies to the snapshot. An inbound message over ``max_message_bytes`` closes the connection
    (1009). ``?snapshot=0`` skips the snapshot (the risk desk pages its picture from ``/api/``);
    ``?acks=1`` adds ``{"kind": "ACK", ...}`` frames (:meth:`AlertServer.broadcast_notice`).
    Request messages ``{"op": ..., "req": <id>, ...}`` go to ``rpc`` (when given) and are
    answered in line with the events by ``{"kind": "REPLY", "req": <id>, "ok": ..., ...}``.
``/healthz`` (open)
    ``health()`` as JSON; 200, or 503 when ``health()["ok"]`` is false (or health() raises).
``/metrics`` (token required)
    Prometheus text exposition of ``registry`` (default: the global registry).
``/api/<name>`` (token required; only with ``api``)
    ``api(path, query)`` returns ``(status, JSON bytes)``: the risk desk's read-only queries
    (monitor/desk.py). Runs on the event loop, like everything that reads the engine.
``/logout``
    Clears the desk's session cookie and redirects to ``/``.
anything else
    404, or with ``static_dir`` a file under it (token required; no traversal outside it;
    ``/`` is ``index.html``).

Authentication: ``Authorization: Bearer <token>``, ``?token=<token>`` (the query form is for
browsers, whose websocket API cannot set headers; it can end up in proxy logs, so prefer the
header), or the desk's session cookie. A missing or wrong token gets HTTP 401 and nothing else
(for the desk page itself, a 401 whose body is a token form: no data, no script). Tokens are
compared with ``hmac.compare_digest`` and redacted from the websockets library's (debug) logs.

Desk session: opening ``/`` (or ``/index.html``) with a valid token sets an ``HttpOnly``,
``SameSite=Strict`` cookie ``mm_desk_<port>`` holding an HMAC of the token (never the token), so
the page, its files, ``/api/`` and the websocket work without the token in any URL after the
first. A websocket handshake authenticated by that cookie alone must come from the same origin
(``Origin`` matching ``Host``), else 403: no cross-site websocket hijacking. Changing the token
invalidates every session.

Back-pressure: :meth:`broadcast` never awaits a client. Each client has a bounded queue
(``client_queue`` frames) drained by its own sender task; when a broadcast finds it full the
client is dropped: closed with code 1013 (try again later) and reason ``"send queue full"``,
aborted if the close handshake cannot complete within ``close_timeout``, and counted in
``stats()["dropped_slow"]``. A dropped client should reconnect; the snapshot brings it back up
to date. Beyond ``max_connections`` websocket clients (open or handshaking) new ones get 503.

Refusals (docs/security.md): every refused request or connection is counted by reason in
``stats()["refused"]`` and in ``/metrics`` as ``mm_server_refused_total{reason=...}``: ``auth``
(missing or wrong token), ``cross_origin``, ``full`` (websocket cap), ``tcp_full`` (beyond
``max_tcp_connections`` open TCP connections of any kind: closed at once), ``oversize`` (inbound
message over ``max_message_bytes``: 1009), ``flood`` (a client sending more than
``max_inbound_per_s`` messages per second, bursts of twice that: closed 1008), ``traversal`` (a
static path that resolves outside ``static_dir``, or holds NUL or a backslash: 404),
``not_found`` (404), ``bad_request`` (a method other than GET and POST: 405; not parsable
HTTP/1.1, header lines too long or too many: the library answers 414/431 or closes) and
``handshake_timeout`` (no complete request within ``open_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hmac
import ipaddress
import logging
import mimetypes
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from monitor.adapters.outbox import encode_event
from monitor.web.httpbody import BodyConnection

log = logging.getLogger("monitor.web.server")

TIERS = frozenset({"WITHDRAWABLE", "NORMAL", "WARNING", "MARGIN_CALL", "FORCED_LIQUIDATION",
                   "NO_DEBT"})
WS_PATH = "/ws/alerts"
MAX_STATIC_BYTES = 16 << 20
PAGES = ("/", "/index.html")  # the desk page: sets the session cookie, 401 is a token form
SESSION_SALT = b"margin-monitor desk session v1"
REFUSALS = ("auth", "cross_origin", "full", "tcp_full", "oversize", "flood", "traversal",
            "not_found", "bad_request", "handshake_timeout")


class _RedactSecrets(logging.Filter):
    """Redact ``token=`` query values and Authorization header values from log records."""

    _query = re.compile(r"(?i)(token=)[^&\s#]*")
    _auth = re.compile(r"(?i)(authorization:\s*).*")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - never break logging
            return True
        low = msg.lower()
        if "token=" in low or "authorization" in low:
            record.msg = self._auth.sub(r"\1***", self._query.sub(r"\1***", msg))
            record.args = None
        return True


class _EarlyBytes(logging.Filter):
    """Bytes after a request's head, sent before the answer (junk, or frames before the 101),
    make the websockets library fail an internal assertion when it answers, and log it with a
    traceback, once per such connection: a cheap way to flood our log. The connection is cut
    without an answer either way (the request was counted by whatever refused it, if anything
    did); the record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, AssertionError) and record.msg == "unexpected internal error"
                    and record.levelno == logging.ERROR)


# The websockets library logs request lines and headers at DEBUG; give it a logger that redacts.
_ws_log = logging.getLogger("monitor.web.server.websockets")
_ws_log.addFilter(_RedactSecrets())
_ws_log.addFilter(_EarlyBytes())


class _Client:
    __slots__ = ("ws", "peer", "queue", "wake", "tiers", "accounts", "heartbeat", "snapshot",
                 "sender", "dropped", "acks", "bucket")

    def __init__(self, ws: ServerConnection, peer: str) -> None:
        self.ws = ws
        self.peer = peer
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.tiers: frozenset[str] | None = None
        self.accounts: frozenset[str] | None = None
        self.heartbeat: bytes | None = None
        self.snapshot: list[bytes] = []
        self.sender: asyncio.Task[None] | None = None
        self.dropped = False
        self.acks = False  # receives ACK notices
        self.bucket = _Bucket()

    def match(self, tier: Any, prev: Any, account: Any) -> bool:
        if self.tiers is not None and tier not in self.tiers and prev not in self.tiers:
            return False
        return self.accounts is None or account in self.accounts


class AlertServer:
    """Websocket alert channel + ``/healthz`` + ``/metrics`` on one port (see module doc).

    ``broadcast()`` / ``broadcast_summary()`` are non-blocking and may be called from the
    server's event loop or from another thread (they hop to the loop).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str,
        snapshot: Callable[[], Iterable[Mapping[str, Any]]],
        health: Callable[[], Mapping[str, Any]],
        registry: Any = None,
        max_connections: int = 64,
        max_message_bytes: int = 64 * 1024,
        client_queue: int = 10_000,
        static_dir: str | Path | None = None,
        api: Callable[[str, dict[str, list[str]]], tuple[int, bytes]] | None = None,
        rpc: Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]] | None = None,
        post: Callable[[str, bytes], tuple[int, bytes]] | None = None,
        ssl: Any = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_tcp_connections: int = 512,
        max_inbound_per_s: float = 50.0,
    ) -> None:
        if not token:
            raise ValueError("AlertServer needs a non-empty token")
        if client_queue < 1 or max_connections < 1:
            raise ValueError("client_queue and max_connections must be >= 1")
        self.host = host
        self.port = port
        self._token = token.encode()
        self._snapshot = snapshot
        self._health = health
        self._registry = registry
        self.max_connections = max_connections
        self.max_message_bytes = max_message_bytes
        self.client_queue = client_queue
        self._static_root = Path(static_dir).resolve() if static_dir is not None else None
        self._api = api
        self._rpc = rpc
        self._post = post  # POST /api/<name> (JSON body): the pre-trade check
        self._rpc_tasks: set[asyncio.Task[None]] = set()
        self._session = hmac.new(self._token, SESSION_SALT, "sha256").hexdigest().encode()
        self._cookie = "mm_desk"
        self._ssl = ssl
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_tcp_connections = max_tcp_connections
        self.max_inbound_per_s = max_inbound_per_s
        self._refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self._tcp_open = 0
        from prometheus_client import CollectorRegistry

        self._own_registry = CollectorRegistry()
        self._own_registry.register(_Collector(self))

        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._clients: set[_Client] = set()
        self._conns: set[ServerConnection] = set()  # websocket connections (handshaking/open)
        self._kills: set[asyncio.Task[None]] = set()
        self.bound: tuple[str, int] | None = None

        self._n_dropped_slow = 0
        self._n_rejected_auth = 0
        self._n_rejected_full = 0
        self._n_oversize = 0
        self._n_sent = 0
        self._n_connections = 0
        self._last_auth_log = 0.0
        self._auth_fail_since_log = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound ``(host, port)``."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            server_header="margin-monitor",
            compression=None,  # frames are sent as encoded once; no per-client deflate
            max_size=self.max_message_bytes,
            max_queue=16,
            open_timeout=self._open_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            close_timeout=self.close_timeout,
            ssl=self._ssl,
            logger=_ws_log,
            create_connection=_counting_connection(self),
        )
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.bound = (host, port)
        self._cookie = f"mm_desk_{port}"
        scheme = "https" if self._ssl is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        log.info("alert server listening on %s://%s:%d (websocket %s)", scheme, shown, port,
                 WS_PATH)
        if not is_loopback(self.host) and self._ssl is None:
            log.warning("alert server bound to non-loopback address %s without TLS: tokens and "
                        "alerts travel in clear text", self.host)
        return self.bound

    async def aclose(self) -> None:
        """Close every client (1001) and stop listening."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=False)
        for t in list(self._rpc_tasks):
            t.cancel()
        for c in list(self._clients):
            self._drop(c, 1001, "server shutting down", slow=False)
        kills = list(self._kills)
        if kills:
            await asyncio.wait(kills, timeout=self.close_timeout + 1.0)
        for ws in list(self._conns):
            with contextlib.suppress(Exception):
                ws.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.close_timeout + 1.0):
                await server.wait_closed()

    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self._clients),
            "connections_total": self._n_connections,
            "dropped_slow": self._n_dropped_slow,
            "rejected_auth": self._n_rejected_auth,
            "rejected_full": self._n_rejected_full,
            "oversize_closed": self._n_oversize,
            "messages_sent": self._n_sent,
            "queued": sum(len(c.queue) for c in self._clients),
            "tcp_open": self._tcp_open,
            "refused": dict(self._refused),
        }

    def refuse(self, reason: str) -> None:
        """Count one refusal (``REFUSALS``); exported on /metrics."""
        self._refused[reason] += 1

    def collect(self):
        """Prometheus metrics of the server's own counters (its private registry)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = CounterMetricFamily("mm_server_refused", "Requests and connections refused by the "
                                "alert server, by reason", labels=["reason"])
        for reason, n in self._refused.items():
            c.add_metric([reason], n)
        yield c
        yield CounterMetricFamily("mm_ws_dropped_slow", "Websocket clients dropped because "
                                  "their send queue was full", value=self._n_dropped_slow)
        yield GaugeMetricFamily("mm_tcp_connections", "Open TCP connections to the alert "
                                "server (HTTP, handshaking and websocket)", value=self._tcp_open)

    # ------------------------------------------------------------------ fan-out (sync)

    def broadcast(self, events: Iterable[Mapping[str, Any]],
                  encoded: list[bytes] | None = None) -> None:
        """Queue events for every subscribed client; never blocks. ``encoded`` (e.g. the return
        value of ``RedisOutbox.publish``) must be ``encode_event`` of each event."""
        events = list(events)
        if not events:
            return
        payloads = [encode_event(e) for e in events] if encoded is None else list(encoded)
        if len(payloads) != len(events):
            raise ValueError("broadcast(): encoded must hold one payload per event")
        keys = [(e.get("tier"), e.get("previous_tier"), e.get("account_id")) for e in events]
        self._call(self._fanout, keys, payloads)

    def broadcast_summary(self, summary: Mapping[str, Any]) -> None:
        """Heartbeat to every client; replaces a heartbeat not yet sent (latest wins)."""
        # kind is always HEARTBEAT (a "kind" inside the summary is replaced, not kept)
        payload = encode_event({"kind": "HEARTBEAT",
                                **{k: v for k, v in summary.items() if k != "kind"}})
        self._call(self._fanout_heartbeat, payload)

    def broadcast_notice(self, notice: Mapping[str, Any]) -> None:
        """A desk notice (e.g. ``{"kind": "ACK", ...}``) to every client that asked for them
        (``?acks=1``), in line with its events; never blocks."""
        self._call(self._fanout_notice, encode_event(notice))

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(fn, *args)

    def _fanout(self, keys: list[tuple[Any, Any, Any]], payloads: list[bytes]) -> None:
        cap = self.client_queue
        for c in list(self._clients):
            q = c.queue
            everything = c.tiers is None and c.accounts is None
            added = False
            for (tier, prev, acct), p in zip(keys, payloads, strict=True):
                if everything or c.match(tier, prev, acct):
                    if len(q) >= cap:
                        self._drop(c, 1013, "send queue full", slow=True)
                        added = False
                        break
                    q.append(p)
                    added = True
            if added:
                c.wake.set()

    def _fanout_notice(self, payload: bytes) -> None:
        for c in list(self._clients):
            if c.acks:
                self._enqueue(c, payload)

    def _enqueue(self, c: _Client, payload: bytes) -> None:
        if c.dropped:
            return
        if len(c.queue) >= self.client_queue:
            self._drop(c, 1013, "send queue full", slow=True)
            return
        c.queue.append(payload)
        c.wake.set()

    def _fanout_heartbeat(self, payload: bytes) -> None:
        for c in self._clients:
            c.heartbeat = payload
            c.wake.set()

    def _drop(self, c: _Client, code: int, reason: str, *, slow: bool) -> None:
        if c.dropped:
            return
        c.dropped = True
        self._clients.discard(c)
        c.queue.clear()
        if slow:
            self._n_dropped_slow += 1
            log.warning("alert client %s dropped: %s (%d frames queued)", c.peer, reason,
                        self.client_queue)
        if c.sender is not None:
            c.sender.cancel()
        t = asyncio.get_running_loop().create_task(self._kill(c.ws, code, reason))
        self._kills.add(t)
        t.add_done_callback(self._kills.discard)

    async def _kill(self, ws: ServerConnection, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.close_timeout):
                await ws.close(code, reason)
        except Exception:  # noqa: BLE001 - a stalled peer: just cut the TCP connection
            pass
        finally:
            if ws.state is not State.CLOSED:
                ws.transport.abort()

    # ------------------------------------------------------------------ websocket clients

    async def _handler(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        c = _Client(ws, peer)
        try:
            self._n_connections += 1
            query = parse_qs(urlsplit(ws.request.path).query) if ws.request else {}
            err = _set_filter(c, _csv(query.get("tiers")), _csv(query.get("accounts")))
            if err:
                await ws.close(1008, "invalid tiers/accounts filter")
                return
            c.acks = _flag(query, "acks", False)
            try:
                snap = list(self._snapshot()) if _flag(query, "snapshot", True) else []
            except Exception:  # noqa: BLE001
                log.exception("snapshot() failed; client %s starts with live events only", peer)
                snap = []
            # No await between snapshot() and registration: every event broadcast after the
            # snapshot was taken is queued for this client, none before it.
            c.snapshot = [encode_event(e) for e in snap
                          if c.match(e.get("tier"), e.get("previous_tier"), e.get("account_id"))]
            del snap  # held for the whole connection otherwise: GC pressure at 1M accounts
            self._clients.add(c)
            c.sender = asyncio.get_running_loop().create_task(self._sender(c))
            log.info("alert client %s connected (%d clients)", peer, len(self._clients))
            async for msg in ws:
                if c.dropped:
                    break
                if not c.bucket.take(self.max_inbound_per_s):
                    self.refuse("flood")
                    log.warning("alert client %s dropped: over %.0f messages/s", peer,
                                self.max_inbound_per_s)
                    self._drop(c, 1008, "too many messages", slow=False)
                    break
                self._on_message(c, msg)
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:
                self._n_oversize += 1
                self.refuse("oversize")
                log.warning("alert client %s closed: inbound message over %d bytes", peer,
                            self.max_message_bytes)
        finally:
            self._clients.discard(c)
            self._conns.discard(ws)
            if c.sender is not None:
                c.sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await c.sender
            log.info("alert client %s disconnected (%d clients)", peer, len(self._clients))

    async def _sender(self, c: _Client) -> None:
        ws = c.ws
        n = 0
        try:
            snap, c.snapshot = c.snapshot, []
            for p in snap:
                await ws.send(p, text=True)
                self._n_sent += 1
                n += 1
                if n % 256 == 0:
                    await asyncio.sleep(0)
            del snap
            while not c.dropped:
                if c.queue:
                    await ws.send(c.queue.popleft(), text=True)
                elif c.heartbeat is not None:
                    hb, c.heartbeat = c.heartbeat, None
                    await ws.send(hb, text=True)
                else:
                    c.wake.clear()
                    await c.wake.wait()
                    continue
                self._n_sent += 1
                n += 1
                if n % 256 == 0:  # send() does not yield while the write buffer has room
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass

    def _on_message(self, c: _Client, msg: str | bytes) -> None:
        try:
            obj = orjson.loads(msg)
            if isinstance(obj, dict) and "op" in obj:
                self._on_request(c, obj)
                return
            sub = obj.get("subscribe") if isinstance(obj, dict) else None
            if not isinstance(sub, dict):
                raise ValueError('expected {"subscribe": {"tiers": [...], "accounts": [...]}}')
            err = _set_filter(c, sub.get("tiers"), sub.get("accounts"))
            if err:
                raise ValueError(err)
        except (ValueError, orjson.JSONDecodeError) as e:
            reply: dict[str, Any] = {"kind": "ERROR", "error": str(e)[:200]}
        else:
            reply = {"kind": "SUBSCRIBED",
                     "tiers": sorted(c.tiers) if c.tiers is not None else None,
                     "accounts": sorted(c.accounts) if c.accounts is not None else None}
        # in line with the events, so the client knows where the new filter starts
        if len(c.queue) >= self.client_queue:
            self._drop(c, 1013, "send queue full", slow=True)
            return
        c.queue.append(encode_event(reply))
        c.wake.set()

    def _on_request(self, c: _Client, obj: dict[str, Any]) -> None:
        req = obj.get("req")
        if not (req is None or isinstance(req, int) and not isinstance(req, bool)
                or isinstance(req, str) and len(req) <= 64):
            req = None
        if self._rpc is None:
            self._enqueue(c, encode_event({"kind": "REPLY", "req": req, "ok": False,
                                           "error": "this server takes no requests"}))
            return
        t = asyncio.get_running_loop().create_task(self._answer(c, obj, req))
        self._rpc_tasks.add(t)
        t.add_done_callback(self._rpc_tasks.discard)

    async def _answer(self, c: _Client, obj: dict[str, Any], req: Any) -> None:
        try:
            body = dict(await self._rpc(obj))
        except Exception:  # noqa: BLE001
            log.exception("request %r failed", str(obj.get("op"))[:40])
            body = {"ok": False, "error": "internal error"}
        self._enqueue(c, encode_event({**body, "kind": "REPLY", "req": req}))

    # ------------------------------------------------------------------ HTTP side

    async def _process_request(self, conn: ServerConnection,
                               request: Request) -> Response | None:
        method = getattr(request, "method", "GET")
        if method not in ("GET", "POST"):
            self.refuse("bad_request")
            resp = _plain(conn, 405, "Method not allowed.\n")
            resp.headers["Allow"] = "GET, POST"
            return resp
        url = urlsplit(request.path)
        path = url.path
        if path == "/healthz":
            return self._healthz(conn)
        query = parse_qs(url.query)
        if getattr(request, "method", "GET") == "POST":
            return self._post_response(conn, request, path, query)
        if path == WS_PATH:
            how = self._credential(conn, request, query)
            if how is None:
                return self._unauthorized(conn)
            if how == "cookie" and not _same_origin(request):
                log.warning("alert server: cross-origin websocket with a desk cookie refused "
                            "(%s)", _peer(conn))
                self.refuse("cross_origin")
                return _plain(conn, 403, "Forbidden.\n")
            self._conns = {w for w in self._conns
                           if w.state is not State.CLOSED and not w.transport.is_closing()}
            if len(self._conns) >= self.max_connections:
                self._n_rejected_full += 1
                self.refuse("full")
                log.warning("alert server full (%d connections); rejecting %s",
                            self.max_connections, _peer(conn))
                return _plain(conn, 503, "Too many connections.\n", retry_after=5)
            self._conns.add(conn)
            return None  # websocket handshake (426 if it is not an upgrade request)
        if path == "/metrics":
            if self._credential(conn, request, query) is None:
                return self._unauthorized(conn)
            return self._metrics(conn)
        if path.startswith("/api/") and self._api is not None:
            if self._credential(conn, request, query) is None:
                return self._unauthorized(conn)
            return self._api_response(path, query)
        if self._static_root is not None:
            how = self._credential(conn, request, query)
            if how is None:
                if path in PAGES:
                    return self._login(wrong=bool(query.get("token")))
                return self._unauthorized(conn)
            if path == "/logout":
                return self._logout()
            resp = await self._static(conn, path)
            if resp.status_code == 200 and resp.headers.get("Content-Type", "").startswith(
                    "text/html"):
                resp.headers["Content-Security-Policy"] = _page_csp(request)
                if path in PAGES and how != "cookie":
                    resp.headers["Set-Cookie"] = self._set_cookie(self._session.decode())
            return resp
        self.refuse("not_found")
        return _plain(conn, 404, "Not found.\n")

    def _credential(self, conn: ServerConnection, request: Request,
                    query: dict[str, list[str]]) -> str | None:
        """How the request proved the token: "header", "query" or "cookie"; None (counted and
        logged, rate-limited) when it did not."""
        how = None
        for value in request.headers.get_all("Authorization"):
            scheme, _, cred = value.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(cred.strip().encode(),
                                                                  self._token):
                how = "header"
        for cand in query.get("token", []):
            # compare every candidate (no early exit) in constant time per candidate
            if hmac.compare_digest(cand.encode(), self._token):
                how = how or "query"
        for value in request.headers.get_all("Cookie"):
            for part in value.split(";"):
                name, _, val = part.strip().partition("=")
                if name == self._cookie and hmac.compare_digest(val.encode(), self._session):
                    how = how or "cookie"
        if how is None:
            self._n_rejected_auth += 1
            self.refuse("auth")
            self._auth_fail_since_log += 1
            now = time.monotonic()
            if now - self._last_auth_log >= 10.0:
                log.warning("alert server: %d request(s) rejected for a missing or wrong token "
                            "(latest from %s)", self._auth_fail_since_log, _peer(conn))
                self._last_auth_log, self._auth_fail_since_log = now, 0
        return how

    def _authorized(self, conn: ServerConnection, request: Request,
                    query: dict[str, list[str]]) -> bool:
        return self._credential(conn, request, query) is not None

    def _set_cookie(self, value: str, clear: bool = False) -> str:
        attrs = "; Path=/; HttpOnly; SameSite=Strict"
        if self._ssl is not None:
            attrs += "; Secure"
        if clear:
            attrs += "; Max-Age=0"
        return f"{self._cookie}={value}{attrs}"

    def _logout(self) -> Response:
        resp = _response(303, b"Logged out.\n", "text/plain; charset=utf-8",
                         {"Location": "/", "Set-Cookie": self._set_cookie("", clear=True)})
        return resp

    def _login(self, wrong: bool) -> Response:
        """401 for the desk page: a token form (no data, no script)."""
        msg = "<p class=err>Wrong token.</p>" if wrong else ""
        body = _LOGIN_PAGE.replace("{msg}", msg).encode()
        resp = _response(401, body, "text/html; charset=utf-8", {
            "WWW-Authenticate": 'Bearer realm="margin-monitor"',
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "form-action 'self'; frame-ancestors 'none'; "
                                       "base-uri 'none'"})
        return resp

    def _api_response(self, path: str, query: dict[str, list[str]]) -> Response:
        try:
            status, body = self._api(path, query)
        except Exception:  # noqa: BLE001
            log.exception("api %s failed", path)
            status, body = 500, b'{"error": "internal error"}'
        return _response(status, body, "application/json")

    def _post_response(self, conn: ServerConnection, request: Request, path: str,
                       query: dict[str, list[str]]) -> Response:
        """``POST /api/<name>`` with a JSON body (``post(path, body)``), token required; a desk
        cookie alone must come from the same origin (no cross-site form posts)."""
        if self._post is None or not path.startswith("/api/"):
            return _plain(conn, 405, "Method not allowed.\n")
        how = self._credential(conn, request, query)
        if how is None:
            return self._unauthorized(conn)
        if how == "cookie" and not _same_origin(request):
            return _plain(conn, 403, "Forbidden.\n")
        err = getattr(conn, "body_error", None)
        if err is not None:
            return _response(err[0], orjson.dumps({"error": err[1]}), "application/json")
        try:
            status, body = self._post(path, getattr(conn, "body", None) or b"")
        except Exception:  # noqa: BLE001
            log.exception("POST %s failed", path)
            status, body = 500, b'{"error": "internal error"}'
        return _response(status, body, "application/json")

    def _unauthorized(self, conn: ServerConnection) -> Response:
        resp = _plain(conn, 401, "Unauthorized.\n")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="margin-monitor"'
        return resp

    def _healthz(self, conn: ServerConnection) -> Response:
        try:
            h = dict(self._health())
            ok = bool(h.get("ok", True))
        except Exception:  # noqa: BLE001
            log.exception("health() failed")
            h, ok = {"ok": False, "error": "health check failed"}, False
        body = orjson.dumps(h, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        return _response(200 if ok else 503, body, "application/json")

    def _not_found(self, conn: ServerConnection, reason: str, path: str) -> Response:
        self.refuse(reason)
        if reason == "traversal" and (self._refused[reason] <= 5
                                      or self._refused[reason] % 1000 == 0):
            log.warning("alert server: static path outside the root refused (%s): %r",
                        _peer(conn), path[:200])
        return _plain(conn, 404, "Not found.\n")

    def _metrics(self, conn: ServerConnection) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        body = generate_latest(self._registry if self._registry is not None else REGISTRY)
        body += generate_latest(self._own_registry)  # refusals: own names, no clash
        return _response(200, body, CONTENT_TYPE_LATEST)

    async def _static(self, conn: ServerConnection, path: str) -> Response:
        root = self._static_root
        assert root is not None
        rel = unquote(path)
        if "\x00" in rel or "\\" in rel:
            return self._not_found(conn, "traversal", path)
        if rel.endswith("/"):
            rel += "index.html"
        try:
            target = (root / rel.lstrip("/")).resolve()
        except (OSError, RuntimeError, ValueError):
            return self._not_found(conn, "traversal", path)
        if not target.is_relative_to(root):
            return self._not_found(conn, "traversal", path)
        if not target.is_file():
            return self._not_found(conn, "not_found", path)
        try:
            if target.stat().st_size > MAX_STATIC_BYTES:
                return self._not_found(conn, "not_found", path)
            body = await asyncio.to_thread(target.read_bytes)
        except OSError:
            return self._not_found(conn, "not_found", path)
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        return _response(200, body, ctype)


# ---------------------------------------------------------------------- helpers

def _response(status: int, body: bytes, content_type: str,
              extra: Mapping[str, str] | None = None) -> Response:
    import http

    st = http.HTTPStatus(status)
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    ])
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(st.value, st.phrase, headers, body)


def _plain(conn: ServerConnection, status: int, text: str,
           retry_after: int | None = None) -> Response:
    extra = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return _response(status, text.encode(), "text/plain; charset=utf-8", extra)


def _flag(query: dict[str, list[str]], name: str, default: bool) -> bool:
    v = query.get(name)
    if not v:
        return default
    return v[-1].strip().lower() not in ("0", "false", "no", "off", "")


_HOST_OK = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")


def _one(request: Request, name: str) -> str | None:
    """The header's value when it is given exactly once, else None (a repeated Host or Origin
    is not trusted; ``headers.get`` would raise on it)."""
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _same_origin(request: Request) -> bool:
    origin = _one(request, "Origin")
    host = _one(request, "Host")
    if not origin or not host:
        return False
    try:
        return urlsplit(origin).netloc.lower() == host.lower()
    except ValueError:
        return False


def _page_csp(request: Request) -> str:
    host = _one(request, "Host") or ""
    ws = f" ws://{host} wss://{host}" if _HOST_OK.match(host) else ""
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'{ws}; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>margin-monitor · risk desk</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<style>
body{margin:0;height:100vh;display:flex;align-items:center;justify-content:center;
background:#0b0f14;color:#c9d1d9;font:15px/1.4 system-ui,"DejaVu Sans",sans-serif}
form{background:#131a22;border:1px solid #263140;border-radius:6px;padding:28px 32px;
min-width:320px}
h1{font-size:17px;margin:0 0 4px;color:#e6edf3}
p{margin:0 0 16px;color:#8b98a8;font-size:13px}
.err{color:#ff6b6b;font-weight:600}
input{width:100%;box-sizing:border-box;padding:9px 10px;margin:0 0 14px;border-radius:4px;
border:1px solid #2f3b4b;background:#0b0f14;color:#e6edf3;font:14px "DejaVu Sans Mono",monospace}
button{width:100%;padding:9px;border:0;border-radius:4px;background:#2f81f7;color:#fff;
font-weight:600;font-size:14px;cursor:pointer}
</style></head><body>
<form method="get" action="/" autocomplete="off">
<h1>margin-monitor · risk desk</h1><p>Enter the monitor's access token.</p>{msg}
<input name="token" type="password" placeholder="token" autofocus required>
<button type="submit">Log in</button></form></body></html>
"""



class _Bucket:
    """Token bucket of one client's inbound messages: ``rate`` per second, bursts of 2x."""

    __slots__ = ("tokens", "t")

    def __init__(self) -> None:
        self.tokens = -1.0  # full on first use
        self.t = 0.0

    def take(self, rate: float) -> bool:
        if rate <= 0:
            return True
        now = time.monotonic()
        cap = 2.0 * rate
        self.tokens = cap if self.tokens < 0 else min(cap, self.tokens + (now - self.t) * rate)
        self.t = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _Collector:
    """Adapter: the server's counters as a Prometheus collector (``AlertServer.collect``)."""

    def __init__(self, server: AlertServer) -> None:
        self._server = server

    def collect(self):
        return self._server.collect()


def _counting_connection(owner: AlertServer) -> type[ServerConnection]:
    """A ServerConnection that counts open TCP connections (closing those beyond
    ``max_tcp_connections`` at once) and requests the library refused before our hooks ran."""

    class _Connection(BodyConnection):  # BodyConnection: POST bodies (monitor/httpbody.py)
        _counted = False
        _eof_held = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if owner._tcp_open >= owner.max_tcp_connections:
                owner.refuse("tcp_full")
                if owner._refused["tcp_full"] in (1, 1000):
                    log.warning("alert server: %d open TCP connections; refusing more",
                                owner._tcp_open)
                transport.abort()
                return
            self._counted = True
            owner._tcp_open += 1

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted:
                self._counted = False
                owner._tcp_open -= 1
            super().connection_lost(exc)

        def eof_received(self) -> bool | None:
            # A client that half-closes right after its request while process_request awaits
            # would make the library send EOF before the response, then fail an assertion
            # (an ERROR log with a traceback and no answer): hold the EOF until it answered.
            if self.request is not None and self.response is None:
                self._eof_held = True
                return True
            return super().eof_received()

        async def handshake(self, *args: Any, **kwargs: Any) -> None:
            try:
                await super().handshake(*args, **kwargs)
            except asyncio.CancelledError:  # open_timeout (or the server closing)
                if self.request is None:
                    owner.refuse("bad_request" if self.protocol.handshake_exc is not None
                                 else "handshake_timeout")
                raise
            finally:
                if self._eof_held:
                    self._eof_held = False
                    with contextlib.suppress(Exception):
                        super().eof_received()
            if self.request is None and self.protocol.handshake_exc is not None:
                owner.refuse("bad_request")

    return _Connection


def _csv(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for part in values for v in part.split(",") if v]


def _set_filter(c: _Client, tiers: Any, accounts: Any) -> str | None:
    """Validate and apply a filter; returns an error message or None."""
    for name, val in (("tiers", tiers), ("accounts", accounts)):
        if val is not None and (not isinstance(val, list)
                                or not all(isinstance(x, str) for x in val)):
            return f"{name} must be a list of strings"
    if tiers:
        bad = sorted(set(tiers) - TIERS)
        if bad:
            return f"unknown tiers {bad[:5]}; expected some of {sorted(TIERS)}"
    c.tiers = frozenset(tiers) if tiers else None
    c.accounts = frozenset(accounts) if accounts else None
    return None


def _peer(ws: ServerConnection) -> str:
    try:
        addr = ws.remote_address
        return f"{addr[0]}:{addr[1]}" if addr else "?"
    except Exception:  # noqa: BLE001
        return "?"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
