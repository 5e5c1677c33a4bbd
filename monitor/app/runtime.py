"""The running monitor: asyncio tasks around the sans-I/O engine.

    feed task      feed.batches() -> engine.add_ticks()            (conflates; cheap)
    cycle task     engine.cycle() -> outbox.publish(), server.broadcast()   (never awaits I/O)
    outbox task    Redis XADD pipelines, outage buffering and spill         (monitor/outbox.py)
    server         /ws/alerts, /healthz, /metrics, the risk desk (/ and /api/), POST
                   /api/pretrade: Starlette on uvicorn (monitor/web/server.py)
    heartbeat      summary every second to Redis and to websocket clients
    desk           indexes published events, samples ratio histories on the heartbeat,
                   answers the desk's queries on this loop (monitor/desk.py)

The cycle task hands events to the outputs by plain method calls that only enqueue, so neither a
Redis outage nor a slow websocket client can stall the tick path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from feeds.account_events import open_events
from feeds.net import Backoff, redact, url_secrets
from feeds.registry import feed_kind, open_feed
from monitor.adapters.audit import AuditLog
from monitor.adapters.deadletter import DeadLetters
from monitor.adapters.outbox import RedisOutbox, encode_event
from monitor.adapters.snapshot import Snapshots
from monitor.app.closures import ClosuresWatch, build_calendar
from monitor.app.config import RunConfig
from monitor.app.metrics import Metrics
from monitor.app.warmup import warm_up
from monitor.book.model import Book
from monitor.book.universe import universe_of
from monitor.core.account_events import AccountEventError
from monitor.core.credit import CreditConfig
from monitor.core.engine import Engine, EngineConfig
from monitor.core.patterns import PatternConfig
from monitor.core.pretrade import Holds, PretradeService
from monitor.core.state import MarginState
from monitor.desk.readmodel import Desk, FileAckStore, RedisAckStore
from monitor.errors import ConfigError
from monitor.liquidator.control import LiquidationControl
from monitor.web import STATIC_DIR
from monitor.web.pretrade import start_listener
from monitor.web.server import AlertServer

log = logging.getLogger("monitor")



def _not_live_s(state: str, since: int, now: int) -> float:
    return 0.0 if state in ("live", "done", "none") else max(0.0, (now - since) / 1e9)


def _capped(config, state_bytes: int):
    """A credit or pattern config with its byte cap (a top-level setting of the run config)."""
    config.state_bytes = state_bytes
    return config


class Monitor:
    def __init__(self, cfg: RunConfig, book: Book, *, redis_url: str | None = None,
                 outbox_factory: Callable[..., RedisOutbox] = RedisOutbox):
        """`outbox_factory` builds the alert outbox (RedisOutbox's arguments); a benchmark
        passes an instrumented subclass."""
        self.cfg = cfg
        self.outbox_factory = outbox_factory
        self.book = book
        self.metrics = Metrics()
        self.state = MarginState(book, live=True, unlimited_shock_bp=cfg.no_limit_shock_bp)
        # a tape (replay, synthetic) runs on its own time only; a live feed's silence lets the
        # receive time move the engine's clock on (the heartbeat)
        self.tape = cfg.feed.startswith(("replay:", "synthetic"))
        self.closures = ClosuresWatch(cfg)  # closures_file re-read when it changes
        self.engine = Engine(self.state, EngineConfig(
            hysteresis_bp=cfg.hysteresis_bp, sweep_share=cfg.sweep_share, reach=cfg.reach_mode,
            call_days=cfg.call_days, contract_due_days=cfg.contract_due,
            calendar=build_calendar(cfg),
            close_settle_s=cfg.close_settle_s, clock="tape" if self.tape else "ticks",
            max_skew_ns=cfg.max_tick_skew_ns,
            shard=cfg.shard_spec.index if cfg.shard_spec is not None else None),
            credit=_capped(CreditConfig.from_dict(cfg.credit),  # [credit] table
                           cfg.byte_cap("credit_state_bytes")),
            patterns=_capped(PatternConfig.from_dict(cfg.patterns),  # [patterns] table
                             cfg.byte_cap("pattern_state_bytes")))
        # the tick guard's bands follow each tick's trading date (kernels/bands.py)
        self.universe = universe_of(book, self.state.bands_for, self.state.bands.day)
        if not cfg.feed:
            raise ConfigError("no feed: give --feed SPEC or `feed` in the config file "
                              "(synthetic[:scenario] for simulated prices, replay:PATH, ws://…, "
                              "redis://…/STREAM)")
        self.feed = open_feed(cfg.feed, self.universe, **(
            {"cluster": True} if cfg.redis_cluster and cfg.feed.startswith("redis") else {}))
        self.feed_kind = feed_kind(cfg.feed)
        self.shard = cfg.shard_spec  # None: the whole book
        self.other_shard_events = 0  # account events for another shard's accounts (skipped)
        events = cfg.events_resolved
        self.event_source = open_events(events, cluster=cfg.redis_cluster) if events else None
        self._account_events: deque = deque()  # applied in order before the next tick cycle
        self.dead_letters = self._dead_letters(cfg)  # rejected account events, per reason
        self.event_rejects: Counter = self.dead_letters.counts
        self._events_done = self.event_source is None
        self.redis_url = redis_url if redis_url is not None else cfg.redis
        self.outbox = None
        self.server = None
        self.bound: tuple[str, int] | None = None
        self._wake = asyncio.Event()
        self._feed_done = False
        self._oldest_recv_ns = 0
        # liveness (health() and /metrics): when the sources started, a source's failure that
        # ended its loop (time, redacted message), when ticks or account events began to wait
        # for a cycle, when the last cycle ended
        self._sources_started_ns = 0
        self._feed_failure: tuple[int, str, str] | None = None
        self._pending_since_ns = 0
        self._last_cycle_end_ns = 0
        self._secrets = url_secrets(cfg.feed) + url_secrets(events or "")
        self.metrics.watch(lambda: {"summary": self.summary(), "feed_kind": self.feed_kind})
        self._stopping = asyncio.Event()
        self.events_emitted = 0
        self.heartbeat_errors = 0  # failed heartbeats (logged; the loop goes on)
        self.desk = Desk(self.engine, summary=self.summary, event_bytes=cfg.desk_event_budget)
        self.snapshots = (Snapshots(self, cfg.state_dir, cfg.snapshot_interval_s)
                          if cfg.state_dir else None)
        self.audit: AuditLog | None = None  # created by run() when cfg.audit_dir is set
        # POST /api/pretrade on both ports; "reserve": true holds margin until the fill
        self.pretrade = PretradeService(self.engine, Holds(ttl_s=cfg.pretrade_hold_s))
        self.pretrade_listener = None  # keep-alive listener (cfg.pretrade_listen)
        self.control = None  # the liquidator's LiquidationControl, when there is a Redis

    # ------------------------------------------------------------------ tasks
    async def _events_loop(self) -> None:
        src = self.event_source
        backoff = Backoff()
        try:
            while not src.closed:
                try:  # the sources retry their own read errors; this is the last line
                    async for evs in src.batches():
                        if not self._pending_since_ns:
                            self._pending_since_ns = time.time_ns()
                        self._account_events.extend(evs)
                        self._wake.set()
                        await asyncio.sleep(0)
                        backoff.reset()
                    break  # a finite source (a file) ended
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - retried, counted, in health
                    src.status.failed(exc, "other", backoff.peek())
                    await asyncio.sleep(backoff.next())
        finally:
            self._events_done = True
            self._wake.set()

    def _dead_letters(self, cfg: RunConfig) -> DeadLetters:
        """Where rejected account events go: `<stream>:dead` beside a Redis event stream, else
        a JSONL file in the spill dir (monitor/adapters/deadletter.py)."""
        src, reader = self.event_source, getattr(self.event_source, "reader", None)
        dl = DeadLetters(redis_url=getattr(reader, "url", None),
                         stream=f"{reader.stream}:dead" if reader is not None else None,
                         spill_dir=cfg.spill_dir, cluster=cfg.redis_cluster)
        if src is not None:  # undecodable messages are dead-lettered too
            src.on_reject = lambda reason, raw, why: dl.reject(reason, why, raw, src.name)
        parser = getattr(self.feed, "parser", None)
        if parser is not None:
            parser.max_skew_ns = cfg.max_tick_skew_ns  # ticks ahead of the clock: future_ts
        return dl

    def apply_account_events(self) -> None:
        """Apply what is queued, one event at a time: a refused event, or one that fails in
        any way, is dead-lettered and the next one goes on (never raises)."""
        q = self._account_events
        src = getattr(self.event_source, "name", "")
        while q:
            ev = q.popleft()
            if self.shard is not None and not self._ours(ev):
                self.other_shard_events += 1  # another shard applies it
                continue
            if isinstance(ev, dict) and "hold_id" in ev:  # the fill of a reserved check: its
                self.pretrade.holds.release(ev["hold_id"])  # hold ends, applied or refused
            try:
                self.desk.before_account_event(ev)
                now = time.time_ns()
                self.publish(self.engine.apply_account_event(ev, now))
                skipped = self.engine.account_events.skipped
                if self.audit is not None and ev.get("type") == "fill":
                    self.audit.record_fill(ev, now)  # statements: executed liquidations
            except AccountEventError as e:
                self.dead_letters.reject(e.reason, str(e), ev, src)
                continue
            except Exception as e:  # noqa: BLE001 - one event must never stop the monitor
                self.dead_letters.internal(e, ev, src)
                continue
            ids = self.book.account_ids
            for a, reason, why in skipped:  # a book-wide accrual left these accounts out
                self.dead_letters.reject(reason, f"account {ids[a]}: {why}",
                                         {**ev, "account_id": ids[a]}, src)

    def _ours(self, ev: Any) -> bool:
        """An account event for one of this shard's accounts, or for every account (no
        ``account_id``: accruals, haircuts, suspensions). Anything else malformed is applied,
        so that the engine refuses it with its reason."""
        aid = ev.get("account_id") if isinstance(ev, dict) else None
        return not isinstance(aid, str) or self.shard.owns(aid)

    async def _feed_loop(self) -> None:
        live_feed = self.feed_kind in ("websocket", "redis")
        try:
            async for batch in self.feed.batches():
                if batch.events:  # scenario events (suspensions) travel with the ticks
                    self._account_events.extend(batch.events)
                    self._wake.set()
                if len(batch):
                    if self._oldest_recv_ns == 0:
                        self._oldest_recv_ns = batch.recv_ns
                    if not self._pending_since_ns:
                        self._pending_since_ns = time.time_ns()
                    self.engine.add_ticks(batch.sec, batch.price, batch.ts)
                    self.metrics.ticks.inc(len(batch))
                    if live_feed:  # replayed and simulated ticks carry their own clock
                        self.metrics.feed_lag.set((batch.recv_ns - int(batch.ts.max())) / 1e9)
                    self._wake.set()
                await asyncio.sleep(0)  # let the cycle and output tasks run
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the adapters retry their own read errors: this is a bug,
            # and the feed cannot be resumed; health says so (state `error`) until a restart
            msg = redact(f"{type(exc).__name__}: {exc}", self._secrets)[:500]
            self._feed_failure = (time.time_ns(), msg, type(exc).__name__)
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.error("feed %s failed and stopped: %s\n%s", self.feed.name, msg,
                      redact(tb, self._secrets))
        finally:
            self._feed_done = True
            self._wake.set()

    def publish(self, events: list[dict]) -> None:
        if not events:
            return
        self.desk.enrich(events)  # previous_ratio, before the one encoding
        self.events_emitted += len(events)
        if self.outbox is not None:
            encoded = self.outbox.publish(events)  # encoded once, shared with the websocket
        else:
            encoded = [encode_event(e) for e in events]
        if self.server is not None:
            self.server.broadcast(events, encoded=encoded)
        if self.audit is not None:  # the state behind each event, captured now
            self.audit.record(events, encoded)
        self.desk.record(events, encoded)
        for e in events:
            self.metrics.events.labels(e["kind"]).inc()

    async def _cycle_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._account_events:
                self.apply_account_events()
            if self.engine.pending:
                oldest = self._oldest_recv_ns
                self._oldest_recv_ns = 0
                self.desk.before_cycle()
                events = self.engine.cycle(time.time_ns())
                self.publish(events)
                if oldest:
                    self.metrics.tick_to_event.observe((time.time_ns() - oldest) / 1e9)
            else:
                self.publish(self.engine.cycle(time.time_ns()))  # deadlines of open calls
            self._cycle_ended()
            if self.snapshots is not None and self.snapshots.due():
                self.snapshots.take()  # between cycles: no tick or account event is queued
            if self._feed_done and self._events_done and not self.engine.pending \
                    and not self._account_events:
                self.publish(self.engine.finish_tape(time.time_ns()))  # a tape of no tick
                return
            await asyncio.sleep(0)

    def _cycle_ended(self) -> None:
        c = self.engine.last_cycle
        self.metrics.cycles.labels(c.path).inc()
        self.metrics.cycle_seconds.observe(c.ns / 1e9)
        self._last_cycle_end_ns = now = time.time_ns()
        self.metrics.last_cycle_end.set(now / 1e9)
        if not (self.engine.pending or self._account_events):
            self._pending_since_ns = 0

    async def _heartbeat_loop(self) -> None:
        beats = 0
        last_ticks = 0
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            try:
                self._wake.set()  # lets call deadlines expire even with a silent feed
                now = time.time_ns()
                if not self.tape and self._feed_view(now, self.feed.stats())[0] != "live":
                    self.engine.advance_clock(now)  # no ticks: the receive time runs the clock
                cal = self.closures.poll()
                if cal is not None:
                    self.publish(self.engine.set_calendar(cal, now))
                self.desk.sample()
                if self.audit is not None:
                    self.audit.sample()
                s = self.summary()
                beats += 1
                if beats % 5 == 0:  # a console pulse for whoever runs it by hand
                    t = s["tiers"]
                    ticks = s["feed"]["ticks_accepted"]
                    log.info("FL %d  MC %d  WARN %d | %.0f ticks/s, %d rejected | last cycle "
                             "%.1f ms (%s) | %d events", t["FORCED_LIQUIDATION"], t["MARGIN_CALL"],
                             t["WARNING"], (ticks - last_ticks) / (5 * self.cfg.heartbeat_s),
                             sum(s["feed"]["rejected"].values()), s["last_cycle"]["ms"],
                             s["last_cycle"]["path"], self.events_emitted)
                    last_ticks = ticks
                if self.outbox is not None:
                    self.outbox.publish_summary(s)
                if self.server is not None:
                    self.server.broadcast_summary(s)
            except Exception:  # noqa: BLE001 - the heartbeat must outlive any one bug
                self.heartbeat_errors += 1
                if self.heartbeat_errors <= 3 or self.heartbeat_errors % 1000 == 0:
                    log.exception("heartbeat failed (%d so far); it goes on",
                                  self.heartbeat_errors)


    def summary(self) -> dict:
        now = time.time_ns()
        s = self.engine.summary(now)
        fs = self.feed.stats()
        feed = self._feed_view(now, fs)
        feed_state, feed_since, feed_error = feed[:3]
        s["feed"] = fs.as_dict()
        s["feed"]["lag_s"] = ((now - fs.last_message_ns) / 1e9) if fs.last_message_ns else None
        s["feed"]["done"] = self._feed_done
        s["feed"]["state"] = feed_state
        s["feed"]["not_live_s"] = _not_live_s(feed_state, feed_since, now)
        s["feed"]["error"] = feed_error
        st = getattr(self.feed, "status", None)
        s["feed"]["errors"] = dict(st.errors) if st is not None else {}
        s["feed"]["simulated"] = self.feed_kind == "synthetic"
        stale = fs.staleness_s(now)
        s["feed"]["stale_symbols_60s"] = int(np.sum(~np.isnan(stale) & (stale > 60)))
        if self.event_source is not None:
            ev_state, ev_since, ev_error, _ = self._events_view(now)
            s["account_events"] = {**self.event_source.stats(),
                                   "applied": self.engine.account_events.applied,
                                   "rejected": dict(self.event_rejects),
                                   "dead_letters": self.dead_letters.stats(),
                                   "state": ev_state, "error": ev_error,
                                   "not_live_s": _not_live_s(ev_state, ev_since, now),
                                   "queued": len(self._account_events)}
        s["account_events_applied"] = self.engine.account_events.applied
        s["account_events_other_shard"] = self.other_shard_events
        s["shard"] = ({"index": self.shard.index, "count": self.shard.count}
                      if self.shard is not None else None)
        s["account_events_rejected"] = dict(self.event_rejects)
        s["pending_symbols"] = self.engine.pending
        s["pending_s"] = (now - self._pending_since_ns) / 1e9 if self._pending_since_ns else 0.0
        s["last_cycle"]["ended_ns"] = self._last_cycle_end_ns
        if self.outbox is not None:
            os_ = self.outbox.stats()
            s["outbox"] = {k: os_[k] for k in (
                "queued", "spilled", "backlog", "in_flight", "published", "connected",
                "failures", "reconnects", "resent", "spill_errors", "oldest_queued_age_s",
                "last_error")}
        s["pretrade_holds"] = self.pretrade.holds.stats()
        s["patterns"] = self.engine.patterns.stats()
        s["credit"] = self.engine.credit.stats()
        if self.snapshots is not None:
            s["snapshot"] = self.snapshots.stats()
        if self.audit is not None:
            s["audit"] = self.audit.stats()
        if self.server is not None:
            s["websocket"] = self.server.stats()
        reasons = self._unhealthy(now, feed)
        s["health"] = {"ok": not reasons, "reasons": reasons}
        return s

    def health(self, now_ns: int | None = None) -> dict:
        """/healthz: `ok` false (HTTP 503) with `reasons` when the tick feed or the account-event
        source has not been live for longer than `source_grace_s`, or ticks or account events
        have waited longer than `cycle_stall_s` for a cycle; the states and the figures behind
        them either way. `now_ns` is for tests."""
        now = time.time_ns() if now_ns is None else now_ns
        fs = self.feed.stats()
        feed = self._feed_view(now, fs)
        ev = (self._events_view(now) if self.event_source is not None
              else ("none", now, None, None))
        reasons = self._unhealthy(now, feed)
        out = {"ok": not reasons, "reasons": reasons, "run_id": self.engine.run_id,
               "seq": self.engine.seq, "cycles": self.engine.cycles,
               "feed_age_s": (now - fs.last_message_ns) / 1e9 if fs.last_message_ns else None,
               "feed_done": self._feed_done, "feed_state": feed[0], "feed_error": feed[3],
               "feed_simulated": self.feed_kind == "synthetic",
               "events_state": ev[0], "events_error": ev[3],
               "last_cycle_age_s": ((now - self._last_cycle_end_ns) / 1e9
                                    if self._last_cycle_end_ns else None),
               "pending_symbols": self.engine.pending,
               "pending_account_events": len(self._account_events)}
        if self.outbox is not None:
            os_ = self.outbox.stats()
            out["outbox_connected"] = os_["connected"]
            out["outbox_backlog"] = os_["backlog"]
        out.update(self.engine.calendar_health())  # calendar_ok, calendar_reason, market, ...
        return out

    def _unhealthy(self, now: int, feed: tuple) -> list[str]:
        """Why health() is not ok ([] when it is); no host, URL or key in it: /healthz is open.
        The full (redacted) errors are in the summary and the log."""
        cfg = self.cfg
        bad = {"waiting", "reconnecting", "error"}
        reasons = []
        st = getattr(self.feed, "status", None)
        connected = st is None or st.state == "live"
        # idle (connected, no tick for a while, or none yet): unhealthy unless configured not
        if cfg.stale_feed_unhealthy:
            feed_bad = bad | {"stale"}
        else:
            feed_bad = {"reconnecting", "error"} | (set() if connected else {"waiting"})
        sources = [("feed", feed, feed_bad)]
        if self.event_source is not None:
            sources.append(("account events", self._events_view(now), bad))
        for what, (state, since, _, brief), unhealthy in sources:
            down = (now - since) / 1e9
            if state in unhealthy and down > cfg.source_grace_s:
                why = f"{what} {state} for {down:.0f}s"
                if state in ("reconnecting", "error") and brief:
                    why += f": {brief}"
                elif state == "stale":
                    why += f" (no tick for {down + cfg.stale_feed_s:.0f}s)"
                reasons.append(why)
        if self._pending_since_ns:
            waited = (now - self._pending_since_ns) / 1e9
            if waited > cfg.cycle_stall_s:
                last = ((now - self._last_cycle_end_ns) / 1e9 if self._last_cycle_end_ns
                        else None)
                reasons.append(
                    f"cycle stalled: {self.engine.pending} securities and "
                    f"{len(self._account_events)} account events waiting for {waited:.0f}s; "
                    + (f"the last cycle ended {last:.0f}s ago" if last is not None
                       else "no cycle has run yet"))
        return reasons

    def _feed_view(self, now: int, fs) -> tuple[str, int, str | None, str | None]:
        """(state, since when, last error, its brief form) of the tick feed. States: live |
        waiting (nothing received yet, or not connected yet) | stale (no message for
        `stale_feed_s`: prices are old, nothing is re-tiered on them) | reconnecting (a
        connection error; retrying) | error (another error: WRONGTYPE, NOPERM...; retrying, or
        the feed failed for good) | done (a finite feed ended)."""
        if self._feed_failure is not None:
            return "error", *self._feed_failure
        if self._feed_done:
            return "done", now, None, None
        start = self._sources_started_ns or now
        st = getattr(self.feed, "status", None)
        if st is not None and st.state in ("waiting", "reconnecting", "error"):
            return (st.state, max(st.down_since_ns or start, start), st.last_error,
                    st.last_error_brief)
        if not fs.last_message_ns:
            return "waiting", start, None, None
        stale_at = fs.last_message_ns + int(self.cfg.stale_feed_s * 1e9)
        if now > stale_at:
            return "stale", max(stale_at, start), None, None
        return "live", now, None, None

    def _events_view(self, now: int) -> tuple[str, int, str | None, str | None]:
        """(state, since when, last error, its brief form) of the account-event source: live
        (connected or reading; idle is fine) | waiting | reconnecting | error | done (a file
        read to its end)."""
        st = self.event_source.status
        if self._events_done and st.state == "live":
            return "done", now, None, None
        start = self._sources_started_ns or now
        if st.state in ("waiting", "reconnecting", "error"):
            return (st.state, max(st.down_since_ns or start, start), st.last_error,
                    st.last_error_brief)
        return st.state, now, None, None

    # ------------------------------------------------------------------ life cycle
    async def run(self) -> int:
        log.info("warming up kernels")
        t0 = time.perf_counter()
        warm_up()
        log.info("kernels ready in %.2fs", time.perf_counter() - t0)
        tokens = self.cfg.resolve_tokens()
        if self.redis_url:
            keys = self.cfg.alert_keys()  # None: unsigned (docs/security.md)
            stream = self.cfg.alerts_stream_resolved
            self.outbox = self.outbox_factory(
                self.redis_url, stream=stream,
                maxlen=self.cfg.alerts_maxlen, summary_key=self.cfg.summary_key_resolved,
                summary_ttl=self.cfg.summary_ttl_resolved, spill_dir=self.cfg.spill_dir,
                cluster=self.cfg.redis_cluster, signer=keys)
            if keys is not None:
                log.info("alerts on %s are signed (HMAC-SHA256, key id %s)", stream,
                         keys.signing)
            else:
                log.warning("alerts on %s are NOT signed (no alert_key_file): a liquidator "
                            "that checks signatures refuses them", stream)
        self.desk.store = (RedisAckStore(self.redis_url, cluster=self.cfg.redis_cluster)
                           if self.redis_url
                           else FileAckStore(Path(self.cfg.spill_dir) / "desk-acks.json"))
        acks_loaded = await self.desk.load_acks()
        host, port = self.cfg.host_port
        control_redis = self.cfg.liquidator_redis or self.redis_url
        if control_redis:  # the liquidator's approvals and kill switch, over HTTP
            self.control = LiquidationControl(control_redis,
                                              key_prefix=self.cfg.liquidator_key_prefix,
                                              cluster=self.cfg.redis_cluster)
        self.server = AlertServer(host=host, port=port, tokens=tokens, control=self.control,
                                  snapshot=lambda: self.engine.open_breaches(time.time_ns()),
                                  health=self.health, registry=self.metrics.registry,
                                  max_connections=self.cfg.max_connections,
                                  client_queue=self.cfg.ws_client_queue,
                                  static_dir=STATIC_DIR, api=self.desk.api, rpc=self.desk.rpc,
                                  ssl=self.cfg.ssl_context(),
                                  post=self.pretrade.http,  # /api/pretrade
                                  max_tcp_connections=self.cfg.max_tcp_connections,
                                  max_connections_per_client=self.cfg.max_connections_per_client,
                                  open_timeout=self.cfg.head_timeout_s,
                                  keep_alive_s=self.cfg.keep_alive_s,
                                  max_body_bytes=self.cfg.max_body_bytes)
        self.desk.notify = self.server.broadcast_notice
        self.bound = await self.server.start()
        self.pretrade_listener = await start_listener(self.cfg, self.pretrade, self.server,
                                                      self.metrics.registry)
        log.info("alerts on ws://%s:%d/ws/alerts (risk desk http://%s:%d/, health /healthz, "
                 "metrics /metrics)", *self.bound, *self.bound)
        tasks = []
        if not acks_loaded:
            tasks.append(asyncio.create_task(self._load_acks_loop(), name="desk-acks"))
        if self.outbox is not None:
            tasks.append(asyncio.create_task(self.outbox.run(), name="outbox"))
        tasks.append(asyncio.create_task(self.dead_letters.run(), name="dead-letters"))
        if self.cfg.audit_dir:
            self.audit = AuditLog(self.engine, self.cfg.audit_dir,
                                  max_bytes=self.cfg.byte_cap("audit_queue_bytes"))
        restored = await self.snapshots.restore() if self.snapshots is not None else None
        self.publish(self.engine.start(time.time_ns()) if restored is None else restored)
        gc.collect()
        gc.freeze()  # the book and start-up objects: full collections then skip them
        log.info("start: %d accounts, %d at WARNING or worse announced", self.book.n_accounts,
                 self.events_emitted)
        if self.feed_kind == "synthetic":
            log.warning("feed %s: SIMULATED prices (a synthetic random walk), not market data",
                        self.feed.name)
        self._sources_started_ns = time.time_ns()  # the health grace counts from here
        cycle = asyncio.create_task(self._cycle_loop(), name="cycle")
        feed = asyncio.create_task(self._feed_loop(), name="feed")
        if self.event_source is not None:
            tasks.append(asyncio.create_task(self._events_loop(), name="account-events"))
        beat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        stop = asyncio.create_task(self._stopping.wait(), name="stop")
        try:
            done, _ = await asyncio.wait({cycle, stop}, return_when=asyncio.FIRST_COMPLETED)
            if cycle in done:
                cycle.result()
                log.info("feed drained: %d events", self.events_emitted)
                if not self.cfg.until_feed_ends:
                    await self._stopping.wait()  # keep serving the desk until stopped
        finally:
            for t in (feed, beat, stop, cycle):
                t.cancel()
            with contextlib.suppress(Exception):
                await self.feed.aclose()
            if self.event_source is not None:
                with contextlib.suppress(Exception):
                    await self.event_source.aclose()
            if self.snapshots is not None and self.snapshots.active:
                await self.snapshots.final()
            with contextlib.suppress(Exception):
                await self.dead_letters.aclose()
            if self.outbox is not None:
                self._final_summary()
                if not await self.outbox.drain(timeout=30):
                    log.error("outbox not drained; unsent events are kept in the spill file")
                await self.outbox.aclose()
            if self.audit is not None:  # drain the records, then the end-of-day snapshot
                self.audit.close()
            if self.pretrade_listener is not None:
                await self.pretrade_listener.aclose()
            if self.server is not None:
                self.server.broadcast_summary(self.summary())
                await self.server.aclose()
            for t in tasks:
                t.cancel()
            if self.desk.store is not None:
                await self.desk.store.aclose()
            if self.control is not None:
                with contextlib.suppress(Exception):
                    await self.control.aclose()
        if self._feed_failure is not None and self.cfg.until_feed_ends:
            log.error("the feed failed (%s): exit status 1", self._feed_failure[1])
            return 1
        return 0

    async def _load_acks_loop(self) -> None:
        """The acknowledgement store was unreachable at start: retry until it answers."""
        while not await self.desk.load_acks():
            await asyncio.sleep(5.0)

    def _final_summary(self) -> None:
        self.outbox.publish_summary(self.summary())

    def stop(self) -> None:
        self._stopping.set()
