"""The book: securities, line profiles, credit accounts and their positions, as flat arrays.

Account ids and symbols map to dense indices here, at the boundary; everything downstream works
on indices. `Book` holds what was loaded (positions sorted by account, one row per input
position); `Holdings` derives what the kernels walk: longs and shorts merged per (account,
security) by account (CSR, for the sweep) and by security (CSC, for incremental updates).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone

import numpy as np

from kernels import bands as kb
from kernels import units as u

CHINA_TZ = timezone(timedelta(hours=8))


def china_today() -> date:
    """Today in China time: the trading date a band applies to when no clock gives one."""
    return datetime.now(CHINA_TZ).date()


@dataclass(slots=True)
class Bands:
    """The daily price limits of every security on one trading day (kernels/bands.py)."""

    day: date
    band_bp: np.ndarray  # int64 bp of prev_close, kernels.bands.NO_LIMIT: none
    tick: np.ndarray  # int64 li: 10 (0.01) stocks, 1 (0.001) funds
    limit_down: np.ndarray  # int64 li
    limit_up: np.ndarray  # int64 li (a security without a limit: the guard's ceiling)

    @property
    def has_limit(self) -> np.ndarray:
        return self.band_bp >= 0

CALL_INTRADAY = 0  # a call opens on entering MARGIN_CALL (margin-rules.md §6)
CALL_CLOSE = 1  # a call is judged on the ratio at the close of day T
CALL_BASES = ("intraday", "close")


@dataclass(slots=True)
class CallTerms:
    """The margin-call lifecycle of each line profile (margin-rules.md §6; optional profile
    fields `cure_line`, `call_basis`, `call_days`, `use_free_cash`), indexed like
    `Book.profile_names` (per-account derived profiles included)."""

    cure_bp: np.ndarray  # int64 basis points; -1: the profile's target
    basis: np.ndarray  # int8 CALL_INTRADAY | CALL_CLOSE
    days: np.ndarray  # int64 T+N trading days; -1: the monitor's `call_days`
    use_free_cash: np.ndarray  # bool

    @classmethod
    def default(cls, n_profiles: int) -> CallTerms:
        return cls(np.full(n_profiles, -1, dtype=np.int64),
                   np.full(n_profiles, CALL_INTRADAY, dtype=np.int8),
                   np.full(n_profiles, -1, dtype=np.int64), np.ones(n_profiles, dtype=bool))

    def cure_lines(self, profile_lines: np.ndarray, profiles: np.ndarray) -> np.ndarray:
        """The cure line (bp) of each profile index in `profiles`."""
        c = self.cure_bp[profiles]
        return np.where(c < 0, profile_lines[profiles, u.LINE_TARGET], c)


@dataclass(slots=True)
class Book:
    # securities
    symbols: list[str]
    price: np.ndarray  # int64 money units per share
    prev_close: np.ndarray  # int64
    haircut: np.ndarray  # float64, 0..1
    board: np.ndarray  # int8 board code
    lot: np.ndarray  # int64 minimum order size in shares
    suspended: np.ndarray  # bool
    # line profiles
    profile_names: list[str]
    profile_lines: np.ndarray  # int64 [n_profiles, N_LINES] basis points
    # accounts
    account_ids: list[str]
    cash: np.ndarray  # int64, may be negative (then it is debt)
    accrued: np.ndarray  # int64 accrued interest and fees (I)
    other_debt: np.ndarray  # int64 other debt beyond negative cash
    other_collateral: np.ndarray  # int64 cash-like accepted collateral
    profile_of: np.ndarray  # int32 profile index per account
    # positions, sorted by account
    pos_ptr: np.ndarray  # int64 [n_accounts + 1]
    pos_sec: np.ndarray  # int32
    pos_kind: np.ndarray  # int8 kind code
    pos_qty: np.ndarray  # int64 shares (> 0)
    pos_cost: np.ndarray  # int64: financed_cost (financed), short_sell_amount (short), else 0
    pos_margin_ratio: np.ndarray  # float64: fin_ / short_margin_ratio, 0 for collateral
    symbol_index: dict[str, int] = field(default_factory=dict)
    account_index: dict[str, int] = field(default_factory=dict)
    # rows in use per account when the position table carries free slots (see with_slack)
    pos_used: np.ndarray | None = None
    # credit terms (monitor/creditbook.py: caps, lines, eligibility); None when the book has none
    credit: object | None = None
    # margin-call terms per profile (monitor/book/call_terms.py); None: the defaults for all
    call_terms: CallTerms | None = None
    # price-band inputs per security (margin-rules.md §5, kernels/bands.py); None: the default
    # (no risk warning, no listing date known, stock, the table's band)
    risk_warning: np.ndarray | None = None  # bool (board `st` implies it)
    listing_day: np.ndarray | None = None  # int64 date ordinal, 0: not known
    sec_type: np.ndarray | None = None  # int8 kernels.bands.TYPE_*
    limit_override: np.ndarray | None = None  # int64 bp, NO_LIMIT, or DERIVE (the table)
    # contracts (负债合约, monitor/book/contracts.py): per position row, beside pos_*; None in a
    # book built without them (`contracts()` fills in the defaults)
    pos_cid: np.ndarray | None = None  # int64 contract number (repayment order), 0 collateral
    pos_open_day: np.ndarray | None = None  # int32 date ordinal, 0 unknown
    pos_term_day: np.ndarray | None = None  # int32 date ordinal, 0 no term end
    pos_notice: np.ndarray | None = None  # int8 NOTICE_DUE | NOTICE_EXPIRED sent
    contract_names: dict | None = None  # contract number -> the book's contract_id
    contract_index: dict | None = None  # (account, contract_id) -> contract number
    next_cid: int = 0  # the number the next contract opened takes (0: not set yet)
    # contract terms per profile (monitor/book/contracts.py); None: the defaults for all
    contract_terms: object | None = None

    def __post_init__(self):
        if not self.symbol_index:
            self.symbol_index = {s: i for i, s in enumerate(self.symbols)}
        if not self.account_index:
            self.account_index = {a: i for i, a in enumerate(self.account_ids)}

    @property
    def n_accounts(self) -> int:
        return len(self.account_ids)

    @property
    def n_securities(self) -> int:
        return len(self.symbols)

    @property
    def n_positions(self) -> int:
        return int(self.pos_sec.shape[0])

    def with_slack(self, per_account: int = 2) -> Book:
        """A copy whose position table reserves `per_account` free rows after each account's
        positions, so fills that open a position need no reallocation. A free row is
        (sec 0, collateral, qty 0, cost 0): every kernel treats it as nothing."""
        used = np.diff(self.pos_ptr) if self.pos_used is None else self.pos_used
        old_lo = self.pos_ptr[:-1]
        ptr = np.zeros(self.n_accounts + 1, dtype=np.int64)
        np.cumsum(used + per_account, out=ptr[1:])
        rank = np.arange(int(used.sum())) - np.repeat(np.cumsum(used) - used, used)
        src = np.repeat(old_lo, used) + rank  # rows in use, account by account
        dst = np.repeat(ptr[:-1], used) + rank
        m = int(ptr[-1])

        def spread(a, fill=0):
            out = np.full(m, fill, dtype=a.dtype)
            out[dst] = a[src]
            return out

        self.contracts()
        return replace(self, pos_ptr=ptr, pos_sec=spread(self.pos_sec),
                       pos_kind=spread(self.pos_kind), pos_qty=spread(self.pos_qty),
                       pos_cost=spread(self.pos_cost),
                       pos_margin_ratio=spread(self.pos_margin_ratio),
                       pos_cid=spread(self.pos_cid), pos_open_day=spread(self.pos_open_day),
                       pos_term_day=spread(self.pos_term_day),
                       pos_notice=spread(self.pos_notice),
                       contract_names=dict(self.contract_names),
                       contract_index=dict(self.contract_index),
                       pos_used=used.astype(np.int64).copy(),
                       price=self.price.copy(), haircut=self.haircut.copy(),
                       suspended=self.suspended.copy(), cash=self.cash.copy(),
                       accrued=self.accrued.copy(), other_debt=self.other_debt.copy(),
                       other_collateral=self.other_collateral.copy(),
                       profile_of=self.profile_of.copy())

    def contracts(self) -> None:
        """Make sure the contract columns exist: a book built without them numbers its
        financed and short rows in book order, without dates or terms."""
        m = self.pos_sec.shape[0]
        if self.pos_cid is None:
            self.pos_cid = np.zeros(m, dtype=np.int64)
            rows = np.flatnonzero(self.pos_kind != u.COLLATERAL)
            if self.pos_used is not None:  # only rows in use
                acct = np.repeat(np.arange(self.n_accounts), np.diff(self.pos_ptr))
                rank = np.arange(m) - self.pos_ptr[:-1][acct]
                rows = rows[(rank < self.pos_used[acct])[rows]]
            self.pos_cid[rows] = np.arange(1, rows.shape[0] + 1, dtype=np.int64)
        if self.pos_open_day is None:
            self.pos_open_day = np.zeros(m, dtype=np.int32)
        if self.pos_term_day is None:
            self.pos_term_day = np.zeros(m, dtype=np.int32)
        if self.pos_notice is None:
            self.pos_notice = np.zeros(m, dtype=np.int8)
        if self.contract_names is None:
            self.contract_names = {}
        if self.contract_index is None:
            self.contract_index = {}
        if self.next_cid <= 0:
            self.next_cid = int(self.pos_cid.max(initial=0)) + 1

    def calls(self) -> CallTerms:
        """The call terms, defaults when the book has none."""
        if self.call_terms is None:
            self.call_terms = CallTerms.default(len(self.profile_names))
        return self.call_terms

    def band_inputs(self) -> tuple[np.ndarray, ...]:
        """(risk_warning, sec_type, star/ChiNext fund flag, override, listing day) per security,
        the defaults where the book gave none."""
        n = self.n_securities
        rw = (np.zeros(n, dtype=bool) if self.risk_warning is None else self.risk_warning)
        rw = rw | (self.board == u.BOARD_ST)
        typ = np.zeros(n, dtype=np.int8) if self.sec_type is None else self.sec_type
        cs = np.array([kb.star_chinext_fund(s) for s in self.symbols], dtype=bool) \
            if (typ == kb.TYPE_FUND).any() else np.zeros(n, dtype=bool)
        over = (np.full(n, kb.DERIVE, dtype=np.int64) if self.limit_override is None
                else self.limit_override)
        ld = np.zeros(n, dtype=np.int64) if self.listing_day is None else self.listing_day
        return rw, typ, cs, over, ld

    def bands(self, day: date | None = None, sessions: np.ndarray | None = None) -> Bands:
        """The bands of trading `day` (default: today, China time). `sessions` are the
        trading-day ordinals listing ages count on (the monitor's calendar); without them a
        listing of the last NEW_LISTING_HORIZON_DAYS counts as new (no limit)."""
        day = day or china_today()
        rw, typ, cs, over, ld = self.band_inputs()
        age = kb.listing_ages(ld, day.toordinal(), sessions)
        band = kb.band_bps(day, self.board, rw, typ, cs, over, age)
        tick = np.ascontiguousarray(kb.TICK[typ.astype(np.int64)])
        down = np.empty(self.n_securities, dtype=np.int64)
        up = np.empty(self.n_securities, dtype=np.int64)
        kb.limit_prices(np.ascontiguousarray(self.prev_close, dtype=np.int64), band, tick,
                        down, up)
        return Bands(day, band, tick, down, up)

    def limit_prices(self, day: date | None = None,
                     sessions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Limit-down and limit-up prices per security on trading `day` (see `bands`)."""
        b = self.bands(day, sessions)
        return b.limit_down, b.limit_up

    def price_ceiling(self) -> np.ndarray:
        """The highest price the tick guard can accept for each security on any trading day
        (the widest band the table gives it): what the money bounds of units.py assume."""
        rw, typ, cs, over, ld = self.band_inputs()
        new = np.where(ld > 0, 1, 0).astype(np.int64)  # one that has a listing day was new once
        top = np.zeros(self.n_securities, dtype=np.int64)
        tick = np.ascontiguousarray(kb.TICK[typ.astype(np.int64)])
        down = np.empty(self.n_securities, dtype=np.int64)
        up = np.empty(self.n_securities, dtype=np.int64)
        pc = np.ascontiguousarray(self.prev_close, dtype=np.int64)
        for day in sorted({r.since for r in kb.BAND_RULES} | {date.max}):
            for age in (new, np.zeros_like(new)):
                kb.limit_prices(pc, kb.band_bps(day, self.board, rw, typ, cs, over, age), tick,
                                down, up)
                top = np.maximum(top, up)
        return top

    def base_amounts(self) -> tuple[np.ndarray, np.ndarray]:
        """Price-independent part of assets and liabilities per account.

        assets = max(C, 0) + other collateral; liabilities = financed principal + I + max(-C, 0)
        + other debt. Tick updates only add long / short market value on top of these."""
        financed = np.where(self.pos_kind == u.FINANCED, self.pos_cost, 0)
        acct = np.repeat(np.arange(self.n_accounts), np.diff(self.pos_ptr))
        principal = np.zeros(self.n_accounts, dtype=np.int64)
        np.add.at(principal, acct, financed)
        base_assets = np.maximum(self.cash, 0) + self.other_collateral
        base_liab = principal + self.accrued + np.maximum(-self.cash, 0) + self.other_debt
        return base_assets.astype(np.int64), base_liab.astype(np.int64)


@dataclass(slots=True)
class Holdings:
    """What the ratio kernels walk. Longs merge collateral and financed holdings of a security.

    A live monitor builds it with free slots (`slack=True`): each account's CSR range and each
    security's CSC range end with free rows (qty 0), `*_used` counts the rows in use, and
    `*_xcsc` maps a CSR row to its CSC row, so a fill can open a position in place. A free CSC
    row names a holder of its security (or account 0), so walking it touches no extra account.
    """

    long_ptr: np.ndarray
    long_sec: np.ndarray
    long_qty: np.ndarray
    short_ptr: np.ndarray
    short_sec: np.ndarray
    short_qty: np.ndarray
    long_hptr: np.ndarray
    long_hacct: np.ndarray
    long_hqty: np.ndarray
    short_hptr: np.ndarray
    short_hacct: np.ndarray
    short_hqty: np.ndarray
    base_assets: np.ndarray
    base_liabilities: np.ndarray
    long_used: np.ndarray | None = None
    short_used: np.ndarray | None = None
    long_hused: np.ndarray | None = None
    short_hused: np.ndarray | None = None
    long_xcsc: np.ndarray | None = None
    short_xcsc: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.long_sec.shape[0] + self.short_sec.shape[0])

    @classmethod
    def from_book(cls, book: Book, slack: bool = False) -> Holdings:
        n_acct, n_sec = book.n_accounts, book.n_securities
        acct = np.repeat(np.arange(n_acct, dtype=np.int64), np.diff(book.pos_ptr))
        held = book.pos_qty > 0
        long_rows = held & (book.pos_kind != u.SHORT)
        short_rows = held & (book.pos_kind == u.SHORT)
        lp, ls, lq = merge_rows(acct[long_rows], book.pos_sec[long_rows], book.pos_qty[long_rows],
                            n_acct, n_sec)
        sp, ss, sq = merge_rows(acct[short_rows], book.pos_sec[short_rows],
                            book.pos_qty[short_rows], n_acct, n_sec)
        ba, bl = book.base_amounts()
        if not slack:
            lhp, lha, lhq, _ = transpose_rows(lp, ls, lq, n_sec)
            shp, sha, shq, _ = transpose_rows(sp, ss, sq, n_sec)
            return cls(lp, ls, lq, sp, ss, sq, lhp, lha, lhq, shp, sha, shq, ba, bl)
        long_side = _with_slots(lp, ls, lq, n_sec, LONG_SLOTS)
        short_side = _with_slots(sp, ss, sq, n_sec, SHORT_SLOTS)
        (lp, ls, lq, lhp, lha, lhq, lu, lhu, lx) = long_side
        (sp, ss, sq, shp, sha, shq, su, shu, sx) = short_side
        return cls(lp, ls, lq, sp, ss, sq, lhp, lha, lhq, shp, sha, shq, ba, bl,
                   lu, su, lhu, shu, lx, sx)


