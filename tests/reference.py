"""A slow, obviously-correct reference for margin-rules.md §1-§5, in exact decimal arithmetic.

One account at a time, straight from the interfaces.md book dict (securities by symbol, profiles,
the account with its positions). Plain loops and `Decimal`, no numpy and nothing shared with the
kernels, so the kernels can be checked against it.

Conventions (each one is the spec's, or says where it is a reading of it):

- §1  A = max(C, 0) + other_collateral + Σ long q·p;  L = F + Σ short s·p + I + max(−C, 0)
      + other_debt. `other_collateral` / `other_debt` are optional account fields (default 0):
      the spec's "other accepted collateral ... as a cash-like term" and "other debt".
- §2  tier: the best tier whose line A/L is at or above (R < b strictly breaches b);
      NO_DEBT when L = 0. Lines come from the account's profile (default lines when none),
      overridden by the same-named fields on the account.
- §3  AMB exactly as the formula; other_collateral counts like cash and other_debt like I
      (the spec leaves both out of the formula; this is the reading the kernels take).
      Free cash C_free = max(0, C − Σ short_sell_amount of open shorts) (§1); withdrawable =
      max(0, min(C_free, AMB, A − w·L)) with debt; all free cash when L = 0.
- §4  status / x* = (T·L − A)/(T − 1) / shortfall L − A / cure T·L − A and L − A/T.
      The plan simulator implements the default policy of kernels/liquidation.py on §1's cash,
      not on §4's "A and L move by the same x": a sale adds its proceeds (less the fee) to cash,
      and what of them is positive cash repays I, then F; a cover is paid from cash, which may
      go negative (then it is debt). Optional sell / buy cost rates (fees rounded up to the li).
      Free cash first (profile `use_free_cash`, default on): before any order free cash
      max(0, C − Σ short_sell_amount) repays I, then F, as far as needed: min(C_free, x*, I + F)
      with x* rounded up to the li (underwater: min(C_free, I + F)). Least liquidation: strict
      walks (covers paid from the cash there is, unless a rising short), then funded ones; the
      order that reaches the target switches to the holding that reaches it with least value.
- §5  the band by trading date (board, risk warning, listing age in XSHG trading days, fund,
      explicit `limit_pct`; `band_of`); limit price = prev_close·(1 ± band) rounded half-up to
      0.01 (funds 0.001); none without a limit (never locked). Stress moves every long to
      limit-down and every short to limit-up, one without a limit by NO_LIMIT_SHOCK;
      distance to line b = 1 − (b·L − base_A)/long_MV,
      None when L = 0, when long_MV = 0, when already below b, or when it is >= 1 (no fall
      can breach). base_A = max(C, 0) + other_collateral.

- §6  trading days, due days, sessions' closes and the margin-call lifecycle per profile: see
      the section at the end (plain day-by-day walks over a set of dates).

Money stays exact; reported numbers are rounded only by the caller (`fen`, `pct`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_HALF_UP, Context, Decimal, localcontext

D = Decimal
CTX = Context(prec=80)  # far beyond any book: quotients are exact to many more digits than used

ZERO = D(0)
ONE = D(1)
LI = D("0.001")  # the project's money unit; fees are rounded up to it
FEN = D("0.01")
TICK = D("0.01")  # limit prices are rounded to this

DEFAULT_LINES = {
    "withdrawable": D("3.00"),
    "normal": D("1.50"),
    "warning": D("1.30"),
    "margin_call": D("1.15"),
    "target": D("1.50"),
}
LINE_NAMES = ("withdrawable", "normal", "warning", "margin_call", "target")
DEFAULT_CALL_TERMS = {"cure_line": None, "call_basis": "intraday", "call_days": 2,
                      "use_free_cash": True}

LIMIT = {"main": D("0.10"), "chinext": D("0.20"), "star": D("0.20"), "bse": D("0.30"),
         "st": D("0.05")}
DEFAULT_LOT = {"main": 100, "chinext": 100, "star": 200, "bse": 100, "st": 100}
# STAR: at least 200 shares, then any whole share; Beijing: at least 100, then 1-share steps;
# the others trade in round lots only.
ONE_SHARE_STEPS = {"star", "bse"}

NOT_REQUIRED = "NOT_REQUIRED"
REQUIRED = "REQUIRED"
UNREACHABLE = "UNREACHABLE_FULL_LIQUIDATION"


def dec(x) -> Decimal:
    """JSON number or decimal string -> Decimal (floats through their shortest repr)."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(x, float):
        return D(repr(x))
    return D(str(x).strip())


def fen(x: Decimal | None) -> Decimal | None:
    """Round money to the fen, half away from zero (how the monitor reports yuan)."""
    return None if x is None else x.quantize(FEN, rounding=ROUND_HALF_UP)


def pct(a: Decimal, l: Decimal) -> Decimal | None:
    """100·A/L rounded half-up to 2 decimals (the vectors' ratio_pct)."""
    if l == 0:
        return None
    with localcontext(CTX):
        return (D(100) * a / l).quantize(FEN, rounding=ROUND_HALF_UP)


def div(a: Decimal, b: Decimal) -> Decimal:
    with localcontext(CTX):
        return a / b


def board_of(sec: dict) -> str:
    """The security's board: given, or derived from the symbol (interfaces.md)."""
    if sec.get("board") is not None:
        return sec["board"]
    code = str(sec["symbol"]).split(".")[0]
    if code.startswith("688"):
        return "star"
    if code.startswith(("300", "301")):
        return "chinext"
    if code.startswith(("8", "4", "92")):
        return "bse"
    return "main"


