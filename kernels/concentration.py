"""Concentration (集中度) and credit-line use per account, over flat arrays.

A holding's share is its long market value (collateral and financed shares alike) over the
account's assets `A` (its collateral value: cash, securities, other collateral). Groups sum the
shares of their securities: the user's groups (industry, ...) and the boards. The caps come from
the profile's ratio bands: the first band whose `below` line the ratio is under (`A·S < below·L`,
exact) gives a cap per single security, per group and per board (-1: none); above the last band,
or without debt, there is no cap.

Everything is exact integer arithmetic in money·bp: a holding is over its cap when
`mv·S > cap·A` and its excess value is `(mv·S − cap·A) / S`. Sums of an account's holdings stay
below MAX_ACCOUNT_MONEY (units.py), so `mv·S` fits in int64.
"""

import numba as nb
import numpy as np

from .common import I8, I32, I64, I64_2D, i64, void
from .units import FINANCED, RATIO_SCALE, SHORT

ITEM_SECURITY = 0
ITEM_GROUP = 1
ITEM_BOARD = 2
ITEM_NAMES = ("security", "group", "board")
NO_CAP = -1
MAX_ITEMS = 64  # per account: holdings + groups + boards reported by account_items


@nb.njit(nb.types.UniTuple(i64, 3)(i64, i64, I64, I64, I64, I64, i64), cache=True)
def band_caps(assets, liabilities, below, single, group, board, n_bands):
    """(single, group, board) caps in bp of the first band the ratio is under; -1 for none."""
    if liabilities <= 0:
        return np.int64(NO_CAP), np.int64(NO_CAP), np.int64(NO_CAP)
    a = assets * RATIO_SCALE
    for k in range(n_bands):
        if a < below[k] * liabilities:
            return single[k], group[k], board[k]
    return np.int64(NO_CAP), np.int64(NO_CAP), np.int64(NO_CAP)


@nb.njit(i64(i64, i64, I64, I64, I32, I64, I64, I64, i64, i64, i64, i64, I64, I64, I64, I64,
             I64, I64, I64), cache=True)
def account_items(a, assets, price, long_ptr, long_sec, long_qty, sec_group, sec_board,
                  cap_single, cap_group, cap_board, tol_bp, out_kind, out_item, out_mv,
                  out_cap, gid, gmv, bmv):
    """Holdings, groups and boards of account `a` whose share is above `cap − tol_bp`
    (`tol_bp` 0: strictly over the cap). Writes (kind, item, market value, cap) rows and returns
    how many; at most `out_kind.shape[0]`. `gid`, `gmv` (as long as the account's holdings)
    and `bmv` (8) are scratch."""
    n = 0
    m = out_kind.shape[0]
    lo, hi = long_ptr[a], long_ptr[a + 1]
    if hi == lo or assets <= 0:
        return 0
    ng = 0
    bmv[:] = 0
    for j in range(lo, hi):
        s = long_sec[j]
        mv = long_qty[j] * price[s]
        if mv <= 0:
            continue
        bmv[sec_board[s]] += mv
        if cap_single >= 0 and n < m and mv * RATIO_SCALE > (cap_single - tol_bp) * assets:
            out_kind[n] = ITEM_SECURITY
            out_item[n] = s
            out_mv[n] = mv
            out_cap[n] = cap_single
            n += 1
        g = sec_group[s]
        if g >= 0:
            found = False
            for i in range(ng):
                if gid[i] == g:
                    gmv[i] += mv
                    found = True
                    break
            if not found:
                gid[ng] = g
                gmv[ng] = mv
                ng += 1
    if cap_group >= 0:
        for i in range(ng):
            if n < m and gmv[i] * RATIO_SCALE > (cap_group - tol_bp) * assets:
                out_kind[n] = ITEM_GROUP
                out_item[n] = gid[i]
                out_mv[n] = gmv[i]
                out_cap[n] = cap_group
                n += 1
    if cap_board >= 0:
        for b in range(8):
            if n < m and bmv[b] > 0 and bmv[b] * RATIO_SCALE > (cap_board - tol_bp) * assets:
                out_kind[n] = ITEM_BOARD
                out_item[n] = b
                out_mv[n] = bmv[b]
                out_cap[n] = cap_board
                n += 1
    return n


@nb.njit(cache=True)
def _scratch(accounts, long_ptr):
    k = 1
    for i in range(accounts.shape[0]):
        a = accounts[i]
        k = max(k, long_ptr[a + 1] - long_ptr[a])
    return (np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64),
            np.empty(8, dtype=np.int64))