BOOK_SLOTS = 2  # free position rows per account in a live book
LONG_SLOTS = 2  # free long rows per account
SHORT_SLOTS = 1  # free short rows per account


def merge_rows(acct, sec, qty, n_acct, n_sec):
    """CSR by account of summed qty per (account, security), securities ascending."""
    key = acct.astype(np.int64) * n_sec + sec.astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    total = np.zeros(uniq.shape[0], dtype=np.int64)
    np.add.at(total, inv, qty.astype(np.int64))
    a = uniq // n_sec
    ptr = np.zeros(n_acct + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=n_acct), out=ptr[1:])
    return ptr, (uniq % n_sec).astype(np.int32), total


def transpose_rows(ptr, sec, qty, n_sec):
    """CSC by security (holders) of a CSR by account, and each CSR row's CSC row."""
    n_acct = ptr.shape[0] - 1
    acct = np.repeat(np.arange(n_acct, dtype=np.int32), np.diff(ptr))
    order = np.argsort(sec, kind="stable")
    hptr = np.zeros(n_sec + 1, dtype=np.int64)
    np.cumsum(np.bincount(sec, minlength=n_sec), out=hptr[1:])
    xcsc = np.empty(order.shape[0], dtype=np.int64)
    xcsc[order] = np.arange(order.shape[0])
    return hptr, acct[order].astype(np.int32), qty[order].astype(np.int64), xcsc


