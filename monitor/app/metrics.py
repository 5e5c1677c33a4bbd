"""Prometheus metrics of one monitor run (own registry, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.core.account_events import REASONS as ACCOUNT_EVENT_REASONS

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ticks = Counter("mm_ticks_accepted", "Ticks accepted by the feed guard", registry=r)
        self.rejected = Gauge("mm_ticks_rejected", "Ticks rejected, by reason", ["reason"],
                              registry=r)
        self.events = Counter("mm_events", "Events emitted, by kind", ["kind"], registry=r)
        self.cycles = Counter("mm_cycles", "Engine cycles, by path", ["path"], registry=r)
        self.cycle_seconds = Histogram("mm_cycle_seconds", "Engine cycle time",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.tick_to_event = Histogram(
            "mm_tick_to_event_seconds",
            "Oldest tick of a cycle received -> its events handed to the outputs",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.accounts = Gauge("mm_accounts", "Accounts by reported tier", ["tier"], registry=r)
        self.outbox_queued = Gauge("mm_outbox_queued", "Events waiting for Redis", registry=r)
        self.outbox_spilled = Gauge("mm_outbox_spilled", "Events spilled to disk", registry=r)
        self.ws_clients = Gauge("mm_ws_clients", "Connected websocket clients", registry=r)
        self.feed_lag = Gauge("mm_feed_lag_seconds", "Receive time minus exchange time of the "
                              "last tick", registry=r)
        self.account_events_rejected = Counter(
            "mm_account_events_rejected", "Account events rejected (and dead-lettered), by "
            "reason", ["reason"], registry=r)
        for reason in ACCOUNT_EVENT_REASONS:  # every known reason exported from 0
            self.account_events_rejected.labels(reason)