def limit_price(prev_close: Decimal, board: str | Decimal, up: bool,
                tick: Decimal = TICK) -> Decimal:
    """prev_close·(1 ± band) half up to the tick; `board` a board name (its ordinary band as
    in LIMIT) or the band itself."""
    move = LIMIT[board] if isinstance(board, str) else board
    raw = prev_close * (ONE + move if up else ONE - move)
    return raw.quantize(tick, rounding=ROUND_HALF_UP)


# §5 by trading date, written out from the spec's table (not from kernels/bands.py)
ST_TEN_SINCE = date(2026, 7, 6)  # main-board ST / *ST: ±5% before, ±10% since
NEW_LISTING_SINCE = date(2023, 4, 10)  # main / ChiNext / STAR: no limit for 5 trading days
FUND_TICK = LI
NO_LIMIT_SHOCK = D("0.30")  # the stress's move of a security without a limit (the default)
_DAYS: list = []


def trading_days() -> set:
    """XSHG's trading days (exchange_calendars, no closures), built once."""
    if not _DAYS:
        _DAYS.append(xshg_days()[0])
    return _DAYS[0]


def china_today() -> date:
    return datetime.now(CHINA_TZ).date()


def listing_age(listing: date, day: date, days: set) -> int:
    """The trading day `day` is since `listing` (the listing day is 1; before it: 1)."""
    n, d = 0, listing
    while d <= day:
        n += d in days
        d += timedelta(days=1)
    return max(n, 1)


def band_of(sec: dict, day: date) -> Decimal | None:
    """The daily limit of a book security on trading `day`; None: no limit."""
    if "limit_pct" in sec and sec["limit_pct"] is None:
        return None
    lp = sec.get("limit_pct")
    if lp is not None and str(lp).strip():
        return None if str(lp).strip().lower() == "none" else dec(lp)
    if str(sec.get("type") or "stock").lower() in ("fund", "etf", "lof"):
        return D("0.20") if str(sec["symbol"]).startswith("588") else D("0.10")
    board = board_of(sec)
    warned = board == "st" or bool(sec.get("risk_warning"))
    if board == "st":
        board = "main"
    if sec.get("listing_date"):
        listing = date.fromisoformat(str(sec["listing_date"])[:10])
        if (day - listing).days < 60:  # far older: past every first-days rule
            age = listing_age(listing, day, trading_days())
            if board == "bse" and age <= 1:
                return None
            if board != "bse" and day >= NEW_LISTING_SINCE and age <= 5:
                return None
    if warned and board == "main":
        return D("0.10") if day >= ST_TEN_SINCE else D("0.05")
    return LIMIT[board]


class Security:
    def __init__(self, d: dict, day: date | None = None):
        self.symbol = d["symbol"]
        self.price = dec(d["price"])
        self.prev_close = dec(d["prev_close"]) if d.get("prev_close") is not None else self.price
        self.haircut = dec(d["haircut"])
        self.board = board_of(d)
        self.lot = int(d["lot"]) if d.get("lot") is not None else DEFAULT_LOT[self.board]
        self.step = 1 if self.board in ONE_SHARE_STEPS else self.lot
        self.suspended = bool(d.get("suspended", False))
        self.day = day or china_today()
        self.fund = str(d.get("type") or "stock").lower() in ("fund", "etf", "lof")
        self.tick = FUND_TICK if self.fund else TICK
        self.band = band_of(d, self.day)
        if self.band is None:  # no limit: never locked
            self.limit_down = self.limit_up = None
        else:
            self.limit_down = limit_price(self.prev_close, self.band, False, self.tick)
            self.limit_up = limit_price(self.prev_close, self.band, True, self.tick)

    def stress_prices(self, price: Decimal,
                      shock: Decimal | None = None) -> tuple[Decimal, Decimal]:
        """§5 one-day stress: (long side, short side) - the limit prices, or without a limit
        the price moved by `shock` (default NO_LIMIT_SHOCK) either way (half up to the tick,
        at least a tick)."""
        if self.band is not None:
            return self.limit_down, self.limit_up
        k = NO_LIMIT_SHOCK if shock is None else shock
        down = (price * (ONE - k)).quantize(self.tick, rounding=ROUND_HALF_UP)
        up = (price * (ONE + k)).quantize(self.tick, rounding=ROUND_HALF_UP)
        return max(down, self.tick), up

    def sell_blocked(self, price: Decimal) -> bool:
        """A long cannot be sold: suspended, or locked at (or below) limit-down."""
        return self.suspended or (self.limit_down is not None and price <= self.limit_down)

    def buy_blocked(self, price: Decimal) -> bool:
        """A short cannot be bought back: suspended, or locked at (or above) limit-up."""
        return self.suspended or (self.limit_up is not None and price >= self.limit_up)


class RefBook:
    """The book dict, indexed for the reference: securities by symbol, profiles by name."""

    def __init__(self, doc: dict, day: date | None = None):
        """`day`: the trading date of the price bands (§5; default today, China time)."""
        self.doc = doc
        self.day = day or china_today()
        self.securities = {s["symbol"]: Security(s, self.day) for s in doc["securities"]}
        self.profiles = {"default": dict(DEFAULT_LINES)}
        self.call_terms = {"default": dict(DEFAULT_CALL_TERMS)}  # §6, per profile
        for name, lines in (doc.get("profiles") or {}).items():
            base = dict(DEFAULT_LINES)
            terms = dict(DEFAULT_CALL_TERMS)
            for k, v in lines.items():
                if k in LINE_NAMES:
                    base[k] = dec(v)
                elif k in terms:
                    terms[k] = dec(v) if k == "cure_line" else v
            self.profiles[name] = base
            self.call_terms[name] = terms
        self.accounts = doc["accounts"]

    def calls(self, acct: dict) -> dict:
        """§6 terms of the account's profile: cure line (None: the target), basis, days."""
        terms = dict(self.call_terms[acct.get("profile") or "default"])
        if terms["cure_line"] is None:
            terms["cure_line"] = self.lines(acct)["target"]
        return terms

    def lines(self, acct: dict) -> dict:
        lines = dict(self.profiles[acct.get("profile") or "default"])
        for k in LINE_NAMES:
            if acct.get(k) is not None:
                lines[k] = dec(acct[k])
        return lines

    def account(self, account_id: str) -> dict:
        for a in self.accounts:
            if a["account_id"] == account_id:
                return a
        raise KeyError(account_id)

    def evaluate(self, acct: dict, prices: dict | None = None, **plan_kw) -> dict:
        return evaluate_account(self, acct, prices, **plan_kw)


