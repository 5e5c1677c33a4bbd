"""``--pretrade-listen``: a second listener of the monitor's one application, restricted to
``POST /api/pretrade``.

The main port answers the pre-trade check with keep-alive connections itself
(monitor/web/server.py); this alias stays for deployments that give the order path its own port
(its own connection cap and firewall rule). It is a second ``uvicorn.Server`` serving the same
Starlette application behind an edge in ``pretrade`` mode: only ``POST /api/pretrade`` with an
``Authorization: Bearer`` header (no desk cookie, no ``?token=``), no websockets, a body cap
(413), a connection cap (503 with ``Retry-After``, then closed) and an idle timeout (a kept-alive
connection unused that long is closed; a request not whole within it is refused).

Errors decided from the request head (401, 404, 405, 413, and 400 / 414 / 431 for bad HTTP)
answer JSON ``{"error": ..., "code": <reason>}`` and close the connection; answers of the check
itself, refusals and bad JSON included, keep it open. Counts go to /metrics
(:class:`PretradeCollector`): ``mm_pretrade_listener_refused_total{reason}`` with the reasons
``auth``, ``too_large``, ``bad_request``, ``not_found``, ``method``, ``full``, ``idle_timeout``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from monitor.web.limits import Limits, Listener

if TYPE_CHECKING:
    from monitor.web.server import AlertServer

log = logging.getLogger("monitor.web.pretrade")

REFUSALS = ("auth", "too_large", "bad_request", "not_found", "method", "full", "idle_timeout")
_REASON = {"tcp_full": "full", "client_full": "full", "handshake_timeout": "idle_timeout"}
MAX_BODY = 16 * 1024


class PretradeListener:
    """``POST /api/pretrade`` on its own address (see module doc); ``start()`` binds."""

    def __init__(self, server: AlertServer, host: str = "127.0.0.1", port: int = 0, *,
                 max_connections: int = 256, idle_timeout_s: float = 30.0,
                 max_body: int = MAX_BODY, ssl: Any = None) -> None:
        if max_connections < 1 or idle_timeout_s <= 0:
            raise ValueError("max_connections must be >= 1 and idle_timeout_s > 0")
        self.server = server
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.limits = Limits(max_tcp_connections=max_connections,
                             max_connections_per_client=max_connections,
                             head_timeout_s=idle_timeout_s, keep_alive_s=idle_timeout_s,
                             max_body_bytes=max_body)
        self.listener = Listener(self.limits, self._refuse_connection, kind="pretrade")
        self._ssl = ssl
        self._uv: Any = None
        self.bound: tuple[str, int] | None = None
        self.refused: Counter[str] = Counter(dict.fromkeys(REFUSALS, 0))
        self._last_log: dict[str, float] = {}

    # the counts PretradeCollector exports
    @property
    def requests(self) -> Counter[int]:
        return self.listener.requests  # answers by status code

    @property
    def open(self) -> int:
        return self.listener.open

    @property
    def accepted(self) -> int:
        return self.listener.accepted

    @property
    def idle_closed(self) -> int:
        return self.listener.idle_closed

    async def start(self) -> tuple[str, int]:
        from monitor.web.server import is_loopback, serve

        self._uv, self.bound = await serve(self.server.app_for("pretrade", self), self.listener,
                                           self.host, self.port, ssl=self._ssl)
        self.server._extra.append(self)
        host, port = self.bound
        scheme = "https" if self._ssl is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        log.info("pre-trade listener on %s://%s:%d/api/pretrade (keep-alive, at most %d "
                 "connections, idle timeout %gs)", scheme, shown, port, self.max_connections,
                 self.idle_timeout_s)
        if not is_loopback(host) and self._ssl is None:
            log.warning("pre-trade listener bound to non-loopback address %s without TLS: "
                        "tokens travel in clear text", host)
        return self.bound

    async def aclose(self) -> None:
        uv, self._uv = self._uv, None
        if uv is None:
            return
        if self in self.server._extra:
            self.server._extra.remove(self)
        uv.stop_listening()
        await uv.close_connections(2.0)

    def stats(self) -> dict:
        return {"open": self.open, "accepted": self.accepted, "idle_closed": self.idle_closed,
                "requests": dict(self.requests), "refused": dict(self.refused)}

    # ------------------------------------------------------------------ refusals

    def refusal(self, scope: dict, status: int, reason: str, why: str,
                headers: dict[str, str] | None = None) -> Response:
        """Count a refusal of a request and build its answer (which closes the connection)."""
        self._refuse(reason, _peer(scope), why)
        scope["mm.close"] = True
        body = orjson.dumps({"error": why[:200], "code": reason})
        return Response(body, status, headers=headers, media_type="application/json")

    def _refuse_connection(self, reason: str, peer: str) -> None:
        reason = _REASON.get(reason, reason)
        if reason == "full":
            self.listener.requests[503] += 1
        self._refuse(reason, peer, {"full": f"{self.open} connections open",
                                    "idle_timeout": "request not complete in time",
                                    "bad_request": "not a valid HTTP/1.1 request"}
                     .get(reason, reason))

    def _refuse(self, reason: str, peer: str, why: str) -> None:
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._last_log.get(reason, 0.0) >= 10.0:
            self._last_log[reason] = now
            log.warning("pre-trade listener: refused (%s, %d so far; latest from %s): %s",
                        reason, self.refused[reason], peer.rsplit(":", 1)[0], why)


def _peer(scope: dict) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


# ---------------------------------------------------------------------- metrics


class PretradeCollector:
    """The pre-trade service's and listener's counts as Prometheus metrics."""

    def __init__(self, service, listener: PretradeListener | None = None):
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
                                  "pre-trade listener, by status", labels=["status"])
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


async def start_listener(cfg, service, server: AlertServer,
                         registry) -> PretradeListener | None:
    """The listener of ``cfg.pretrade_listen`` (None when unset), started, serving ``server``'s
    application; its counts and the service's registered on ``registry`` either way."""
    listener = None
    if cfg.pretrade_listen:
        host, port = cfg.pretrade_host_port
        listener = PretradeListener(server, host, port,
                                    max_connections=cfg.pretrade_max_connections,
                                    idle_timeout_s=cfg.pretrade_idle_timeout_s,
                                    ssl=cfg.ssl_context())
        await listener.start()
    registry.register(PretradeCollector(service, listener))
    return listener


def check_config(cfg) -> None:
    """Raise ConfigError for unusable edge or pre-trade listener settings (before anything
    starts)."""
    from monitor.errors import ConfigError

    Limits(max_tcp_connections=cfg.max_tcp_connections,
           max_connections_per_client=cfg.max_connections_per_client,
           head_timeout_s=cfg.head_timeout_s, keep_alive_s=cfg.keep_alive_s,
           max_body_bytes=cfg.max_body_bytes).check()
    if cfg.pretrade_listen:
        cfg.pretrade_host_port  # noqa: B018 - validates HOST:PORT
    n, t = cfg.pretrade_max_connections, cfg.pretrade_idle_timeout_s
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        raise ConfigError(f"pretrade_max_connections: a whole number from 1 to 100000, got {n!r}")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 86_400:
        raise ConfigError(f"pretrade_idle_timeout_s: seconds in (0, 86400], got {t!r}")
