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
An invalid event raises `AccountEventError` with a reason (`REASONS`) and leaves the book
unchanged: every check runs before the first change, including the bounds of kernels/units.py
on the account's running balances (its gross amount after the event, in exact Python integers:
`overflow` when it would pass MAX_ACCOUNT_MONEY). A book-wide interest accrual that would take
some accounts past the bound is applied to the others; `skipped` names those it left out.
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
MAX_FILL_QTY = u.MAX_FILL_QTY  # shares in one fill: far beyond any real order
MAX_ID_CHARS = 256  # an event_id is remembered (duplicate detection): keep it small
MAX_NUMBER_CHARS = 64  # a decimal string longer than this is not a number we take
# Every reason an account event is rejected for, for counting (/metrics exports each from 0).
# `malformed` and `oversize` also come from the sources (undecodable or too large messages),
# `internal_error` from the runtime (an unexpected exception while applying one event).
REASONS = ("malformed", "oversize", "unknown_type", "missing_field", "bad_number", "bad_value",
           "non_finite", "non_positive", "negative", "out_of_range", "overflow", "bad_ts",
           "duplicate", "unknown_account", "unknown_symbol", "unknown_profile",
           "insufficient_cash", "insufficient_position", "exceeds_debt", "read_only",
           "internal_error")
_MAX_EVENT_MONEY = Decimal(u.MAX_EVENT_MONEY).scaleb(-3)


def _number(ev, key) -> Decimal:
    """A JSON number or decimal string -> finite Decimal, else AccountEventError. Magnitudes are
    not checked here (callers bound them before any arithmetic that could trap)."""
    v = ev.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise AccountEventError("bad_number", f"{key!r} must be a number or a decimal string")
    if isinstance(v, int):
        if abs(v) > 10**30:  # no int -> str conversion of huge integers
            raise AccountEventError("out_of_range", f"{key!r} is out of range")
        return Decimal(v)
    if isinstance(v, str) and len(v) > MAX_NUMBER_CHARS:
        raise AccountEventError("bad_number", f"{key!r}: not a number we take "
                                f"(over {MAX_NUMBER_CHARS} characters)")
    try:
        d = Decimal(v if isinstance(v, str) else repr(v))
    except (InvalidOperation, ValueError):
        raise AccountEventError("bad_number", f"{key!r}: {v!r} is not a number") from None
    if not d.is_finite():
        raise AccountEventError("non_finite", f"{key!r} must be finite")
    return d


def money_field(ev, key, *, required=True, positive=True, digits=3,
                bound: int = u.MAX_EVENT_MONEY) -> int | None:
    """A money (or price) field in integer units of 10^-digits, within `bound` units."""
    if ev.get(key) is None:
        if required:
            raise AccountEventError("missing_field", f"{key!r} is required")
        return None
    d = _number(ev, key)
    if abs(d) > Decimal(bound).scaleb(-digits):  # before quantize: it traps on huge values
        raise AccountEventError("out_of_range", f"{key!r} is out of range (at most "
                                f"{Decimal(bound).scaleb(-digits)})")
    try:
        exact = d == d.quantize(Decimal(1).scaleb(-digits))
    except InvalidOperation:  # pragma: no cover - bounded above; belt and braces
        exact = False
    if not exact:
        raise AccountEventError("bad_value", f"{key!r}: at most {digits} decimal places")
    if positive and d <= 0:
        raise AccountEventError("non_positive", f"{key!r} must be > 0")
    if d < 0:
        raise AccountEventError("negative", f"{key!r} must be >= 0")
    return int(d.scaleb(digits))


def _rate(ev, key, top: int = u.MAX_RATE_BP) -> Decimal:
    """A rate (or ratio) in [0, top / 10 000]; absent means 0."""
    if ev.get(key) is None:
        return Decimal(0)
    d = _number(ev, key)
    hi = Decimal(top).scaleb(-4)
    if d < 0 or d > hi:
        raise AccountEventError("out_of_range", f"{key!r} must be between 0 and {hi}")
    return d


