"""Seeded random books (interfaces.md JSON dicts) that go looking for edge cases.

Small and deterministic: `make_book(seed)` gives the same book for the same seed. Each book mixes
every board (main, ChiNext, STAR, Beijing, ST), suspended securities, prices exactly at
limit-down and limit-up, 0.001 price ticks, odd lots, collateral / financed / short positions,
negative cash, debt-free accounts, cash-only accounts, accounts exactly on a line (A = b·L to the
li, and one li either side), accounts under water (R <= 1), named profiles, per-account line
overrides and the optional other_debt / other_collateral fields.

Also `book_from_vector`, the one-account book of a vectors.json case (tests/spec.py finds them).
"""

from __future__ import annotations

import random
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

import reference as ref

D = Decimal
LI = D("0.001")
CENT = D("0.01")

PROFILES = {
    # lines tighter than the defaults
    "tight": {"withdrawable": "2.80", "normal": "1.60", "warning": "1.40", "margin_call": "1.20",
              "target": "1.60"},
    # looser, with a target below the normal line
    "loose": {"withdrawable": "3.00", "normal": "1.40", "warning": "1.25", "margin_call": "1.10",
              "target": "1.45"},
    # only one line given: the others are the defaults
    "partial": {"warning": "1.35"},
}

BOARD_WEIGHTS = (("main", 40), ("chinext", 15), ("star", 15), ("bse", 10), ("st", 10))
HAIRCUTS = ("0", "0.3", "0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.6525")
FIN_MARGIN = ("1.0", "0.8", "1.00")
SHORT_MARGIN = ("0.5", "0.8", "1.0", "1.2")


def q2(x: Decimal) -> Decimal:
    return x.quantize(CENT, rounding=ROUND_HALF_UP)


def q3(x: Decimal) -> Decimal:
    return x.quantize(LI, rounding=ROUND_HALF_UP)


def text(x: Decimal) -> str:
    """Decimal -> plain decimal string (no exponent)."""
    return format(x.normalize(), "f") if x == x.to_integral_value() else format(x, "f")


def _symbol(board: str, i: int) -> tuple[str, bool]:
    """A symbol for the board, and whether the board must be given explicitly."""
    if board == "main":
        return (f"{600000 + i}.SH" if i % 2 else f"{i + 1:06d}.SZ"), False
    if board == "chinext":
        return f"{300000 + i}.SZ", False
    if board == "star":
        return f"{688000 + i}.SH", False
    if board == "bse":
        return f"{830000 + i}.BJ", False
    return f"{601000 + i}.SH", True  # ST: only the board field says so


def _securities(rng: random.Random, n: int) -> list[dict]:
    boards = [b for b, w in BOARD_WEIGHTS for _ in range(w)]
    out = []
    for i in range(n):
        board = boards[i % len(boards)] if i < 5 else rng.choice(boards)
        if i < 5:  # every board at least once
            board = ("main", "chinext", "star", "bse", "st")[i]
        symbol, must = _symbol(board, i)
        fine_tick = rng.random() < 0.12  # a fund-like 0.001 price tick
        tick = LI if fine_tick else CENT
        if fine_tick:
            prev = q3(D(rng.randint(500, 9000)) * LI)
        else:
            prev = q2(D(rng.randint(100, 20000)) * CENT)
        band = ref.band_of({"symbol": symbol, "board": board}, ref.china_today())
        down = ref.limit_price(prev, band, up=False)
        up = ref.limit_price(prev, band, up=True)
        roll = rng.random()
        if roll < 0.08:
            price = down
        elif roll < 0.16:
            price = up
        elif roll < 0.26:
            price = prev
        else:
            lo, hi = int(down / tick), int(up / tick)
            price = D(rng.randint(lo, hi)) * tick
        haircut = "0" if board == "st" and rng.random() < 0.7 else rng.choice(HAIRCUTS)
        sec = {"symbol": symbol, "price": text(price), "haircut": haircut}
        if rng.random() < 0.9:
            sec["prev_close"] = text(prev)
        else:
            sec["price"] = text(prev)  # no prev_close: it defaults to the price
        if must or rng.random() < 0.6:
            sec["board"] = board
        if rng.random() < 0.3:
            sec["lot"] = ref.DEFAULT_LOT[board]
        if rng.random() < 0.05:  # a JSON number, not a string
            sec["price"] = float(sec["price"])
        if rng.random() < 0.06:
            sec["suspended"] = True
        elif rng.random() < 0.2:
            sec["suspended"] = False
        out.append(sec)
    return out


