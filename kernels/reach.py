"""Reach: re-evaluate per cycle only the accounts that prices could have moved across a line.

An account's market values were last computed exactly at the reference prices `ref` of its
chunk. Securities fall into N_CLASSES fixed price classes (cheap stocks move most in relative
terms: one tick of a 2-yuan stock is 0.5%). Since the chunk's last refresh every security s of
class g moved by at most delta_g·ref_s, and quantities are >= 0, so with the price-independent
base amounts fixed, A·S − line·L moves by at most

    sum_g delta_g · (LMV_g·S + line·SMV_g)   (LMV_g, SMV_g: the class's values at ref).

The reported tier r (hysteresis, ratios.py) can only get worse when A·S < lo(r)·L and only
better when A·S >= hi(r)·L with hi(r) = lo(r + 1) + band. With c = the larger of the two lines,
D = sum_g (LMV_g·S + c·SMV_g) and f_g = (LMV_g·S + c·SMV_g) / D, the tier cannot change while

    sum_g delta_g · f_g  <  reach = min(A·S − lo(r)·L, hi(r)·L − A·S) / D.

`reach` is float32 rounded towards zero and each f_g is a uint8 share rounded up (so the sum
over-states the move), with margins far above float rounding; deltas are rounded up. An
account that fails the test is evaluated exactly (integer money, from its positions at the
current prices), so the results equal a full sweep's, cycle for cycle; tests/kernels/test_reach.py
checks the bound and that equality.
"""

import numba as nb
import numpy as np

from .common import (
    F32,
    F64,
    F64_2D,
    I8,
    I32,
    I64,
    I64_2D,
    U8,
    U8_2D,
    f32,
    f64,
    i64,
    next_tier_branchless,
    void,
)
from .units import (
    FORCED_LIQUIDATION,
    LINE_MARGIN_CALL,
    LINE_NORMAL,
    LINE_WARNING,
    LINE_WITHDRAWABLE,
    NO_DEBT,
    RATIO_SCALE,
    WITHDRAWABLE,
)

N_CLASSES = 4
PINNED = np.float32(-1.0)  # reach of an account evaluated every cycle until its next refresh
_INF = np.float32(np.inf)
_SAFE_REL = 1e-9  # relative margin on float64 quantities: far above float64 rounding
_SHARE = 255.0  # class shares are stored as uint8 numerators over this
# signature pieces: the long and short CSR arrays; base amounts, profiles, lines and band
_CSR = (I64, I32, I64, I64, I32, I64)
_ACCOUNTS = (I64, I64, I32, I64_2D, i64)


def price_classes(price: np.ndarray) -> np.ndarray:
    """Class of each security (0 = cheapest quarter of the book's prices ... 3 = dearest),
    fixed for a run: the deltas and the per-account shares must use the same classes."""
    edges = np.quantile(price, [0.25, 0.5, 0.75]) if price.shape[0] else np.zeros(3)
    return np.searchsorted(edges, price, side="right").astype(np.int8)


@nb.njit(cache=True, inline="always")
def _values(a, price, long_ptr, long_sec, long_qty, short_ptr, short_sec, short_qty):
    lmv = np.int64(0)
    for j in range(long_ptr[a], long_ptr[a + 1]):
        lmv += long_qty[j] * price[long_sec[j]]
    smv = np.int64(0)
    for j in range(short_ptr[a], short_ptr[a + 1]):
        smv += short_qty[j] * price[short_sec[j]]
    return lmv, smv


@nb.njit(cache=True, inline="always")
def _next_tier(r, A, L, profile_lines, p, band):
    return next_tier_branchless(r, A, L, profile_lines[p, LINE_WITHDRAWABLE],
                                profile_lines[p, LINE_NORMAL], profile_lines[p, LINE_WARNING],
                                profile_lines[p, LINE_MARGIN_CALL], band)


