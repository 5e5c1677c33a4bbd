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
    (1009).
``/healthz`` (open)
    ``health()`` as JSON; 200, or 503 when ``health()["ok"]`` is false (or health() raises).
``/metrics`` (token required)
    Prometheus text exposition of ``registry`` (default: the global registry).
anything else
    404, or with ``static_dir`` a file under it (token required; no traversal outside it).

Authentication: ``Authorization: Bearer <token>`` or ``?token=<token>`` (the query form is for
browsers, whose websocket API cannot set headers; it can end up in proxy logs, so prefer the
header). A missing or wrong token gets HTTP 401 and nothing else. Tokens are compared with
``hmac.compare_digest`` and redacted from the websockets library's (debug) logs.

Back-pressure: :meth:`broadcast` never awaits a client. Each client has a bounded queue
(``client_queue`` frames) drained by its own sender task; when a broadcast finds it full the
client is dropped: closed with code 1013 (try again later) and reason ``"send queue full"``,
aborted if the close handshake cannot complete within ``close_timeout``, and counted in
``stats()["dropped_slow"]``. A dropped client should reconnect; the snapshot brings it back up
to date. Beyond ``max_connections`` websocket clients (open or handshaking) new ones get 503.
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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from .outbox import encode_event

log = logging.getLogger("monitor.server")

TIERS = frozenset({"WITHDRAWABLE", "NORMAL", "WARNING", "MARGIN_CALL", "FORCED_LIQUIDATION",
                   "NO_DEBT"})
WS_PATH = "/ws/alerts"
MAX_STATIC_BYTES = 16 << 20


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


# The websockets library logs request lines and headers at DEBUG; give it a logger that redacts.
_ws_log = logging.getLogger("monitor.server.websockets")
_ws_log.addFilter(_RedactSecrets())


class _Client:
    __slots__ = ("ws", "peer", "queue", "wake", "tiers", "accounts", "heartbeat", "snapshot",
                 "sender", "dropped")

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
        ssl: Any = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
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
        self._ssl = ssl
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self.close_timeout = close_timeout

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
        )
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.bound = (host, port)
        scheme = "https" if self._ssl is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        log.info("alert server listening on %s://%s:%d (websocket %s)", scheme, shown, port,
                 WS_PATH)
        if not _is_loopback(self.host) and self._ssl is None:
            log.warning("alert server bound to non-loopback address %s without TLS: tokens and "
                        "alerts travel in clear text", self.host)
        return self.bound

    async def aclose(self) -> None:
        """Close every client (1001) and stop listening."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=False)
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
        }

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
            try:
                snap = list(self._snapshot())
            except Exception:  # noqa: BLE001
                log.exception("snapshot() failed; client %s starts with live events only", peer)
                snap = []
            # No await between snapshot() and registration: every event broadcast after the
            # snapshot was taken is queued for this client, none before it.
            c.snapshot = [encode_event(e) for e in snap
                          if c.match(e.get("tier"), e.get("previous_tier"), e.get("account_id"))]
            self._clients.add(c)
            c.sender = asyncio.get_running_loop().create_task(self._sender(c))
            log.info("alert client %s connected (%d clients)", peer, len(self._clients))
            async for msg in ws:
                if c.dropped:
                    break
                self._on_message(c, msg)
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:
                self._n_oversize += 1
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

    # ------------------------------------------------------------------ HTTP side

    async def _process_request(self, conn: ServerConnection,
                               request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        if path == "/healthz":
            return self._healthz(conn)
        query = parse_qs(url.query)
        if path == WS_PATH:
            if not self._authorized(conn, request, query):
                return self._unauthorized(conn)
            self._conns = {w for w in self._conns
                           if w.state is not State.CLOSED and not w.transport.is_closing()}
            if len(self._conns) >= self.max_connections:
                self._n_rejected_full += 1
                log.warning("alert server full (%d connections); rejecting %s",
                            self.max_connections, _peer(conn))
                return _plain(conn, 503, "Too many connections.\n", retry_after=5)
            self._conns.add(conn)
            return None  # websocket handshake (426 if it is not an upgrade request)
        if path == "/metrics":
            if not self._authorized(conn, request, query):
                return self._unauthorized(conn)
            return self._metrics(conn)
        if self._static_root is not None:
            if not self._authorized(conn, request, query):
                return self._unauthorized(conn)
            return await self._static(conn, path)
        return _plain(conn, 404, "Not found.\n")

    def _authorized(self, conn: ServerConnection, request: Request,
                    query: dict[str, list[str]]) -> bool:
        candidates: list[str] = []
        for value in request.headers.get_all("Authorization"):
            scheme, _, cred = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                candidates.append(cred.strip())
        candidates += query.get("token", [])
        ok = False
        for cand in candidates:
            # compare every candidate (no early exit) in constant time per candidate
            ok |= hmac.compare_digest(cand.encode(), self._token)
        if not ok:
            self._n_rejected_auth += 1
            self._auth_fail_since_log += 1
            now = time.monotonic()
            if now - self._last_auth_log >= 10.0:
                log.warning("alert server: %d request(s) rejected for a missing or wrong token "
                            "(latest from %s)", self._auth_fail_since_log, _peer(conn))
                self._last_auth_log, self._auth_fail_since_log = now, 0
        return ok

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

    def _metrics(self, conn: ServerConnection) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        body = generate_latest(self._registry if self._registry is not None else REGISTRY)
        return _response(200, body, CONTENT_TYPE_LATEST)

    async def _static(self, conn: ServerConnection, path: str) -> Response:
        root = self._static_root
        assert root is not None
        rel = unquote(path)
        if "\x00" in rel or "\\" in rel:
            return _plain(conn, 404, "Not found.\n")
        if rel.endswith("/"):
            rel += "index.html"
        try:
            target = (root / rel.lstrip("/")).resolve()
        except (OSError, RuntimeError):
            return _plain(conn, 404, "Not found.\n")
        if not target.is_relative_to(root) or not target.is_file():
            return _plain(conn, 404, "Not found.\n")
        try:
            if target.stat().st_size > MAX_STATIC_BYTES:
                return _plain(conn, 404, "Not found.\n")
            body = await asyncio.to_thread(target.read_bytes)
        except OSError:
            return _plain(conn, 404, "Not found.\n")
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
    ])
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(st.value, st.phrase, headers, body)


def _plain(conn: ServerConnection, status: int, text: str,
           retry_after: int | None = None) -> Response:
    extra = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return _response(status, text.encode(), "text/plain; charset=utf-8", extra)


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
