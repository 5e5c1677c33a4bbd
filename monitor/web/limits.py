"""Connection-level limits of the monitor's HTTP edge: uvicorn's protocol classes, subclassed.

uvicorn parses HTTP/1.1 with h11 (``H11Protocol``) and hands websocket upgrades to websockets'
sans-I/O protocol (``WebSocketsSansIOProtocol``). Neither has a hook for what a monitor exposed
to hostile clients needs before any application code runs, so :func:`protocols` builds
subclasses of both, bound to one :class:`Listener` (its limits and counters):

* **connection caps**: at most ``max_tcp_connections`` open TCP connections in all and
  ``max_connections_per_client`` from one client address; a connection beyond either is closed
  at once (refusals ``tcp_full`` / ``client_full``) or, on a listener that answers them, gets a
  503 first. An upgraded websocket keeps its slot until it closes.
* **a request deadline**: a request must arrive whole (head and body) within ``head_timeout_s``
  of the connection opening or of its first byte on a kept-alive connection. A client that
  trickles a byte every few seconds is cut at the deadline (``handshake_timeout``), which
  uvicorn's own keep-alive timer (reset by every byte) would never do. An idle kept-alive
  connection is closed after ``keep_alive_s`` without counting a refusal.
* **head limits**: a request line over ``max_request_line`` bytes answers 414, more than
  ``max_headers`` header lines or a head over ``max_head_bytes`` 431; other unparsable HTTP
  answers 400, and bytes that are not an HTTP request line at all are closed on without an
  answer (``not_http_answer=False``). All counted as ``bad_request``, none logged per request.
* **a lenient Host** (``lenient_host``): h11 refuses an HTTP/1.1 request without exactly one
  ``Host`` header; the main port takes it and passes an empty ``Host`` on, which nothing
  trusts (same-origin checks fail, the page's CSP names no websocket host).
* **half-close**: a client that sends its request and half-closes at once still gets its
  answer (uvicorn would close the transport on the EOF before the application answered).

The protocol serving the current request is in :data:`CURRENT` (a context variable copied into
each request's task), for the application to ask whether a pipelined request is already waiting
or to abort a websocket whose peer stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import http
import logging
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from monitor.errors import ConfigError
from monitor.web.logs import http_log, quiet_protocol_log, ws_log

log = logging.getLogger("monitor.web.server")

CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("monitor_web_connection",
                                                                default=None)


@dataclass(slots=True)
class Limits:
    """The edge's limits (docs/security.md, "Connection caps and refusals")."""

    max_tcp_connections: int = 512
    max_connections_per_client: int = 64
    head_timeout_s: float = 5.0  # a whole request within this (slowloris)
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_request_line: int = 8 * 1024  # 414 beyond
    max_headers: int = 100  # 431 beyond
    max_head_bytes: int = 16 * 1024  # 431 beyond
    max_body_bytes: int = 16 * 1024  # 413 beyond

    def check(self) -> None:
        """Raise ConfigError naming the first unusable limit."""
        for name in ("max_tcp_connections", "max_connections_per_client", "max_request_line",
                     "max_headers", "max_head_bytes", "max_body_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}: a whole number >= 1, got {v!r}")
        for name in ("head_timeout_s", "keep_alive_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 86_400:
                raise ConfigError(f"{name}: seconds in (0, 86400], got {v!r}")


class Listener:
    """One listening socket's limits, open connections and counters.

    ``refuse(reason, peer)`` is called for every refusal decided here (canonical reasons:
    ``tcp_full``, ``client_full``, ``handshake_timeout``, ``bad_request``); ``kind`` is
    ``"main"`` or ``"pretrade"`` (the alias listener answers JSON errors and a 503 when full).
    """

    def __init__(self, limits: Limits, refuse, *, kind: str = "main",
                 close_timeout: float = 2.0) -> None:
        limits.check()
        self.limits = limits
        self.kind = kind
        self._refuse = refuse
        self.close_timeout = close_timeout
        self.open = 0
        self.by_client: Counter[str] = Counter()
        self.accepted = 0
        self.idle_closed = 0  # kept-alive connections closed unused (not a refusal)
        self.requests: Counter[int] = Counter()  # answers by status (the pretrade listener's)

    @property
    def main(self) -> bool:
        return self.kind == "main"

    def admit(self, peer: str) -> str | None:
        lim = self.limits
        if self.open >= lim.max_tcp_connections:
            return "tcp_full"
        if self.by_client[peer] >= lim.max_connections_per_client:
            return "client_full"
        self.open += 1
        self.by_client[peer] += 1
        self.accepted += 1
        return None

    def release(self, peer: str) -> None:
        self.open -= 1
        n = self.by_client[peer] - 1
        if n > 0:
            self.by_client[peer] = n
        else:
            del self.by_client[peer]

    def refuse(self, reason: str, peer: str) -> None:
        self._refuse(reason, peer)


_NOT_A_LINE = re.compile(rb"[^\x20-\x7e\r]")  # a byte no request line holds
# RFC 9110/9112, as h11 spells them (h11/_abnf.py)
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_REQUEST_LINE = re.compile(rb"(?P<method>" + _TOKEN + rb") (?P<target>[\x21-\x7e]+) "
                           rb"HTTP/(?P<http_version>[0-9]\.[0-9])")
_HEADER = re.compile(rb"(?P<name>" + _TOKEN + rb"):[ \t]*(?P<value>(?:" + _VCHAR +
                     rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?)[ \t]*")


class _Request(h11.Connection):
    """h11's server connection with the edge's head limits and (optionally) a lenient Host.

    The reader of a request head (h11's ``maybe_read_from_IDLE_client``, chosen by h11's one
    hook for it, ``_get_io_object``) is replaced by :meth:`_read_head`: the same parse with the
    limits checked first; the last protocol error is kept for the answer's status (uvicorn's
    own answer is always 400). tests/web/test_web_redteam.py pins what this depends on."""

    def __init__(self, limits: Limits, lenient_host: bool) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self._limits = limits
        self._lenient = lenient_host
        self.error: h11.RemoteProtocolError | None = None
        self.not_http = False  # the first line is no HTTP request line at all

    def _get_io_object(self, role, event, io_dict):  # noqa: ANN001 - h11's signature
        if role is h11.CLIENT and self.their_state is h11.IDLE:
            return self._read_head
        return super()._get_io_object(role, event, io_dict)

    def has_pending(self) -> bool:
        """Whether received bytes wait unparsed (a pipelined request); O(1), unlike
        ``trailing_data``, which copies them."""
        return bool(self._receive_buffer)

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.error = e
            raise

    def _read_head(self, buf) -> h11.Request | None:  # noqa: ANN001 - h11's ReceiveBuffer
        lim = self._limits
        lines = buf.maybe_extract_lines()
        if lines is None:
            head = bytes(buf)[:lim.max_request_line]
            first = head.split(b"\n", 1)[0]
            if buf.is_next_line_obviously_invalid_request_line() or _NOT_A_LINE.search(first):
                self.not_http = True  # no request line can start like this: do not wait
                raise h11.LocalProtocolError("illegal request line")
            if len(buf) > lim.max_request_line and b"\n" not in head:
                raise h11.RemoteProtocolError("request line too long", error_status_hint=414)
            return None
        if not lines:
            self.not_http = True
            raise h11.LocalProtocolError("no request line received")
        if len(lines[0]) > lim.max_request_line:
            raise h11.RemoteProtocolError("request line too long", error_status_hint=414)
        if len(lines) - 1 > lim.max_headers:
            raise h11.RemoteProtocolError("too many header lines", error_status_hint=431)
        if sum(len(line) + 2 for line in lines) > lim.max_head_bytes:
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        m = _REQUEST_LINE.fullmatch(lines[0])
        if m is None:
            self.not_http = True
            raise h11.LocalProtocolError("illegal request line")
        headers = _header_fields(lines[1:])
        if self._lenient:
            hosts = sum(1 for name, _ in headers if name.lower() == b"host")
            if hosts != 1:  # none or repeated: passed on empty, trusted by nothing
                headers = [h for h in headers if h[0].lower() != b"host"] + [(b"host", b"")]
        return h11.Request(method=m["method"], target=m["target"],
                           http_version=m["http_version"], headers=headers)


def _header_fields(lines: list[bytearray]) -> list[tuple[bytes, bytes]]:
    """(name, value) of each header line; an obsolete folded line joins the one before (as
    h11 does); a line that is no header field is a protocol error."""
    out: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not out:
                raise h11.LocalProtocolError("continuation line at start of headers")
            name, value = out[-1]
            out[-1] = (name, value + b" " + bytes(line).strip(b" \t"))
            continue
        m = _HEADER.fullmatch(line)
        if m is None:
            raise h11.LocalProtocolError(f"illegal header line {bytes(line)[:40]!r}")
        out.append((m["name"], m["value"]))
    return out


def protocols(lst: Listener) -> tuple[type[H11Protocol], type[WebSocketsSansIOProtocol]]:
    """The (HTTP, websocket) protocol classes of one listener, for ``uvicorn.Config``."""
    lim = lst.limits

    class WebSocketProtocol(WebSocketsSansIOProtocol):
        """websockets' sans-I/O protocol; keeps the TCP slot of the connection it upgraded,
        logs through ``monitor.web.server.websockets`` (redacted) and closes after
        ``close_timeout`` when a peer does not answer a close."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.logger = ws_log
            self.conn.logger = ws_log
            self.conn.debug = ws_log.isEnabledFor(logging.DEBUG)
            self.close_timeout = lst.close_timeout
            self.peer: str | None = None  # set by the HTTP protocol that upgraded

        def data_received(self, data: bytes) -> None:
            CURRENT.set(self)
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None:
                peer, self.peer = self.peer, None
                lst.release(peer)
            super().connection_lost(exc)

        def abort(self) -> None:
            """Cut the TCP connection (a peer that stopped reading cannot take a close)."""
            if self.transport is not None:
                self.transport.abort()

    class HttpProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.logger = http_log
            self.conn = _Request(lim, lenient_host=lst.main)
            self.timeout_keep_alive = lim.keep_alive_s
            self.peer: str | None = None  # set while this connection holds a slot
            self._deadline: asyncio.TimerHandle | None = None
            self._fresh = True  # no byte of the next request received yet
            self._eof = False  # the client half-closed while a request was being answered

        # ---------------------------------------------------------------- slots

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            nodelay(transport)
            transport = CoalescingTransport(transport)  # type: ignore[assignment]
            super().connection_made(transport)
            peer = self.client[0] if self.client else "?"
            reason = lst.admit(peer)
            if reason is not None:
                lst.refuse(reason, peer)
                if not lst.main:
                    transport.write(_error_bytes(503, "too many connections", "full",
                                                 retry_after=5))
                transport.close()
                return
            self.peer = peer
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.peer is not None:
                peer, self.peer = self.peer, None
                lst.release(peer)
            super().connection_lost(exc)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._disarm()
            peer, self.peer = self.peer, None  # the slot goes with the connection
            super().handle_websocket_upgrade(event)
            proto = self.transport.get_protocol()
            if peer is not None:
                if isinstance(proto, WebSocketProtocol) and not self.transport.is_closing():
                    proto.peer = peer
                else:
                    lst.release(peer)

        # ---------------------------------------------------------------- the deadline

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(lim.head_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.peer is None:
                return
            if lst.main:
                lst.refuse("handshake_timeout", self.peer)
            elif not self._fresh:
                lst.refuse("handshake_timeout", self.peer)  # "idle_timeout" there
            else:
                lst.idle_closed += 1
            self.transport.close()

        def timeout_keep_alive_handler(self) -> None:
            if not self.transport.is_closing():
                lst.idle_closed += 1
            super().timeout_keep_alive_handler()

        def data_received(self, data: bytes) -> None:
            if self.peer is None:  # refused: closing
                return
            if self._fresh:
                self._fresh = False
                if self._deadline is None and self.conn.their_state is h11.IDLE:
                    self._arm()  # a new request on a kept-alive connection
            super().data_received(data)

        def handle_events(self) -> None:
            CURRENT.set(self)
            super().handle_events()
            if self._deadline is not None and self.conn.their_state is not h11.IDLE \
                    and self.conn.their_state is not h11.SEND_BODY:
                self._disarm()  # the request is in (or the connection is done)

        def on_response_complete(self) -> None:
            self._fresh = not self.conn.has_pending()
            super().on_response_complete()  # may start a pipelined request's cycle
            if self.transport.is_closing():
                return
            if self._eof and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()  # answered what came before the half-close
                return
            if not self._fresh and self._deadline is None and \
                    self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._arm()  # a pipelined request not yet whole

        def eof_received(self) -> bool | None:
            if self.scheme == "https":  # TLS cannot half-close: asyncio closes either way
                return None
            if self.cycle is not None and not self.cycle.response_complete \
                    and not self.transport.is_closing():
                self._eof = True
                return True  # keep the transport open for the answer
            return None

        def pipelined(self) -> bool:
            """Whether bytes of a next request are already waiting."""
            return self.conn.has_pending()

        # ---------------------------------------------------------------- bad HTTP

        def send_400_response(self, msg: str) -> None:
            err = self.conn.error
            status = err.error_status_hint if err is not None else 400
            if status not in (400, 414, 431):
                status = 400
            if self.peer is not None:
                lst.refuse("bad_request", self.peer)
            why = str(err) if err is not None else "invalid HTTP request"
            try:
                if self.conn.our_state is h11.SEND_RESPONSE or self.conn.our_state is h11.IDLE:
                    if not lst.main:
                        lst.requests[status] += 1
                        self.transport.write(_error_bytes(status, why, "bad_request"))
                    elif not (status == 400 and self.conn.not_http):
                        self.transport.write(_plain_bytes(status, _PHRASES.get(status, "Bad "
                                                                               "request.")))
            finally:
                self.transport.close()

    return HttpProtocol, WebSocketProtocol


_PHRASES = {400: "Bad request.\n", 414: "Request line too long.\n",
            431: "Request header fields too large.\n"}


class CoalescingTransport:
    """The connection's transport, with the writes of one event-loop turn sent as one.

    uvicorn writes a response's head, body and end separately; with TCP_NODELAY each write is
    its own segment and its own send(2), so a small answer costs two system calls and two
    wake-ups of the client. Writes made in one turn of the loop go out together at the end of
    it; close, write_eof and the write-buffer size see what is still held."""

    __slots__ = ("_transport", "_held", "_loop")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on the connection (a reply must not wait for the peer's delayed ACK)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


def _date() -> bytes:
    return email.utils.formatdate(time.time(), usegmt=True).encode()


def _plain_bytes(status: int, text: str) -> bytes:
    body = text.encode()
    return (_status_line(status) + b"date: " + _date() + b"\r\nserver: margin-monitor\r\n"
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"x-content-type-options: nosniff\r\ncache-control: no-store\r\n"
            b"connection: close\r\n\r\n" % len(body)) + body


def _error_bytes(status: int, why: str, code: str, retry_after: int | None = None) -> bytes:
    body = orjson.dumps({"error": why[:200], "code": code})
    extra = b"retry-after: %d\r\n" % retry_after if retry_after is not None else b""
    return (_status_line(status) + b"date: " + _date() + b"\r\nserver: margin-monitor\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"x-content-type-options: nosniff\r\ncache-control: no-store\r\n%s"
            b"connection: close\r\n\r\n" % (len(body), extra)) + body


quiet_protocol_log()  # uvicorn's per-request warnings: counted instead (monitor/web/logs.py)