def _with_slots(ptr, sec, qty, n_sec, per_account):
    """CSR and CSC with free rows at the end of every account's and security's range."""
    n_acct = ptr.shape[0] - 1
    used = np.diff(ptr)
    hptr, hacct, hqty, xcsc = transpose_rows(ptr, sec, qty, n_sec)
    # CSR: row j of account a moves by a * per_account
    acct_of = np.repeat(np.arange(n_acct, dtype=np.int64), used)
    ptr2 = ptr + np.arange(n_acct + 1, dtype=np.int64) * per_account
    dst = np.arange(sec.shape[0], dtype=np.int64) + acct_of * per_account
    m = int(ptr2[-1])
    sec2 = np.zeros(m, dtype=np.int32)
    qty2 = np.zeros(m, dtype=np.int64)
    sec2[dst] = sec
    qty2[dst] = qty
    # CSC: each security keeps 4 + holders/16 free rows
    hused = np.diff(hptr)
    free = 4 + hused // 16
    hptr2 = np.zeros(n_sec + 1, dtype=np.int64)
    np.cumsum(hused + free, out=hptr2[1:])
    sec_of = np.repeat(np.arange(n_sec, dtype=np.int64), hused)
    hdst = np.arange(hacct.shape[0], dtype=np.int64) + (hptr2[:-1] - hptr[:-1])[sec_of]
    mh = int(hptr2[-1])
    last_holder = np.zeros(n_sec, dtype=np.int32)
    has = hused > 0
    last_holder[has] = hacct[hptr[1:][has] - 1]
    hacct2 = np.repeat(last_holder, hused + free)
    hqty2 = np.zeros(mh, dtype=np.int64)
    hacct2[hdst] = hacct
    hqty2[hdst] = hqty
    xcsc2 = np.zeros(m, dtype=np.int64)
    xcsc2[dst] = hdst[xcsc]
    return (ptr2, sec2, qty2, hptr2, hacct2, hqty2, used.astype(np.int64).copy(),
            hused.astype(np.int64).copy(), xcsc2)
