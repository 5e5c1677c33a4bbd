"""Seeded synthetic book: realistic securities, accounts and positions for demos, tests and
capacity runs.

Everything is vectorised NumPy over blocks of accounts (no per-account Python loop), so a
1M-account book builds in seconds. The same seed and sizes give identical tables: accounts are
generated in fixed-size blocks, each from its own `numpy.random.Generator` seeded by
`(seed, block)`; securities from one seeded by `(seed, 0)`.

How a book is made:

- Securities: real A-share code shapes per board (SH main 600/601/603/605, SZ main 000/001/002,
  ChiNext 300/301, STAR 688, Beijing 8xxxxx/4xxxxx/92xxxx; a few % of the main board marked ST),
  lognormal prices (median about 12 yuan, 2-200) inside the board's daily limit band of
  `prev_close`, haircuts by board and size, about 0.5% suspended. Popularity follows a shifted
  Zipf law correlated with size: at 5,000 securities the most popular stock is held by about 30%
  of accounts and a handful by more than 10%.
- Accounts: 5-12 positions each (mean 8), distinct symbols drawn by popularity. About 15% have
  no debt (collateral only), about 12% have shorts (only on securities with a haircut > 0 that
  are not ST), the rest finance part of their longs. Some accounts hold a symbol both as
  collateral and financed.
- Ratios: each indebted account first draws a target maintenance ratio `R` (most 2.0-4.0, a few
  percent under 1.50, about 0.3% under 1.15, about 0.1% under 1.0). Quantities follow from the
  account's size and the lot rules; the financed principal is then solved so that
  `A / L = R` (exactly, up to 0.001 yuan rounding): `F = (A/R − short MV − short fees −
  max(−C, 0)) / (1 + accrual rate)`. Low ratios come out as financed positions bought well above
  today's price (losses), high ratios as gains.

Money is exact: prices are multiples of 0.01 yuan, every amount a multiple of 0.001 yuan, held
internally as int64 thousandths (see `kernels.units`) and emitted as Arrow decimals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from feeds.universe import board_band_bp, limit_band
from kernels import units as u

__all__ = ["generate", "write_book", "generate_json_book", "SCHEMAS", "PROFILES", "TABLES"]

Progress = Callable[[str, int, int], None]

TABLES = ("securities", "accounts", "positions", "profiles")

MONEY = pa.decimal128(18, 3)
PRICE = pa.decimal128(12, 3)
RATIO = pa.decimal128(6, 4)

SCHEMAS: dict[str, pa.Schema] = {
    "securities": pa.schema([
        ("symbol", pa.string()),
        ("price", PRICE),
        ("haircut", RATIO),
        ("board", pa.string()),
        ("lot", pa.int64()),
        ("suspended", pa.bool_()),
        ("prev_close", PRICE),
    ]),
    "profiles": pa.schema([
        ("name", pa.string()),
        ("withdrawable", RATIO),
        ("normal", RATIO),
        ("warning", RATIO),
        ("margin_call", RATIO),
        ("target", RATIO),
    ]),
    "accounts": pa.schema([
        ("account_id", pa.string()),
        ("cash", MONEY),
        ("accrued_interest_fees", MONEY),
        ("profile", pa.string()),
    ]),
    "positions": pa.schema([
        ("account_id", pa.string()),
        ("symbol", pa.string()),
        ("kind", pa.string()),
        ("qty", pa.int64()),
        ("financed_cost", MONEY),
        ("fin_margin_ratio", RATIO),
        ("short_sell_amount", MONEY),
        ("short_margin_ratio", RATIO),
    ]),
}

# Line profiles in basis points (withdrawable, normal, warning, margin_call, target) and the
# share of accounts on each.
PROFILES: dict[str, tuple[int, int, int, int, int]] = {
    "default": u.DEFAULT_LINES_BP,
    "conservative": (30_000, 16_000, 14_000, 12_000, 16_000),
    "professional": (30_000, 14_000, 12_000, 11_000, 14_000),
}
_PROFILE_SHARE = (0.88, 0.08, 0.04)

# ---------------------------------------------------------------------------------------------
# Securities

# Board mix of the whole list; ST is carved out of the main board afterwards.
_BOARD_SHARE = {u.BOARD_MAIN: 0.60, u.BOARD_CHINEXT: 0.25, u.BOARD_STAR: 0.12, u.BOARD_BSE: 0.03}
_ST_SHARE_OF_MAIN = 0.04
_SUSPENDED_SHARE = 0.005

# Code pools: (exchange suffix, first code, how many codes).
_POOLS = {
    u.BOARD_MAIN: (
        [("SH", 600_000, 1000), ("SH", 601_000, 1000), ("SH", 603_000, 1000),
         ("SH", 605_000, 1000), ("SZ", 0, 1000), ("SZ", 1_000, 1000), ("SZ", 2_000, 1000)]
    ),
    u.BOARD_CHINEXT: [("SZ", 300_000, 1000), ("SZ", 301_000, 1000)],
    u.BOARD_STAR: [("SH", 688_000, 1000)],
    u.BOARD_BSE: [("BJ", 830_000, 10_000), ("BJ", 870_000, 4000), ("BJ", 430_000, 1000),
                  ("BJ", 920_000, 1000)],
}
# Overflow order when a board's pool is exhausted (very large security counts).
_OVERFLOW_ORDER = (u.BOARD_MAIN, u.BOARD_CHINEXT, u.BOARD_STAR, u.BOARD_BSE)

# Price: lognormal per board (median yuan, sigma), clipped to [2, 200].
_PRICE_MEDIAN = {u.BOARD_MAIN: 10.0, u.BOARD_CHINEXT: 18.0, u.BOARD_STAR: 32.0,
                 u.BOARD_BSE: 12.0, u.BOARD_ST: 4.0}
_PRICE_SIGMA = 0.75
_PRICE_MIN, _PRICE_MAX = 2.0, 200.0

# Haircut choices (basis points) for large caps and the rest, per board; ST is always 0.
_HAIRCUT_LARGE = {u.BOARD_MAIN: [7000, 6500, 6000], u.BOARD_CHINEXT: [6000, 5500, 5000],
                  u.BOARD_STAR: [6000, 5500, 5000], u.BOARD_BSE: [5000, 4000]}
_HAIRCUT_OTHER = {u.BOARD_MAIN: [6500, 6000, 5500, 5000], u.BOARD_CHINEXT: [5000, 4500, 4000, 3000],
                  u.BOARD_STAR: [5000, 4500, 4000, 3000], u.BOARD_BSE: [4000, 3000, 2000, 0]}
_HAIRCUT_ZERO_SHARE = 0.03  # P/E > 300, broker exclusions

# Popularity: weight of the r-th most popular security (r = 1, 2, ...) is 1 / (r + shift)^a.
_ZIPF_A = 1.0
_ZIPF_SHIFT = 1.8

# ---------------------------------------------------------------------------------------------
# Accounts

_BLOCK = 1 << 16  # accounts per block; fixed, the output depends on it
_NO_DEBT_SHARE = 0.15
_SHORT_SHARE = 0.12  # of all accounts
_SHORT_ONLY_SHARE = 0.2  # of short accounts: shorts but no financing
_DUP_SHARE = 0.06  # of financing accounts: a symbol held both as collateral and financed
_NEG_CASH_SHARE = 0.035  # of indebted accounts without shorts
_ODD_LOT_SHARE = 0.03  # of long positions
_MAX_POS = 12

# Target ratio of indebted accounts: (share, low, high) uniform buckets, the rest lognormal.
_R_BUCKETS = ((0.0010, 0.80, 1.00), (0.0022, 1.00, 1.15), (0.012, 1.15, 1.30),
              (0.025, 1.30, 1.50), (0.07, 1.50, 2.00))
# The rest: R = 1.5 + lognormal(median 1.3, sigma 0.32): median 2.8, mostly 2.0-4.0.
_R_BODY_MEDIAN, _R_BODY_SIGMA = 1.3, 0.32

_FIN_MARGIN_BP = (np.array([10_000, 8_000]), np.array([0.7, 0.3]))
_SHORT_MARGIN_BP = (np.array([5_000, 8_000, 10_000, 12_000]), np.array([0.10, 0.25, 0.45, 0.20]))

_LI = u.MONEY_SCALE  # money units per yuan
_FEN = _LI // 100


# ---------------------------------------------------------------------------------------------
# Public API


def generate(accounts: int, securities: int, seed: int = 7,
             progress: Progress | None = None) -> dict[str, pa.Table]:
    """A synthetic book as Arrow tables: securities, accounts, positions, profiles.

    Deterministic for (accounts, securities, seed). `progress(stage, done, total)` is called a
    few times per stage ("securities", "accounts", "tables")."""
    if accounts < 0 or securities < 1:
        raise ValueError("need accounts >= 0 and securities >= 1")
    report = progress or (lambda stage, done, total: None)

    report("securities", 0, 1)
    sec = _securities(securities, np.random.default_rng([seed, 0]))
    report("securities", 1, 1)

    n_blocks = (accounts + _BLOCK - 1) // _BLOCK
    report("accounts", 0, accounts)
    parts = []
    for b in range(n_blocks):
        lo = b * _BLOCK
        m = min(_BLOCK, accounts - lo)
        parts.append(_accounts_block(m, lo, sec, np.random.default_rng([seed, 1, b])))
        report("accounts", lo + m, accounts)

    report("tables", 0, 4)
    acc = _concat(parts)
    tables = {"securities": _securities_table(sec)}
    report("tables", 1, 4)
    tables["profiles"] = _profiles_table()
    ids = _account_ids(accounts)
    tables["accounts"] = _accounts_table(acc, ids)
    report("tables", 2, 4)
    tables["positions"] = _positions_table(acc, ids, tables["securities"].column("symbol"))
    report("tables", 4, 4)
    return tables


def write_book(tables: dict[str, pa.Table], out_dir: str | Path, fmt: str = "parquet") -> None:
    """Write each table to `out_dir/<name>.parquet` (or `.csv`), creating the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for name in TABLES:
            if name in tables:
                pq.write_table(tables[name], out / f"{name}.parquet")
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        for name in TABLES:
            if name in tables:
                pacsv.write_csv(tables[name], out / f"{name}.csv")
    else:
        raise ValueError(f"unknown format {fmt!r}: use 'parquet' or 'csv'")


