"""Liquidation sizing and the lot-rounded liquidation plan (margin-rules.md §4).

Selling `x` of longs and repaying debt, or buying back `x` of shorts with cash, moves assets and
liabilities by the same `x`; the closed forms below follow. The planner simulates each fill in
exact integer money (fees rounded up to the money unit), so `ratio_after >= target` is checked
exactly after lot rounding.
"""

import numba as nb
import numpy as np

from .units import (
    FINANCED,
    NOT_REQUIRED,
    RATIO_SCALE,
    REQUIRED,
    SHORT,
    SIDE_BUY_TO_COVER,
    SIDE_SELL,
    UNREACHABLE_FULL_LIQUIDATION,
)

# Policy groups; `group_rank[g]` orders them (default 0, 1, 2, 3).
GROUP_RISING_SHORTS = 0
GROUP_FINANCED = 1
GROUP_COLLATERAL = 2
GROUP_OTHER_SHORTS = 3
DEFAULT_GROUP_RANK = np.array([0, 1, 2, 3], dtype=np.int64)


@nb.njit(cache=True)
def liquidation_status(assets, liabilities, target_bp):
    if liabilities <= 0 or assets * RATIO_SCALE >= target_bp * liabilities:
        return NOT_REQUIRED
    if assets <= liabilities:
        return UNREACHABLE_FULL_LIQUIDATION
    return REQUIRED


@nb.njit(cache=True)
def liquidation_value(assets, liabilities, target_bp, sell_cost, buy_cost):
    """Market value to sell (or buy back) to reach the target, in money units (float).

    sell_cost > 0: x = (T·L − A)/(T·(1 − c) − 1); buy_cost > 0 (covering shorts):
    x = (T·L − A)/(T − 1 − c); both 0: x = (T·L − A)/(T − 1). NaN when unreachable."""
    status = liquidation_status(assets, liabilities, target_bp)
    if status == NOT_REQUIRED:
        return 0.0
    if status == UNREACHABLE_FULL_LIQUIDATION:
        return np.nan
    need = float(target_bp * liabilities - RATIO_SCALE * assets)  # money · bp
    t = target_bp / RATIO_SCALE
    if buy_cost > 0.0:
        den = t - 1.0 - buy_cost
    else:
        den = t * (1.0 - sell_cost) - 1.0
    if den <= 0.0:
        return np.nan
    return need / RATIO_SCALE / den


