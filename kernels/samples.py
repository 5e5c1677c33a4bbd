"""Small valid inputs for every kernel, from a seed and a size (numpy only; `catalog.py` ties
each kernel to its maker here, its reference and its benchmark).

`toy_book(seed, n)` is one consistent book as kernel arrays: n accounts, about n/4 securities
on every board, a position table (collateral, financed, short), the long/short CSR by account
and CSC by security the ratio kernels walk, base amounts, line profiles and credit terms. The
cash of each account is chosen so its ratio lands near the lines (a tenth exactly on one), so
every tier occurs. The seed also picks how many profiles there are, so the sweep's three ways of
reading lines (select chain, packed words, table) all occur: seed % 3 == 0, 1, 2.

Each `make_*` returns the argument tuple of one call, with output arrays freshly allocated;
input arrays may be shared with the cached book, so callers that let a kernel write into its
inputs copy them first (the tests and benchmarks do).
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from types import SimpleNamespace

import numpy as np

from . import bands
from . import units as u
from .reach import N_CLASSES, price_classes

BAND = u.DEFAULT_HYSTERESIS_BP
MAX_BANDS = 4
MAX_ALERTS = 3
N_ITEMS = 64  # output rows of account_items
I8, I32, I64, F64 = np.int8, np.int32, np.int64, np.float64


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, salt])


SAMPLE_DAY = date(2026, 7, 6)  # the trading date of the toy book's bands


def limit_band(prev_close: np.ndarray, board: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Limit-down / limit-up (li) of stocks on SAMPLE_DAY, from kernels/bands.py."""
    n = board.shape[0]
    band = bands.band_bps(SAMPLE_DAY, board, np.zeros(n, dtype=bool), np.zeros(n, dtype=I8),
                          np.zeros(n, dtype=bool), np.full(n, bands.DERIVE, dtype=I64),
                          np.zeros(n, dtype=I64))
    down, up = np.empty(n, dtype=I64), np.empty(n, dtype=I64)
    bands.limit_prices(prev_close.astype(I64), band, np.full(n, bands.TICK[0], dtype=I64),
                       down, up)
    return down, up


