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
    for a in nb.prange(n):
        long_mv[a] = _dot(long_ptr, long_sec, long_qty, long_price, a)
        short_mv[a] = _dot(short_ptr, short_sec, short_qty, short_price, a)


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
    for a in nb.prange(n):
        lm = _dot(long_ptr, long_sec, long_qty, price, a)
        sm = _dot(short_ptr, short_sec, short_qty, price, a)
        long_mv[a] = lm
        short_mv[a] = sm
        candidate[a] = next_reported_tier(
            reported[a],
            base_assets[a] + lm,
            base_liabilities[a] + sm,
            profile_lines[profile_of[a]],
            band_bp,
        )


@nb.njit(cache=True)
def collect_changes(candidate, reported, previous_out, changed_out):
    """Compact accounts whose candidate tier differs from the reported one into `changed_out`
    (their old tier into `previous_out`), and commit the candidate. Returns how many."""
    k = 0
    for a in range(candidate.shape[0]):
        c = candidate[a]
        r = reported[a]
        if c != r:
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
