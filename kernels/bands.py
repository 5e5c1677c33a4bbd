"""Daily price limits (涨跌幅限制) by trading date: the one table (margin-rules.md §5).

Every user of a band (the feed's tick guard, limit-lock detection, the liquidation planner's
tradability, the one-day stress, the desk's crowding) takes it from `BAND_RULES` through
`band_bps` and `limit_prices`; nothing else knows a percentage.

A band is chosen per security and trading day from:

- the board (`units.BOARD_*`; the legacy board `st` means main board + risk warning),
- the risk-warning flag (ST, *ST): a flag of the security, not a board,
- the security type: stock, or fund (ETFs, LOFs: 0.001 price tick),
- the listing age: the trading day the day is, counting the listing day as 1 (0: not known),
- an explicit override per security (`limit_pct` in the book), which wins over the table.

A rule takes effect on its `since` date (a trading date, China time) and stays in force until a
later row of the same board and case replaces it. `EPOCH` rows hold for every date the monitor
can be given: the table does not model the rules before 2023 (ChiNext's 2020 and STAR's 2019
reforms, the main board's +44% first day), so before 2023-04-10 a new listing takes its board's
ordinary band.

Limit prices are `prev_close × (1 ± band)` rounded half up to the tick (0.01 stocks, 0.001
funds), in exact integers. A security without a limit (`NO_LIMIT`) is never locked at one;
its guard band is [one tick, `NO_LIMIT_CEILING` × prev_close] (a sanity bound that keeps the
money arithmetic in range, see units.py), and the stress moves it by a configurable shock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numba as nb
import numpy as np

from .common import I64, i64, void
from .units import (
    BOARD_BSE,
    BOARD_CHINEXT,
    BOARD_MAIN,
    BOARD_ST,
    BOARD_STAR,
    MONEY_SCALE,
    RATIO_SCALE,
)

NO_LIMIT = -1  # band of a security without a daily limit
DERIVE = -2  # limit override: none given, the table decides

TYPE_STOCK = 0
TYPE_FUND = 1
TYPE_NAMES = ("stock", "fund")
TYPE_CODES = {"stock": TYPE_STOCK, "fund": TYPE_FUND, "etf": TYPE_FUND, "lof": TYPE_FUND}
TICK = np.array([MONEY_SCALE // 100, MONEY_SCALE // 1000], dtype=np.int64)  # li, per type

NO_LIMIT_CEILING = 30  # the guard's top price of a security without a limit: 30 × prev_close
DEFAULT_UNLIMITED_SHOCK_BP = 3_000  # the stress's move of a security without a limit: 30%
# a listing at least this many calendar days old is past any "first N trading days" rule of
# the table (5 trading days span at most 19 calendar days around the longest closures)
NEW_LISTING_HORIZON_DAYS = 31

EPOCH = date.min  # rows in force for every date (the table does not model older rules)

# board keys of the table
MAIN, CHINEXT, STAR, BSE, FUND, FUND_CS = "main", "chinext", "star", "bse", "fund", "fund_cs"
ORDINARY, RISK_WARNING, NEW_LISTING = "ordinary", "risk_warning", "new_listing"


@dataclass(frozen=True, slots=True)
class BandRule:
    since: date  # the first trading date the rule applies to
    board: str  # MAIN, CHINEXT, STAR, BSE, FUND, FUND_CS (funds of ChiNext / STAR stocks only)
    case: str  # ORDINARY, RISK_WARNING or NEW_LISTING
    band_bp: int  # basis points of prev_close, or NO_LIMIT
    days: int = 0  # NEW_LISTING: the rule covers the first `days` trading days
    note: str = ""


BAND_RULES: tuple[BandRule, ...] = (
    BandRule(EPOCH, MAIN, ORDINARY, 1_000, note="main board (60xxxx, 00xxxx) ±10%"),
    BandRule(EPOCH, MAIN, RISK_WARNING, 500, note="ST / *ST on the main board ±5%"),
    BandRule(date(2026, 7, 6), MAIN, RISK_WARNING, 1_000,
             note="ST / *ST on the main board ±10% (exchange revision of 2026-07-06)"),
    BandRule(date(2023, 4, 10), MAIN, NEW_LISTING, NO_LIMIT, days=5,
             note="main board new listings: no limit for the first 5 trading days"),
    BandRule(EPOCH, CHINEXT, ORDINARY, 2_000, note="ChiNext (300/301) ±20%"),
    BandRule(EPOCH, CHINEXT, RISK_WARNING, 2_000, note="ChiNext risk warning ±20%"),
    BandRule(date(2023, 4, 10), CHINEXT, NEW_LISTING, NO_LIMIT, days=5,
             note="ChiNext new listings: no limit for the first 5 trading days"),
    BandRule(EPOCH, STAR, ORDINARY, 2_000, note="STAR (688/689) ±20%"),
    BandRule(EPOCH, STAR, RISK_WARNING, 2_000, note="STAR risk warning ±20%"),
    BandRule(date(2023, 4, 10), STAR, NEW_LISTING, NO_LIMIT, days=5,
             note="STAR new listings: no limit for the first 5 trading days"),
    BandRule(EPOCH, BSE, ORDINARY, 3_000, note="Beijing (8xxxxx, 4xxxxx, 920xxx) ±30%"),
    BandRule(EPOCH, BSE, RISK_WARNING, 3_000, note="Beijing risk warning ±30%"),
    BandRule(EPOCH, BSE, NEW_LISTING, NO_LIMIT, days=1,
             note="Beijing new listings: no limit on the first trading day"),
    BandRule(EPOCH, FUND, ORDINARY, 1_000, note="ETFs and funds ±10%"),
    BandRule(EPOCH, FUND_CS, ORDINARY, 2_000,
             note="funds of ChiNext / STAR stocks only (588xxx; 159xxx of those indices) ±20%"),
)

_STOCK_BOARD = {BOARD_MAIN: MAIN, BOARD_ST: MAIN, BOARD_CHINEXT: CHINEXT, BOARD_STAR: STAR,
                BOARD_BSE: BSE}


def rule_in_force(board: str, case: str, day: date) -> BandRule | None:
    """The row of (board, case) in force on `day`: the latest `since` at or before it."""
    best = None
    for r in BAND_RULES:
        if r.board == board and r.case == case and r.since <= day and (
                best is None or r.since > best.since):
            best = r
    return best


def changes_between(lo: date, hi: date) -> bool:
    """Whether a rule of the table takes effect in (lo, hi]: the bands of `hi` may differ from
    those of `lo` for a reason other than listing ages."""
    return any(lo < r.since <= hi for r in BAND_RULES)


def star_chinext_fund(symbol: str) -> bool:
    """A fund the symbol shows to hold only ChiNext / STAR stocks: 588xxx (STAR ETFs). A 159xxx
    ChiNext-index fund cannot be told from its symbol: give it `limit_pct` in the book."""
    return str(symbol).upper().startswith("588")


def band_bps(day: date, board: np.ndarray, risk_warning: np.ndarray, sec_type: np.ndarray,
             cs_fund: np.ndarray, override: np.ndarray, age: np.ndarray) -> np.ndarray:
    """The band (bp, or NO_LIMIT) of every security on trading `day` (see the module
    docstring); `age` is the trading day `day` is since listing (listing day 1; 0 unknown)."""
    board = np.asarray(board).astype(np.int64)
    rw = np.asarray(risk_warning, dtype=bool) | (board == BOARD_ST)
    fund = np.asarray(sec_type) == TYPE_FUND
    cs = np.asarray(cs_fund, dtype=bool)
    age = np.asarray(age, dtype=np.int64)
    out = np.full(board.shape[0], NO_LIMIT, dtype=np.int64)
    for code, key in _STOCK_BOARD.items():
        on = (board == code) & ~fund
        if not on.any():
            continue
        ordinary = rule_in_force(key, ORDINARY, day)
        warned = rule_in_force(key, RISK_WARNING, day) or ordinary
        out[on & ~rw] = ordinary.band_bp
        out[on & rw] = warned.band_bp
        new = rule_in_force(key, NEW_LISTING, day)
        if new is not None:
            out[on & (age >= 1) & (age <= new.days)] = new.band_bp
    out[fund & ~cs] = rule_in_force(FUND, ORDINARY, day).band_bp
    out[fund & cs] = rule_in_force(FUND_CS, ORDINARY, day).band_bp
    given = np.asarray(override, dtype=np.int64)
    return np.where(given != DERIVE, given, out).astype(np.int64)


def listing_ages(listing_day: np.ndarray, day: int, sessions: np.ndarray | None) -> np.ndarray:
    """The trading day `day` (ordinal) is since each listing (listing day 1), from the sorted
    trading-day ordinals `sessions`; 0 where no listing day is known (ordinal 0) or where the
    listing is older than NEW_LISTING_HORIZON_DAYS (past every new-listing rule). A day before
    the listing counts as the first day. `sessions` None: every recent listing counts as new
    (no limit) - callers with a calendar pass its days."""
    ld = np.asarray(listing_day, dtype=np.int64)
    out = np.zeros(ld.shape[0], dtype=np.int64)
    recent = (ld > 0) & (ld > day - NEW_LISTING_HORIZON_DAYS)
    if not recent.any():
        return out
    if sessions is None:
        out[recent] = 1
        return out
    s = np.asarray(sessions, dtype=np.int64)
    lo = np.searchsorted(s, ld[recent], side="left")
    hi = np.searchsorted(s, day, side="right")
    out[recent] = np.maximum(hi - lo, 1)
    return out


@nb.njit(void(I64, I64, I64, I64, I64), cache=True)
def limit_prices(prev_close, band_bp, tick, down, up):
    """Limit-down / limit-up of every security: prev_close × (1 ∓ band) rounded half up to its
    tick, exact in integers; without a limit (band NO_LIMIT) the guard band
    [tick, NO_LIMIT_CEILING × prev_close]."""
    for s in range(prev_close.shape[0]):
        pc = prev_close[s]
        b = band_bp[s]
        t = tick[s]
        if b < 0:
            down[s] = t
            up[s] = max(pc * NO_LIMIT_CEILING, t)
            continue
        scale = RATIO_SCALE * t
        down[s] = max((pc * (RATIO_SCALE - b) + scale // 2) // scale * t, 0)
        up[s] = (pc * (RATIO_SCALE + b) + scale // 2) // scale * t


@nb.njit(void(I64, I64, I64, I64, I64, i64, I64, I64), cache=True)
def stress_prices(price, band_bp, limit_down, limit_up, tick, shock_bp, down, up):
    """One-day stress prices: longs to limit-down (`down`), shorts to limit-up (`up`); a
    security without a limit moves by `shock_bp` of its current price either way, rounded
    half up to its tick (never below one tick)."""
    for s in range(price.shape[0]):
        if band_bp[s] >= 0:
            down[s] = limit_down[s]
            up[s] = limit_up[s]
            continue
        t = tick[s]
        scale = RATIO_SCALE * t
        down[s] = max((price[s] * (RATIO_SCALE - shock_bp) + scale // 2) // scale * t, t)
        up[s] = (price[s] * (RATIO_SCALE + shock_bp) + scale // 2) // scale * t
