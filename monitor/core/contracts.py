"""Contract terms on the engine's clock (margin-rules.md §6): `CONTRACT_DUE` and
`CONTRACT_EXPIRED`, judged at the close (15:00) of every trading day the clock passes (the
ticks' exchange time, monitor/core/engine.py), with the margin-call closes.

- `CONTRACT_DUE`: once per contract, at the first close from which its term end is at most
  `due_days` trading days away (the profile's `contract_due_days`, else the monitor's, default
  5): at the close of the 5th trading day before the term end with the default, closed days
  skipped; at the next close for a contract already nearer (a book loaded late, a short term).
- `CONTRACT_EXPIRED`: a contract still open at the close of its term end (到期未了结), whatever
  the account's ratio, with a plan that closes that contract: sell its financed shares to repay
  it (`sell_to_repay`) or buy back its shorted shares (`buy_to_cover`), naming its
  `contract_id`; `ratio_after` / `tier_after` are the account's after those orders. A term end
  on a closed day expires at the close of the last trading day before it. The plan was made
  at the close, outside a session: `release_at` says when orders may go.

An extension (account event) moves the term end and clears both notices. Both notices are
kept in the book's `pos_notice` (in the snapshot), so a restart does not send them again.
"""

from __future__ import annotations

import numpy as np

from kernels import units as u
from kernels.ratios import tier_of
from monitor.book.contracts import (
    DEFAULT_DUE_DAYS,
    NOTICE_DUE,
    NOTICE_EXPIRED,
    contract_dict,
    contract_name,
    is_open,
)
from monitor.core.calendar import close_ns
from monitor.core.state import yuan
from monitor.errors import CalendarUnknown