# ---------------------------------------------------------------------------- one account


class Position:
    def __init__(self, d: dict, sec: Security):
        self.sec = sec
        self.symbol = sec.symbol
        self.kind = d["kind"]
        self.qty = int(d["qty"])
        self.cost = ZERO  # financed_cost for financed, short_sell_amount for shorts
        self.margin_ratio = ZERO
        if self.kind == "financed":
            self.cost = dec(d["financed_cost"])
            self.margin_ratio = contract_margin_ratio(d, "fin_margin_ratio")
        elif self.kind == "short":
            self.cost = dec(d["short_sell_amount"])
            self.margin_ratio = contract_margin_ratio(d, "short_margin_ratio")

    @property
    def is_short(self) -> bool:
        return self.kind == "short"


def amounts(book: RefBook, acct: dict, price: dict) -> dict:
    """§1 for one account at `price` (symbol -> Decimal)."""
    cash = dec(acct["cash"])
    accrued = dec(acct.get("accrued_interest_fees") or 0)
    other_debt = dec(acct.get("other_debt") or 0)
    other_coll = dec(acct.get("other_collateral") or 0)
    positions = [Position(p, book.securities[p["symbol"]]) for p in acct.get("positions") or []]
    long_mv = ZERO
    short_mv = ZERO
    financed = ZERO
    proceeds = ZERO  # Σ short_sell_amount of the open shorts (§1: not free cash)
    for p in positions:
        mv = p.qty * price[p.symbol]
        if p.is_short:
            short_mv += mv
            proceeds += p.cost
        else:
            long_mv += mv
        if p.kind == "financed":
            financed += p.cost
    base_a = max(cash, ZERO) + other_coll
    base_l = financed + accrued + max(-cash, ZERO) + other_debt
    return {
        "cash": cash, "accrued": accrued, "other_debt": other_debt, "other_coll": other_coll,
        "positions": positions, "long_mv": long_mv, "short_mv": short_mv, "financed": financed,
        "short_proceeds": proceeds, "base_assets": base_a, "base_liabilities": base_l,
        "assets": base_a + long_mv, "liabilities": base_l + short_mv,
    }


def tier(a: Decimal, l: Decimal, lines: dict) -> str:
    """§2: the best tier whose line the account is at or above (R < b breaches b)."""
    if l == 0:
        return "NO_DEBT"
    if a >= lines["withdrawable"] * l:
        return "WITHDRAWABLE"
    if a >= lines["normal"] * l:
        return "NORMAL"
    if a >= lines["warning"] * l:
        return "WARNING"
    if a >= lines["margin_call"] * l:
        return "MARGIN_CALL"
    return "FORCED_LIQUIDATION"


def available_margin_balance(m: dict, price: dict) -> Decimal:
    """§3, term by term."""
    amb = m["cash"] + m["other_coll"] - m["accrued"] - m["other_debt"]
    for p in m["positions"]:
        mv = p.qty * price[p.symbol]
        h = p.sec.haircut
        if p.kind == "collateral":
            amb += mv * h
        elif p.kind == "financed":
            gain = mv - p.cost
            amb += gain * h if gain > 0 else gain
            amb -= p.cost * p.margin_ratio
        else:
            gain = p.cost - mv
            amb += gain * h if gain > 0 else gain
            amb -= p.cost
            amb -= mv * p.margin_ratio
    return amb


def free_cash(cash: Decimal, short_sell_amounts) -> Decimal:
    """§1: C_free = max(0, C − Σ short_sell_amount of open shorts)."""
    return max(ZERO, cash - sum(short_sell_amounts, ZERO))


def withdrawable(free: Decimal, amb: Decimal, a: Decimal, l: Decimal, line: Decimal) -> Decimal:
    """§3: max(0, min(C_free, AMB, A − w·L)) with debt; all free cash when L = 0."""
    if l == 0:
        return max(ZERO, free)
    return max(ZERO, min(free, amb, a - line * l))


def liquidation_status(a: Decimal, l: Decimal, target: Decimal) -> str:
    if l == 0 or a >= target * l:
        return NOT_REQUIRED
    if a <= l:
        return UNREACHABLE
    return REQUIRED


def liquidation_value(a: Decimal, l: Decimal, target: Decimal) -> Decimal | None:
    status = liquidation_status(a, l, target)
    if status == NOT_REQUIRED:
        return ZERO
    if status == UNREACHABLE:
        return None
    return div(target * l - a, target - ONE)


def distance(base_a: Decimal, a: Decimal, l: Decimal, long_mv: Decimal,
             line: Decimal) -> Decimal | None:
    """§5: the uniform fall of long prices (shorts unchanged) that brings R to `line`."""
    if l == 0 or long_mv == 0:
        return None
    if a < line * l:
        return None  # already breached
    d = ONE - div(line * l - base_a, long_mv)
    if d >= 1:
        return None  # even a fall to zero leaves R at or above the line
    return d