def generate_json_book(accounts: int, securities: int, seed: int = 7) -> dict:
    """A small book as the JSON dict of interfaces.md (money and ratios as decimal strings,
    null fields omitted). Same content as `generate(accounts, securities, seed)`."""
    t = generate(accounts, securities, seed)
    s = t["securities"]
    sec_rows = []
    for sym, price, hc, board, lot, susp, prev in zip(
        s["symbol"].to_pylist(), _units(s["price"]), _units(s["haircut"]),
        s["board"].to_pylist(), s["lot"].to_pylist(), s["suspended"].to_pylist(),
        _units(s["prev_close"]), strict=True,
    ):
        sec_rows.append({"symbol": sym, "price": _fmt(price, 3), "haircut": _fmt(hc, 4),
                         "board": board, "lot": lot, "suspended": susp,
                         "prev_close": _fmt(prev, 3)})
    p = t["profiles"]
    profiles = {}
    lines = [_units(p[c]) for c in u.LINE_NAMES]
    for i, name in enumerate(p["name"].to_pylist()):
        profiles[name] = {c: _fmt(lines[k][i], 4) for k, c in enumerate(u.LINE_NAMES)}
    a = t["accounts"]
    acct_rows = []
    index = {}
    for aid, cash, accr, prof in zip(a["account_id"].to_pylist(), _units(a["cash"]),
                                     _units(a["accrued_interest_fees"]),
                                     a["profile"].to_pylist(), strict=True):
        index[aid] = len(acct_rows)
        acct_rows.append({"account_id": aid, "cash": _fmt(cash, 3),
                          "accrued_interest_fees": _fmt(accr, 3), "profile": prof,
                          "positions": []})
    q = t["positions"]
    cols = [q["account_id"].to_pylist(), q["symbol"].to_pylist(), q["kind"].to_pylist(),
            q["qty"].to_pylist(), _units(q["financed_cost"]), _units(q["fin_margin_ratio"]),
            _units(q["short_sell_amount"]), _units(q["short_margin_ratio"])]
    for aid, sym, kind, qty, fc, fmr, ssa, smr in zip(*cols, strict=True):
        row = {"symbol": sym, "kind": kind, "qty": qty}
        if fc is not None:
            row["financed_cost"] = _fmt(fc, 3)
            row["fin_margin_ratio"] = _fmt(fmr, 4)
        if ssa is not None:
            row["short_sell_amount"] = _fmt(ssa, 3)
            row["short_margin_ratio"] = _fmt(smr, 4)
        acct_rows[index[aid]]["positions"].append(row)
    return {"securities": sec_rows, "profiles": profiles, "accounts": acct_rows}


