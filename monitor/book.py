"""The book: securities, line profiles, credit accounts and their positions, as flat arrays.

Account ids and symbols map to dense indices here, at the boundary; everything downstream works
on indices. `Book` holds what was loaded (positions sorted by account, one row per input
position); `Holdings` derives what the kernels walk: longs and shorts merged per (account,
security) by account (CSR, for the sweep) and by security (CSC, for incremental updates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from feeds.universe import limit_band
from kernels import units as u


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

    def limit_prices(self) -> tuple[np.ndarray, np.ndarray]:
        """Limit-down and limit-up prices per security (board limit on prev_close, 0.01 tick)."""
        return limit_band(self.prev_close, self.board)

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
    """What the ratio kernels walk. Longs merge collateral and financed holdings of a security."""

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

    @property
    def n_rows(self) -> int:
        return int(self.long_sec.shape[0] + self.short_sec.shape[0])

    @classmethod
    def from_book(cls, book: Book) -> Holdings:
        n_acct, n_sec = book.n_accounts, book.n_securities
        acct = np.repeat(np.arange(n_acct, dtype=np.int64), np.diff(book.pos_ptr))
        is_short = book.pos_kind == u.SHORT
        lp, ls, lq = _merge(acct[~is_short], book.pos_sec[~is_short], book.pos_qty[~is_short],
                            n_acct, n_sec)
        sp, ss, sq = _merge(acct[is_short], book.pos_sec[is_short], book.pos_qty[is_short],
                            n_acct, n_sec)
        lhp, lha, lhq = _transpose(lp, ls, lq, n_sec)
        shp, sha, shq = _transpose(sp, ss, sq, n_sec)
        ba, bl = book.base_amounts()
        return cls(lp, ls, lq, sp, ss, sq, lhp, lha, lhq, shp, sha, shq, ba, bl)


def _merge(acct, sec, qty, n_acct, n_sec):
    """CSR by account of summed qty per (account, security), securities ascending."""
    key = acct.astype(np.int64) * n_sec + sec.astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    total = np.zeros(uniq.shape[0], dtype=np.int64)
    np.add.at(total, inv, qty.astype(np.int64))
    a = uniq // n_sec
    ptr = np.zeros(n_acct + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=n_acct), out=ptr[1:])
    return ptr, (uniq % n_sec).astype(np.int32), total


def _transpose(ptr, sec, qty, n_sec):
    """CSC by security (holders) of a CSR by account."""
    n_acct = ptr.shape[0] - 1
    acct = np.repeat(np.arange(n_acct, dtype=np.int32), np.diff(ptr))
    order = np.argsort(sec, kind="stable")
    hptr = np.zeros(n_sec + 1, dtype=np.int64)
    np.cumsum(np.bincount(sec, minlength=n_sec), out=hptr[1:])
    return hptr, acct[order].astype(np.int32), qty[order].astype(np.int64)
