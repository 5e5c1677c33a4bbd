"""The liquidation worker: a Redis Streams consumer-group member on the monitor's alert stream.

    XREADGROUP GROUP <group> <consumer> BLOCK … STREAMS <alerts> <prefix>:approved > >

Several workers (same group, different consumer names) share the work. Per entry:

1. Not acted on (not a TIER_CHANGE into FORCED_LIQUIDATION, not CALL_EXPIRED, not
   CONTRACT_EXPIRED): XACK.
   Malformed: moved to the dead-letter stream, XACK.
2. Already done (``<prefix>:done:<event_id>`` exists): XACK, nothing else (a redelivery).
3. By the mode of the event's profile: ``notify`` publishes a notice; ``approve`` (or the kill
   switch on) parks the plan in the approvals list; ``auto`` delivers:
4. Delivery holds ``<prefix>:lock:<event_id>`` (SET NX PX, refreshed while it works; a crashed
   worker's lock expires after ``lock_ttl``). The first attempt freezes the orders in
   ``<prefix>:attempt:<event_id>``: every later attempt, by any worker, sends the identical
   orders (same ids, quantities, prices, ``ts``). A plan older than ``max_plan_age`` is
   re-priced first. Per account, a cool-down (``<prefix>:cooldown:<account>``, SET NX) defers a
   second plan; the deferred plan is re-priced when its turn comes. A global fixed-window
   counter (``<prefix>:rate:<second>``) caps orders per second over all workers. The kill
   switch is read right before every hook call.
   An event whose plan was made outside a trading session carries ``release_at`` (ns, the
   next session's start): its orders wait until then (``hold_outside_sessions``), the entry
   kept pending and its idle time refreshed, so no other worker reclaims it meanwhile.
5. Hook success → one MULTI/EXEC: ``SET done``, delete the attempt, re-arm the cool-down,
   audit entry, XACK (for the Redis-stream hook the order XADDs are in the same
   transaction). Failure → retried with backoff ``max_attempts`` times, then the dead-letter
   stream (``<prefix>:dead``) with the reason, and ``done`` (``dead_letter``).

Entries left pending by a crashed worker are reclaimed with XAUTOCLAIM once idle for
``claim_idle``; a worker refreshes the idle time of entries it is working on (XCLAIM JUSTID), so
only a dead or stuck worker's entries move. The guarantees are stated in docs/liquidation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from feeds.net import Backoff, mask_url, redact, url_secrets
from monitor.liquidator.config import LiquidatorConfig
from monitor.liquidator.control import AUDIT_MAXLEN, audit_entry
from monitor.liquidator.hooks import Hook, HookError, PermanentHookError, open_hook
from monitor.liquidator.orders import BadEvent, Keys, build_orders, check_event, plan_age_s
from monitor.liquidator.repricer import PermanentRepriceError, RepriceError, Repricer, open_repricer

log = logging.getLogger("monitor.liquidator")

DEAD_MAXLEN = 100_000
NOTICES_MAXLEN = 100_000

# compare-and-expire / compare-and-delete of the in-progress marker
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
           "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
           "return redis.call('del', KEYS[1]) else return 0 end"


@dataclass(slots=True)
class Job:
    stream: str
    entry_id: bytes
    fields: dict
    event: dict
    reason: str
    source: str = "auto"  # "auto" | "approved"
    approval: dict | None = None
    force_reprice: bool = False

    @property
    def event_id(self) -> str:
        return self.event["event_id"]

    @property
    def account_id(self) -> str:
        return self.event["account_id"]


@dataclass(slots=True)
class _Local:
    """An entry this worker will (re)handle at `due` (monotonic)."""

    due: float
    fields: dict
    force_reprice: bool = False
    tries: int = 0
    held: bool = False  # waiting for the event's release_at


class Liquidator:
    """One worker. ``await Liquidator(cfg).run(until_idle=None)``; :meth:`stop` ends it (entries
    being handled are finished or left pending for another worker)."""

    def __init__(self, cfg: LiquidatorConfig, *, hook: Hook | None = None,
                 repricer: Repricer | None | str = "config", client: Any = None,
                 clock=time.time_ns):
        """`clock` (ns since the epoch) is what `release_at` is compared with."""
        self.cfg = cfg.check()
        self.clock = clock
        self.group = cfg.group + (".dry-run" if cfg.dry_run else "")
        self.keys = Keys(cfg.key_prefix + (":dry-run" if cfg.dry_run else ""))
        self.consumer = cfg.consumer
        self.alerts = cfg.alerts_stream
        self.approved = self.keys.approved
        self.hook = hook if hook is not None else open_hook(
            cfg.hook, secret=cfg.webhook_secret, dry_run=cfg.dry_run,
            http=cfg.http_settings("webhook"))
        self.repricer = (open_repricer(cfg.repricer, token=cfg.repricer_token,
                                       http=cfg.http_settings("repricer"))
                         if repricer == "config" else repricer)
        self._client = client
        self._own_client = client is None
        self._masked = mask_url(cfg.redis)
        self._secrets = url_secrets(cfg.redis)
        self.stats: Counter = Counter()
        # read by /metrics (monitor/liquidator/metrics.py): XPENDING per stream, approvals
        # waiting, kill switch, whether Redis answered the last loop, and when that was
        self.gauges: dict[str, float] = {}
        self.redis_up = False
        self.last_loop_ns = 0
        self._stop = asyncio.Event()
        self._tasks: dict[tuple[str, bytes], asyncio.Task] = {}
        self._local: dict[tuple[str, bytes], _Local] = {}
        self._refresh: Any = None
        self._release: Any = None
        self.lock_ms = max(1, int(cfg.lock_ttl * 1000))
        self.claim_ms = max(1, int(cfg.claim_idle * 1000))
        self.done_ex = max(1, int(cfg.done_ttl))
        self._claim_every = min(max(cfg.claim_idle / 2, 0.05), 5.0)

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def in_progress(self) -> int:
        """Entries being handled now."""
        return len(self._tasks)

    @property
    def waiting(self) -> int:
        """Entries this worker holds for later (a retry's backoff, a cool-down, a busy lock)."""
        return len(self._local)

    async def _refresh_gauges(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.xpending(self.alerts, self.group)
        pipe.xpending(self.approved, self.group)
        pipe.hlen(self.keys.approvals)
        pipe.exists(self.keys.kill)
        alerts, approved, approvals, kill = await pipe.execute()
        self.gauges = {"pending_alerts": (alerts or {}).get("pending", 0),
                       "pending_approved": (approved or {}).get("pending", 0),
                       "approvals": approvals, "kill_switch": 1 if kill else 0}

    async def _setup(self) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import ResponseError

        if self._client is None:
            self._client = aioredis.from_url(
                self.cfg.redis, socket_connect_timeout=5,
                socket_timeout=max(10.0, self.cfg.block + 5.0), health_check_interval=30)
        r = self._client
        self._refresh = r.register_script(_REFRESH)
        self._release = r.register_script(_RELEASE)
        for stream, start in ((self.alerts, self.cfg.group_start), (self.approved, "0")):
            try:
                await r.xgroup_create(stream, self.group, id=start, mkstream=True)
                log.info("liquidator: created group %s on %s (from %s)", self.group, stream,
                         "the beginning" if start == "0" else "new entries")
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def run(self, until_idle: float | None = None) -> int:
        """Work until :meth:`stop` (or, with ``until_idle``, until nothing was left to do for
        that many seconds: no new entry, nothing in hand, nothing pending in the group)."""
        c = self.cfg
        log.info("liquidator %s: group %s on %s at %s; hook %s; modes %s (default %s)%s%s",
                 self.consumer, self.group, self.alerts, self._masked, self.hook.name,
                 c.modes or "-", c.mode,
                 f"; repricer {self.repricer.name}" if self.repricer else "; no repricer",
                 "; DRY RUN: orders are logged, never sent" if c.dry_run else "")
        backoff = self._backoff()
        t0 = time.monotonic()
        while not self.stopping:
            try:
                await self._setup()
                break
            except Exception as e:  # noqa: BLE001 - Redis down at start: keep trying
                log.warning("liquidator: Redis %s unavailable (%s); retrying", self._masked,
                            self._redact(f"{type(e).__name__}: {e}"))
                if until_idle is not None and time.monotonic() - t0 >= max(until_idle, 1.0):
                    log.error("liquidator: no Redis for %.1fs; giving up (--until-idle)",
                              time.monotonic() - t0)
                    await self._finish()
                    return 1
                await self._sleep(backoff.next())
        last_work = time.monotonic()
        next_claim = next_gauges = 0.0
        backoff = self._backoff()
        try:
            while not self.stopping:
                try:
                    now = time.monotonic()
                    if now >= next_claim:
                        if await self._reclaim():
                            last_work = time.monotonic()
                        next_claim = time.monotonic() + self._claim_every
                    if now >= next_gauges:
                        await self._refresh_gauges()
                        next_gauges = time.monotonic() + min(5.0, self._claim_every)
                    self._start_due()
                    free = c.concurrency - len(self._tasks)
                    wait = min(c.block, max(0.01, next_claim - time.monotonic()))
                    if self._local:
                        wait = min(wait, max(0.01, min(x.due for x in self._local.values())
                                             - time.monotonic()))
                    if free > 0:
                        got = await self._read(free, wait)
                        if got:
                            last_work = time.monotonic()
                    else:
                        await asyncio.wait(list(self._tasks.values()), timeout=wait,
                                           return_when=asyncio.FIRST_COMPLETED)
                    if self._tasks or self._local:
                        last_work = time.monotonic()
                    elif until_idle is not None and \
                            time.monotonic() - last_work >= until_idle and \
                            await self._group_idle():
                        log.info("liquidator %s: idle for %.1fs, exiting", self.consumer,
                                 until_idle)
                        break
                    backoff.reset()
                    self.redis_up, self.last_loop_ns = True, time.time_ns()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - Redis outage: back off, go on
                    self.stats["redis_errors"] += 1
                    self.redis_up, self.last_loop_ns = False, time.time_ns()
                    log.warning("liquidator: Redis error (%s); retrying in %.1fs",
                                self._redact(f"{type(e).__name__}: {e}"), backoff.peek())
                    await self._sleep(backoff.next())
                    if "NOGROUP" in str(e):  # Redis came back empty (no persistence)
                        with contextlib.suppress(Exception):
                            await self._setup()
        finally:
            await self._finish()
        return 0

    async def _finish(self, grace: float = 10.0) -> None:
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:  # left pending in the group: reclaimed by another worker
                t.cancel()
            for t in pending:
                with contextlib.suppress(BaseException):
                    await t
        log.info("liquidator %s: stopped; %s", self.consumer,
                 ", ".join(f"{k} {v}" for k, v in sorted(self.stats.items())) or "nothing done")
        with contextlib.suppress(Exception):
            await self.hook.aclose()
        if self.repricer is not None:
            with contextlib.suppress(Exception):
                await self.repricer.aclose()
        if self._own_client and self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    def _backoff(self, attempt: int = 0) -> Backoff:
        """The retry delays of the config: doubled per attempt up to the cap, jittered."""
        b = Backoff(self.cfg.backoff_initial, self.cfg.backoff_max, jitter=0.3)
        b.attempt = attempt
        return b

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(),
                                   max(0.0, seconds) * random.uniform(0.8, 1.0))

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    # ------------------------------------------------------------------ intake
    async def _read(self, count: int, wait: float) -> int:
        res = await self._client.xreadgroup(
            self.group, self.consumer, {self.alerts: ">", self.approved: ">"}, count=count,
            block=max(1, int(wait * 1000)))
        n = 0
        for stream, entries in res or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                if fields is None:
                    continue
                self._spawn(name, entry_id, fields)
                n += 1
        return n

    async def _reclaim(self) -> int:
        """XAUTOCLAIM entries idle for claim_idle (a crashed or stuck worker's)."""
        r = self._client
        n = 0
        held = [k for k, x in self._local.items() if x.held]
        for stream in {k[0] for k in held}:  # ours, waiting for release_at: keep them ours
            await r.xclaim(stream, self.group, self.consumer, 0,
                           [k[1] for k in held if k[0] == stream], justid=True)
        for stream in (self.alerts, self.approved):
            start = "0-0"
            for _ in range(100):  # pages; bounded so one claim pass cannot run away
                if len(self._local) >= 4 * self.cfg.concurrency:
                    break
                res = await r.xautoclaim(stream, self.group, self.consumer, self.claim_ms,
                                         start_id=start, count=max(10, self.cfg.concurrency))
                nxt, claimed = res[0], res[1]
                deleted = res[2] if len(res) > 2 else []
                for entry_id in deleted or []:
                    self.stats["trimmed"] += 1
                    await self._dead_raw(stream, entry_id, None, "the entry was trimmed from "
                                         "the stream before it was handled", ack=False)
                for entry_id, fields in claimed:
                    key = (stream, entry_id)
                    if fields is None or key in self._tasks or key in self._local:
                        continue
                    n += 1
                    self.stats["reclaimed"] += 1
                    info = await r.xpending_range(stream, self.group, entry_id, entry_id, 1)
                    times = info[0]["times_delivered"] if info else 1
                    if times > self.cfg.max_deliveries:
                        await self._dead_raw(stream, entry_id, fields,
                                             f"delivered {times} times without completing")
                        continue
                    log.info("liquidator %s: reclaimed %s %s (delivery %d)", self.consumer,
                             stream, entry_id.decode(), times)
                    self._local[key] = _Local(0.0, fields)
                nxt = nxt.decode() if isinstance(nxt, bytes) else nxt
                if nxt == "0-0":
                    break
                start = nxt
        return n

    def _spawn(self, stream: str, entry_id: bytes, fields: dict, force_reprice: bool = False,
               tries: int = 0) -> None:
        key = (stream, entry_id)
        if key in self._tasks:
            return
        self._local.pop(key, None)
        t = asyncio.create_task(self._handle(stream, entry_id, fields, force_reprice, tries),
                                name=f"liq-{entry_id.decode()}")
        self._tasks[key] = t
        t.add_done_callback(lambda _t, k=key: self._tasks.pop(k, None))

    def _start_due(self) -> None:
        now = time.monotonic()
        for key, loc in sorted(self._local.items(), key=lambda kv: kv[1].due):
            if len(self._tasks) >= self.cfg.concurrency or loc.due > now:
                break
            self._spawn(key[0], key[1], loc.fields, loc.force_reprice, loc.tries)

    def _defer(self, job_or_key: Job | tuple[str, bytes], fields: dict | None, delay: float,
               force_reprice: bool = False, tries: int = 0, held: bool = False) -> None:
        if isinstance(job_or_key, Job):
            key = (job_or_key.stream, job_or_key.entry_id)
            fields = job_or_key.fields
        else:
            key = job_or_key
        self._local[key] = _Local(time.monotonic() + delay, fields or {}, force_reprice, tries,
                                  held)

    async def _group_idle(self) -> bool:
        for stream in (self.alerts, self.approved):
            info = await self._client.xpending(stream, self.group)
            if info and info.get("pending"):
                return False
        return True

    # ------------------------------------------------------------------ handling
    async def _handle(self, stream: str, entry_id: bytes, fields: dict, force_reprice: bool,
                      tries: int) -> None:
        try:
            if stream == self.approved:
                await self._on_approved(entry_id, fields)
            else:
                await self._on_alert(entry_id, fields, force_reprice)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis trouble mid-way: try again later
            tries += 1
            msg = self._redact(f"{type(e).__name__}: {e}")
            self.stats["errors"] += 1
            if tries >= self.cfg.max_deliveries:
                log.error("liquidator: giving up on %s %s after %d tries: %s", stream,
                          entry_id.decode(), tries, msg)
                with contextlib.suppress(Exception):
                    await self._dead_raw(stream, entry_id, fields,
                                         f"failed {tries} times: {msg}")
                return
            delay = self._backoff(attempt=tries - 1).next()
            self.stats["retries"] += 1
            log.warning("liquidator: %s %s failed (%s); again in %.1fs", stream,
                        entry_id.decode(), msg, delay)
            if not self.stopping:
                self._defer((stream, entry_id), fields, delay, force_reprice, tries)

    async def _on_alert(self, entry_id: bytes, fields: dict, force_reprice: bool) -> None:
        r = self._client
        raw = fields.get(b"data")
        try:
            event = orjson.loads(raw) if raw is not None else None
            reason = check_event(event)
        except (orjson.JSONDecodeError, BadEvent) as e:
            self.stats["malformed"] += 1
            await self._dead_raw(self.alerts, entry_id, fields, f"malformed alert: {e}")
            return
        if reason is None:
            self.stats["ignored"] += 1
            await r.xack(self.alerts, self.group, entry_id)
            return
        job = Job(self.alerts, entry_id, fields, event, reason, force_reprice=force_reprice)
        if await r.exists(self.keys.done(job.event_id)):
            self.stats["duplicates"] += 1
            log.info("liquidator: event %s already done; acknowledged without acting",
                     job.event_id)
            await r.xack(self.alerts, self.group, entry_id)
            return
        orig = event.get("restored_event_id") if event.get("restored") is True else None
        if isinstance(orig, str) and orig and await r.exists(self.keys.done(orig)):
            # a restarted monitor re-announcing a tier whose event was already handled:
            # recorded done too, so a later restart's re-announcement of it is skipped as well
            log.info("liquidator: event %s re-announces %s, already done; not acted on",
                     job.event_id, orig)
            await self._commit(job, "restored_done", [], detail={"of": orig})
            return
        mode = self.cfg.mode_for(event.get("profile"))
        if mode == "notify":
            await self._notify(job)
        elif mode == "approve":
            await self._park(job, "approval_required")
        else:
            await self._deliver(job)

    async def _on_approved(self, entry_id: bytes, fields: dict) -> None:
        r = self._client
        raw_id = fields.get(b"event_id")
        eid = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        rec_raw = await r.hget(self.keys.approvals, eid) if eid else None
        rec = orjson.loads(rec_raw) if rec_raw is not None else None
        if rec is None or rec.get("state") != "approved":
            await r.xack(self.approved, self.group, entry_id)
            return
        job = Job(self.approved, entry_id, fields, rec["event"], rec["reason"],
                  source="approved", approval=rec)
        if await r.exists(self.keys.done(eid)):
            pipe = r.pipeline(transaction=True)
            pipe.hdel(self.keys.approvals, eid)
            pipe.xack(self.approved, self.group, entry_id)
            await pipe.execute()
            return
        await self._deliver(job)

    # ------------------------------------------------------------------ delivery
    async def _deliver(self, job: Job) -> None:
        r = self._client
        rel = job.event.get("release_at")
        if self.cfg.hold_outside_sessions and isinstance(rel, int) and not isinstance(rel, bool):
            wait = (rel - self.clock()) / 1e9
            if wait > 0:  # a plan made outside a session: its orders go at the next start
                self.stats["held"] += 1
                log.info("liquidator: event %s was planned outside a trading session; its "
                         "orders wait %.1fs for the next session", job.event_id, wait)
                self._defer(job, None, wait, job.force_reprice, held=True)
                return
        token = f"{self.consumer}:{uuid.uuid4().hex[:12]}"
        lock = self.keys.lock(job.event_id)
        if not await r.set(lock, token, nx=True, px=self.lock_ms):
            holder = await r.get(lock)
            self.stats["busy"] += 1
            log.info("liquidator: event %s is being handled by %s; looking again later",
                     job.event_id, holder.decode() if holder else "another worker")
            self._defer(job, None, max(0.05, min(self.cfg.lock_ttl / 2, 5.0)),
                        job.force_reprice)
            return
        done = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(job, lock, token, done))
        try:
            await self._deliver_locked(job)
        finally:
            done.set()
            beat.cancel()
            with contextlib.suppress(BaseException):
                await beat
            with contextlib.suppress(Exception):
                await self._release(keys=[lock], args=[token])

    async def _heartbeat(self, job: Job, lock: str, token: str, done: asyncio.Event) -> None:
        """Keep the in-progress marker alive and the entry's idle time low while we work, until
        `done` is set. Cancelling alone cannot stop it: redis-py may swallow the cancellation
        of a command in flight and return normally, and the loop would go on for ever."""
        every = max(0.02, min(self.cfg.lock_ttl, self.cfg.claim_idle) / 3)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every)
            if done.is_set():
                return
            with contextlib.suppress(Exception):
                await self._refresh(keys=[lock], args=[token, self.lock_ms])
                await self._client.xclaim(job.stream, self.group, self.consumer, 0,
                                          [job.entry_id], justid=True)

    async def _deliver_locked(self, job: Job) -> None:
        r, c = self._client, self.cfg
        eid, acct = job.event_id, job.account_id
        if await r.exists(self.keys.done(eid)):  # finished by another worker meanwhile
            await self._ack_done(job)
            return
        raw = await r.get(self.keys.attempt(eid))
        resumed = raw is not None
        if resumed:
            orders = orjson.loads(raw)["orders"]
            self.stats["resumed"] += 1
            log.warning("liquidator: event %s was handed to the hook before without a result; "
                        "re-sending the same %d order(s)", eid, len(orders))
        else:
            if await self._killed():
                await self._park(job, "kill_switch")
                return
            cd = self.keys.cooldown(acct)
            if job.source == "auto" and c.cooldown > 0:
                cd_ms = max(1, int(c.cooldown * 1000))
                if not await r.set(cd, eid, nx=True, px=cd_ms):
                    holder = await r.get(cd)
                    if holder is not None and holder.decode() != eid:
                        left = await r.pttl(cd)
                        self.stats["cooldown_deferred"] += 1
                        log.info("liquidator: account %s is cooling down after %s; event %s "
                                 "waits %.1fs and is then re-priced", acct, holder.decode(),
                                 eid, max(left, 0) / 1000)
                        self._defer(job, None, max(0.05, left / 1000 + 0.01), True)
                        return
            plan = job.approval["plan"] if job.approval else job.event.get("plan")
            stale = plan is None or job.force_reprice or plan_age_s(plan) > c.max_plan_age
            if stale:
                if self.repricer is not None:
                    plan = await self._reprice(job)
                    if plan is None:
                        return
                elif job.source == "auto" or plan is None:
                    await self._uncooldown(acct, eid)
                    await self._park(job, "stale_plan")
                    return
            if not plan["orders"]:
                await self._uncooldown(acct, eid)
                residual = plan.get("residual") or 0
                if residual > 0:
                    await self._dead_letter(job, [], f"the plan has no order that can trade "
                                                     f"(suspended or at the limit); residual "
                                                     f"{residual} still needed")
                else:
                    await self._commit(job, "not_required", [],
                                       detail={"ratio_after": plan.get("ratio_after")})
                return
            by = job.approval.get("decided_by") if job.approval else None
            orders = build_orders(job.event, plan, job.reason, approved_by=by)
            attempt = {"orders": orders, "consumer": self.consumer, "ts": time.time_ns()}
            if not await r.set(self.keys.attempt(eid), orjson.dumps(attempt), nx=True,
                               ex=self.done_ex):
                orders = orjson.loads(await r.get(self.keys.attempt(eid)))["orders"]
                resumed = True
        await self._send(job, orders, resumed)

    async def _reprice(self, job: Job) -> dict | None:
        c = self.cfg
        backoff = self._backoff()
        last = ""
        for n in range(1, c.max_attempts + 1):
            try:
                plan = await self.repricer.reprice(job.event)
                self.stats["repriced"] += 1
                return plan
            except PermanentRepriceError as e:
                last = str(e)
                break
            except RepriceError as e:
                last = str(e)
                self.stats["reprice_failures"] += 1
                log.warning("liquidator: re-pricing %s (account %s) failed (attempt %d/%d): %s",
                            job.event_id, job.account_id, n, c.max_attempts, last)
            if n < c.max_attempts:
                self.stats["retries"] += 1
                await self._sleep(backoff.next())
                if self.stopping:
                    return None  # left pending: another worker or the next run goes on
        await self._uncooldown(job.account_id, job.event_id)
        await self._dead_letter(job, [], f"re-pricing failed: {last}")
        return None

    async def _send(self, job: Job, orders: list[dict], resumed: bool) -> None:
        c = self.cfg
        backoff = self._backoff()
        last = ""
        n = 0
        for n in range(1, c.max_attempts + 1):
            await self._rate_limit(len(orders))
            if await self._killed():  # read right before every hook call
                if resumed or n > 1:  # the hook may have them: only these exact orders
                    await self._park(job, "kill_switch", orders, frozen=True)
                else:  # never handed over: forget them, re-priced if approved later
                    await self._client.delete(self.keys.attempt(job.event_id))
                    await self._uncooldown(job.account_id, job.event_id)
                    await self._park(job, "kill_switch", orders)
                return
            try:
                if self.hook.transactional:
                    await self._commit(job, "sent", orders, hook=self.hook)
                else:
                    await self.hook.send(orders, job.event_id)
                    await self._commit(job, "sent", orders)
                return
            except PermanentHookError as e:
                last = str(e)
                self.stats["hook_failures"] += 1
                log.error("liquidator: hook %s refused event %s: %s", self.hook.name,
                          job.event_id, last)
                break
            except HookError as e:
                last = str(e)
                self.stats["hook_failures"] += 1
                log.warning("liquidator: hook %s failed for event %s (attempt %d/%d): %s",
                            self.hook.name, job.event_id, n, c.max_attempts, last)
            if n < c.max_attempts:
                self.stats["retries"] += 1
                await self._sleep(backoff.next())
                if self.stopping:
                    return
        await self._dead_letter(job, orders, f"hook {self.hook.name} failed {n} time(s): "
                                             f"{last}")

    async def _killed(self) -> bool:
        return bool(await self._client.exists(self.keys.kill))

    async def _rate_limit(self, n: int) -> int | None:
        """Fixed one-second windows shared by every worker; a plan larger than the limit goes
        alone in an otherwise empty window. Returns the window (Unix second) it went into."""
        lim = self.cfg.max_orders_per_second
        if lim <= 0:
            return None
        r = self._client
        while True:
            now = time.time()
            key = self.keys.rate(int(now))
            pipe = r.pipeline(transaction=True)
            pipe.incrby(key, n)
            pipe.expire(key, 5)
            total = (await pipe.execute())[0]
            if total <= lim or total == n:
                return int(now)
            await r.decrby(key, n)
            self.stats["rate_limited"] += 1
            await asyncio.sleep(max(0.001, int(now) + 1 - time.time()) + random.uniform(0, 0.01))

    async def _uncooldown(self, account: str, eid: str) -> None:
        """Nothing was sent for `eid`: free the account's cool-down if `eid` took it."""
        await self._release(keys=[self.keys.cooldown(account)], args=[eid])

    # ------------------------------------------------------------------ outcomes
    async def _commit(self, job: Job, outcome: str, orders: list[dict], *,
                      hook: Hook | None = None, detail: dict | None = None,
                      extra: Any = None) -> bool:
        """Record the outcome atomically with the XACK (and, for a transactional hook, the
        orders). False when the event turned out to be done already (nothing written)."""
        from redis.exceptions import WatchError

        r, c = self._client, self.cfg
        eid = job.event_id
        done_key = self.keys.done(eid)
        ids = [o["order_id"] for o in orders]
        rec = {"outcome": outcome, "order_ids": ids, "consumer": self.consumer,
               "ts": time.time_ns(), "account_id": job.account_id, "reason": job.reason,
               **(detail or {})}
        for _ in range(10):
            async with r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(done_key)
                    if await pipe.exists(done_key):
                        await pipe.unwatch()
                        await self._ack_done(job)
                        self.stats["duplicates"] += 1
                        return False
                    pipe.multi()
                    if hook is not None:
                        hook.add_to(pipe, orders)
                    if extra is not None:
                        extra(pipe)
                    pipe.set(done_key, orjson.dumps(rec), ex=self.done_ex)
                    if outcome == "sent":
                        pipe.delete(self.keys.attempt(eid))
                    if outcome == "sent" and c.cooldown > 0:
                        pipe.set(self.keys.cooldown(job.account_id), eid,
                                 px=max(1, int(c.cooldown * 1000)))
                    if job.source == "approved":
                        pipe.hdel(self.keys.approvals, eid)
                    pipe.xack(job.stream, self.group, job.entry_id)
                    pipe.xadd(self.keys.audit, audit_entry(
                        outcome, event_id=eid, account_id=job.account_id, reason=job.reason,
                        order_ids=ids, consumer=self.consumer, source=job.source,
                        **(detail or {})), maxlen=AUDIT_MAXLEN, approximate=True)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        else:
            raise RuntimeError(f"could not record the outcome of {eid} (contention)")
        self.stats[outcome] += 1
        if outcome == "sent":
            self.stats["orders"] += len(orders)
            log.info("liquidator: sent %d order(s) for event %s (account %s, %s%s) via %s",
                     len(orders), eid, job.account_id, job.reason,
                     ", approved" if job.source == "approved" else "", self.hook.name)
        else:
            log.info("liquidator: event %s (account %s): %s", eid, job.account_id, outcome)
        return True

    async def _ack_done(self, job: Job) -> None:
        pipe = self._client.pipeline(transaction=True)
        if job.source == "approved":
            pipe.hdel(self.keys.approvals, job.event_id)
        pipe.xack(job.stream, self.group, job.entry_id)
        await pipe.execute()

    async def _notify(self, job: Job) -> None:
        ev = job.event
        plan = ev.get("plan") or {"orders": []}
        orders = build_orders(ev, plan, job.reason)
        notice = {"kind": "LIQUIDATION_NOTICE", "event_id": job.event_id,
                  "account_id": job.account_id, "profile": ev.get("profile"),
                  "reason": job.reason, "tier": ev.get("tier"), "ratio": ev.get("ratio"),
                  "liquidation_status": ev.get("liquidation_status"),
                  "shortfall": ev.get("shortfall"), "plan": plan, "orders": orders,
                  "ts": time.time_ns()}

        def extra(pipe: Any) -> None:
            pipe.xadd(self.keys.notices, {b"data": orjson.dumps(notice)},
                      maxlen=NOTICES_MAXLEN, approximate=True)

        await self._commit(job, "notified", [], extra=extra)

    async def _park(self, job: Job, held: str, orders: list[dict] | None = None,
                    frozen: bool = False) -> None:
        """Into the approvals list (or back into it, for an approved plan stopped by the kill
        switch), and XACK."""
        from redis.exceptions import WatchError

        r = self._client
        eid = job.event_id
        ev = job.event
        plan = (job.approval or {}).get("plan", ev.get("plan"))
        if orders is None:
            orders = build_orders(ev, plan, job.reason) if plan else []
        rec = dict(job.approval or {})
        rec.update(event_id=eid, account_id=job.account_id, profile=ev.get("profile"),
                   reason=job.reason, held=held, state="pending", plan=plan, orders=orders,
                   frozen=frozen or bool(rec.get("frozen")), event=ev)
        rec.setdefault("created_ns", time.time_ns())
        for k in ("decided_by", "decided_ns", "note"):
            rec.pop(k, None)
        done_key = self.keys.done(eid)
        for _ in range(10):
            async with r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(done_key)
                    if await pipe.exists(done_key):
                        await pipe.unwatch()
                        await self._ack_done(job)
                        return
                    pipe.multi()
                    if job.source == "approved" or frozen:
                        pipe.hset(self.keys.approvals, eid, orjson.dumps(rec))
                    else:
                        pipe.hsetnx(self.keys.approvals, eid, orjson.dumps(rec))
                    pipe.xack(job.stream, self.group, job.entry_id)
                    pipe.xadd(self.keys.audit, audit_entry(
                        "held", event_id=eid, account_id=job.account_id, reason=job.reason,
                        held=held, consumer=self.consumer), maxlen=AUDIT_MAXLEN,
                        approximate=True)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        self.stats[f"held_{held}"] += 1
        log.warning("liquidator: event %s (account %s, %d order(s)) waits in the approvals "
                    "list: %s", eid, job.account_id, len(orders), held)

    async def _dead_letter(self, job: Job, orders: list[dict], reason: str) -> None:
        entry = {"event_id": job.event_id, "account_id": job.account_id,
                 "reason": reason, "trigger": job.reason, "orders": orders,
                 "consumer": self.consumer, "source": job.source, "ts": time.time_ns(),
                 "stream": job.stream, "entry_id": job.entry_id.decode(), "event": job.event}

        def extra(pipe: Any) -> None:
            pipe.xadd(self.keys.dead, {b"data": orjson.dumps(entry)}, maxlen=DEAD_MAXLEN,
                      approximate=True)

        if await self._commit(job, "dead_letter", orders, detail={"error": reason[:500]},
                              extra=extra):
            log.error("liquidator: event %s (account %s) moved to %s: %s", job.event_id,
                      job.account_id, self.keys.dead, reason)

    async def _dead_raw(self, stream: str, entry_id: bytes, fields: dict | None, reason: str,
                        ack: bool = True) -> None:
        """An entry that is not a usable event: to the dead-letter stream, XACK."""
        data = (fields or {}).get(b"data") if stream == self.alerts else None
        raw = data.decode("utf-8", "replace")[:65536] if isinstance(data, bytes) else None
        if stream == self.approved and fields:
            raw = orjson.dumps({k.decode(): v.decode("utf-8", "replace")
                                for k, v in fields.items()}).decode()
        entry = {"event_id": None, "reason": reason, "stream": stream,
                 "entry_id": entry_id.decode(), "raw": raw, "consumer": self.consumer,
                 "ts": time.time_ns()}
        pipe = self._client.pipeline(transaction=True)
        pipe.xadd(self.keys.dead, {b"data": orjson.dumps(entry)}, maxlen=DEAD_MAXLEN,
                  approximate=True)
        if ack:
            pipe.xack(stream, self.group, entry_id)
        pipe.xadd(self.keys.audit, audit_entry("dead_letter", stream=stream,
                                               entry_id=entry_id.decode(), error=reason,
                                               consumer=self.consumer),
                  maxlen=AUDIT_MAXLEN, approximate=True)
        await pipe.execute()
        self.stats["dead_letter"] += 1
        log.error("liquidator: %s entry %s moved to %s: %s", stream, entry_id.decode(),
                  self.keys.dead, reason)