# ---------------------------------------------------------------------------------------------
# Securities


def _board_counts(n: int) -> dict[int, int]:
    counts = {b: int(round(n * s)) for b, s in _BOARD_SHARE.items() if b != u.BOARD_MAIN}
    if n >= 20:
        counts = {b: max(1, c) for b, c in counts.items()}
    counts[u.BOARD_MAIN] = n - sum(counts.values())
    while counts[u.BOARD_MAIN] < 0:  # tiny n: rounding overshoot
        big = max((b for b in counts if b != u.BOARD_MAIN), key=counts.get)
        counts[big] -= 1
        counts[u.BOARD_MAIN] += 1
    cap = {b: sum(k for _, _, k in pools) for b, pools in _POOLS.items()}
    if n > sum(cap.values()):
        raise ValueError(f"at most {sum(cap.values())} securities fit the A-share code pools")
    overflow = 0
    for b in counts:
        if counts[b] > cap[b]:
            overflow += counts[b] - cap[b]
            counts[b] = cap[b]
    for b in _OVERFLOW_ORDER:
        take = min(overflow, cap[b] - counts[b])
        counts[b] += take
        overflow -= take
    return counts


def _codes(board: int, k: int, rng: np.random.Generator) -> list[str]:
    pools = _POOLS[board]
    size = sum(n for _, _, n in pools)
    picks = np.sort(rng.choice(size, size=k, replace=False))
    out = []
    starts = np.cumsum([0] + [n for _, _, n in pools])
    for (suffix, first, _), lo, hi in zip(pools, starts[:-1], starts[1:], strict=True):
        for p in picks[(picks >= lo) & (picks < hi)]:
            out.append(f"{first + int(p - lo):06d}.{suffix}")
    return out


