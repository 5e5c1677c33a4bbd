"""Alert server: one port for the websocket alert channel, the risk desk and a few HTTP routes.

A Starlette application served by uvicorn (``uvicorn.Server`` with a ``uvicorn.Config`` built
here: h11 for HTTP/1.1, websockets' sans-I/O protocol for the websocket), with the
connection-level limits of monitor/web/limits.py and the one authentication path of
monitor/web/auth.py.

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
    A plain HTTP GET there answers 401 without the token, else 426.
``/healthz`` (open)
    ``health()`` as JSON; 200, or 503 when ``health()["ok"]`` is false (or health() raises).
``/metrics`` (token required)
    Prometheus text exposition of ``registry`` (default: the global registry).
``GET /api/<name>`` (token required; only with ``api``)
    ``api(path, query)`` returns ``(status, JSON bytes)``: the risk desk's read-only queries
    (monitor/desk.py). Runs on the event loop, like everything that reads the engine.
``POST /api/<name>`` (token required; only with ``post``)
    ``post(path, body)`` with the JSON body (at most ``max_body_bytes``, else 413): the
    pre-trade check ``/api/pretrade``. A desk cookie alone must come from the same origin.
``GET /api/whoami`` (token required)
    ``{"name", "role", "may", "named", "control"}``: who the request authenticated as (the desk
    hides what the role may not do).
``/api/approvals``, ``/api/approvals/approve|reject``, ``/api/kill-switch`` (token required)
    The liquidator's approvals list and kill switch (monitor/web/control.py; only with
    ``control``): reading them takes any role, changing them ``approver``.
``/logout``
    Clears the desk's session cookie and redirects to ``/``.
anything else
    404, or with ``static_dir`` a file under it (token required; no traversal outside it;
    ``/`` is ``index.html``).

Connections: HTTP/1.1 keep-alive where it pays: a POST (the pre-trade check's clients send
many), a request that asks for it (``Connection: keep-alive``, as browsers do) and pipelined
requests (answered in order) keep the connection open; any other answer carries
``Connection: close``, as the monitor's answers always did, so one-shot clients that read to
the end keep working. A refused request always closes its connection.

Authentication (monitor/web/auth.py): ``Authorization: Bearer <token>``, ``?token=<token>`` (the
query form is for browsers, whose websocket API cannot set headers; it can end up in proxy
logs, so prefer the header), or the desk's session cookie; every credential given must be
right. Named tokens (``tokens``) carry a role: ``viewer`` reads, ``operator`` also
acknowledges (the ``ack`` request message), ``approver`` also decides liquidation plans and
flips the kill switch; what a role may not do is refused (403, or a REPLY with
``code: forbidden``; counted ``forbidden``), and what it does is recorded under the token's
name. One bare ``token`` is an unnamed approver, as before roles. A missing or wrong token gets
HTTP 401 and nothing else (for the desk page itself, a 401 whose body is a token form: no data,
no script). Tokens are redacted from every log line (monitor/web/logs.py).

Desk session: opening ``/`` (or ``/index.html``) with a valid token sets an ``HttpOnly``,
``SameSite=Strict`` cookie ``mm_desk_<port>`` holding an HMAC of the token (never the token), so
the page, its files, ``/api/`` and the websocket work without the token in any URL after the
first. A websocket handshake or POST authenticated by that cookie alone must come from the same
origin (``Origin`` matching ``Host``), else 403: no cross-site websocket hijacking. Changing the
token invalidates every session.

Back-pressure: :meth:`broadcast` never awaits a client. Each client has a bounded queue
(``client_queue`` frames) drained by its own sender task; when a broadcast finds it full the
client is dropped: closed with code 1013 (try again later) and reason ``"send queue full"``,
aborted if the close cannot be sent within ``close_timeout``, and counted in
``stats()["dropped_slow"]``. A dropped client should reconnect; the snapshot brings it back up
to date. Beyond ``max_connections`` websocket clients (open or handshaking) new ones get 503.

Refusals (docs/security.md): every refused request or connection is counted by reason in
``stats()["refused"]`` and in ``/metrics`` as ``mm_server_refused_total{reason=...}``: ``auth``
(missing or wrong token), ``forbidden`` (the token's role may not), ``cross_origin``, ``full``
(websocket cap), ``tcp_full`` (beyond ``max_tcp_connections`` open TCP connections of any kind:
closed at once), ``client_full`` (beyond ``max_connections_per_client`` from one address:
closed at once), ``oversize`` (inbound message over ``max_message_bytes``: 1009), ``flood`` (a
client sending more than ``max_inbound_per_s`` messages per second, bursts of twice that:
closed 1008), ``traversal`` (a static path that resolves outside ``static_dir``, or holds NUL
or a backslash: 404), ``not_found`` (404), ``too_large`` (a request body over
``max_body_bytes``: 413), ``bad_request`` (a method other than GET and POST: 405; unparsable
HTTP/1.1: 400, request line too long: 414, header lines too many or too long: 431, not HTTP at
all: closed) and ``handshake_timeout`` (no complete request within ``open_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import mimetypes
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from monitor.adapters.outbox import encode_event
from monitor.web.auth import ROLES, Credentials, NamedToken, Principal
from monitor.web.control import GET_ROUTES, POST_ROUTES, ControlRoutes
from monitor.web.limits import CURRENT, Limits, Listener, protocols
from monitor.web.logs import REDACT
from monitor.web.logs import install as install_log_filters

log = logging.getLogger("monitor.web.server")

TIERS = frozenset({"WITHDRAWABLE", "NORMAL", "WARNING", "MARGIN_CALL", "FORCED_LIQUIDATION",
                   "NO_DEBT"})
WS_PATH = "/ws/alerts"
MAX_STATIC_BYTES = 16 << 20
MAX_NAME = 255  # a longer path component is no file name (ENAMETOOLONG): 404, counted
PAGES = ("/", "/index.html")  # the desk page: sets the session cookie, 401 is a token form
REFUSALS = ("auth", "forbidden", "cross_origin", "full", "tcp_full", "client_full", "oversize",
            "flood", "traversal", "not_found", "too_large", "bad_request", "handshake_timeout")
OP_NEEDS = {"ack": "ack"}  # websocket request ops and the permission each needs (else "read")
POST_NEEDS = {"/api/approvals/approve": "approve", "/api/approvals/reject": "approve",
              "/api/kill-switch": "approve"}  # POST routes and theirs (else "read")
_SECURITY_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
                     (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"))


class _Client:
    __slots__ = ("send", "proto", "peer", "queue", "wake", "tiers", "accounts", "heartbeat",
                 "snapshot", "sender", "dropped", "acks", "bucket", "kill", "principal")

    def __init__(self, send: Callable[[dict], Awaitable[None]], proto: Any, peer: str,
                 principal: Principal) -> None:
        self.send = send
        self.proto = proto  # the websocket protocol (abort() when a close cannot be sent)
        self.peer = peer
        self.principal = principal
        self.queue: deque[str] = deque()
        self.wake = asyncio.Event()
        self.tiers: frozenset[str] | None = None
        self.accounts: frozenset[str] | None = None
        self.heartbeat: str | None = None
        self.snapshot: list[str] = []
        self.sender: asyncio.Task[None] | None = None
        self.kill: asyncio.Task[None] | None = None
        self.dropped = False
        self.acks = False  # receives ACK notices
        self.bucket = _Bucket()

    def match(self, tier: Any, prev: Any, account: Any) -> bool:
        if self.tiers is not None and tier not in self.tiers and prev not in self.tiers:
            return False
        return self.accounts is None or account in self.accounts


class AlertServer:
    """Websocket alert channel + ``/healthz`` + ``/metrics`` + the desk on one port (see the
    module doc).

    ``broadcast()`` / ``broadcast_summary()`` are non-blocking and may be called from the
    server's event loop or from another thread (they hop to the loop).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
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
        open_timeout: float = 5.0,
        close_timeout: float = 2.0,
        max_tcp_connections: int = 512,
        max_inbound_per_s: float = 50.0,
        max_connections_per_client: int = 64,
        keep_alive_s: float = 5.0,
        max_body_bytes: int = 16 * 1024,
        tokens: list[NamedToken] | None = None,
        control: Any = None,
    ) -> None:
        if not token and not tokens:
            raise ValueError("AlertServer needs a non-empty token (or named tokens)")
        if client_queue < 1 or max_connections < 1:
            raise ValueError("client_queue and max_connections must be >= 1")
        self.host = host
        self.port = port
        self._creds = Credentials(token, tokens=tokens)  # tokens: named, with roles
        self._control = ControlRoutes(control)  # the liquidator's approvals and kill switch
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
        self._cookie = "mm_desk"
        self._ssl = ssl
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_tcp_connections = max_tcp_connections
        self.max_inbound_per_s = max_inbound_per_s
        self.limits = Limits(max_tcp_connections=max_tcp_connections,
                             max_connections_per_client=max_connections_per_client,
                             head_timeout_s=open_timeout, keep_alive_s=keep_alive_s,
                             max_body_bytes=max_body_bytes)
        self._listener = Listener(self.limits, self._refuse_connection, kind="main",
                                  close_timeout=close_timeout)
        self._refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        from prometheus_client import CollectorRegistry

        self._own_registry = CollectorRegistry()
        self._own_registry.register(_Collector(self))
        install_log_filters()
        self._secrets = self._creds.secrets()
        for s in self._secrets:
            REDACT.add_secret(s)

        self.app = self._build_app()  # the Starlette application (every listener's)
        self._uv: _UvicornServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._extra: list[Any] = []  # further listeners (monitor/web/pretrade.py)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._clients: set[_Client] = set()
        self._handshaking = 0  # websocket handshakes authorised, not yet registered
        self._kills: set[asyncio.Task[None]] = set()
        self.bound: tuple[str, int] | None = None

        self._n_dropped_slow = 0
        self._n_rejected_auth = 0
        self._n_rejected_full = 0
        self._n_oversize = 0
        self._n_sent = 0
        self._n_connections = 0
        self._last_log: dict[str, float] = {}
        self._since_log: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound ``(host, port)``."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._uv, self.bound = await serve(self.app_for("main"), self._listener, self.host,
                                           self.port, ssl=self._ssl, websockets=True,
                                           ws_max_size=self.max_message_bytes,
                                           ping_interval=self._ping_interval,
                                           ping_timeout=self._ping_timeout)
        host, port = self.bound
        self._cookie = f"mm_desk_{port}"
        scheme = "https" if self._ssl is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        log.info("alert server listening on %s://%s:%d (websocket %s)", scheme, shown, port,
                 WS_PATH)
        if not is_loopback(self.host) and self._ssl is None:
            log.warning("alert server bound to non-loopback address %s without TLS: tokens and "
                        "alerts travel in clear text", self.host)
        return self.bound

    @property
    def sockets(self) -> list[socket.socket]:
        """The main port's listening sockets (empty before start and after close)."""
        return [s for srv in (self._uv.servers if self._uv else []) for s in srv.sockets]

    async def aclose(self) -> None:
        """Close every client (1001) and stop listening."""
        uv, self._uv = self._uv, None
        if uv is None:
            return
        for extra in list(self._extra):
            with contextlib.suppress(Exception):
                await extra.aclose()
        uv.stop_listening()
        for t in list(self._rpc_tasks):
            t.cancel()
        for c in list(self._clients):
            self._drop(c, 1001, "server shutting down", slow=False)
        kills = list(self._kills)
        if kills:
            await asyncio.wait(kills, timeout=self.close_timeout + 1.0)
        await uv.close_connections(self.close_timeout + 1.0)
        for s in self._secrets:
            REDACT.discard_secret(s)

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
            "tcp_open": self._listener.open,
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
                                "server (HTTP, handshaking and websocket)",
                                value=self._listener.open)

    def _refuse_connection(self, reason: str, peer: str) -> None:
        """A refusal decided by the connection layer (monitor/web/limits.py)."""
        self.refuse(reason)
        if reason in ("tcp_full", "client_full"):
            what = (f"{self._listener.open} open TCP connections" if reason == "tcp_full" else
                    f"{self.limits.max_connections_per_client} connections from {peer}")
            self._log_rate_limited(reason, "alert server: %s; refusing more (%s)", what, reason)
        elif reason == "bad_request":
            self._log_rate_limited(reason, "alert server: unparsable HTTP refused (latest from "
                                   "%s)", peer)

    def _log_rate_limited(self, key: str, msg: str, *args: Any) -> None:
        """At most one warning per ``key`` every 10 s, saying how many it stands for."""
        self._since_log[key] = self._since_log.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= 10.0:
            n = self._since_log.pop(key)
            self._last_log[key] = now
            log.warning(msg + " [%d since the last such line]", *args, n)

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
        if not self._clients:
            return
        cap = self.client_queue
        texts = [p.decode() for p in payloads]  # once per event: frames are text
        for c in list(self._clients):
            q = c.queue
            everything = c.tiers is None and c.accounts is None
            added = False
            for (tier, prev, acct), p in zip(keys, texts, strict=True):
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
        text = payload.decode()
        for c in list(self._clients):
            if c.acks:
                self._enqueue(c, text)

    def _enqueue(self, c: _Client, text: str) -> None:
        if c.dropped:
            return
        if len(c.queue) >= self.client_queue:
            self._drop(c, 1013, "send queue full", slow=True)
            return
        c.queue.append(text)
        c.wake.set()

    def _fanout_heartbeat(self, payload: bytes) -> None:
        text = payload.decode()
        for c in self._clients:
            c.heartbeat = text
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
        t = asyncio.get_running_loop().create_task(self._kill(c, code, reason))
        c.kill = t
        self._kills.add(t)
        t.add_done_callback(self._kills.discard)

    async def _kill(self, c: _Client, code: int, reason: str) -> None:
        sent = False
        try:
            async with asyncio.timeout(self.close_timeout):
                await c.send({"type": "websocket.close", "code": code, "reason": reason})
            sent = True  # the protocol closes the connection when the peer answers (or not,
            # within close_timeout)
        except Exception:  # noqa: BLE001 - a stalled peer: just cut the TCP connection
            pass
        finally:
            if not sent and c.proto is not None:
                c.proto.abort()

    # ------------------------------------------------------------------ websocket clients

    async def _ws(self, scope: dict, receive: Callable, send: Callable) -> None:
        """The ``/ws/alerts`` websocket (raw ASGI: the sender task and the receive loop share
        the connection)."""
        proto = CURRENT.get()
        peer = _peer(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        principal = self._credential(scope, query, peer)
        if principal is None:
            await _deny(send, 401, b"Unauthorized.\n",
                        [(b"www-authenticate", b'Bearer realm="margin-monitor"')])
            return
        if principal.how == "cookie" and not _same_origin(scope):
            log.warning("alert server: cross-origin websocket with a desk cookie refused (%s)",
                        peer)
            self.refuse("cross_origin")
            await _deny(send, 403, b"Forbidden.\n")
            return
        if len(self._clients) + self._handshaking >= self.max_connections:
            self._n_rejected_full += 1
            self.refuse("full")
            log.warning("alert server full (%d connections); rejecting %s",
                        self.max_connections, peer)
            await _deny(send, 503, b"Too many connections.\n", [(b"retry-after", b"5")])
            return
        c = _Client(send, proto, peer, principal)
        self._handshaking += 1
        registered = False
        try:
            self._n_connections += 1
            msg = await receive()
            if msg["type"] != "websocket.connect":
                return
            err = _set_filter(c, _csv(query.get("tiers")), _csv(query.get("accounts")))
            await send({"type": "websocket.accept"})
            if err:
                await send({"type": "websocket.close", "code": 1008,
                            "reason": "invalid tiers/accounts filter"})
                return
            c.acks = _flag(query, "acks", False)
            try:
                snap = list(self._snapshot()) if _flag(query, "snapshot", True) else []
            except Exception:  # noqa: BLE001
                log.exception("snapshot() failed; client %s starts with live events only", peer)
                snap = []
            # No await between snapshot() and registration: every event broadcast after the
            # snapshot was taken is queued for this client, none before it.
            c.snapshot = [encode_event(e).decode() for e in snap
                          if c.match(e.get("tier"), e.get("previous_tier"), e.get("account_id"))]
            del snap  # held for the whole connection otherwise: GC pressure at 1M accounts
            self._handshaking -= 1
            registered = True
            self._clients.add(c)
            c.sender = asyncio.get_running_loop().create_task(self._sender(c))
            log.info("alert client %s connected (%d clients)", peer, len(self._clients))
            while True:
                msg = await receive()
                kind = msg["type"]
                if kind == "websocket.disconnect":
                    if msg.get("code") == 1009:
                        self._n_oversize += 1
                        self.refuse("oversize")
                        log.warning("alert client %s closed: inbound message over %d bytes",
                                    peer, self.max_message_bytes)
                    break
                if kind != "websocket.receive" or c.dropped:
                    continue
                if not c.bucket.take(self.max_inbound_per_s):
                    self.refuse("flood")
                    log.warning("alert client %s dropped: over %.0f messages/s", peer,
                                self.max_inbound_per_s)
                    self._drop(c, 1008, "too many messages", slow=False)
                    continue  # until the close completes (the disconnect ends the loop)
                text = msg.get("text")
                self._on_message(c, text if text is not None else (msg.get("bytes") or b""))
        finally:
            if not registered:
                self._handshaking -= 1
            self._clients.discard(c)
            if c.sender is not None:
                c.sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await c.sender
            if c.kill is not None:  # let the close frame out before the protocol closes
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(c.kill), self.close_timeout + 1.0)
            if registered:
                log.info("alert client %s disconnected (%d clients)", peer, len(self._clients))

    async def _ws_not_found(self, scope: dict, receive: Callable, send: Callable) -> None:
        """A websocket handshake anywhere but ``/ws/alerts``: 404, counted."""
        self.refuse("not_found")
        await _deny(send, 404, b"Not found.\n")

    async def _sender(self, c: _Client) -> None:
        send = c.send
        n = 0
        try:
            snap, c.snapshot = c.snapshot, []
            for p in snap:
                await send({"type": "websocket.send", "text": p})
                self._n_sent += 1
                n += 1
                if n % 256 == 0:
                    await asyncio.sleep(0)
            del snap
            while not c.dropped:
                if c.queue:
                    await send({"type": "websocket.send", "text": c.queue.popleft()})
                elif c.heartbeat is not None:
                    hb, c.heartbeat = c.heartbeat, None
                    await send({"type": "websocket.send", "text": hb})
                else:
                    c.wake.clear()
                    await c.wake.wait()
                    continue
                self._n_sent += 1
                n += 1
                if n % 256 == 0:  # send() does not yield while the write buffer has room
                    await asyncio.sleep(0)
        except OSError:  # uvicorn's ClientDisconnected: the peer is gone
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
        self._enqueue(c, encode_event(reply).decode())

    def _on_request(self, c: _Client, obj: dict[str, Any]) -> None:
        req = obj.get("req")
        if not (req is None or isinstance(req, int) and not isinstance(req, bool)
                or isinstance(req, str) and len(req) <= 64):
            req = None
        op = obj.get("op")
        need = OP_NEEDS.get(op, "read") if isinstance(op, str) else "read"
        if not c.principal.may(need):
            self.refuse("forbidden")
            self._enqueue(c, encode_event({
                "kind": "REPLY", "req": req, "ok": False, "code": "forbidden",
                "error": f"the {c.principal.role} role may not {_VERB.get(need, need)}"}).decode())
            return
        if c.principal.named:  # who did it is the token's name, whatever the client says
            obj = {**obj, "by": c.principal.name}
        if self._rpc is None:
            self._enqueue(c, encode_event({"kind": "REPLY", "req": req, "ok": False,
                                           "error": "this server takes no requests"}).decode())
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
        self._enqueue(c, encode_event({**body, "kind": "REPLY", "req": req}).decode())

    # ------------------------------------------------------------------ HTTP side

    def _build_app(self) -> Starlette:
        methods = ["GET", "POST"]
        return Starlette(routes=[
            Route("/healthz", self._healthz, methods=methods),
            WebSocketRoute(WS_PATH, _Asgi(self._ws)),
            Route(WS_PATH, self._ws_over_http, methods=methods),
            Route("/metrics", self._metrics, methods=methods),
            Route("/api/{name:path}", self._api_route, methods=methods),
            Route("/{path:path}", self._other, methods=methods),
            WebSocketRoute("/{path:path}", _Asgi(self._ws_not_found)),
        ])

    def app_for(self, kind: str, stats: Any = None) -> _Edge:
        """The ASGI application of a listener of ``kind`` ("main" or "pretrade")."""
        return _Edge(self, self.app, kind, stats)

    def _credential(self, scope: dict, query: dict[str, list[str]], peer: str, *,
                    header_only: bool = False) -> Principal | None:
        """Who the request proved to be; None (counted and logged, rate-limited) when it did
        not."""
        p = self._creds.check(scope["headers"], query.get("token", []), self._cookie,
                              allow_query=not header_only, allow_cookie=not header_only)
        if p is None:
            self._n_rejected_auth += 1
            if not header_only:
                self.refuse("auth")
            self._log_rate_limited("auth", "alert server: request(s) rejected for a missing or "
                                   "wrong token (latest from %s)", peer)
        return p

    def _authorize(self, request: Request) -> Principal | Response:
        """The request's principal, else the refusal to answer (401; the desk page: a token
        form)."""
        scope = request.scope
        if "mm.principal" in scope:
            return scope["mm.principal"]
        query = _query(scope)
        p = self._credential(scope, query, _peer(scope))
        if p is None:
            scope["mm.close"] = True
            if self._static_root is not None and scope["path"] in PAGES \
                    and scope["method"] == "GET":
                return self._login(wrong=bool(query.get("token")))
            return _unauthorized()
        scope["mm.principal"] = p
        return p

    def _refusal(self, scope: dict, reason: str | None, status: int, text: str,
                 headers: dict[str, str] | None = None) -> Response:
        if reason is not None:
            self.refuse(reason)
        scope["mm.close"] = True
        return _plain(status, text, headers)

    async def _healthz(self, request: Request) -> Response:
        try:
            h = dict(self._health())
            ok = bool(h.get("ok", True))
        except Exception:  # noqa: BLE001
            log.exception("health() failed")
            h, ok = {"ok": False, "error": "health check failed"}, False
        body = orjson.dumps(h, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        return Response(body, 200 if ok else 503, media_type="application/json")

    async def _ws_over_http(self, request: Request) -> Response:
        if request.method == "POST":
            return _plain(405, "Method not allowed.\n", {"Allow": "GET"})
        if isinstance(p := self._authorize(request), Response):
            return p
        return _plain(426, "Upgrade required: this is a websocket.\n",
                      {"Upgrade": "websocket"})

    async def _metrics(self, request: Request) -> Response:
        if request.method == "POST":
            return _plain(405, "Method not allowed.\n", {"Allow": "GET"})
        if isinstance(p := self._authorize(request), Response):
            return p
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        body = generate_latest(self._registry if self._registry is not None else REGISTRY)
        body += generate_latest(self._own_registry)  # refusals: own names, no clash
        return Response(body, 200, media_type=CONTENT_TYPE_LATEST)

    async def _api_route(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._api_post(request)
        path = request.scope["path"]
        if path == "/api/whoami" or path in GET_ROUTES:
            if isinstance(p := self._authorize(request), Response):
                return p
            if path == "/api/whoami":
                return _json_response(200, {
                    "name": p.name if p.named else None, "role": p.role,
                    "may": sorted(ROLES[p.role]), "named": p.named,
                    "control": self._control.control is not None})
            status, out = await self._control.get(path)
            return Response(out, status, media_type="application/json")
        if self._api is None:
            return await self._other(request)
        if isinstance(p := self._authorize(request), Response):
            return p
        try:
            status, body = self._api(path, _query(request.scope))
        except Exception:  # noqa: BLE001
            log.exception("api %s failed", path)
            status, body = 500, b'{"error": "internal error"}'
        return Response(body, status, media_type="application/json")

    async def _api_post(self, request: Request) -> Response:
        """``POST /api/<name>`` with a JSON body (``post(path, body)``), token required; a desk
        cookie alone must come from the same origin (no cross-site form posts)."""
        scope = request.scope
        path = scope["path"]
        control = path in POST_ROUTES
        if self._post is None and not control:
            return _plain(405, "Method not allowed.\n", {"Allow": "GET"})
        if isinstance(p := self._authorize(request), Response):
            return p
        if p.how == "cookie" and not _same_origin(scope):
            return self._refusal(scope, "cross_origin", 403, "Forbidden.\n")
        need = POST_NEEDS.get(path, "read")
        if not p.may(need):
            self.refuse("forbidden")
            scope["mm.close"] = True
            return _json_response(403, {"error": f"the {p.role} role may not "
                                                 f"{_VERB.get(need, need)}", "code": "forbidden"})
        if isinstance(body := await self._body(request), Response):
            return body
        if control:
            status, out = await self._control.post(path, body, p)
            return Response(out, status, media_type="application/json")
        try:
            status, out = self._post(path, body)
        except Exception:  # noqa: BLE001
            log.exception("POST %s failed", path)
            status, out = 500, b'{"error": "internal error"}'
        return Response(out, status, media_type="application/json")

    async def _body(self, request: Request) -> bytes | Response:
        """The request body, at most ``max_body_bytes``; else the refusal to answer (413,
        counted ``too_large``)."""
        stats = request.scope.get("mm.stats")
        cap = (stats or self).limits.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            return self._too_large(request.scope)
        chunks, n = [], 0
        try:
            async for chunk in request.stream():
                n += len(chunk)
                if n > cap:
                    return self._too_large(request.scope)
                chunks.append(chunk)
        except ClientDisconnect:
            return _plain(400, "Incomplete request.\n")  # nobody reads it
        return b"".join(chunks)

    def _too_large(self, scope: dict) -> Response:
        stats = scope.get("mm.stats")
        cap = (stats or self).limits.max_body_bytes
        if stats is not None:  # the pre-trade listener counts its own
            return stats.refusal(scope, 413, "too_large", f"body over {cap} bytes")
        self.refuse("too_large")
        scope["mm.close"] = True
        return Response(orjson.dumps({"error": f"body over {cap} bytes", "code": "too_large"}),
                        413, media_type="application/json")

    async def _other(self, request: Request) -> Response:
        scope = request.scope
        if request.method == "POST":
            return _plain(405, "Method not allowed.\n", {"Allow": "GET"})
        if self._static_root is None:
            return self._refusal(scope, "not_found", 404, "Not found.\n")
        if isinstance(p := self._authorize(request), Response):
            return p
        path = scope["path"]
        if path == "/logout":
            return self._logout()
        raw = scope.get("raw_path") or path.encode()
        resp = await self._static(scope, raw.decode("latin-1"))
        if resp.status_code == 200 and resp.media_type is not None \
                and resp.media_type.startswith("text/html"):
            resp.headers["Content-Security-Policy"] = _page_csp(scope)
            if path in PAGES and p.how != "cookie":
                resp.headers.append("Set-Cookie", self._set_cookie(self._creds.session_of(p)))
        return resp

    def _set_cookie(self, value: str, clear: bool = False) -> str:
        attrs = "; Path=/; HttpOnly; SameSite=Strict"
        if self._ssl is not None:
            attrs += "; Secure"
        if clear:
            attrs += "; Max-Age=0"
        return f"{self._cookie}={value}{attrs}"

    def _logout(self) -> Response:
        return _plain(303, "Logged out.\n", {"Location": "/",
                                             "Set-Cookie": self._set_cookie("", clear=True)})

    def _login(self, wrong: bool) -> Response:
        """401 for the desk page: a token form (no data, no script)."""
        msg = "<p class=err>Wrong token.</p>" if wrong else ""
        body = _LOGIN_PAGE.replace("{msg}", msg).encode()
        return Response(body, 401, media_type="text/html; charset=utf-8", headers={
            "WWW-Authenticate": 'Bearer realm="margin-monitor"',
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "form-action 'self'; frame-ancestors 'none'; "
                                       "base-uri 'none'"})

    def _not_found(self, scope: dict, reason: str, path: str) -> Response:
        if reason == "traversal" and (self._refused[reason] < 5
                                      or (self._refused[reason] + 1) % 1000 == 0):
            log.warning("alert server: static path outside the root refused (%s): %r",
                        _peer(scope), path[:200])
        return self._refusal(scope, reason, 404, "Not found.\n")

    async def _static(self, scope: dict, path: str) -> Response:
        root = self._static_root
        assert root is not None
        rel = unquote(path)
        if "\x00" in rel or "\\" in rel:
            return self._not_found(scope, "traversal", path)
        if any(len(part) > MAX_NAME for part in rel.split("/")):
            return self._not_found(scope, "not_found", path)  # no such file name can exist
        if rel.endswith("/"):
            rel += "index.html"
        try:
            target = (root / rel.lstrip("/")).resolve()
        except (OSError, RuntimeError, ValueError):
            return self._not_found(scope, "traversal", path)
        if not target.is_relative_to(root):
            return self._not_found(scope, "traversal", path)
        try:
            if not target.is_file() or target.stat().st_size > MAX_STATIC_BYTES:
                return self._not_found(scope, "not_found", path)
            body = await asyncio.to_thread(target.read_bytes)
        except OSError:
            return self._not_found(scope, "not_found", path)
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        return Response(body, 200, media_type=ctype)


# ---------------------------------------------------------------------- the edge

class _Edge:
    """The ASGI application a listener serves: the Starlette app behind the checks every
    request passes first, and the headers every answer gets.

    ``kind="main"``: GET and POST only (else 405, ``bad_request``). ``kind="pretrade"`` (the
    ``--pretrade-listen`` alias, monitor/web/pretrade.py): only ``POST /api/pretrade`` with an
    ``Authorization: Bearer`` header; refusals answer JSON ``{"error", "code"}`` and are counted
    in that listener's own counters.

    Every answer gets the security headers; it closes the connection (``Connection: close``)
    unless it keeps it alive (module doc) and the request was not refused."""

    def __init__(self, server: AlertServer, app: Starlette, kind: str, stats: Any) -> None:
        self.server = server
        self.app = app
        self.kind = kind
        self.stats = stats

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        if kind != "http":
            return
        if self.kind == "pretrade":
            scope["mm.stats"] = self.stats
            refusal = self._pretrade_head(scope)
            if refusal is not None:
                await _respond(refusal, scope, receive, self._sender(scope, send))
                return
        elif scope["method"] not in ("GET", "POST"):
            self.server.refuse("bad_request")
            scope["mm.close"] = True
            await _respond(_plain(405, "Method not allowed.\n", {"Allow": "GET, POST"}),
                           scope, receive, self._sender(scope, send))
            return
        await self.app(scope, receive, self._sender(scope, send))

    def _pretrade_head(self, scope: dict) -> Response | None:
        """The refusal of a request head on the pre-trade listener (auth, path, method,
        length: in that order), else None."""
        server, stats = self.server, self.stats
        peer = _peer(scope)
        p = server._credential(scope, {}, peer, header_only=True)
        if p is None:
            return stats.refusal(scope, 401, "auth", "missing or wrong token",
                                 {"WWW-Authenticate": 'Bearer realm="margin-monitor"'})
        scope["mm.principal"] = p
        if scope["path"] != "/api/pretrade":
            return stats.refusal(scope, 404, "not_found", "no such endpoint")
        if scope["method"] != "POST":
            return stats.refusal(scope, 405, "method", "only POST", {"Allow": "POST"})
        cap = stats.limits.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > cap:
                return stats.refusal(scope, 413, "too_large", f"body over {cap} bytes")
        return None

    def _sender(self, scope: dict, send: Callable) -> Callable:
        stats = self.stats

        async def sender(message: dict) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                names = {name for name, _ in headers}
                headers += [h for h in _SECURITY_HEADERS if h[0] not in names]
                if not _keep_alive(scope):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
                if stats is not None:
                    stats.requests[status] += 1
                if log.isEnabledFor(logging.DEBUG):
                    qs = scope.get("query_string", b"")
                    log.debug("%s %s %s%s -> %d", _peer(scope), scope["method"],
                              scope.get("raw_path", b"").decode("latin-1"),
                              ("?" + qs.decode("latin-1")) if qs else "", status)
            await send(message)

        return sender


def _keep_alive(scope: dict) -> bool:
    if scope.get("mm.close"):
        return False
    if scope["method"] == "POST":
        return True
    for name, value in scope["headers"]:
        if name == b"connection" and b"keep-alive" in value.lower():
            return True
    proto = CURRENT.get()
    return proto is not None and hasattr(proto, "pipelined") and proto.pipelined()


async def _respond(response: Response, scope: dict, receive: Callable, send: Callable) -> None:
    await response(scope, receive, send)


class _Asgi:
    """An ASGI callable Starlette routes to as is (a bound method would be wrapped)."""

    def __init__(self, fn: Callable[[dict, Callable, Callable], Awaitable[None]]) -> None:
        self.fn = fn

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self.fn(scope, receive, send)


# ---------------------------------------------------------------------- uvicorn

class _UvicornServer(uvicorn.Server):
    """uvicorn's server without its process concerns (signals, lifespan): started on given
    sockets with a TLS handshake deadline (``handshake_timeout``; asyncio's default is 60 s, and a
    connection in its TLS handshake is not yet counted by the connection caps); closed by
    :meth:`stop_listening` and :meth:`close_connections`."""

    def __init__(self, config: uvicorn.Config, handshake_timeout: float) -> None:
        super().__init__(config)
        self._handshake_timeout = handshake_timeout
        self._tick: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        from uvicorn.lifespan.off import LifespanOff

        config = self.config
        self.lifespan = LifespanOff(config)

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(config=config, server_state=self.server_state,
                                              app_state=self.lifespan.state, _loop=_loop)

        loop = asyncio.get_running_loop()
        kw = {"ssl_handshake_timeout": self._handshake_timeout} if config.ssl else {}
        self.servers = [await loop.create_server(create_protocol, sock=s, ssl=config.ssl,
                                                 backlog=config.backlog, **kw)
                        for s in sockets or ()]
        self.started = True
        self._tick = loop.create_task(self.main_loop(), name="uvicorn-tick")  # Date header

    def stop_listening(self) -> None:
        self.should_exit = True
        for s in self.servers:
            s.close()

    async def close_connections(self, timeout: float) -> None:
        """Close idle connections, let answers in flight finish (``timeout``), then cut the
        rest."""
        for conn in list(self.server_state.connections):
            with contextlib.suppress(Exception):
                conn.shutdown()
        deadline = time.monotonic() + timeout
        while (self.server_state.connections or self.server_state.tasks) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in list(self.server_state.tasks):
            t.cancel()
        for conn in list(self.server_state.connections):
            with contextlib.suppress(Exception):
                conn.transport.abort()
        if self._tick is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._tick, 1.0)
        for s in self.servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await s.wait_closed()


async def serve(app: Any, listener: Listener, host: str, port: int, *, ssl: Any = None,
                websockets: bool = False, ws_max_size: int = 64 * 1024,
                ping_interval: float | None = 20.0,
                ping_timeout: float | None = 20.0) -> tuple[_UvicornServer, tuple[str, int]]:
    """Start a uvicorn server for ``app`` on ``host:port`` with ``listener``'s limits; returns
    it and the bound address."""
    http_cls, ws_cls = protocols(listener)
    ctx = ssl
    if ctx is not None:
        import ssl as _ssl

        if ctx.minimum_version < _ssl.TLSVersion.TLSv1_2:
            ctx.minimum_version = _ssl.TLSVersion.TLSv1_2
    config = uvicorn.Config(
        app, host=host, port=port, http=http_cls, ws=ws_cls if websockets else "none",
        ws_max_size=ws_max_size, ws_ping_interval=ping_interval, ws_ping_timeout=ping_timeout,
        ws_per_message_deflate=False,  # frames are encoded once; no per-client deflate
        lifespan="off", interface="asgi3", log_config=None, access_log=False,
        proxy_headers=False,  # no X-Forwarded-For: the peer address is the one capped
        server_header=False, headers=[("server", "margin-monitor")],
        timeout_keep_alive=listener.limits.keep_alive_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=listener.limits.max_head_bytes, backlog=1024,
        ssl_context_factory=(lambda _config, _default: ctx) if ctx is not None else None)
    config.load()
    config.loaded_app = app  # never uvicorn's message-logging wrapper (it logs credentials)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # says TCP. Without it every answer written in two parts (head, then body; each websocket
    # frame after a send) waits for the client's delayed ACK: 40 ms on one connection
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    server = _UvicornServer(config, handshake_timeout=listener.limits.head_timeout_s)
    await server.startup(sockets=[sock])
    bound = sock.getsockname()[:2]
    return server, (bound[0], bound[1])


# ---------------------------------------------------------------------- helpers

def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text.encode(), status, headers=headers,
                    media_type="text/plain; charset=utf-8")


