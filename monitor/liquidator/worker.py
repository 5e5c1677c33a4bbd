"""The liquidation worker: a Redis Streams consumer-group member on the monitor's alert stream.

    XREADGROUP GROUP <group> <consumer> BLOCK … STREAMS <alerts> <prefix>:approved > >

Several workers (same group, different consumer names) share the work. Per entry:

0. With ``alert_key_file``: an alert entry without a signature (``unsigned``) or whose
   signature does not verify (``bad_signature``) is moved to the dead-letter stream and
   counted, never looked at further (monitor/adapters/signing.py).
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
   re-priced first. With ``confirm_plans`` the plan is then re-checked with the monitor
   before its orders are frozen: the account must hold what it trades and, for a plan taken
   from the event, the monitor must have published that event with that plan; else the
   entry is dead-lettered (``plan_mismatch``). Per account, a cool-down
   (``<prefix>:cooldown:<account>``, SET NX) defers a second plan; the deferred plan is
   re-priced when its turn comes. A global fixed-window counter (``<prefix>:rate:<second>``)
   caps orders per second over all workers. The kill switch is read right before every hook
   call.
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

This module composes the worker and runs its loop; the parts are intake.py (reading and
reclaiming entries), policy.py (steps 1-4) and commit.py (step 5 and every other outcome).
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from feeds.net import mask_url, redis_client, url_secrets
from monitor.liquidator.commit import Outcomes
from monitor.liquidator.config import LiquidatorConfig
from monitor.liquidator.context import WorkerContext
from monitor.liquidator.hooks import Hook, open_hook
from monitor.liquidator.intake import Intake
from monitor.liquidator.orders import Keys
from monitor.liquidator.policy import Policy
from monitor.liquidator.repricer import Repricer, open_repricer

log = logging.getLogger("monitor.liquidator")


class Liquidator:
    """One worker. ``await Liquidator(cfg).run(until_idle=None)``; :meth:`stop` ends it (entries
    being handled are finished or left pending for another worker)."""

    def __init__(self, cfg: LiquidatorConfig, *, hook: Hook | None = None,
                 repricer: Repricer | None | str = "config", client: Any = None,
                 clock=time.time_ns):
        """`clock` (ns since the epoch) is what `release_at` is compared with."""
        self.cfg = cfg.check()
        self.hook = hook if hook is not None else open_hook(
            cfg.hook, secret=cfg.webhook_secret, dry_run=cfg.dry_run,
            http=cfg.http_settings("webhook"))
        self.repricer = (open_repricer(cfg.repricer, token=cfg.repricer_token,
                                       http=cfg.http_settings("repricer"))
                         if repricer == "config" else repricer)
        if cfg.alert_key_file and cfg.alert_keys is None:
            cfg.resolve_secrets()
        # the plan re-check with the monitor (confirm_plans): needs the HTTP repricer's calls
        if cfg.confirming and not (hasattr(self.repricer, "account")
                                   and hasattr(self.repricer, "event")):
            raise ValueError("confirm_plans: the repricer cannot answer the re-check (give "
                             "repricer = \"http(s)://MONITOR:PORT\", or confirm_plans = false)")
        keys = Keys(cfg.key_prefix + (":dry-run" if cfg.dry_run else ""))
        self.ctx = WorkerContext(
            cfg=self.cfg, keys=keys, group=cfg.group + (".dry-run" if cfg.dry_run else ""),
            consumer=cfg.consumer, alerts=cfg.alerts_stream, approved=keys.approved,
            clock=clock, secrets=url_secrets(cfg.redis), hook_name=self.hook.name,
            client=client)
        self.outcomes = Outcomes(self.ctx)
        self.intake = Intake(self.ctx, self.outcomes)
        # signed alerts (monitor/adapters/signing.py): with keys, every alert entry must carry
        # a valid signature; without them (insecure_unsigned_alerts) nothing is verified
        self.policy = Policy(self.ctx, self.outcomes, self.hook, self.repricer,
                             defer=self.intake.defer, verifier=cfg.alert_keys,
                             confirm=cfg.confirming)
        self.intake.bind(self.policy.handle)
        self._own_client = client is None
        self._masked = mask_url(cfg.redis)
        # read by /metrics (monitor/liquidator/metrics.py): XPENDING per stream, approvals
        # waiting, kill switch, whether Redis answered the last loop, and when that was
        self.gauges: dict[str, float] = {}
        self.redis_up = False
        self.last_loop_ns = 0
        self._claim_every = min(max(cfg.claim_idle / 2, 0.05), 5.0)

    # ------------------------------------------------------------------ what others read
    @property
    def stats(self):
        """Counters by outcome and incident (read by /metrics and the tests)."""
        return self.ctx.stats

    @property
    def group(self) -> str:
        return self.ctx.group

    @property
    def consumer(self) -> str:
        return self.ctx.consumer

    @property
    def alerts(self) -> str:
        return self.ctx.alerts

    @property
    def _client(self) -> Any:
        return self.ctx.client

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        self.ctx.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.ctx.stopping

    @property
    def in_progress(self) -> int:
        """Entries being handled now."""
        return len(self.intake.tasks)

    @property
    def waiting(self) -> int:
        """Entries this worker holds for later (a retry's backoff, a cool-down, a busy lock)."""
        return len(self.intake.local)

    async def _refresh_gauges(self) -> None:
        k = self.ctx.keys
        pipe = self.ctx.client.pipeline(transaction=False)
        pipe.xpending(self.ctx.alerts, self.ctx.group)
        pipe.xpending(self.ctx.approved, self.ctx.group)
        pipe.hlen(k.approvals)
        pipe.exists(k.kill)
        alerts, approved, approvals, kill = await pipe.execute()
        self.gauges = {"pending_alerts": (alerts or {}).get("pending", 0),
                       "pending_approved": (approved or {}).get("pending", 0),
                       "approvals": approvals, "kill_switch": 1 if kill else 0}

    async def _setup(self) -> None:
        if self.ctx.client is None:
            self.ctx.client = redis_client(
                self.cfg.redis, cluster=self.cfg.redis_cluster, socket_connect_timeout=5,
                socket_timeout=max(10.0, self.cfg.block + 5.0), health_check_interval=30)
        self.policy.register_scripts(self.ctx.client)
        await self.intake.create_groups()

    async def run(self, until_idle: float | None = None) -> int:
        """Work until :meth:`stop` (or, with ``until_idle``, until nothing was left to do for
        that many seconds: no new entry, nothing in hand, nothing pending in the group)."""
        c = self.cfg
        log.info("liquidator %s: group %s on %s at %s; hook %s; modes %s (default %s)%s%s",
                 self.consumer, self.group, self.alerts, self._masked, self.hook.name,
                 c.modes or "-", c.mode,
                 f"; repricer {self.repricer.name}" if self.repricer else "; no repricer",
                 "; DRY RUN: orders are logged, never sent" if c.dry_run else "")
        backoff = self.ctx.backoff()
        t0 = time.monotonic()
        while not self.stopping:
            try:
                await self._setup()
                break
            except Exception as e:  # noqa: BLE001 - Redis down at start: keep trying
                log.warning("liquidator: Redis %s unavailable (%s); retrying", self._masked,
                            self.ctx.redact(f"{type(e).__name__}: {e}"))
                if until_idle is not None and time.monotonic() - t0 >= max(until_idle, 1.0):
                    log.error("liquidator: no Redis for %.1fs; giving up (--until-idle)",
                              time.monotonic() - t0)
                    await self._finish()
                    return 1
                await self.ctx.sleep(backoff.next())
        last_work = time.monotonic()
        next_claim = next_gauges = 0.0
        backoff = self.ctx.backoff()
        try:
            while not self.stopping:
                try:
                    now = time.monotonic()
                    if now >= next_claim:
                        if await self.intake.reclaim():
                            last_work = time.monotonic()
                        next_claim = time.monotonic() + self._claim_every
                    if now >= next_gauges:
                        await self._refresh_gauges()
                        next_gauges = time.monotonic() + min(5.0, self._claim_every)
                    self.intake.start_due()
                    free = c.concurrency - len(self.intake.tasks)
                    wait = min(c.block, max(0.01, next_claim - time.monotonic()))
                    due = self.intake.next_due()
                    if due is not None:
                        wait = min(wait, max(0.01, due - time.monotonic()))
                    if free > 0:
                        got = await self.intake.read(free, wait)
                        if got:
                            last_work = time.monotonic()
                    else:
                        await asyncio.wait(list(self.intake.tasks.values()), timeout=wait,
                                           return_when=asyncio.FIRST_COMPLETED)
                    if self.intake.tasks or self.intake.local:
                        last_work = time.monotonic()
                    elif until_idle is not None and \
                            time.monotonic() - last_work >= until_idle and \
                            await self.intake.group_idle():
                        log.info("liquidator %s: idle for %.1fs, exiting", self.consumer,
                                 until_idle)
                        break
                    backoff.reset()
                    self.redis_up, self.last_loop_ns = True, time.time_ns()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - Redis outage: back off, go on
                    self.ctx.stats["redis_errors"] += 1
                    self.redis_up, self.last_loop_ns = False, time.time_ns()
                    log.warning("liquidator: Redis error (%s); retrying in %.1fs",
                                self.ctx.redact(f"{type(e).__name__}: {e}"), backoff.peek())
                    await self.ctx.sleep(backoff.next())
                    if "NOGROUP" in str(e):  # Redis came back empty (no persistence)
                        with contextlib.suppress(Exception):
                            await self._setup()
        finally:
            await self._finish()
        return 0

    async def _finish(self, grace: float = 10.0) -> None:
        tasks = list(self.intake.tasks.values())
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
        if self._own_client and self.ctx.client is not None:
            with contextlib.suppress(Exception):
                await self.ctx.client.aclose()