@nb.njit(void(I64, I64, *_CSR, I64, I64), cache=True)
def account_values(accounts, price, long_ptr, long_sec, long_qty, short_ptr, short_sec,
                   short_qty, long_mv_out, short_mv_out):
    """Exact long and short market values of `accounts` at `price`, from their positions."""
    for i in range(accounts.shape[0]):
        lmv, smv = _values(accounts[i], price, long_ptr, long_sec, long_qty, short_ptr,
                           short_sec, short_qty)
        long_mv_out[i] = lmv
        short_mv_out[i] = smv


@nb.njit(void(I64, I64, I32, I64, I64), cache=True)
def short_values(price, short_ptr, short_sec, short_qty, short_mv_out):
    """Exact short market value of every account (shorts are few: cheaper than a sweep)."""
    for a in range(short_mv_out.shape[0]):
        s = np.int64(0)
        for j in range(short_ptr[a], short_ptr[a + 1]):
            s += short_qty[j] * price[short_sec[j]]
        short_mv_out[a] = s


@nb.njit(cache=True, inline="always")
def _line(tier, l_wd, l_normal, l_warning, l_call):
    """The line an account must clear to be in `tier` (1..4), in bp."""
    if tier == 1:
        return l_call
    if tier == 2:
        return l_warning
    if tier == 3:
        return l_normal
    return l_wd


@nb.njit(cache=True, inline="always")
def _room(reported, assets, liabilities, base_liabilities, smv, l_wd, l_normal, l_warning,
          l_call, band_bp):
    """(room, c): how far A·S − line·L may move either way before the reported tier can
    change (rounded down), and the larger line c that weights short values in D. room is
    +inf when prices cannot change the tier, 0 when the account must always be evaluated."""
    if reported < FORCED_LIQUIDATION or reported > NO_DEBT:
        return 0.0, 0.0  # nothing reported yet
    if reported == NO_DEBT:
        # L = base + SMV <= 0 stays so only while no short can rise (base L >= 0 in a book)
        return (np.inf, 0.0) if smv == 0 else (0.0, 0.0)
    if base_liabilities <= 0 and smv > 0:
        return 0.0, 0.0  # L could fall to zero: always evaluate
    S = float(RATIO_SCALE)
    A, L = float(assets), float(liabilities)
    room = np.inf
    c = 0.0
    if reported > FORCED_LIQUIDATION:  # can fall through the line it stands on
        lo = float(_line(reported, l_wd, l_normal, l_warning, l_call))
        room = A * S - lo * L - (_SAFE_REL * (abs(A) * S + lo * abs(L)) + 1.0)
        c = lo
    if reported < WITHDRAWABLE:  # can rise through the next line plus the band
        hi = float(_line(reported + 1, l_wd, l_normal, l_warning, l_call) + band_bp)
        room = min(room, hi * L - A * S - (_SAFE_REL * (abs(A) * S + hi * abs(L)) + 1.0))
        c = max(c, hi)
    return max(room, 0.0), c


@nb.njit(cache=True, inline="always")
def _class_sums(a, price, price_class, long_ptr, long_sec, long_qty, short_ptr, short_sec,
                short_qty, lsum, ssum):
    """Long and short market value of account a per price class (and in total). Branch-free
    register accumulators: a read-modify-write of lsum[class] per row would serialise."""
    l0 = l1 = l2 = l3 = np.int64(0)
    for j in range(long_ptr[a], long_ptr[a + 1]):
        s = long_sec[j]
        v = long_qty[j] * price[s]
        g = price_class[s]
        l0 += v * (g == 0)
        l1 += v * (g == 1)
        l2 += v * (g == 2)
        l3 += v * (g == 3)
    lsum[0], lsum[1], lsum[2], lsum[3] = l0, l1, l2, l3
    s0 = s1 = s2 = s3 = np.int64(0)
    for j in range(short_ptr[a], short_ptr[a + 1]):
        s = short_sec[j]
        v = short_qty[j] * price[s]
        g = price_class[s]
        s0 += v * (g == 0)
        s1 += v * (g == 1)
        s2 += v * (g == 2)
        s3 += v * (g == 3)
    ssum[0], ssum[1], ssum[2], ssum[3] = s0, s1, s2, s3
    return l0 + l1 + l2 + l3, s0 + s1 + s2 + s3


