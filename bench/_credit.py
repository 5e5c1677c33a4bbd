"""A synthetic book with credit terms (docs/credit-controls.md), for the pre-trade and credit
benchmarks: `monitor.book.synthetic` tables plus industry groups, free floats, eligibility lists,
per-account credit lines and a concentration cap table, loaded through `build_book`."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa

from kernels import units as u
from monitor.book.load import build_book
from monitor.book.synthetic import generate, write_book

CAPS = [{"below": "1.80", "single": "0.30", "group": "0.60"},
        {"below": "2.40", "single": "0.50", "group": "0.80"}]
ACTIONS = ("financed_buy", "short_sale", "collateral_buy", "collateral_sell", "cash_withdrawal",
           "collateral_transfer_out")


def credit_tables(accounts: int, securities: int, seed: int = 7) -> dict[str, pa.Table]:
    t = generate(accounts, securities, seed)
    rng = np.random.default_rng([seed, 99])
    sec = t["securities"]
    n_sec = sec.num_rows
    sec = sec.append_column("group", pa.array(
        [f"industry-{i}" for i in rng.integers(0, 30, n_sec)], pa.string()))
    sec = sec.append_column("free_float", pa.array(rng.integers(10**7, 10**9, n_sec)))
    sec = sec.append_column("financing_eligible", pa.array(rng.random(n_sec) > 0.05))
    sec = sec.append_column("short_eligible", pa.array(rng.random(n_sec) > 0.3))
    t["securities"] = sec
    acc = t["accounts"]
    n = acc.num_rows
    lines = rng.integers(100_000, 5_000_000, n) * u.MONEY_SCALE
    acc = acc.append_column("financing_line", pa.array(
        [str(x // u.MONEY_SCALE) for x in lines.tolist()], pa.string()))
    acc = acc.append_column("short_line", pa.array(
        [str(x // u.MONEY_SCALE // 4) for x in lines.tolist()], pa.string()))
    t["accounts"] = acc
    prof = t["profiles"]
    caps = orjson.dumps(CAPS).decode()
    prof = prof.append_column("concentration_caps", pa.array([caps] * prof.num_rows))
    prof = prof.append_column("block_new_debt_at", pa.array(["WARNING"] * prof.num_rows))
    t["profiles"] = prof
    return t


def credit_book(accounts: int, securities: int, seed: int = 7):
    t = credit_tables(accounts, securities, seed)
    return build_book(t, {k: k for k in t}, source=f"credit-{accounts}")


def write_credit_book(out_dir, accounts: int, securities: int, seed: int = 7) -> None:
    write_book(credit_tables(accounts, securities, seed), out_dir)


def random_actions(book, n: int, seed: int = 1) -> list[tuple[str, dict]]:
    """(account_id, action) pairs over the whole book: every action type, held symbols for
    sales, popular and random symbols for buys."""
    rng = np.random.default_rng(seed)
    out = []
    accts = rng.integers(0, book.n_accounts, n)
    for i, a in enumerate(accts.tolist()):
        kind = ACTIONS[i % len(ACTIONS)]
        lo, hi = int(book.pos_ptr[a]), int(book.pos_ptr[a + 1])
        if kind == "cash_withdrawal":
            act = {"type": kind, "amount": str(int(rng.integers(1, 100_000)))}
        else:
            s = int(book.pos_sec[rng.integers(lo, hi)]) if hi > lo and rng.random() < 0.7 \
                else int(rng.integers(0, book.n_securities))
            act = {"type": kind, "symbol": book.symbols[s],
                   "qty": int(rng.choice([100, 500, 1000, 5000]))}
        out.append((book.account_ids[a], act))
    return out
