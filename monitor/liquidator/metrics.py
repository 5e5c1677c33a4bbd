"""The liquidator's own /metrics (Prometheus), off by default: ``--metrics-listen HOST:PORT``
(config ``metrics_listen``) on a loopback address only, since it has no token; port 0 picks a
free port, which is logged. Served by prometheus_client's HTTP server in a thread; every figure
is read from the worker at the scrape (counters from ``Liquidator.stats``, the group's pending
entries, approvals and the kill switch as the worker last read them, at most 5 s ago).
The reference table is in docs/liquidation.md ("Metrics").
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from monitor.liquidator.config import parse_listen

log = logging.getLogger("monitor.liquidator")

# outcome of a handled entry (Liquidator.stats keys: "duplicates" is reported as "duplicate")
OUTCOMES = ("sent", "notified", "not_required", "restored_done", "dead_letter",
            "held_approval_required", "held_kill_switch", "held_stale_plan", "duplicate",
            "ignored")

# why an alert was refused (Liquidator.stats keys "refused_<reason>")
REFUSALS = ("unsigned", "bad_signature", "plan_mismatch")


class LiquidatorCollector:
    def __init__(self, worker):
        self.worker = worker

    def describe(self):
        return []

    def collect(self):
        w = self.worker
        st = dict(w.stats)  # one atomic copy (the worker's loop runs in another thread)
        g = dict(w.gauges)
        handled = CounterMetricFamily("mm_liquidator_handled", "Alert and approval entries "
                                      "handled, by outcome", labels=["outcome"])
        for o in OUTCOMES:
            handled.add_metric([o], float(st.get("duplicates" if o == "duplicate" else o, 0)))
        yield handled

        def counter(name, doc, key):
            return CounterMetricFamily(name, doc, value=float(st.get(key, 0)))

        def gauge(name, doc, value):
            return GaugeMetricFamily(name, doc, value=float(value or 0))

        refused = CounterMetricFamily("mm_liquidator_refused", "Alerts dead-lettered and never "
                                      "acted on, by reason (signature, plan re-check)",
                                      labels=["reason"])
        for reason in REFUSALS:
            refused.add_metric([reason], float(st.get(f"refused_{reason}", 0)))
        yield refused
        yield counter("mm_liquidator_confirmed", "Plans the monitor confirmed before sending",
                      "confirmed")
        yield counter("mm_liquidator_confirm_failures", "Failed plan re-check calls to the "
                      "monitor (each retried)", "confirm_failures")
        yield counter("mm_liquidator_orders_sent", "Orders handed to the hook successfully",
                      "orders")
        yield counter("mm_liquidator_dead_lettered", "Entries moved to the dead-letter stream",
                      "dead_letter")
        yield counter("mm_liquidator_retries", "Retries scheduled (hook, re-pricing, handling)",
                      "retries")
        yield counter("mm_liquidator_hook_failures", "Failed hook calls", "hook_failures")
        yield counter("mm_liquidator_reprice_failures", "Failed re-pricing calls",
                      "reprice_failures")
        yield counter("mm_liquidator_redis_errors", "Redis errors of the worker's loop (each "
                      "retried)", "redis_errors")
        yield counter("mm_liquidator_errors", "Entries whose handling failed and is retried",
                      "errors")
        yield counter("mm_liquidator_malformed", "Alert entries that are not a usable event",
                      "malformed")
        yield counter("mm_liquidator_reclaimed", "Entries reclaimed from an idle worker",
                      "reclaimed")
        yield counter("mm_liquidator_repriced", "Plans re-priced", "repriced")
        yield counter("mm_liquidator_rate_limited", "Waits for the orders-per-second limit",
                      "rate_limited")
        yield gauge("mm_liquidator_in_progress", "Entries being handled now", w.in_progress)
        yield gauge("mm_liquidator_waiting", "Entries held for later by this worker (retry "
                    "backoff, cool-down, busy lock)", w.waiting)
        pending = GaugeMetricFamily("mm_liquidator_pending", "Entries delivered to the group "
                                    "and not acknowledged (XPENDING), by stream",
                                    labels=["stream"])
        pending.add_metric(["alerts"], float(g.get("pending_alerts", 0)))
        pending.add_metric(["approved"], float(g.get("pending_approved", 0)))
        yield pending
        yield gauge("mm_liquidator_approvals_pending", "Plans in the approvals list",
                    g.get("approvals"))
        yield gauge("mm_liquidator_kill_switch", "1 while the kill switch is on",
                    g.get("kill_switch"))
        yield gauge("mm_liquidator_redis_up", "1 when the worker's last loop reached Redis",
                    1 if w.redis_up else 0)
        yield gauge("mm_liquidator_last_loop_timestamp_seconds", "When the worker's loop last "
                    "went round (Unix time; a hung worker stops moving it)",
                    w.last_loop_ns / 1e9)


class MetricsServer:
    """`start()` binds and serves in a thread; `bound` is (host, port); `close()` stops it."""

    def __init__(self, worker, listen: str):
        self.host, self.port = parse_listen(listen)
        self.registry = CollectorRegistry()
        self.registry.register(LiquidatorCollector(worker))
        self.bound: tuple[str, int] | None = None
        self._server = None
        self._thread = None

    def start(self) -> tuple[str, int]:
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(self.port, addr=self.host,
                                                       registry=self.registry)
        self.bound = self._server.server_address[:2]
        log.info("liquidator: metrics on http://%s:%d/metrics", *self.bound)
        return self.bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