_UP = _SHARE * (1.0 + 1e-6) * (1.0 + _SAFE_REL) ** 2  # shares are rounded up by this much
_DOWN = (1.0 - 1e-6) / (1.0 + _SAFE_REL)  # and reach down by this (float32: < 6e-8 relative)


@nb.njit(cache=True, inline="always")
def _share_of(dg, up):
    """uint8 share numerator of one class, rounded up (int(x) + 1 > x), capped at _SHARE."""
    return np.uint8(min(int(dg * up) + 1, 255)) if dg > 0.0 else np.uint8(0)


@nb.njit(cache=True, inline="always")
def _set_bound(a, room, c, lsum, ssum, reach, share):
    """reach[a] = room / D rounded down; share[a, g] = D_g / D rounded up, over _SHARE."""
    S = float(RATIO_SCALE)
    d0 = float(lsum[0]) * S + c * float(ssum[0])
    d1 = float(lsum[1]) * S + c * float(ssum[1])
    d2 = float(lsum[2]) * S + c * float(ssum[2])
    d3 = float(lsum[3]) * S + c * float(ssum[3])
    D = d0 + d1 + d2 + d3
    if room == np.inf or D <= 0.0:
        reach[a] = _INF if room > 0.0 or D <= 0.0 else np.float32(0.0)
        share[a, 0] = share[a, 1] = share[a, 2] = share[a, 3] = 255
        return
    inv = 1.0 / D
    reach[a] = np.float32(room * inv * _DOWN)
    up = inv * _UP
    share[a, 0] = _share_of(d0, up)
    share[a, 1] = _share_of(d1, up)
    share[a, 2] = _share_of(d2, up)
    share[a, 3] = _share_of(d3, up)


@nb.njit(f64(i64, i64, i64, i64, i64, i64, I64, i64), cache=True)
def reach_of(reported, assets, liabilities, base_liabilities, lmv, smv, lines_row, band_bp):
    """Reach of one account holding one price class (tests): the fraction every price may
    move before its reported tier can change."""
    room, c = _room(reported, assets, liabilities, base_liabilities, smv,
                    lines_row[LINE_WITHDRAWABLE], lines_row[LINE_NORMAL],
                    lines_row[LINE_WARNING], lines_row[LINE_MARGIN_CALL], band_bp)
    reach = np.empty(1, dtype=np.float32)
    share = np.empty((1, N_CLASSES), dtype=np.uint8)
    lsum = np.zeros(N_CLASSES, dtype=np.int64)
    ssum = np.zeros(N_CLASSES, dtype=np.int64)
    lsum[0] = lmv
    ssum[0] = smv
    _set_bound(0, room, c, lsum, ssum, reach, share)
    return float(reach[0])


@nb.njit(nb.types.Tuple((f32, U8))(i64, i64, i64, i64, I64, I64, I64, i64), cache=True)
def bound_of(reported, assets, liabilities, base_liabilities, lsum, ssum, lines_row, band_bp):
    """(reach, shares) of one account from its per-class values (tests and tools)."""
    room, c = _room(reported, assets, liabilities, base_liabilities, ssum.sum(),
                    lines_row[LINE_WITHDRAWABLE], lines_row[LINE_NORMAL],
                    lines_row[LINE_WARNING], lines_row[LINE_MARGIN_CALL], band_bp)
    reach = np.empty(1, dtype=np.float32)
    share = np.empty((1, N_CLASSES), dtype=np.uint8)
    _set_bound(0, room, c, lsum, ssum, reach, share)
    return reach[0], share[0].copy()


