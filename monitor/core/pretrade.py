"""Pre-trade check (docs/credit-controls.md): may this account do this now?

    check(state, account_id, action) -> Decision(allowed, reasons=[...], figures={...})

Decided from the live state at the current prices, exactly (integer money, basis points; the
available margin balance in money·bp), listing every reason that refuses the action, each with
a code and its numbers. Actions: `financed_buy`, `short_sale`, `collateral_buy`,
`collateral_sell`, `cash_withdrawal`, `collateral_transfer_out`.

`PretradeService` answers `POST /api/pretrade` on the monitor (monitor/server.py): JSON in,
JSON out, on the event loop that owns the engine, so a check never sees a half-applied cycle.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import numpy as np
import orjson

from kernels import units as u
from kernels.ratios import tier_of
from monitor.book.contracts import default_margin_ratio_bp
from monitor.book.credit_terms import CreditTerms, terms_of
from monitor.core.calendar import china_day
from monitor.core.credit import halt_flags
from monitor.core.state import MarginState, yuan
from monitor.errors import PretradeError

log = logging.getLogger("monitor.core.pretrade")

ACTIONS = ("financed_buy", "short_sale", "collateral_buy", "collateral_sell", "cash_withdrawal",
           "collateral_transfer_out")
NEW_DEBT = ("financed_buy", "short_sale")
TRADES = ("financed_buy", "short_sale", "collateral_buy", "collateral_sell")
# actions that add exposure or take assets out: checked for concentration after the trade
CONCENTRATING = ("financed_buy", "short_sale", "collateral_buy", "cash_withdrawal",
                 "collateral_transfer_out")
DEFAULT_MARGIN_BP = 10_000  # the latest exchange minimum (monitor/book/contracts.py), for reference
MAX_BODY = 16 * 1024
S = u.RATIO_SCALE


@dataclass(slots=True)
class Decision:
    allowed: bool
    reasons: list[dict] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    # what a hold of this check reserves: (available margin balance in money·bp, cash)
    reserve: tuple[int, int] = (0, 0)

    def as_dict(self) -> dict:
        return {"allowed": self.allowed, "reasons": self.reasons, "figures": self.figures}


@dataclass(slots=True)
class Action:
    type: str
    sec: int = -1
    qty: int = 0
    price: int = 0  # trade price, money units per share (default: the current price)
    amount: int = 0  # cash withdrawal
    fee: int = 0
    margin_bp: int | None = None
    priced: bool = False  # the caller gave the price (checked against the day's band)


# ---------------------------------------------------------------- parsing


def _decimal(v, key, digits, top: Decimal) -> Decimal:
    """A JSON number or decimal string within [-top, top] with at most `digits` decimals;
    PretradeError (400) otherwise, never an arithmetic trap."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise PretradeError("bad_value", f"{key!r} must be a number or a decimal string")
    if isinstance(v, int) and abs(v) > 10**30:
        raise PretradeError("out_of_range", f"{key!r} is out of range (at most {top})")
    if isinstance(v, str) and len(v) > 64:
        raise PretradeError("bad_value", f"{key!r}: not a number (over 64 characters)")
    try:
        d = Decimal(v) if isinstance(v, (int, str)) else Decimal(repr(v))
    except (InvalidOperation, ValueError):
        raise PretradeError("bad_value", f"{key!r}: {v!r} is not a number") from None
    if not d.is_finite():
        raise PretradeError("bad_value", f"{key!r}: a finite number with at most {digits} "
                            "decimal places")
    if abs(d) > top:  # before quantize, which traps on huge values
        raise PretradeError("out_of_range", f"{key!r} is out of range (at most {top})")
    if d != d.quantize(Decimal(1).scaleb(-digits)):
        raise PretradeError("bad_value", f"{key!r}: a finite number with at most {digits} "
                            "decimal places")
    return d