def _whole(ev, key, default, lo, hi) -> int:
    v = ev.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise AccountEventError("bad_value", f"{key!r} must be a whole number")
    if not lo <= v <= hi:
        raise AccountEventError("out_of_range", f"{key!r} must be from {lo} to {hi}")
    return v


def check_ts(ev, now_ns: int | None, max_skew_ns: int = u.DEFAULT_MAX_SKEW_NS) -> int | None:
    """An event's `ts`: None when absent (the receive time is used), else an integer ns
    timestamp from 2000-01-01 to `now_ns` + `max_skew_ns`, else AccountEventError bad_ts."""
    ts = ev.get("ts")
    if ts is None:
        return None
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise AccountEventError("bad_ts", "'ts' must be an integer number of ns since the epoch")
    hi = (2**63 - 1) if now_ns is None else min(int(now_ns) + int(max_skew_ns), 2**63 - 1)
    if not u.MIN_EVENT_TS_NS <= ts <= hi:
        raise AccountEventError("bad_ts", f"'ts' {ts} is outside [2000-01-01, now + "
                                f"{max_skew_ns / 1e9:g} s]")
    return ts


class AccountEvents:
    """Applies account events to a live `MarginState`; returns the accounts to re-tier."""

    def __init__(self, state: MarginState, remember: int = 1_000_000,
                 max_skew_ns: int = u.DEFAULT_MAX_SKEW_NS):
        self.state = state
        self.ledger = Ledger(state)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.max_skew_ns = int(max_skew_ns)
        self.applied = 0
        # accounts a book-wide accrual left out (they would have passed the bound), with why:
        # [(account index, reason, message)], of the last event applied
        self.skipped: list[tuple[int, str, str]] = []
        # the highest price each security can take (the tick guard refuses beyond limit_up, on
        # any trading day: the widest band of kernels/bands.py)
        b = state.book
        self._up = np.maximum(b.price, b.price_ceiling()).astype(np.int64)

    def seen_ids(self) -> list[str]:
        """The event ids remembered for duplicate detection, oldest first."""
        return list(self._seen)

    def restore(self, seen_ids: list[str], applied: int) -> None:
        """Put back what a snapshot saved of this event stream."""
        self._seen = OrderedDict.fromkeys(str(x) for x in seen_ids[-self._remember:])
        self.applied = int(applied)

    def apply(self, ev: object, now_ns: int | None = None) -> list[int]:
        """Apply one event; `now_ns` (the monitor's clock) bounds its `ts`."""
        self.skipped = []
        if not isinstance(ev, dict):
            raise AccountEventError("malformed", "an account event must be a JSON object")
        kind = ev.get("type")
        if not isinstance(kind, str) or kind not in TYPES:
            raise AccountEventError("unknown_type", f"unknown event type {_short(kind)}")
        check_ts(ev, now_ns, self.max_skew_ns)
        eid = ev.get("event_id")
        if eid is not None:
            if isinstance(eid, bool) or not isinstance(eid, (str, int)) \
                    or (isinstance(eid, int) and abs(eid) >= 2**64) \
                    or len(str(eid)) > MAX_ID_CHARS:
                raise AccountEventError("bad_value", "'event_id' must be a string (at most "
                                        f"{MAX_ID_CHARS} characters) or an integer")
            if str(eid) in self._seen:
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
            raise AccountEventError("unknown_account", f"unknown account {_short(aid)}")
        return a

    def _security(self, ev) -> int:
        sym = ev.get("symbol")
        s = self.state.book.symbol_index.get(sym) if isinstance(sym, str) else None
        if s is None:
            raise AccountEventError("unknown_symbol", f"unknown symbol {_short(sym)}")
        return s

    # ------------------------------------------------------------------ bounds
    def gross(self, a: int) -> int:
        """The account's gross amount G (kernels/units.py), exact."""
        return self._gross_after(a, int(self.state.book.cash[a]),
                                 int(self.state.book.accrued[a]))

    def _gross_after(self, a, cash, accrued, paid=None, fill=None) -> int:
        """G of account `a` with `cash` and `accrued` as given, `paid` (row -> cost repaid)
        taken off and `fill` = (sec, kind, dqty, dcost) applied, in Python integers."""
        b, up = self.state.book, self._up
        g = abs(cash) + abs(accrued) + abs(int(b.other_debt[a])) \
            + abs(int(b.other_collateral[a]))
        row = self.ledger.book_row(a, fill[0], fill[1]) if fill is not None else -1
        for j in self.ledger.rows(a):
            q, c = int(b.pos_qty[j]), int(b.pos_cost[j])
            if paid:
                c -= paid.get(j, 0)
            if j == row:
                q += fill[2]
                c += fill[3]
            g += abs(c) + abs(q) * int(up[b.pos_sec[j]])
        if fill is not None and row < 0:
            g += abs(fill[3]) + abs(fill[2]) * int(up[fill[0]])
        return g

    def _bounded(self, a, cash, accrued, paid=None, fill=None) -> None:
        g = self._gross_after(a, cash, accrued, paid, fill)
        if g > u.MAX_ACCOUNT_MONEY:
            raise AccountEventError(
                "overflow", f"the account's gross amount would be {g / u.MONEY_SCALE:.2f} "
                f"yuan, beyond the exact range ({u.MAX_ACCOUNT_MONEY // u.MONEY_SCALE} yuan)")

    # ------------------------------------------------------------------ cash
    def _deposit(self, ev):
        a, amount = self._account(ev), money_field(ev, "amount")
        b = self.state.book
        cash = int(b.cash[a]) + amount
        self._bounded(a, cash, int(b.accrued[a]))
        b.cash[a] = cash
        self.ledger.refresh_base(a)
        return [a]

    def _withdrawal(self, ev):
        a, amount = self._account(ev), money_field(ev, "amount")
        b = self.state.book
        if amount > int(b.cash[a]):
            raise AccountEventError("insufficient_cash", "withdrawal exceeds the cash balance")
        b.cash[a] -= amount  # cash stays >= 0 and only shrinks: within every bound
        self.ledger.refresh_base(a)
        return [a]

    def _repayment(self, ev):
        """Direct repayment: interest and fees first, then the oldest financed principal."""
        a, amount = self._account(ev), money_field(ev, "amount")
        source = ev.get("source", "cash")
        if not isinstance(source, str) or source not in ("cash", "external"):
            raise AccountEventError("bad_value", "source must be 'cash' or 'external'")
        b, led = self.state.book, self.ledger
        cash, accrued = int(b.cash[a]), int(b.accrued[a])
        if source == "cash" and amount > cash:
            raise AccountEventError("insufficient_cash", "repayment exceeds the cash balance")
        fin = [j for j in led.rows(a) if b.pos_kind[j] == u.FINANCED and b.pos_cost[j] > 0]
        owed = accrued + sum(int(b.pos_cost[j]) for j in fin)
        if amount > owed:
            raise AccountEventError("exceeds_debt", "repayment exceeds interest and principal")
        pay = min(amount, accrued)
        left = amount - pay
        paid = {}
        for j in fin:  # book order is the order positions were opened: oldest first
            p = min(left, int(b.pos_cost[j]))
            paid[j] = p
            left -= p
        # only shrinks the account's amounts: no bound to check
        b.accrued[a] = accrued - pay
        for j, p in paid.items():
            b.pos_cost[j] -= p
        if source == "cash":
            b.cash[a] = cash - amount
        led.refresh_base(a)
        return [a]

    # ------------------------------------------------------------------ fills
    def _fill(self, ev):
        a, s = self._account(ev), self._security(ev)
        side = ev.get("side")
        if not isinstance(side, str) or side not in FILL_SIDES:
            raise AccountEventError("bad_value", f"side must be one of {', '.join(FILL_SIDES)}")
        qty = ev.get("qty")
        if isinstance(qty, bool) or not isinstance(qty, int):
            raise AccountEventError("bad_value", "qty must be a positive whole number of shares")
        if not 0 < qty <= MAX_FILL_QTY:
            raise AccountEventError("out_of_range" if qty > 0 else "bad_value",
                                    "qty must be a positive whole number of shares "
                                    f"(at most {MAX_FILL_QTY})")
        price = money_field(ev, "price", bound=u.MAX_PRICE)
        fee = money_field(ev, "fee", required=False, positive=False) or 0
        value = qty * price
        if value + fee > u.MAX_EVENT_MONEY:
            raise AccountEventError("out_of_range", "the fill's value is out of range")
        mr = ev.get("margin_ratio")
        if mr is not None:
            mr = float(_rate(ev, "margin_ratio"))
        b, led = self.state.book, self.ledger
        cash, accrued = int(b.cash[a]), int(b.accrued[a])
        if side == "collateral_buy":
            fill, cash = (s, u.COLLATERAL, qty, 0), cash - value - fee
        elif side == "collateral_sell":
            self._need(a, s, u.COLLATERAL, qty)
            fill, cash = (s, u.COLLATERAL, -qty, 0), cash + value - fee
        elif side == "financed_buy":
            fill = (s, u.FINANCED, qty, value + fee)
        elif side == "sell_to_repay":
            self._need(a, s, u.FINANCED, qty)
            proceeds = value - fee
            j = led.book_row(a, s, u.FINANCED)
            pay = min(max(proceeds, 0), accrued)  # interest first
            accrued -= pay
            left = proceeds - pay
            paid = {}
            rows = [j] + [r for r in led.rows(a) if r != j and b.pos_kind[r] == u.FINANCED]
            for r in rows:  # this position's principal, then the oldest others
                p = min(max(left, 0), int(b.pos_cost[r]))
                paid[r] = p
                left -= p
            cash += left
            fill = (s, u.FINANCED, -qty, 0)
            self._bounded(a, cash, accrued, paid, fill)
            for r, p in paid.items():  # rows stay put: a sale opens no row
                b.pos_cost[r] -= p
            b.accrued[a] = accrued
            led.change_position(a, s, u.FINANCED, -qty, 0)
            b.cash[a] = cash
            led.refresh_base(a)
            return [a]
        elif side == "short_sell":
            fill, cash = (s, u.SHORT, qty, value), cash + value - fee
        else:  # buy_to_cover
            self._need(a, s, u.SHORT, qty)
            j = led.book_row(a, s, u.SHORT)
            owed, sold = int(b.pos_qty[j]), int(b.pos_cost[j])
            released = sold if qty == owed else (sold * qty + owed // 2) // owed
            fill, cash = (s, u.SHORT, -qty, -released), cash - value - fee
        self._bounded(a, cash, accrued, None, fill)
        led.change_position(a, fill[0], fill[1], fill[2], fill[3],
                            mr if side in ("financed_buy", "short_sell") else None)
        b.cash[a] = cash
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
        shorts; added to accrued interest and fees, rounded half up to the money unit. Exact:
        rates are taken to 8 decimals, products beyond int64 are done in Python integers."""
        b, led = self.state.book, self.ledger
        days = _whole(ev, "days", 1, 1, u.MAX_ACCRUAL_DAYS)
        day_count = ev.get("day_count", 360)
        if isinstance(day_count, bool) or not isinstance(day_count, int) \
                or day_count not in (360, 365):
            raise AccountEventError("bad_value", "day_count must be 360 or 365")
        q8 = Decimal(1).scaleb(-u.RATE_DIGITS)
        fr = int(_rate(ev, "financing_rate").quantize(q8, ROUND_HALF_UP).scaleb(u.RATE_DIGITS))
        sr = int(_rate(ev, "short_fee_rate").quantize(q8, ROUND_HALF_UP).scaleb(u.RATE_DIGITS))
        one = None
        if "account_id" in ev:
            one = self._account(ev)
        # accrual of a row = (cost × P + Q/2) // Q, P = rate·10^8 × days, Q = 10^8 × day_count
        Q = 10**u.RATE_DIGITS * day_count
        P = np.where(b.pos_kind == u.FINANCED, fr * days,
                     np.where(b.pos_kind == u.SHORT, sr * days, 0)).astype(np.int64)
        if one is not None:
            r = led.rows(one)
            mask = np.zeros(P.shape[0], dtype=bool)
            mask[r.start:r.stop] = True
            P = np.where(mask, P, 0)
        cost = b.pos_cost
        fits = np.abs(cost) <= (2**62 - Q) // np.maximum(P, 1)  # cost × P + Q/2 fits in int64
        accrual = np.where(fits, (cost * np.where(fits, P, 0) + Q // 2) // Q, 0)
        for j in np.flatnonzero(~fits).tolist():  # huge principals over long periods
            accrual[j] = (int(cost[j]) * int(P[j]) + Q // 2) // Q
        add = self._per_account(accrual)
        touched = np.flatnonzero(add)
        if touched.shape[0]:
            gross = self._gross_many(touched)
            over = gross + add[touched] > u.MAX_ACCOUNT_MONEY
            if over.any():
                if one is not None:
                    raise AccountEventError(
                        "overflow", "the accrual would take the account's gross amount beyond "
                        f"the exact range ({u.MAX_ACCOUNT_MONEY // u.MONEY_SCALE} yuan)")
                ids = touched[over]
                add[ids] = 0
                self.skipped = [(int(x), "overflow", "interest accrual left out: it would take "
                                 "the account's gross amount beyond the exact range")
                                for x in ids.tolist()]
                touched = touched[~over]
        b.accrued[touched] += add[touched]
        self.state.h.base_liabilities[touched] += add[touched]
        return touched.tolist()

    def _per_account(self, rows: np.ndarray) -> np.ndarray:
        """Sum of a per-position-row int64 column per account (rows are grouped by account)."""
        b = self.state.book
        out = np.zeros(b.n_accounts, dtype=np.int64)
        starts = b.pos_ptr[:-1]
        full = np.diff(b.pos_ptr) > 0
        if rows.shape[0] and full.any():
            out[full] = np.add.reduceat(rows, starts[full])
        return out

    def _gross_many(self, accounts: np.ndarray) -> np.ndarray:
        """G of `accounts` (numpy int64: within the bound before the event, so it fits)."""
        b = self.state.book
        per = self._per_account(np.abs(b.pos_cost) + np.abs(b.pos_qty) * self._up[b.pos_sec])
        return (per[accounts] + np.abs(b.cash[accounts]) + np.abs(b.accrued[accounts])
                + np.abs(b.other_debt[accounts]) + np.abs(b.other_collateral[accounts]))

    # ------------------------------------------------------------------ securities
    def _haircut(self, ev):
        s = self._security(ev)
        if ev.get("haircut") is None:
            raise AccountEventError("missing_field", "'haircut' is required")
        hc = _rate(ev, "haircut", top=u.RATIO_SCALE)
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
        if not isinstance(name, str) or name not in names:
            raise AccountEventError("unknown_profile", f"unknown profile {_short(name)}")
        self.state.book.profile_of[a] = names.index(name)
        return [a]


def _short(v, n: int = 80) -> str:
    """repr of a value for a message, cut to `n` characters."""
    try:
        r = repr(v)
    except ValueError:  # an integer beyond the str conversion limit
        r = "<int>"
    return r if len(r) <= n else r[:n] + "…"
