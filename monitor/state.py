"""Live margin state of a book: current prices and per-account market values, plus the figures
of one account (the payload of an alert or a line of `evaluate`).

This is the one place that turns kernel outputs into reported numbers, so `evaluate`, alert
events and the desk screen agree to the fen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import units as u
from kernels.liquidation import (
    DEFAULT_GROUP_RANK,
    blocked_flags,
    liquidation_status,
    liquidation_value,
    plan_account,
)
from kernels.margin import available_margin_balance_one, withdrawable_one
from kernels.ratios import sweep, tier_of
from kernels.stress import distance_one

from .book import Book, Holdings


@dataclass(slots=True)
class PlanCosts:
    """Trading cost rates applied by the planner (fractions of traded value)."""

    sell: float = 0.0
    buy: float = 0.0


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
                 costs: PlanCosts | None = None, group_rank: np.ndarray | None = None):
        self.book = book
        self.h = holdings or Holdings.from_book(book)
        self.price = book.price.copy()
        self.long_mv = np.zeros(book.n_accounts, dtype=np.int64)
        self.short_mv = np.zeros(book.n_accounts, dtype=np.int64)
        self.limit_down, self.limit_up = book.limit_prices()
        self.step = u.BOARD_STEP[book.board.astype(np.int64)]
        self.costs = costs or PlanCosts()
        self.group_rank = DEFAULT_GROUP_RANK if group_rank is None else group_rank
        self.sweep()

    # ------------------------------------------------------------ whole book
    def sweep(self) -> None:
        h = self.h
        sweep(self.price, self.price, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr,
              h.short_sec, h.short_qty, self.long_mv, self.short_mv)

    def assets(self) -> np.ndarray:
        return self.h.base_assets + self.long_mv

    def liabilities(self) -> np.ndarray:
        return self.h.base_liabilities + self.short_mv

    # ------------------------------------------------------------ one account
    def lines(self, a: int) -> np.ndarray:
        return self.book.profile_lines[self.book.profile_of[a]]

    def tier(self, a: int) -> int:
        return int(tier_of(self.h.base_assets[a] + self.long_mv[a],
                           self.h.base_liabilities[a] + self.short_mv[a], self.lines(a), 0))

    def figures(self, a: int) -> dict:
        """The account's reported figures, as in `evaluate` and in alert events."""
        b, h = self.book, self.h
        A = int(h.base_assets[a] + self.long_mv[a])
        L = int(h.base_liabilities[a] + self.short_mv[a])
        lines = self.lines(a)
        target = int(lines[u.LINE_TARGET])
        status = int(liquidation_status(A, L, target))
        amb = available_margin_balance_one(a, b.cash, b.accrued, b.other_debt,
                                           b.other_collateral, b.pos_ptr, b.pos_sec,
                                           b.pos_kind, b.pos_qty, b.pos_cost,
                                           b.pos_margin_ratio, self.price, b.haircut)
        wd = withdrawable_one(np.int64(b.cash[a]), np.int64(A), np.int64(L),
                              np.int64(lines[u.LINE_WITHDRAWABLE]))
        rec = {
            "account_id": b.account_ids[a],
            "assets": yuan(A),
            "liabilities": yuan(L),
            "ratio": round(A / L, 6) if L > 0 else None,
            "tier": u.TIER_NAMES[int(tier_of(A, L, lines, 0))],
            "available_margin_balance": yuan(float(amb)),
            "withdrawable": yuan(int(wd)),
        }
        rec.update(self.cure(A, L, target, status))
        return rec

    @staticmethod
    def cure(A: int, L: int, target_bp: int, status: int) -> dict:
        """Liquidation value, status, shortfall and the cure amounts of margin-rules.md §4."""
        if status == u.NOT_REQUIRED:
            return {"liquidation_value": 0.0, "liquidation_status": u.STATUS_NAMES[status],
                    "shortfall": 0.0, "cure": {"deposit": 0.0, "repay": 0.0}}
        x = liquidation_value(A, L, target_bp, 0.0, 0.0)
        # deposit T·L − A and repay L − A/T, exact rationals rounded to the fen
        deposit = (target_bp * L - u.RATIO_SCALE * A) / u.RATIO_SCALE
        repay = L - A * u.RATIO_SCALE / target_bp
        return {
            "liquidation_value": yuan(float(x)) if np.isfinite(x) else None,
            "liquidation_status": u.STATUS_NAMES[status],
            "shortfall": yuan(L - A) if status == u.UNREACHABLE_FULL_LIQUIDATION else 0.0,
            "cure": {"deposit": yuan(float(deposit)), "repay": yuan(float(repay))},
        }

    def plan(self, a: int) -> tuple[list[dict], float | None, float]:
        """Lot-rounded liquidation plan: (orders, ratio_after, residual value still needed)."""
        b, h = self.book, self.h
        A = np.int64(h.base_assets[a] + self.long_mv[a])
        L = np.int64(h.base_liabilities[a] + self.short_mv[a])
        target = np.int64(self.lines(a)[u.LINE_TARGET])
        n = int(b.pos_ptr[a + 1] - b.pos_ptr[a])
        sell_blocked = np.zeros(b.n_securities, dtype=np.bool_)
        buy_blocked = np.zeros(b.n_securities, dtype=np.bool_)
        blocked_flags(self.price, self.limit_down, self.limit_up, b.suspended, sell_blocked,
                      buy_blocked)
        out_sec = np.zeros(max(n, 1), dtype=np.int64)
        out_side = np.zeros(max(n, 1), dtype=np.int64)
        out_qty = np.zeros(max(n, 1), dtype=np.int64)
        out_value = np.zeros(max(n, 1), dtype=np.int64)
        rows, A2, L2 = plan_account(a, A, L, target, b.pos_ptr, b.pos_sec, b.pos_kind,
                                    b.pos_qty, b.pos_cost, self.price, b.prev_close, b.haircut,
                                    b.lot, self.step, sell_blocked, buy_blocked,
                                    float(self.costs.sell), float(self.costs.buy),
                                    self.group_rank, out_sec, out_side, out_qty, out_value)
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
        return orders, ratio_after, residual

    def stress(self, a: int) -> dict:
        """One limit move against every position, and the fall to each tier's line."""
        h = self.h
        lmv = _dot(h.long_ptr, h.long_sec, h.long_qty, self.limit_down, a)
        smv = _dot(h.short_ptr, h.short_sec, h.short_qty, self.limit_up, a)
        Ls = int(h.base_liabilities[a] + smv)
        As = int(h.base_assets[a] + lmv)
        A = np.int64(h.base_assets[a] + self.long_mv[a])
        L = np.int64(h.base_liabilities[a] + self.short_mv[a])
        lines = self.lines(a)
        dist = {}
        for name, k in (("warning", u.LINE_NORMAL), ("margin_call", u.LINE_WARNING),
                        ("forced_liquidation", u.LINE_MARGIN_CALL)):
            d = distance_one(np.int64(h.base_assets[a]), L, A, np.int64(self.long_mv[a]),
                             np.int64(lines[k]))
            dist[name] = round(float(d), 6) if np.isfinite(d) else None
        return {"stress_ratio": round(As / Ls, 6) if Ls > 0 else None, "distance": dist}


def _dot(ptr, sec, qty, price, a):
    lo, hi = ptr[a], ptr[a + 1]
    return int(np.dot(qty[lo:hi], price[sec[lo:hi]]))