def _securities(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    counts = _board_counts(n)
    symbols: list[str] = []
    board = []
    for b in (u.BOARD_MAIN, u.BOARD_CHINEXT, u.BOARD_STAR, u.BOARD_BSE):
        codes = _codes(b, counts[b], rng)
        symbols += codes
        board += [b] * len(codes)
    by_symbol = np.argsort(np.array(symbols))  # list order: by code, as exchanges publish
    symbols = [symbols[i] for i in by_symbol]
    board = np.array(board, dtype=np.int8)[by_symbol]
    main = np.flatnonzero(board == u.BOARD_MAIN)
    n_st = int(round(main.size * _ST_SHARE_OF_MAIN))
    if n >= 20:
        n_st = max(1, n_st)
    n_st = min(n_st, main.size)
    board[rng.choice(main, size=n_st, replace=False)] = u.BOARD_ST

    # Size (market-cap proxy), standard normal; ST and BSE are smaller.
    size = rng.standard_normal(n) - 0.8 * (board == u.BOARD_ST) - 0.6 * (board == u.BOARD_BSE)

    median = np.array([_PRICE_MEDIAN[b] for b in range(len(u.BOARD_NAMES))])[board]
    raw = median * np.exp(_PRICE_SIGMA * rng.standard_normal(n) + 0.15 * size)
    raw = np.clip(raw, _PRICE_MIN, _PRICE_MAX)
    prev_close = np.round(raw * 100).astype(np.int64) * _FEN
    # Today's move: mostly small, a few stocks at the limits.
    limit = board_band_bp(board) / u.RATIO_SCALE
    move = rng.normal(0.0, 0.022, n) * (limit / 0.10) ** 0.5
    at_limit = rng.random(n)
    move = np.where(at_limit < 0.015, limit, np.where(at_limit < 0.025, -limit, move))
    price = np.round(prev_close / _LI * (1 + move) * 100).astype(np.int64) * _FEN
    down, up = limit_band(prev_close, board)
    # Inside the band, then inside [2, 200] yuan (still inside the band: prev_close is too).
    price = np.clip(np.clip(price, down, up), int(_PRICE_MIN * _LI), int(_PRICE_MAX * _LI))
    suspended = rng.random(n) < _SUSPENDED_SHARE
    price = np.where(suspended, prev_close, price)

    # Haircuts by board and size.
    haircut = np.zeros(n, dtype=np.int64)
    for b in (u.BOARD_MAIN, u.BOARD_CHINEXT, u.BOARD_STAR, u.BOARD_BSE):
        idx = np.flatnonzero(board == b)
        if idx.size == 0:
            continue
        large = size[idx] > np.quantile(size[idx], 0.8)
        haircut[idx] = np.where(large, rng.choice(_HAIRCUT_LARGE[b], idx.size),
                                rng.choice(_HAIRCUT_OTHER[b], idx.size))
    haircut[rng.random(n) < _HAIRCUT_ZERO_SHARE] = 0
    haircut[board == u.BOARD_ST] = 0

    # Popularity: shifted Zipf over a rank mostly given by size.
    order = np.argsort(-(size + 0.5 * rng.standard_normal(n)), kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    weight = 1.0 / (rank + _ZIPF_SHIFT) ** _ZIPF_A
    weight[board == u.BOARD_ST] *= 0.3
    cdf = np.cumsum(weight)
    cdf /= cdf[-1]

    return {
        "symbol": np.array(symbols, dtype=object),
        "board": board,
        "lot": u.BOARD_DEFAULT_LOT[board],
        "price": price,
        "prev_close": prev_close,
        "haircut": haircut,
        "suspended": suspended,
        "shortable": (haircut > 0) & (board != u.BOARD_ST),
        "cdf": cdf,
    }


# ---------------------------------------------------------------------------------------------
# Accounts


def _draw_symbols(n_distinct: np.ndarray, cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[m, _MAX_POS] distinct securities per row, drawn by popularity (successive sampling:
    draws with replacement, first occurrences kept); -1 beyond n_distinct (which must not
    exceed the number of securities)."""
    m = n_distinct.shape[0]
    n_sec = cdf.shape[0]
    out = np.full((m, _MAX_POS), -1, dtype=np.int64)
    todo = np.arange(m)
    width = 24
    guide = np.searchsorted(cdf, np.arange(_GUIDE) / _GUIDE, side="right")
    while todo.size:
        need = n_distinct[todo]
        if width > 1536:
            # Only reachable with a handful of securities: uniform draw without replacement.
            cand = np.argsort(rng.random((todo.size, n_sec)), axis=1)
        else:
            cand = _inverse_cdf(cdf, guide, rng.random((todo.size, width)))
        order = np.argsort(cand, axis=1, kind="stable")
        srt = np.take_along_axis(cand, order, axis=1)
        first = np.ones_like(srt, dtype=bool)
        first[:, 1:] = srt[:, 1:] != srt[:, :-1]
        keep = np.empty_like(first)
        np.put_along_axis(keep, order, first, axis=1)
        rank = np.cumsum(keep, axis=1)
        done = rank[:, -1] >= need
        sel = keep & (rank <= need[:, None]) & done[:, None]
        r, c = np.nonzero(sel)
        out[todo[r], rank[r, c] - 1] = cand[r, c]
        todo = todo[~done]
        width *= 2
    return out


_GUIDE = 1 << 16  # guide table buckets for inverse-CDF sampling


def _inverse_cdf(cdf: np.ndarray, guide: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`np.searchsorted(cdf, x, side="right")` for x in [0, 1), via a guide table: start at the
    answer for the bucket's lower edge and step up (a step or two; much faster than a binary
    search per random draw)."""
    flat = x.ravel()
    idx = guide[(flat * _GUIDE).astype(np.int64)]
    todo = np.flatnonzero(cdf[idx] <= flat)
    while todo.size:
        idx[todo] += 1
        todo = todo[cdf[idx[todo]] <= flat[todo]]
    return np.minimum(idx, cdf.shape[0] - 1).reshape(x.shape)


def _rank_in_row(key: np.ndarray) -> np.ndarray:
    order = np.argsort(key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(key.shape[1]), key.shape), axis=1)
    return rank


def _accounts_block(m: int, first: int, sec: dict, rng: np.random.Generator) -> dict:
    cols = np.arange(_MAX_POS)
    n_sec = sec["price"].shape[0]

    # Account type, size and target ratio.
    t = rng.random(m)
    no_debt = t < _NO_DEBT_SHARE
    has_short = (t >= _NO_DEBT_SHARE) & (t < _NO_DEBT_SHARE + _SHORT_SHARE)
    short_only = has_short & (rng.random(m) < _SHORT_ONLY_SHARE)
    financing = ~no_debt & ~short_only
    size = np.clip(300_000 * np.exp(1.1 * rng.standard_normal(m)), 30_000, 3e8)
    target_r = _target_ratios(m, rng)

    n_pos = 5 + rng.binomial(7, 3 / 7, m)
    dup = financing & (rng.random(m) < _DUP_SHARE)
    n_distinct = np.minimum(n_pos - dup, n_sec)
    sym = _draw_symbols(n_distinct, sec["cdf"], rng)
    valid = cols < n_distinct[:, None]

    # Kinds: shorts on shortable symbols, then financed among the remaining longs.
    shortable = valid & sec["shortable"][np.maximum(sym, 0)]
    want_short = np.where(has_short, 1 + rng.binomial(2, 0.3, m), 0)
    keep_long = np.where(short_only, 1, 2)
    n_short = np.minimum(want_short, np.minimum(shortable.sum(axis=1),
                                                np.maximum(n_distinct - keep_long, 0)))
    key = np.where(shortable, rng.random((m, _MAX_POS)), 2.0)
    is_short = (_rank_in_row(key) < n_short[:, None]) & shortable
    n_short = is_short.sum(axis=1)
    has_short = n_short > 0
    short_only &= has_short

    long_slot = valid & ~is_short
    n_long = n_distinct - n_short
    share = rng.uniform(0.25, 0.6, m)
    n_fin = np.where(financing, np.clip(np.round(n_long * share), 1, np.maximum(n_long - 1, 1)), 0)
    n_fin = np.minimum(n_fin, n_long).astype(np.int64)
    key = np.where(long_slot, rng.random((m, _MAX_POS)), 2.0)
    is_fin = (_rank_in_row(key) < n_fin[:, None]) & long_slot
    n_fin = is_fin.sum(axis=1)
    financing &= n_fin > 0
    dup &= financing & (n_distinct < _MAX_POS)
    n_pos = n_distinct + dup

    # The duplicated row: collateral on the account's first financed symbol.
    first_fin = np.argmax(is_fin, axis=1)
    rows = np.flatnonzero(dup)
    sym[rows, n_distinct[rows]] = sym[rows, first_fin[rows]]
    valid = cols < n_pos[:, None]
    kind = np.where(is_short, u.SHORT, np.where(is_fin, u.FINANCED, u.COLLATERAL)).astype(np.int8)
    kind[~valid] = -1
    is_coll = kind == u.COLLATERAL
    is_short = kind == u.SHORT
    is_fin = kind == u.FINANCED
    sym = np.where(valid, sym, 0)

    price = sec["price"][sym]  # li per share
    lot = sec["lot"][sym]

    # Free cash (not counting short proceeds): a few % of size, negative for a few accounts.
    cash_frac = rng.exponential(np.where(no_debt, 0.12, 0.04))
    neg = ~no_debt & ~has_short & (rng.random(m) < _NEG_CASH_SHARE / (1 - _NO_DEBT_SHARE
                                                                      - _SHORT_SHARE))
    cash_frac = np.where(neg, -rng.uniform(0.002, 0.03, m), cash_frac)
    free_cash = np.round(size * cash_frac * 100).astype(np.int64) * _FEN  # whole fen

    # Accrual rates: interest on financed principal, fees on short-sale proceeds.
    days = rng.integers(1, 181, m)
    alpha = rng.uniform(0.05, 0.084, m) * days / 360
    beta = rng.uniform(0.08, 0.106, m) * rng.integers(1, 181, m) / 360

    # Planned short value: a share of the debt (all of it for short-only accounts). rho =
    # sale price / today's price; losing shorts (rho < 1) on low-ratio accounts.
    r = target_r
    rho = np.minimum(np.exp(rng.normal(0.0, 0.12, m)), 0.7 * r)
    sigma = np.where(short_only, 1.0, rng.uniform(0.15, 0.5, m))
    cash_pos = np.maximum(free_cash / _LI, 0)
    short_plan = np.where(
        has_short,
        sigma * (cash_pos + size) / np.maximum(r * (1 + beta * rho) - sigma * rho, 0.05),
        0.0,
    )
    # Planned financed market value from a desired cost/value factor k (k > 1: losses).
    k = np.exp(rng.normal(0.0, 0.15, m)) * np.clip(2.2 / r, 0.6, 2.0) ** 0.7
    assets_plan = cash_pos + size + rho * short_plan
    fin_debt_plan = assets_plan / r - short_plan * (1 + beta * rho) + np.minimum(free_cash, 0) / _LI
    phi = np.where(financing, np.clip(fin_debt_plan / (k * (1 + alpha)) / size, 0.05, 0.95), 0.0)

    # Values per slot: split each group's budget by exponential weights; quantities in lots.
    w = rng.exponential(1.0, (m, _MAX_POS)) * valid
    budget_coll = size * (1 - phi)
    budget_fin = size * phi
    value = np.zeros((m, _MAX_POS))
    for mask, budget in ((is_coll, budget_coll), (is_fin, budget_fin), (is_short, short_plan)):
        wm = np.where(mask, w, 0.0)
        tot = wm.sum(axis=1)
        value += wm * (budget / np.where(tot > 0, tot, 1.0))[:, None]
    lots = np.maximum(1, np.round(value * _LI / (price * lot)))
    qty = lots.astype(np.int64) * lot
    odd = ~is_short & valid & (rng.random((m, _MAX_POS)) < _ODD_LOT_SHARE)
    qty += np.where(odd, rng.integers(1, lot), 0)
    qty = np.where(valid, qty, 0)
    mv = qty * price  # li, exact

    # Short sale prices (0.01 steps) and proceeds, which stay in the account's cash.
    sale = np.round(price / _LI * rho[:, None] * np.exp(rng.normal(0.0, 0.05, (m, _MAX_POS)))
                    * 100).astype(np.int64)
    sale = np.maximum(sale, 1) * _FEN
    sell_amount = np.where(is_short, qty * sale, 0)
    proceeds = sell_amount.sum(axis=1)
    cash = free_cash + proceeds

    long_mv = np.where(is_coll | is_fin, mv, 0).sum(axis=1)
    short_mv = np.where(is_short, mv, 0).sum(axis=1)
    fin_mv = np.where(is_fin, mv, 0).sum(axis=1)
    short_fees = np.round(beta * proceeds).astype(np.int64)
    assets = np.maximum(cash, 0) + long_mv
    neg_cash = np.maximum(-cash, 0)

    # Solve the financed principal for the target ratio.
    f = (assets / r - short_mv - short_fees - neg_cash) / (1 + alpha)
    f = np.where(financing, np.maximum(f, 0.05 * fin_mv), 0.0)
    # Spread it over the financed positions (per-position gains and losses differ).
    fw = np.where(is_fin, mv * np.exp(rng.normal(0.0, 0.2, (m, _MAX_POS))), 0.0)
    fw_tot = fw.sum(axis=1)
    fin_cost = np.round(fw * (f / np.where(fw_tot > 0, fw_tot, 1.0))[:, None]).astype(np.int64)
    fin_cost = np.where(is_fin, np.maximum(fin_cost, _LI), 0)
    principal = fin_cost.sum(axis=1)
    accrued = np.round(alpha * principal).astype(np.int64) + short_fees
    accrued = np.where(no_debt, 0, accrued)

    fin_bp, fin_p = _FIN_MARGIN_BP
    short_bp, short_p = _SHORT_MARGIN_BP
    margin = np.where(is_fin, rng.choice(fin_bp, (m, _MAX_POS), p=fin_p),
                      np.where(is_short, rng.choice(short_bp, (m, _MAX_POS), p=short_p), 0))
    cost = np.where(is_fin, fin_cost, np.where(is_short, sell_amount, 0))

    profile = rng.choice(len(PROFILES), m, p=_PROFILE_SHARE).astype(np.int8)

    # Rows sorted by (symbol, kind) within each account; flatten in account order.
    sort_key = np.where(valid, sym * 4 + kind, np.iinfo(np.int64).max)
    order = np.argsort(sort_key, axis=1, kind="stable")
    take = (order + (np.arange(m) * _MAX_POS)[:, None])[cols < n_pos[:, None]]

    return {
        "cash": cash,
        "accrued": accrued,
        "profile": profile,
        "pos_acct": np.repeat(np.arange(first, first + m, dtype=np.int32), n_pos),
        "pos_sec": sym.ravel()[take].astype(np.int32),
        "pos_kind": kind.ravel()[take],
        "pos_qty": qty.ravel()[take],
        "pos_cost": cost.ravel()[take],
        "pos_margin": margin.ravel()[take].astype(np.int16),
    }


def _target_ratios(m: int, rng: np.random.Generator) -> np.ndarray:
    body = 1.5 + _R_BODY_MEDIAN * np.exp(_R_BODY_SIGMA * rng.standard_normal(m))
    pick = rng.random(m)
    lo = np.zeros(m)
    hi = np.zeros(m)
    inb = np.zeros(m, dtype=bool)
    edge = 0.0
    for share, a, b in _R_BUCKETS:
        sel = (pick >= edge) & (pick < edge + share)
        lo[sel], hi[sel] = a, b
        inb |= sel
        edge += share
    return np.where(inb, lo + (hi - lo) * rng.random(m), body)


def _concat(parts: list[dict]) -> dict:
    if not parts:
        empty = {"cash": np.int64, "accrued": np.int64, "profile": np.int8,
                 "pos_acct": np.int32, "pos_sec": np.int32, "pos_kind": np.int8,
                 "pos_qty": np.int64, "pos_cost": np.int64, "pos_margin": np.int16}
        return {k: np.zeros(0, dtype=d) for k, d in empty.items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------------------------
# Arrow tables


def decimal_text(unscaled: np.ndarray, typ: pa.Decimal128Type, valid: np.ndarray | None = None):
    """Arrow decimal128 array from int64 unscaled values (no per-value Python)."""
    v = np.ascontiguousarray(unscaled, dtype=np.int64)
    words = np.empty((v.shape[0], 2), dtype=np.int64)
    words[:, 0] = v
    words[:, 1] = v >> 63  # sign extension: little-endian two's complement 128-bit
    if valid is None:
        return pa.Array.from_buffers(typ, v.shape[0], [None, pa.py_buffer(words)], null_count=0)
    bitmap = np.packbits(valid.astype(bool), bitorder="little")
    nulls = int(v.shape[0] - np.count_nonzero(valid))
    return pa.Array.from_buffers(typ, v.shape[0], [pa.py_buffer(bitmap), pa.py_buffer(words)],
                                 null_count=nulls)


def _account_ids(n: int) -> pa.Array:
    """"C0000001"-style ids, zero-padded to max(7, digits of n), built as one byte buffer."""
    width = max(7, len(str(n)))
    num = np.arange(1, n + 1, dtype=np.int64)
    chars = np.empty((n, width + 1), dtype=np.uint8)
    chars[:, 0] = ord("C")
    for k in range(width):
        chars[:, width - k] = ord("0") + (num // 10**k) % 10
    offsets = np.arange(0, (n + 1) * (width + 1), width + 1, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(chars)])


def _securities_table(sec: dict) -> pa.Table:
    board_names = pa.array(u.BOARD_NAMES)
    return pa.Table.from_arrays([
        pa.array(sec["symbol"].tolist(), pa.string()),
        decimal_text(sec["price"], PRICE),
        decimal_text(sec["haircut"], RATIO),
        board_names.take(pa.array(sec["board"].astype(np.int32))),
        pa.array(sec["lot"], pa.int64()),
        pa.array(sec["suspended"], pa.bool_()),
        decimal_text(sec["prev_close"], PRICE),
    ], schema=SCHEMAS["securities"])


def _profiles_table() -> pa.Table:
    names = list(PROFILES)
    lines = np.array([PROFILES[n] for n in names], dtype=np.int64)
    return pa.Table.from_arrays(
        [pa.array(names, pa.string())]
        + [decimal_text(lines[:, k], RATIO) for k in range(u.N_LINES)],
        schema=SCHEMAS["profiles"])


def _accounts_table(acc: dict, ids: pa.Array) -> pa.Table:
    profile_names = pa.array(list(PROFILES))
    return pa.Table.from_arrays([
        ids,
        decimal_text(acc["cash"], MONEY),
        decimal_text(acc["accrued"], MONEY),
        profile_names.take(pa.array(acc["profile"].astype(np.int32))),
    ], schema=SCHEMAS["accounts"])


def _positions_table(acc: dict, ids: pa.Array, symbols: pa.ChunkedArray) -> pa.Table:
    kind = acc["pos_kind"]
    fin = kind == u.FINANCED
    short = kind == u.SHORT
    cost = acc["pos_cost"]
    margin = acc["pos_margin"]
    return pa.Table.from_arrays([
        ids.take(pa.array(acc["pos_acct"])),
        symbols.combine_chunks().take(pa.array(acc["pos_sec"])),
        pa.array(u.KIND_NAMES).take(pa.array(kind.astype(np.int32))),
        pa.array(acc["pos_qty"], pa.int64()),
        decimal_text(np.where(fin, cost, 0), MONEY, fin),
        decimal_text(np.where(fin, margin, 0), RATIO, fin),
        decimal_text(np.where(short, cost, 0), MONEY, short),
        decimal_text(np.where(short, margin, 0), RATIO, short),
    ], schema=SCHEMAS["positions"])


# ---------------------------------------------------------------------------------------------
# JSON helpers


def _units(col) -> list[int | None]:
    """Unscaled integers of a decimal column (None for nulls)."""
    scale = col.type.scale
    out = []
    for d in col.to_pylist():
        out.append(None if d is None else int(d.scaleb(scale)))
    return out


def _fmt(units: int, scale: int) -> str:
    """Exact decimal string of `units / 10**scale`, trailing zeros trimmed to two decimals."""
    sign = "-" if units < 0 else ""
    q, r = divmod(abs(units), 10**scale)
    frac = f"{r:0{scale}d}".rstrip("0")
    frac = frac + "0" * (2 - len(frac)) if len(frac) < 2 else frac
    return f"{sign}{q}.{frac}"
