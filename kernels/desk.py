"""Risk-desk queries over the whole book: crowding per security, what-if price shocks, and
the ratio before a cycle of the accounts it moved.

Both are exact (integer money, tiers by multiplication as in `ratios.tier_of`) and write into
caller-owned arrays, so a query never touches the live market values the engine owns.
"""

import numba as nb
import numpy as np

from .common import I8, I32, I64, I64_2D, void
from .ratios import tier_of
from .units import LINE_NORMAL, RATIO_SCALE

N_CROSS = 3  # lines crossed downwards: normal (-> WARNING), warning (-> MC), margin call (-> FL)
_CHUNKS = 16  # crowding: accounts are cut into this many runs, each with its own tallies
_CSR = (I64, I32, I64, I64, I32, I64)  # long_ptr, long_sec, long_qty, short_ptr, ...
_CSC = (I64, I32, I64, I64, I32, I64)  # long_hptr, long_hacct, long_hqty, short_hptr, ...


@nb.njit(void(I64, *_CSR, I64, I64, I32, I64_2D, I64, I64_2D, I64_2D), cache=True,
         parallel=True)
def crowding(move, long_ptr, long_sec, long_qty, short_ptr, short_sec, short_qty, assets,
             liabilities, profile_of, profile_lines, out_holders, out_count, out_debt):
    """For every security s alone falling by `move[s]` (money units per share, >= 0; the
    distance to its limit-down price): how many of its long holders would cross each line
    downwards, and their liabilities now (margin-rules.md §5, book crowding).

    out_holders[s]: long holders of s; out_count[s, k] / out_debt[s, k] (money units): accounts
    at or above line k now and below it after the move, k = 0 the normal line (entering
    WARNING), 1 the warning line (entering MARGIN_CALL), 2 the margin-call line (entering
    FORCED_LIQUIDATION). A short position in the same security shrinks the liabilities by the
    same move. Walks the accounts in order (sequential memory), with per-run tallies summed at
    the end: a row costs one gather of `move` and one comparison with the account's smallest
    headroom; only rows that can cross do the exact check."""
    n = assets.shape[0]
    n_sec = move.shape[0]
    holders = np.zeros((_CHUNKS, n_sec), dtype=np.int64)
    count = np.zeros((_CHUNKS, n_sec, N_CROSS), dtype=np.int64)
    debt = np.zeros((_CHUNKS, n_sec, N_CROSS), dtype=np.int64)
    for c in nb.prange(_CHUNKS):
        lo = c * n // _CHUNKS
        hi = (c + 1) * n // _CHUNKS
        for a in range(lo, hi):
            L = liabilities[a]
            A = assets[a]
            lines = profile_lines[profile_of[a]]
            # headroom (money·bp) above the highest line the account is still at or above
            first = N_CROSS
            room = np.int64(0)
            if L > 0:
                for k in range(N_CROSS):
                    r = A * RATIO_SCALE - lines[LINE_NORMAL + k] * L
                    if r >= 0:
                        first = k
                        room = r
                        break
            hc = holders[c]
            for j in range(long_ptr[a], long_ptr[a + 1]):
                q = long_qty[j]  # 0 on a free row: counts nothing, cannot cross
                s = long_sec[j]
                hc[s] += q > 0
                drop = q * move[s]
                if first == N_CROSS or drop * RATIO_SCALE <= room:
                    continue  # cannot cross even the nearest line
                A2 = A - drop
                L2 = L
                for i in range(short_ptr[a], short_ptr[a + 1]):
                    if short_sec[i] == s:
                        L2 -= short_qty[i] * move[s]
                for k in range(first, N_CROSS):
                    bp = lines[LINE_NORMAL + k]
                    if A2 * RATIO_SCALE < bp * L2:
                        count[c, s, k] += 1
                        debt[c, s, k] += L
    for s in range(n_sec):
        h = np.int64(0)
        for c in range(_CHUNKS):
            h += holders[c, s]
        out_holders[s] = h
        for k in range(N_CROSS):
            x = np.int64(0)
            d = np.int64(0)
            for c in range(_CHUNKS):
                x += count[c, s, k]
                d += debt[c, s, k]
            out_count[s, k] = x
            out_debt[s, k] = d


@nb.njit(void(I64, *_CSR, I64, I64, I32, I64_2D, I64, I64, I8, I8), cache=True, parallel=True)
def shift_all(delta, long_ptr, long_sec, long_qty, short_ptr, short_sec, short_qty, assets,
              liabilities, profile_of, profile_lines, out_assets, out_liabilities,
              out_tier_now, out_tier_after):
    """Assets, liabilities and plain tiers after every price moves by `delta[s]` (money units
    per share), and the plain tiers now: one pass over every holding."""
    for a in nb.prange(assets.shape[0]):
        da = np.int64(0)
        for j in range(long_ptr[a], long_ptr[a + 1]):
            da += long_qty[j] * delta[long_sec[j]]
        dl = np.int64(0)
        for j in range(short_ptr[a], short_ptr[a + 1]):
            dl += short_qty[j] * delta[short_sec[j]]
        A, L = assets[a], liabilities[a]
        lines = profile_lines[profile_of[a]]
        out_assets[a] = A + da
        out_liabilities[a] = L + dl
        out_tier_now[a] = tier_of(A, L, lines, 0)
        out_tier_after[a] = tier_of(A + da, L + dl, lines, 0)


