"""Available margin balance (保证金可用余额) and withdrawable cash, per margin-rules.md §3.

AMB needs haircuts and per-contract margin ratios (floats), so it is computed in float64 from the
exact integer amounts; it is reported, never compared against a line.
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


@nb.njit(cache=True, inline="always")
def withdrawable_one(cash, assets, liabilities, withdrawable_bp):
    """Cash the client may take out while staying at or above the withdrawal line (exact)."""
    # A - w*L in money units, rounded down so the account never ends below the line
    room = (assets * RATIO_SCALE - withdrawable_bp * liabilities) // RATIO_SCALE
    return max(np.int64(0), min(cash, room))
