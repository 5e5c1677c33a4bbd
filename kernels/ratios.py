"""Assets, liabilities and tiers: the full sweep over every account.

All money is int64 fixed point (see `units`), so the sweep is exact and tiers are decided by
integer multiplication: `tier(A, L)` counts the lines that `A * 10_000 >= line_bp * L` clears.
Longs (collateral and financed, merged per account and security) and shorts are separate CSR
arrays so each inner loop is a branch-free gather-multiply-add.
"""

import numba as nb
import numpy as np

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
#    packed 64-bit word per profile when every line fits in 16 bits, else from the 2-D table.
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
_MODE_SELECT = 0
_MODE_PACKED = 1
_MODE_TABLE = 2


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


@nb.njit(cache=True, inline="always")
def _next_tier_bf(reported, assets, liabilities, l0, l1, l2, l3, band_bp):
    """`next_reported_tier` without branches (same integer expressions, same result)."""
    x = assets * RATIO_SCALE
    L = liabilities
    raw = (np.int64(x >= l0 * L) + np.int64(x >= l1 * L) + np.int64(x >= l2 * L)
           + np.int64(x >= l3 * L))
    banded = (np.int64(x >= (l0 + band_bp) * L) + np.int64(x >= (l1 + band_bp) * L)
              + np.int64(x >= (l2 + band_bp) * L) + np.int64(x >= (l3 + band_bp) * L))
    no_debt = L <= 0
    raw = NO_DEBT if no_debt else raw
    banded = NO_DEBT if no_debt else banded
    r = np.int64(reported)
    keep = banded if banded > r else r
    return raw if (raw < r) | (r == UNSET_TIER) else keep


@nb.njit(cache=True, error_model="numpy")
def _tiers_select(ba, bl, lm, sm, prof, sel, band_bp, reported, candidate):
    """At most 4 profiles: sel[p, k] is line k of profile p (rows beyond the last repeat 0)."""
    a0, a1, a2, a3 = sel[0, 0], sel[0, 1], sel[0, 2], sel[0, 3]
    b0, b1, b2, b3 = sel[1, 0], sel[1, 1], sel[1, 2], sel[1, 3]
    c0, c1, c2, c3 = sel[2, 0], sel[2, 1], sel[2, 2], sel[2, 3]
    d0, d1, d2, d3 = sel[3, 0], sel[3, 1], sel[3, 2], sel[3, 3]
    for a in range(candidate.shape[0]):
        p = prof[a]
        is1 = p == 1
        is2 = p == 2
        is3 = p == 3
        l0 = d0 if is3 else (c0 if is2 else (b0 if is1 else a0))
        l1 = d1 if is3 else (c1 if is2 else (b1 if is1 else a1))
        l2 = d2 if is3 else (c2 if is2 else (b2 if is1 else a2))
        l3 = d3 if is3 else (c3 if is2 else (b3 if is1 else a3))
        candidate[a] = _next_tier_bf(reported[a], ba[a] + lm[a], bl[a] + sm[a], l0, l1, l2, l3,
                                     band_bp)


@nb.njit(cache=True, error_model="numpy")
def _tiers_packed(ba, bl, lm, sm, prof, packed, band_bp, reported, candidate):
    """Lines packed 16 bits each in packed[p]: gather one word per account into a small
    buffer (a scalar loop), then run the vectorised tier loop over the block."""
    n = candidate.shape[0]
    buf = np.empty(1024, dtype=np.int64)
    for b0 in range(0, n, 1024):
        b1 = min(n, b0 + 1024)
        pb = prof[b0:b1]
        word = buf[:b1 - b0]
        for a in range(word.shape[0]):
            word[a] = packed[pb[a]]
        xa = ba[b0:b1]
        xl = bl[b0:b1]
        ml = lm[b0:b1]
        ms = sm[b0:b1]
        rep = reported[b0:b1]
        cand = candidate[b0:b1]
        for a in range(cand.shape[0]):
            w = word[a]
            cand[a] = _next_tier_bf(rep[a], xa[a] + ml[a], xl[a] + ms[a], w & 0xFFFF,
                                    (w >> 16) & 0xFFFF, (w >> 32) & 0xFFFF, (w >> 48) & 0xFFFF,
                                    band_bp)


@nb.njit(cache=True, error_model="numpy")
def _tiers_table(ba, bl, lm, sm, prof, lines, band_bp, reported, candidate):
    for a in range(candidate.shape[0]):
        p = prof[a]
        candidate[a] = _next_tier_bf(reported[a], ba[a] + lm[a], bl[a] + sm[a],
                                     lines[p, LINE_WITHDRAWABLE], lines[p, LINE_NORMAL],
                                     lines[p, LINE_WARNING], lines[p, LINE_MARGIN_CALL], band_bp)


@nb.njit(cache=True)
def _line_mode(profile_lines):
    """How the tier loop reads lines: a select chain, packed words or the table; and the
    select matrix (int64 [4, 4]) and packed words (int64 [n_profiles]) for the first two."""
    n = profile_lines.shape[0]
    cols = (LINE_WITHDRAWABLE, LINE_NORMAL, LINE_WARNING, LINE_MARGIN_CALL)
    sel = np.zeros((4, 4), dtype=np.int64)
    packed = np.zeros(n, dtype=np.int64)
    fits16 = True
    for p in range(n):
        for k in range(4):
            v = profile_lines[p, cols[k]]
            if p < 4:
                sel[p, k] = v
            if v < 0 or v > 0xFFFF:
                fits16 = False
            else:
                packed[p] |= np.int64(v) << (16 * k)
    for p in range(n, 4):
        for k in range(4):
            sel[p, k] = sel[0, k]
    if n <= 4:
        return _MODE_SELECT, sel, packed
    if fits16:
        return _MODE_PACKED, sel, packed
    return _MODE_TABLE, sel, packed


@nb.njit(cache=True, error_model="numpy")
def _tiers(mode, sel, packed, profile_lines, ba, bl, lm, sm, prof, band_bp, reported,
           candidate):
    """candidate[i] = next reported tier of (ba + lm, bl + sm) for aligned 0-based arrays,
    reading lines the way `_line_mode` chose."""
    if mode == _MODE_SELECT:
        _tiers_select(ba, bl, lm, sm, prof, sel, band_bp, reported, candidate)
    elif mode == _MODE_PACKED:
        _tiers_packed(ba, bl, lm, sm, prof, packed, band_bp, reported, candidate)
    else:
        _tiers_table(ba, bl, lm, sm, prof, profile_lines, band_bp, reported, candidate)


@nb.njit(cache=True, parallel=True)
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


@nb.njit(cache=True, parallel=True)
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
    mode, sel, packed = _line_mode(profile_lines)
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
        _tiers(mode, sel, packed, profile_lines, base_assets[a0:a1], base_liabilities[a0:a1],
               long_mv[a0:a1], short_mv[a0:a1], profile_of[a0:a1], band, reported[a0:a1],
               candidate[a0:a1])


@nb.njit(cache=True)
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


@nb.njit(cache=True, parallel=True)
def plain_tiers(assets, liabilities, profile_of, profile_lines, out):
    """Tier without hysteresis for every account (evaluate, summaries)."""
    for a in nb.prange(assets.shape[0]):
        out[a] = tier_of(assets[a], liabilities[a], profile_lines[profile_of[a]], 0)