@nb.njit(void(I64, I64, *_CSC, I64, I64), cache=True)
def shift_holders(secs, delta, long_hptr, long_hacct, long_hqty, short_hptr, short_hacct,
                  short_hqty, out_assets, out_liabilities):
    """In place: add `qty * delta[s]` to the assets (longs) and liabilities (shorts) of the
    holders of each security in `secs` (the few-securities path of a what-if)."""
    for i in range(secs.shape[0]):
        s = secs[i]
        d = delta[s]
        for j in range(long_hptr[s], long_hptr[s + 1]):
            out_assets[long_hacct[j]] += long_hqty[j] * d
        for j in range(short_hptr[s], short_hptr[s + 1]):
            out_liabilities[short_hacct[j]] += short_hqty[j] * d


@nb.njit(void(I64, I64, *_CSR, I64, I64), cache=True)
def account_shift(accounts, delta, long_ptr, long_sec, long_qty, short_ptr, short_sec,
                  short_qty, out_assets, out_liabilities):
    """out[i]: what the price moves `delta[s]` added to the assets (longs) and liabilities
    (shorts) of `accounts[i]`."""
    for i in range(accounts.shape[0]):
        a = accounts[i]
        da = np.int64(0)
        for j in range(long_ptr[a], long_ptr[a + 1]):
            da += long_qty[j] * delta[long_sec[j]]
        dl = np.int64(0)
        for j in range(short_ptr[a], short_ptr[a + 1]):
            dl += short_qty[j] * delta[short_sec[j]]
        out_assets[i] = da
        out_liabilities[i] = dl


@nb.njit(void(I64, I64, I32, I64_2D, I8), cache=True, parallel=True)
def plain_tiers_of(assets, liabilities, profile_of, profile_lines, out):
    for a in nb.prange(assets.shape[0]):
        out[a] = tier_of(assets[a], liabilities[a], profile_lines[profile_of[a]], 0)


@nb.njit(void(I8, I8, I64, I64, I64_2D, I64_2D, I64), cache=True)
def tally(tier_now, tier_after, liab_now, liab_after, out_count, out_debt_now, out_debt_after):
    """out_count[i, j]: accounts going from tier i to tier j; out_debt_now[i, j] their
    liabilities now; out_debt_after[j]: liabilities after, per tier after."""
    for a in range(tier_now.shape[0]):
        i = tier_now[a]
        j = tier_after[a]
        out_count[i, j] += 1
        out_debt_now[i, j] += liab_now[a]
        out_debt_after[j] += liab_after[a]


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel here on a toy book, with the dtypes
    of a live book."""
    i64, i32 = np.int64, np.int32
    move = np.array([100, 200], dtype=i64)
    ptr = np.array([0, 2], dtype=i64)
    sec = np.array([0, 1], dtype=i32)
    qty = np.array([100, 100], dtype=i64)
    hptr = np.array([0, 1, 2], dtype=i64)
    hacct = np.array([0, 0], dtype=i32)
    sptr = np.array([0, 0], dtype=i64)
    ssec = np.zeros(0, dtype=i32)
    sqty = np.zeros(0, dtype=i64)
    hsptr = np.array([0, 0, 0], dtype=i64)
    hsacct = np.zeros(0, dtype=i32)
    assets = np.array([300_000], dtype=i64)
    liab = np.array([200_000], dtype=i64)
    prof = np.zeros(1, dtype=i32)
    lines = np.array([[30_000, 15_000, 13_000, 11_500, 15_000]], dtype=i64)
    crowding(move, ptr, sec, qty, sptr, ssec, sqty, assets, liab, prof, lines,
             np.zeros(2, dtype=i64), np.zeros((2, N_CROSS), dtype=i64),
             np.zeros((2, N_CROSS), dtype=i64))
    A1, L1 = np.zeros(1, dtype=i64), np.zeros(1, dtype=i64)
    t0, t1 = np.zeros(1, dtype=np.int8), np.zeros(1, dtype=np.int8)
    shift_all(-move, ptr, sec, qty, sptr, ssec, sqty, assets, liab, prof, lines, A1, L1, t0, t1)
    shift_holders(np.array([0], dtype=i64), -move, hptr, hacct, qty, hsptr, hsacct, sqty, A1,
                  L1)
    account_shift(np.array([0], dtype=i64), -move, ptr, sec, qty, sptr, ssec, sqty, A1, L1)
    plain_tiers_of(assets, liab, prof, lines, t0)
    plain_tiers_of(A1, L1, prof, lines, t1)
    tally(t0, t1, liab, L1, np.zeros((6, 6), dtype=i64), np.zeros((6, 6), dtype=i64),
          np.zeros(6, dtype=i64))