def evaluate_account(book: RefBook, acct: dict, prices: dict | None = None, *,
                     sell_cost=0, buy_cost=0, group_order=(0, 1, 2, 3),
                     use_free_cash: bool | None = None) -> dict:
    """Every figure of margin-rules.md §1-§5 for one account, exact.

    `prices` overrides security prices (symbol -> price); the rest of the book is as given.
    `use_free_cash` overrides the profile's setting (§4 free cash first)."""
    price = {s: sec.price for s, sec in book.securities.items()}
    for s, p in (prices or {}).items():
        price[s] = dec(p)
    lines = book.lines(acct)
    target = lines["target"]
    m = amounts(book, acct, price)
    a, l = m["assets"], m["liabilities"]
    status = liquidation_status(a, l, target)
    if status == NOT_REQUIRED:
        deposit = repay = ZERO
    else:
        deposit = target * l - a
        repay = l - div(a, target)
    # §5 stress: every long at limit-down, every short at limit-up
    stress_long = stress_short = ZERO
    for p in m["positions"]:
        down, up = p.sec.stress_prices(price[p.symbol])
        if p.is_short:
            stress_short += p.qty * up
        else:
            stress_long += p.qty * down
    sa = m["base_assets"] + stress_long
    sl = m["base_liabilities"] + stress_short
    dist = {
        "warning": distance(m["base_assets"], a, l, m["long_mv"], lines["normal"]),
        "margin_call": distance(m["base_assets"], a, l, m["long_mv"], lines["warning"]),
        "forced_liquidation": distance(m["base_assets"], a, l, m["long_mv"],
                                       lines["margin_call"]),
    }
    use_cash = book.calls(acct)["use_free_cash"]
    if use_free_cash is not None:
        use_cash = use_free_cash
    use_cash = use_cash if isinstance(use_cash, bool) else (
        str(use_cash).strip().lower() in ("true", "1", "yes"))
    orders, a2, l2, repaid = plan(m, price, a, l, target, dec(sell_cost), dec(buy_cost),
                                  group_order, use_cash)
    if l2 > 0 and a2 < target * l2:
        x = liquidation_value(a2, l2, target)
        residual = x if x is not None else l2 - a2
    else:
        residual = ZERO
    return {
        "account_id": acct["account_id"],
        "assets": a,
        "liabilities": l,
        "long_mv": m["long_mv"],
        "short_mv": m["short_mv"],
        "base_assets": m["base_assets"],
        "base_liabilities": m["base_liabilities"],
        "ratio": div(a, l) if l > 0 else None,
        "ratio_pct": pct(a, l),
        "tier": tier(a, l, lines),
        "lines": lines,
        "available_margin_balance": available_margin_balance(m, price),
        "free_cash": free_cash(m["cash"], [p.cost for p in m["positions"]
                                           if p.is_short and p.qty > 0]),
        "withdrawable": withdrawable(
            free_cash(m["cash"], [p.cost for p in m["positions"] if p.is_short and p.qty > 0]),
            available_margin_balance(m, price), a, l, lines["withdrawable"]),
        "liquidation_status": status,
        "liquidation_value": liquidation_value(a, l, target),
        "shortfall": l - a if status == UNREACHABLE else ZERO,
        "cure": {"deposit": deposit, "repay": repay},
        "stress_assets": sa,
        "stress_liabilities": sl,
        "stress_ratio": div(sa, sl) if sl > 0 else None,
        "distance": dist,
        "plan": orders,
        "cash_repayment": repaid,
        "interest_repaid": min(repaid, m["accrued"]),
        "principal_repaid": repaid - min(repaid, m["accrued"]),
        "assets_after": a2,
        "liabilities_after": l2,
        "ratio_after": div(a2, l2) if l2 > 0 else None,
        "residual": residual,
        "tradable_capacity": tradable_capacity(m, price),
    }


# ---------------------------------------------------------------------------- §4 the plan


def tradable_capacity(m: dict, price: dict) -> Decimal:
    """Market value the planner may trade: longs not suspended or at limit-down, shorts not
    suspended or at limit-up."""
    total = ZERO
    for p in m["positions"]:
        px = price[p.symbol]
        blocked = p.sec.buy_blocked(px) if p.is_short else p.sec.sell_blocked(px)
        if not blocked:
            total += p.qty * px
    return total


def sizes_from(q_min: int, avail: int, lot: int, step: int):
    """Admissible order sizes >= q_min for a holding of `avail` shares, ascending.

    At least one lot, then `step` increments; an order that would reach the last full step
    takes the odd-lot remainder with it (the whole holding); a holding of at most one lot is
    sold whole."""
    if avail <= lot:
        yield avail
        return
    top = lot + (avail - lot) // step * step  # largest size on the grid
    q = lot if q_min <= lot else lot + -(-(q_min - lot) // step) * step
    while q < top:
        yield q
        q += step
    yield avail


def order_sizes(avail: int, lot: int, step: int) -> list:
    """Every admissible order size for a holding of `avail` shares."""
    return list(sizes_from(0, avail, lot, step))


def short_rise(p: Position, px: Decimal) -> Decimal:
    """How far a short's price has risen above its average sale price or the previous close,
    whichever is more (> 0: a rising short, covered first by the default policy)."""
    avg = div(p.cost, D(p.qty))
    rise_avg = div(px, avg) - ONE if avg > 0 else ZERO
    return max(rise_avg, div(px, p.sec.prev_close) - ONE)


def policy_order(positions: list, price: dict, group_order=(0, 1, 2, 3)) -> list:
    """The default policy: shorts whose price is rising (above the average sale price or the
    previous close) by rise, largest first; financed longs by market value, largest first;
    collateral by haircut, lowest first, then concentration (share of the account's long
    market value), highest first; then the other shorts by market value, largest first.
    Ties keep the account's position order."""
    long_total = sum((p.qty * price[p.symbol] for p in positions if not p.is_short), ZERO)
    keyed = []
    for i, p in enumerate(positions):
        px = price[p.symbol]
        mv = p.qty * px
        if p.is_short:
            rise = short_rise(p, px)
            if rise > 0:
                key = (group_order[0], -rise, ZERO)
            else:
                key = (group_order[3], -mv, ZERO)
        elif p.kind == "financed":
            key = (group_order[1], -mv, ZERO)
        else:
            conc = div(mv, long_total) if long_total > 0 else ZERO
            key = (group_order[2], p.sec.haircut, -conc)
        keyed.append((key, i, p))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in keyed]


