"""Per-cycle conflation of ticks (the last price per symbol is the state) and trigger lookup.

Caller-owned buffers; nothing is allocated per tick.
"""

import numba as nb
import numpy as np

from .common import I32, I64, U8, i64, void


@nb.njit(i64(I32, I64, I64, i64, I64, I64, U8, I64, i64), cache=True)
def conflate(sec, price, ts, n, pending_price, pending_ts, pending_flag, pending_list, n_pending):
    """Fold ticks[:n] into the pending set; returns the new pending count. A later tick for a
    symbol replaces an earlier one in the same cycle."""
    k = n_pending
    for i in range(n):
        s = sec[i]
        pending_price[s] = price[i]
        pending_ts[s] = ts[i]
        if pending_flag[s] == 0:
            pending_flag[s] = 1
            pending_list[k] = s
            k += 1
    return k


@nb.njit(i64(I64, i64, I64, U8, I64, I64, I64, I64), cache=True)
def take_pending(pending_list, n_pending, pending_price, pending_flag, price, old_price,
                 secs_out, prices_out):
    """Move the pending set into (secs_out, prices_out), remember each symbol's price before
    the cycle in `old_price`, and clear the flags. Returns the count."""
    for i in range(n_pending):
        s = pending_list[i]
        secs_out[i] = s
        prices_out[i] = pending_price[s]
        old_price[s] = price[s]
        pending_flag[s] = 0
    return n_pending


@nb.njit(void(I64, i64, I64, I32, I64, I64, I32, I64, I64, I64, I64), cache=True)
def triggers(accounts, n, long_ptr, long_sec, long_qty, short_ptr, short_sec, short_qty,
             price, old_price, out_sec):
    """For each account, the security whose move this cycle hurt it most (largest adverse
    change of value: a long falling or a short rising); -1 when nothing it holds moved."""
    for i in range(n):
        a = accounts[i]
        best = np.int64(0)
        best_s = -1
        for j in range(long_ptr[a], long_ptr[a + 1]):
            s = long_sec[j]
            d = long_qty[j] * (old_price[s] - price[s])  # > 0 when the long fell
            if d > best:
                best = d
                best_s = s
        for j in range(short_ptr[a], short_ptr[a + 1]):
            s = short_sec[j]
            d = short_qty[j] * (price[s] - old_price[s])  # > 0 when the short rose
            if d > best:
                best = d
                best_s = s
        if best_s < 0:  # the account improved: name the largest favourable move instead
            for j in range(long_ptr[a], long_ptr[a + 1]):
                s = long_sec[j]
                d = long_qty[j] * (price[s] - old_price[s])
                if d > best:
                    best = d
                    best_s = s
            for j in range(short_ptr[a], short_ptr[a + 1]):
                s = short_sec[j]
                d = short_qty[j] * (old_price[s] - price[s])
                if d > best:
                    best = d
                    best_s = s
        out_sec[i] = best_s