@nb.njit(void(I64, i64, I64, I8, I64_2D, F64_2D), cache=True)
def update_deltas(secs, n, price, price_class, ref_price, deltas):
    """Raise each chunk's class deltas (`deltas[c, g]`) by the moves of `secs[:n]` (already
    at `price`) against the chunk's reference prices (`ref_price[c, s]`)."""
    for c in range(deltas.shape[0]):
        for i in range(n):
            s = secs[i]
            r = ref_price[c, s]
            dev = abs(price[s] - r) / r * (1.0 + _SAFE_REL)
            g = price_class[s]
            if dev > deltas[c, g]:
                deltas[c, g] = dev


@nb.njit(cache=True, inline="always")
def _rebase_one(a, price, price_class, long_ptr, long_sec, long_qty, short_ptr, short_sec,
                short_qty, base_assets, base_liabilities, profile_of, profile_lines, band,
                reported, reach, share, lsum, ssum):
    """Exact values of account a at `price` and its bound; returns (lmv, smv, new tier)."""
    lmv, smv = _class_sums(a, price, price_class, long_ptr, long_sec, long_qty, short_ptr,
                           short_sec, short_qty, lsum, ssum)
    A = base_assets[a] + lmv
    L = base_liabilities[a] + smv
    p = profile_of[a]
    l0, l1 = profile_lines[p, LINE_WITHDRAWABLE], profile_lines[p, LINE_NORMAL]
    l2, l3 = profile_lines[p, LINE_WARNING], profile_lines[p, LINE_MARGIN_CALL]
    t = _next_tier(reported[a], A, L, profile_lines, p, band)
    room, c = _room(t, A, L, base_liabilities[a], smv, l0, l1, l2, l3, band)
    _set_bound(a, room, c, lsum, ssum, reach, share)
    return lmv, smv, t


@nb.njit(i64(i64, i64, I64, I8, *_CSR, *_ACCOUNTS, I64, I64, I8, F32, U8_2D, I8, I64, i64),
         cache=True, error_model="numpy")
def refresh_range(lo, hi, price, price_class, long_ptr, long_sec, long_qty, short_ptr,
                  short_sec, short_qty, base_assets, base_liabilities, profile_of, profile_lines,
                  band_bp, long_mv, short_mv, reported, reach, share, previous_out, changed_out,
                  k):
    """Exact values, reported tier and bound of accounts lo..hi-1 at `price` (their new
    reference); tier changes are appended to changed_out/previous_out from index k."""
    band = np.int64(band_bp)
    lsum = np.empty(N_CLASSES, dtype=np.int64)
    ssum = np.empty(N_CLASSES, dtype=np.int64)
    for a in range(lo, hi):
        lmv, smv, t = _rebase_one(a, price, price_class, long_ptr, long_sec, long_qty,
                                  short_ptr, short_sec, short_qty, base_assets,
                                  base_liabilities, profile_of, profile_lines, band, reported,
                                  reach, share, lsum, ssum)
        long_mv[a] = lmv
        short_mv[a] = smv
        r = reported[a]
        if t != r:  # written out, not a shared helper: that ran far slower in these loops
            changed_out[k] = a
            previous_out[k] = r
            reported[a] = t
            k += 1
    return k


@nb.njit(void(i64, i64, I64, I8, *_CSR, *_ACCOUNTS, I8, F32, U8_2D), cache=True, parallel=True)
def rebase_all(n_chunks, chunk, price, price_class, long_ptr, long_sec, long_qty, short_ptr,
               short_sec, short_qty, base_assets, base_liabilities, profile_of, profile_lines,
               band_bp, reported, reach, share):
    """The bound of every account at `price`, its exact tiers already committed (after a full
    sweep): what switching into reach mode costs."""
    band = np.int64(band_bp)
    n = reach.shape[0]
    for c in nb.prange(n_chunks):
        lsum = np.empty(N_CLASSES, dtype=np.int64)
        ssum = np.empty(N_CLASSES, dtype=np.int64)
        for a in range(c * chunk, min((c + 1) * chunk, n)):
            _rebase_one(a, price, price_class, long_ptr, long_sec, long_qty, short_ptr,
                        short_sec, short_qty, base_assets, base_liabilities, profile_of,
                        profile_lines, band, reported, reach, share, lsum, ssum)


