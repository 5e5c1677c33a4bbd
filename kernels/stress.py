"""Stress: one limit move against every position, and the uniform fall to each line (§5)."""

import numba as nb
import numpy as np

from .common import F64, F64_2D, I32, I64, I64_2D, void
from .units import LINE_NORMAL, RATIO_SCALE


@nb.njit(void(I64, I64, I64, I64, F64), cache=True, parallel=True)
def stress_ratio(base_assets, base_liabilities, long_mv_down, short_mv_up, out):
    """Ratio with longs at limit-down and shorts at limit-up; +inf when nothing is owed."""
    for a in nb.prange(out.shape[0]):
        L = base_liabilities[a] + short_mv_up[a]
        A = base_assets[a] + long_mv_down[a]
        out[a] = np.inf if L <= 0 else A / L


@nb.njit(cache=True, inline="always")
def distance_one(base_assets, liabilities, assets, long_mv, line_bp):
    """Uniform fall of long prices (shorts unchanged) that brings R down to the line.

    NaN (reported as null) when no fall can breach, or when the line is already breached."""
    if liabilities <= 0 or long_mv <= 0:
        return np.nan
    if assets * RATIO_SCALE < line_bp * liabilities:
        return np.nan  # already below the line
    d = 1.0 - (line_bp * liabilities / RATIO_SCALE - base_assets) / long_mv
    if d >= 1.0:
        return np.nan
    return d


@nb.njit(void(I64, I64, I64, I64, I32, I64_2D, F64_2D), cache=True, parallel=True)
def distances(base_assets, assets, liabilities, long_mv, profile_of, profile_lines, out):
    """out[a, k]: the fall that brings the account into tier WARNING (k=0: below the normal
    line), MARGIN_CALL (k=1: below the warning line) and FORCED_LIQUIDATION (k=2: below the
    margin-call line)."""
    for a in nb.prange(out.shape[0]):
        lines = profile_lines[profile_of[a]]
        for k in range(3):
            out[a, k] = distance_one(base_assets[a], liabilities[a], assets[a], long_mv[a],
                                     lines[LINE_NORMAL + k])
