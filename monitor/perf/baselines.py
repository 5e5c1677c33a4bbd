"""What the Numba sweep is compared against, on the same book and with the same results.

- `numpy_sweep_tiers`: a vectorised full recompute (gather `price[sec] * qty`, `np.add.reduceat`
  per account, tiers with hysteresis as whole-array comparisons). Exact int64, like the kernel.
- `python_sweep_tiers`: the obvious per-account loop in pure Python over plain lists, run on a
  subsample of accounts (a full 1M-account run would take seconds per round).

Both return what `sweep_tiers` computes (long_mv, short_mv, candidate), so the benchmark checks
them against the kernel before timing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import units as u


def segment_sums(ptr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of values[ptr[i]:ptr[i+1]] for every i, exact in int64 (empty segments give 0)."""
    n = ptr.shape[0] - 1
    if values.shape[0] == 0:
        return np.zeros(n, dtype=np.int64)
    # reduceat over the non-empty segments only: their starts strictly increase, and each sum
    # runs to the next one's start (or the end), which is exactly the segment
    nonempty = np.flatnonzero(ptr[1:] > ptr[:-1])
    out = np.zeros(n, dtype=np.int64)
    if nonempty.shape[0]:
        out[nonempty] = np.add.reduceat(values, ptr[:-1][nonempty])
    return out


def numpy_tiers(assets, liabilities, lines, band_bp, reported):
    """`next_reported_tier` for every account, as whole-array integer comparisons."""
    x = assets * u.RATIO_SCALE
    cols = (u.LINE_WITHDRAWABLE, u.LINE_NORMAL, u.LINE_WARNING, u.LINE_MARGIN_CALL)
    raw = np.zeros(assets.shape[0], dtype=np.int8)
    banded = np.zeros(assets.shape[0], dtype=np.int8)
    for k in cols:
        line = lines[:, k]
        raw += x >= line * liabilities
        banded += x >= (line + band_bp) * liabilities
    no_debt = liabilities <= 0
    raw[no_debt] = u.NO_DEBT
    banded[no_debt] = u.NO_DEBT
    keep = np.maximum(banded, reported)
    return np.where((reported == u.UNSET_TIER) | (raw < reported), raw, keep).astype(np.int8)


def numpy_sweep_tiers(b, band_bp, reported):
    """Full recompute in NumPy: (long_mv, short_mv, candidate)."""
    long_mv = segment_sums(b.long_ptr, b.long_qty * b.price[b.long_sec])
    short_mv = segment_sums(b.short_ptr, b.short_qty * b.price[b.short_sec])
    lines = b.profile_lines[b.profile_of]
    cand = numpy_tiers(b.base_assets + long_mv, b.base_liabilities + short_mv, lines, band_bp,
                       reported)
    return long_mv, short_mv, cand


@dataclass
class PySample:
    """A subsample of accounts as plain Python lists (rows re-based to the subsample)."""

    accounts: np.ndarray
    long_ptr: list
    long_sec: list
    long_qty: list
    short_ptr: list
    short_sec: list
    short_qty: list
    price: list
    base_assets: list
    base_liabilities: list
    lines: list  # per account: [withdrawable, normal, warning, margin_call]
    reported: list
    n_positions: int


def _rebase(ptr, sec, qty, accounts):
    lo, hi = ptr[accounts], ptr[accounts + 1]
    counts = hi - lo
    new_ptr = np.zeros(accounts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    rows = np.repeat(lo - new_ptr[:-1], counts) + np.arange(new_ptr[-1])
    return new_ptr.tolist(), sec[rows].tolist(), qty[rows].tolist(), int(new_ptr[-1])


def python_sample(b, n_sample: int, reported: np.ndarray, seed: int = 3) -> PySample:
    rng = np.random.default_rng(seed)
    n = min(n_sample, b.n_accounts)
    accounts = np.sort(rng.choice(b.n_accounts, size=n, replace=False))
    lp, ls, lq, nl = _rebase(b.long_ptr, b.long_sec, b.long_qty, accounts)
    sp, ss, sq, ns = _rebase(b.short_ptr, b.short_sec, b.short_qty, accounts)
    cols = [u.LINE_WITHDRAWABLE, u.LINE_NORMAL, u.LINE_WARNING, u.LINE_MARGIN_CALL]
    lines = b.profile_lines[b.profile_of[accounts]][:, cols].tolist()
    return PySample(accounts, lp, ls, lq, sp, ss, sq, b.price.tolist(),
                    b.base_assets[accounts].tolist(), b.base_liabilities[accounts].tolist(),
                    lines, reported[accounts].tolist(), nl + ns)


def python_sweep_tiers(s: PySample, band_bp: int):
    """Per-account loop in pure Python: (long_mv, short_mv, candidate) lists."""
    scale, no_debt, unset = u.RATIO_SCALE, u.NO_DEBT, u.UNSET_TIER
    price = s.price
    lp, ls, lq = s.long_ptr, s.long_sec, s.long_qty
    sp, ss, sq = s.short_ptr, s.short_sec, s.short_qty
    out_l, out_s, out_c = [], [], []
    for i in range(len(s.base_assets)):
        lm = 0
        for j in range(lp[i], lp[i + 1]):
            lm += lq[j] * price[ls[j]]
        sm = 0
        for j in range(sp[i], sp[i + 1]):
            sm += sq[j] * price[ss[j]]
        A = s.base_assets[i] + lm
        L = s.base_liabilities[i] + sm
        r = s.reported[i]
        if L <= 0:
            c = no_debt
        else:
            x = A * scale
            raw = 0
            for line in s.lines[i]:
                if x >= line * L:
                    raw += 1
            if r == unset or raw < r:
                c = raw
            else:
                banded = 0
                for line in s.lines[i]:
                    if x >= (line + band_bp) * L:
                        banded += 1
                c = banded if banded > r else r
        out_l.append(lm)
        out_s.append(sm)
        out_c.append(c)
    return out_l, out_s, out_c


def pick_securities(b) -> dict[str, int]:
    """Cold (least held, at least one holder), median and hottest security by holders."""
    holders = b.used_holders
    held = np.flatnonzero(holders > 0)
    order = held[np.argsort(holders[held], kind="stable")]
    return {"cold": int(order[0]), "median": int(order[order.shape[0] // 2]),
            "hot": int(order[-1])}