_VERB = {"ack": "acknowledge alerts",
         "approve": "approve or reject liquidation plans or turn the kill switch"}


def _json_response(status: int, obj: Any) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


def _unauthorized() -> Response:
    return _plain(401, "Unauthorized.\n", {"WWW-Authenticate": 'Bearer realm="margin-monitor"'})


async def _deny(send: Callable, status: int, body: bytes,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Refuse a websocket handshake with a plain HTTP answer."""
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            *_SECURITY_HEADERS, *(headers or ())]})
    await send({"type": "websocket.http.response.body", "body": body})


def _query(scope: dict) -> dict[str, list[str]]:
    q = scope.get("mm.query")
    if q is None:
        q = scope["mm.query"] = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return q


def _flag(query: dict[str, list[str]], name: str, default: bool) -> bool:
    v = query.get(name)
    if not v:
        return default
    return v[-1].strip().lower() not in ("0", "false", "no", "off", "")


_HOST_OK = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")


def _one(scope: dict, name: bytes) -> str | None:
    """The header's value when it is given exactly once, else None (a repeated Host or Origin
    is not trusted; the HTTP layer passes a missing or repeated Host on as an empty one)."""
    values = [v for k, v in scope["headers"] if k == name]
    return values[0].decode("latin-1") if len(values) == 1 else None


def _same_origin(scope: dict) -> bool:
    origin = _one(scope, b"origin")
    host = _one(scope, b"host")
    if not origin or not host:
        return False
    try:
        return urlsplit(origin).netloc.lower() == host.lower()
    except ValueError:
        return False


def _page_csp(scope: dict) -> str:
    host = _one(scope, b"host") or ""
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


def _peer(scope: dict) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
