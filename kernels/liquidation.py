"""Liquidation sizing and the lot-rounded liquidation plan (margin-rules.md §4).

The closed forms (`liquidation_value`) are §4's: selling `x` of longs and repaying debt, or
buying back `x` of shorts with cash, moves assets and liabilities by the same `x`.

The planner does not assume that: it simulates every fill on the account's cash, per §1, in
exact integer money (fees rounded up to the money unit):

- state: cash `C` (negative cash is debt), accrued interest and fees `I`, financed principal
  `F`, other debt, other collateral, long and short market value;
  `A = max(C, 0) + other collateral + long MV`,
  `L = F + I + other debt + short MV + max(−C, 0)`;
- a long sale of value `v` (fee `f`): `C += v − f`, then the proceeds repay debt from the
  positive cash, interest first, then principal: `r = min(max(C, 0), v − f, I + F)`, `C −= r`
  (proceeds first refill negative cash; cash already in the account is not swept);
- a cover of value `v` (fee `f`): `C −= v + f`, short MV `−= v` (cash below zero becomes debt).

A fill only helps as far as it moves real debt: a sale whose proceeds find no negative cash or
`I + F` to repay just parks cash, and a cover beyond the cash overdraws it. Each position, in
policy order, is sized as if it were the last one needed, counting on the later positions of
the plan to settle the cash it leaves: an overdraft as far as the later sales can refill it,
idle proceeds as far as the later covers can spend them and need them to reach the target
(the "projected" excess below, net of the settling fills' fees). A position that cannot reach
the target is traded up to where it stops helping, or skipped when trading it does not cut the
shortfall `T·L − A`. Short of the target after one walk of the policy order, the planner walks
it again over what is left (lot rounding and fees can leave idle cash a cover can still use).
Whatever is sized, the reported result is the exact simulation. tests/reference.py restates
all of it in Decimal arithmetic.

Free cash first (§4, profile `use_free_cash`): before any order, free cash
`C_free = max(0, C − Σ short_sell_amount)` repays interest, then principal, as far as needed:
`min(C_free, x*, I + F)` (`cash_repayment_of`); the orders are sized on what is left.

Least liquidation (§4): the walks are strict first. A cover is paid from the cash there is
(short-sale proceeds and free cash left over); only a rising short (the policy covers it
first) may count on later sales to refill an overdraft, and a sale only counts on later
rising covers to spend its idle proceeds. Only when strict walks fall short of the target do
"funded" walks let any cover be paid by sales (a cover funded by a sale trades the value
twice). The order that brings R' to the target is the last one: it switches to the tradable
holding whose smallest order reaching the target alone is worth least (the policy's own
position on a tie). Then every fill, from the last back, is cut to the smallest admissible
size with which the whole sequence still reaches the target (an early fill sized "as if the
last one" may be more than the later fills leave it to do), so the value used beyond x* is
about one lot step of an order, not more.
"""

import numba as nb
import numpy as np

from .common import B1, F64, I8, I32, I64, f64, i64, void
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
# Walks of the policy order: a later walk picks up what lot rounding and fees left (say, idle
# proceeds of a whole odd lot that can still pay for a cover earlier in the order).
MAX_PASSES = 4


@nb.njit(i64(i64, i64, i64), cache=True)
def liquidation_status(assets, liabilities, target_bp):
    if liabilities <= 0 or assets * RATIO_SCALE >= target_bp * liabilities:
        return NOT_REQUIRED
    if assets <= liabilities:
        return UNREACHABLE_FULL_LIQUIDATION
    return REQUIRED


@nb.njit(f64(i64, i64, i64, f64, f64), cache=True)
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


# ---------------------------------------------------------------- lots


