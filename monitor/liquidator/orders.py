"""Which alert events the liquidator acts on, the orders it makes of their plans, and the plan
re-check against the monitor (`plan_mismatch`).

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
CASH_REPAYMENT = "cash_repayment"  # the `kind` and `side` of the plan's first instruction


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
    for k in ("cash_repayment", "interest_repaid", "principal_repaid"):
        x = plan.get(k)
        if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))
                              or not x >= 0 or x == float("inf")):
            raise BadEvent(f"plan: bad {k} {x!r}"[:200])
    return plan


def cash_repayment(plan: dict) -> float:
    """Yuan the plan repays from free cash before its orders (0 when none)."""
    return float(plan.get("cash_repayment") or 0.0)


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
    """One order object per plan row (see docs/liquidation.md, "Orders"); a plan with a cash
    repayment (free cash first, margin-rules.md §4) starts with it: row 0, `kind` and `side`
    `cash_repayment`, `value` the yuan to repay (`interest` first, then `principal`)."""
    ts = time.time_ns() if ts_ns is None else ts_ns
    rows = list(plan["orders"])
    repay = cash_repayment(plan)
    if repay > 0:
        rows.insert(0, {"kind": CASH_REPAYMENT, "symbol": None, "side": CASH_REPAYMENT,
                        "qty": 0, "price": None, "value": repay,
                        "interest": float(plan.get("interest_repaid") or 0.0),
                        "principal": float(plan.get("principal_repaid", repay) or 0.0)})
    # a re-priced plan carries the account's figures now; else they are the trigger's
    shortfall = plan.get("shortfall", event.get("shortfall", 0.0)) or 0.0
    status = plan.get("liquidation_status", event.get("liquidation_status"))
    out = []
    for i, o in enumerate(rows):
        order = {
            "order_id": order_id(event["event_id"], i),
            "event_id": event["event_id"],
            "account_id": event["account_id"],
            "kind": o.get("kind", "order"),
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
        if o.get("kind") == CASH_REPAYMENT:
            order["interest"] = o["interest"]
            order["principal"] = o["principal"]
        for k in ("purpose", "contract_id"):  # what the order sells (margin-rules.md §4)
            if isinstance(o.get(k), str):
                order[k] = o[k]
        if approved_by is not None:
            order["approved_by"] = approved_by
        out.append(order)
    return out


LONG_KINDS = ("collateral", "financed")


def holdings(account_doc: dict) -> dict[tuple[str, str], int]:
    """Shares a plan may trade per (symbol, side), from the monitor's account answer
    (`positions`: `sell` up to the long shares, `buy_to_cover` up to the short ones)."""
    out: dict[tuple[str, str], int] = {}
    for p in account_doc.get("positions") or []:
        if not isinstance(p, dict) or not isinstance(p.get("symbol"), str):
            continue
        q = p.get("qty")
        if isinstance(q, bool) or not isinstance(q, int) or q <= 0:
            continue
        side = "sell" if p.get("kind") in LONG_KINDS else \
            "buy_to_cover" if p.get("kind") == "short" else None
        if side is not None:
            key = (p["symbol"], side)
            out[key] = out.get(key, 0) + q
    return out


def plan_mismatch(plan: dict, account_doc: dict, monitor_event: dict | None, event: dict,
                  check_origin: bool) -> str | None:
    """Why the plan must not be sent (None: it may). The account must hold what the plan
    trades (quantities per security and side not above the position, per the monitor now);
    with `check_origin` (a plan taken from the event, not re-priced by the monitor), the
    monitor must hold the event and its plan must be this plan."""
    if account_doc.get("account_id", event.get("account_id")) != event.get("account_id"):
        return "the monitor's answer is about another account"
    held = holdings(account_doc)
    want: dict[tuple[str, str], int] = {}
    for o in plan.get("orders") or []:
        key = (o["symbol"], o["side"])
        want[key] = want.get(key, 0) + int(o["qty"])
    for (sym, side), q in sorted(want.items()):
        have = held.get((sym, side), 0)
        if q > have:
            what = "long" if side == "sell" else "short"
            return (f"{side} {q} {sym}: the account holds {have} {what} shares of it "
                    f"(the monitor's positions now)")
    if check_origin:
        if monitor_event is None:
            return f"the monitor holds no event {event.get('event_id')!r}"
        if monitor_event.get("plan") != plan:
            return (f"the plan is not the one the monitor published in event "
                    f"{event.get('event_id')!r}")
        if monitor_event != event:
            return (f"the event is not the one the monitor published as "
                    f"{event.get('event_id')!r}")
    return None