@nb.njit(cache=True, inline="always")
def _mix(key):
    """splitmix64 finaliser: item keys -> well-spread 64-bit words (wrapping arithmetic)."""
    z = np.uint64(key) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(i64(I64, I64), cache=True)
def set_fingerprint(kinds, items):
    """Order-free 64-bit fingerprint of a set of (kind, item) keys; 0 for the empty set."""
    fp = np.uint64(0)
    for i in range(kinds.shape[0]):
        fp += _mix((kinds[i] << 32) | items[i])
    return np.int64(fp)


@nb.njit(void(I64, I64, I64, I32, I64_2D, I64_2D, I64_2D, I64_2D, I64, I64, I64, I32, I64, I64,
              I64, i64, I64, I64), cache=True)
def concentration_fingerprints(accounts, assets, liabilities, profile_of, band_below,
                               band_single, band_group, band_board, n_bands, price, long_ptr,
                               long_sec, long_qty, sec_group, sec_board, tol_bp, out_over,
                               out_near):
    """Per account, the fingerprint of the items strictly over their cap and of those above
    cap − tol_bp. With hysteresis the reported set is over ∪ (near ∩ previous), so an account
    whose previous fingerprint equals either one has not changed (only the others need the
    detailed, per-item look)."""
    kind = np.empty(MAX_ITEMS, dtype=np.int64)
    item = np.empty(MAX_ITEMS, dtype=np.int64)
    mv = np.empty(MAX_ITEMS, dtype=np.int64)
    cap = np.empty(MAX_ITEMS, dtype=np.int64)
    gid, gmv, bmv = _scratch(accounts, long_ptr)
    for i in range(accounts.shape[0]):
        a = accounts[i]
        p = profile_of[a]
        out_over[i] = 0
        out_near[i] = 0
        cs, cg, cb = band_caps(assets[i], liabilities[i], band_below[p], band_single[p],
                               band_group[p], band_board[p], n_bands[p])
        if cs < 0 and cg < 0 and cb < 0:
            continue
        n = account_items(a, assets[i], price, long_ptr, long_sec, long_qty, sec_group,
                          sec_board, cs, cg, cb, tol_bp, kind, item, mv, cap, gid, gmv, bmv)
        fo = np.uint64(0)
        fn = np.uint64(0)
        for k in range(n):
            h = _mix((kind[k] << 32) | item[k])
            fn += h
            if mv[k] * RATIO_SCALE > cap[k] * assets[i]:
                fo += h
        out_over[i] = np.int64(fo)
        out_near[i] = np.int64(fn)


@nb.njit(void(I64, I64, I8, I64, I64, I64), cache=True)
def line_use(accounts, pos_ptr, pos_kind, pos_cost, out_financed, out_short):
    """Credit-line use per account: outstanding financed principal and short-sale amount (the
    contract values the lines are granted in; free rows carry no cost)."""
    for i in range(accounts.shape[0]):
        a = accounts[i]
        f = np.int64(0)
        s = np.int64(0)
        for j in range(pos_ptr[a], pos_ptr[a + 1]):
            k = pos_kind[j]
            if k == FINANCED:
                f += pos_cost[j]
            elif k == SHORT:
                s += pos_cost[j]
        out_financed[i] = f
        out_short[i] = s


@nb.njit(i64(i64, i64, I64, i64), cache=True)
def line_levels(used, line, thresholds_bp, n_thresholds):
    """How many alert thresholds the use of a line has reached (`used·S >= t·line`); a line of
    -1 is no line (0); a zero line with any use reaches them all."""
    if line < 0:
        return 0
    lvl = 0
    for k in range(n_thresholds):
        if used * RATIO_SCALE >= thresholds_bp[k] * line and (line > 0 or used > 0):
            lvl = k + 1
    return lvl


@nb.njit(void(I64, I64, I64, I64, I64, I32, I64_2D, I64, I64, I64), cache=True)
def line_levels_many(accounts, used_fin, used_short, fin_line, short_line, profile_of,
                     thresholds_bp, n_thresholds, out_fin, out_short):
    for i in range(accounts.shape[0]):
        a = accounts[i]
        p = profile_of[a]
        out_fin[i] = line_levels(used_fin[i], fin_line[a], thresholds_bp[p], n_thresholds[p])
        out_short[i] = line_levels(used_short[i], short_line[a], thresholds_bp[p],
                                   n_thresholds[p])
