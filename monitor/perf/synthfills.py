"""A seeded synthetic trading day of fills for a book: what the trading-pattern watch is tuned on.

    python -m monitor.perf.synthfills --book books/100k --out fills.jsonl [--planted]

The day (one 4-hour session from 09:30 China time): every security's price walks from its
book price to a close drawn around it (sd 2%), inside its limit band; about 1% of securities
run to limit-up and 1% to limit-down in the first hour and stay there (the limit days that
make a limit rule misfire). A share `active` of the accounts trades: 1-3 orders each, most on a
security it holds (sell part of a collateral or financed position, cover part of a short), the
rest buys (collateral or financed) of popular securities; 15% of the sells of collateral are
bought back later the same day ("T+0" on a holding). Each order is split into 1-5 fills a few
seconds apart. Everything is a valid account event (sells never exceed the holding).

`planted=True` adds three accounts that should fire, one per rule (their event ids start with
`planted-`): a day trader (4 round trips in 20 minutes), a heavy buyer of a thin stock, and an
account buying a limit-up stock in 3 separate orders.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson

from kernels import units as u
from monitor.book.load import load_book
from monitor.book.model import Book
from monitor.core.engine import Engine, EngineConfig
from monitor.core.patterns import PatternConfig
from monitor.core.state import MarginState
from monitor.errors import AccountEventError, BookError

NS = 1_000_000_000
SESSION_S = 4 * 3600
OPEN = datetime(2026, 3, 2, 9, 30, tzinfo=timezone(timedelta(hours=8)))


def _lots(x: float, lot: int) -> int:
    return max(int(x // lot) * lot, lot)


class Day:
    def __init__(self, book: Book, seed: int, open_ns: int):
        self.b = book
        self.rng = np.random.default_rng(seed)
        self.t0 = open_ns
        n = book.n_securities
        self.down, self.up = book.limit_prices()
        sd = 0.02 * book.prev_close
        close = book.price + self.rng.normal(0, 1, n) * sd
        pick = self.rng.random(n)
        close = np.where(pick < 0.01, self.up, np.where(pick > 0.99, self.down, close))
        self.close = np.clip(np.round(close, -1), self.down, self.up).astype(np.int64)
        self.hit = np.where((pick < 0.01) | (pick > 0.99), self.rng.uniform(0.05, 0.25, n), 1.0)
        self.noise = self.rng.uniform(0.002, 0.01, n)

    def price(self, s: int, t_s: float) -> int:
        """Price of s at t_s seconds into the session: a straight path to the close (reached
        at `hit` of the session for limit stocks), with noise, on the 0.01 tick, in the band."""
        f = min(t_s / (self.hit[s] * SESSION_S), 1.0)
        p0, p1 = int(self.b.price[s]), int(self.close[s])
        p = p0 + (p1 - p0) * f
        if f < 1.0:
            p *= 1 + self.rng.normal(0, self.noise[s])
        tick = u.LIMIT_TICK
        p = int(round(p / tick)) * tick
        return int(min(max(p, self.down[s]), self.up[s]))


def generate(book: Book, *, seed: int = 11, active: float = 0.03, planted: bool = False,
             open_ns: int | None = None) -> list[dict]:
    """The day's fills, sorted by `ts` (ns), each with a unique `event_id`."""
    b = book
    t0 = open_ns if open_ns is not None else int(OPEN.timestamp()) * NS
    day = Day(b, seed, t0)
    rng = day.rng
    pop = np.bincount(b.pos_sec, minlength=b.n_securities).astype(np.float64) + 1.0
    pop /= pop.sum()
    fills: list[dict] = []
    held_out = {}  # (account, sec, kind) -> shares already sold today

    def order(aid, s, side, qty, t_s, tag):
        lot = int(b.lot[s])
        parts = int(rng.integers(1, 6)) if qty >= 5 * lot else 1
        sizes = [qty // parts // lot * lot] * parts
        sizes[-1] = qty - sum(sizes[:-1])
        for k, q in enumerate(sizes):
            if q <= 0:
                continue
            ts = t_s + k * float(rng.uniform(0.5, 4.0))
            fills.append({"type": "fill", "account_id": aid, "symbol": b.symbols[s],
                          "side": side, "qty": int(q), "price": _money(day.price(s, ts)),
                          "ts": t0 + int(ts * NS), "event_id": f"{tag}-{len(fills)}"})

    accounts = np.flatnonzero(rng.random(b.n_accounts) < active)
    for a in accounts.tolist():
        aid = b.account_ids[a]
        lo, hi = int(b.pos_ptr[a]), int(b.pos_ptr[a + 1])
        for _ in range(int(rng.integers(1, 4))):
            t_s = float(rng.uniform(0, SESSION_S - 600))
            if hi > lo and rng.random() < 0.6:
                j = int(rng.integers(lo, hi))
                s, kind = int(b.pos_sec[j]), int(b.pos_kind[j])
                key = (a, s, kind)
                left = int(b.pos_qty[j]) - held_out.get(key, 0)
                qty = _lots(left * rng.uniform(0.1, 0.5), int(b.lot[s]))
                if qty > left or b.suspended[s]:
                    continue
                held_out[key] = held_out.get(key, 0) + qty
                side = {u.COLLATERAL: "collateral_sell", u.FINANCED: "sell_to_repay",
                        u.SHORT: "buy_to_cover"}[kind]
                order(aid, s, side, qty, t_s, "o")
                if kind == u.COLLATERAL and rng.random() < 0.15:  # "T+0": buy it back later
                    order(aid, s, "collateral_buy", qty,
                          min(t_s + float(rng.uniform(300, 5400)), SESSION_S - 1), "o")
            else:
                s = int(rng.choice(b.n_securities, p=pop))
                if b.suspended[s]:
                    continue
                value = float(rng.lognormal(np.log(50_000), 0.8)) * u.MONEY_SCALE
                qty = _lots(value / max(int(b.price[s]), 1), int(b.lot[s]))
                side = "financed_buy" if rng.random() < 0.4 else "collateral_buy"
                order(aid, s, side, qty, t_s, "o")
    if planted:
        _planted(b, day, fills, t0, pop)
    fills.sort(key=lambda f: f["ts"])
    return fills


def _planted(b, day, fills, t0, pop):
    """One account per rule that should fire."""
    rich = np.argsort(-(b.cash.astype(np.float64)))[:3].tolist()
    live = ~b.suspended
    # day trader: a popular stock, 4 round trips in 20 minutes
    s = int(np.argmax(np.where(live, pop, -1)))
    aid = b.account_ids[rich[0]]
    for k in range(8):
        ts = 3600 + k * 150
        fills.append({"type": "fill", "account_id": aid, "symbol": b.symbols[s],
                      "side": "collateral_buy" if k % 2 == 0 else "collateral_sell",
                      "qty": 10 * int(b.lot[s]), "price": _money(day.price(s, ts)),
                      "ts": t0 + ts * NS, "event_id": f"planted-trips-{k}"})
    # thin stock: the least held live security, bought for ~3M yuan in 6 orders
    s = int(np.argmin(np.where(live, pop, np.inf)))
    aid = b.account_ids[rich[1]]
    p = day.price(s, 7200)
    qty = _lots(500_000 * u.MONEY_SCALE / p, int(b.lot[s]))
    for k in range(6):
        ts = 7200 + k * 600
        fills.append({"type": "fill", "account_id": aid, "symbol": b.symbols[s],
                      "side": "collateral_buy", "qty": qty, "price": _money(day.price(s, ts)),
                      "ts": t0 + ts * NS, "event_id": f"planted-thin-{k}"})
    # limit-up chaser: 3 orders 10 minutes apart at limit-up in a limit-up stock
    ups = np.flatnonzero((day.close == day.up) & live)
    if ups.size:
        s = int(ups[0])
        aid = b.account_ids[rich[2]]
        for k in range(3):
            ts = int(day.hit[s] * SESSION_S) + 60 + k * 600
            fills.append({"type": "fill", "account_id": aid, "symbol": b.symbols[s],
                          "side": "financed_buy", "qty": 5 * int(b.lot[s]),
                          "price": _money(int(day.up[s])), "ts": t0 + ts * NS,
                          "event_id": f"planted-limit-{k}"})


def watch(book: Book, fills: list[dict], config=None) -> tuple[list[dict], dict]:
    """Apply `fills` to a live engine with the pattern watch; (TRADING_PATTERN events,
    rejected fills per reason)."""

    eng = Engine(MarginState(book, live=True), EngineConfig(run_id="synthday"),
                 patterns=config or PatternConfig())
    eng.start(fills[0]["ts"] if fills else 0)
    hits, rejects = [], {}
    for ev in fills:
        try:
            out = eng.apply_account_event(ev, ev["ts"])
        except AccountEventError as e:
            rejects[e.reason] = rejects.get(e.reason, 0) + 1
            continue
        hits.extend(x for x in out if x["kind"] == "TRADING_PATTERN")
    return hits, rejects


def _money(x: int) -> str:
    q, r = divmod(int(x), u.MONEY_SCALE)
    return f"{q}.{r:03d}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitor.perf.synthfills", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--book", required=True)
    p.add_argument("--out", required=True, help="JSONL file of fill events")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--active", type=float, default=0.03, help="share of accounts that trade")
    p.add_argument("--planted", action="store_true", help="add one account per rule")
    p.add_argument("--watch", action="store_true",
                   help="also run the pattern watch (default rules) and list what fires")
    args = p.parse_args(argv)
    try:
        book = load_book(args.book)
    except BookError as e:
        print(e, file=sys.stderr)
        return 2
    fills = generate(book, seed=args.seed, active=args.active, planted=args.planted)
    with open(args.out, "wb") as f:
        for ev in fills:
            f.write(orjson.dumps(ev, option=orjson.OPT_APPEND_NEWLINE))
    print(f"wrote {len(fills)} fills to {args.out}", file=sys.stderr)
    if args.watch:
        hits, rejects = watch(book, fills)
        accounts = len({f["account_id"] for f in fills})
        print(f"{len(hits)} TRADING_PATTERN events from {len(fills)} fills of {accounts} "
              f"accounts; rejected fills: {rejects or 'none'}")
        for h in hits:
            ev = h["evidence"]
            tag = "planted" if str(ev["fills"][-1]["event_id"]).startswith("planted") else \
                "organic"
            print(f"  {tag:8s} {h['rule']:14s} {h['account_id']} {h['symbol']} "
                  f"{ev['count']} fills, {(ev['last_ns'] - ev['first_ns']) / 1e9:.0f} s "
                  + orjson.dumps({k: v for k, v in ev.items()
                                  if k not in ("fills", "first_ns", "last_ns")}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
