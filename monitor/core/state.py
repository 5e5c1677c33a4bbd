"""Live margin state of a book: current prices and per-account market values, plus the figures
of one account (the payload of an alert or a line of `evaluate`).

This is the one place that turns kernel outputs into reported numbers, so `evaluate`, alert
events and the desk screen agree to the fen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from kernels import bands as kb
from kernels import units as u
from kernels.liquidation import (
    DEFAULT_GROUP_RANK,
    blocked_flags,
    liquidation_value,
    plan_account,
)
from kernels.margin import available_margin_balance, free_cash, withdrawable
from kernels.ratios import plain_tiers, sweep, tier_of
from kernels.reach import account_values, short_values
from kernels.stress import distances, stress_ratio
from monitor.book.model import BOOK_SLOTS, Bands, Book, Holdings, china_today
from monitor.core.calendar import TradingCalendar, default_calendar


@dataclass(slots=True)
class PlanCosts:
    """Trading cost rates applied by the planner (fractions of traded value)."""

    sell: float = 0.0
    buy: float = 0.0


def yuan_array(x: np.ndarray) -> list:
    """Vectorised `yuan` for a whole column; NaN becomes None."""
    per_fen = u.MONEY_SCALE // 100
    if np.issubdtype(x.dtype, np.integer):
        fen = (np.abs(x) * 2 + per_fen) // (2 * per_fen)
        return (np.sign(x) * fen / 100).tolist()
    fen = np.floor(np.abs(x) / per_fen + 0.5)
    out = np.sign(x) * fen / 100 + 0.0  # no "-0.0"
    return [None if v != v else v for v in out.tolist()]


def yuan(x: int | float | None) -> float | None:
    """Money units -> yuan, rounded half away from zero to the fen (reports only)."""
    if x is None or not np.isfinite(x):
        return None
    per_fen = u.MONEY_SCALE // 100
    if isinstance(x, (int, np.integer)):
        fen = (abs(int(x)) * 2 + per_fen) // (2 * per_fen)
    else:
        fen = int(np.floor(abs(float(x)) / per_fen + 0.5))
    return (fen if x >= 0 else -fen) / 100


class MarginState:
    """Book + holdings + live prices and market values. Owned by one thread (the engine)."""

    def __init__(self, book: Book, holdings: Holdings | None = None,
                 costs: PlanCosts | None = None, group_rank: np.ndarray | None = None,
                 live: bool = False, *, band_day: date | None = None,
                 calendar: TradingCalendar | None = None,
                 unlimited_shock_bp: int = kb.DEFAULT_UNLIMITED_SHOCK_BP):
        """`live=True`: a private copy of the book with free rows, for account events to
        change (monitor/ledger.py); otherwise the book is read as loaded.

        The price bands (kernels/bands.py) are those of trading day `band_day` (default today,
        China time; the engine moves them with its clock: `set_band_day`), listing ages
        counted on `calendar` (default exchange_calendars XSHG). `unlimited_shock_bp`: the
        one-day stress's move of a security without a daily limit."""
        if live:
            book = book.with_slack(BOOK_SLOTS)
            holdings = Holdings.from_book(book, slack=True)
        self.book = book
        self.h = holdings or Holdings.from_book(book)
        self.price = book.price.copy()
        self.long_mv = np.zeros(book.n_accounts, dtype=np.int64)
        self.short_mv = np.zeros(book.n_accounts, dtype=np.int64)
        self.calendar = calendar
        self.unlimited_shock_bp = int(unlimited_shock_bp)
        if not 0 <= self.unlimited_shock_bp < u.RATIO_SCALE:
            raise ValueError("unlimited_shock_bp must be in [0, 10000)")
        # the bands of the current trading day; these arrays are updated in place
        self.bands = self.bands_for(band_day or china_today())
        self.limit_down, self.limit_up = self.bands.limit_down, self.bands.limit_up
        self.has_limit = np.ascontiguousarray(self.bands.band_bp >= 0)
        self.step = u.BOARD_STEP[book.board.astype(np.int64)]
        self.costs = costs or PlanCosts()
        self.group_rank = DEFAULT_GROUP_RANK if group_rank is None else group_rank
        # True while long_mv/short_mv of some accounts lag `price` (the engine's reach mode
        # refreshes them in rotation); `sync()` brings every account current
        self.stale = False
        self.sweep()

    # ------------------------------------------------------------ price bands
    def bands_for(self, day: date) -> Bands:
        """The bands of trading `day` for this book (the state's own stay as they are)."""
        b = self.book
        sessions = None
        if b.listing_day is not None and (b.listing_day > 0).any():
            cal = self.calendar or default_calendar()
            # listing ages count the calendar's trading days; past its known days a recent
            # listing counts as new (no limit) rather than guessing days from weekdays
            if cal.knows(day.toordinal()):
                sessions = cal.days
        return b.bands(day, sessions)

    def set_band_day(self, day: date, force: bool = False) -> bool:
        """Move the bands to trading `day` (in place: the arrays keep their identity). True
        when a band changed (a rule took effect, a listing aged past its first days).
        `force`: recompute even for the same day (the calendar changed)."""
        if day == self.bands.day and not force:
            return False
        new = self.bands_for(day)
        changed = not np.array_equal(new.band_bp, self.bands.band_bp)
        self.bands.day = day
        if changed:
            self.bands.band_bp[:] = new.band_bp
            self.limit_down[:] = new.limit_down
            self.limit_up[:] = new.limit_up
            self.has_limit[:] = new.band_bp >= 0
        return changed

    def stress_prices(self) -> tuple[np.ndarray, np.ndarray]:
        """One-day stress prices (margin-rules.md §5): longs to limit-down, shorts to
        limit-up; a security without a limit moves by `unlimited_shock_bp` of its price."""
        n = self.price.shape[0]
        down = np.empty(n, dtype=np.int64)
        up = np.empty(n, dtype=np.int64)
        kb.stress_prices(self.price, self.bands.band_bp, self.limit_down, self.limit_up,
                         self.bands.tick, self.unlimited_shock_bp, down, up)
        return down, up

    # ------------------------------------------------------------ whole book
    def sweep(self) -> None:
        """Market values of every account, exact at the current prices."""
        h = self.h
        sweep(self.price, self.price, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr,
              h.short_sec, h.short_qty, self.long_mv, self.short_mv)
        self.stale = False

    def sync(self) -> None:
        """Make long_mv/short_mv exact at the current prices for every account (a full sweep
        when they lag). Whole-book readers call it; per-account readers use `values`."""
        if self.stale:
            self.sweep()

    def values(self, accounts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact (assets, liabilities) of `accounts` at the current prices, from their
        positions; right whether or not the book-wide market values lag."""
        idx = np.ascontiguousarray(accounts, dtype=np.int64)
        h = self.h
        if not self.stale:
            return (h.base_assets[idx] + self.long_mv[idx],
                    h.base_liabilities[idx] + self.short_mv[idx])
        lmv = np.empty(idx.shape[0], dtype=np.int64)
        smv = np.empty(idx.shape[0], dtype=np.int64)
        account_values(idx, self.price, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr,
                       h.short_sec, h.short_qty, lmv, smv)
        return h.base_assets[idx] + lmv, h.base_liabilities[idx] + smv

    def assets(self) -> np.ndarray:
        self.sync()
        return self.h.base_assets + self.long_mv

    def liabilities(self) -> np.ndarray:
        """Liabilities of every account at the current prices (only shorts move them, so no
        full sweep is needed when the market values lag)."""
        if not self.stale:
            return self.h.base_liabilities + self.short_mv
        h = self.h
        smv = np.empty_like(self.short_mv)
        short_values(self.price, h.short_ptr, h.short_sec, h.short_qty, smv)
        return h.base_liabilities + smv

    # ------------------------------------------------------------ one account
    def lines(self, a: int) -> np.ndarray:
        return self.book.profile_lines[self.book.profile_of[a]]

    def tier(self, a: int) -> int:
        A, L = self.values(np.array([a], dtype=np.int64))
        return int(tier_of(A[0], L[0], self.lines(a), 0))

    def figures(self, a: int) -> dict:
        """The account's reported figures, as in `evaluate` and in alert events."""
        return self.figures_many(np.array([a], dtype=np.int64))[0]

    def figures_many(self, accounts: np.ndarray) -> list[dict]:
        """Reported figures of `accounts` (vectorised: `evaluate` runs this over the book)."""
        b = self.book
        idx = np.ascontiguousarray(accounts, dtype=np.int64)
        A, L = self.values(idx)
        lines = b.profile_lines[b.profile_of[idx]]
        T = lines[:, u.LINE_TARGET]
        S = u.RATIO_SCALE
        tiers = np.empty(idx.shape[0], dtype=np.int8)
        plain_tiers(A, L, np.arange(idx.shape[0], dtype=np.int32), lines, tiers)
        amb = np.empty(idx.shape[0], dtype=np.float64)
        available_margin_balance(idx, b.cash, b.accrued, b.other_debt, b.other_collateral,
                                 b.pos_ptr, b.pos_sec, b.pos_kind, b.pos_qty, b.pos_cost,
                                 b.pos_margin_ratio, self.price, b.haircut, amb)
        free = np.empty(idx.shape[0], dtype=np.int64)
        free_cash(idx, b.cash, b.pos_ptr, b.pos_kind, b.pos_qty, b.pos_cost, free)
        wd = np.empty(idx.shape[0], dtype=np.int64)
        withdrawable(free, amb, A, L, np.ascontiguousarray(lines[:, u.LINE_WITHDRAWABLE]), wd)
        need = T * L - S * A  # money · bp, > 0 when below target
        debt = L > 0
        status = np.where(~debt | (need <= 0), u.NOT_REQUIRED,
                          np.where(A <= L, u.UNREACHABLE_FULL_LIQUIDATION, u.REQUIRED))
        required = status != u.NOT_REQUIRED
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(debt, A / np.where(debt, L, 1), np.nan)
            x = np.where(status == u.REQUIRED, need / (T - S), 0.0)
            deposit = np.where(required, need / S, 0.0)
            repay = np.where(required, L - A * S / T, 0.0)
        shortfall = np.where(status == u.UNREACHABLE_FULL_LIQUIDATION, L - A, 0)
        cols = (
            [b.account_ids[i] for i in idx.tolist()],
            yuan_array(A), yuan_array(L),
            [None if r != r else round(r, 6) for r in ratio.tolist()],
            [u.TIER_NAMES[t] for t in tiers.tolist()],
            yuan_array(amb), yuan_array(wd), yuan_array(free),
            [None if st == u.UNREACHABLE_FULL_LIQUIDATION else v
             for v, st in zip(yuan_array(x), status.tolist(), strict=True)],
            [u.STATUS_NAMES[st] for st in status.tolist()],
            yuan_array(shortfall), yuan_array(deposit), yuan_array(repay),
        )
        return [
            {"account_id": aid, "assets": a_, "liabilities": l_, "ratio": r_, "tier": t_,
             "available_margin_balance": m_, "withdrawable": w_, "free_cash": c_,
             "liquidation_value": x_, "liquidation_status": s_, "shortfall": f_,
             "cure": {"deposit": d_, "repay": p_}}
            for aid, a_, l_, r_, t_, m_, w_, c_, x_, s_, f_, d_, p_ in zip(*cols, strict=True)
        ]

    def use_free_cash(self, a: int) -> bool:
        """The profile's `use_free_cash` (margin-rules.md §4; default on)."""
        flags = self.book.calls().use_free_cash
        p = int(self.book.profile_of[a])
        return bool(flags[p]) if p < flags.shape[0] else True

    def plan(self, a: int) -> tuple[list[dict], float | None, float]:
        """Lot-rounded liquidation plan: (orders, ratio_after, residual value still needed);
        `plan_detail` adds the cash repayment that comes before the orders."""
        d = self.plan_detail(a)
        return d["orders"], d["ratio_after"], d["residual"]

    def plan_detail(self, a: int) -> dict:
        """The whole plan: {orders, ratio_after, residual, cash_repayment, interest_repaid,
        principal_repaid} (yuan).

        Free cash first (the profile's `use_free_cash`): `cash_repayment` repays interest,
        then principal, before any order. Simulated on the account's cash, interest, principal
        and other debt / collateral (kernels/liquidation.py), so `ratio_after` is what the
        repayment and the orders really leave."""
        b = self.book
        target = np.int64(self.lines(a)[u.LINE_TARGET])
        n = int(b.pos_ptr[a + 1] - b.pos_ptr[a])
        sell_blocked = np.zeros(b.n_securities, dtype=np.bool_)
        buy_blocked = np.zeros(b.n_securities, dtype=np.bool_)
        blocked_flags(self.price, self.limit_down, self.limit_up, self.has_limit, b.suspended,
                      sell_blocked, buy_blocked)
        out_sec = np.zeros(max(n, 1), dtype=np.int64)
        out_side = np.zeros(max(n, 1), dtype=np.int64)
        out_qty = np.zeros(max(n, 1), dtype=np.int64)
        out_value = np.zeros(max(n, 1), dtype=np.int64)
        rows, A2, L2, repaid = plan_account(
            a, b.cash[a], b.accrued[a], b.other_debt[a], b.other_collateral[a], target,
            b.pos_ptr, b.pos_sec, b.pos_kind, b.pos_qty, b.pos_cost, self.price, b.prev_close,
            b.haircut, b.lot, self.step, sell_blocked, buy_blocked, float(self.costs.sell),
            float(self.costs.buy), self.group_rank, self.use_free_cash(a), out_sec, out_side,
            out_qty, out_value)
        orders = [{"symbol": b.symbols[int(out_sec[r])],
                   "side": u.SIDE_NAMES[int(out_side[r])],
                   "qty": int(out_qty[r]),
                   "price": yuan(int(self.price[out_sec[r]])),
                   "value": yuan(int(out_value[r]))} for r in range(rows)]
        ratio_after = round(int(A2) / int(L2), 6) if L2 > 0 else None
        residual = 0.0
        if L2 > 0 and A2 * u.RATIO_SCALE < target * L2:
            x = liquidation_value(A2, L2, target, 0.0, 0.0)
            residual = yuan(float(x)) if np.isfinite(x) else yuan(int(L2 - A2))
        interest = min(int(repaid), max(int(b.accrued[a]), 0))
        return {"orders": orders, "ratio_after": ratio_after, "residual": residual,
                "cash_repayment": yuan(int(repaid)), "interest_repaid": yuan(interest),
                "principal_repaid": yuan(int(repaid) - interest)}

    def stress(self, a: int) -> dict:
        return self.stress_many(np.array([a], dtype=np.int64))[0]

    def stress_many(self, accounts: np.ndarray) -> list[dict]:
        """One limit move against every position (longs to limit-down, shorts to limit-up), and
        the uniform fall of long prices that takes the account into each worse tier."""
        h, b = self.h, self.book
        idx = np.ascontiguousarray(accounts, dtype=np.int64)
        down, up = self.stress_prices()
        if idx.shape[0] > 64:
            lmv_all = np.empty_like(self.long_mv)
            smv_all = np.empty_like(self.short_mv)
            sweep(down, up, h.long_ptr, h.long_sec, h.long_qty,
                  h.short_ptr, h.short_sec, h.short_qty, lmv_all, smv_all)
            lmv, smv = lmv_all[idx], smv_all[idx]
        else:
            lmv = np.array([_dot(h.long_ptr, h.long_sec, h.long_qty, down, a)
                            for a in idx.tolist()], dtype=np.int64)
            smv = np.array([_dot(h.short_ptr, h.short_sec, h.short_qty, up, a)
                            for a in idx.tolist()], dtype=np.int64)
        sratio = np.empty(idx.shape[0], dtype=np.float64)
        stress_ratio(h.base_assets[idx], h.base_liabilities[idx], lmv, smv, sratio)
        dist = np.empty((idx.shape[0], 3), dtype=np.float64)
        A, L = self.values(idx)
        distances(h.base_assets[idx], A, L, A - h.base_assets[idx], b.profile_of[idx],
                  b.profile_lines, dist)
        out = []
        for r, d in zip(sratio.tolist(), dist.tolist(), strict=True):
            out.append({
                "stress_ratio": round(r, 6) if np.isfinite(r) else None,
                "distance": {k: (round(v, 6) if v == v else None)
                             for k, v in zip(DISTANCE_KEYS, d, strict=True)},
            })
        return out


DISTANCE_KEYS = ("warning", "margin_call", "forced_liquidation")


def _dot(ptr, sec, qty, price, a):
    lo, hi = ptr[a], ptr[a + 1]
    return int(np.dot(qty[lo:hi], price[sec[lo:hi]]))