def _qty(rng: random.Random, board: str) -> int:
    roll = rng.random()
    if board == "star":
        if roll < 0.15:
            return rng.randint(1, 199)  # below one STAR lot: sold whole
        return rng.randint(200, 30000)
    if board == "bse":
        if roll < 0.1:
            return rng.randint(1, 99)
        return rng.randint(100, 30000)
    if roll < 0.25:
        return rng.randint(1, 300) * 100 + rng.randint(1, 99)  # odd-lot remainder
    if roll < 0.3:
        return rng.randint(1, 99)
    return rng.randint(1, 300) * 100


def _positions(rng: random.Random, secs: list[dict], kinds: list[str]) -> list[dict]:
    out = []
    used = set()
    for kind in kinds:
        sec = rng.choice(secs)
        if (sec["symbol"], kind) in used and rng.random() < 0.9:
            continue  # a repeated (symbol, kind) now and then, not often
        used.add((sec["symbol"], kind))
        board = ref.board_of(sec)
        qty = _qty(rng, board)
        price = ref.dec(sec["price"])
        p = {"symbol": sec["symbol"], "kind": kind, "qty": qty}
        if kind == "financed":
            bought = price * D(rng.randint(60, 140)) / 100
            p["financed_cost"] = text(q2(qty * bought))
            p["fin_margin_ratio"] = rng.choice(FIN_MARGIN)
        elif kind == "short":
            sold = price * D(rng.randint(70, 130)) / 100
            if rng.random() < 0.05:
                sold = D(0)
            p["short_sell_amount"] = text(q2(qty * sold))
            p["short_margin_ratio"] = rng.choice(SHORT_MARGIN)
        out.append(p)
    rng.shuffle(out)
    return out


ARCHETYPES = (
    ("no_debt", 8), ("collateral_financed", 30), ("shorts", 12), ("mixed", 15),
    ("negative_cash", 8), ("on_line", 12), ("under_water", 5), ("cash_only", 3),
    ("untradable", 4), ("many", 3),
)


def _account(rng: random.Random, i: int, secs: list[dict], profiles: dict) -> dict:
    kinds_of = [k for k, w in ARCHETYPES for _ in range(w)]
    arch = rng.choice(kinds_of)
    acct: dict = {"account_id": f"A{i:05d}"}
    roll = rng.random()
    if roll < 0.15:
        acct["profile"] = rng.choice(sorted(profiles))
    elif roll < 0.2:
        acct["profile"] = "default"
    if rng.random() < 0.03:
        acct["warning"] = "1.35"  # per-account override, valid under every profile here
    if rng.random() < 0.03:
        acct["target"] = "1.55"
    if arch == "no_debt":
        kinds = ["collateral"] * rng.randint(0, 3)
    elif arch == "collateral_financed":
        kinds = ["collateral"] * rng.randint(0, 2) + ["financed"] * rng.randint(1, 3)
    elif arch == "shorts":
        kinds = ["collateral"] * rng.randint(0, 2) + ["short"] * rng.randint(1, 3)
    elif arch in ("mixed", "negative_cash", "on_line", "under_water"):
        kinds = [rng.choice(("collateral", "financed", "short")) for _ in range(rng.randint(1, 5))]
    elif arch == "untradable":
        kinds = ["financed", "collateral", "short"]
    elif arch == "many":
        kinds = [rng.choice(("collateral", "financed", "short")) for _ in range(rng.randint(6, 12))]
    else:
        kinds = []
    pool = secs
    if arch == "untradable":  # everything suspended or locked at the limit
        pool = [s for s in secs if s.get("suspended")
                or ref.dec(s["price"]) in (ref.Security(s).limit_down, ref.Security(s).limit_up)]
        pool = pool or secs
    positions = _positions(rng, pool, kinds)
    lmv = smv = fin = D(0)
    for p in positions:
        mv = p["qty"] * ref.dec(next(s["price"] for s in secs if s["symbol"] == p["symbol"]))
        if p["kind"] == "short":
            smv += mv
        else:
            lmv += mv
        if p["kind"] == "financed":
            fin += D(p["financed_cost"])
    debt = fin + smv
    accrued = D(0) if arch == "no_debt" or rng.random() < 0.3 else q2(
        (debt + 1000) * D(rng.randint(0, 200)) / 10000)
    if arch == "cash_only" and rng.random() < 0.5:
        accrued = q2(D(rng.randint(1, 100000)) / 100)
    if rng.random() < 0.05 and arch not in ("no_debt", "on_line"):
        acct["other_debt"] = text(q2(D(rng.randint(1, 5_000_000)) / 100))
    if rng.random() < 0.05 and arch != "on_line":
        acct["other_collateral"] = text(q2(D(rng.randint(1, 5_000_000)) / 100))
    l0 = debt + accrued
    if arch == "no_debt":
        cash = q2(D(rng.randint(0, 10_000_000)) / 100)
    elif arch == "negative_cash":
        cash = -q2(D(rng.randint(1, 200_000_000)) / 100 + l0 * D(rng.randint(0, 30)) / 100)
    elif arch == "under_water":
        r = D(rng.randint(40, 100)) / 100
        cash = q2(max(r * l0 - lmv, D(0)))
        if rng.random() < 0.3:
            cash = -cash - 1
    elif arch == "cash_only":
        cash = q2(D(rng.randint(-10_000_000, 10_000_000)) / 100)
    elif arch == "on_line":
        cash, accrued = _on_line(rng, acct, profiles, lmv, smv + fin, accrued)
    else:
        r = D(rng.choice((rng.randint(80, 400), rng.randint(110, 160), rng.randint(110, 160))))
        cash = q2(max(r / 100 * l0 - lmv, D(0)) + smv * D(rng.randint(0, 10)) / 100)
        if rng.random() < 0.15:
            cash = q3(cash + D(rng.randint(0, 999)) * LI)  # a li-level cash amount
    acct["cash"] = text(cash)
    if accrued or rng.random() < 0.5:
        acct["accrued_interest_fees"] = text(accrued)
    if rng.random() < 0.1:  # JSON numbers, not strings, now and then
        acct["cash"] = int(cash) if cash == cash.to_integral_value() else float(cash)
    acct["positions"] = positions
    return acct