@nb.njit(cache=True, inline="always")
def _round_qty(q_need, avail, lot, step):
    """Smallest order >= q_need on the board's lot grid, or the whole position when that
    reaches its last round lot (the odd-lot remainder is sold whole)."""
    if avail <= lot:
        return avail
    if q_need <= lot:
        q = lot
    else:
        q = lot + ((q_need - lot + step - 1) // step) * step
    top = lot + ((avail - lot) // step) * step  # largest order on the grid
    if q >= top:
        return avail
    return q


@nb.njit(cache=True, inline="always")
def _fill(is_short, q, p, A, L, sell_cost, buy_cost):
    v = q * p
    if is_short:
        fee = np.int64(np.ceil(v * buy_cost)) if buy_cost > 0.0 else np.int64(0)
        return A - v - fee, L - v
    fee = np.int64(np.ceil(v * sell_cost)) if sell_cost > 0.0 else np.int64(0)
    repay = min(v - fee, L)
    return A - fee - repay, L - repay


@nb.njit(cache=True)
def plan_order(a, pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost, price, prev_close, haircut,
               group_rank):
    """Position indices of account `a` in the default policy's order: rising shorts (price
    above the average sale price or the previous close) by rise, financed by descending market
    value, collateral by lowest haircut then highest concentration, then the other shorts."""
    lo, hi = pos_ptr[a], pos_ptr[a + 1]
    n = hi - lo
    long_total = 0.0
    for j in range(lo, hi):
        if pos_kind[j] != SHORT:
            long_total += pos_qty[j] * price[pos_sec[j]]
    key = np.empty(n, dtype=np.float64)
    grp = np.empty(n, dtype=np.int64)
    for i in range(n):
        j = lo + i
        s = pos_sec[j]
        mv = float(pos_qty[j] * price[s])
        k = pos_kind[j]
        if k == SHORT:
            avg = pos_cost[j] / pos_qty[j]
            rise = max(price[s] / avg - 1.0 if avg > 0 else 0.0,
                       price[s] / prev_close[s] - 1.0)
            if rise > 0.0:
                grp[i] = group_rank[GROUP_RISING_SHORTS]
                key[i] = -rise
            else:
                grp[i] = group_rank[GROUP_OTHER_SHORTS]
                key[i] = -mv
        elif k == FINANCED:
            grp[i] = group_rank[GROUP_FINANCED]
            key[i] = -mv
        else:
            grp[i] = group_rank[GROUP_COLLATERAL]
            conc = mv / long_total if long_total > 0 else 0.0
            key[i] = np.round(haircut[s] * RATIO_SCALE) * 2.0 + (1.0 - conc)
    by_key = np.argsort(key, kind="mergesort")
    by_group = np.argsort(grp[by_key], kind="mergesort")
    return lo + by_key[by_group]


@nb.njit(cache=True)
def plan_account(a, assets, liabilities, target_bp, pos_ptr, pos_sec, pos_kind, pos_qty,
                 pos_cost, price, prev_close, haircut, lot, step, sell_blocked, buy_blocked,
                 sell_cost, buy_cost, group_rank, out_sec, out_side, out_qty, out_value):
    """Lot-rounded plan for account `a`. Fills out_* (one row per symbol and side) and returns
    (rows, assets_after, liabilities_after). Stops as soon as R' >= target; when R <= 1 the
    target is out of reach and every tradable position is liquidated."""
    status = liquidation_status(assets, liabilities, target_bp)
    if status == NOT_REQUIRED:
        return 0, assets, liabilities
    full = status == UNREACHABLE_FULL_LIQUIDATION
    order = plan_order(a, pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost, price, prev_close,
                       haircut, group_rank)
    A = assets
    L = liabilities
    t = target_bp / RATIO_SCALE
    rows = 0
    for j in order:
        if not full and A * RATIO_SCALE >= target_bp * L:
            break
        if L <= 0:
            break
        s = pos_sec[j]
        is_short = pos_kind[j] == SHORT
        if (is_short and buy_blocked[s]) or (not is_short and sell_blocked[s]):
            continue
        p = price[s]
        avail = pos_qty[j]
        if full:
            q = avail
        else:
            need = target_bp * L - RATIO_SCALE * A  # > 0, money · bp
            if is_short:
                den_f = t - 1.0 - buy_cost
            else:
                den_f = t * (1.0 - sell_cost) - 1.0
            if den_f <= 0.0:
                continue
            if sell_cost == 0.0 and buy_cost == 0.0:
                den = (target_bp - RATIO_SCALE) * p
                q_need = (need + den - 1) // den
            else:
                q_need = np.int64(np.ceil(need / RATIO_SCALE / den_f / p))
            q = _round_qty(q_need, avail, lot[s], step[s])
            for _ in range(100_000):
                A2, L2 = _fill(is_short, q, p, A, L, sell_cost, buy_cost)
                if q >= avail or A2 * RATIO_SCALE >= target_bp * L2:
                    break
                q = _round_qty(q + 1, avail, lot[s], step[s])
        A, L = _fill(is_short, q, p, A, L, sell_cost, buy_cost)
        side = SIDE_BUY_TO_COVER if is_short else SIDE_SELL
        r = 0
        while r < rows and not (out_sec[r] == s and out_side[r] == side):
            r += 1
        if r == rows:
            out_sec[r] = s
            out_side[r] = side
            out_qty[r] = 0
            out_value[r] = 0
            rows += 1
        out_qty[r] += q
        out_value[r] += q * p
    return rows, A, L


@nb.njit(cache=True)
def blocked_flags(price, limit_down, limit_up, suspended, sell_blocked, buy_blocked):
    """Untradable: suspended; longs locked at limit-down; shorts locked at limit-up."""
    for s in range(price.shape[0]):
        sell_blocked[s] = suspended[s] or price[s] <= limit_down[s]
        buy_blocked[s] = suspended[s] or price[s] >= limit_up[s]
