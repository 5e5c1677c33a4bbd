"""A dedicated HTTP/1.1 listener for `POST /api/pretrade` with persistent connections.

The monitor's main port (monitor/server.py, the websockets library) answers plain HTTP with one
TCP connection per request; at 1,000 checks/s the connection set-up and tear-down cost more than
the check. This listener keeps connections open (HTTP/1.1 keep-alive, pipelined requests
answered in order), parsed by `h11` (sans-I/O) on asyncio streams, on the monitor's event loop:
a check runs between engine cycles, like every other reader of the engine.

Guards: the token as on the main port (`Authorization: Bearer`, constant-time compare; no
desk cookie, no `?token=`), a body cap (413), a head cap (431), a connection cap (503 and
close), an idle timeout (a connection with no complete request within it is closed), and a
bounded burst of pipelined requests per turn of the loop. Errors decided from the request head
(401, 404, 405, 413, 400 for bad HTTP) close the connection; answers of the check itself,
refusals and bad JSON included, keep it open. Counts go to /metrics (`PretradeCollector`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hmac
import http
import logging
import time
from collections import Counter
from typing import Any

import h11

from monitor.core.pretrade import MAX_BODY, PretradeService

log = logging.getLogger("monitor.core.pretrade")

PATH = b"/api/pretrade"
MAX_HEAD = 16 * 1024
BURST = 32  # pipelined requests answered before yielding to the engine's tasks
LINGER_S = 1.0  # after an error answer: read and drop what the client still sends, then close
LINGER_QUIET_S = 0.2  # ... stopping early once nothing came for this long
REFUSALS = ("auth", "too_large", "bad_request", "not_found", "method", "full", "idle_timeout")
_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff")]


class PretradeListener:
    """`POST /api/pretrade` over keep-alive HTTP/1.1 (see module doc); `start()` binds."""

    def __init__(self, service: PretradeService, host: str = "127.0.0.1", port: int = 0, *,
                 token: str, max_connections: int = 256, idle_timeout_s: float = 30.0,
                 max_body: int = MAX_BODY, ssl: Any = None) -> None:
        if not token:
            raise ValueError("PretradeListener needs a non-empty token")
        if max_connections < 1 or idle_timeout_s <= 0:
            raise ValueError("max_connections must be >= 1 and idle_timeout_s > 0")
        self.service = service
        self.host, self.port = host, port
        self._token = token.encode()
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.max_body = max_body
        self._ssl = ssl
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.bound: tuple[str, int] | None = None
        self.open = 0
        self.accepted = 0
        self.idle_closed = 0  # keep-alive connections closed after idle_timeout_s unused
        self.requests: Counter = Counter()  # answers by status code
        self.refused: Counter = Counter(dict.fromkeys(REFUSALS, 0))
        self._last_log: dict[str, float] = {}
        self._date = (0, b"")

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, ssl=self._ssl, limit=MAX_HEAD, backlog=512)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.bound = (host, port)
        scheme = "https" if self._ssl is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        log.info("pre-trade listener on %s://%s:%d/api/pretrade (keep-alive, at most %d "
                 "connections, idle timeout %gs)", scheme, shown, port, self.max_connections,
                 self.idle_timeout_s)
        from monitor.web.server import is_loopback

        if not is_loopback(host) and self._ssl is None:
            log.warning("pre-trade listener bound to non-loopback address %s without TLS: "
                        "tokens travel in clear text", host)
        return self.bound

    async def aclose(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await server.wait_closed()

    def stats(self) -> dict:
        return {"open": self.open, "accepted": self.accepted, "idle_closed": self.idle_closed,
                "requests": dict(self.requests), "refused": dict(self.refused)}

    # ------------------------------------------------------------------ one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self.open >= self.max_connections:
                self._refuse("full", writer, f"{self.open} connections open")
                self._count(503)
                writer.write(_error_bytes(503, b"too many connections", retry_after=True))
                await _close(writer)  # no lingering: an overload must not hold more sockets
                return
            self.open += 1
            self.accepted += 1
            try:
                await self._serve(reader, writer)
            finally:
                self.open -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the listener is closing
        except Exception:  # noqa: BLE001 - one connection's failure never stops the listener
            log.exception("pre-trade connection failed")
        finally:
            if not writer.is_closing():
                writer.transport.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        deadline = loop.time() + self.idle_timeout_s
        body = bytearray()
        burst = 0
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint if 400 <= e.error_status_hint < 500 else 400
                await self._fail(conn, reader, writer, status, "bad_request",
                                 f"not a valid HTTP/1.1 request ({e})")
                return
            if ev is h11.NEED_DATA:
                burst = 0
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await reader.read(MAX_HEAD)  # h11 holds <= 2 x MAX_HEAD
                except TimeoutError:
                    if conn.their_state is not h11.IDLE or conn.trailing_data[0]:
                        self._refuse("idle_timeout", writer, "request not complete in time")
                    else:
                        self.idle_closed += 1
                    writer.close()
                    return
                conn.receive_data(data)
                continue
            if isinstance(ev, h11.Request):
                refusal = self._check_head(ev)
                if refusal is not None:
                    status, reason, why = refusal
                    await self._fail(conn, reader, writer, status, reason, why, ev.method)
                    return
                body.clear()
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100,
                                                                     headers=[])))
            elif isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > self.max_body:
                    await self._fail(conn, reader, writer, 413, "too_large",
                                     f"body over {self.max_body} bytes")
                    return
            elif isinstance(ev, h11.EndOfMessage):
                try:
                    status, out = self.service.http("/api/pretrade", bytes(body))
                except Exception:  # noqa: BLE001 - a bug in one check answers 500, no more
                    log.exception("pre-trade check failed")
                    status, out = 500, b'{"error": "internal error"}'
                self._count(status)
                writer.write(conn.send(h11.Response(status_code=status, reason=_phrase(status),
                                                    headers=self._headers(len(out))))
                             + conn.send(h11.Data(data=out)) + conn.send(h11.EndOfMessage()))
                if writer.transport.get_write_buffer_size() > 65536:
                    try:  # a client that pipelines but does not read its answers
                        async with asyncio.timeout_at(loop.time() + self.idle_timeout_s):
                            await writer.drain()
                    except TimeoutError:
                        self._refuse("idle_timeout", writer, "answers not read in time")
                        return
                if conn.our_state is h11.MUST_CLOSE:
                    await _close(writer)
                    return
                conn.start_next_cycle()
                deadline = loop.time() + self.idle_timeout_s
                burst += 1
                if burst >= BURST:  # a long pipeline does not hold up the engine's cycles
                    burst = 0
                    await asyncio.sleep(0)
            elif isinstance(ev, h11.ConnectionClosed):
                writer.close()
                return

    def _check_head(self, req: h11.Request) -> tuple[int, str, str] | None:
        """(status, refusal reason, why) for a request head that is refused, else None."""
        if not self._authorized(req.headers):
            return 401, "auth", "missing or wrong token"
        path = req.target.split(b"?", 1)[0]
        if path != PATH:
            return 404, "not_found", "no such endpoint"
        if req.method != b"POST":
            return 405, "method", "only POST"
        for name, value in req.headers:
            if name == b"content-length" and int(value) > self.max_body:
                return 413, "too_large", f"body over {self.max_body} bytes"
        return None

    def _authorized(self, headers) -> bool:
        ok = False
        for name, value in headers:
            if name == b"authorization":
                scheme, _, cred = value.strip().partition(b" ")
                # every candidate compared in constant time, no early exit
                if hmac.compare_digest(cred.strip(), self._token) and scheme.lower() == b"bearer":
                    ok = True
        return ok

    def _headers(self, n: int, close: bool = False) -> list[tuple[bytes, bytes]]:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        h = [(b"date", self._date[1]), (b"content-length", str(n).encode()), *_HEADERS]
        if close:
            h.append((b"connection", b"close"))
        return h

    async def _fail(self, conn: h11.Connection, reader, writer, status: int, reason: str,
                    why: str, method: bytes = b"") -> None:
        """Answer an error from the head (or bad HTTP) and close the connection."""
        self._refuse(reason, writer, why)
        self._count(status)
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = b'{"error": "%s", "code": "%s"}' % (why.encode()[:200].replace(b'"', b"'"),
                                                       reason.encode())
            headers = self._headers(len(body), close=True)
            if status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="margin-monitor"'))
            try:
                out = conn.send(h11.Response(status_code=status, reason=_phrase(status),
                                             headers=headers))
                if method != b"HEAD":  # an answer to HEAD has no body
                    out += conn.send(h11.Data(data=body))
                writer.write(out + conn.send(h11.EndOfMessage()))
            except h11.LocalProtocolError:
                pass
        await self._linger(reader, writer)

    async def _linger(self, reader, writer) -> None:
        """Half-close, then drop what the client still sends for a moment: closing with unread
        bytes would reset the connection and could lose the answer before the client reads it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + LINGER_S
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            dropped = 0
            while dropped < (1 << 20):  # until EOF, a quiet moment, LINGER_S or 1 MiB
                async with asyncio.timeout_at(min(end, loop.time() + LINGER_QUIET_S)):
                    data = await reader.read(65536)
                if not data:
                    break
                dropped += len(data)
        await _close(writer)

    def _refuse(self, reason: str, writer, why: str) -> None:
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._last_log.get(reason, 0.0) >= 10.0:
            self._last_log[reason] = now
            peer = writer.get_extra_info("peername")
            log.warning("pre-trade listener: refused (%s, %d so far; latest from %s): %s",
                        reason, self.refused[reason], peer[0] if peer else "?", why)

    def _count(self, status: int) -> None:
        self.requests[status] += 1


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _error_bytes(status: int, why: bytes, retry_after: bool = False) -> bytes:
    body = b'{"error": "%s"}' % why
    phrase = _phrase(status)
    extra = b"Retry-After: 5\r\n" if retry_after else b""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n%s\r\n%s" % (status, phrase, len(body), extra, body))


