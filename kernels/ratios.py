"""Assets, liabilities and tiers: the full sweep over every account.

All money is int64 fixed point (see `units`), so the sweep is exact and tiers are decided by
integer multiplication: `tier(A, L)` counts the lines that `A * 10_000 >= line_bp * L` clears.
Longs (collateral and financed, merged per account and security) and shorts are separate CSR
arrays so each inner loop is a branch-free gather-multiply-add.
"""

import numba as nb
import numpy as np

from .common import I8, I32, I64, I64_2D, block_tiers, i64, line_mode, void
from .units import (
    LINE_MARGIN_CALL,
    LINE_NORMAL,
    LINE_WARNING,
    LINE_WITHDRAWABLE,
    NO_DEBT,
    RATIO_SCALE,
    UNSET_TIER,
)


@nb.njit(cache=True, inline="always")
def tier_of(assets, liabilities, lines, band_bp):
    """Tier code of one account; lines are bp, raised by `band_bp` (0 for the plain tier)."""
    if liabilities <= 0:
        return NO_DEBT
    a = assets * RATIO_SCALE
    return (
        np.int8(a >= (lines[LINE_WITHDRAWABLE] + band_bp) * liabilities)
        + np.int8(a >= (lines[LINE_NORMAL] + band_bp) * liabilities)
        + np.int8(a >= (lines[LINE_WARNING] + band_bp) * liabilities)
        + np.int8(a >= (lines[LINE_MARGIN_CALL] + band_bp) * liabilities)
    )


@nb.njit(cache=True, inline="always")
def next_reported_tier(reported, assets, liabilities, lines, band_bp):
    """Hysteresis: a worse tier is reported at once, a better one only once R clears its line
    by `band_bp`. The result is never better than the plain tier."""
    raw = tier_of(assets, liabilities, lines, 0)
    if reported == UNSET_TIER or raw < reported:
        return raw
    banded = tier_of(assets, liabilities, lines, band_bp)
    if raw == NO_DEBT:
        banded = NO_DEBT
    if banded > reported:
        return banded
    return reported


@nb.njit(cache=True, inline="always")
def _dot(ptr, sec, qty, price, a):
    s = np.int64(0)
    for j in range(ptr[a], ptr[a + 1]):
        s += qty[j] * price[sec[j]]
    return s


# ------------------------------------------------------------------------------ full sweep
#
# Layout of the work (measured on a 2-core AVX-512 machine, 1M accounts / 8M rows, one thread:
# 3.1 -> 0.95 ns per row; bench/ has the suite, bench/README.md the steps). Accounts are cut
# into up to _MAX_CHUNKS equal contiguous chunks (prange hands each thread a run of them), and
# in each chunk:
#
# 1. market values: a running int64 sum over the rows of a sub-block of accounts (sized so a
#    sub-block holds about _SUB_ROWS rows) into a small scratch array, then one subtraction per
#    account. No per-account inner loop, so no mispredicted loop exit per account. Two's
#    complement sums wrap the same way as the direct sum, so the result is bit-identical.
# 2. tiers: a branch-free loop over the chunk's accounts that LLVM vectorises (AVX-512
#    `vpmullq`: tiers are still compared by multiplication, with the same int64 expressions).
#    Per-account lines come from a select chain when there are at most 4 profiles, from one
#    packed 64-bit word per profile when every line fits in 16 bits, else from the 2-D table
#    (`common.line_mode` / `common.block_tiers`, shared with the incremental re-tier).
#
# Inner loops run over 0-based slices: Numba guards a signed index that may be negative with a
# wraparound fix-up on every access, which was much of the original per-row cost. Prices are
# read from an int32 copy when they all fit (the gathered table then takes 20 KB of L1, not 40).

_SUB_ROWS = 256  # rows per sub-block on average (a 2 KB running-sum window stays in L1)
_SCRATCH = 2048  # scratch entries per chunk; a bigger sub-block takes the direct path
_MIN_CHUNK = 4096  # accounts
_MAX_CHUNKS = 64
_I32_MAX = 2_147_483_647
_I32_MIN = -2_147_483_648


