"""What a live source (a tick feed or an account-event source) is doing now, for health and
metrics: one `SourceStatus` per source, updated by its read loop.

States (`SourceStatus.state`):

    waiting       not connected yet (the first attempt is under way)
    live          connected and reading (a read round trip succeeded; it may be idle)
    reconnecting  the connection failed or dropped (refused, reset, timeout); retrying
    error         the server refused a command (WRONGTYPE, NOPERM, NOAUTH, OOM...) or something
                  else failed; retrying with the same backoff
    done          a finite source (a file) reached its end, or the source was closed

Every failure is counted by kind (`ERROR_KINDS`: `connection`, `server`, `other`), kept as
`last_error` (redacted: no secret of the source's URL) and logged rate-limited: the first failure
of an outage at once, then at most one line per `log_every_s` (with how many were not logged),
and one line when the source is back. `down_since_ns` is when the current outage began (None
while live), so a health check can give it a grace period.
"""

from __future__ import annotations

import logging
import time
import traceback

from feeds.net import redact

STATES = ("waiting", "live", "reconnecting", "error", "done")
ERROR_KINDS = ("connection", "server", "other")


class SourceStatus:
    def __init__(self, name: str, *, secrets: list[str] | None = None,
                 logger: logging.Logger | None = None, log_every_s: float = 30.0):
        self.name = name
        self.secrets = list(secrets or [])
        self.log = logger or logging.getLogger("feeds")
        self.log_every_s = log_every_s
        self.state = "waiting"
        now = time.time_ns()
        self.since_ns = now  # when the current state began
        self.down_since_ns: int | None = now  # start of the current outage (None while live)
        self.last_error: str | None = None
        self.last_error_brief: str | None = None  # no host, no URL: fit for an open /healthz
        self.last_error_ns = 0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.retries = 0
        self._outage_errors = 0
        self._unlogged = 0
        self._last_log = 0.0
        self._last_kind: str | None = None

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since_ns = time.time_ns()

    def ok(self) -> None:
        """A read round trip succeeded: the source is live."""
        if self.state == "live":
            return
        if self._outage_errors:
            down = (time.time_ns() - (self.down_since_ns or time.time_ns())) / 1e9
            self.log.info("%s: back after %d failed attempt(s) in %.1fs", self.name,
                          self._outage_errors, down)
        self._outage_errors = self._unlogged = 0
        self._last_kind = None
        self.down_since_ns = None
        self._set("live")

    def failed(self, exc: BaseException, kind: str, retry_in: float | None = None) -> None:
        """A failure of `kind` (one of ERROR_KINDS); the caller retries in `retry_in` s."""
        if kind not in self.errors:
            kind = "other"
        now_ns = time.time_ns()
        self.errors[kind] += 1
        if retry_in is not None:
            self.retries += 1
        msg = redact(f"{type(exc).__name__}: {exc}", self.secrets)[:500]
        self.last_error, self.last_error_ns = msg, now_ns
        self.last_error_brief = brief_error(exc)
        if self.down_since_ns is None:
            self.down_since_ns = now_ns
        self._set("reconnecting" if kind == "connection" else "error")
        self._outage_errors += 1
        now = time.monotonic()
        first = self._outage_errors == 1 or kind != self._last_kind
        self._last_kind = kind
        if not first and now - self._last_log < self.log_every_s:
            self._unlogged += 1
            return
        self._last_log = now
        more = f" ({self._unlogged} more not logged)" if self._unlogged else ""
        self._unlogged = 0
        retry = f"; retrying in {retry_in:.2f}s" if retry_in is not None else ""
        level = logging.WARNING if kind == "connection" else logging.ERROR
        self.log.log(level, "%s: %s (%s, %d in this outage)%s%s", self.name, msg, kind,
                     self._outage_errors, retry, more)
        if kind == "other" and first:  # not a Redis or network refusal: show where
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.log.error("%s: %s", self.name, redact(tb, self.secrets))

    def finished(self) -> None:
        self.down_since_ns = None
        self._set("done")

    def as_dict(self) -> dict:
        return {"state": self.state, "since_ns": self.since_ns,
                "down_since_ns": self.down_since_ns, "last_error": self.last_error,
                "last_error_brief": self.last_error_brief,
                "last_error_ns": self.last_error_ns, "errors": dict(self.errors),
                "retries": self.retries}


def brief_error(exc: BaseException) -> str:
    """The class of an error and, for a server's refusal, its code (`ResponseError: WRONGTYPE`,
    `NoPermissionError`, `ConnectionRefusedError`): what went wrong without where (no host, port,
    key or URL), for health checks that anyone may read."""
    name = type(exc).__name__
    first = str(exc).split(" ", 1)[0]
    if first.isupper() and first.isalpha() and 3 <= len(first) <= 20:
        return f"{name}: {first}"
    return name


def redis_error_kind(exc: BaseException) -> str:
    """`connection`, `server` or `other` for an exception out of redis-py (or the socket)."""
    from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, (ResponseError, AuthenticationError, AuthorizationError)):
        return "server"
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)):
        return "connection"
    return "other"