class ContractWatch:
    """The contracts' due dates and expiries. `engine` gives the state, the calendar, the
    envelope (seq) and release times; nothing here keeps time of its own."""

    def __init__(self, engine, due_days: int = DEFAULT_DUE_DAYS):
        self.engine = engine
        self.due_days = int(due_days)
        self.sent_due = 0
        self.sent_expired = 0

    def _due_days(self, accounts: np.ndarray) -> np.ndarray:
        b = self.engine.state.book
        terms = b.contract_terms
        if terms is None:
            return np.full(accounts.shape[0], self.due_days, dtype=np.int64)
        d = terms.due_days[b.profile_of[accounts]]
        return np.where(d < 0, self.due_days, d)

    def at_close(self, day: int, now_ns: int) -> list[dict]:
        """The close of trading day `day`: the contracts falling due or expiring now."""
        eng = self.engine
        b = eng.state.book
        if b.pos_term_day is None:
            return []
        term = b.pos_term_day
        live = (term > 0) & is_open(b.pos_kind, b.pos_qty, b.pos_cost)
        if not live.any():
            return []
        cal = eng.lifecycle.calendar
        unsent = (b.pos_notice & NOTICE_EXPIRED) == 0
        try:
            nxt = cal.add_days(day, 1)
        except CalendarUnknown as e:  # what is surely expired: the term ends up to today
            nxt = day + 1
            if (live & unsent & (term > day)).any():  # refused loudly, never guessed
                eng.lifecycle.note_unknown(e, "contract_expiry")
        expire = live & (term < nxt) & unsent
        cand = np.flatnonzero(live & ~expire & (b.pos_notice == 0))
        due = np.zeros(0, dtype=np.int64)
        if cand.shape[0]:
            acct = np.searchsorted(b.pos_ptr, cand, side="right") - 1
            days = self._due_days(acct)
            keep = np.zeros(cand.shape[0], dtype=bool)
            for n in np.unique(days).tolist():
                sel = days == n
                try:
                    horizon = cal.add_days(day, int(n))
                except CalendarUnknown as e:
                    # fewer than n trading days are known after `day`: a term end the
                    # calendar knows is surely within them; a later one is refused loudly
                    horizon = cal.last
                    if (sel & (term[cand] > horizon)).any():
                        eng.lifecycle.note_unknown(e, "contract_due")
                keep |= sel & (term[cand] <= horizon)
            due = cand[keep]
        t = close_ns(day)
        out = []
        rows = np.union1d(np.flatnonzero(expire), due)
        if rows.shape[0] == 0:
            return out
        accts = np.searchsorted(b.pos_ptr, rows, side="right") - 1
        figs = dict(zip(np.unique(accts).tolist(),
                        eng.state.figures_many(np.unique(accts)), strict=True))
        release = None
        for j, a in zip(rows.tolist(), accts.tolist(), strict=True):
            if expire[j]:
                ev = self._event("CONTRACT_EXPIRED", a, j, t, now_ns, figs[a])
                ev["plan"] = self.plan(a, j, t)
                if release is None:
                    release = eng.release_at(t) or 0
                if release:
                    ev["release_at"] = release
                b.pos_notice[j] |= NOTICE_EXPIRED | NOTICE_DUE
                self.sent_expired += 1
            else:
                ev = self._event("CONTRACT_DUE", a, j, t, now_ns, figs[a])
                try:
                    ev["trading_days_left"] = _days_between(cal, day, int(term[j]))
                except CalendarUnknown:
                    ev["trading_days_left"] = None
                b.pos_notice[j] |= NOTICE_DUE
                self.sent_due += 1
            out.append(ev)
        return out

    def _event(self, kind: str, a: int, j: int, t: int, now_ns: int, figures: dict) -> dict:
        eng = self.engine
        b = eng.state.book
        ev = eng.envelope(kind, t, now_ns)
        ev.update(figures)
        ev["tier"] = u.TIER_NAMES[int(eng.reported[a])]
        ev["previous_tier"] = ev["tier"]
        ev["profile"] = b.profile_names[b.profile_of[a]]
        c = contract_dict(b, j, int(eng.state.price[b.pos_sec[j]]))
        ev["contract_id"] = c["contract_id"]
        ev["term_end"] = c["term_end"]
        ev["contract"] = c
        return ev

    def plan(self, a: int, j: int, t_ns: int) -> dict:
        """The orders that close contract row `j` of account `a` at the current prices, and
        the account after them (exact integers; fees at the planner's cost rates)."""
        st = self.engine.state
        b = st.book
        s, k, q = int(b.pos_sec[j]), int(b.pos_kind[j]), int(b.pos_qty[j])
        p = int(st.price[s])
        value = q * p
        A, L = (int(x[0]) for x in st.values(np.array([a], dtype=np.int64)))
        cash = int(b.cash[a])
        name = contract_name(b, j)
        if k == u.FINANCED:
            proceeds = value - int(round(value * float(st.costs.sell)))
            owed = int(b.accrued[a]) + sum(int(b.pos_cost[r]) for r in _rows(b, a)
                                           if b.pos_kind[r] == u.FINANCED)
            repaid = min(max(proceeds, 0), owed)
            after_interest = max(proceeds, 0) - min(max(proceeds, 0), int(b.accrued[a]))
            residual = max(0, int(b.pos_cost[j]) - after_interest)
            cash2 = cash + proceeds - repaid
            A2 = A - max(cash, 0) + max(cash2, 0) - value
            L2 = L - max(-cash, 0) + max(-cash2, 0) - repaid
            side, purpose = "sell", "sell_to_repay"
        else:
            cost = value + int(round(value * float(st.costs.buy)))
            cash2 = cash - cost
            A2 = A - max(cash, 0) + max(cash2, 0)
            L2 = L - max(-cash, 0) + max(-cash2, 0) - value
            residual = 0
            side, purpose = "buy_to_cover", "buy_to_cover"
        orders = [] if q == 0 else [{
            "symbol": b.symbols[s], "side": side, "qty": q, "price": yuan(p),
            "value": yuan(value), "purpose": purpose, "contract_id": name}]
        lines = b.profile_lines[b.profile_of[a]]
        tier = int(tier_of(np.int64(A2), np.int64(L2), lines, 0))
        return {"orders": orders, "contract_id": name,
                "ratio_after": round(A2 / L2, 6) if L2 > 0 else None,
                "tier_after": u.TIER_NAMES[tier], "residual": yuan(residual),
                "priced_ns": int(t_ns)}


def _rows(b, a):
    lo = int(b.pos_ptr[a])
    n = int(b.pos_used[a]) if b.pos_used is not None else int(b.pos_ptr[a + 1]) - lo
    return range(lo, lo + n)


def _days_between(cal, day: int, term: int) -> int:
    """Trading days after `day` up to and including `term` (0 when term <= day)."""
    n, d = 0, day
    while n < 400:
        d = cal.add_days(d, 1)
        if d > term:
            return n
        n += 1
    return n
