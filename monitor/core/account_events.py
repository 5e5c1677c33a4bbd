"""Account events between ticks (margin-rules.md §6): validated, then applied to the live book.

One JSON object per event (a JSONL line or a Redis stream entry's `data` field):

    {"type": "deposit" | "withdrawal", "account_id", "amount"}
    {"type": "repayment", "account_id", "amount", "source": "cash" | "external"}
    {"type": "fill", "account_id", "symbol", "side", "qty", "price", "fee"?, "margin_ratio"?,
     "contract_id"?, "term_end"?}
        side: collateral_buy, collateral_sell, financed_buy, sell_to_repay, short_sell,
              buy_to_cover
    {"type": "interest_accrual", "account_id"?, "days"?, "financing_rate", "short_fee_rate",
     "day_count"?}
    {"type": "haircut", "symbol", "haircut"}
    {"type": "suspend" | "resume", "symbol"}
    {"type": "profile", "account_id", "profile"}
    {"type": "extension", "account_id", "contract_id", "term_end"}

Contracts (monitor/book/contracts.py): a financed buy or a short sale adds to the account's
open contract of that security opened the same day at the same margin ratio, else opens a new
one (numbered after every older one; `contract_id` names it, or the one to add to), with the
event's `margin_ratio`, else its profile's, else the exchange minimum of the open date, and a
term of 6 months unless `term_end` says otherwise. `sell_to_repay` and `buy_to_cover` take the
shares of the named contract first, then the security's contracts in repayment order; the
proceeds of a sale repay interest and fees, then the contracts whose shares were sold, then the
other financed contracts in repayment order. A direct repayment pays interest and fees, then
the named contract, then principal in repayment order (oldest first). An `extension` moves a
contract's term end later, by at most 6 months past the current one.

Optional on every event: `event_id` (a repeated id is rejected as a duplicate) and `ts` (ns).
An invalid event raises `AccountEventError` with a reason (`REASONS`) and leaves the book
unchanged: every check runs before the first change, including the bounds of kernels/units.py
on the account's running balances (its gross amount after the event, in exact Python integers:
`overflow` when it would pass MAX_ACCOUNT_MONEY). A book-wide interest accrual that would take
some accounts past the bound is applied to the others; `skipped` names those it left out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import numpy as np

from kernels import units as u
from monitor.book.contracts import MAX_ID_CHARS as MAX_CONTRACT_ID_CHARS
from monitor.book.contracts import (
    TERM_MONTHS,
    add_months,
    contract_row,
    default_margin_ratio,
    is_open,
    parse_day,
)
from monitor.core.calendar import china_day
from monitor.core.ledger import Ledger
from monitor.core.state import MarginState
from monitor.errors import AccountEventError

FILL_SIDES = ("collateral_buy", "collateral_sell", "financed_buy", "sell_to_repay",
              "short_sell", "buy_to_cover")
TYPES = ("deposit", "withdrawal", "repayment", "fill", "interest_accrual", "haircut",
         "suspend", "resume", "profile", "extension")
MAX_FILL_QTY = u.MAX_FILL_QTY  # shares in one fill: far beyond any real order
MAX_ID_CHARS = 256  # an event_id is remembered (duplicate detection): keep it small
MAX_NUMBER_CHARS = 64  # a decimal string longer than this is not a number we take
# Every reason an account event is rejected for, for counting (/metrics exports each from 0).
# `malformed` and `oversize` also come from the sources (undecodable or too large messages),
# `internal_error` from the runtime (an unexpected exception while applying one event).
REASONS = ("malformed", "oversize", "unknown_type", "missing_field", "bad_number", "bad_value",
           "non_finite", "non_positive", "negative", "out_of_range", "overflow", "bad_ts",
           "duplicate", "unknown_account", "unknown_symbol", "unknown_profile",
           "unknown_contract", "insufficient_cash", "insufficient_position", "exceeds_debt",
           "read_only", "internal_error")
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
        # the monitor's clock (ns, the ticks' exchange time; the engine sets it before each
        # event): the open date of a contract a fill without `ts` opens
        self.clock_ns = 0
        self._now_ns: int | None = None
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
        self._now_ns = now_ns
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

    def _gross_after(self, a, cash, accrued, deltas=None, new=None) -> int:
        """G of account `a` with `cash` and `accrued` as given, `deltas` (row -> (dqty,
        dcost)) applied and `new` = (sec, qty, cost) a row to open, in Python integers."""
        b, up = self.state.book, self._up
        g = abs(cash) + abs(accrued) + abs(int(b.other_debt[a])) \
            + abs(int(b.other_collateral[a]))
        for j in self.ledger.rows(a):
            q, c = int(b.pos_qty[j]), int(b.pos_cost[j])
            if deltas and j in deltas:
                q += deltas[j][0]
                c += deltas[j][1]
            g += abs(c) + abs(q) * int(up[b.pos_sec[j]])
        if new is not None:
            g += abs(new[2]) + abs(new[1]) * int(up[new[0]])
        return g

    def _bounded(self, a, cash, accrued, deltas=None, new=None) -> None:
        g = self._gross_after(a, cash, accrued, deltas, new)
        if g > u.MAX_ACCOUNT_MONEY:
            raise AccountEventError(
                "overflow", f"the account's gross amount would be {g / u.MONEY_SCALE:.2f} "
                f"yuan, beyond the exact range ({u.MAX_ACCOUNT_MONEY // u.MONEY_SCALE} yuan)")

    # ------------------------------------------------------------------ contracts
    def _day(self, ev, now_ns) -> int:
        """The day (China time) an event happens on: its `ts`, else the monitor's clock."""
        ts = ev.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            return china_day(ts)
        return china_day(self.clock_ns or now_ns or self._now_ns or time.time_ns())

    def _contract_id(self, ev, required=False) -> str | None:
        v = ev.get("contract_id")
        if v is None:
            if required:
                raise AccountEventError("missing_field", "'contract_id' is required")
            return None
        if not isinstance(v, str) or not v.strip() or len(v) > MAX_CONTRACT_ID_CHARS:
            raise AccountEventError("bad_value", "'contract_id' must be a non-empty string of "
                                    f"at most {MAX_CONTRACT_ID_CHARS} characters")
        return v.strip()

    def _named(self, a, ev, kind=None, s=None, required=False) -> int:
        """The row of the contract the event names (-1 when it names none)."""
        name = self._contract_id(ev, required)
        if name is None:
            return -1
        b = self.state.book
        b.contracts()
        j = contract_row(b, a, name)
        if j < 0:
            raise AccountEventError("unknown_contract",
                                    f"the account has no contract {_short(name)}")
        if (kind is not None and b.pos_kind[j] != kind) or (s is not None and b.pos_sec[j] != s):
            raise AccountEventError("bad_value", f"contract {_short(name)} is not a "
                                    f"{u.KIND_NAMES[kind]} contract in this security")
        return j

    def _term(self, ev, day) -> int:
        """A new contract's term end: `term_end`, else 6 months after its open day."""
        v = ev.get("term_end")
        if v is None:
            return add_months(day)
        d = parse_day(v)
        if d is None:
            raise AccountEventError("bad_value", "'term_end' must be an ISO date (YYYY-MM-DD)")
        if not day <= d <= add_months(day):
            raise AccountEventError("out_of_range", f"'term_end' must be from the open date "
                                    f"to {TERM_MONTHS} months after it")
        return d

    def _opening(self, a, s, kind, ev, now_ns, mr):
        """(row to add to or -1, margin ratio, open day, term day, name of a new one)."""
        b, led = self.state.book, self.ledger
        b.contracts()
        day = self._day(ev, now_ns)
        if mr is None:
            terms = b.contract_terms
            p = int(b.profile_of[a])
            mr = (terms.margin_ratio(p, kind, day) if terms is not None
                  else default_margin_ratio(kind, day))
        name = self._contract_id(ev)
        if name is not None:
            j = contract_row(b, a, name)
            if j >= 0:
                if b.pos_kind[j] != kind or b.pos_sec[j] != s:
                    raise AccountEventError("bad_value", f"contract {_short(name)} is not a "
                                            f"{u.KIND_NAMES[kind]} contract in this security")
                return j, float(b.pos_margin_ratio[j]), day, 0, None
            if name.startswith("#"):
                raise AccountEventError("bad_value", "a new contract's id may not start with "
                                        "'#' (the monitor's numbers)")
            return -1, mr, day, self._term(ev, day), name
        term = self._term(ev, day)
        for j in led.contract_rows(a, kind, s):
            if int(b.pos_open_day[j]) == day and float(b.pos_margin_ratio[j]) == mr \
                    and int(b.pos_term_day[j]) == term and int(b.pos_cid[j]) not in \
                    b.contract_names:
                return j, mr, day, term, None
        return -1, mr, day, term, None

    def _taking(self, a, s, kind, qty, first) -> dict[int, int]:
        """Shares to take per row: the named contract's first, then the security's contracts
        in repayment order (a financed contract already repaid last)."""
        b = self.state.book
        rows = [j for j in self.ledger.rows(a)
                if b.pos_sec[j] == s and b.pos_kind[j] == kind and b.pos_qty[j] > 0]
        rows.sort(key=lambda j: (j != first, kind == u.FINANCED and b.pos_cost[j] <= 0,
                                 int(b.pos_cid[j]) if b.pos_cid is not None else j))
        take, left = {}, qty
        for j in rows:
            t = min(left, int(b.pos_qty[j]))
            if t:
                take[j] = t
                left -= t
        return take

    def _extension(self, ev):
        """Move a contract's term end later (展期): at most 6 months past the current one
        (past the event's day for a contract without one). Its margin ratio stays."""
        a = self._account(ev)
        j = self._named(a, ev, required=True)
        b = self.state.book
        if not is_open(b.pos_kind[j:j + 1], b.pos_qty[j:j + 1], b.pos_cost[j:j + 1])[0]:
            raise AccountEventError("bad_value", "the contract is settled: nothing to extend")
        if ev.get("term_end") is None:
            raise AccountEventError("missing_field", "'term_end' is required")
        d = parse_day(ev.get("term_end"))
        if d is None:
            raise AccountEventError("bad_value", "'term_end' must be an ISO date (YYYY-MM-DD)")
        cur = int(b.pos_term_day[j])
        base = cur or self._day(ev, None)
        if d <= cur:
            raise AccountEventError("bad_value", "an extension moves the term end later")
        if d > add_months(base):
            raise AccountEventError("out_of_range", f"an extension moves the term end by at "
                                    f"most {TERM_MONTHS} months")
        b.pos_term_day[j] = d
        b.pos_notice[j] = 0  # due again, at the new term end
        return []

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
        named = self._named(a, ev, u.FINANCED)
        fin = led.contract_rows(a, u.FINANCED)  # repayment order: oldest first
        if named >= 0:
            fin = [named] + [j for j in fin if j != named]
        owed = accrued + sum(int(b.pos_cost[j]) for j in fin)
        if amount > owed:
            raise AccountEventError("exceeds_debt", "repayment exceeds interest and principal")
        pay = min(amount, accrued)
        left = amount - pay
        paid = {}
        for j in fin:
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
        if side in ("collateral_buy", "collateral_sell"):
            if side == "collateral_sell":
                self._need(a, s, u.COLLATERAL, qty)
            dq, cash = (qty, cash - value - fee) if side == "collateral_buy" \
                else (-qty, cash + value - fee)
            j = led.book_row(a, s, u.COLLATERAL)
            self._bounded(a, cash, accrued, {j: (dq, 0)} if j >= 0 else None,
                          (s, dq, 0) if j < 0 else None)
            led.change_position(a, s, u.COLLATERAL, dq, 0)
        elif side in ("financed_buy", "short_sell"):
            kind = u.FINANCED if side == "financed_buy" else u.SHORT
            j, ratio, day, term, name = self._opening(a, s, kind, ev, self.clock_ns, mr)
            cost = value + fee if kind == u.FINANCED else value
            if kind == u.SHORT:
                cash += value - fee
            self._bounded(a, cash, accrued, {j: (qty, cost)} if j >= 0 else None,
                          (s, qty, cost) if j < 0 else None)
            if j < 0:
                j = led.open_contract(a, s, kind, ratio, day, term, name)
            led.change_rows(a, {j: (qty, cost)})
        elif side == "sell_to_repay":
            first = self._named(a, ev, u.FINANCED, s)
            self._need(a, s, u.FINANCED, qty)
            take = self._taking(a, s, u.FINANCED, qty, first)
            proceeds = value - fee
            pay = min(max(proceeds, 0), accrued)  # interest first
            accrued -= pay
            left = proceeds - pay
            deltas = {r: (-t, 0) for r, t in take.items()}
            # the contracts whose shares were sold, then the others in repayment order
            order = [r for r in take if b.pos_cost[r] > 0] + [
                r for r in led.contract_rows(a, u.FINANCED) if r not in take]
            for r in order:
                p = min(max(left, 0), int(b.pos_cost[r]))
                if p:
                    deltas[r] = (deltas.get(r, (0, 0))[0], -p)
                    left -= p
            cash += left
            self._bounded(a, cash, accrued, deltas)
            b.accrued[a] = accrued
            led.change_rows(a, deltas)  # rows stay put: a sale opens no row
        else:  # buy_to_cover
            first = self._named(a, ev, u.SHORT, s)
            self._need(a, s, u.SHORT, qty)
            deltas = {}
            for r, t in self._taking(a, s, u.SHORT, qty, first).items():
                owed, sold = int(b.pos_qty[r]), int(b.pos_cost[r])
                released = sold if t == owed else (sold * t + owed // 2) // owed
                deltas[r] = (-t, -released)
            cash -= value + fee
            self._bounded(a, cash, accrued, deltas)
            led.change_rows(a, deltas)
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