@nb.njit(cache=True)
def _narrow_prices(price):
    """(True, int32 copy) when every price fits in int32, else (False, empty)."""
    for i in range(price.shape[0]):
        if price[i] > _I32_MAX or price[i] < _I32_MIN:
            return False, np.empty(0, dtype=np.int32)
    return True, price.astype(np.int32)


@nb.njit(cache=True)
def _chunks(n):
    """(count, size) of the contiguous account chunks the threads share: up to _MAX_CHUNKS
    equal chunks of at least _MIN_CHUNK accounts (prange hands each thread a run of them)."""
    count = max(1, min(_MAX_CHUNKS, n // _MIN_CHUNK))
    return count, (n + count - 1) // count


@nb.njit(cache=True)
def _sub_block(ptr, n):
    """Accounts per sub-block: about _SUB_ROWS rows each, on average."""
    rows = ptr[n] - ptr[0]
    if rows <= 0:
        return _SCRATCH
    return max(1, min(_SCRATCH, (_SUB_ROWS * n) // rows))


@nb.njit(cache=True, error_model="numpy")
def _market_values(price, ptr, sec, qty, mv, cs, sb):
    """mv[i] = sum of qty * price[sec] over account i's rows, for one chunk of accounts.

    `ptr` holds the chunk's m + 1 absolute offsets; `sec` and `qty` start at ptr[0]."""
    m = mv.shape[0]
    base = ptr[0]
    for i0 in range(0, m, sb):
        i1 = min(m, i0 + sb)
        p0 = ptr[i0] - base
        p1 = ptr[i1] - base
        if p1 - p0 >= cs.shape[0]:
            # unusually large accounts: sum each one directly
            for i in range(i0, i1):
                lo = ptr[i] - base
                q = qty[lo:ptr[i + 1] - base]
                sc = sec[lo:ptr[i + 1] - base]
                s = np.int64(0)
                for j in range(q.shape[0]):
                    s += q[j] * np.int64(price[np.uintp(sc[j])])
                mv[i] = s
            continue
        q = qty[p0:p1]
        sc = sec[p0:p1]
        s = np.int64(0)
        cs[0] = 0
        for j in range(q.shape[0]):
            s += q[j] * np.int64(price[np.uintp(sc[j])])
            cs[j + 1] = s
        ends = ptr[i0 + 1:i1 + 1]
        out = mv[i0:i1]
        off = base + p0
        prev = np.int64(0)
        for i in range(out.shape[0]):
            cur = cs[np.uintp(ends[i] - off)]
            out[i] = cur - prev
            prev = cur


@nb.njit(void(I64, I64, I64, I32, I64, I64, I32, I64, I64, I64), cache=True, parallel=True)
def sweep(
    long_price,
    short_price,
    long_ptr,
    long_sec,
    long_qty,
    short_ptr,
    short_sec,
    short_qty,
    long_mv,
    short_mv,
):
    """Every account's long and short market value (in place); separate price arrays let a
    stress run value longs at limit-down and shorts at limit-up in one pass."""
    n = long_mv.shape[0]
    narrow_l, long_p32 = _narrow_prices(long_price)
    narrow_s, short_p32 = _narrow_prices(short_price)
    narrow = narrow_l and narrow_s
    sb_long = _sub_block(long_ptr, n)
    sb_short = _sub_block(short_ptr, n)
    n_chunks, chunk = _chunks(n)
    for c in nb.prange(n_chunks):
        a0 = c * chunk
        a1 = min(n, a0 + chunk)
        lp0, lp1 = long_ptr[a0], long_ptr[a1]
        sp0, sp1 = short_ptr[a0], short_ptr[a1]
        cs = np.empty(_SCRATCH, dtype=np.int64)
        if narrow:
            _market_values(long_p32, long_ptr[a0:a1 + 1], long_sec[lp0:lp1],
                           long_qty[lp0:lp1], long_mv[a0:a1], cs, sb_long)
            _market_values(short_p32, short_ptr[a0:a1 + 1], short_sec[sp0:sp1],
                           short_qty[sp0:sp1], short_mv[a0:a1], cs, sb_short)
        else:
            _market_values(long_price, long_ptr[a0:a1 + 1], long_sec[lp0:lp1],
                           long_qty[lp0:lp1], long_mv[a0:a1], cs, sb_long)
            _market_values(short_price, short_ptr[a0:a1 + 1], short_sec[sp0:sp1],
                           short_qty[sp0:sp1], short_mv[a0:a1], cs, sb_short)


@nb.njit(void(I64, I64, I32, I64, I64, I32, I64, I64, I64, I32, I64_2D, i64, I64, I64, I8, I8),
         cache=True, parallel=True)
def sweep_tiers(
    price,
    long_ptr,
    long_sec,
    long_qty,
    short_ptr,
    short_sec,
    short_qty,
    base_assets,
    base_liabilities,
    profile_of,
    profile_lines,
    band_bp,
    long_mv,
    short_mv,
    reported,
    candidate,
):
    """Full sweep fused with the hysteresis tier: fills long_mv, short_mv and `candidate`
    (the tier to report next). `reported` is read only; `collect_changes` applies it."""
    n = long_mv.shape[0]
    narrow, p32 = _narrow_prices(price)
    mode, sel, packed = line_mode(profile_lines)
    band = np.int64(band_bp)
    sb_long = _sub_block(long_ptr, n)
    sb_short = _sub_block(short_ptr, n)
    n_chunks, chunk = _chunks(n)
    for c in nb.prange(n_chunks):
        a0 = c * chunk
        a1 = min(n, a0 + chunk)
        lp0, lp1 = long_ptr[a0], long_ptr[a1]
        sp0, sp1 = short_ptr[a0], short_ptr[a1]
        cs = np.empty(_SCRATCH, dtype=np.int64)
        if narrow:
            _market_values(p32, long_ptr[a0:a1 + 1], long_sec[lp0:lp1], long_qty[lp0:lp1],
                           long_mv[a0:a1], cs, sb_long)
            _market_values(p32, short_ptr[a0:a1 + 1], short_sec[sp0:sp1], short_qty[sp0:sp1],
                           short_mv[a0:a1], cs, sb_short)
        else:
            _market_values(price, long_ptr[a0:a1 + 1], long_sec[lp0:lp1], long_qty[lp0:lp1],
                           long_mv[a0:a1], cs, sb_long)
            _market_values(price, short_ptr[a0:a1 + 1], short_sec[sp0:sp1],
                           short_qty[sp0:sp1], short_mv[a0:a1], cs, sb_short)
        block_tiers(mode, sel, packed, profile_lines, base_assets[a0:a1],
                    base_liabilities[a0:a1], long_mv[a0:a1], short_mv[a0:a1], profile_of[a0:a1],
                    band, reported[a0:a1], candidate[a0:a1])


@nb.njit(i64(I8, I8, I8, I64), cache=True)
def collect_changes(candidate, reported, previous_out, changed_out):
    """Compact accounts whose candidate tier differs from the reported one into `changed_out`
    (their old tier into `previous_out`), and commit the candidate. Returns how many."""
    k = 0
    for a in range(candidate.shape[0]):
        c = candidate[a]
        r = reported[a]
        if c != r:  # written out: a shared helper here ran 180x slower (32 ms at 1M)
            changed_out[k] = a
            previous_out[k] = r
            reported[a] = c
            k += 1
    return k


@nb.njit(void(I64, I64, I32, I64_2D, I8), cache=True, parallel=True)
def plain_tiers(assets, liabilities, profile_of, profile_lines, out):
    """Tier without hysteresis for every account (evaluate, summaries)."""
    for a in nb.prange(assets.shape[0]):
        out[a] = tier_of(assets[a], liabilities[a], profile_lines[profile_of[a]], 0)