def _money(doc, key, *, positive=True, bound: int = u.MAX_EVENT_MONEY) -> int:
    d = _decimal(doc[key], key, 3, Decimal(bound).scaleb(-3))
    if d < 0 or (positive and d == 0):
        raise PretradeError("bad_value", f"{key!r} must be {'> 0' if positive else '>= 0'}")
    return int(d.scaleb(3))


def parse_action(state: MarginState, action: dict) -> Action:
    """Validate an action object; raises PretradeError saying what is wrong."""
    if not isinstance(action, dict):
        raise PretradeError("malformed", "the action must be a JSON object")
    kind = action.get("type")
    if kind not in ACTIONS:
        raise PretradeError("unknown_action", f"type must be one of {', '.join(ACTIONS)}")
    act = Action(kind)
    if kind == "cash_withdrawal":
        if "amount" not in action:
            raise PretradeError("missing_field", "'amount' is required")
        act.amount = _money(action, "amount")
        return act
    sym = action.get("symbol")
    s = state.book.symbol_index.get(sym) if isinstance(sym, str) else None
    if s is None:
        raise PretradeError("unknown_symbol", f"unknown symbol {sym!r}", 404)
    act.sec = s
    qty = action.get("qty")
    if isinstance(qty, bool) or not isinstance(qty, int) or qty <= 0:
        raise PretradeError("bad_value", "'qty' must be a positive whole number of shares")
    if qty > u.MAX_FILL_QTY:
        raise PretradeError("out_of_range", f"'qty' is out of range (at most {u.MAX_FILL_QTY})")
    act.qty = qty
    act.priced = action.get("price") is not None
    act.price = _money(action, "price", bound=u.MAX_PRICE) if act.priced else int(state.price[s])
    if qty * act.price > u.MAX_EVENT_MONEY:
        raise PretradeError("out_of_range", "qty × price is out of range")
    if action.get("fee") is not None:
        act.fee = _money(action, "fee", positive=False)
    if action.get("margin_ratio") is not None:
        d = _decimal(action["margin_ratio"], "margin_ratio", 4,
                     Decimal(u.MAX_RATE_BP).scaleb(-4))
        if not 0 < d <= 10:
            raise PretradeError("bad_value", "'margin_ratio' must be in (0, 10]")
        act.margin_bp = int(d * S)
    return act


# ---------------------------------------------------------------- the account, as integers


@dataclass(slots=True)
class _Account:
    cash: int
    other_collateral: int
    accrued: int
    other_debt: int
    rows: list  # (sec, kind, qty, cost, margin_bp)

    def amounts(self, price) -> tuple[int, int, dict[int, int]]:
        """(assets, liabilities, long market value per security)."""
        longs: dict[int, int] = {}
        principal = smv = 0
        for s, k, q, c, _ in self.rows:
            mv = q * int(price[s])
            if k == u.SHORT:
                smv += mv
            else:
                longs[s] = longs.get(s, 0) + mv
                if k == u.FINANCED:
                    principal += c
        A = max(self.cash, 0) + self.other_collateral + sum(longs.values())
        L = principal + self.accrued + max(-self.cash, 0) + self.other_debt + smv
        return A, L, longs

    def amb4(self, price, haircut_bp) -> int:
        """Available margin balance (margin-rules.md §3) in money·bp, exact."""
        amb = (self.cash + self.other_collateral - self.accrued - self.other_debt) * S
        for s, k, q, c, m in self.rows:
            mv = q * int(price[s])
            hc = haircut_bp(s)
            if k == u.COLLATERAL:
                amb += mv * hc
            elif k == u.FINANCED:
                g = mv - c
                amb += g * hc if g > 0 else g * S
                amb -= c * m
            else:
                g = c - mv
                amb += g * hc if g > 0 else g * S
                amb -= c * S + mv * m
        return amb

    def free_cash(self) -> int:
        """Cash less the short-sale proceeds of open shorts, at least 0 (margin-rules.md §1)."""
        return max(0, self.cash - sum(c for _, k, q, c, _ in self.rows
                                      if k == u.SHORT and q > 0))

    def row(self, s, kind) -> int:
        for i, r in enumerate(self.rows):
            if r[0] == s and r[1] == kind:
                return i
        return -1

    def held(self, s, kind) -> int:
        return sum(r[2] for r in self.rows if r[0] == s and r[1] == kind)


