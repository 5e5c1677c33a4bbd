"""Account events between ticks (margin-rules.md §6): validated, then applied to the live book.

One JSON object per event (a JSONL line or a Redis stream entry's `data` field):

    {"type": "deposit" | "withdrawal", "account_id", "amount"}
    {"type": "repayment", "account_id", "amount", "source": "cash" | "external"}
    {"type": "fill", "account_id", "symbol", "side", "qty", "price", "fee"?, "margin_ratio"?}
        side: collateral_buy, collateral_sell, financed_buy, sell_to_repay, short_sell,
              buy_to_cover
    {"type": "interest_accrual", "account_id"?, "days"?, "financing_rate", "short_fee_rate",
     "day_count"?}
    {"type": "haircut", "symbol", "haircut"}
    {"type": "suspend" | "resume", "symbol"}
    {"type": "profile", "account_id", "profile"}

Optional on every event: `event_id` (a repeated id is rejected as a duplicate) and `ts` (ns).
An invalid event raises `AccountEventError` with a reason and leaves the book unchanged: every
check runs before the first change.
"""

from __future__ import annotations

from collections import OrderedDict
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import numpy as np

from kernels import units as u
from monitor.core.ledger import Ledger
from monitor.core.state import MarginState
from monitor.errors import AccountEventError

FILL_SIDES = ("collateral_buy", "collateral_sell", "financed_buy", "sell_to_repay",
              "short_sell", "buy_to_cover")
TYPES = ("deposit", "withdrawal", "repayment", "fill", "interest_accrual", "haircut",
         "suspend", "resume", "profile")
MAX_FILL_QTY = 10**12  # shares in one fill: far beyond any real order, keeps qty*price in int64


def money_field(ev, key, *, required=True, positive=True, digits=3) -> int | None:
    v = ev.get(key)
    if v is None:
        if required:
            raise AccountEventError("missing_field", f"{key!r} is required")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise AccountEventError("bad_value", f"{key!r} must be a number or a decimal string")
    try:
        d = Decimal(v if isinstance(v, str) else repr(v))
    except InvalidOperation:
        raise AccountEventError("bad_value", f"{key!r}: {v!r} is not a number") from None
    if not d.is_finite():
        raise AccountEventError("non_finite", f"{key!r} must be finite")
    q = Decimal(1).scaleb(-digits)
    if d != d.quantize(q):
        raise AccountEventError("bad_value", f"{key!r}: at most {digits} decimal places")
    if positive and d <= 0:
        raise AccountEventError("non_positive", f"{key!r} must be > 0")
    if d < 0:
        raise AccountEventError("negative", f"{key!r} must be >= 0")
    scaled = int(d.scaleb(digits))
    if abs(scaled) > u.MAX_ACCOUNT_MONEY:
        raise AccountEventError("bad_value", f"{key!r} is out of range")
    return scaled


def _rate(ev, key) -> Decimal:
    v = ev.get(key, 0)
    try:
        d = Decimal(v if isinstance(v, str) else repr(v))
    except (InvalidOperation, TypeError):
        raise AccountEventError("bad_value", f"{key!r}: {v!r} is not a number") from None
    if not d.is_finite() or d < 0 or d > 10:
        raise AccountEventError("bad_value", f"{key!r} must be a rate between 0 and 10")
    return d


