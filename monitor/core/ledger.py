"""Mutable positions of a live book: account events change quantities, costs and cash in place.

The live book and holdings carry free rows (`Book.with_slack`, `Holdings.from_book(slack=True)`),
so a fill that opens a position takes a free row instead of reallocating 8M-row arrays. When an
account or a security has no free row left, the structures are rebuilt from the book (exact,
counted in `rebuilds`; about a second at 1M accounts) with fresh free rows.
"""

from __future__ import annotations

from dataclasses import fields

from kernels import units as u
from monitor.book.model import BOOK_SLOTS, Holdings
from monitor.core.state import MarginState


class Ledger:
    def __init__(self, state: MarginState):
        self.state = state
        self.rebuilds = 0

    # ------------------------------------------------------------------ lookups
    def book_row(self, a: int, s: int, kind: int) -> int:
        b = self.state.book
        lo = int(b.pos_ptr[a])
        for j in range(lo, lo + int(b.pos_used[a])):
            if b.pos_sec[j] == s and b.pos_kind[j] == kind:
                return j
        return -1

    def rows(self, a: int) -> range:
        b = self.state.book
        lo = int(b.pos_ptr[a])
        return range(lo, lo + int(b.pos_used[a]))

    def held(self, a: int, s: int, kind: int) -> int:
        """Shares of `kind` the account holds in `s` (over all its contracts of the kind)."""
        b = self.state.book
        return sum(int(b.pos_qty[j]) for j in self.rows(a)
                   if b.pos_sec[j] == s and b.pos_kind[j] == kind)

    def contract_rows(self, a: int, kind: int, s: int | None = None) -> list[int]:
        """Rows of the account's open `kind` contracts (in `s`, or all), in repayment order."""
        b = self.state.book
        rows = [j for j in self.rows(a) if b.pos_kind[j] == kind
                and (s is None or b.pos_sec[j] == s)
                and (b.pos_cost[j] > 0 if kind == u.FINANCED else b.pos_qty[j] > 0)]
        rows.sort(key=lambda j: int(b.pos_cid[j]))
        return rows

    # ------------------------------------------------------------------ contracts
    def open_contract(self, a: int, s: int, kind: int, margin_ratio: float, open_day: int,
                      term_day: int, name: str | None = None) -> int:
        """A new contract row (no shares, no cost yet) numbered after every older one."""
        b = self.state.book
        b.contracts()
        j = self._open_book_row(a, s, kind, margin_ratio)
        b = self.state.book  # the same object, possibly with fresh columns
        cid = b.next_cid
        b.next_cid += 1
        b.pos_cid[j] = cid
        b.pos_open_day[j] = open_day
        b.pos_term_day[j] = term_day
        b.pos_notice[j] = 0
        if name is not None:
            b.contract_names[cid] = name
            b.contract_index[(int(a), name)] = cid
        return j

    def change_rows(self, a: int, deltas: dict[int, tuple[int, int]]) -> None:
        """Add (dqty, dcost) to position rows of account `a` (any securities and kinds)."""
        b = self.state.book
        moved: dict[tuple[int, bool], int] = {}
        for j, (dq, dc) in deltas.items():
            b.pos_qty[j] += dq
            b.pos_cost[j] += dc
            if dq:
                key = (int(b.pos_sec[j]), bool(b.pos_kind[j] == u.SHORT))
                moved[key] = moved.get(key, 0) + dq
        n = self.rebuilds
        for (s, short), dq in moved.items():
            if dq and self.rebuilds == n:  # a rebuild took every change from the book
                self._change_holding(a, s, short, dq)
        self.refresh_base(a)

    def change_position(self, a: int, s: int, kind: int, dqty: int, dcost: int,
                        margin_ratio: float | None = None) -> None:
        """Add `dqty` shares and `dcost` money units of cost (financed principal or short-sale
        amount) to the (account, security, kind) position, opening it when needed."""
        st = self.state
        j = self.book_row(a, s, kind)
        if j < 0:
            j = self._open_book_row(a, s, kind, margin_ratio)
        b = st.book
        b.pos_qty[j] += dqty
        b.pos_cost[j] += dcost
        if margin_ratio is not None:
            b.pos_margin_ratio[j] = margin_ratio
        if dqty:
            self._change_holding(a, s, kind == u.SHORT, dqty)
        self.refresh_base(a)

    def refresh_base(self, a: int) -> None:
        """Recompute the price-independent assets and liabilities of one account."""
        b, h = self.state.book, self.state.h
        r = self.rows(a)
        sl = slice(r.start, r.stop)
        principal = int(b.pos_cost[sl][b.pos_kind[sl] == u.FINANCED].sum())
        cash = int(b.cash[a])
        h.base_assets[a] = max(cash, 0) + int(b.other_collateral[a])
        h.base_liabilities[a] = (principal + int(b.accrued[a]) + max(-cash, 0)
                                 + int(b.other_debt[a]))

    def rebuild(self) -> None:
        """Fresh free rows everywhere, from the book; market values re-swept (exact)."""
        st = self.state
        self._reslack()
        st.h = Holdings.from_book(st.book, slack=True)
        st.sweep()
        self.rebuilds += 1

    # ------------------------------------------------------------------ internals
    def _open_book_row(self, a, s, kind, margin_ratio) -> int:
        b = self.state.book
        if b.pos_used[a] >= b.pos_ptr[a + 1] - b.pos_ptr[a]:
            self._reslack()
            self.rebuilds += 1
        j = int(b.pos_ptr[a] + b.pos_used[a])
        b.pos_used[a] += 1
        b.pos_sec[j] = s
        b.pos_kind[j] = kind
        b.pos_qty[j] = 0
        b.pos_cost[j] = 0
        b.pos_margin_ratio[j] = 1.0 if margin_ratio is None and kind != u.COLLATERAL \
            else (margin_ratio or 0.0)
        if b.pos_cid is not None:
            b.pos_cid[j] = 0
            b.pos_open_day[j] = 0
            b.pos_term_day[j] = 0
            b.pos_notice[j] = 0
        return j

    def _reslack(self) -> None:
        """Fresh free position rows, in place: the Book object stays the one that callers
        (an account event half-way through a fill, the desk) hold, so no write goes to a
        discarded copy."""
        b = self.state.book
        new = b.with_slack(BOOK_SLOTS)
        for f in fields(new):
            setattr(b, f.name, getattr(new, f.name))

    def _change_holding(self, a, s, short, dqty) -> None:
        st, h = self.state, self.state.h
        pre = "short_" if short else "long_"
        ptr, sec, qty = (getattr(h, pre + n) for n in ("ptr", "sec", "qty"))
        used, hptr, hacct, hqty, hused, xcsc = (
            getattr(h, pre + n) for n in ("used", "hptr", "hacct", "hqty", "hused", "xcsc"))
        lo = int(ptr[a])
        row = -1
        for j in range(lo, lo + int(used[a])):
            if sec[j] == s:
                row = j
                break
        if row < 0:
            if used[a] >= ptr[a + 1] - ptr[a] or hused[s] >= hptr[s + 1] - hptr[s]:
                self.rebuild()  # the book already holds the change
                return
            row = lo + int(used[a])
            used[a] += 1
            k = int(hptr[s] + hused[s])
            hused[s] += 1
            sec[row] = s
            qty[row] = 0
            xcsc[row] = k
            hacct[k] = a
            hqty[k] = 0
        qty[row] += dqty
        hqty[xcsc[row]] += dqty
        mv = st.short_mv if short else st.long_mv
        mv[a] += dqty * int(st.price[s])