def _lines_of(acct: dict, profiles: dict) -> dict:
    lines = dict(ref.DEFAULT_LINES)
    for k, v in profiles.get(acct.get("profile") or "default", {}).items():
        lines[k] = D(v)
    for k in ref.LINE_NAMES:
        if k in acct:
            lines[k] = D(acct[k])
    return lines


def _on_line(rng, acct, profiles, lmv, debt, accrued):
    """Cash (>= 0) and accrued interest that put the account exactly on one of its lines
    (A = b·L to the li), or one li either side of it."""
    lines = _lines_of(acct, profiles)
    b = lines[rng.choice(ref.LINE_NAMES)]
    # L must be a multiple of 0.1 yuan so that b·L (b in 0.01 steps) is a whole li
    l = debt + accrued
    l = (l / D("0.1")).to_integral_value(rounding=ROUND_CEILING) * D("0.1")
    if b * l < lmv:  # the longs alone are above the line: owe more
        l = (lmv / b / D("0.1")).to_integral_value(rounding=ROUND_CEILING) * D("0.1")
    accrued = l - debt
    cash = b * l - lmv
    nudge = rng.choice((0, 0, 0, 1, -1))
    if cash + nudge * LI >= 0:
        cash += nudge * LI
    return q3(cash), accrued


def make_book(seed: int, n_accounts: int = 300, n_securities: int = 40) -> dict:
    """A random book; the same seed gives the same book."""
    rng = random.Random(seed)
    secs = _securities(rng, n_securities)
    profiles = {k: dict(v) for k, v in PROFILES.items()}
    doc: dict = {"securities": secs}
    if rng.random() < 0.5:
        profiles["default"] = {"withdrawable": "3.00", "normal": "1.50", "warning": "1.30",
                               "margin_call": "1.15", "target": "1.50"}
    doc["profiles"] = profiles
    doc["accounts"] = [_account(rng, i, secs, profiles) for i in range(n_accounts)]
    return doc


# ---------------------------------------------------------------------------- spec vectors


def book_from_vector(v: dict, use_free_cash: bool = True) -> dict:
    """The one-account book of a vector: each position's price, haircut and lot move to its
    security (a previous close equal to the price), `sellable: false` means suspended.
    `use_free_cash=False`: the default profile turns free cash first off (the vectors'
    `example_plan` / `without_cash`; `cash_first` is the default's)."""
    secs = {}
    for p in v["positions"]:
        secs[p["symbol"]] = {"symbol": p["symbol"], "price": p["price"], "haircut": p["haircut"],
                             "lot": p.get("lot", 100), "board": "main",
                             "suspended": not p.get("sellable", True)}
    drop = ("price", "haircut", "sellable", "lot")
    positions = [{k: x for k, x in p.items() if k not in drop} for p in v["positions"]]
    doc = {"securities": list(secs.values()),
           "accounts": [{"account_id": v["id"], "cash": v["cash"],
                         "accrued_interest_fees": v["accrued_interest_fees"],
                         "positions": positions}]}
    if not use_free_cash:
        doc["profiles"] = {"default": {"use_free_cash": False}}
    return doc