@nb.njit(cache=True, inline="always")
def _grid_n(avail, lot, step):
    """Number of admissible order sizes for a holding of `avail` shares: at least one lot, then
    `step` increments below the last full step, then the whole holding (an odd-lot remainder
    goes with the last round lot; a holding of at most one lot is traded whole)."""
    if avail <= lot:
        return np.int64(1)
    top = lot + ((avail - lot) // step) * step  # largest size on the grid
    return (top - lot) // step + 1


@nb.njit(cache=True, inline="always")
def _grid_size(i, n, avail, lot, step):
    if i >= n - 1:
        return avail
    return lot + i * step


@nb.njit(cache=True, inline="always")
def _grid_index(q, n, lot, step):
    """Index of the smallest admissible size >= q (the whole holding when none is smaller)."""
    if q <= lot:
        return np.int64(0)
    return min((q - lot + step - 1) // step, n - 1)


# ---------------------------------------------------------------- the cash model


@nb.njit(cache=True, inline="always")
def _fee(v, rate):
    return np.int64(np.ceil(v * rate)) if rate > 0.0 else np.int64(0)


@nb.njit(cache=True, inline="always")
def _amounts(C, I, F, other_debt, other_coll, long_mv, short_mv):
    return (max(C, 0) + other_coll + long_mv,
            F + I + other_debt + short_mv + max(-C, 0))


@nb.njit(cache=True, inline="always")
def _fill(is_short, v, fee, C, I, F):
    """Cash, interest and principal after one fill of value `v` with fee `fee`."""
    if is_short:
        return C - v - fee, I, F
    C = C + v - fee
    if C > 0:
        r = min(C, v - fee, I + F)  # the proceeds repay debt: interest first, then principal
        ri = min(r, I)
        return C - r, I - ri, F - (r - ri)
    return C, I, F


@nb.njit(cache=True, inline="always")
def _projected_excess(is_short, q, p, C, I, F, other_debt, other_coll, long_mv, short_mv,
                      spare, target_bp, sell_cost, buy_cost):
    """`A·10⁴ − T·L` (money · bp) after a fill of `q` shares, counting on the later positions to
    settle up to `spare` of the cash it leaves: later sales refill the overdraft `m` a cover
    opens (selling about `m` plus their fees of longs), later covers spend the idle proceeds
    `m` of a sale (buying back about `m` less their fees of shorts)."""
    v = q * p
    if is_short:
        fee = _fee(v, buy_cost)
        C1, I1, F1 = _fill(True, v, fee, C, I, F)
        A1, L1 = _amounts(C1, I1, F1, other_debt, other_coll, long_mv, short_mv - v)
        m = max(min(max(-C1, 0) - max(-C, 0), spare), 0)
        sold = m + _fee(m + _fee(m, sell_cost), sell_cost)
        return RATIO_SCALE * (A1 - sold) - target_bp * (L1 - m)
    fee = _fee(v, sell_cost)
    C1, I1, F1 = _fill(False, v, fee, C, I, F)
    A1, L1 = _amounts(C1, I1, F1, other_debt, other_coll, long_mv - v, short_mv)
    m = max(min(max(C1, 0) - max(C, 0), spare), 0)
    covered = m - _fee(m, buy_cost)
    return RATIO_SCALE * (A1 - m) - target_bp * (L1 - covered)


@nb.njit(cache=True)
def _size_order(is_short, avail, p, lot, step, C, I, F, other_debt, other_coll, long_mv,
                short_mv, later_long, later_short, target_bp, sell_cost, buy_cost):
    """Shares of one position to trade (0: skip it), in REQUIRED mode.

    The smallest admissible order whose projected excess reaches 0 (R' >= target); when none
    does, the order where the fill stops helping (the last admissible size whose value is
    fully used, or the next one, whichever leaves more excess), if it beats not trading."""
    n = _grid_n(avail, lot, step)
    if is_short:
        # cash a cover can use: the positive cash, and what later sales can refill beyond
        # the overdraft already there
        spare = max(later_long - max(-C, 0), 0)
        usable = max(C, 0) + spare
    else:
        # proceeds a sale can put to use: refill negative cash, repay I + F, and cash the
        # later covers need beyond the cash already there (they need at most what covering
        # alone would take to reach the target: x = (T·L − A)/(T − 1) and its fee)
        A0, L0 = _amounts(C, I, F, other_debt, other_coll, long_mv, short_mv)
        cover_need = (target_bp * L0 - RATIO_SCALE * A0 + target_bp - RATIO_SCALE - 1) // (
            target_bp - RATIO_SCALE)
        spare = max(min(later_short, cover_need + _fee(cover_need, buy_cost)) - max(C, 0), 0)
        usable = max(-C, 0) + I + F + spare
    # i_lo: the last size whose cash effect (cost of a cover, net proceeds of a sale) is
    # usable in full; monotone in the size, so a binary search finds it
    lo_i = np.int64(-1)
    hi_i = n
    while hi_i - lo_i > 1:
        mid = (lo_i + hi_i) // 2
        v = _grid_size(mid, n, avail, lot, step) * p
        if is_short:
            inside = v + _fee(v, buy_cost) <= usable
        else:
            inside = v - _fee(v, sell_cost) <= usable
        if inside:
            lo_i = mid
        else:
            hi_i = mid
    i_lo = lo_i
    e_lo = np.int64(0)
    if i_lo >= 0:
        e_lo = _projected_excess(is_short, _grid_size(i_lo, n, avail, lot, step), p, C, I, F,
                                 other_debt, other_coll, long_mv, short_mv, spare, target_bp,
                                 sell_cost, buy_cost)
    if i_lo >= 0 and e_lo >= 0:
        # Up to i_lo the fill moves A and L together (§4 with costs): the excess rises with
        # the size, so the smallest size reaching the target is bracketed and bisected.
        # Start from the closed form, rounded onto the grid.
        t = target_bp / RATIO_SCALE
        den = (t - 1.0 - buy_cost) if is_short else (t * (1.0 - sell_cost) - 1.0)
        A0, L0 = _amounts(C, I, F, other_debt, other_coll, long_mv, short_mv)
        x = (target_bp * L0 - RATIO_SCALE * A0) / RATIO_SCALE / den / p
        q_need = avail if x >= avail else np.int64(np.ceil(x))
        g = min(_grid_index(q_need, n, lot, step), i_lo)
        yes = i_lo  # smallest index known to reach
        no = np.int64(-1)  # largest index known not to (-1: trading nothing)
        if _projected_excess(is_short, _grid_size(g, n, avail, lot, step), p, C, I, F,
                             other_debt, other_coll, long_mv, short_mv, spare, target_bp,
                             sell_cost, buy_cost) >= 0:
            yes = g
            d = np.int64(1)
            while yes - d > no:  # step down, galloping, while a smaller order still reaches
                j = yes - d
                if _projected_excess(is_short, _grid_size(j, n, avail, lot, step), p, C, I,
                                     F, other_debt, other_coll, long_mv, short_mv, spare,
                                     target_bp, sell_cost, buy_cost) >= 0:
                    yes = j
                    d *= 2
                else:
                    no = j
                    break
        else:
            no = g
            d = np.int64(1)
            while no + d < yes:  # gallop upward to a size that reaches
                j = no + d
                if _projected_excess(is_short, _grid_size(j, n, avail, lot, step), p, C, I,
                                     F, other_debt, other_coll, long_mv, short_mv, spare,
                                     target_bp, sell_cost, buy_cost) >= 0:
                    yes = j
                    break
                no = j
                d *= 2
        while yes - no > 1:
            mid = (no + yes) // 2
            if _projected_excess(is_short, _grid_size(mid, n, avail, lot, step), p, C, I, F,
                                 other_debt, other_coll, long_mv, short_mv, spare, target_bp,
                                 sell_cost, buy_cost) >= 0:
                yes = mid
            else:
                no = mid
        return _grid_size(yes, n, avail, lot, step)
    A0, L0 = _amounts(C, I, F, other_debt, other_coll, long_mv, short_mv)
    best_q = np.int64(0)
    best_e = RATIO_SCALE * A0 - target_bp * L0  # not trading
    if i_lo >= 0 and e_lo > best_e:
        best_q = _grid_size(i_lo, n, avail, lot, step)
        best_e = e_lo
    if i_lo + 1 < n:
        q_hi = _grid_size(i_lo + 1, n, avail, lot, step)
        e_hi = _projected_excess(is_short, q_hi, p, C, I, F, other_debt, other_coll, long_mv,
                                 short_mv, spare, target_bp, sell_cost, buy_cost)
        if e_hi >= 0 or e_hi > best_e:
            return q_hi
    return best_q


# ---------------------------------------------------------------- the plan


@nb.njit(cache=True, inline="always")
def _short_rise(j, pos_sec, pos_qty, pos_cost, price, prev_close):
    """How far short `j`'s price has risen: above its average sale price or the previous
    close, whichever is more (> 0: a rising short, covered first by the default policy)."""
    s = pos_sec[j]
    avg = pos_cost[j] / pos_qty[j] if pos_qty[j] > 0 else 0.0
    return max(price[s] / avg - 1.0 if avg > 0 else 0.0, price[s] / prev_close[s] - 1.0)


@nb.njit(I64(i64, I64, I32, I8, I64, I64, I64, I64, F64, I64), cache=True)
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
            rise = _short_rise(j, pos_sec, pos_qty, pos_cost, price, prev_close)
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


@nb.njit(cache=True, inline="always")
def _excess_after(is_short, v, fee, C, I, F, other_debt, other_coll, long_mv, short_mv,
                  target_bp):
    """`A·10⁴ − T·L` (money · bp) right after one fill of value `v` with fee `fee`: >= 0
    exactly when that fill alone brings R' to the target."""
    C1, I1, F1 = _fill(is_short, v, fee, C, I, F)
    if is_short:
        A1, L1 = _amounts(C1, I1, F1, other_debt, other_coll, long_mv, short_mv - v)
    else:
        A1, L1 = _amounts(C1, I1, F1, other_debt, other_coll, long_mv - v, short_mv)
    return RATIO_SCALE * A1 - target_bp * L1


@nb.njit(i64(i64, i64, i64, i64, i64, i64, i64, nb.boolean), cache=True)
def cash_repayment_of(cash, accrued, principal, proceeds, assets, liabilities, target_bp,
                      full):
    """Free cash first (margin-rules.md §4): `min(C_free, x*, I + F)` with
    `C_free = max(0, C − Σ short_sell_amount)` and `x* = ⌈(T·L − A)/(T − 1)⌉` (money units;
    no cost: a direct repayment moves A and L by the same amount). Underwater (`full`), x* does
    not bound it: all the free cash that finds interest or principal to repay."""
    free = max(cash - proceeds, 0)
    cap = accrued + principal
    if not full:
        den = target_bp - RATIO_SCALE
        x = (target_bp * liabilities - RATIO_SCALE * assets + den - 1) // den
        cap = min(cap, max(x, 0))
    return min(free, cap)


@nb.njit(cache=True)
def _replay(nf, fill_k, fill_q, order, pos_sec, pos_kind, price, C, I, F, long_mv, short_mv,
            sell_cost, buy_cost):
    """Cash, I, F, long and short market value after the fills in sequence."""
    for f in range(nf):
        q = fill_q[f]
        if q <= 0:
            continue
        j = order[fill_k[f]]
        is_short = pos_kind[j] == SHORT
        v = q * price[pos_sec[j]]
        C, I, F = _fill(is_short, v, _fee(v, buy_cost if is_short else sell_cost), C, I, F)
        if is_short:
            short_mv -= v
        else:
            long_mv -= v
    return C, I, F, long_mv, short_mv


@nb.njit(cache=True)
def _reaches(nf, fill_k, fill_q, order, pos_sec, pos_kind, price, C, I, F, other_debt,
             other_coll, long_mv, short_mv, target_bp, sell_cost, buy_cost):
    C, I, F, long_mv, short_mv = _replay(nf, fill_k, fill_q, order, pos_sec, pos_kind, price,
                                         C, I, F, long_mv, short_mv, sell_cost, buy_cost)
    A, L = _amounts(C, I, F, other_debt, other_coll, long_mv, short_mv)
    return L <= 0 or A * RATIO_SCALE >= target_bp * L


@nb.njit(cache=True)
def _trim(nf, fill_k, fill_q, order, pos_sec, pos_kind, pos_qty, price, lot, step, C, I, F,
          other_debt, other_coll, long_mv, short_mv, target_bp, sell_cost, buy_cost):
    """Least liquidation: from the last fill back, cut each to the smallest admissible size
    (none at all included) with which the whole sequence still reaches the target. Only a
    position traded by one fill is cut (its sizes are those of the whole holding); a binary
    search over its sizes keeps only sizes that reach, so the result always does."""
    for i in range(nf - 1, -1, -1):
        k = fill_k[i]
        if fill_q[i] <= 0:
            continue
        single = True
        for i2 in range(nf):
            if i2 != i and fill_k[i2] == k and fill_q[i2] > 0:
                single = False
        if not single:
            continue
        j = order[k]
        s = pos_sec[j]
        avail = pos_qty[j]
        n = _grid_n(avail, lot[s], step[s])
        cur = fill_q[i]
        no = np.int64(-2)  # -1: no order at all
        yes = _grid_index(cur, n, lot[s], step[s])
        while yes - no > 1:
            mid = (no + yes) // 2
            fill_q[i] = 0 if mid < 0 else _grid_size(mid, n, avail, lot[s], step[s])
            if fill_q[i] <= cur and _reaches(nf, fill_k, fill_q, order, pos_sec, pos_kind,
                                             price, C, I, F, other_debt, other_coll, long_mv,
                                             short_mv, target_bp, sell_cost, buy_cost):
                yes = mid
            else:
                no = mid
        fill_q[i] = 0 if yes < 0 else _grid_size(yes, n, avail, lot[s], step[s])
        if fill_q[i] > cur:
            fill_q[i] = cur


@nb.njit(nb.types.UniTuple(i64, 4)(i64, i64, i64, i64, i64, i64, I64, I32, I8, I64, I64, I64, I64,
                                   F64, I64, I64, B1, B1, f64, f64, I64, nb.boolean, I64, I64,
                                   I64, I64),
         cache=True)
def plan_account(a, cash, accrued, other_debt, other_collateral, target_bp, pos_ptr, pos_sec,
                 pos_kind, pos_qty, pos_cost, price, prev_close, haircut, lot, step,
                 sell_blocked, buy_blocked, sell_cost, buy_cost, group_rank, use_free_cash,
                 out_sec, out_side, out_qty, out_value):
    """Lot-rounded plan for account `a` on the cash model (module docstring). Fills out_* (one
    row per symbol and side) and returns (rows, assets_after, liabilities_after,
    cash_repayment).

    Free cash first (`use_free_cash`): free cash repays interest, then principal, before any
    order (`cash_repayment_of`). REQUIRED: walk the policy order, skip untradable positions,
    size each (`_size_order`) and stop as soon as R' >= target; short of it, walk again over
    what is left (at most MAX_PASSES walks, and only while a walk trades). The walks are strict
    first: a cover is paid from the cash there is (short-sale proceeds, free cash left), and
    only a rising short may count on later sales to refill its overdraft; only when strict
    walks fall short of the target do funded walks let sales pay for any cover. Least
    liquidation: the order that brings R' to the target switches to the tradable holding
    whose smallest order reaching the target has the least value (the policy's own on a tie),
    and once the target is reached the fills are trimmed from the last back (`_trim`).
    UNREACHABLE (R <= 1): every tradable position is liquidated whole, in policy order, until
    nothing is owed."""
    lo, hi = pos_ptr[a], pos_ptr[a + 1]
    long_mv = np.int64(0)
    short_mv = np.int64(0)
    F = np.int64(0)
    proceeds = np.int64(0)
    for j in range(lo, hi):
        v = pos_qty[j] * price[pos_sec[j]]
        if pos_kind[j] == SHORT:
            short_mv += v
            proceeds += pos_cost[j]
        else:
            long_mv += v
        if pos_kind[j] == FINANCED:
            F += pos_cost[j]
    C = np.int64(cash)
    I = np.int64(accrued)
    A, L = _amounts(C, I, F, other_debt, other_collateral, long_mv, short_mv)
    status = liquidation_status(A, L, target_bp)
    if status == NOT_REQUIRED:
        return 0, A, L, 0
    full = status == UNREACHABLE_FULL_LIQUIDATION
    repaid = np.int64(0)
    if use_free_cash:
        repaid = cash_repayment_of(C, I, F, proceeds, A, L, target_bp, full)
        if repaid > 0:
            ri = min(repaid, I)
            C -= repaid
            I -= ri
            F -= repaid - ri
            A, L = _amounts(C, I, F, other_debt, other_collateral, long_mv, short_mv)
    if L <= 0 or (not full and A * RATIO_SCALE >= target_bp * L):
        return 0, A, L, repaid
    order = plan_order(a, pos_ptr, pos_sec, pos_kind, pos_qty, pos_cost, price, prev_close,
                       haircut, group_rank)
    t = target_bp / RATIO_SCALE
    sell_helps = t * (1.0 - sell_cost) - 1.0 > 0.0  # else a sale cannot raise R to target
    cover_helps = t - 1.0 - buy_cost > 0.0
    m = order.shape[0]
    left = np.empty(m, dtype=np.int64)  # shares still held, by place in the policy order
    rising = np.zeros(m, dtype=np.bool_)  # a rising short (policy group 0)
    usable = np.zeros(m, dtype=np.bool_)  # tradable, and its side can help
    for k in range(m):
        j = order[k]
        left[k] = pos_qty[j]
        s = pos_sec[j]
        if pos_kind[j] == SHORT:
            rising[k] = _short_rise(j, pos_sec, pos_qty, pos_cost, price, prev_close) > 0.0
            usable[k] = cover_helps and not buy_blocked[s]
        else:
            usable[k] = sell_helps and not sell_blocked[s]
    later_long = np.zeros(m + 1, dtype=np.int64)
    later_short = np.zeros(m + 1, dtype=np.int64)
    # the fills in sequence (place in the order, shares): at most one per position and walk
    fill_k = np.empty(2 * MAX_PASSES * m + 1, dtype=np.int64)
    fill_q = np.empty(2 * MAX_PASSES * m + 1, dtype=np.int64)
    nf = 0
    C0, I0, F0, lmv0, smv0 = C, I, F, long_mv, short_mv  # after the cash repayment
    for mode in range(2):
        funded = mode == 1
        if funded and (full or L <= 0 or A * RATIO_SCALE >= target_bp * L):
            break
        for _ in range(MAX_PASSES):
            # what the positions after each one could settle: net proceeds of the later sales,
            # cost of the later covers that sales may pay for (what is left of them)
            for k in range(m - 1, -1, -1):
                v = left[k] * price[pos_sec[order[k]]]
                later_long[k] = later_long[k + 1]
                later_short[k] = later_short[k + 1]
                if usable[k]:
                    if pos_kind[order[k]] == SHORT:
                        if funded or rising[k]:
                            later_short[k] += v + _fee(v, buy_cost)
                    else:
                        later_long[k] += v - _fee(v, sell_cost)
            traded = False
            for k in range(m):
                if not full and A * RATIO_SCALE >= target_bp * L:
                    break
                if L <= 0:
                    break
                j = order[k]
                s = pos_sec[j]
                is_short = pos_kind[j] == SHORT
                avail = left[k]
                kk = k  # the place in the order that trades (the last order may switch)
                if avail <= 0:
                    continue
                if (is_short and buy_blocked[s]) or (not is_short and sell_blocked[s]):
                    continue
                p = price[s]
                if full:
                    q = avail
                else:
                    if not usable[k]:
                        continue
                    refill = later_long[k + 1] if (funded or rising[k]) else np.int64(0)
                    q = _size_order(is_short, avail, p, lot[s], step[s], C, I, F, other_debt,
                                    other_collateral, long_mv, short_mv, refill,
                                    later_short[k + 1], target_bp, sell_cost, buy_cost)
                    if q <= 0:
                        continue
                    v = q * p
                    fee = _fee(v, buy_cost if is_short else sell_cost)
                    if _excess_after(is_short, v, fee, C, I, F, other_debt, other_collateral,
                                     long_mv, short_mv, target_bp) >= 0:
                        # the last order: the holding that reaches with the least value
                        best_k = k
                        best_q = q
                        best_v = v
                        for k2 in range(m):
                            if k2 == k or left[k2] <= 0 or not usable[k2]:
                                continue
                            j2 = order[k2]
                            s2 = pos_sec[j2]
                            sh2 = pos_kind[j2] == SHORT
                            p2 = price[s2]
                            if min(left[k2], lot[s2]) * p2 >= best_v:
                                continue  # its smallest order is worth more already
                            q2 = _size_order(sh2, left[k2], p2, lot[s2], step[s2], C, I, F,
                                             other_debt, other_collateral, long_mv, short_mv,
                                             np.int64(0), np.int64(0), target_bp, sell_cost,
                                             buy_cost)
                            v2 = q2 * p2
                            if q2 <= 0 or v2 >= best_v:
                                continue
                            f2 = _fee(v2, buy_cost if sh2 else sell_cost)
                            if _excess_after(sh2, v2, f2, C, I, F, other_debt, other_collateral,
                                             long_mv, short_mv, target_bp) >= 0:
                                best_k = k2
                                best_q = q2
                                best_v = v2
                        kk = best_k
                        q = best_q
                        s = pos_sec[order[kk]]
                        is_short = pos_kind[order[kk]] == SHORT
                        p = price[s]
                left[kk] -= q
                traded = True
                fill_k[nf] = kk
                fill_q[nf] = q
                nf += 1
                v = q * p
                fee = _fee(v, buy_cost if is_short else sell_cost)
                C, I, F = _fill(is_short, v, fee, C, I, F)
                if is_short:
                    short_mv -= v
                else:
                    long_mv -= v
                A, L = _amounts(C, I, F, other_debt, other_collateral, long_mv, short_mv)
            if full or not traded or L <= 0 or A * RATIO_SCALE >= target_bp * L:
                break
        if full:
            break
    if not full and (L <= 0 or A * RATIO_SCALE >= target_bp * L):
        _trim(nf, fill_k, fill_q, order, pos_sec, pos_kind, pos_qty, price, lot, step, C0, I0,
              F0, other_debt, other_collateral, lmv0, smv0, target_bp, sell_cost, buy_cost)
    # the rows (one per symbol and side, in order of first fill) and the account after them
    C, I, F, long_mv, short_mv = _replay(nf, fill_k, fill_q, order, pos_sec, pos_kind, price,
                                         C0, I0, F0, lmv0, smv0, sell_cost, buy_cost)
    A, L = _amounts(C, I, F, other_debt, other_collateral, long_mv, short_mv)
    rows = 0
    for f in range(nf):
        q = fill_q[f]
        if q <= 0:
            continue
        j = order[fill_k[f]]
        s = pos_sec[j]
        side = SIDE_BUY_TO_COVER if pos_kind[j] == SHORT else SIDE_SELL
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
        out_value[r] += q * price[s]
    return rows, A, L, repaid


@nb.njit(void(I64, I64, I64, B1, B1, B1, B1), cache=True)
def blocked_flags(price, limit_down, limit_up, has_limit, suspended, sell_blocked, buy_blocked):
    """Untradable: suspended; longs locked at limit-down; shorts locked at limit-up. A security
    without a daily limit (`has_limit` false, kernels/bands.py) is never locked."""
    for s in range(price.shape[0]):
        sell_blocked[s] = suspended[s] or (has_limit[s] and price[s] <= limit_down[s])
        buy_blocked[s] = suspended[s] or (has_limit[s] and price[s] >= limit_up[s])
