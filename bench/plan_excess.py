"""How much the liquidation planner sells beyond the need, on a synthetic book.

    .venv/bin/python bench/plan_excess.py [--accounts 20000] [--securities 2000] [--seed 11]
                                          [--shock -0.08] [--sell-cost 0] [--buy-cost 0]

Builds the synthetic book (monitor/book/synthetic.py), moves every price by `--shock`
(rounded to the fen; the default -8% stays inside every board's limit, so nothing is locked),
and plans every account whose status is then REQUIRED. It prints one JSON object per planner
setting (`use_free_cash` on, off): REQUIRED accounts, the plans that reach the target, and for
those the value of their orders (sold or bought back) and the value used beyond §4's need
x* = (T·L − A)/(T − 1): used = cash repayment + the orders' value, in yuan (sum, mean, median,
p99, max), and how many plans exceed x* by more than 10,000 yuan. Run on an older checkout
(no `plan_detail`, no cash repayment) it measures that planner the same way.
docs/liquidation.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import units as u  # noqa: E402
from monitor.book import synthetic  # noqa: E402
from monitor.book.load import build_book  # noqa: E402
from monitor.core.state import MarginState, PlanCosts  # noqa: E402


def measure(book, costs: PlanCosts, free_cash: bool | None) -> dict:
    if free_cash is not None and book.call_terms is not None:
        book.call_terms.use_free_cash[:] = free_cash
    elif free_cash is not None and hasattr(book, "calls"):
        book.calls().use_free_cash[:] = free_cash
    st = MarginState(book, costs=costs)
    idx = np.arange(book.n_accounts, dtype=np.int64)
    figs = st.figures_many(idx)
    req = [a for a, f in zip(idx.tolist(), figs, strict=True)
           if f["liquidation_status"] == u.STATUS_NAMES[u.REQUIRED]]
    beyond, reached, cash_plans, cash_total, traded = [], 0, 0, 0.0, 0.0
    t0 = time.perf_counter()
    for a in req:
        if hasattr(st, "plan_detail"):
            d = st.plan_detail(a)
        else:  # an older planner: no cash repayment
            orders, ratio_after, residual = st.plan(a)
            d = {"orders": orders, "ratio_after": ratio_after, "residual": residual,
                 "cash_repayment": 0.0}
        if d["residual"] > 0:
            continue
        reached += 1
        value = sum(o["value"] for o in d["orders"])
        traded += value
        used = d["cash_repayment"] + value
        beyond.append(used - figs[a]["liquidation_value"])
        if d["cash_repayment"] > 0:
            cash_plans += 1
            cash_total += d["cash_repayment"]
    elapsed = time.perf_counter() - t0
    b = np.array(beyond) if beyond else np.zeros(1)
    return {
        "use_free_cash": free_cash,
        "accounts": book.n_accounts, "required": len(req), "reach_target": reached,
        "plans_with_cash_repayment": cash_plans, "cash_repaid": round(cash_total, 2),
        "orders_value": round(traded, 2),
        "beyond_need": {"sum": round(float(b.sum()), 2), "mean": round(float(b.mean()), 2),
                        "median": round(float(np.median(b)), 2),
                        "p99": round(float(np.quantile(b, 0.99)), 2),
                        "max": round(float(b.max()), 2),
                        "over_10000": int((b > 10_000).sum())},
        "plan_s": round(elapsed, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=20_000)
    ap.add_argument("--securities", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--shock", type=float, default=-0.08)
    ap.add_argument("--sell-cost", type=float, default=0.0)
    ap.add_argument("--buy-cost", type=float, default=0.0)
    args = ap.parse_args(argv)
    tables = synthetic.generate(args.accounts, args.securities, seed=args.seed)
    settings = (True, False) if hasattr(MarginState, "plan_detail") else (None,)
    for free_cash in settings:
        book = build_book(tables, {"securities": "securities", "accounts": "accounts",
                                   "positions": "positions", "profiles": "profiles"},
                          source="synthetic")
        # a uniform move of every price, rounded to the fen
        fen = u.MONEY_SCALE // 100
        book.price[:] = np.maximum(np.round(book.price * (1 + args.shock) / fen), 1) * fen
        rec = measure(book, PlanCosts(sell=args.sell_cost, buy=args.buy_cost), free_cash)
        rec.update(seed=args.seed, securities=args.securities, shock=args.shock,
                   sell_cost=args.sell_cost, buy_cost=args.buy_cost)
        print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