def _account(state: MarginState, a: int) -> _Account:
    b = state.book
    lo = int(b.pos_ptr[a])
    hi = lo + int(b.pos_used[a]) if b.pos_used is not None else int(b.pos_ptr[a + 1])
    rows = [(s, k, q, c, int(round(m * S))) for s, k, q, c, m in zip(
        b.pos_sec[lo:hi].tolist(), b.pos_kind[lo:hi].tolist(), b.pos_qty[lo:hi].tolist(),
        b.pos_cost[lo:hi].tolist(), b.pos_margin_ratio[lo:hi].tolist(), strict=True) if q > 0]
    return _Account(int(b.cash[a]), int(b.other_collateral[a]), int(b.accrued[a]),
                    int(b.other_debt[a]), rows)


def withdrawable_amount(free: int, amb4: int, A: int, L: int, line_bp: int) -> int:
    """Cash one account may withdraw (margin-rules.md §3), exact: with debt
    `max(0, min(C_free, AMB, A − w·L))` rounded down to the li (AMB in money·bp), all free
    cash without debt. The same rule as kernels.margin.withdrawable_one, on the exact AMB."""
    if L <= 0:
        return max(0, free)
    return max(0, min(free, amb4 // S, (A * S - line_bp * L) // S))


# ---------------------------------------------------------------- concentration


def _caps(t: CreditTerms, p: int, A: int, L: int) -> tuple[int, int, int]:
    if L <= 0:
        return -1, -1, -1
    for k in range(int(t.n_bands[p])):
        if A * S < int(t.band_below[p, k]) * L:
            return int(t.band_single[p, k]), int(t.band_group[p, k]), int(t.band_board[p, k])
    return -1, -1, -1


def concentration(state: MarginState, t: CreditTerms, p: int, A: int, L: int,
                  longs: dict[int, int]) -> dict[tuple[str, str], tuple[int, int]]:
    """Every capped item of an account: (type, name) -> (market value, cap bp)."""
    cs, cg, cb = _caps(t, p, A, L)
    out: dict[tuple[str, str], tuple[int, int]] = {}
    if A <= 0 or (cs < 0 and cg < 0 and cb < 0):
        return out
    b = state.book
    groups: dict[int, int] = {}
    boards: dict[int, int] = {}
    for s, mv in longs.items():
        if mv <= 0:
            continue
        if cs >= 0:
            out[("security", b.symbols[s])] = (mv, cs)
        g = int(t.group_of[s])
        if g >= 0:
            groups[g] = groups.get(g, 0) + mv
        bd = int(b.board[s])
        boards[bd] = boards.get(bd, 0) + mv
    if cg >= 0:
        for g, mv in groups.items():
            out[("group", t.group_names[g])] = (mv, cg)
    if cb >= 0:
        for bd, mv in boards.items():
            out[("board", u.BOARD_NAMES[bd])] = (mv, cb)
    return out


# ---------------------------------------------------------------- the check


def lot_problem(state: MarginState, s: int, kind: str, qty: int, held: int) -> dict | None:
    """The exchange's order-size rule for `qty` shares of security `s`, or None when it holds.

    Buys and short sales: at least the lot (100; STAR 200), then in steps (100; STAR and
    Beijing 1 share). Sales of held shares: the same, or the whole odd remainder at once (an odd
    lot is sold in one order; STAR below 200 shares: all of them)."""
    b = state.book
    lot = int(b.lot[s])
    step = int(state.step[s])
    if qty >= lot and (qty - lot) % step == 0:
        return None
    if kind == "collateral_sell" and 0 < qty <= held:
        if step > 1 and qty % step == held % step:
            return None  # round lots plus the whole odd remainder
        if step == 1 and qty == held:
            return None  # all of a holding below the minimum
    return {"code": "LOT_SIZE", "symbol": b.symbols[s], "qty": qty, "lot": lot, "step": step,
            **({"held": held} if kind == "collateral_sell" else {})}


def band_of(state: MarginState, s: int) -> tuple[int, int] | None:
    """The day's limit-down and limit-up of security `s` (money units), from the live state's
    bands (kernels/bands.py, the trading date of the monitor's clock); None without a limit."""
    if not bool(state.has_limit[s]):
        return None
    return int(state.limit_down[s]), int(state.limit_up[s])


def check(state: MarginState, account_id: str, action: dict | Action,
          controls=None, holds: tuple[int, int] = (0, 0), day: int | None = None) -> Decision:
    """Allowed or refused, with every reason. `controls` (monitor/credit.py CreditControls)
    supplies the live financing-halt state; without it the halt is judged from the book alone
    (halted at or above the halt share, no memory of an earlier halt). `holds`: (available
    margin balance in money·bp, cash) that earlier passed checks reserved for this account.
    `day` (date ordinal, China time): the day a new contract would open, for its margin ratio;
    None: the latest exchange minimum."""
    b = state.book
    a = b.account_index.get(account_id) if isinstance(account_id, str) else None
    if a is None:
        raise PretradeError("unknown_account", f"unknown account {account_id!r}", 404)
    act = action if isinstance(action, Action) else parse_action(state, action)
    t = terms_of(b)
    acct = _account(state, a)
    held_amb4, held_cash = holds
    acct.cash -= held_cash  # reserved by an earlier check, not yet filled
    price = state.price
    p = int(b.profile_of[a])
    lines = b.profile_lines[p]
    A, L, longs = acct.amounts(price)
    reasons: list[dict] = []
    reserve = (0, 0)
    s, kind = act.sec, act.type
    sym = b.symbols[s] if s >= 0 else None
    V = act.qty * act.price
    figures = {"ratio": _ratio(A, L), "tier": u.TIER_NAMES[int(tier_of(A, L, lines, 0))]}

    def hc_bp(x):
        return int(round(float(b.haircut[x]) * S))

    # --- eligibility, suspension, what the account holds
    if kind in TRADES and bool(b.suspended[s]):
        reasons.append({"code": "SUSPENDED", "symbol": sym})
    if kind in TRADES and act.priced:
        band = band_of(state, s)
        down, up = band if band is not None else (0, 0)
        if band is not None and not down <= act.price <= up:
            reasons.append({"code": "PRICE_OUTSIDE_BAND", "symbol": sym,
                            "price": yuan(act.price), "limit_down": yuan(down),
                            "limit_up": yuan(up)})
    if kind in TRADES:
        lp = lot_problem(state, s, kind, act.qty, acct.held(s, u.COLLATERAL))
        if lp is not None:
            reasons.append(lp)
    if kind == "financed_buy" and not t.financing_eligible[s]:
        reasons.append({"code": "NOT_ELIGIBLE", "list": "financing", "symbol": sym})
    if kind == "short_sale" and not t.short_eligible[s]:
        reasons.append({"code": "NOT_ELIGIBLE", "list": "short", "symbol": sym})
    if kind in ("financed_buy", "collateral_buy") and hc_bp(s) == 0:
        reasons.append({"code": "NOT_ELIGIBLE", "list": "collateral", "symbol": sym,
                        "haircut": 0.0})
    if kind in ("collateral_sell", "collateral_transfer_out"):
        held = acct.held(s, u.COLLATERAL)
        if held < act.qty:
            reasons.append({"code": "INSUFFICIENT_POSITION", "symbol": sym, "held": held,
                            "qty": act.qty})
    if kind == "collateral_buy" and acct.cash < V + act.fee:
        reasons.append({"code": "INSUFFICIENT_CASH", "cash": yuan(acct.cash),
                        "required": yuan(V + act.fee)})
    if kind == "cash_withdrawal" and acct.cash < act.amount:
        reasons.append({"code": "INSUFFICIENT_CASH", "cash": yuan(acct.cash),
                        "required": yuan(act.amount)})
    if kind in ("cash_withdrawal", "collateral_transfer_out"):
        free = acct.free_cash()
        amb4 = acct.amb4(price, hc_bp)
        wd = withdrawable_amount(free, amb4, A, L, int(lines[u.LINE_WITHDRAWABLE]))
        figures.update({"free_cash": yuan(free), "withdrawable": yuan(wd)})
        if kind == "cash_withdrawal":
            if free < act.amount <= acct.cash:  # short-sale proceeds are never withdrawn
                reasons.append({"code": "SHORT_PROCEEDS", "free_cash": yuan(free),
                                "required": yuan(act.amount)})
            if L > 0 and amb4 < act.amount * S:  # never beyond the available margin balance
                figures["available_margin_balance"] = yuan(amb4 / S)
                reasons.append({"code": "INSUFFICIENT_MARGIN",
                                "available_margin_balance": yuan(amb4 / S),
                                "required": yuan(act.amount)})

    # --- new debt: tier, halt, margin, line
    if kind in NEW_DEBT:
        tier = int(tier_of(A, L, lines, 0))
        block = int(t.block_new_debt_at[p])
        if block >= 0 and tier <= block:
            reasons.append({"code": "NEW_DEBT_BLOCKED", "tier": u.TIER_NAMES[tier],
                            "blocked_at": u.TIER_NAMES[block], "ratio": _ratio(A, L)})
        k_new = u.FINANCED if kind == "financed_buy" else u.SHORT
        # the new contract's own ratio (monitor/book/contracts.py): the profile's, else the
        # exchange minimum of the day, never an older contract's; the caller may ask for
        # more margin, never for less
        ct = b.contract_terms
        m = int((ct.fin_bp if k_new == u.FINANCED else ct.short_bp)[p]) if ct is not None \
            else -1
        if m < 0:
            m = default_margin_ratio_bp(k_new, day or 0)
        if act.margin_bp is not None:
            m = max(m, act.margin_bp)
        amb4 = acct.amb4(price, hc_bp) - held_amb4
        need4 = V * m
        figures.update({"available_margin_balance": yuan(amb4 / S),
                        "margin_required": yuan(need4 / S), "margin_ratio": m / S})
        if held_amb4:
            figures["reserved_margin"] = yuan(held_amb4 / S)
        reserve = (need4, 0)
        if amb4 < need4:
            reasons.append({"code": "INSUFFICIENT_MARGIN",
                            "available_margin_balance": figures["available_margin_balance"],
                            "required": figures["margin_required"], "margin_ratio": m / S})
        if kind == "financed_buy":
            halted = _halted(state, t, s, controls)
            if halted is not None:
                reasons.append({"code": "FINANCING_HALTED", "symbol": sym, **halted})
        w = 0 if kind == "financed_buy" else 1
        limit = int((t.financing_line if w == 0 else t.short_line)[a])
        used = sum(r[3] for r in acct.rows if r[1] == k_new)
        after = used + V + (act.fee if w == 0 else 0)
        if limit >= 0:
            figures["line"] = {"line": ("financing", "short")[w], "limit": yuan(limit),
                               "used": yuan(used), "after": yuan(after)}
            if after > limit:
                reasons.append({"code": "CREDIT_LINE", "line": ("financing", "short")[w],
                                "limit": yuan(limit), "used": yuan(used),
                                "after": yuan(after)})

    # --- the account after the action
    # (rows only add up: a sale is a row of negative shares)
    after_acct = _Account(acct.cash, acct.other_collateral, acct.accrued, acct.other_debt,
                          list(acct.rows))
    add = after_acct.rows.append
    if kind == "financed_buy":
        add((s, u.FINANCED, act.qty, V + act.fee, m))
    elif kind == "short_sale":
        add((s, u.SHORT, act.qty, V, m))
        after_acct.cash += V - act.fee
    elif kind == "collateral_buy":
        add((s, u.COLLATERAL, act.qty, 0, 0))
        after_acct.cash -= V + act.fee
    elif kind == "collateral_sell":
        add((s, u.COLLATERAL, -act.qty, 0, 0))
        after_acct.cash += V - act.fee
    elif kind == "collateral_transfer_out":
        add((s, u.COLLATERAL, -act.qty, 0, 0))
    else:
        after_acct.cash -= act.amount
    A2, L2, longs2 = after_acct.amounts(price)
    figures["ratio_after"] = _ratio(A2, L2)
    figures["value"] = yuan(V if s >= 0 else act.amount)

    if kind in ("cash_withdrawal", "collateral_transfer_out"):
        wl = int(lines[u.LINE_WITHDRAWABLE])
        if L2 > 0 and A2 * S < wl * L2:
            reasons.append({"code": "BELOW_WITHDRAWAL_LINE", "ratio_after": _ratio(A2, L2),
                            "line": wl / S,
                            "withdrawable": figures["withdrawable"]})

    if kind in CONCENTRATING:
        before = concentration(state, t, p, A, L, longs)
        for key, (mv, cap) in sorted(concentration(state, t, p, A2, L2, longs2).items()):
            e2 = mv * S - cap * A2
            if e2 <= 0:
                continue
            old = before.get(key)
            e1 = None if old is None else old[0] * S - old[1] * A
            if e1 is None or e2 > e1:
                reasons.append({"code": "CONCENTRATION", "item_type": key[0], "name": key[1],
                                "share_after": round(mv / A2, 6), "cap": cap / S,
                                "share_before": (round(old[0] / A, 6) if old and A > 0
                                                 else None),
                                "excess_after": yuan(e2 // S)})
    if kind == "collateral_buy":
        reserve = (0, V + act.fee)
    elif kind == "cash_withdrawal":
        reserve = (0, act.amount)
    return Decision(not reasons, reasons, figures, reserve)


def _ratio(A: int, L: int) -> float | None:
    return round(A / L, 6) if L > 0 else None


def _halted(state, t: CreditTerms, s: int, controls) -> dict | None:
    if t.free_float[s] <= 0:
        return None
    if controls is not None:
        bal = controls.financing_balance(s)
        halted = bool(controls.halted[s])
    else:
        b = state.book
        fin = (b.pos_sec == s) & (b.pos_kind == u.FINANCED)
        bal = int(b.pos_cost[fin].sum()) + int(t.market_financing[s])
        halted = bool(halt_flags(np.array([bal]), t.free_float[s:s + 1], state.price[s:s + 1],
                                 np.zeros(1, dtype=bool), t.halt_bp, t.resume_bp)[0])
    if not halted:
        return None
    ffmv = int(t.free_float[s]) * int(state.price[s])
    return {"financing_balance": yuan(bal), "free_float_value": yuan(ffmv),
            "share": round(bal / ffmv, 6), "halt_at": t.halt_bp / S,
            "resume_below": t.resume_bp / S}


# ---------------------------------------------------------------- HTTP


@dataclass(slots=True)
class Hold:
    """What a passed check with ``"reserve": true`` set aside until its fill or its expiry."""

    hold_id: str
    account_id: str
    amb4: int  # available margin balance, money·bp
    cash: int
    expires: float  # monotonic seconds


class Holds:
    """Reservations by account. A later check of the account sees them; a fill (an account event
    naming the ``hold_id``) or the time-out releases one."""

    def __init__(self, ttl_s: float = 30.0, clock=time.monotonic, max_holds: int = 100_000):
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_holds = max_holds
        self._by_id: dict[str, Hold] = {}
        self._by_account: dict[str, list[Hold]] = {}
        self._seq = 0
        self.placed = self.released = self.expired = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def of(self, account_id: str) -> tuple[int, int]:
        """(margin money·bp, cash) reserved for the account now (expired holds dropped)."""
        hs = self._by_account.get(account_id)
        if not hs:
            return 0, 0
        now = self.clock()
        live = [h for h in hs if h.expires > now]
        for h in hs:
            if h.expires <= now:
                self._by_id.pop(h.hold_id, None)
                self.expired += 1
        if live:
            self._by_account[account_id] = live
        else:
            del self._by_account[account_id]
        return sum(h.amb4 for h in live), sum(h.cash for h in live)

    def place(self, account_id: str, amb4: int, cash: int) -> Hold | None:
        """A new hold, or None when the table is full (the check is answered without one)."""
        if len(self._by_id) >= self.max_holds:
            self._sweep()
            if len(self._by_id) >= self.max_holds:
                return None
        self._seq += 1
        h = Hold(f"H{self._seq}-{uuid.uuid4().hex[:8]}", account_id, amb4, cash,
                 self.clock() + self.ttl_s)
        self._by_id[h.hold_id] = h
        self._by_account.setdefault(account_id, []).append(h)
        self.placed += 1
        return h

    def release(self, hold_id: object) -> bool:
        h = self._by_id.pop(hold_id, None) if isinstance(hold_id, str) else None
        if h is None:
            return False
        hs = self._by_account.get(h.account_id, [])
        hs[:] = [x for x in hs if x.hold_id != hold_id]
        if not hs:
            self._by_account.pop(h.account_id, None)
        self.released += 1
        return True

    def _sweep(self) -> None:
        for a in list(self._by_account):
            self.of(a)

    def stats(self) -> dict:
        return {"open": len(self._by_id), "placed": self.placed, "released": self.released,
                "expired": self.expired, "ttl_s": self.ttl_s}


class PretradeService:
    """`POST /api/pretrade` on the monitor: the engine's live state, its credit controls, and
    the holds of earlier checks."""

    def __init__(self, engine, holds: Holds | None = None):
        self.engine = engine
        self.holds = holds if holds is not None else Holds()
        self.checks = 0
        self.rejects: Counter = Counter()  # bad requests by code
        self._last_log = 0.0

    def http(self, path: str, body: bytes) -> tuple[int, bytes]:
        if path != "/api/pretrade":
            return 404, orjson.dumps({"error": f"no POST endpoint {path!r}",
                                      "endpoints": ["/api/pretrade"]})
        t0 = time.perf_counter()
        try:
            if len(body) > MAX_BODY:
                raise PretradeError("too_large", f"body over {MAX_BODY} bytes", 413)
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise PretradeError("malformed", "body is not valid JSON") from None
            if not isinstance(doc, dict):
                raise PretradeError("malformed", "body must be a JSON object")
            action = doc.get("action", doc)
            reserve = doc.get("reserve", False)
            if not isinstance(reserve, bool):
                raise PretradeError("bad_value", "'reserve' must be true or false")
            aid = doc.get("account_id")
            held = self.holds.of(aid) if isinstance(aid, str) else (0, 0)
            decision = check(self.engine.state, aid, action, self.engine.credit, held,
                             day=china_day(self.engine.now(time.time_ns())))
        except PretradeError as e:
            self.rejects[e.code] += 1
            now = time.monotonic()
            if now - self._last_log > 10:
                self._last_log = now
                log.warning("pre-trade request rejected (%s; %d so far): %s", e.code,
                            sum(self.rejects.values()), e)
            return e.status, orjson.dumps({"error": str(e), "code": e.code})
        self.checks += 1
        out = decision.as_dict()
        out["account_id"] = doc.get("account_id")
        out["action"] = action.get("type")
        if reserve and decision.allowed and decision.reserve != (0, 0):
            h = self.holds.place(aid, *decision.reserve)
            out["hold"] = ({"hold_id": h.hold_id, "expires_in_s": self.holds.ttl_s}
                           if h is not None else None)
        out["ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return 200, orjson.dumps(out)
