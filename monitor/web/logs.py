"""The edge's loggers, and the filter that keeps credentials out of every line they write.

uvicorn's protocols and websockets' handshake parser log request lines and headers (websockets
at DEBUG, uvicorn's websocket accept line at INFO); both are pointed at
``monitor.web.server.http`` and ``monitor.web.server.websockets`` (monitor/web/limits.py),
whose records pass
:class:`RedactSecrets`: ``token=`` query values (also with the name percent-encoded, as
``%74oken=``), ``Authorization`` values, ``Cookie`` / ``Set-Cookie`` values and the desk's
session cookie, and every registered secret (the tokens, the session value) wherever it
appears. uvicorn's own loggers get the same filter.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

http_log = logging.getLogger("monitor.web.server.http")
ws_log = logging.getLogger("monitor.web.server.websockets")

# t o k e n =, each letter plain or percent-encoded (either case of the letter and of the hex)
_TOKEN_NAME = "".join(f"(?:{c}|%{ord(c):02x}|%{ord(c.upper()):02x})" for c in "token")
_QUERY = re.compile(rf"(?i)({_TOKEN_NAME}(?:=|%3d))[^&\s#\"']*")
_AUTH = re.compile(r"(?i)(authorization\s*:\s*).*")
_AUTH_TUPLE = re.compile(r"(?i)(authorization['\"]?\s*,\s*b?['\"])[^'\"]*")
_COOKIE = re.compile(r"(?i)((?:set-)?cookie\s*:\s*).*")
_COOKIE_TUPLE = re.compile(r"(?i)((?:set-)?cookie['\"]?\s*,\s*b?['\"])[^'\"]*")
_SESSION = re.compile(r"(mm_desk_\d*=)[^;\s'\",&]*")
_HINTS = ("oken", "%6f", "%6F", "%4f", "%4F", "uthorization", "ookie", "mm_desk")


class RedactSecrets(logging.Filter):
    """Rewrite a record's message with every credential replaced by ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add_secret(self, value: str) -> None:
        if value and len(value) >= 8:
            self._secrets.add(value)
            self._secrets.add(quote(value, safe=""))

    def discard_secret(self, value: str) -> None:
        self._secrets.discard(value)
        self._secrets.discard(quote(value, safe=""))

    def redact(self, msg: str) -> str:
        if any(h in msg for h in _HINTS):
            msg = _QUERY.sub(r"\1***", msg)
            msg = _AUTH_TUPLE.sub(r"\1***", msg)
            msg = _AUTH.sub(r"\1***", msg)
            msg = _COOKIE_TUPLE.sub(r"\1***", msg)
            msg = _COOKIE.sub(r"\1***", msg)
            msg = _SESSION.sub(r"\1***", msg)
        for s in self._secrets:
            if s in msg:
                msg = msg.replace(s, "***")
        return msg

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - never break logging
            return True
        clean = self.redact(msg)
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if self.redact(text) != text:  # an exception that quotes a credential
                record.exc_info = None
                record.exc_text = None
                clean += " [exception text withheld: it held a credential]"
        if clean != msg:
            record.msg = clean
            record.args = None
        return True


class _QuietProtocol(logging.Filter):
    """uvicorn warns once per bad request ("Invalid HTTP request received.", "Unsupported
    upgrade request."): a cheap way to flood the log. Those requests are counted
    (``bad_request``) and the count is logged, rate-limited; the per-request lines go.
    Its per-connection websocket access line is DEBUG here (the server logs connects)."""

    _drop = ("Invalid HTTP request received.", "Unsupported upgrade request.",
             "No supported WebSocket library detected")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith(self._drop):
            return False
        if msg.startswith('%s - "WebSocket ') and record.levelno == logging.INFO:
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


REDACT = RedactSecrets()
_LOGGERS = ("monitor.web.server", "monitor.web.server.http", "monitor.web.server.websockets",
            "monitor.web.pretrade", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def install() -> None:
    """Attach the filters (idempotent)."""
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        if REDACT not in lg.filters:
            lg.addFilter(REDACT)


_QUIET = _QuietProtocol()


def quiet_protocol_log() -> None:
    install()
    for lg in (http_log, ws_log):
        if _QUIET not in lg.filters:
            lg.filters.insert(0, _QUIET)  # before the redaction: dropped lines cost nothing
