"""Available margin balance (保证金可用余额), free cash and withdrawable cash, per
margin-rules.md §1 and §3.

AMB needs haircuts and per-contract margin ratios (floats), so it is computed in float64 from the
exact integer amounts; it is reported, never compared against a line. The withdrawable amount
caps by it: the float is snapped to the money·bp grid the exact AMB lies on (haircuts and margin
ratios have at most 4 decimals) and rounded down to the li, which equals the exact floor while
the float error stays under 0.5e-4 li (accounts up to some 10^8 yuan; beyond, at most one li
less). The pre-trade check decides withdrawals on the exact integer AMB (monitor/core/pretrade.py).
"""

import numba as nb
import numpy as np

from .common import F64, I8, I32, I64, f64, i64, void
from .units import COLLATERAL, FINANCED, RATIO_SCALE, SHORT


@nb.njit(cache=True, inline="always")
def _gain_weight(gain, haircut):
    return gain * haircut if gain > 0 else float(gain)


_AMB_ARGS = (I64, I64, I64, I64, I64, I32, I8, I64, I64, F64, I64, F64)


@nb.njit(f64(i64, *_AMB_ARGS), cache=True)
def available_margin_balance_one(a, cash, accrued, other_debt, other_collateral, pos_ptr,
                                 pos_sec, pos_kind, pos_qty, pos_cost, pos_margin_ratio, price,
                                 haircut):
    """AMB of account `a` in money units (float64)."""
    amb = float(cash[a] + other_collateral[a] - accrued[a] - other_debt[a])
    for j in range(pos_ptr[a], pos_ptr[a + 1]):
        s = pos_sec[j]
        mv = float(pos_qty[j] * price[s])
        k = pos_kind[j]
        if k == COLLATERAL:
            amb += mv * haircut[s]
        elif k == FINANCED:
            cost = float(pos_cost[j])
            amb += _gain_weight(mv - cost, haircut[s])
            amb -= cost * pos_margin_ratio[j]
        elif k == SHORT:
            sold = float(pos_cost[j])
            amb += _gain_weight(sold - mv, haircut[s])
            amb -= sold
            amb -= mv * pos_margin_ratio[j]
    return amb


@nb.njit(void(I64, *_AMB_ARGS, F64), cache=True, parallel=True)
def available_margin_balance(accounts, cash, accrued, other_debt, other_collateral, pos_ptr,
                             pos_sec, pos_kind, pos_qty, pos_cost, pos_margin_ratio, price,
                             haircut, out):
    """AMB of `accounts[i]` into `out[i]`."""
    for i in nb.prange(accounts.shape[0]):
        out[i] = available_margin_balance_one(accounts[i], cash, accrued, other_debt,
                                              other_collateral, pos_ptr, pos_sec, pos_kind,
                                              pos_qty, pos_cost, pos_margin_ratio, price,
                                              haircut)


@nb.njit(void(I64, I64, I64, I8, I64, I64, I64), cache=True)
def free_cash(accounts, cash, pos_ptr, pos_kind, pos_qty, pos_cost, out):
    """Free cash `C_free = max(0, C - sum of short_sell_amount of open shorts)` of
    `accounts[i]` into `out[i]` (margin-rules.md §1): short-sale proceeds sit in the cash but
    are never withdrawn and never repay financing."""
    for i in range(accounts.shape[0]):
        a = accounts[i]
        c = cash[a]
        for j in range(pos_ptr[a], pos_ptr[a + 1]):
            if pos_kind[j] == SHORT and pos_qty[j] > 0:
                c -= pos_cost[j]
        out[i] = max(np.int64(0), c)


@nb.njit(cache=True, inline="always")
def _amb_floor(amb):
    """The float AMB (money units) rounded down to the money unit, after snapping it to the
    money·bp grid its exact value lies on (haircuts and margin ratios have at most 4
    decimals), so float noise below 0.5e-4 li neither loses nor gains a li."""
    return np.int64(np.floor(amb * RATIO_SCALE + 0.5)) // RATIO_SCALE


@nb.njit(i64(i64, f64, i64, i64, i64), cache=True)
def withdrawable_one(free, amb, assets, liabilities, withdrawable_bp):
    """Cash one account may withdraw (担保物提取, margin-rules.md §3): with debt
    `max(0, min(C_free, AMB, A - w·L))`, out of free cash, never beyond the available margin
    balance and staying at or above the withdrawal line `w`; all free cash without debt."""
    if liabilities <= 0:
        return max(np.int64(0), free)
    # A - w*L in money units, rounded down so the account never ends below the line
    room = (assets * RATIO_SCALE - withdrawable_bp * liabilities) // RATIO_SCALE
    return max(np.int64(0), min(free, min(_amb_floor(amb), room)))


@nb.njit(void(I64, F64, I64, I64, I64, I64), cache=True)
def withdrawable(free, amb, assets, liabilities, withdrawable_bp, out):
    """`withdrawable_one` of every row (free cash, AMB, A, L and the line per account)."""
    for i in range(out.shape[0]):
        out[i] = withdrawable_one(free[i], amb[i], assets[i], liabilities[i],
                                  withdrawable_bp[i])
