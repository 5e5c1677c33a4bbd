"""Incremental update: apply a set of price changes through the per-security holder index.

Exact because money is integer: `long_mv += qty * (new - old)` equals a fresh sum. Touched
accounts are deduplicated with a caller-owned mark array, so nothing is allocated per cycle.
"""

import numba as nb
import numpy as np

from .ratios import next_reported_tier


@nb.njit(cache=True)
def holders_touched(secs, n, long_hptr, short_hptr):
    """Holder rows an update of `secs[:n]` would walk (the cost model for sweep vs incremental)."""
    total = np.int64(0)
    for i in range(n):
        s = secs[i]
        total += long_hptr[s + 1] - long_hptr[s] + short_hptr[s + 1] - short_hptr[s]
    return total


@nb.njit(cache=True)
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
        for j in range(long_hptr[s], long_hptr[s + 1]):
            a = long_hacct[j]
            long_mv[a] += long_hqty[j] * dp
            if mark[a] == 0:
                mark[a] = 1
                touched_out[k] = a
                k += 1
        for j in range(short_hptr[s], short_hptr[s + 1]):
            a = short_hacct[j]
            short_mv[a] += short_hqty[j] * dp
            if mark[a] == 0:
                mark[a] = 1
                touched_out[k] = a
                k += 1
    for i in range(k):
        mark[touched_out[i]] = 0
    return k


@nb.njit(cache=True)
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
    """Re-tier `accounts[:n]` with hysteresis; commit and list those whose reported tier moves."""
    k = 0
    for i in range(n):
        a = accounts[i]
        r = reported[a]
        c = next_reported_tier(
            r,
            base_assets[a] + long_mv[a],
            base_liabilities[a] + short_mv[a],
            profile_lines[profile_of[a]],
            band_bp,
        )
        if c != r:
            changed_out[k] = a
            previous_out[k] = r
            reported[a] = c
            k += 1
    return k
