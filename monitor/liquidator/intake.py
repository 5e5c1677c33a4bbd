"""Intake: the consumer-group side of a worker.

XREADGROUP on the alert stream and the approved-plans stream, XAUTOCLAIM of entries a crashed or
stuck worker left pending (an entry delivered more than ``max_deliveries`` times is
dead-lettered), and the worker's own queue of entries it will handle again later (a retry's
backoff, a cool-down, a busy lock, a plan waiting for the next session). Each entry is handled in
its own task by the handler bound with :meth:`Intake.bind` (the policy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from monitor.liquidator.commit import Outcomes
from monitor.liquidator.context import Job, WorkerContext

log = logging.getLogger("monitor.liquidator")

Handler = Callable[[str, bytes, dict, bool, int], Awaitable[None]]


@dataclass(slots=True)
class Deferred:
    """An entry this worker will (re)handle at `due` (monotonic)."""

    due: float
    fields: dict
    force_reprice: bool = False
    tries: int = 0
    held: bool = False  # waiting for the event's release_at


class Intake:
    """Reads, reclaims and schedules entries; :attr:`tasks` are those being handled now,
    :attr:`local` those held for later."""

    def __init__(self, ctx: WorkerContext, outcomes: Outcomes):
        self.ctx = ctx
        self.outcomes = outcomes
        self.handle: Handler | None = None
        self.tasks: dict[tuple[str, bytes], asyncio.Task] = {}
        self.local: dict[tuple[str, bytes], Deferred] = {}

    def bind(self, handle: Handler) -> None:
        """`handle(stream, entry_id, fields, force_reprice, tries)` handles one entry."""
        self.handle = handle

    async def create_groups(self) -> None:
        """The consumer group on both streams (BUSYGROUP: it exists already)."""
        from redis.exceptions import ResponseError

        for stream, start in ((self.ctx.alerts, self.ctx.cfg.group_start),
                              (self.ctx.approved, "0")):
            try:
                await self.ctx.client.xgroup_create(stream, self.ctx.group, id=start,
                                                    mkstream=True)
                log.info("liquidator: created group %s on %s (from %s)", self.ctx.group,
                         stream, "the beginning" if start == "0" else "new entries")
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def next_due(self) -> float | None:
        """When the earliest held entry is due (monotonic), or None."""
        return min((x.due for x in self.local.values()), default=None)

    async def read(self, count: int, wait: float) -> int:
        c = self.ctx
        res = await c.client.xreadgroup(
            c.group, c.consumer, {c.alerts: ">", c.approved: ">"}, count=count,
            block=max(1, int(wait * 1000)))
        n = 0
        for stream, entries in res or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                if fields is None:
                    continue
                self.spawn(name, entry_id, fields)
                n += 1
        return n

    async def reclaim(self) -> int:
        """XAUTOCLAIM entries idle for claim_idle (a crashed or stuck worker's)."""
        r = self.ctx.client
        n = 0
        held = [k for k, x in self.local.items() if x.held]
        for stream in {k[0] for k in held}:  # ours, waiting for release_at: keep them ours
            await r.xclaim(stream, self.ctx.group, self.ctx.consumer, 0,
                           [k[1] for k in held if k[0] == stream], justid=True)
        for stream in (self.ctx.alerts, self.ctx.approved):
            start = "0-0"
            for _ in range(100):  # pages; bounded so one claim pass cannot run away
                if len(self.local) >= 4 * self.ctx.cfg.concurrency:
                    break
                res = await r.xautoclaim(stream, self.ctx.group, self.ctx.consumer,
                                         self.ctx.claim_ms, start_id=start,
                                         count=max(10, self.ctx.cfg.concurrency))
                nxt, claimed = res[0], res[1]
                deleted = res[2] if len(res) > 2 else []
                for entry_id in deleted or []:
                    self.ctx.stats["trimmed"] += 1
                    await self.outcomes.dead_raw(stream, entry_id, None,
                                                 "the entry was trimmed from the stream before "
                                                 "it was handled", ack=False)
                for entry_id, fields in claimed:
                    key = (stream, entry_id)
                    if fields is None or key in self.tasks or key in self.local:
                        continue
                    n += 1
                    self.ctx.stats["reclaimed"] += 1
                    info = await r.xpending_range(stream, self.ctx.group, entry_id, entry_id, 1)
                    times = info[0]["times_delivered"] if info else 1
                    if times > self.ctx.cfg.max_deliveries:
                        await self.outcomes.dead_raw(stream, entry_id, fields,
                                             f"delivered {times} times without completing")
                        continue
                    log.info("liquidator %s: reclaimed %s %s (delivery %d)", self.ctx.consumer,
                             stream, entry_id.decode(), times)
                    self.local[key] = Deferred(0.0, fields)
                nxt = nxt.decode() if isinstance(nxt, bytes) else nxt
                if nxt == "0-0":
                    break
                start = nxt
        return n

    def spawn(self, stream: str, entry_id: bytes, fields: dict, force_reprice: bool = False,
               tries: int = 0) -> None:
        key = (stream, entry_id)
        if key in self.tasks:
            return
        self.local.pop(key, None)
        t = asyncio.create_task(self.handle(stream, entry_id, fields, force_reprice, tries),
                                name=f"liq-{entry_id.decode()}")
        self.tasks[key] = t
        t.add_done_callback(lambda _t, k=key: self.tasks.pop(k, None))

    def start_due(self) -> None:
        now = time.monotonic()
        for key, loc in sorted(self.local.items(), key=lambda kv: kv[1].due):
            if len(self.tasks) >= self.ctx.cfg.concurrency or loc.due > now:
                break
            self.spawn(key[0], key[1], loc.fields, loc.force_reprice, loc.tries)

    def defer(self, job_or_key: Job | tuple[str, bytes], fields: dict | None, delay: float,
               force_reprice: bool = False, tries: int = 0, held: bool = False) -> None:
        if isinstance(job_or_key, Job):
            key = (job_or_key.stream, job_or_key.entry_id)
            fields = job_or_key.fields
        else:
            key = job_or_key
        self.local[key] = Deferred(time.monotonic() + delay, fields or {}, force_reprice, tries,
                                  held)

    async def group_idle(self) -> bool:
        for stream in (self.ctx.alerts, self.ctx.approved):
            info = await self.ctx.client.xpending(stream, self.ctx.group)
            if info and info.get("pending"):
                return False
        return True