class AccountEvents:
    """Applies account events to a live `MarginState`; returns the accounts to re-tier."""

    def __init__(self, state: MarginState, remember: int = 1_000_000):
        self.state = state
        self.ledger = Ledger(state)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.applied = 0

    def seen_ids(self) -> list[str]:
        """The event ids remembered for duplicate detection, oldest first."""
        return list(self._seen)

    def restore(self, seen_ids: list[str], applied: int) -> None:
        """Put back what a snapshot saved of this event stream."""
        self._seen = OrderedDict.fromkeys(str(x) for x in seen_ids[-self._remember:])
        self.applied = int(applied)

    def apply(self, ev: object) -> list[int]:
        if not isinstance(ev, dict):
            raise AccountEventError("malformed", "an account event must be a JSON object")
        kind = ev.get("type")
        if kind not in TYPES:
            raise AccountEventError("unknown_type", f"unknown event type {kind!r}")
        ts = ev.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool) and not 0 <= ts < 2**63:
            raise AccountEventError("bad_value", "'ts' must be ns since the epoch, "
                                    "0 <= ts < 2**63")
        eid = ev.get("event_id")
        if eid is not None and str(eid) in self._seen:
            raise AccountEventError("duplicate", f"event {eid!r} was already applied")
        accounts = getattr(self, "_" + kind)(ev)
        if eid is not None:
            self._seen[str(eid)] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        self.applied += 1
        return accounts

    # ------------------------------------------------------------------ lookups
    def _account(self, ev) -> int:
        aid = ev.get("account_id")
        a = self.state.book.account_index.get(aid) if isinstance(aid, str) else None
        if a is None:
            raise AccountEventError("unknown_account", f"unknown account {aid!r}")
        return a

    def _security(self, ev) -> int:
        sym = ev.get("symbol")
        s = self.state.book.symbol_index.get(sym) if isinstance(sym, str) else None
        if s is None:
            raise AccountEventError("unknown_symbol", f"unknown symbol {sym!r}")
        return s

    # ------------------------------------------------------------------ cash
    def _deposit(self, ev):
        a, amount = self._account(ev), money_field(ev, "amount")
        self.state.book.cash[a] += amount
        self.ledger.refresh_base(a)
        return [a]

    def _withdrawal(self, ev):
        a, amount = self._account(ev), money_field(ev, "amount")
        if amount > self.state.book.cash[a]:
            raise AccountEventError("insufficient_cash", "withdrawal exceeds the cash balance")
        self.state.book.cash[a] -= amount
        self.ledger.refresh_base(a)
        return [a]

    def _repayment(self, ev):
        """Direct repayment: interest and fees first, then the oldest financed principal."""
        a, amount = self._account(ev), money_field(ev, "amount")
        source = ev.get("source", "cash")
        if source not in ("cash", "external"):
            raise AccountEventError("bad_value", "source must be 'cash' or 'external'")
        b, led = self.state.book, self.ledger
        if source == "cash" and amount > b.cash[a]:
            raise AccountEventError("insufficient_cash", "repayment exceeds the cash balance")
        fin = [j for j in led.rows(a) if b.pos_kind[j] == u.FINANCED and b.pos_cost[j] > 0]
        owed = int(b.accrued[a]) + sum(int(b.pos_cost[j]) for j in fin)
        if amount > owed:
            raise AccountEventError("exceeds_debt", "repayment exceeds interest and principal")
        left = amount
        pay = min(left, int(b.accrued[a]))
        b.accrued[a] -= pay
        left -= pay
        for j in fin:  # book order is the order positions were opened: oldest first
            pay = min(left, int(b.pos_cost[j]))
            b.pos_cost[j] -= pay
            left -= pay
        if source == "cash":
            b.cash[a] -= amount
        led.refresh_base(a)
        return [a]

    # ------------------------------------------------------------------ fills
    def _fill(self, ev):
        a, s = self._account(ev), self._security(ev)
        side = ev.get("side")
        if side not in FILL_SIDES:
            raise AccountEventError("bad_value", f"side must be one of {', '.join(FILL_SIDES)}")
        qty = ev.get("qty")
        if isinstance(qty, bool) or not isinstance(qty, int) or not 0 < qty <= MAX_FILL_QTY:
            raise AccountEventError("bad_value", "qty must be a positive whole number of shares "
                                    f"(at most {MAX_FILL_QTY})")
        price = money_field(ev, "price")
        fee = money_field(ev, "fee", required=False, positive=False) or 0
        if qty * price + fee > u.MAX_ACCOUNT_MONEY:
            raise AccountEventError("bad_value", "the fill's value is out of range")
        mr = ev.get("margin_ratio")
        if mr is not None:
            mr = float(_rate(ev, "margin_ratio"))
        b, led = self.state.book, self.ledger
        value = qty * price
        if side == "collateral_buy":
            led.change_position(a, s, u.COLLATERAL, qty, 0)
            b.cash[a] -= value + fee
        elif side == "collateral_sell":
            self._need(a, s, u.COLLATERAL, qty)
            led.change_position(a, s, u.COLLATERAL, -qty, 0)
            b.cash[a] += value - fee
        elif side == "financed_buy":
            led.change_position(a, s, u.FINANCED, qty, value + fee, mr)
        elif side == "sell_to_repay":
            self._need(a, s, u.FINANCED, qty)
            proceeds = value - fee
            j = led.book_row(a, s, u.FINANCED)
            led.change_position(a, s, u.FINANCED, -qty, 0)
            pay = min(max(proceeds, 0), int(b.accrued[a]))  # interest first
            b.accrued[a] -= pay
            left = proceeds - pay
            rows = [j] + [r for r in led.rows(a) if r != j and b.pos_kind[r] == u.FINANCED]
            for r in rows:  # this position's principal, then the oldest others
                p = min(max(left, 0), int(b.pos_cost[r]))
                b.pos_cost[r] -= p
                left -= p
            b.cash[a] += left
        elif side == "short_sell":
            led.change_position(a, s, u.SHORT, qty, value, mr)
            b.cash[a] += value - fee
        else:  # buy_to_cover
            self._need(a, s, u.SHORT, qty)
            j = led.book_row(a, s, u.SHORT)
            owed, sold = int(b.pos_qty[j]), int(b.pos_cost[j])
            released = sold if qty == owed else (sold * qty + owed // 2) // owed
            led.change_position(a, s, u.SHORT, -qty, -released)
            b.cash[a] -= value + fee
        led.refresh_base(a)
        return [a]

    def _need(self, a, s, kind, qty):
        if self.ledger.held(a, s, kind) < qty:
            raise AccountEventError("insufficient_position",
                                    f"the account holds fewer than {qty} {u.KIND_NAMES[kind]} "
                                    "shares of it")

    # ------------------------------------------------------------------ accrual
    def _interest_accrual(self, ev):
        """principal × rate × days / day_count on financing, on the short-sale amount for
        shorts; added to accrued interest and fees, rounded half up to the money unit."""
        b, led = self.state.book, self.ledger
        days = ev.get("days", 1)
        day_count = ev.get("day_count", 360)
        if not isinstance(days, int) or isinstance(days, bool) or not 0 < days <= 366:
            raise AccountEventError("bad_value", "days must be a whole number from 1 to 366")
        if day_count not in (360, 365):
            raise AccountEventError("bad_value", "day_count must be 360 or 365")
        fin_rate = _rate(ev, "financing_rate")
        short_rate = _rate(ev, "short_fee_rate")
        # integer arithmetic: rates in 1e-8 units, exact up to the final rounding
        fr = int((fin_rate * days * 10**8 / day_count).to_integral_value(ROUND_HALF_UP))
        sr = int((short_rate * days * 10**8 / day_count).to_integral_value(ROUND_HALF_UP))
        used = np.ones(b.pos_kind.shape[0], dtype=bool)  # free rows carry no cost anyway
        if "account_id" in ev:
            r = led.rows(self._account(ev))
            used[:] = False
            used[r.start:r.stop] = True
        acct = np.repeat(np.arange(b.n_accounts), np.diff(b.pos_ptr))
        rate = np.where(b.pos_kind == u.FINANCED, fr, np.where(b.pos_kind == u.SHORT, sr, 0))
        accrual = (b.pos_cost * rate + 5 * 10**7) // 10**8 * used
        add = np.zeros(b.n_accounts, dtype=np.int64)
        np.add.at(add, acct, accrual)
        b.accrued += add
        touched = np.flatnonzero(add)
        h = self.state.h
        h.base_liabilities[touched] += add[touched]
        return touched.tolist()

    # ------------------------------------------------------------------ securities
    def _haircut(self, ev):
        s = self._security(ev)
        hc = _rate(ev, "haircut")
        if hc > 1:
            raise AccountEventError("bad_value", "haircut must be between 0 and 1")
        self.state.book.haircut[s] = float(hc)
        return []  # a haircut moves the available margin balance, not the ratio

    def _suspend(self, ev):
        self.state.book.suspended[self._security(ev)] = True
        return []

    def _resume(self, ev):
        self.state.book.suspended[self._security(ev)] = False
        return []

    def _profile(self, ev):
        a = self._account(ev)
        name = ev.get("profile")
        names = self.state.book.profile_names
        if name not in names:
            raise AccountEventError("unknown_profile", f"unknown profile {name!r}")
        self.state.book.profile_of[a] = names.index(name)
        return [a]