PLAN_PASSES = 4  # walks of the policy order (kernels/liquidation.py MAX_PASSES)


def ceil_li(x: Decimal) -> Decimal:
    return x.quantize(LI, rounding=ROUND_CEILING)


@dataclass(frozen=True)
class Account:
    """§1 amounts of one account while a plan is simulated. Negative cash is debt."""

    cash: Decimal
    accrued: Decimal  # I
    principal: Decimal  # F, financed principal outstanding
    other_debt: Decimal
    other_coll: Decimal
    long_mv: Decimal
    short_mv: Decimal

    def assets(self) -> Decimal:
        return max(self.cash, ZERO) + self.other_coll + self.long_mv

    def liabilities(self) -> Decimal:
        return (self.principal + self.accrued + self.other_debt + self.short_mv
                + max(-self.cash, ZERO))

    def excess(self, target: Decimal) -> Decimal:
        """A − T·L: >= 0 exactly when R >= target."""
        return self.assets() - target * self.liabilities()

    def sell(self, value: Decimal, fee: Decimal) -> Account:
        """Sell `value` of a long: the proceeds land in cash (refilling negative cash first);
        then the proceeds, as far as cash is positive, repay interest, then principal."""
        proceeds = value - fee
        cash = self.cash + proceeds
        repay = min(max(cash, ZERO), proceeds, self.accrued + self.principal)
        to_interest = min(repay, self.accrued)
        return replace(self, cash=cash - repay, accrued=self.accrued - to_interest,
                       principal=self.principal - (repay - to_interest),
                       long_mv=self.long_mv - value)

    def cover(self, value: Decimal, fee: Decimal) -> Account:
        """Buy back `value` of a short, paid from cash (cash may go below zero)."""
        return replace(self, cash=self.cash - value - fee, short_mv=self.short_mv - value)

    def trade(self, is_short: bool, value: Decimal, sell_cost: Decimal,
              buy_cost: Decimal) -> Account:
        if is_short:
            return self.cover(value, ceil_li(value * buy_cost))
        return self.sell(value, ceil_li(value * sell_cost))


def tradable(p: Position, px: Decimal) -> bool:
    return not (p.sec.buy_blocked(px) if p.is_short else p.sec.sell_blocked(px))


def size_order(acct: Account, p: Position, avail: int, px: Decimal, target: Decimal,
               sell_cost: Decimal, buy_cost: Decimal, later_proceeds: Decimal,
               later_covers: Decimal) -> int:
    """Shares of `p` (holding `avail` shares) to trade, 0 for none, when R > 1.

    A fill counts on the later positions of the plan to settle the cash it leaves behind:
    a cover's overdraft as far as the later sales' proceeds can refill it (after the negative
    cash already there), a sale's idle proceeds as far as the later covers can spend them and
    need them to reach the target (after the positive cash already there). Settling moves A
    and L down together, less the
    settling fills' fees. The smallest size whose settled excess reaches 0 is taken; else the
    size where the fill stops helping, if that beats not trading."""
    sizes = order_sizes(avail, p.sec.lot, p.sec.step)
    if p.is_short:
        settle = max(later_proceeds - max(-acct.cash, ZERO), ZERO)
        usable = max(acct.cash, ZERO) + settle  # cash the cover can put to use

        def cash_effect(q):  # what the cover costs
            v = q * px
            return v + ceil_li(v * buy_cost)
    else:
        # the later covers need at most what covering alone takes to reach the target
        x = ceil_li(div(target * acct.liabilities() - acct.assets(), target - ONE))
        need = x + ceil_li(x * buy_cost)
        settle = max(min(later_covers, need) - max(acct.cash, ZERO), ZERO)
        usable = max(-acct.cash, ZERO) + acct.accrued + acct.principal + settle

        def cash_effect(q):  # what the sale brings in
            v = q * px
            return v - ceil_li(v * sell_cost)

    def excess(q: int) -> Decimal:
        after = acct.trade(p.is_short, q * px, sell_cost, buy_cost)
        if p.is_short:
            # later sales refill the new overdraft: they sell it and their fees of longs
            refill = min(max(-after.cash, ZERO) - max(-acct.cash, ZERO), settle)
            sold = refill + ceil_li((refill + ceil_li(refill * sell_cost)) * sell_cost)
            return (after.assets() - sold) - target * (after.liabilities() - refill)
        # later covers spend the new idle cash: they buy back that less their fees of shorts
        spend = min(max(after.cash, ZERO) - max(acct.cash, ZERO), settle)
        covered = spend - ceil_li(spend * buy_cost)
        return (after.assets() - spend) - target * (after.liabilities() - covered)

    # sizes[:n_full]: the sizes whose cash is used in full (the cash effect grows with size)
    n_full = bisect_right(sizes, usable, key=cash_effect)
    # No order worth less than the closed form (§4 with costs) reaches the target: costs
    # rounded up and cash left unused only make it worse. Scan up from there.
    cost = buy_cost if p.is_short else sell_cost
    den = target - ONE - cost if p.is_short else target * (ONE - cost) - ONE
    x = div(target * acct.liabilities() - acct.assets(), den)
    start = bisect_left(sizes, x, key=lambda q: q * px)
    for q in sizes[start:n_full]:
        if excess(q) >= 0:
            return q
    if n_full < len(sizes) and excess(sizes[n_full]) >= 0:
        return sizes[n_full]
    # Out of reach with this position: trade it up to where it stops helping (the last size
    # used in full, or the next one if that leaves more excess), unless that does not help.
    best_q, best = 0, acct.excess(target)
    for q in sizes[max(n_full - 1, 0):n_full + 1]:
        e = excess(q)
        if e > best:
            best_q, best = q, e
    return best_q


