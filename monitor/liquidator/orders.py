"""Which alert events the liquidator acts on, and the orders it makes of their plans.

Pure functions, no I/O. The order schema (one JSON object per order) is the contract with the
broker's order system; docs/liquidation.md states it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from monitor.errors import BadEvent

ACTIONABLE = ("forced_liquidation", "call_expired", "contract_expired")
SIDES = ("sell", "buy_to_cover")


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key the liquidator and its control API use, under one prefix."""

    prefix: str = "margin:liq"

    def done(self, event_id: str) -> str:
        return f"{self.prefix}:done:{event_id}"

    def lock(self, event_id: str) -> str:
        return f"{self.prefix}:lock:{event_id}"

    def attempt(self, event_id: str) -> str:
        return f"{self.prefix}:attempt:{event_id}"

    def cooldown(self, account_id: str) -> str:
        return f"{self.prefix}:cooldown:{account_id}"

    def rate(self, second: int) -> str:
        return f"{self.prefix}:rate:{second}"

    @property
    def kill(self) -> str:
        return f"{self.prefix}:kill"

    @property
    def approvals(self) -> str:
        return f"{self.prefix}:approvals"

    @property
    def approved(self) -> str:
        return f"{self.prefix}:approved"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def notices(self) -> str:
        return f"{self.prefix}:notices"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"


def reason_of(event: dict) -> str | None:
    """`forced_liquidation` for a TIER_CHANGE into FORCED_LIQUIDATION, `call_expired` for
    CALL_EXPIRED, `contract_expired` for CONTRACT_EXPIRED (its plan closes that contract),
    else None (not acted on)."""
    kind = event.get("kind")
    if kind == "TIER_CHANGE" and event.get("tier") == "FORCED_LIQUIDATION":
        return "forced_liquidation"
    if kind == "CALL_EXPIRED":
        return "call_expired"
    if kind == "CONTRACT_EXPIRED":
        return "contract_expired"
    return None


def check_event(event: Any) -> str | None:
    """The reason the event is acted on (None: ignore it); BadEvent when it should be acted on
    but cannot be (no event_id, no account, a malformed plan)."""
    if not isinstance(event, dict):
        raise BadEvent("not a JSON object")
    reason = reason_of(event)
    if reason is None:
        return None
    for k in ("event_id", "account_id"):
        if not isinstance(event.get(k), str) or not event[k]:
            raise BadEvent(f"{k} missing")
    plan = event.get("plan")
    if plan is not None:
        check_plan(plan)
    return reason


def check_plan(plan: Any) -> dict:
    if not isinstance(plan, dict) or not isinstance(plan.get("orders"), list):
        raise BadEvent("plan: expected {orders: [...], ...}")
    for o in plan["orders"]:
        if not isinstance(o, dict):
            raise BadEvent("plan: an order is not an object")
        if not isinstance(o.get("symbol"), str) or o.get("side") not in SIDES:
            raise BadEvent(f"plan: bad symbol/side in {o!r}"[:200])
        q = o.get("qty")
        if isinstance(q, bool) or not isinstance(q, int) or q <= 0:
            raise BadEvent(f"plan: bad qty in {o!r}"[:200])
        for k in ("price", "value"):
            if isinstance(o.get(k), bool) or not isinstance(o.get(k), (int, float)):
                raise BadEvent(f"plan: bad {k} in {o!r}"[:200])
    return plan


def plan_age_s(plan: dict, now_ns: int | None = None) -> float:
    """Seconds since the plan was priced (+inf when it does not say)."""
    p = plan.get("priced_ns")
    if isinstance(p, bool) or not isinstance(p, int):
        return float("inf")
    now = time.time_ns() if now_ns is None else now_ns
    return max(0.0, (now - p) / 1e9)


def order_id(event_id: str, row: int) -> str:
    """Deterministic: the same trigger and row give the same id, whichever worker sends it."""
    return f"{event_id}-{row}"


def build_orders(event: dict, plan: dict, reason: str, ts_ns: int | None = None,
                 approved_by: str | None = None) -> list[dict]:
    """One order object per plan row (see docs/liquidation.md, "Orders")."""
    ts = time.time_ns() if ts_ns is None else ts_ns
    rows = plan["orders"]
    # a re-priced plan carries the account's figures now; else they are the trigger's
    shortfall = plan.get("shortfall", event.get("shortfall", 0.0)) or 0.0
    status = plan.get("liquidation_status", event.get("liquidation_status"))
    out = []
    for i, o in enumerate(rows):
        order = {
            "order_id": order_id(event["event_id"], i),
            "event_id": event["event_id"],
            "account_id": event["account_id"],
            "symbol": o["symbol"],
            "side": o["side"],
            "qty": int(o["qty"]),
            "price": o["price"],
            "value": o["value"],
            "reason": reason,
            "ts": ts,
            "profile": event.get("profile"),
            "row": i,
            "rows": len(rows),
            "priced_ns": plan.get("priced_ns"),
            "ratio_after": plan.get("ratio_after"),
            "residual": plan.get("residual", 0.0),
            "liquidation_status": status,
            "shortfall": shortfall,
        }
        for k in ("purpose", "contract_id"):  # what the order sells (margin-rules.md §4)
            if isinstance(o.get(k), str):
                order[k] = o[k]
        if approved_by is not None:
            order["approved_by"] = approved_by
        out.append(order)
    return out
