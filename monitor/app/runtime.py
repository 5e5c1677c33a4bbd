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
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from feeds.account_events import open_events
from feeds.registry import open_feed
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
from monitor.core.pretrade import PretradeService
from monitor.core.state import MarginState
from monitor.desk.readmodel import Desk, FileAckStore, RedisAckStore
from monitor.liquidator.control import LiquidationControl
from monitor.web import STATIC_DIR
from monitor.web.pretrade import start_listener
from monitor.web.server import AlertServer

log = logging.getLogger("monitor")



class Monitor:
    def __init__(self, cfg: RunConfig, book: Book, *, redis_url: str | None = None,
                 outbox_factory: Callable[..., RedisOutbox] = RedisOutbox):
        """`outbox_factory` builds the alert outbox (RedisOutbox's arguments); a benchmark
        passes an instrumented subclass."""
        self.cfg = cfg
        self.outbox_factory = outbox_factory
        self.book = book
        self.metrics = Metrics()
        self.state = MarginState(book, live=True)
        # a tape (replay, synthetic) runs on its own time only; a live feed's silence lets the
        # receive time move the engine's clock on (the heartbeat)
        self.tape = cfg.feed.startswith(("replay:", "synthetic"))
        self.closures = ClosuresWatch(cfg)  # closures_file re-read when it changes
        self.engine = Engine(self.state, EngineConfig(
            hysteresis_bp=cfg.hysteresis_bp, sweep_share=cfg.sweep_share, reach=cfg.reach_mode,
            call_days=cfg.call_days, calendar=build_calendar(cfg),
            close_settle_s=cfg.close_settle_s, clock="tape" if self.tape else "ticks",
            max_skew_ns=cfg.max_tick_skew_ns),
            credit=CreditConfig.from_dict(cfg.credit),  # [credit] table
            patterns=PatternConfig.from_dict(cfg.patterns))  # [patterns] table
        self.universe = universe_of(book)
        self.feed = open_feed(cfg.feed, self.universe)
        self.event_source = open_events(cfg.events) if cfg.events else None
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
        self._stopping = asyncio.Event()
        self.events_emitted = 0
        self.desk = Desk(self.engine, summary=self.summary, event_bytes=cfg.desk_event_budget)
        self.snapshots = (Snapshots(self, cfg.state_dir, cfg.snapshot_interval_s)
                          if cfg.state_dir else None)
        self.audit: AuditLog | None = None  # created by run() when cfg.audit_dir is set
        self.pretrade = PretradeService(self.engine)  # POST /api/pretrade on both ports
        self.pretrade_listener = None  # keep-alive listener (cfg.pretrade_listen)
        self.control = None  # the liquidator's LiquidationControl, when there is a Redis

    # ------------------------------------------------------------------ tasks
    async def _events_loop(self) -> None:
        try:
            async for evs in self.event_source.batches():
                self._account_events.extend(evs)
                self._wake.set()
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("account events %s failed", self.event_source.name)
        finally:
            self._events_done = True
            self._wake.set()

    def _dead_letters(self, cfg: RunConfig) -> DeadLetters:
        """Where rejected account events go: `<stream>:dead` beside a Redis event stream, else
        a JSONL file in the spill dir (monitor/adapters/deadletter.py)."""
        src, reader = self.event_source, getattr(self.event_source, "reader", None)
        dl = DeadLetters(redis_url=getattr(reader, "url", None),
                         stream=f"{reader.stream}:dead" if reader is not None else None,
                         spill_dir=cfg.spill_dir,
                         on_count=lambda r: self.metrics.account_events_rejected.labels(r).inc())
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
            try:
                self.desk.before_account_event(ev)
                self.publish(self.engine.apply_account_event(ev, time.time_ns()))
                skipped = self.engine.account_events.skipped
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

    async def _feed_loop(self) -> None:
        try:
            async for batch in self.feed.batches():
                if batch.events:  # scenario events (suspensions) travel with the ticks
                    self._account_events.extend(batch.events)
                    self._wake.set()
                if len(batch):
                    if self._oldest_recv_ns == 0:
                        self._oldest_recv_ns = batch.recv_ns
                    self.engine.add_ticks(batch.sec, batch.price, batch.ts)
                    self.metrics.ticks.inc(len(batch))
                    self._wake.set()
                await asyncio.sleep(0)  # let the cycle and output tasks run
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("feed %s failed", self.feed.name)
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
                c = self.engine.last_cycle
                self.metrics.cycles.labels(c.path).inc()
                self.metrics.cycle_seconds.observe(c.ns / 1e9)
                if oldest:
                    self.metrics.tick_to_event.observe((time.time_ns() - oldest) / 1e9)
            else:
                self.publish(self.engine.cycle(time.time_ns()))  # deadlines of open calls
            if self.snapshots is not None and self.snapshots.due():
                self.snapshots.take()  # between cycles: no tick or account event is queued
            if self._feed_done and self._events_done and not self.engine.pending \
                    and not self._account_events:
                self.publish(self.engine.finish_tape(time.time_ns()))  # a tape of no tick
                return
            await asyncio.sleep(0)

    async def _heartbeat_loop(self) -> None:
        beats = 0
        last_ticks = 0
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            self._wake.set()  # lets call deadlines expire even with a silent feed
            now = time.time_ns()
            if not self.tape and self._feed_state(now, self.feed.stats()) != "live":
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
                log.info("FL %d  MC %d  WARN %d | %.0f ticks/s, %d rejected | last cycle %.1f ms"
                         " (%s) | %d events", t["FORCED_LIQUIDATION"], t["MARGIN_CALL"],
                         t["WARNING"], (ticks - last_ticks) / (5 * self.cfg.heartbeat_s),
                         sum(s["feed"]["rejected"].values()), s["last_cycle"]["ms"],
                         s["last_cycle"]["path"], self.events_emitted)
                last_ticks = ticks
            if self.outbox is not None:
                self.outbox.publish_summary(s)
            if self.server is not None:
                self.server.broadcast_summary(s)

    def summary(self) -> dict:
        now = time.time_ns()
        s = self.engine.summary(now)
        fs = self.feed.stats()
        s["feed"] = fs.as_dict()
        s["feed"]["lag_s"] = ((now - fs.last_message_ns) / 1e9) if fs.last_message_ns else None
        s["feed"]["done"] = self._feed_done
        s["feed"]["state"] = self._feed_state(now, fs)
        stale = fs.staleness_s(now)
        s["feed"]["stale_symbols_60s"] = int(np.sum(~np.isnan(stale) & (stale > 60)))
        if self.event_source is not None:
            s["account_events"] = {**self.event_source.stats(),
                                   "applied": self.engine.account_events.applied,
                                   "rejected": dict(self.event_rejects),
                                   "dead_letters": self.dead_letters.stats()}
        for reason, n in fs.rejected.items():
            self.metrics.rejected.labels(reason).set(n)
        for name, n in s["tiers"].items():
            self.metrics.accounts.labels(name).set(n)
        if self.outbox is not None:
            os_ = self.outbox.stats()
            s["outbox"] = {k: os_[k] for k in ("queued", "spilled", "published", "connected",
                                               "failures")}
            self.metrics.outbox_queued.set(os_["queued"])
            self.metrics.outbox_spilled.set(os_["spilled"])
        s["patterns"] = self.engine.patterns.stats()
        if self.snapshots is not None:
            s["snapshot"] = self.snapshots.stats()
        if self.audit is not None:
            s["audit"] = self.audit.stats()
        if self.server is not None:
            ss = self.server.stats()
            s["websocket"] = ss
            self.metrics.ws_clients.set(ss.get("clients", 0))
        return s

    def health(self) -> dict:
        fs = self.feed.stats()
        now = time.time_ns()
        feed_age = (now - fs.last_message_ns) / 1e9 if fs.last_message_ns else None
        return {"ok": True, "run_id": self.engine.run_id, "seq": self.engine.seq,
                "cycles": self.engine.cycles, "feed_age_s": feed_age,
                "feed_done": self._feed_done, "feed_state": self._feed_state(now, fs),
                **self.engine.calendar_health()}  # calendar_ok, calendar_reason, market, ...

    def _feed_state(self, now: int, fs) -> str:
        """live | stale (silent for `stale_feed_s`: prices are old, nothing is re-tiered on
        them) | disconnected (a live feed reconnecting) | waiting (nothing yet) | done."""
        if self._feed_done:
            return "done"
        if getattr(self.feed, "connected", True) is False:
            return "disconnected"
        if not fs.last_message_ns:
            return "waiting"
        return "stale" if (now - fs.last_message_ns) / 1e9 > self.cfg.stale_feed_s else "live"

    # ------------------------------------------------------------------ life cycle
    async def run(self) -> int:
        log.info("warming up kernels")
        t0 = time.perf_counter()
        warm_up()
        log.info("kernels ready in %.2fs", time.perf_counter() - t0)
        tokens = self.cfg.resolve_tokens()
        if self.redis_url:
            self.outbox = self.outbox_factory(self.redis_url, stream=self.cfg.alerts_stream,
                                      maxlen=self.cfg.alerts_maxlen,
                                      summary_key=self.cfg.summary_key,
                                      spill_dir=self.cfg.spill_dir)
        self.desk.store = (RedisAckStore(self.redis_url) if self.redis_url
                           else FileAckStore(Path(self.cfg.spill_dir) / "desk-acks.json"))
        acks_loaded = await self.desk.load_acks()
        host, port = self.cfg.host_port
        control_redis = self.cfg.liquidator_redis or self.redis_url
        if control_redis:  # the liquidator's approvals and kill switch, over HTTP
            self.control = LiquidationControl(control_redis,
                                              key_prefix=self.cfg.liquidator_key_prefix)
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
            self.audit = AuditLog(self.engine, self.cfg.audit_dir)
        restored = await self.snapshots.restore() if self.snapshots is not None else None
        self.publish(self.engine.start(time.time_ns()) if restored is None else restored)
        gc.collect()
        gc.freeze()  # the book and start-up objects: full collections then skip them
        log.info("start: %d accounts, %d at WARNING or worse announced", self.book.n_accounts,
                 self.events_emitted)
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
        return 0

    async def _load_acks_loop(self) -> None:
        """The acknowledgement store was unreachable at start: retry until it answers."""
        while not await self.desk.load_acks():
            await asyncio.sleep(5.0)

    def _final_summary(self) -> None:
        self.outbox.publish_summary(self.summary())

    def stop(self) -> None:
        self._stopping.set()
