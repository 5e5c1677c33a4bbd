"""The liquidator's control surface: the approvals list and the kill switch, for the CLI
(`margin-monitor approvals …`, `margin-monitor kill-switch …`) and for the risk desk.

Everything lives in Redis (the liquidator's own Redis, keys under ``key_prefix``), so any
process may call it and every worker sees the result at once::

    from monitor.liquidator import LiquidationControl

    ctl = LiquidationControl("redis://127.0.0.1:6379/0")
    for rec in await ctl.pending():        # plans waiting for a decision, oldest first
        print(rec["event_id"], rec["account_id"], rec["held"], rec["orders"])
    await ctl.approve(event_id, by="zhang.wei", note="called the client, no answer")
    await ctl.reject(event_id, by="zhang.wei", note="client deposited")
    await ctl.engage_kill_switch(by="risk-head", reason="broker gateway misbehaving")
    await ctl.kill_switch()                # None, or {"by", "reason", "ts"}
    await ctl.release_kill_switch(by="risk-head")
    await ctl.aclose()

An approval record (``pending()``, ``get()``): ``event_id``, ``account_id``, ``profile``,
``reason`` (``forced_liquidation`` | ``call_expired`` | ``contract_expired``), ``held`` (why
it waits: ``approval_required``, ``kill_switch``, ``stale_plan``), ``state`` (``pending`` or
``approved``: approved and queued for a worker), ``created_ns``, ``plan`` (at the trigger's prices),
``orders`` (what would be sent; re-priced when older than ``max_plan_age`` at send time unless
``frozen``), ``frozen`` (these exact orders were already handed to the hook once, so they are
re-sent unchanged), ``event`` (the alert), and once decided ``decided_by``, ``decided_ns``,
``note``.

Approving queues the plan for the workers (stream ``<prefix>:approved``); they send it through
the same path as automatic plans (idempotency, rate limit, dead letters). Approving is refused
while the kill switch is on. Rejecting records the event as done (``rejected``), so a
redelivered alert never brings it back.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from monitor.errors import ControlError
from monitor.liquidator.orders import Keys

AUDIT_MAXLEN = 100_000


def audit_entry(action: str, **fields: Any) -> dict[bytes, bytes]:
    rec = {"action": action, "ts": time.time_ns(), **fields}
    return {b"data": orjson.dumps(rec)}


class LiquidationControl:
    """Approvals and kill switch. ``redis`` is a URL or a ``redis.asyncio.Redis`` client (not
    closed by :meth:`aclose` when passed in)."""

    def __init__(self, redis: Any, *, key_prefix: str = "margin:liq",
                 done_ttl: float = 7 * 86400.0, cluster: bool = False):
        if isinstance(redis, str):
            from feeds.net import redis_client

            self._r = redis_client(redis, cluster=cluster, socket_connect_timeout=5,
                                   socket_timeout=10)
            self._own = True
        else:
            self._r = redis
            self._own = False
        self.keys = Keys(key_prefix)
        self.done_ttl = done_ttl

    async def aclose(self) -> None:
        if self._own:
            await self._r.aclose()

    # ------------------------------------------------------------------ approvals
    async def pending(self) -> list[dict]:
        """Every plan waiting in the approvals list (pending or approved-not-yet-sent), oldest
        first."""
        raw = await self._r.hgetall(self.keys.approvals)
        recs = [orjson.loads(v) for v in raw.values()]
        recs.sort(key=lambda r: (r.get("created_ns", 0), r.get("event_id", "")))
        return recs

    async def get(self, event_id: str) -> dict | None:
        raw = await self._r.hget(self.keys.approvals, event_id)
        return orjson.loads(raw) if raw is not None else None

    async def approve(self, event_id: str, by: str, note: str = "") -> dict:
        """Queue a pending plan for sending; returns the updated record."""

        async def check(pipe):
            if await pipe.get(self.keys.kill) is not None:
                raise ControlError("the kill switch is on: no order can be sent; "
                                   "release it first (kill-switch off)")

        def write(pipe, rec, now):
            pipe.hset(self.keys.approvals, event_id, orjson.dumps(rec))
            pipe.xadd(self.keys.approved, {b"event_id": event_id.encode(),
                                           b"by": rec["decided_by"].encode()},
                      maxlen=AUDIT_MAXLEN, approximate=True)

        return await self._decide(event_id, "approved", by, note, write, check,
                                  watch=(self.keys.kill,))

    async def reject(self, event_id: str, by: str, note: str = "") -> dict:
        """Drop a pending plan for good (recorded as done: ``rejected``)."""

        def write(pipe, rec, now):
            done = {"outcome": "rejected", "by": rec["decided_by"], "note": rec["note"],
                    "ts": now, "order_ids": []}
            pipe.hdel(self.keys.approvals, event_id)
            pipe.set(self.keys.done(event_id), orjson.dumps(done), nx=True,
                     ex=max(1, int(self.done_ttl)))

        return await self._decide(event_id, "rejected", by, note, write)

    async def _decide(self, event_id, state, by, note, write, check=None, watch=()) -> dict:
        """Move a pending plan to `state` under an optimistic lock on the approvals list (and
        `watch`), writing `write(pipe, record, now)` and an audit entry in one transaction."""
        from redis.exceptions import WatchError

        by = _who(by)
        while True:
            async with self._r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.keys.approvals, *watch)
                    raw = await pipe.hget(self.keys.approvals, event_id)
                    if raw is None:
                        raise ControlError(f"no plan {event_id!r} in the approvals list")
                    rec = orjson.loads(raw)
                    if rec.get("state") != "pending":
                        raise ControlError(f"plan {event_id!r} is already {rec.get('state')}")
                    if check is not None:
                        await check(pipe)
                    now = time.time_ns()
                    rec.update(state=state, decided_by=by, decided_ns=now, note=str(note)[:500])
                    pipe.multi()
                    write(pipe, rec, now)
                    pipe.xadd(self.keys.audit, audit_entry(
                        state, event_id=event_id, account_id=rec.get("account_id"), by=by,
                        note=rec["note"]), maxlen=AUDIT_MAXLEN, approximate=True)
                    await pipe.execute()
                    return rec
                except WatchError:
                    continue

    # ------------------------------------------------------------------ kill switch
    async def kill_switch(self) -> dict | None:
        raw = await self._r.get(self.keys.kill)
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # set by hand (`SET margin:liq:kill 1`): still on
            return {"by": None, "reason": raw.decode("utf-8", "replace"), "ts": None}

    async def engage_kill_switch(self, by: str, reason: str = "") -> dict:
        rec = {"by": _who(by), "reason": str(reason)[:500], "ts": time.time_ns()}
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self.keys.kill, orjson.dumps(rec))
        pipe.xadd(self.keys.audit, audit_entry("kill_switch_on", **rec), maxlen=AUDIT_MAXLEN,
                  approximate=True)
        await pipe.execute()
        return rec

    async def release_kill_switch(self, by: str) -> dict | None:
        """Returns what was released (None if the switch was off)."""
        prev = await self.kill_switch()
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self.keys.kill)
        pipe.xadd(self.keys.audit, audit_entry("kill_switch_off", by=_who(by)),
                  maxlen=AUDIT_MAXLEN, approximate=True)
        await pipe.execute()
        return prev

    # ------------------------------------------------------------------ history
    async def audit(self, limit: int = 100) -> list[dict]:
        """The latest actions (sent, held, approved, rejected, dead-lettered, kill switch),
        newest first."""
        rows = await self._r.xrevrange(self.keys.audit, count=max(1, min(int(limit), 10_000)))
        out = []
        for _id, fields in rows:
            rec = orjson.loads(fields[b"data"])
            rec["id"] = _id.decode() if isinstance(_id, bytes) else _id
            out.append(rec)
        return out

    async def done(self, event_id: str) -> dict | None:
        """How an event ended (``outcome``: sent, notified, rejected, dead_letter,
        not_required), or None while it is not done."""
        raw = await self._r.get(self.keys.done(event_id))
        return orjson.loads(raw) if raw is not None else None


def _who(by: str) -> str:
    by = str(by or "").strip()[:100]
    if not by:
        raise ControlError("say who decides (by)")
    return by
