"""Prometheus metrics of one monitor run (own registry, served at /metrics).

Two kinds: instruments the runtime updates as things happen (ticks accepted, events, cycles,
cycle time, tick-to-event latency, feed lag, the end of the last cycle), and everything else read
from the running monitor when /metrics is scraped (`StateCollector`: feed and account-event
source state, rejects by reason, the summary's figures, the outbox, websocket clients,
snapshots, audit, trading patterns, health). Conventions: counters end in `_total`, every
labelled series with a known label set is there from 0 (no series appears only after its first
event), states are one gauge per state set to 1 for the current one (`mm_feed_state{state}`),
times are Unix seconds (`_timestamp_seconds`), money is in yuan (`_yuan`).
The reference table is in docs/running.md ("Health and metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from feeds.status import ERROR_KINDS
from feeds.ticks import REASONS as TICK_REASONS
from kernels.units import TIER_NAMES as TIERS
from monitor.core.account_events import REASONS as REFUSAL_REASONS

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

FEED_STATES = ("waiting", "live", "stale", "reconnecting", "error", "done")
EVENT_SOURCE_STATES = ("none", "waiting", "live", "reconnecting", "error", "done")
EVENT_KINDS = ("TIER_CHANGE", "CALL_ISSUED", "CALL_CURED", "CALL_EXPIRED", "CONTRACT_DUE",
               "CONTRACT_EXPIRED", "TRADING_PATTERN",
               "CREDIT_LINE", "CONCENTRATION", "FINANCING_HALT")
CYCLE_PATHS = ("incremental", "sweep", "reach", "none")
# the reasons monitor/core/account_events.py refuses an event with, and `undecodable` (not JSON,
# or too long, counted by the source); a reason not listed here still gets its series when seen
ACCOUNT_EVENT_REASONS = ("undecodable", *REFUSAL_REASONS)
PATTERN_RULES = ("round_trips", "thin_turnover", "limit_trades")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ticks = Counter("mm_ticks_accepted", "Ticks accepted by the feed guard", registry=r)
        self.events = Counter("mm_events", "Events emitted, by kind", ["kind"], registry=r)
        for k in EVENT_KINDS:
            self.events.labels(k)
        self.cycles = Counter("mm_cycles", "Engine cycles, by path (none: no tick, only call "
                              "deadlines and credit slices)", ["path"], registry=r)
        for p in CYCLE_PATHS:
            self.cycles.labels(p)
        self.cycle_seconds = Histogram("mm_cycle_seconds", "Engine cycle time",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.tick_to_event = Histogram(
            "mm_tick_to_event_seconds",
            "Oldest tick of a cycle received -> its events handed to the outputs",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.feed_lag = Gauge("mm_feed_lag_seconds", "Receive time minus exchange time of the "
                              "newest tick of the last batch", registry=r)
        self.last_cycle_end = Gauge("mm_last_cycle_end_timestamp_seconds",
                                    "When the last engine cycle ended (Unix time)", registry=r)
        self.collector: StateCollector | None = None

    def watch(self, view: Callable[[], Mapping]) -> None:
        """Export the monitor's state read through `view()` at every scrape (see
        `StateCollector` for what it returns)."""
        self.collector = StateCollector(view)
        self.registry.register(self.collector)


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value or 0))


def _counter(name: str, doc: str, value: float | None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value or 0))


def _labelled(cls, name: str, doc: str, label: str, known: Iterable[str],
              values: Mapping[str, float] | None) -> Metric:
    m = cls(name, doc, labels=[label])
    values = dict(values or {})
    for k in [*known, *sorted(set(values) - set(known))]:
        m.add_metric([k], float(values.get(k, 0) or 0))
    return m


def _states(name: str, doc: str, states: tuple[str, ...], current: str) -> GaugeMetricFamily:
    m = GaugeMetricFamily(name, doc, labels=["state"])
    for s in states:
        m.add_metric([s], 1.0 if s == current else 0.0)
    return m


class StateCollector:
    """Reads `view()` at each scrape: a dict with `summary` (`Monitor.summary()`, which
    carries `health`) and `feed_kind`."""

    def __init__(self, view: Callable[[], Mapping]):
        self.view = view

    def describe(self):  # no describe-time collection (the view is live)
        return []

    def collect(self):
        v = self.view()
        s = v["summary"]
        yield from self._feed(s["feed"], v.get("feed_kind", ""))
        yield from self._events(s.get("account_events"), s.get("account_events_rejected", {}),
                                s.get("account_events_applied", 0))
        yield _counter("mm_account_events_other_shard", "Account events for another shard's "
                       "accounts, skipped (0 without shards)", s.get("account_events_other_shard"))
        sh = s.get("shard")
        shard = GaugeMetricFamily("mm_shard_info", "The shard this monitor runs: index and "
                                  "count (0/1 without shards)", labels=["shard", "shards"])
        shard.add_metric([str(sh["index"]) if sh else "0", str(sh["count"]) if sh else "1"], 1.0)
        yield shard
        yield from self._engine(s)
        yield from self._outbox(s.get("outbox"))
        yield from self._others(s)
        h = s.get("health") or {}
        yield _gauge("mm_healthy", "1 when /healthz answers 200, 0 when 503 (its `reasons` "
                     "say why)", 1 if h.get("ok", True) else 0)
        yield _gauge("mm_cycle_pending_seconds", "How long ticks or account events have waited "
                     "for a cycle (0: nothing waits)", s.get("pending_s"))

    def _feed(self, f: Mapping, kind: str):
        info = GaugeMetricFamily("mm_feed_info", "The tick feed (kind synthetic: simulated "
                                 "prices, not market data)", labels=["name", "kind"])
        info.add_metric([str(f.get("name", "")), kind], 1.0)
        yield info
        yield _states("mm_feed_state", "Tick feed state: 1 for the current one", FEED_STATES,
                      f.get("state", ""))
        yield _gauge("mm_feed_not_live_seconds", "Seconds the tick feed has not been live "
                     "(0 while live or done)", f.get("not_live_s"))
        yield _labelled(CounterMetricFamily, "mm_ticks_rejected", "Ticks rejected by the feed "
                        "guard, by reason", "reason", TICK_REASONS, f.get("rejected"))
        yield _counter("mm_ticks_received", "Ticks that reached the feed guard",
                       f.get("ticks_received"))
        yield _counter("mm_feed_messages", "Feed messages received", f.get("messages"))
        yield _counter("mm_feed_reconnects", "Successful feed re-connections",
                       f.get("reconnects"))
        yield _labelled(CounterMetricFamily, "mm_feed_errors", "Feed read errors (each one "
                        "retried), by kind", "kind", ERROR_KINDS, f.get("errors"))
        last = f.get("last_message_ns") or 0
        yield _gauge("mm_feed_last_message_timestamp_seconds", "When the last feed message "
                     "arrived (Unix time; 0: none yet)", last / 1e9)
        yield _gauge("mm_feed_stale_symbols", "Securities without a tick for over 60 s",
                     f.get("stale_symbols_60s"))

    def _events(self, e: Mapping | None, rejected: Mapping, applied: int):
        yield _states("mm_account_events_state", "Account-event source state: 1 for the "
                      "current one (none: no source configured)", EVENT_SOURCE_STATES,
                      e["state"] if e else "none")
        yield _gauge("mm_account_events_not_live_seconds", "Seconds the account-event source "
                     "has not been live (0 while live, done or none)",
                     e.get("not_live_s") if e else 0)
        rej = dict(rejected)
        if e:
            rej["undecodable"] = rej.get("undecodable", 0) + (e.get("malformed") or 0)
        yield _labelled(CounterMetricFamily, "mm_account_events_rejected", "Account events "
                        "refused, by reason", "reason", ACCOUNT_EVENT_REASONS, rej)
        yield _counter("mm_account_events_applied", "Account events applied", applied)
        yield _counter("mm_account_events_received", "Account events read from the source",
                       e.get("received") if e else 0)
        yield _labelled(CounterMetricFamily, "mm_account_events_errors", "Account-event source "
                        "read errors (each one retried), by kind", "kind", ERROR_KINDS,
                        e.get("errors") if e else {})
        yield _gauge("mm_account_events_queued", "Account events read, waiting to be applied",
                     e.get("queued") if e else 0)

    def _engine(self, s: Mapping):
        yield _labelled(GaugeMetricFamily, "mm_accounts", "Accounts by reported tier", "tier",
                        TIERS, s.get("tiers"))
        yield _labelled(GaugeMetricFamily, "mm_debt_yuan", "Liabilities of the accounts in "
                        "each reported tier (yuan)", "tier", TIERS, s.get("debt"))
        yield _gauge("mm_book_accounts", "Accounts in the book", s.get("accounts"))
        yield _gauge("mm_open_calls", "Open margin calls", s.get("open_calls"))
        yield _gauge("mm_seq", "seq of the last event handed to the outputs", s.get("seq"))
        yield _counter("mm_sweeps", "Full sweeps (engine cycles that re-tiered every account)",
                       s.get("sweeps"))
        yield _gauge("mm_pending_symbols", "Securities with a tick waiting for the next cycle",
                     s.get("pending_symbols"))
        c = s.get("last_cycle") or {}
        yield _gauge("mm_last_cycle_ticks", "Ticks applied by the last cycle", c.get("ticks"))
        yield _gauge("mm_last_cycle_symbols", "Securities moved by the last cycle",
                     c.get("symbols"))
        yield _gauge("mm_last_cycle_accounts_touched", "Accounts evaluated by the last cycle",
                     c.get("touched"))
        yield _gauge("mm_last_cycle_events", "Events of the last cycle", c.get("events"))
        yield _gauge("mm_last_cycle_duration_seconds", "Duration of the last cycle",
                     (c.get("ms") or 0) / 1e3)

    def _outbox(self, o: Mapping | None):
        if o is None:  # no Redis configured: alerts go to the websocket only
            return
        yield _gauge("mm_outbox_connected", "1 while the alert outbox's Redis answers",
                     1 if o.get("connected") else 0)
        yield _gauge("mm_outbox_backlog", "Alert events not yet acknowledged by Redis",
                     o.get("backlog"))
        yield _gauge("mm_outbox_queued", "Alert events waiting in memory", o.get("queued"))
        yield _gauge("mm_outbox_spilled", "Alert events in the spill file", o.get("spilled"))
        yield _gauge("mm_outbox_oldest_queued_age_seconds", "Age of the oldest unacknowledged "
                     "alert event (0: none)", o.get("oldest_queued_age_s"))
        yield _counter("mm_outbox_published", "Alert events acknowledged by Redis",
                       o.get("published"))
        yield _counter("mm_outbox_failures", "Failed outbox deliveries (retried)",
                       o.get("failures"))
        yield _counter("mm_outbox_reconnects", "Outbox re-connections", o.get("reconnects"))
        yield _counter("mm_outbox_resent", "Alert events sent again after an unknown outcome",
                       o.get("resent"))
        yield _counter("mm_outbox_spill_errors", "Failed spill-file writes (retried)",
                       o.get("spill_errors"))

    def _others(self, s: Mapping):
        w = s.get("websocket")
        if w is not None:
            yield _gauge("mm_ws_clients", "Connected websocket clients", w.get("clients"))
            yield _gauge("mm_ws_queued", "Frames queued to websocket clients", w.get("queued"))
            yield _counter("mm_ws_connections", "Websocket connections accepted",
                           w.get("connections_total"))
            yield _counter("mm_ws_messages_sent", "Websocket frames sent",
                           w.get("messages_sent"))
        p = s.get("patterns") or {}
        yield _counter("mm_pattern_fills", "Fills seen by the trading-pattern watch",
                       p.get("fills"))
        yield _labelled(CounterMetricFamily, "mm_pattern_hits", "Trading-pattern hits, by "
                        "rule", "rule", PATTERN_RULES, p.get("hits"))
        yield _gauge("mm_pattern_tracked", "Keys the trading-pattern watch holds",
                     p.get("tracked"))
        yield _gauge("mm_pattern_state_bytes", "Bytes of trading-pattern evidence held "
                     "(capped by pattern_state_bytes)", p.get("bytes"))
        yield _counter("mm_pattern_dropped_fills", "Fills of evidence dropped, oldest first, "
                       "to stay under pattern_state_bytes", p.get("dropped_fills"))
        yield _counter("mm_pattern_dropped_entries", "Evidence entries (rule, account, "
                       "security) dropped to stay under pattern_state_bytes",
                       p.get("dropped_entries"))
        c = s.get("credit") or {}
        yield _gauge("mm_credit_state_bytes", "Bytes of the credit controls' per-account state "
                     "(capped by credit_state_bytes)", c.get("state_bytes"))
        yield _counter("mm_credit_state_dropped", "Over-cap records dropped, oldest first, to "
                       "stay under credit_state_bytes (re-announced when still over)",
                       c.get("dropped"))
        yield _counter("mm_credit_state_recounts", "Financing balances counted afresh to stay "
                       "under credit_state_bytes (nothing lost)", c.get("recounts"))
        sn = s.get("snapshot")
        if sn is not None:
            yield _counter("mm_snapshots_written", "State snapshots written", sn.get("written"))
            yield _counter("mm_snapshot_failures", "State snapshots that failed",
                           sn.get("failures"))
            yield _gauge("mm_snapshot_bytes", "Size of the last snapshot", sn.get("bytes"))
            yield _gauge("mm_snapshot_seq", "seq of the last snapshot", sn.get("seq"))
        a = s.get("audit")
        if a is not None:
            yield _counter("mm_audit_records", "Audit records made", a.get("records"))
            yield _counter("mm_audit_written", "Audit records written", a.get("written"))
            yield _gauge("mm_audit_queued", "Audit records waiting to be written",
                         a.get("queued"))
            yield _gauge("mm_audit_queued_bytes", "Bytes of audit records waiting to be "
                         "written (capped by audit_queue_bytes)", a.get("queued_bytes"))
            yield _counter("mm_audit_dropped", "Audit records dropped from the queue, oldest "
                           "first, past audit_queue_bytes (a gap line marks them in the file)",
                           a.get("dropped"))
            yield _counter("mm_audit_errors", "Audit write errors", a.get("errors"))
