"""What the kernel modules share: the argument types of their explicit signatures, and the
tier helpers of the full sweep that the incremental and reach paths reuse.

Signatures: every kernel on the tick path (and every other bulk entry point) is compiled once,
at import (or loaded from Numba's cache), for exactly the types below. Arrays are C-contiguous
(`[::1]`) with the dtypes of `units`; a call with another dtype, a strided view or a read-only
array raises TypeError instead of compiling a new specialisation in the middle of a cycle.
Scalars are int64 or float64 (Python ints and floats convert to them).
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

# ------------------------------------------------------------------------------ signature types

void = nb.void
i64 = nb.int64  # counts, indices, money, basis points
f32 = nb.float32
f64 = nb.float64
B1 = nb.boolean[::1]  # flags per security
I8 = nb.int8[::1]  # tiers, kinds, price classes
U8 = nb.uint8[::1]  # marks, pending flags
I32 = nb.int32[::1]  # dense indices: securities in rows, holders, profiles (units.INDEX_DTYPE)
I64 = nb.int64[::1]  # money, prices, quantities, offsets, account lists
F32 = nb.float32[::1]  # reach bounds
F64 = nb.float64[::1]  # haircuts, margin ratios, reported floats
U8_2D = nb.uint8[:, ::1]  # reach class shares [account, class]
I64_2D = nb.int64[:, ::1]  # profile lines [profile, line], reference prices, tallies
F64_2D = nb.float64[:, ::1]  # distances [account, line], class deltas [chunk, class]


# ------------------------------------------------------------------------------ tiers
#
# The sweep's tier loop (ratios.sweep_tiers) and the incremental re-tier
# (incremental.retier_accounts) share these, so both decide tiers with the same integer
# expressions.

MODE_SELECT = 0  # at most 4 profiles: a select chain over the lines
MODE_PACKED = 1  # every line fits in 16 bits: one packed 64-bit word per profile
MODE_TABLE = 2  # otherwise: the 2-D table


@nb.njit(cache=True, inline="always")
def next_tier_branchless(reported, assets, liabilities, l0, l1, l2, l3, band_bp):
    """`ratios.next_reported_tier` without branches (same integer expressions, same result),
    with the four lines (withdrawable, normal, warning, margin call) given as scalars."""
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
        candidate[a] = next_tier_branchless(reported[a], ba[a] + lm[a], bl[a] + sm[a], l0, l1,
                                            l2, l3, band_bp)


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
            cand[a] = next_tier_branchless(rep[a], xa[a] + ml[a], xl[a] + ms[a], w & 0xFFFF,
                                           (w >> 16) & 0xFFFF, (w >> 32) & 0xFFFF,
                                           (w >> 48) & 0xFFFF, band_bp)


@nb.njit(cache=True, error_model="numpy")
def _tiers_table(ba, bl, lm, sm, prof, lines, band_bp, reported, candidate):
    for a in range(candidate.shape[0]):
        p = prof[a]
        candidate[a] = next_tier_branchless(reported[a], ba[a] + lm[a], bl[a] + sm[a],
                                            lines[p, LINE_WITHDRAWABLE], lines[p, LINE_NORMAL],
                                            lines[p, LINE_WARNING], lines[p, LINE_MARGIN_CALL],
                                            band_bp)


@nb.njit(nb.types.Tuple((i64, I64_2D, I64))(I64_2D), cache=True)
def line_mode(profile_lines):
    """How the tier loop reads lines: MODE_SELECT, MODE_PACKED or MODE_TABLE; and the select
    matrix (int64 [4, 4]) and packed words (int64 [n_profiles]) for the first two."""
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
        return MODE_SELECT, sel, packed
    if fits16:
        return MODE_PACKED, sel, packed
    return MODE_TABLE, sel, packed


@nb.njit(void(i64, I64_2D, I64, I64_2D, I64, I64, I64, I64, I32, i64, I8, I8), cache=True,
         error_model="numpy")
def block_tiers(mode, sel, packed, profile_lines, ba, bl, lm, sm, prof, band_bp, reported,
                candidate):
    """candidate[i] = next reported tier of (ba + lm, bl + sm) for aligned 0-based arrays,
    reading lines the way `line_mode` chose."""
    if mode == MODE_SELECT:
        _tiers_select(ba, bl, lm, sm, prof, sel, band_bp, reported, candidate)
    elif mode == MODE_PACKED:
        _tiers_packed(ba, bl, lm, sm, prof, packed, band_bp, reported, candidate)
    else:
        _tiers_table(ba, bl, lm, sm, prof, profile_lines, band_bp, reported, candidate)