def cash_repayment(acct: Account, proceeds: Decimal, target: Decimal, full: bool) -> Decimal:
    """§4 free cash first: min(C_free, x*, I + F), C_free = max(0, C − Σ short_sell_amount),
    x* = (T·L − A)/(T − 1) rounded up to the li (a repayment has no cost). Underwater (`full`)
    x* does not bound it."""
    free = max(acct.cash - proceeds, ZERO)
    cap = acct.accrued + acct.principal
    if not full:
        cap = min(cap, ceil_li(div(target * acct.liabilities() - acct.assets(), target - ONE)))
    return min(free, cap)


def plan(m: dict, price: dict, a: Decimal, l: Decimal, target: Decimal, sell_cost: Decimal,
         buy_cost: Decimal, group_order=(0, 1, 2, 3), use_free_cash: bool = True
         ) -> tuple[list, Decimal, Decimal, Decimal]:
    """Lot-rounded liquidation plan of the default policy: (orders, A after, L after, cash
    repayment).

    Free cash first (`use_free_cash`): `cash_repayment` repays interest, then principal, before
    any order. Every fill is simulated on the account's cash (`Account`). REQUIRED: walk the
    policy order, skip untradable positions, size each one (`size_order`) and stop once
    R' >= target; short of the target, walk again over what is left, at most PLAN_PASSES times
    and only while a walk trades. Strict walks first: a cover is paid from the cash there is,
    only a rising short counts on later sales to refill its overdraft, and a sale counts only
    on later rising covers to spend its proceeds; then, if still short, funded walks (any cover
    may count on later sales). The order that brings R' to the target alone switches to the
    holding whose smallest such order is worth least (the policy's own on a tie). Reached,
    the fills are trimmed from the last back (least liquidation, below)
    UNREACHABLE: liquidate every tradable position whole, until nothing is owed."""
    status = liquidation_status(a, l, target)
    if status == NOT_REQUIRED:
        return [], a, l, ZERO
    acct = Account(cash=m["cash"], accrued=m["accrued"], principal=m["financed"],
                   other_debt=m["other_debt"], other_coll=m["other_coll"],
                   long_mv=m["long_mv"], short_mv=m["short_mv"])
    assert (acct.assets(), acct.liabilities()) == (a, l)
    full = status == UNREACHABLE
    repaid = ZERO
    if use_free_cash:
        repaid = cash_repayment(acct, m["short_proceeds"], target, full)
        to_interest = min(repaid, acct.accrued)
        acct = replace(acct, cash=acct.cash - repaid, accrued=acct.accrued - to_interest,
                       principal=acct.principal - (repaid - to_interest))
    if acct.liabilities() <= 0 or (not full and acct.excess(target) >= 0):
        return [], acct.assets(), acct.liabilities(), repaid
    sell_helps = target * (ONE - sell_cost) - ONE > 0
    cover_helps = target - ONE - buy_cost > 0
    order = policy_order(m["positions"], price, group_order)
    held = [p.qty for p in order]  # shares left, by place in the order
    rising = [p.is_short and short_rise(p, price[p.symbol]) > 0 for p in order]

    def usable(i: int) -> bool:
        r = order[i]
        return tradable(r, price[r.symbol]) and (cover_helps if r.is_short else sell_helps)

    rows: list[dict] = []
    fills: list[list] = []  # [place in the order, shares], in sequence
    start = acct  # after the cash repayment
    for funded in (False, True):
        if funded and (full or acct.liabilities() <= 0 or acct.excess(target) >= 0):
            break
        for _ in range(PLAN_PASSES):
            traded = False
            for k, p in enumerate(order):
                if not full and acct.excess(target) >= 0:
                    break
                if acct.liabilities() <= 0:
                    break
                px = price[p.symbol]
                if held[k] == 0 or not tradable(p, px):
                    continue
                kk = k  # the place in the order that trades (the last order may switch)
                if full:
                    q = held[k]
                else:
                    if not usable(k):
                        continue
                    later_proceeds = ZERO
                    later_covers = ZERO
                    for i in range(k + 1, len(order)):
                        r = order[i]
                        v = held[i] * price[r.symbol]
                        if not usable(i):
                            continue
                        if r.is_short:
                            if funded or rising[i]:
                                later_covers += v + ceil_li(v * buy_cost)
                        else:
                            later_proceeds += v - ceil_li(v * sell_cost)
                    if not (funded or rising[k]):
                        later_proceeds = ZERO  # a cover paid from the cash there is
                    q = size_order(acct, p, held[k], px, target, sell_cost, buy_cost,
                                   later_proceeds, later_covers)
                    if q == 0:
                        continue
                    if acct.trade(p.is_short, q * px, sell_cost, buy_cost).excess(target) >= 0:
                        # the last order: the holding whose smallest order that reaches the
                        # target alone is worth least; the policy's own on a tie
                        best = q * px
                        for k2, p2 in enumerate(order):
                            if k2 == k or held[k2] == 0 or not usable(k2):
                                continue
                            px2 = price[p2.symbol]
                            q2 = size_order(acct, p2, held[k2], px2, target, sell_cost,
                                            buy_cost, ZERO, ZERO)
                            if q2 == 0 or q2 * px2 >= best:
                                continue
                            after = acct.trade(p2.is_short, q2 * px2, sell_cost, buy_cost)
                            if after.excess(target) >= 0:
                                kk, q, best = k2, q2, q2 * px2
                held[kk] -= q
                traded = True
                fills.append([kk, q])
                p = order[kk]
                acct = acct.trade(p.is_short, q * price[p.symbol], sell_cost, buy_cost)
            if full or not traded or acct.liabilities() <= 0 or acct.excess(target) >= 0:
                break
        if full:
            break

    def replay() -> Account:
        a = start
        for k, q in fills:
            if q:
                a = a.trade(order[k].is_short, q * price[order[k].symbol], sell_cost, buy_cost)
        return a

    def reaches() -> bool:
        a = replay()
        return a.liabilities() <= 0 or a.excess(target) >= 0

    if not full and reaches():
        # least liquidation: from the last fill back, cut each to the smallest admissible
        # size (none included) with which the whole sequence still reaches the target; only
        # a position traded by one fill (sizes of the whole holding); a binary search that
        # keeps only sizes that reach
        for i in range(len(fills) - 1, -1, -1):
            k, cur = fills[i]
            if cur == 0 or any(i2 != i and f[0] == k and f[1] for i2, f in enumerate(fills)):
                continue
            p = order[k]
            sizes = order_sizes(p.qty, p.sec.lot, p.sec.step)
            no, yes = -2, sizes.index(cur)
            while yes - no > 1:
                mid = (no + yes) // 2
                fills[i][1] = 0 if mid < 0 else sizes[mid]
                if fills[i][1] <= cur and reaches():
                    yes = mid
                else:
                    no = mid
            fills[i][1] = min(0 if yes < 0 else sizes[yes], cur)
    acct = replay()
    for k, q in fills:
        if not q:
            continue
        p = order[k]
        px = price[p.symbol]
        side = "buy_to_cover" if p.is_short else "sell"
        for r in rows:
            if r["symbol"] == p.symbol and r["side"] == side:
                r["qty"] += q
                r["value"] += q * px
                break
        else:
            rows.append({"symbol": p.symbol, "side": side, "qty": q, "value": q * px})
    return rows, acct.assets(), acct.liabilities(), repaid


