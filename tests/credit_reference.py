"""Exact (Decimal) reference for the credit controls, written from docs/credit-controls.md
without the monitor's code: concentration per account, credit-line use, and the pre-trade
decision. Also `add_credit_terms`, which puts random credit fields on a bookgen book.
"""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal

import reference as ref

D = Decimal
ZERO = D(0)
GROUPS = ("bank", "tech", "energy", "consumer")
TIER_ORDER = ("FORCED_LIQUIDATION", "MARGIN_CALL", "WARNING", "NORMAL", "WITHDRAWABLE",
              "NO_DEBT")


def add_credit_terms(doc: dict, seed: int) -> dict:
    """Random groups, free floats, eligibility, lines, cap bands and alert thresholds."""
    rng = random.Random(seed * 7919 + 1)
    for s in doc["securities"]:
        if rng.random() < 0.8:
            s["group"] = rng.choice(GROUPS)
        if rng.random() < 0.5:
            s["free_float"] = rng.randint(10_000, 3_000_000)
        if rng.random() < 0.3:
            s["market_financing"] = str(rng.randint(0, 20_000_000))
        if rng.random() < 0.1:
            s["financing_eligible"] = False
        if rng.random() < 0.1:
            s["short_eligible"] = False
    for name in list(doc.get("profiles", {})) + ["default"]:
        prof = doc.setdefault("profiles", {}).setdefault(name, {})
        r = rng.random()
        if r < 0.7:
            lo = rng.choice(("1.60", "1.80", "2.00"))
            prof["concentration_caps"] = [
                {"below": lo, "single": rng.choice(("0.30", "0.25", "0.4")),
                 "group": rng.choice(("0.5", "0.6")), "board": "0.8"},
                {"below": "2.40", "single": "0.5", "group": "0.8"}]
        elif r < 0.8:
            prof["concentration_caps"] = [{"below": "9.99", "single": "0.2"}]
        if rng.random() < 0.6:
            prof["block_new_debt_at"] = rng.choice(("WARNING", "MARGIN_CALL", "none"))
        if rng.random() < 0.5:
            prof["line_alerts"] = ["0.8", "0.95", "1.0"]
    for a in doc["accounts"]:
        fin = sum(ref.dec(p["financed_cost"]) for p in a.get("positions", [])
                  if p["kind"] == "financed")
        sold = sum(ref.dec(p["short_sell_amount"]) for p in a.get("positions", [])
                   if p["kind"] == "short")
        if rng.random() < 0.7:
            a["financing_line"] = str((fin * D(rng.randint(80, 200)) / 100 + 1000)
                                      .quantize(D("0.01")))
        if rng.random() < 0.6:
            a["short_line"] = str((sold * D(rng.randint(80, 200)) / 100 + 1000)
                                  .quantize(D("0.01")))
    return doc


def random_action(rng: random.Random, doc: dict, acct: dict) -> dict:
    kinds = ("financed_buy", "short_sale", "collateral_buy", "collateral_sell",
             "cash_withdrawal", "collateral_transfer_out")
    kind = rng.choice(kinds)
    if kind == "cash_withdrawal":
        return {"type": kind, "amount": str(D(rng.randint(1, 5_000_000)) / 100)}
    held = [p for p in acct.get("positions", []) if p["kind"] == "collateral"]
    if kind in ("collateral_sell", "collateral_transfer_out") and held and rng.random() < 0.8:
        p = rng.choice(held)
        sym, qty = p["symbol"], rng.randint(1, int(p["qty"]) + 100)
    else:
        sym = rng.choice(doc["securities"])["symbol"]
        qty = rng.choice((100, 200, 500, 1000, 5000, 20000))
    act = {"type": kind, "symbol": sym, "qty": qty}
    if rng.random() < 0.3:
        sec = next(s for s in doc["securities"] if s["symbol"] == sym)
        act["price"] = str(ref.dec(sec["price"]) + D(rng.randint(-10, 10)) / 100)
        if ref.dec(act["price"]) <= 0:
            del act["price"]
    if rng.random() < 0.3:
        act["fee"] = str(D(rng.randint(0, 5000)) / 100)
    if rng.random() < 0.3 and kind in ("financed_buy", "short_sale"):
        act["margin_ratio"] = rng.choice(("0.5", "0.8", "1.0", "1.2"))
    return act