# ---------------------------------------------------------------------- metrics


class PretradeCollector:
    """The pre-trade service's and listener's counts as Prometheus metrics."""

    def __init__(self, service: PretradeService, listener: PretradeListener | None = None):
        self.service = service
        self.listener = listener

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        svc = self.service
        yield CounterMetricFamily("mm_pretrade_checks", "Pre-trade checks answered (allowed "
                                  "or refused), both ports", value=svc.checks)
        bad = CounterMetricFamily("mm_pretrade_bad_requests", "Pre-trade requests the check "
                                  "could not take (400/404/413), by code", labels=["code"])
        for code, n in sorted(svc.rejects.items()):
            bad.add_metric([code], n)
        yield bad
        lst = self.listener
        if lst is None:
            return
        req = CounterMetricFamily("mm_pretrade_listener_requests", "Requests answered by the "
                                  "keep-alive pre-trade listener, by status", labels=["status"])
        for status, n in sorted(lst.requests.items()):
            req.add_metric([str(status)], n)
        yield req
        ref = CounterMetricFamily("mm_pretrade_listener_refused", "Requests and connections "
                                  "refused by the pre-trade listener, by reason",
                                  labels=["reason"])
        for reason, n in sorted(lst.refused.items()):
            ref.add_metric([reason], n)
        yield ref
        yield CounterMetricFamily("mm_pretrade_listener_connections_accepted", "Connections "
                                  "accepted by the pre-trade listener", value=lst.accepted)
        yield GaugeMetricFamily("mm_pretrade_listener_connections", "Open connections to the "
                                "pre-trade listener", value=lst.open)


async def start_listener(cfg, service: PretradeService, token: str,
                         registry) -> PretradeListener | None:
    """The listener of `cfg.pretrade_listen` (None when unset), started; its counts and the
    service's registered on `registry` either way."""
    listener = None
    if cfg.pretrade_listen:
        host, port = cfg.pretrade_host_port
        listener = PretradeListener(service, host, port, token=token,
                                    max_connections=cfg.pretrade_max_connections,
                                    idle_timeout_s=cfg.pretrade_idle_timeout_s,
                                    ssl=cfg.ssl_context())
        await listener.start()
    registry.register(PretradeCollector(service, listener))
    return listener


def check_config(cfg) -> None:
    """Raise ConfigError for unusable pre-trade listener settings (before anything starts)."""
    from monitor.errors import ConfigError

    if cfg.pretrade_listen:
        cfg.pretrade_host_port  # noqa: B018 - validates HOST:PORT
    n, t = cfg.pretrade_max_connections, cfg.pretrade_idle_timeout_s
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        raise ConfigError(f"pretrade_max_connections: a whole number from 1 to 100000, got {n!r}")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 86_400:
        raise ConfigError(f"pretrade_idle_timeout_s: seconds in (0, 86400], got {t!r}")
