"""Incremental update: apply a set of price changes through the per-security holder index.

Exact because money is integer: `long_mv += qty * (new - old)` equals a fresh sum. Touched
accounts are deduplicated with a caller-owned mark array, so nothing is allocated per cycle.
"""

import numba as nb
import numpy as np

from .common import I8, I32, I64, I64_2D, U8, block_tiers, i64, line_mode, next_tier_branchless
from .units import LINE_MARGIN_CALL, LINE_NORMAL, LINE_WARNING, LINE_WITHDRAWABLE

_RETIER_BLOCK = 512  # accounts gathered per block by retier_accounts
_RETIER_SMALL = 64  # below this many accounts, one plain loop (no block set-up)


@nb.njit(i64(I64, i64, I64, I64), cache=True)
def holders_touched(secs, n, long_hptr, short_hptr):
    """Holder rows an update of `secs[:n]` would walk (the cost model for sweep vs incremental)."""
    total = np.int64(0)
    for i in range(n):
        s = secs[i]
        total += long_hptr[s + 1] - long_hptr[s] + short_hptr[s + 1] - short_hptr[s]
    return total


@nb.njit(cache=True, inline="always")
def _apply_holders(acct, qty, dp, mv, mark, touched_out, k):
    """mv[acct[j]] += qty[j] * dp for the holders of one security; list first touches."""
    for j in range(acct.shape[0]):
        a = acct[j]
        u = np.uintp(a)  # holder indices are >= 0: unsigned indexing skips the wraparound fix-up
        mv[u] += qty[j] * dp
        if mark[u] == 0:
            mark[u] = 1
            touched_out[k] = a
            k += 1
    return k


@nb.njit(i64(I64, I64, i64, I64, I64, I32, I64, I64, I32, I64, I64, I64, U8, I64), cache=True,
         error_model="numpy")
def apply_price_changes(
    secs,
    new_prices,
    n,
    price,
    long_hptr,
    long_hacct,
    long_hqty,
    short_hptr,
    short_hacct,
    short_hqty,
    long_mv,
    short_mv,
    mark,
    touched_out,
):
    """Move `price[secs[i]]` to `new_prices[i]` for i < n, update the holders' market values and
    list each touched account once in `touched_out`. Returns the number touched.

    `mark` must be all zero on entry; it is left all zero on return."""
    k = 0
    for i in range(n):
        s = secs[i]
        dp = new_prices[i] - price[s]
        if dp == 0:
            continue
        price[s] = new_prices[i]
        lo, hi = long_hptr[s], long_hptr[s + 1]
        k = _apply_holders(long_hacct[lo:hi], long_hqty[lo:hi], dp, long_mv, mark,
                           touched_out, k)
        lo, hi = short_hptr[s], short_hptr[s + 1]
        k = _apply_holders(short_hacct[lo:hi], short_hqty[lo:hi], dp, short_mv, mark,
                           touched_out, k)
    for i in range(k):
        mark[np.uintp(touched_out[i])] = 0
    return k


@nb.njit(i64(I64, i64, I64, I64, I64, I64, I32, I64_2D, i64, I8, I8, I64), cache=True,
         error_model="numpy")
def retier_accounts(
    accounts,
    n,
    base_assets,
    base_liabilities,
    long_mv,
    short_mv,
    profile_of,
    profile_lines,
    band_bp,
    reported,
    previous_out,
    changed_out,
):
    """Re-tier `accounts[:n]` with hysteresis; commit and list those whose reported tier moves.

    Works in blocks of _RETIER_BLOCK accounts: first a plain gather of each account's amounts,
    tier and profile (independent loads, so many cache misses overlap), then the sweep's
    vectorised tier loop over the block, then the commit in order. An account listed twice in
    one block is re-evaluated against the tier its first occurrence committed, exactly as a
    one-by-one loop would."""
    band = np.int64(band_bp)
    if n < _RETIER_SMALL:  # a few accounts: skip the block set-up
        k = 0
        for i in range(n):
            a = accounts[i]
            u = np.uintp(a)
            r = reported[u]
            p = np.uintp(profile_of[u])
            c = next_tier_branchless(r, base_assets[u] + long_mv[u],
                                     base_liabilities[u] + short_mv[u],
                                     profile_lines[p, LINE_WITHDRAWABLE],
                                     profile_lines[p, LINE_NORMAL],
                                     profile_lines[p, LINE_WARNING],
                                     profile_lines[p, LINE_MARGIN_CALL], band)
            if c != r:
                changed_out[k] = a
                previous_out[k] = r
                reported[u] = c
                k += 1
        return k
    mode, sel, packed = line_mode(profile_lines)
    m = _RETIER_BLOCK
    assets = np.empty(m, dtype=np.int64)
    liabilities = np.empty(m, dtype=np.int64)
    zeros = np.zeros(m, dtype=np.int64)
    rep = np.empty(m, dtype=np.int8)
    prof = np.empty(m, dtype=profile_of.dtype)
    cand = np.empty(m, dtype=np.int8)
    k = 0
    for i0 in range(0, n, m):
        acc = accounts[i0:min(n, i0 + m)]
        b = acc.shape[0]
        for t in range(b):
            u = np.uintp(acc[t])  # account indices are >= 0: no wraparound fix-up
            assets[t] = base_assets[u] + long_mv[u]
            liabilities[t] = base_liabilities[u] + short_mv[u]
            rep[t] = reported[u]
            prof[t] = profile_of[u]
        block_tiers(mode, sel, packed, profile_lines, assets[:b], liabilities[:b], zeros[:b],
                    zeros[:b], prof[:b], band, rep[:b], cand[:b])
        for t in range(b):
            a = acc[t]
            u = np.uintp(a)
            r = reported[u]
            c = np.int64(cand[t])
            if r != rep[t]:  # listed twice in this block: its tier moved meanwhile
                p = prof[t]
                c = next_tier_branchless(r, assets[t], liabilities[t],
                                         profile_lines[p, LINE_WITHDRAWABLE],
                                         profile_lines[p, LINE_NORMAL],
                                         profile_lines[p, LINE_WARNING],
                                         profile_lines[p, LINE_MARGIN_CALL], band)
            if c != r:
                changed_out[k] = a
                previous_out[k] = r
                reported[u] = c
                k += 1
    return k