_GROUP = 8  # candidates whose scattered loads are issued together


def scan_scratch(chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Buffers `scan_range` needs (allocated once by its caller): candidate list of a chunk,
    and the staged per-candidate scalars of one group."""
    return np.empty(chunk, dtype=np.int64), np.empty((9, _GROUP), dtype=np.int64)


@nb.njit(nb.types.UniTuple(i64, 2)(i64, i64, F64, F32, U8_2D, I64, *_CSR, *_ACCOUNTS, I8, I8, I64,
                                   i64, I64, I64_2D), cache=True, error_model="numpy")
def scan_range(lo, hi, deltas_c, reach, share, price, long_ptr, long_sec, long_qty, short_ptr,
               short_sec, short_qty, base_assets, base_liabilities, profile_of, profile_lines,
               band_bp, reported, previous_out, changed_out, k, cand, stage):
    """Evaluate exactly the accounts lo..hi-1 whose bound the chunk's class deltas
    (`deltas_c`) may have used up; leaves their reference values alone. Returns the new k and
    the number evaluated.

    Candidates are scattered through the book, so each costs several cache misses; they are
    evaluated in groups whose scalar loads (row ranges, base amounts, profile, tier) and first
    rows are all issued before any is used, so the misses overlap instead of queueing."""
    band = np.int64(band_bp)
    # per class: delta / _SHARE, rounded up, so that sum(w_g * share_g) >= sum(delta_g * f_g)
    w0 = np.float32(deltas_c[0] / _SHARE * (1.0 + 1e-5))
    w1 = np.float32(deltas_c[1] / _SHARE * (1.0 + 1e-5))
    w2 = np.float32(deltas_c[2] / _SHARE * (1.0 + 1e-5))
    w3 = np.float32(deltas_c[3] / _SHARE * (1.0 + 1e-5))
    margin = np.float32(1.0 + 1e-5)
    m = 0
    for a in range(lo, hi):
        move = (w0 * np.float32(share[a, 0]) + w1 * np.float32(share[a, 1])
                + w2 * np.float32(share[a, 2]) + w3 * np.float32(share[a, 3]))
        if reach[a] <= move * margin:
            cand[m] = a
            m += 1
    for g0 in range(0, m, _GROUP):
        g1 = min(m, g0 + _GROUP)
        w = g1 - g0
        for i in range(w):  # stage 1: every scalar of the group, independent loads
            a = cand[g0 + i]
            stage[0, i] = long_ptr[a]
            stage[1, i] = long_ptr[a + 1]
            stage[2, i] = short_ptr[a]
            stage[3, i] = short_ptr[a + 1]
            stage[4, i] = base_assets[a]
            stage[5, i] = base_liabilities[a]
            stage[6, i] = profile_of[a]
            stage[7, i] = reported[a]
        touch = np.int64(0)
        for i in range(w):  # stage 2: the first row of each account, again all at once
            j = stage[0, i]
            if j < stage[1, i]:
                touch += long_qty[j] + long_sec[j]
        stage[8, 0] = touch  # a store keeps the touching loads from being optimised away
        for i in range(w):  # stage 3: sums and tiers, mostly from cache now
            a = cand[g0 + i]
            lmv = np.int64(0)
            for j in range(stage[0, i], stage[1, i]):
                lmv += long_qty[j] * price[long_sec[j]]
            smv = np.int64(0)
            for j in range(stage[2, i], stage[3, i]):
                smv += short_qty[j] * price[short_sec[j]]
            A = stage[4, i] + lmv
            L = stage[5, i] + smv
            r = stage[7, i]
            c = _next_tier(r, A, L, profile_lines, stage[6, i], band)
            if c != r:
                changed_out[k] = a
                previous_out[k] = r
                reported[a] = c
                k += 1
    return k, m
