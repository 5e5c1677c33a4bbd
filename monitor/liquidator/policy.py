"""Policy: what a stream entry means and how its plan is delivered.

An alert that is not a FORCED_LIQUIDATION or CALL_EXPIRED trigger is acknowledged and left; one
already done is acknowledged; otherwise the event's profile mode says notify, park for approval,
or deliver. Delivery takes the event's lock, freezes the orders on the first attempt (every later
attempt sends the identical orders), applies the account's cool-down, re-prices a stale plan,
waits for the next trading session when the plan was made outside one, the global rate limit and
the kill switch, then hands the orders to the hook with retries. Reading entries is intake.py's
job, recording outcomes commit.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from monitor.liquidator.commit import Outcomes
from monitor.liquidator.context import Job, WorkerContext
from monitor.liquidator.hooks import Hook, HookError, PermanentHookError
from monitor.liquidator.orders import BadEvent, build_orders, check_event, plan_age_s
from monitor.liquidator.repricer import PermanentRepriceError, RepriceError, Repricer

log = logging.getLogger("monitor.liquidator")

# compare-and-expire / compare-and-delete of the in-progress marker
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
           "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
           "return redis.call('del', KEYS[1]) else return 0 end"

Defer = Callable[..., None]


class Policy:
    """Handles one entry at a time (many run concurrently, one task each).

    `defer(job_or_key, fields, delay, force_reprice=False, tries=0, held=False)` gives an entry
    back to intake to be handled again after `delay` seconds."""

    def __init__(self, ctx: WorkerContext, outcomes: Outcomes, hook: Hook,
                 repricer: Repricer | None, defer: Defer):
        self.ctx = ctx
        self.outcomes = outcomes
        self.hook = hook
        self.repricer = repricer
        self.defer = defer
        self._refresh: Any = None
        self._release: Any = None

    def register_scripts(self, client: Any) -> None:
        """The Lua scripts of the lock and the cool-down, on a (new) client."""
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)

    async def handle(self, stream: str, entry_id: bytes, fields: dict, force_reprice: bool,
                      tries: int) -> None:
        try:
            if stream == self.ctx.approved:
                await self._on_approved(entry_id, fields)
            else:
                await self._on_alert(entry_id, fields, force_reprice)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - Redis trouble mid-way: try again later
            tries += 1
            msg = self.ctx.redact(f"{type(e).__name__}: {e}")
            self.ctx.stats["errors"] += 1
            if tries >= self.ctx.cfg.max_deliveries:
                log.error("liquidator: giving up on %s %s after %d tries: %s", stream,
                          entry_id.decode(), tries, msg)
                with contextlib.suppress(Exception):
                    await self.outcomes.dead_raw(stream, entry_id, fields,
                                         f"failed {tries} times: {msg}")
                return
            delay = self.ctx.backoff(attempt=tries - 1).next()
            self.ctx.stats["retries"] += 1
            log.warning("liquidator: %s %s failed (%s); again in %.1fs", stream,
                        entry_id.decode(), msg, delay)
            if not self.ctx.stopping:
                self.defer((stream, entry_id), fields, delay, force_reprice, tries)

    async def _on_alert(self, entry_id: bytes, fields: dict, force_reprice: bool) -> None:
        r = self.ctx.client
        raw = fields.get(b"data")
        try:
            event = orjson.loads(raw) if raw is not None else None
            reason = check_event(event)
        except (orjson.JSONDecodeError, BadEvent) as e:
            self.ctx.stats["malformed"] += 1
            await self.outcomes.dead_raw(self.ctx.alerts, entry_id, fields, f"malformed alert: {e}")
            return
        if reason is None:
            self.ctx.stats["ignored"] += 1
            await r.xack(self.ctx.alerts, self.ctx.group, entry_id)
            return
        job = Job(self.ctx.alerts, entry_id, fields, event, reason, force_reprice=force_reprice)
        if await r.exists(self.ctx.keys.done(job.event_id)):
            self.ctx.stats["duplicates"] += 1
            log.info("liquidator: event %s already done; acknowledged without acting",
                     job.event_id)
            await r.xack(self.ctx.alerts, self.ctx.group, entry_id)
            return
        orig = event.get("restored_event_id") if event.get("restored") is True else None
        if isinstance(orig, str) and orig and await r.exists(self.ctx.keys.done(orig)):
            # a restarted monitor re-announcing a tier whose event was already handled:
            # recorded done too, so a later restart's re-announcement of it is skipped as well
            log.info("liquidator: event %s re-announces %s, already done; not acted on",
                     job.event_id, orig)
            await self.outcomes.commit(job, "restored_done", [], detail={"of": orig})
            return
        mode = self.ctx.cfg.mode_for(event.get("profile"))
        if mode == "notify":
            await self.outcomes.notify(job)
        elif mode == "approve":
            await self.outcomes.park(job, "approval_required")
        else:
            await self._deliver(job)

    async def _on_approved(self, entry_id: bytes, fields: dict) -> None:
        r = self.ctx.client
        raw_id = fields.get(b"event_id")
        eid = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        rec_raw = await r.hget(self.ctx.keys.approvals, eid) if eid else None
        rec = orjson.loads(rec_raw) if rec_raw is not None else None
        if rec is None or rec.get("state") != "approved":
            await r.xack(self.ctx.approved, self.ctx.group, entry_id)
            return
        job = Job(self.ctx.approved, entry_id, fields, rec["event"], rec["reason"],
                  source="approved", approval=rec)
        if await r.exists(self.ctx.keys.done(eid)):
            pipe = r.pipeline(transaction=True)
            pipe.hdel(self.ctx.keys.approvals, eid)
            pipe.xack(self.ctx.approved, self.ctx.group, entry_id)
            await pipe.execute()
            return
        await self._deliver(job)

    # ------------------------------------------------------------------ delivery
    async def _deliver(self, job: Job) -> None:
        r = self.ctx.client
        rel = job.event.get("release_at")
        if self.ctx.cfg.hold_outside_sessions and isinstance(rel, int) \
                and not isinstance(rel, bool):
            wait = (rel - self.ctx.clock()) / 1e9
            if wait > 0:  # a plan made outside a session: its orders go at the next start
                self.ctx.stats["held"] += 1
                log.info("liquidator: event %s was planned outside a trading session; its "
                         "orders wait %.1fs for the next session", job.event_id, wait)
                self.defer(job, None, wait, job.force_reprice, held=True)
                return
        token = f"{self.ctx.consumer}:{uuid.uuid4().hex[:12]}"
        lock = self.ctx.keys.lock(job.event_id)
        if not await r.set(lock, token, nx=True, px=self.ctx.lock_ms):
            holder = await r.get(lock)
            self.ctx.stats["busy"] += 1
            log.info("liquidator: event %s is being handled by %s; looking again later",
                     job.event_id, holder.decode() if holder else "another worker")
            self.defer(job, None, max(0.05, min(self.ctx.cfg.lock_ttl / 2, 5.0)),
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
        every = max(0.02, min(self.ctx.cfg.lock_ttl, self.ctx.cfg.claim_idle) / 3)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every)
            if done.is_set():
                return
            with contextlib.suppress(Exception):
                await self._refresh(keys=[lock], args=[token, self.ctx.lock_ms])
                await self.ctx.client.xclaim(job.stream, self.ctx.group, self.ctx.consumer, 0,
                                          [job.entry_id], justid=True)

    async def _deliver_locked(self, job: Job) -> None:
        r, c = self.ctx.client, self.ctx.cfg
        eid, acct = job.event_id, job.account_id
        if await r.exists(self.ctx.keys.done(eid)):  # finished by another worker meanwhile
            await self.outcomes.ack_done(job)
            return
        raw = await r.get(self.ctx.keys.attempt(eid))
        resumed = raw is not None
        if resumed:
            orders = orjson.loads(raw)["orders"]
            self.ctx.stats["resumed"] += 1
            log.warning("liquidator: event %s was handed to the hook before without a result; "
                        "re-sending the same %d order(s)", eid, len(orders))
        else:
            if await self._killed():
                await self.outcomes.park(job, "kill_switch")
                return
            cd = self.ctx.keys.cooldown(acct)
            if job.source == "auto" and c.cooldown > 0:
                cd_ms = max(1, int(c.cooldown * 1000))
                if not await r.set(cd, eid, nx=True, px=cd_ms):
                    holder = await r.get(cd)
                    if holder is not None and holder.decode() != eid:
                        left = await r.pttl(cd)
                        self.ctx.stats["cooldown_deferred"] += 1
                        log.info("liquidator: account %s is cooling down after %s; event %s "
                                 "waits %.1fs and is then re-priced", acct, holder.decode(),
                                 eid, max(left, 0) / 1000)
                        self.defer(job, None, max(0.05, left / 1000 + 0.01), True)
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
                    await self.outcomes.park(job, "stale_plan")
                    return
            if not plan["orders"]:
                await self._uncooldown(acct, eid)
                residual = plan.get("residual") or 0
                if residual > 0:
                    await self.outcomes.dead_letter(
                        job, [], f"the plan has no order that can trade (suspended or at the "
                                 f"limit); residual {residual} still needed")
                else:
                    await self.outcomes.commit(job, "not_required", [],
                                       detail={"ratio_after": plan.get("ratio_after")})
                return
            by = job.approval.get("decided_by") if job.approval else None
            orders = build_orders(job.event, plan, job.reason, approved_by=by)
            attempt = {"orders": orders, "consumer": self.ctx.consumer, "ts": time.time_ns()}
            if not await r.set(self.ctx.keys.attempt(eid), orjson.dumps(attempt), nx=True,
                               ex=self.ctx.done_ex):
                orders = orjson.loads(await r.get(self.ctx.keys.attempt(eid)))["orders"]
                resumed = True
        await self._send(job, orders, resumed)

    async def _reprice(self, job: Job) -> dict | None:
        c = self.ctx.cfg
        backoff = self.ctx.backoff()
        last = ""
        for n in range(1, c.max_attempts + 1):
            try:
                plan = await self.repricer.reprice(job.event)
                self.ctx.stats["repriced"] += 1
                return plan
            except PermanentRepriceError as e:
                last = str(e)
                break
            except RepriceError as e:
                last = str(e)
                self.ctx.stats["reprice_failures"] += 1
                log.warning("liquidator: re-pricing %s (account %s) failed (attempt %d/%d): %s",
                            job.event_id, job.account_id, n, c.max_attempts, last)
            if n < c.max_attempts:
                self.ctx.stats["retries"] += 1
                await self.ctx.sleep(backoff.next())
                if self.ctx.stopping:
                    return None  # left pending: another worker or the next run goes on
        await self._uncooldown(job.account_id, job.event_id)
        await self.outcomes.dead_letter(job, [], f"re-pricing failed: {last}")
        return None

    async def _send(self, job: Job, orders: list[dict], resumed: bool) -> None:
        c = self.ctx.cfg
        backoff = self.ctx.backoff()
        last = ""
        n = 0
        for n in range(1, c.max_attempts + 1):
            await self.rate_limit(len(orders))
            if await self._killed():  # read right before every hook call
                if resumed or n > 1:  # the hook may have them: only these exact orders
                    await self.outcomes.park(job, "kill_switch", orders, frozen=True)
                else:  # never handed over: forget them, re-priced if approved later
                    await self.ctx.client.delete(self.ctx.keys.attempt(job.event_id))
                    await self._uncooldown(job.account_id, job.event_id)
                    await self.outcomes.park(job, "kill_switch", orders)
                return
            try:
                if self.hook.transactional:
                    await self.outcomes.commit(job, "sent", orders, hook=self.hook)
                else:
                    await self.hook.send(orders, job.event_id)
                    await self.outcomes.commit(job, "sent", orders)
                return
            except PermanentHookError as e:
                last = str(e)
                self.ctx.stats["hook_failures"] += 1
                log.error("liquidator: hook %s refused event %s: %s", self.hook.name,
                          job.event_id, last)
                break
            except HookError as e:
                last = str(e)
                self.ctx.stats["hook_failures"] += 1
                log.warning("liquidator: hook %s failed for event %s (attempt %d/%d): %s",
                            self.hook.name, job.event_id, n, c.max_attempts, last)
            if n < c.max_attempts:
                self.ctx.stats["retries"] += 1
                await self.ctx.sleep(backoff.next())
                if self.ctx.stopping:
                    return
        await self.outcomes.dead_letter(job, orders, f"hook {self.hook.name} failed {n} time(s): "
                                             f"{last}")

    async def _killed(self) -> bool:
        return bool(await self.ctx.client.exists(self.ctx.keys.kill))

    async def rate_limit(self, n: int) -> int | None:
        """Fixed one-second windows shared by every worker; a plan larger than the limit goes
        alone in an otherwise empty window. Returns the window (Unix second) it went into."""
        lim = self.ctx.cfg.max_orders_per_second
        if lim <= 0:
            return None
        r = self.ctx.client
        while True:
            now = time.time()
            key = self.ctx.keys.rate(int(now))
            pipe = r.pipeline(transaction=True)
            pipe.incrby(key, n)
            pipe.expire(key, 5)
            total = (await pipe.execute())[0]
            if total <= lim or total == n:
                return int(now)
            await r.decrby(key, n)
            self.ctx.stats["rate_limited"] += 1
            await asyncio.sleep(max(0.001, int(now) + 1 - time.time()) + random.uniform(0, 0.01))

    async def _uncooldown(self, account: str, eid: str) -> None:
        """Nothing was sent for `eid`: free the account's cool-down if `eid` took it."""
        await self._release(keys=[self.ctx.keys.cooldown(account)], args=[eid])