def _segment_sums(ptr: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(ptr.shape[0] - 1, dtype=I64)
    np.add.at(out, np.repeat(np.arange(ptr.shape[0] - 1), np.diff(ptr)), values)
    return out


def _merge(acct, sec, qty, n_acct, n_sec):
    """CSR by account of summed qty per (account, security), securities ascending."""
    key = acct.astype(I64) * n_sec + sec.astype(I64)
    uniq, inv = np.unique(key, return_inverse=True)
    total = np.zeros(uniq.shape[0], dtype=I64)
    np.add.at(total, inv, qty.astype(I64))
    ptr = np.zeros(n_acct + 1, dtype=I64)
    np.cumsum(np.bincount(uniq // n_sec, minlength=n_acct), out=ptr[1:])
    return ptr, (uniq % n_sec).astype(I32), total


def _transpose(ptr, sec, qty, n_sec):
    """CSC by security (holders, accounts ascending) of a CSR by account."""
    acct = np.repeat(np.arange(ptr.shape[0] - 1, dtype=I32), np.diff(ptr))
    order = np.argsort(sec, kind="stable")
    hptr = np.zeros(n_sec + 1, dtype=I64)
    np.cumsum(np.bincount(sec, minlength=n_sec), out=hptr[1:])
    return hptr, np.ascontiguousarray(acct[order]), np.ascontiguousarray(qty[order])


def _profile_lines(seed: int) -> np.ndarray:
    """2 profiles (select chain), 6 (packed words) or 6 with a line above 16 bits (table)."""
    base = [u.DEFAULT_LINES_BP, (30_000, 16_000, 14_000, 12_000, 16_000)]
    if seed % 3:
        base += [(25_000, 14_000, 12_500, 11_000, 14_000),
                 (40_000, 17_000, 15_000, 13_000, 17_000),
                 (30_000, 15_500, 13_500, 11_800, 15_500),
                 (28_000, 15_000, 12_000, 10_500, 15_000)]
    lines = np.array(base, dtype=I64)
    if seed % 3 == 2:
        lines[3, u.LINE_WITHDRAWABLE] = 70_000
    return lines


@lru_cache(maxsize=16)
def toy_book(seed: int, n: int) -> SimpleNamespace:
    """One consistent book of `n` accounts as kernel arrays (see the module docstring)."""
    rng = _rng(seed, 1)
    n = max(int(n), 8)
    ns = max(24, min(n // 4, 5000))  # >= 24: up to 8 distinct securities per account
    b = SimpleNamespace(n_accounts=n, n_securities=ns, seed=seed)
    # securities: prices 1-200 yuan in 0.01 (some 0.001) steps, boards, lots, haircuts
    b.board = rng.integers(0, len(u.BOARD_NAMES), ns).astype(I8)
    b.prev_close = rng.integers(100, 20_000, ns).astype(I64) * 10
    b.limit_down, b.limit_up = limit_band(b.prev_close, b.board)
    move = rng.uniform(-0.12, 0.12, ns)
    price = np.round(b.prev_close * (1 + move) / 10).astype(I64) * 10
    price[rng.random(ns) < 0.1] += 3  # 0.001-yuan ticks
    b.price = np.clip(price, b.limit_down, b.limit_up)
    b.price[0] = b.limit_down[0]  # one locked at limit-down, one at limit-up
    b.price[1] = b.limit_up[1]
    # every ninth security has no daily limit (a new listing): never locked, whatever its price
    b.has_limit = (np.arange(ns) % 9) != 4
    b.lot = u.BOARD_DEFAULT_LOT[b.board.astype(I64)].copy()
    b.step = u.BOARD_STEP[b.board.astype(I64)].copy()
    b.haircut = rng.integers(6, 19, ns) * 0.05
    b.suspended = rng.random(ns) < 0.05
    b.price_class = price_classes(b.price)
    b.sec_group = np.where(rng.random(ns) < 0.8, rng.integers(0, 4, ns), -1).astype(I64)
    b.sec_board = b.board.astype(I64)
    # profiles and accounts
    b.profile_lines = _profile_lines(seed)
    n_prof = b.profile_lines.shape[0]
    b.profile_of = rng.integers(0, n_prof, n).astype(I32)
    # positions: 0-8 per account, distinct securities, about 12% shorts and 30% financed
    k = rng.integers(0, 9, n)
    k[rng.random(n) < 0.1] = 0
    b.pos_ptr = np.zeros(n + 1, dtype=I64)
    np.cumsum(k, out=b.pos_ptr[1:])
    m = int(b.pos_ptr[-1])
    acct = np.repeat(np.arange(n), k)
    first = np.repeat(b.pos_ptr[:-1], k)
    rank = np.arange(m) - first
    start = rng.integers(0, ns, n)
    stride = rng.integers(1, 4, n)
    b.pos_sec = ((start[acct] + rank * stride[acct]) % ns).astype(I32)  # distinct (k <= ns/3)
    r = rng.random(m)
    b.pos_kind = np.where(r < 0.12, u.SHORT, np.where(r < 0.42, u.FINANCED, u.COLLATERAL))
    b.pos_kind = b.pos_kind.astype(I8)
    lot = b.lot[b.pos_sec]
    b.pos_qty = (rng.integers(1, 40, m) * lot + np.where(rng.random(m) < 0.2,
                                                         rng.integers(1, lot), 0)).astype(I64)
    value = b.pos_qty * b.price[b.pos_sec]
    cost = np.round(value * rng.uniform(0.8, 1.25, m)).astype(I64)
    b.pos_cost = np.where(b.pos_kind == u.COLLATERAL, 0, cost).astype(I64)
    b.pos_margin_ratio = np.where(b.pos_kind == u.COLLATERAL, 0.0,
                                  rng.integers(10, 21, m) * 0.05)
    # amounts: cash chosen so the ratio lands near the lines
    long_rows = b.pos_kind != u.SHORT
    lmv = _segment_sums(b.pos_ptr, np.where(long_rows, value, 0))
    smv = _segment_sums(b.pos_ptr, np.where(long_rows, 0, value))
    fin = _segment_sums(b.pos_ptr, np.where(b.pos_kind == u.FINANCED, b.pos_cost, 0))
    b.accrued = np.where(rng.random(n) < 0.6, rng.integers(0, 500_000, n), 0).astype(I64)
    b.other_debt = np.where(rng.random(n) < 0.15, rng.integers(0, 2_000_000, n), 0).astype(I64)
    b.other_collateral = np.where(rng.random(n) < 0.2, rng.integers(0, 3_000_000, n),
                                  0).astype(I64)
    debt = fin + smv + b.accrued + b.other_debt
    lines = b.profile_lines[b.profile_of]
    on_line = rng.random(n) < 0.1
    # on a line: make the debt a multiple of 10 000 so A = line·L / 10 000 is whole
    b.accrued += np.where(on_line & (debt > 0), (-debt) % u.RATIO_SCALE, 0)
    debt = fin + smv + b.accrued + b.other_debt
    ratio_bp = rng.choice(np.array([9_000, 10_500, 11_000, 12_000, 12_900, 13_100, 14_000,
                                    15_030, 16_000, 20_000, 31_000, 45_000]), n)
    ratio_bp = ratio_bp + rng.integers(-300, 300, n)
    pick = rng.integers(0, 4, n)
    ratio_bp = np.where(on_line, lines[np.arange(n), pick], ratio_bp)
    want_a = ratio_bp * debt // u.RATIO_SCALE
    cash_pos = want_a - b.other_collateral - lmv
    # negative cash: (oc + lmv) / (debt − C) = R  ->  C = debt − (oc + lmv)·S / R
    cash_neg = debt - (b.other_collateral + lmv) * u.RATIO_SCALE // np.maximum(ratio_bp, 1)
    cash = np.where(cash_pos >= 0, cash_pos, np.minimum(cash_neg, 0))
    no_debt = debt == 0
    cash = np.where(no_debt, rng.integers(0, 5_000_000, n), cash)
    b.cash = cash.astype(I64)
    b.base_assets = (np.maximum(b.cash, 0) + b.other_collateral).astype(I64)
    b.base_liabilities = (fin + b.accrued + np.maximum(-b.cash, 0) + b.other_debt).astype(I64)
    # holdings: longs merged per (account, security), shorts; CSR by account and CSC by security
    acct_of_row = np.repeat(np.arange(n, dtype=I64), k)
    sh = b.pos_kind == u.SHORT
    b.long_ptr, b.long_sec, b.long_qty = _merge(acct_of_row[~sh], b.pos_sec[~sh],
                                                b.pos_qty[~sh], n, ns)
    b.short_ptr, b.short_sec, b.short_qty = _merge(acct_of_row[sh], b.pos_sec[sh],
                                                   b.pos_qty[sh], n, ns)
    b.long_hptr, b.long_hacct, b.long_hqty = _transpose(b.long_ptr, b.long_sec, b.long_qty, ns)
    b.short_hptr, b.short_hacct, b.short_hqty = _transpose(b.short_ptr, b.short_sec,
                                                           b.short_qty, ns)
    b.long_mv = _segment_sums(b.long_ptr, b.long_qty * b.price[b.long_sec])
    b.short_mv = _segment_sums(b.short_ptr, b.short_qty * b.price[b.short_sec])
    b.assets = b.base_assets + b.long_mv
    b.liabilities = b.base_liabilities + b.short_mv
    # tiers now (plain, no hysteresis) with numpy: lines cleared
    x = b.assets * u.RATIO_SCALE
    t = np.zeros(n, dtype=I8)
    for c in (u.LINE_WITHDRAWABLE, u.LINE_NORMAL, u.LINE_WARNING, u.LINE_MARGIN_CALL):
        t += (x >= lines[:, c] * b.liabilities).astype(I8)
    b.tier = np.where(b.liabilities <= 0, u.NO_DEBT, t).astype(I8)
    # credit terms: cap bands per profile, lines per account, alert thresholds per profile
    b.n_bands = rng.integers(0, MAX_BANDS + 1, n_prof).astype(I64)
    b.band_below = np.tile(np.array([16_000, 18_000, 24_000, 99_900], dtype=I64), (n_prof, 1))
    b.band_single = rng.choice(np.array([-1, 1_500, 3_000, 5_000], dtype=I64), (n_prof, MAX_BANDS))
    b.band_group = rng.choice(np.array([-1, 4_000, 6_000, 8_000], dtype=I64), (n_prof, MAX_BANDS))
    b.band_board = rng.choice(np.array([-1, 7_000, 9_000], dtype=I64), (n_prof, MAX_BANDS))
    b.financing_line = np.where(rng.random(n) < 0.7, fin * rng.integers(80, 200, n) // 100,
                                -1).astype(I64)
    short_cost = _segment_sums(b.pos_ptr, np.where(sh, b.pos_cost, 0))
    b.short_line = np.where(rng.random(n) < 0.6, short_cost * rng.integers(80, 200, n) // 100,
                            -1).astype(I64)
    b.short_line[rng.random(n) < 0.05] = 0
    b.alert_bp = np.tile(np.array([8_000, 9_500, 10_000], dtype=I64), (n_prof, 1))
    b.n_alerts = rng.integers(0, MAX_ALERTS + 1, n_prof).astype(I64)
    return b


def _moved(b, seed: int, share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(securities that move, in random order; every security's new price), moves within the
    limits; a few 'moves' leave the price where it is."""
    rng = _rng(seed, 2)
    secs = np.flatnonzero(rng.random(b.n_securities) < share).astype(I64)
    rng.shuffle(secs)
    new = b.price.copy()
    step = rng.integers(-60, 61, secs.shape[0]) * 10
    step[rng.random(secs.shape[0]) < 0.1] = 0
    new[secs] = np.clip(b.price[secs] + step * (b.price[secs] // 10_000 + 1), b.limit_down[secs],
                        b.limit_up[secs])
    return secs, new


def _reported(b, seed: int) -> np.ndarray:
    """Reported tiers: mostly the plain tier, some one better or worse, some unset."""
    rng = _rng(seed, 3)
    shift = rng.choice(np.array([0, 0, 0, -1, 1]), b.n_accounts)
    rep = np.clip(b.tier.astype(I64) + shift, 0, u.NO_DEBT)
    rep[rng.random(b.n_accounts) < 0.1] = u.UNSET_TIER
    return rep.astype(I8)


def _one(b, seed: int) -> int:
    """An account, preferring one with debt and positions."""
    rng = _rng(seed, 4)
    held = np.flatnonzero((b.liabilities > 0) & (np.diff(b.pos_ptr) > 0))
    return int(rng.choice(held)) if held.shape[0] else int(rng.integers(b.n_accounts))


def _csr(b):
    return (b.long_ptr, b.long_sec, b.long_qty, b.short_ptr, b.short_sec, b.short_qty)


def _csc(b):
    return (b.long_hptr, b.long_hacct, b.long_hqty, b.short_hptr, b.short_hacct, b.short_hqty)


def _accounts(b, seed: int, share: float = 0.5, repeats: bool = False) -> np.ndarray:
    rng = _rng(seed, 5)
    if repeats:
        return rng.integers(0, b.n_accounts, max(2, int(b.n_accounts * share))).astype(I64)
    return np.flatnonzero(rng.random(b.n_accounts) < share).astype(I64)


def _row(b, a: int) -> np.ndarray:
    return b.profile_lines[b.profile_of[a]]


# ------------------------------------------------------------------------------ common


def make_line_mode(seed, n):
    return (toy_book(seed, n).profile_lines,)


def make_block_tiers(seed, n):
    from .common import line_mode

    b = toy_book(seed, n)
    mode, sel, packed = line_mode(b.profile_lines)
    return (mode, sel, packed, b.profile_lines, b.base_assets, b.base_liabilities, b.long_mv,
            b.short_mv, b.profile_of, BAND, _reported(b, seed), np.zeros(n, dtype=I8))


def make_next_tier_branchless(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    row = _row(b, a)
    return (I64(_reported(b, seed)[a]), I64(b.assets[a]), I64(b.liabilities[a]),
            *(I64(row[c]) for c in (0, 1, 2, 3)), I64(BAND))


# ------------------------------------------------------------------------------ ratios


def make_tier_of(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    return (I64(b.assets[a]), I64(b.liabilities[a]), _row(b, a), I64(BAND if seed % 2 else 0))


def make_next_reported_tier(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    return (I8(_reported(b, seed)[a]), I64(b.assets[a]), I64(b.liabilities[a]), _row(b, a),
            I64(BAND))


def make_sweep(seed, n):
    b = toy_book(seed, n)
    return (b.limit_down, b.limit_up, *_csr(b), np.zeros(n, dtype=I64), np.zeros(n, dtype=I64))


def make_sweep_tiers(seed, n):
    b = toy_book(seed, n)
    return (b.price, *_csr(b), b.base_assets, b.base_liabilities, b.profile_of, b.profile_lines,
            BAND, np.zeros(n, dtype=I64), np.zeros(n, dtype=I64), _reported(b, seed),
            np.zeros(n, dtype=I8))


def make_collect_changes(seed, n):
    b = toy_book(seed, n)
    return (b.tier.copy(), _reported(b, seed), np.zeros(n, dtype=I8), np.zeros(n, dtype=I64))


def make_plain_tiers(seed, n):
    b = toy_book(seed, n)
    return (b.assets, b.liabilities, b.profile_of, b.profile_lines, np.zeros(n, dtype=I8))


# ------------------------------------------------------------------------------ incremental


def make_holders_touched(seed, n):
    b = toy_book(seed, n)
    secs, _ = _moved(b, seed)
    return (secs, secs.shape[0] - seed % 2, b.long_hptr, b.short_hptr)


def make_apply_price_changes(seed, n):
    b = toy_book(seed, n)
    secs, new = _moved(b, seed)
    return (secs, new[secs], secs.shape[0], b.price.copy(), *_csc(b), b.long_mv.copy(),
            b.short_mv.copy(), np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=I64))


def make_retier_accounts(seed, n):
    b = toy_book(seed, n)
    acc = _accounts(b, seed, 1.5, repeats=True)
    k = acc.shape[0] if seed % 2 == 0 else min(acc.shape[0], 40)  # block path, small path
    return (acc, k, b.base_assets, b.base_liabilities, b.long_mv, b.short_mv, b.profile_of,
            b.profile_lines, BAND, _reported(b, seed), np.zeros(acc.shape[0], dtype=I8),
            np.zeros(acc.shape[0], dtype=I64))


# ------------------------------------------------------------------------------ conflate


def _ticks(b, seed):
    rng = _rng(seed, 6)
    m = max(4, b.n_securities)
    sec = rng.integers(0, b.n_securities, m).astype(I32)
    price = b.price[sec] + rng.integers(-5, 6, m) * 10
    ts = np.sort(rng.integers(1, 10**9, m)).astype(I64)
    return sec, price.astype(I64), ts


def _pending(b, seed):
    """A pending set with a few symbols already in it."""
    rng = _rng(seed, 7)
    ns = b.n_securities
    pending_price = np.zeros(ns, dtype=I64)
    pending_ts = np.zeros(ns, dtype=I64)
    flag = np.zeros(ns, dtype=np.uint8)
    plist = np.zeros(ns, dtype=I64)
    first = rng.choice(ns, size=min(3, ns), replace=False)
    plist[:first.shape[0]] = first
    flag[first] = 1
    pending_price[first] = b.price[first] + 10
    pending_ts[first] = 1
    return pending_price, pending_ts, flag, plist, first.shape[0]


def make_conflate(seed, n):
    b = toy_book(seed, n)
    sec, price, ts = _ticks(b, seed)
    pp, pt, flag, plist, k = _pending(b, seed)
    return (sec, price, ts, sec.shape[0] - seed % 3, pp, pt, flag, plist, k)


def make_take_pending(seed, n):
    b = toy_book(seed, n)
    pp, _, flag, plist, k = _pending(b, seed)
    ns = b.n_securities
    return (plist, k, pp, flag, b.price, b.price.copy(), np.zeros(ns, dtype=I64),
            np.zeros(ns, dtype=I64))


def make_triggers(seed, n):
    b = toy_book(seed, n)
    _, new = _moved(b, seed, 0.5)
    acc = _accounts(b, seed)
    return (acc, acc.shape[0], *_csr(b), new, b.price, np.zeros(acc.shape[0], dtype=I64))


# ------------------------------------------------------------------------------ totals, margin


def make_tier_totals(seed, n):
    b = toy_book(seed, n)
    return (_reported(b, seed), b.liabilities, np.full(len(u.TIER_NAMES), 7, dtype=I64),
            np.full(len(u.TIER_NAMES), 7.0))


def _amb_args(b):
    return (b.cash, b.accrued, b.other_debt, b.other_collateral, b.pos_ptr, b.pos_sec,
            b.pos_kind, b.pos_qty, b.pos_cost, b.pos_margin_ratio, b.price, b.haircut)


def make_available_margin_balance_one(seed, n):
    b = toy_book(seed, n)
    return (_one(b, seed), *_amb_args(b))


def make_available_margin_balance(seed, n):
    b = toy_book(seed, n)
    acc = _accounts(b, seed, 0.7)
    return (acc, *_amb_args(b), np.zeros(acc.shape[0]))


def _free_and_amb(b, acc):
    free = np.zeros(acc.shape[0], dtype=I64)
    cash = b.cash[acc]
    for i, a in enumerate(acc.tolist()):
        lo, hi = b.pos_ptr[a], b.pos_ptr[a + 1]
        short = (b.pos_kind[lo:hi] == u.SHORT) & (b.pos_qty[lo:hi] > 0)
        free[i] = max(0, int(cash[i]) - int(b.pos_cost[lo:hi][short].sum()))
    amb = np.zeros(acc.shape[0], dtype=F64)
    for i, a in enumerate(acc.tolist()):
        amb[i] = _amb_py(b, a)
    return free, amb


def _amb_py(b, a):
    """AMB of one toy account (float, like the kernel), for the withdrawable samples."""
    amb = float(b.cash[a] + b.other_collateral[a] - b.accrued[a] - b.other_debt[a])
    for j in range(b.pos_ptr[a], b.pos_ptr[a + 1]):
        s, k = b.pos_sec[j], b.pos_kind[j]
        mv, c = float(b.pos_qty[j] * b.price[s]), float(b.pos_cost[j])
        if k == u.COLLATERAL:
            amb += mv * b.haircut[s]
        elif k == u.FINANCED:
            g = mv - c
            amb += g * b.haircut[s] if g > 0 else g
            amb -= c * b.pos_margin_ratio[j]
        else:
            g = c - mv
            amb += g * b.haircut[s] if g > 0 else g
            amb -= c + mv * b.pos_margin_ratio[j]
    return amb


def make_free_cash(seed, n):
    b = toy_book(seed, n)
    acc = _accounts(b, seed, 0.7)
    return (acc, b.cash, b.pos_ptr, b.pos_kind, b.pos_qty, b.pos_cost,
            np.zeros(acc.shape[0], dtype=I64))


def make_withdrawable_one(seed, n):
    b = toy_book(seed, n)
    rich = np.flatnonzero(b.tier >= u.WITHDRAWABLE)  # odd seeds: an account with cash to spare
    a = int(_rng(seed, 13).choice(rich)) if seed % 2 and rich.shape[0] else _one(b, seed)
    free, amb = _free_and_amb(b, np.array([a], dtype=I64))
    return (I64(free[0]), F64(amb[0]), I64(b.assets[a]), I64(b.liabilities[a]),
            I64(_row(b, a)[u.LINE_WITHDRAWABLE]))


def make_withdrawable(seed, n):
    b = toy_book(seed, n)
    acc = np.arange(b.n_accounts, dtype=I64)
    free, amb = _free_and_amb(b, acc)
    wbp = np.ascontiguousarray(b.profile_lines[b.profile_of, u.LINE_WITHDRAWABLE], dtype=I64)
    return (free, amb, b.assets.copy(), b.liabilities.copy(), wbp,
            np.zeros(acc.shape[0], dtype=I64))


# ------------------------------------------------------------------------------ stress


def _stressed(b):
    lmv = _segment_sums(b.long_ptr, b.long_qty * b.limit_down[b.long_sec])
    smv = _segment_sums(b.short_ptr, b.short_qty * b.limit_up[b.short_sec])
    return lmv, smv


def make_stress_ratio(seed, n):
    b = toy_book(seed, n)
    return (b.base_assets, b.base_liabilities, *_stressed(b), np.zeros(n))


def make_distance_one(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    return (I64(b.base_assets[a]), I64(b.liabilities[a]), I64(b.assets[a]), I64(b.long_mv[a]),
            I64(_row(b, a)[u.LINE_NORMAL + seed % 3]))


def make_distances(seed, n):
    b = toy_book(seed, n)
    return (b.base_assets, b.assets, b.liabilities, b.long_mv, b.profile_of, b.profile_lines,
            np.zeros((n, 3)))


# ------------------------------------------------------------------------------ reach


def make_account_values(seed, n):
    b = toy_book(seed, n)
    acc = _accounts(b, seed)
    _, new = _moved(b, seed)
    return (acc, new, *_csr(b), np.zeros(acc.shape[0], dtype=I64),
            np.zeros(acc.shape[0], dtype=I64))


def make_short_values(seed, n):
    b = toy_book(seed, n)
    _, new = _moved(b, seed)
    return (new, b.short_ptr, b.short_sec, b.short_qty, np.zeros(n, dtype=I64))


def _class_sums(b, a):
    lsum = np.zeros(N_CLASSES, dtype=I64)
    ssum = np.zeros(N_CLASSES, dtype=I64)
    for ptr, sec, qty, out in ((b.long_ptr, b.long_sec, b.long_qty, lsum),
                               (b.short_ptr, b.short_sec, b.short_qty, ssum)):
        s = sec[ptr[a]:ptr[a + 1]]
        np.add.at(out, b.price_class[s], qty[ptr[a]:ptr[a + 1]] * b.price[s])
    return lsum, ssum


def make_reach_of(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    return (int(_reported(b, seed)[a]), int(b.assets[a]), int(b.liabilities[a]),
            int(b.base_liabilities[a]), int(b.long_mv[a]), int(b.short_mv[a]), _row(b, a), BAND)


def make_bound_of(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    lsum, ssum = _class_sums(b, a)
    return (int(_reported(b, seed)[a]), int(b.assets[a]), int(b.liabilities[a]),
            int(b.base_liabilities[a]), lsum, ssum, _row(b, a), BAND)


def _chunking(n):
    chunk = max(1, -(-n // 3))
    return -(-n // chunk), chunk


def make_update_deltas(seed, n):
    b = toy_book(seed, n)
    secs, new = _moved(b, seed)
    n_chunks, _ = _chunking(n)
    ref = np.tile(b.price, (n_chunks, 1))
    ref[1:] = _moved(b, seed + 100)[1]  # the other chunks were refreshed at other prices
    deltas = np.zeros((n_chunks, N_CLASSES))
    deltas[0, 1] = 0.01
    return (secs, secs.shape[0], new, b.price_class, ref, deltas)


def _committed(b, seed):
    """Reported tiers after a sweep from `_reported` (a fixed point of the hysteresis rule)."""
    from .ratios import sweep_tiers

    rep = _reported(b, seed)
    cand = np.empty(b.n_accounts, dtype=I8)
    lm, sm = np.empty(b.n_accounts, dtype=I64), np.empty(b.n_accounts, dtype=I64)
    sweep_tiers(b.price, *_csr(b), b.base_assets, b.base_liabilities, b.profile_of,
                b.profile_lines, BAND, lm, sm, rep, cand)
    return cand


def _reach_args(b):
    return (b.base_assets, b.base_liabilities, b.profile_of, b.profile_lines, BAND)


def make_refresh_range(seed, n):
    b = toy_book(seed, n)
    _, new = _moved(b, seed)
    lo, hi = n // 4, n - n // 4
    k = 2
    return (lo, hi, new, b.price_class, *_csr(b), *_reach_args(b), b.long_mv.copy(),
            b.short_mv.copy(), _committed(b, seed), np.zeros(n, dtype=np.float32),
            np.zeros((n, N_CLASSES), dtype=np.uint8), np.zeros(n + k, dtype=I8),
            np.zeros(n + k, dtype=I64), k)


def make_rebase_all(seed, n):
    b = toy_book(seed, n)
    n_chunks, chunk = _chunking(n)
    return (n_chunks, chunk, b.price, b.price_class, *_csr(b), *_reach_args(b),
            _committed(b, seed), np.zeros(n, dtype=np.float32),
            np.zeros((n, N_CLASSES), dtype=np.uint8))


def make_scan_range(seed, n):
    """Bounds from a re-base at the book's prices, then prices move (small moves, so most
    accounts stay out of reach); deltas are the largest relative move per class."""
    from .reach import rebase_all, scan_scratch

    b = toy_book(seed, n)
    rep = _committed(b, seed)
    reach = np.zeros(n, dtype=np.float32)
    share = np.zeros((n, N_CLASSES), dtype=np.uint8)
    rebase_all(1, n, b.price, b.price_class, *_csr(b), *_reach_args(b), rep, reach, share)
    rng = _rng(seed, 8)
    new = b.price + (rng.integers(-3, 4, b.n_securities) * 10)
    new = np.maximum(new, 10).astype(I64)
    rel = np.abs(new - b.price) / b.price * (1.0 + 1e-9)
    deltas = np.zeros(N_CLASSES)
    np.maximum.at(deltas, b.price_class, rel)
    lo, hi = 0, n - n // 5
    cand, stage = scan_scratch(hi - lo)
    k = 1
    return (lo, hi, deltas, reach, share, new, *_csr(b), *_reach_args(b), rep,
            np.zeros(n + k, dtype=I8), np.zeros(n + k, dtype=I64), k, cand, stage)


# ------------------------------------------------------------------------------ desk


def make_crowding(seed, n):
    b = toy_book(seed, n)
    ns = b.n_securities
    move = np.maximum(b.price - b.limit_down, 0)
    return (move, *_csr(b), b.assets, b.liabilities, b.profile_of, b.profile_lines,
            np.zeros(ns, dtype=I64), np.zeros((ns, 3), dtype=I64), np.zeros((ns, 3), dtype=I64))


def _delta(b, seed):
    _, new = _moved(b, seed, 0.5)
    return new - b.price


def make_shift_all(seed, n):
    b = toy_book(seed, n)
    return (_delta(b, seed), *_csr(b), b.assets, b.liabilities, b.profile_of, b.profile_lines,
            np.zeros(n, dtype=I64), np.zeros(n, dtype=I64), np.zeros(n, dtype=I8),
            np.zeros(n, dtype=I8))


def make_shift_holders(seed, n):
    b = toy_book(seed, n)
    delta = _delta(b, seed)
    secs = np.flatnonzero(delta).astype(I64)
    return (secs, delta, *_csc(b), b.assets.copy(), b.liabilities.copy())


def make_account_shift(seed, n):
    b = toy_book(seed, n)
    acc = _accounts(b, seed)
    return (acc, _delta(b, seed), *_csr(b), np.zeros(acc.shape[0], dtype=I64),
            np.zeros(acc.shape[0], dtype=I64))


def make_tally(seed, n):
    b = toy_book(seed, n)
    after = np.clip(b.tier.astype(I64) + _rng(seed, 9).integers(-2, 3, n), 0, u.NO_DEBT)
    nt = len(u.TIER_NAMES)
    return (b.tier, after.astype(I8), b.liabilities, b.liabilities + 1000,
            np.zeros((nt, nt), dtype=I64), np.zeros((nt, nt), dtype=I64),
            np.zeros(nt, dtype=I64))


# ------------------------------------------------------------------------------ concentration


def make_band_caps(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    p = b.profile_of[a]
    return (int(b.assets[a]), int(b.liabilities[a]), b.band_below[p], b.band_single[p],
            b.band_group[p], b.band_board[p], int(b.n_bands[p]))


def make_account_items(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    rng = _rng(seed, 10)
    caps = rng.choice(np.array([-1, 500, 2_000, 4_000]), 3)
    k = max(int(b.long_ptr[a + 1] - b.long_ptr[a]), 1)
    return (a, int(b.assets[a]), b.price, b.long_ptr, b.long_sec, b.long_qty, b.sec_group,
            b.sec_board, int(caps[0]), int(caps[1]), int(caps[2]), BAND * (seed % 3),
            *(np.zeros(N_ITEMS, dtype=I64) for _ in range(4)), np.zeros(k, dtype=I64),
            np.zeros(k, dtype=I64), np.zeros(8, dtype=I64))


def make_set_fingerprint(seed, n):
    rng = _rng(seed, 11)
    m = 1 + n // 10
    return (rng.integers(0, 3, m).astype(I64), rng.integers(0, 5000, m).astype(I64))


def make_concentration_fingerprints(seed, n):
    b = toy_book(seed, n)
    acc = _accounts(b, seed, 0.8)
    return (acc, b.assets[acc], b.liabilities[acc], b.profile_of, b.band_below, b.band_single,
            b.band_group, b.band_board, b.n_bands, b.price, b.long_ptr, b.long_sec, b.long_qty,
            b.sec_group, b.sec_board, BAND * (seed % 3), np.zeros(acc.shape[0], dtype=I64),
            np.zeros(acc.shape[0], dtype=I64))


def make_line_use(seed, n):
    b = toy_book(seed, n)
    acc = _accounts(b, seed, 0.8)
    return (acc, b.pos_ptr, b.pos_kind, b.pos_cost, np.zeros(acc.shape[0], dtype=I64),
            np.zeros(acc.shape[0], dtype=I64))


def _used(b, acc):
    fin = _segment_sums(b.pos_ptr, np.where(b.pos_kind == u.FINANCED, b.pos_cost, 0))
    short = _segment_sums(b.pos_ptr, np.where(b.pos_kind == u.SHORT, b.pos_cost, 0))
    return fin[acc], short[acc]


def make_line_levels(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    p = b.profile_of[a]
    fin, short = _used(b, np.array([a]))
    used, line = (fin[0], b.financing_line[a]) if seed % 2 else (short[0], b.short_line[a])
    return (int(used), int(line), b.alert_bp[p], int(b.n_alerts[p]))


def make_line_levels_many(seed, n):
    b = toy_book(seed, n)
    acc = _accounts(b, seed, 0.8)
    fin, short = _used(b, acc)
    return (acc, fin, short, b.financing_line, b.short_line, b.profile_of, b.alert_bp,
            b.n_alerts, np.zeros(acc.shape[0], dtype=I64), np.zeros(acc.shape[0], dtype=I64))


# ------------------------------------------------------------------------------ liquidation

COSTS = ((0.0, 0.0), (0.001, 0.0015), (0.003, 0.0))


def make_liquidation_status(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    return (int(b.assets[a]), int(b.liabilities[a]), int(_row(b, a)[u.LINE_TARGET]))


def make_liquidation_value(seed, n):
    b = toy_book(seed, n)
    a = _one(b, seed)
    sell, buy = COSTS[seed % 3]
    return (int(b.assets[a]), int(b.liabilities[a]), int(_row(b, a)[u.LINE_TARGET]), sell, buy)


def _group_rank(seed):
    return np.array([[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0]][seed % 3], dtype=I64)


def _to_plan(b, seed):
    """An account below its target (the planner's case), else any with positions."""
    need = (b.liabilities > 0) & (b.assets * u.RATIO_SCALE
                                  < b.profile_lines[b.profile_of, u.LINE_TARGET] * b.liabilities)
    held = np.flatnonzero(need & (np.diff(b.pos_ptr) > 1))
    if held.shape[0] == 0:
        return _one(b, seed)
    return int(_rng(seed, 12).choice(held))


def make_plan_order(seed, n):
    b = toy_book(seed, n)
    return (_to_plan(b, seed), b.pos_ptr, b.pos_sec, b.pos_kind, b.pos_qty, b.pos_cost, b.price,
            b.prev_close, b.haircut, _group_rank(seed))


def _blocked(b):
    sell = b.suspended | (b.has_limit & (b.price <= b.limit_down))
    buy = b.suspended | (b.has_limit & (b.price >= b.limit_up))
    return sell, buy


def make_plan_account(seed, n):
    b = toy_book(seed, n)
    a = _to_plan(b, seed)
    m = max(int(b.pos_ptr[a + 1] - b.pos_ptr[a]), 1)
    sell, buy = COSTS[seed % 3]
    return (a, int(b.cash[a]), int(b.accrued[a]), int(b.other_debt[a]),
            int(b.other_collateral[a]), int(_row(b, a)[u.LINE_TARGET]), b.pos_ptr, b.pos_sec,
            b.pos_kind, b.pos_qty, b.pos_cost, b.price, b.prev_close, b.haircut, b.lot, b.step,
            *_blocked(b), sell, buy, _group_rank(seed), bool(seed % 4 != 3),
            *(np.zeros(m, dtype=I64) for _ in range(4)))


def make_cash_repayment_of(seed, n):
    b = toy_book(seed, n)
    a = _to_plan(b, seed)
    lo, hi = int(b.pos_ptr[a]), int(b.pos_ptr[a + 1])
    kind = b.pos_kind[lo:hi]
    principal = int(b.pos_cost[lo:hi][kind == u.FINANCED].sum())
    proceeds = int(b.pos_cost[lo:hi][kind == u.SHORT].sum())
    A, L = int(b.assets[a]), int(b.liabilities[a])
    target = int(_row(b, a)[u.LINE_TARGET])
    full = bool(L > 0 and A <= L)
    return (int(b.cash[a]), int(b.accrued[a]), principal, proceeds, A, L, target, full)


def make_blocked_flags(seed, n):
    b = toy_book(seed, n)
    ns = b.n_securities
    return (b.price, b.limit_down, b.limit_up, b.has_limit, b.suspended,
            np.zeros(ns, dtype=np.bool_), np.zeros(ns, dtype=np.bool_))


# ------------------------------------------------------------------------------ bands


def _band_sample(seed, n):
    """Bands of the toy securities on SAMPLE_DAY, a tenth of them funds (0.001 tick), some
    without a limit and some with an explicit band."""
    b = toy_book(seed, n)
    ns = b.n_securities
    rng = _rng(seed, 21)
    typ = (rng.random(ns) < 0.1).astype(I8)
    over = np.where(rng.random(ns) < 0.1, bands.NO_LIMIT,
                    np.where(rng.random(ns) < 0.1, rng.integers(1, 10_000, ns),
                             bands.DERIVE)).astype(I64)
    band = bands.band_bps(SAMPLE_DAY, b.board, rng.random(ns) < 0.2, typ,
                          np.zeros(ns, dtype=bool), over, np.zeros(ns, dtype=I64))
    prev = b.prev_close + np.where(typ == bands.TYPE_FUND, rng.integers(0, 10, ns), 0)
    return b, np.ascontiguousarray(prev, dtype=I64), band, np.ascontiguousarray(
        bands.TICK[typ.astype(I64)])


def make_limit_prices(seed, n):
    b, prev, band, tick = _band_sample(seed, n)
    ns = prev.shape[0]
    return (prev, band, tick, np.zeros(ns, dtype=I64), np.zeros(ns, dtype=I64))


def make_stress_prices(seed, n):
    b, prev, band, tick = _band_sample(seed, n)
    ns = prev.shape[0]
    down, up = np.zeros(ns, dtype=I64), np.zeros(ns, dtype=I64)
    bands.limit_prices(prev, band, tick, down, up)
    price = np.clip(b.price, down, up)
    return (price, band, down, up, tick, I64((seed % 4) * 1_500), np.zeros(ns, dtype=I64),
            np.zeros(ns, dtype=I64))
