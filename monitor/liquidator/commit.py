"""Commit: every outcome of a stream entry recorded in one MULTI/EXEC with its XACK.

``done`` (``<prefix>:done:<event_id>``, WATCHed so that two workers cannot both record one
event), the cool-down, the approvals list, the dead-letter stream, the notices stream and the
audit entry are written in the transaction that acknowledges the entry; a transactional hook's
order XADDs go in the same transaction. Nothing here decides anything: policy.py says which
outcome, this module makes it durable.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from monitor.liquidator.context import Job, WorkerContext
from monitor.liquidator.control import AUDIT_MAXLEN, audit_entry
from monitor.liquidator.hooks import Hook
from monitor.liquidator.orders import build_orders

log = logging.getLogger("monitor.liquidator")

DEAD_MAXLEN = 100_000
NOTICES_MAXLEN = 100_000


class Outcomes:
    """The transactions that end (or park) an entry."""

    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx

    async def commit(self, job: Job, outcome: str, orders: list[dict], *,
                      hook: Hook | None = None, detail: dict | None = None,
                      extra: Any = None) -> bool:
        """Record the outcome atomically with the XACK (and, for a transactional hook, the
        orders). False when the event turned out to be done already (nothing written)."""
        c = self.ctx.cfg
        eid = job.event_id
        ids = [o["order_id"] for o in orders]
        rec = {"outcome": outcome, "order_ids": ids, "consumer": self.ctx.consumer,
               "ts": time.time_ns(), "account_id": job.account_id, "reason": job.reason,
               **(detail or {})}

        def write(pipe: Any) -> None:
            if hook is not None:
                hook.add_to(pipe, orders)
            if extra is not None:
                extra(pipe)
            pipe.set(self.ctx.keys.done(eid), orjson.dumps(rec), ex=self.ctx.done_ex)
            if outcome == "sent":
                pipe.delete(self.ctx.keys.attempt(eid))
            if outcome == "sent" and c.cooldown > 0:
                pipe.set(self.ctx.keys.cooldown(job.account_id), eid,
                         px=max(1, int(c.cooldown * 1000)))
            if job.source == "approved":
                pipe.hdel(self.ctx.keys.approvals, eid)
            pipe.xack(job.stream, self.ctx.group, job.entry_id)
            pipe.xadd(self.ctx.keys.audit, audit_entry(
                outcome, event_id=eid, account_id=job.account_id, reason=job.reason,
                order_ids=ids, consumer=self.ctx.consumer, source=job.source,
                **(detail or {})), maxlen=AUDIT_MAXLEN, approximate=True)

        if not await self._unless_done(job, write):
            self.ctx.stats["duplicates"] += 1
            return False
        self.ctx.stats[outcome] += 1
        if outcome == "sent":
            self.ctx.stats["orders"] += len(orders)
            log.info("liquidator: sent %d order(s) for event %s (account %s, %s%s) via %s",
                     len(orders), eid, job.account_id, job.reason,
                     ", approved" if job.source == "approved" else "", self.ctx.hook_name)
        else:
            log.info("liquidator: event %s (account %s): %s", eid, job.account_id, outcome)
        return True

    async def _unless_done(self, job: Job, write: Any) -> bool:
        """`write(pipe)` in one MULTI/EXEC that WATCHes the event's done marker, retried when
        another worker touched it meanwhile. False, and the entry acknowledged, when the event
        is done already (nothing written)."""
        from redis.exceptions import WatchError

        done_key = self.ctx.keys.done(job.event_id)
        for _ in range(10):
            async with self.ctx.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(done_key)
                    # execute_command: redis-py's cluster pipeline does not await a watched
                    # EXISTS (it splits it across slots); one key needs no split
                    if await pipe.execute_command("EXISTS", done_key):
                        await pipe.unwatch()
                        await self.ack_done(job)
                        return False
                    pipe.multi()
                    write(pipe)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise RuntimeError(f"could not record the outcome of {job.event_id} (contention)")

    async def ack_done(self, job: Job) -> None:
        pipe = self.ctx.client.pipeline(transaction=True)
        if job.source == "approved":
            pipe.hdel(self.ctx.keys.approvals, job.event_id)
        pipe.xack(job.stream, self.ctx.group, job.entry_id)
        await pipe.execute()

    async def notify(self, job: Job) -> None:
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
            pipe.xadd(self.ctx.keys.notices, {b"data": orjson.dumps(notice)},
                      maxlen=NOTICES_MAXLEN, approximate=True)

        await self.commit(job, "notified", [], extra=extra)

    async def park(self, job: Job, held: str, orders: list[dict] | None = None,
                    frozen: bool = False) -> None:
        """Into the approvals list (or back into it, for an approved plan stopped by the kill
        switch), and XACK."""
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

        def write(pipe: Any) -> None:
            if job.source == "approved" or frozen:
                pipe.hset(self.ctx.keys.approvals, eid, orjson.dumps(rec))
            else:
                pipe.hsetnx(self.ctx.keys.approvals, eid, orjson.dumps(rec))
            pipe.xack(job.stream, self.ctx.group, job.entry_id)
            pipe.xadd(self.ctx.keys.audit, audit_entry(
                "held", event_id=eid, account_id=job.account_id, reason=job.reason,
                held=held, consumer=self.ctx.consumer), maxlen=AUDIT_MAXLEN,
                approximate=True)

        if not await self._unless_done(job, write):
            return
        self.ctx.stats[f"held_{held}"] += 1
        log.warning("liquidator: event %s (account %s, %d order(s)) waits in the approvals "
                    "list: %s", eid, job.account_id, len(orders), held)

    async def dead_letter(self, job: Job, orders: list[dict], reason: str,
                          code: str | None = None) -> None:
        """To the dead-letter stream, recorded done; `code` names a refusal (plan_mismatch,
        confirm_failed), else None."""
        entry = {"event_id": job.event_id, "account_id": job.account_id,
                 "reason": reason, "code": code, "trigger": job.reason, "orders": orders,
                 "consumer": self.ctx.consumer, "source": job.source, "ts": time.time_ns(),
                 "stream": job.stream, "entry_id": job.entry_id.decode(), "event": job.event}

        def extra(pipe: Any) -> None:
            pipe.xadd(self.ctx.keys.dead, {b"data": orjson.dumps(entry)}, maxlen=DEAD_MAXLEN,
                      approximate=True)

        if await self.commit(job, "dead_letter", orders, detail={"error": reason[:500]},
                              extra=extra):
            log.error("liquidator: event %s (account %s) moved to %s: %s", job.event_id,
                      job.account_id, self.ctx.keys.dead, reason)

    async def dead_raw(self, stream: str, entry_id: bytes, fields: dict | None, reason: str,
                        ack: bool = True, code: str | None = None) -> None:
        """An entry that is not a usable event: to the dead-letter stream, XACK."""
        data = (fields or {}).get(b"data") if stream == self.ctx.alerts else None
        raw = data.decode("utf-8", "replace")[:65536] if isinstance(data, bytes) else None
        if stream == self.ctx.approved and fields:
            raw = orjson.dumps({k.decode(): v.decode("utf-8", "replace")
                                for k, v in fields.items()}).decode()
        entry = {"event_id": None, "reason": reason, "code": code, "stream": stream,
                 "entry_id": entry_id.decode(), "raw": raw, "consumer": self.ctx.consumer,
                 "ts": time.time_ns()}
        pipe = self.ctx.client.pipeline(transaction=True)
        pipe.xadd(self.ctx.keys.dead, {b"data": orjson.dumps(entry)}, maxlen=DEAD_MAXLEN,
                  approximate=True)
        if ack:
            pipe.xack(stream, self.ctx.group, entry_id)
        pipe.xadd(self.ctx.keys.audit, audit_entry("dead_letter", stream=stream,
                                               entry_id=entry_id.decode(), error=reason,
                                               consumer=self.ctx.consumer),
                  maxlen=AUDIT_MAXLEN, approximate=True)
        await pipe.execute()
        self.ctx.stats["dead_letter"] += 1
        log.error("liquidator: %s entry %s moved to %s: %s", stream, entry_id.decode(),
                  self.ctx.keys.dead, reason)