class CreditRef:
    def __init__(self, doc: dict):
        self.doc = doc
        lines_only = dict(doc, profiles={
            n: {k: v for k, v in p.items() if k in ref.LINE_NAMES}
            for n, p in (doc.get("profiles") or {}).items()})
        self.book = ref.RefBook(lines_only)
        self.secs = {s["symbol"]: s for s in doc["securities"]}
        self.profiles = doc.get("profiles") or {}

    # ------------------------------------------------------------------ terms
    def prof(self, acct: dict) -> dict:
        return self.profiles.get(acct.get("profile") or "default", {})

    def caps(self, acct: dict, A: Decimal, L: Decimal) -> dict:
        if L == 0:
            return {}
        for band in self.prof(acct).get("concentration_caps") or []:
            if A < ref.dec(band["below"]) * L:
                return {k: ref.dec(band[k]) for k in ("single", "group", "board") if k in band}
        return {}

    def items(self, acct: dict, A: Decimal, L: Decimal, longs: dict) -> dict:
        """(type, name) -> (market value, cap) of every capped item."""
        caps = self.caps(acct, A, L)
        out = {}
        if A <= 0:
            return out
        groups: dict = {}
        boards: dict = {}
        for sym, mv in longs.items():
            if mv <= 0:
                continue
            if "single" in caps:
                out[("security", sym)] = (mv, caps["single"])
            g = self.secs[sym].get("group")
            if g:
                groups[g] = groups.get(g, ZERO) + mv
            bd = ref.board_of(self.secs[sym])
            boards[bd] = boards.get(bd, ZERO) + mv
        if "group" in caps:
            out.update({("group", g): (mv, caps["group"]) for g, mv in groups.items()})
        if "board" in caps:
            out.update({("board", b): (mv, caps["board"]) for b, mv in boards.items()})
        return out

    def over(self, acct: dict) -> set:
        """Items strictly over their cap, at the book's prices."""
        m = self.amounts(acct)
        return {k for k, (mv, cap) in self.items(acct, m["A"], m["L"], m["longs"]).items()
                if mv > cap * m["A"]}

    def amounts(self, acct: dict, price: dict | None = None) -> dict:
        price = price or {s: ref.dec(v["price"]) for s, v in self.secs.items()}
        m = ref.amounts(self.book, acct, price)
        longs: dict = {}
        for p in m["positions"]:
            if not p.is_short:
                longs[p.symbol] = longs.get(p.symbol, ZERO) + p.qty * price[p.symbol]
        m.update(A=m["assets"], L=m["liabilities"], longs=longs, price=price)
        return m

    def line_use(self, acct: dict) -> tuple[Decimal, Decimal]:
        m = self.amounts(acct)
        return m["financed"], sum((p.cost for p in m["positions"] if p.is_short), ZERO)

    def halted(self, sym: str) -> bool:
        s = self.secs[sym]
        ff = int(s.get("free_float") or 0)
        if ff <= 0:
            return False
        bal = ref.dec(s.get("market_financing") or 0)
        for a in self.doc["accounts"]:
            for p in a.get("positions", []):
                if p["symbol"] == sym and p["kind"] == "financed":
                    bal += ref.dec(p["financed_cost"])
        return bal >= D("0.25") * ff * ref.dec(s["price"])

    # ------------------------------------------------------------------ pre-trade
    def decide(self, acct: dict, act: dict) -> list[tuple]:
        """Sorted (code, detail) of every reason the action is refused ([] = allowed)."""
        kind = act["type"]
        m = self.amounts(acct)
        lines = self.book.lines(acct)
        prof = self.prof(acct)
        A, L = m["A"], m["L"]
        out = []
        sym = act.get("symbol")
        sec = self.secs.get(sym) if sym else None
        qty = int(act.get("qty") or 0)
        px = ref.dec(act["price"]) if act.get("price") is not None else (
            ref.dec(sec["price"]) if sec else ZERO)
        fee = ref.dec(act.get("fee") or 0)
        V = qty * px
        now_px = ref.dec(sec["price"]) if sec else ZERO
        held = sum((int(p["qty"]) for p in acct.get("positions", [])
                    if p["symbol"] == sym and p["kind"] == "collateral"), 0)
        if kind in ("financed_buy", "short_sale", "collateral_buy", "collateral_sell") \
                and sec.get("suspended"):
            out.append(("SUSPENDED", sym))
        if kind in ("financed_buy", "short_sale", "collateral_buy", "collateral_sell"):
            rs = ref.Security(sec)
            if act.get("price") is not None and not rs.limit_down <= px <= rs.limit_up:
                out.append(("PRICE_OUTSIDE_BAND", px))
            # whole lots (STAR / Beijing: the minimum, then single shares); a sale may also
            # take the whole odd remainder of what is held
            step = 1 if rs.board in ref.ONE_SHARE_STEPS else 100
            ok = qty >= rs.lot and (qty - rs.lot) % step == 0
            if not ok and kind == "collateral_sell" and 0 < qty <= held:
                ok = qty % step == held % step if step > 1 else qty == held
            if not ok:
                out.append(("LOT_SIZE", qty))
        if kind == "financed_buy" and sec.get("financing_eligible") is False:
            out.append(("NOT_ELIGIBLE", "financing"))
        if kind == "short_sale" and sec.get("short_eligible") is False:
            out.append(("NOT_ELIGIBLE", "short"))
        if kind in ("financed_buy", "collateral_buy") and ref.dec(sec["haircut"]) == 0:
            out.append(("NOT_ELIGIBLE", "collateral"))
        if kind in ("collateral_sell", "collateral_transfer_out") and held < qty:
            out.append(("INSUFFICIENT_POSITION", sym))
        if kind == "collateral_buy" and m["cash"] < V + fee:
            out.append(("INSUFFICIENT_CASH", ref.fen(V + fee)))
        if kind == "cash_withdrawal" and m["cash"] < ref.dec(act["amount"]):
            out.append(("INSUFFICIENT_CASH", ref.fen(ref.dec(act["amount"]))))
        if kind == "cash_withdrawal":  # §3: out of free cash, within AMB (with debt)
            amount = ref.dec(act["amount"])
            free = ref.free_cash(m["cash"], [p.cost for p in m["positions"]
                                             if p.is_short and p.qty > 0])
            if free < amount <= m["cash"]:
                out.append(("SHORT_PROCEEDS", ref.fen(amount)))
            if L > 0 and ref.available_margin_balance(m, m["price"]) < amount:
                out.append(("INSUFFICIENT_MARGIN", ref.fen(amount)))
        margin = None
        if kind in ("financed_buy", "short_sale"):
            tier = ref.tier(A, L, lines)
            block = prof.get("block_new_debt_at")
            if block and block != "none" and TIER_ORDER.index(tier) <= TIER_ORDER.index(block):
                out.append(("NEW_DEBT_BLOCKED", tier))
            want = "financed" if kind == "financed_buy" else "short"
            # a new contract: never an older contract's ratio; the latest minimum
            margin = ref.default_margin_ratio(want, date.max)
            if act.get("margin_ratio") is not None:  # it can only raise the requirement
                margin = max(margin, ref.dec(act["margin_ratio"]))
            amb = ref.available_margin_balance(m, m["price"])
            if amb < V * margin:
                out.append(("INSUFFICIENT_MARGIN", ref.fen(V * margin)))
            if kind == "financed_buy" and self.halted(sym):
                out.append(("FINANCING_HALTED", sym))
            fin, sold = self.line_use(acct)
            key = "financing_line" if kind == "financed_buy" else "short_line"
            if acct.get(key) is not None:
                after = (fin + V + fee) if kind == "financed_buy" else (sold + V)
                if after > ref.dec(acct[key]):
                    out.append(("CREDIT_LINE", "financing" if kind == "financed_buy"
                                else "short"))
        # after
        cash, longs = m["cash"], dict(m["longs"])
        principal, smv = m["financed"], m["short_mv"]
        if kind == "financed_buy":
            longs[sym] = longs.get(sym, ZERO) + qty * now_px
            principal += V + fee
        elif kind == "short_sale":
            smv += qty * now_px
            cash += V - fee
        elif kind == "collateral_buy":
            longs[sym] = longs.get(sym, ZERO) + qty * now_px
            cash -= V + fee
        elif kind == "collateral_sell":
            longs[sym] = longs.get(sym, ZERO) - qty * now_px
            cash += V - fee
        elif kind == "collateral_transfer_out":
            longs[sym] = longs.get(sym, ZERO) - qty * now_px
        else:
            cash -= ref.dec(act["amount"])
        A2 = max(cash, ZERO) + m["other_coll"] + sum(longs.values(), ZERO)
        L2 = principal + m["accrued"] + max(-cash, ZERO) + m["other_debt"] + smv
        if kind in ("cash_withdrawal", "collateral_transfer_out") and L2 > 0 \
                and A2 < lines["withdrawable"] * L2:
            out.append(("BELOW_WITHDRAWAL_LINE", None))
        if kind != "collateral_sell":
            before = self.items(acct, A, L, m["longs"])
            for k, (mv, cap) in self.items(acct, A2, L2, longs).items():
                e2 = mv - cap * A2
                if e2 <= 0:
                    continue
                old = before.get(k)
                if old is None or e2 > old[0] - old[1] * A:
                    out.append(("CONCENTRATION", k))
        return sorted(out, key=repr)