# ------------------------------------------------------------------------------ §6 calls
#
# - Trading days: exchange_calendars "XSHG" sessions read directly (a set of dates), less the
#   closures; past its last day, the weekdays through `through` (default the end of the latest
#   year a closure is given for) less the closures. A day past the known ones is unknown: the
#   functions return None, never a weekday guess.
# - Due day of a call issued on day T: the n-th trading day after T, by walking day by day.
# - Times are China time (UTC+8); the close of a trading day is 15:00, judged once time passes
#   15:00 + settle, on the state of the last tick stamped at or before that instant.
# - Reported tier (§2 hysteresis): worse at once, better only once R clears the line by the band.
# - Lifecycle per profile as margin-rules.md §6: `intraday` opens on the reported tier entering
#   MARGIN_CALL from a better one and cures on any tick at R >= cure; at the close of its due
#   day it is cured or expires. `close` opens at a close with R below the warning line, is
#   judged at each later close (cured at R >= cure, else expired at the due day's close).

CHINA_TZ = timezone(timedelta(hours=8))
BAND = D("0.005")  # the default hysteresis band


def xshg_days(closures=(), through: date | None = None) -> tuple[set, date, date]:
    """(trading days, first known day, last known day)."""
    import warnings

    import exchange_calendars as xc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = xc.get_calendar("XSHG", start="2000-01-04")
        days = set(cal.sessions.date)
    first, last = min(days), max(days)
    closed = set(closures)
    beyond = [d for d in closed if d > last]
    end = last
    if through is not None:
        end = max(last, through)
    elif beyond:
        end = date(max(beyond).year, 12, 31)
    d = last + timedelta(days=1)
    while d <= end:
        if d.weekday() < 5:
            days.add(d)
        d += timedelta(days=1)
    return days - closed, first, end


def due_day(issued: date, n: int, days: set, last: date) -> date | None:
    d, left = issued, n
    while left:
        d += timedelta(days=1)
        if d > last:
            return None
        if d in days:
            left -= 1
    return d


TIER_ORDER = ("FORCED_LIQUIDATION", "MARGIN_CALL", "WARNING", "NORMAL", "WITHDRAWABLE",
              "NO_DEBT")


def reported_tier(prev: str | None, a: Decimal, l: Decimal, lines: dict,
                  band: Decimal) -> str:
    raw = tier(a, l, lines)
    if prev is None or TIER_ORDER.index(raw) < TIER_ORDER.index(prev):
        return raw
    banded = raw if raw == "NO_DEBT" else tier(a, l, {k: v + band for k, v in lines.items()})
    return banded if TIER_ORDER.index(banded) > TIER_ORDER.index(prev) else prev


def call_lifecycle(points, lines: dict, *, basis: str, cure: Decimal, n: int, days: set,
                   last: date, end: datetime, band: Decimal = BAND,
                   settle: timedelta = timedelta(seconds=60)) -> list[tuple]:
    """The events of one account: `points` [(time, assets, liabilities)] in time order, the
    first the start (book prices), each the state after a tick; time runs on to `end`.
    Returns [(kind, time, deadline or None)] for TIER_CHANGE (kind "TIER:<tier>") and CALL_*."""
    out = []
    call = None  # {"issued": date, "due": date | None}
    reported = None

    def ok(a, l, line):
        return l == 0 or a >= line * l

    def closes(t0, t1):  # judgement instants J with t0 <= J < t1
        d = t0.astimezone(CHINA_TZ).date() - timedelta(days=1)
        while True:
            d += timedelta(days=1)
            if d > last:
                return
            j = datetime.combine(d, time(15, 0), CHINA_TZ) + settle
            if j >= t1:
                return
            if d in days and j >= t0:
                yield d

    def judge(d, a, l):
        nonlocal call
        t = datetime.combine(d, time(15, 0), CHINA_TZ)
        closed = False
        if call is not None:
            due = call["due"] is not None and call["due"] <= d
            if basis == "intraday" and due or basis == "close" and call["issued"] < d:
                if ok(a, l, cure):
                    out.append(("CALL_CURED", t, call["due"]))
                    call, closed = None, True
                elif due:
                    out.append(("CALL_EXPIRED", t, call["due"]))
                    call, closed = None, True
        if basis == "close" and call is None and not closed and not ok(a, l, lines["warning"]):
            call = {"issued": d, "due": due_day(d, n, days, last)}
            out.append(("CALL_ISSUED", t, call["due"]))

    for i, (t, a, l) in enumerate(points):
        if i:
            for d in closes(points[i - 1][0], t):
                judge(d, points[i - 1][1], points[i - 1][2])
        new = reported_tier(reported, a, l, lines, band)
        entered = new == "MARGIN_CALL" and (reported is None or
                                             TIER_ORDER.index(reported) > 1)
        if new != reported and (reported is not None or TIER_ORDER.index(new) <= 2):
            out.append((f"TIER:{new}", t, None))
        reported = new
        if entered and basis == "intraday" and call is None:
            issued = t.astimezone(CHINA_TZ).date()
            call = {"issued": issued, "due": due_day(issued, n, days, last)}
            out.append(("CALL_ISSUED", t, call["due"]))
        if call is not None and basis == "intraday" and ok(a, l, cure):
            out.append(("CALL_CURED", t, call["due"]))
            call = None
    for d in closes(points[-1][0], end):
        judge(d, points[-1][1], points[-1][2])
    return out


# ---------------------------------------------------------------------------- contracts (§6)
# Each financed or short position is one contract with its own margin ratio, fixed at opening:
# the exchange minimum in force on its open date when the book gives none. The minimums, by
# the date they took effect (before the first: 0.50):
FIN_MINIMUMS = ((date(2015, 11, 23), D("1.00")), (date(2023, 9, 8), D("0.80")),
                (date(2026, 1, 19), D("1.00")))
SHORT_MINIMUMS = ((date(2023, 10, 16), D("0.80")), (date(2024, 1, 29), D("1.00")))


def default_margin_ratio(kind: str, opened: date) -> Decimal:
    ratio = D("0.50")
    for start, r in (FIN_MINIMUMS if kind == "financed" else SHORT_MINIMUMS):
        if opened >= start:
            ratio = r
    return ratio


def contract_margin_ratio(d: dict, field: str) -> Decimal:
    if d.get(field) is not None:
        return dec(d[field])
    return default_margin_ratio(d["kind"], date.fromisoformat(d["open_date"]))


def contract_margin(positions: list) -> tuple[Decimal, Decimal]:
    """The two per-contract deductions of §3 at the positions' prices: (Σ financed cost ×
    its own ratio, Σ short MV × its own ratio); positions are dicts with `price`."""
    fin = sum((dec(p["financed_cost"]) * contract_margin_ratio(p, "fin_margin_ratio")
               for p in positions if p["kind"] == "financed"), ZERO)
    short = sum((p["qty"] * dec(p["price"]) * contract_margin_ratio(p, "short_margin_ratio")
                 for p in positions if p["kind"] == "short"), ZERO)
    return fin, short


def repay_contracts(interest: Decimal, principals: list[Decimal], amount: Decimal,
                    first: int | None = None) -> tuple[Decimal, list[Decimal]]:
    """A direct repayment of `amount`: interest and fees first, then contract `first` (an
    index) when named, then the principals in repayment order (list order, oldest first).
    Returns (interest left, principals left)."""
    pay = min(amount, interest)
    interest -= pay
    left = amount - pay
    out = list(principals)
    order = ([first] if first is not None else []) + [
        i for i in range(len(out)) if i != first]
    for i in order:
        p = min(left, out[i])
        out[i] -= p
        left -= p
    return interest, out


def expiry_plan(book: RefBook, acct: dict, contract_id: str, prices: dict | None = None,
                sell_cost: Decimal = ZERO, buy_cost: Decimal = ZERO) -> dict:
    """CONTRACT_EXPIRED (§6): the orders that close contract `contract_id` (all its shares:
    sell the financed ones to repay it, buy back the shorted ones) and the account after
    them. Proceeds of a sale repay interest first, then principal; the rest is cash."""
    price = {s: sec.price for s, sec in book.securities.items()}
    price.update({s: dec(p) for s, p in (prices or {}).items()})
    m = amounts(book, acct, price)
    c = next(p for p in acct["positions"] if p.get("contract_id") == contract_id)
    px = price[c["symbol"]]
    value = c["qty"] * px
    cash = m["cash"]
    if c["kind"] == "financed":
        proceeds = value - value * sell_cost
        repaid = min(max(proceeds, ZERO), m["accrued"] + m["financed"])
        cash2 = cash + proceeds - repaid
        a2 = m["assets"] - max(cash, ZERO) + max(cash2, ZERO) - value
        l2 = m["liabilities"] - max(-cash, ZERO) + max(-cash2, ZERO) - repaid
        order = {"symbol": c["symbol"], "side": "sell", "purpose": "sell_to_repay",
                 "qty": c["qty"]}
    else:
        cash2 = cash - value - value * buy_cost
        a2 = m["assets"] - max(cash, ZERO) + max(cash2, ZERO)
        l2 = m["liabilities"] - max(-cash, ZERO) + max(-cash2, ZERO) - value
        order = {"symbol": c["symbol"], "side": "buy_to_cover", "purpose": "buy_to_cover",
                 "qty": c["qty"]}
    return {"contract_id": contract_id, "plan": [order], "assets_after": a2,
            "liabilities_after": l2, "tier_after": tier(a2, l2, book.lines(acct))}
