"""Golden tests: every vector of the spec's vectors.json through the monitor (MarginState, the
bulk kernels) and through the Decimal reference, against the exact expected values. Also the
liquidation planner on hand-worked accounts where cash, not §4's "A and L move by the same x",
decides what a fill achieves: every plan is re-evaluated from scratch after its orders fill."""

from __future__ import annotations

import copy
from decimal import ROUND_CEILING
from decimal import Decimal as D

import numpy as np
import pytest
import reference as ref
from bookgen import book_from_vector
from spec import load_vectors

from kernels import units as u
from monitor.book.load import book_from_dict
from monitor.core.state import MarginState, PlanCosts

VECTORS = load_vectors()
# example_plan / without_cash: the plan when the profile turns use_free_cash off;
# cash_first: the default plan (margin-rules.md §4 free cash first)
PLAN_VECTORS = [v for v in VECTORS if "example_plan" in v["expected"]]
CASH_FIRST = [v for v in VECTORS if "cash_first" in v or "cash_first" in v["expected"]]


def cash_first(v: dict) -> dict:
    return v.get("cash_first") or v["expected"]["cash_first"]


def dec(x) -> D | None:
    """A reported float (yuan, ratio) as the decimal it prints as."""
    return None if x is None else D(repr(float(x)))


def money(x) -> D:
    """Integer money units (li) -> yuan."""
    return D(int(x)) / u.MONEY_SCALE


@pytest.fixture(params=VECTORS, ids=[v["id"] for v in VECTORS])
def vector(request):
    v = request.param
    doc = book_from_vector(v)
    return v, doc, MarginState(book_from_dict(doc))


def test_the_spec_vectors_are_all_here():
    ids = {v["id"] for v in VECTORS}
    assert {"TV1", "TV2", "TV3", "TV5", "TV7", "TV8"} <= ids
    assert {v["id"] for v in PLAN_VECTORS} >= {"TV1", "TV2", "TV3", "TV7"}


def test_figures_match_the_vector(vector):
    v, _, st = vector
    e = v["expected"]
    f = st.figures(0)
    assert dec(f["assets"]) == D(e["assets"])
    assert dec(f["liabilities"]) == D(e["liabilities"])
    # exact amounts behind the reported ones
    A, L = int(st.assets()[0]), int(st.liabilities()[0])
    assert money(A) == D(e["assets"]) and money(L) == D(e["liabilities"])
    if e["ratio_pct"] is None:
        assert f["ratio"] is None
        assert ref.pct(money(A), money(L)) is None
    else:
        assert ref.pct(money(A), money(L)) == D(e["ratio_pct"])
        assert abs(dec(f["ratio"]) * 100 - D(e["ratio_pct"])) <= D("0.005")
    assert f["tier"] == e["tier"]
    assert dec(f["available_margin_balance"]) == D(e["available_margin_balance"])
    if e["liquidation_value_to_150"] is None:
        assert f["liquidation_value"] is None
    else:
        assert dec(f["liquidation_value"]) == D(e["liquidation_value_to_150"])
    assert f["liquidation_status"] == e["liquidation_status"]
    if "shortfall_if_fully_liquidated" in e:  # not stated by every vector
        assert dec(f["shortfall"]) == D(e["shortfall_if_fully_liquidated"])


def test_reference_matches_the_vector(vector):
    v, doc, _ = vector
    e = v["expected"]
    rb = ref.RefBook(doc)
    r = rb.evaluate(doc["accounts"][0])
    assert r["assets"] == D(e["assets"])
    assert r["liabilities"] == D(e["liabilities"])
    assert r["ratio_pct"] == (None if e["ratio_pct"] is None else D(e["ratio_pct"]))
    assert r["tier"] == e["tier"]
    assert ref.fen(r["available_margin_balance"]) == D(e["available_margin_balance"])
    lv = e["liquidation_value_to_150"]
    assert r["liquidation_value"] == (None if lv is None else D(lv))
    assert r["liquidation_status"] == e["liquidation_status"]
    if "shortfall_if_fully_liquidated" in e:
        assert r["shortfall"] == D(e["shortfall_if_fully_liquidated"])
    if "example_plan" in e:
        r = rb.evaluate(doc["accounts"][0], use_free_cash=False)
        got = [(o["symbol"], o["side"], o["qty"]) for o in r["plan"]]
        assert got == [(o["symbol"], o["side"], o["qty"]) for o in e["example_plan"]]
        assert ref.pct(r["assets_after"], r["liabilities_after"]) == D(
            e["example_plan_ratio_pct_after"])
        assert r["cash_repayment"] == 0


def test_bulk_kernels_match_the_vector(vector):
    v, _, st = vector
    e = v["expected"]
    from test_reference_equivalence import bulk_figures

    bulk = bulk_figures(st.book)
    assert money(bulk["assets"][0]) == D(e["assets"])
    assert money(bulk["liabilities"][0]) == D(e["liabilities"])
    assert u.TIER_NAMES[bulk["tier"][0]] == e["tier"]
    amb = D(repr(float(bulk["amb"][0]))) / u.MONEY_SCALE
    assert abs(amb - D(e["available_margin_balance"])) < D("0.000001")


@pytest.mark.parametrize("v", PLAN_VECTORS, ids=[v["id"] for v in PLAN_VECTORS])
def test_example_plan_is_reproduced_exactly(v):
    """use_free_cash off: the vector's example_plan."""
    e = v["expected"]
    st = MarginState(book_from_dict(book_from_vector(v, use_free_cash=False)))
    orders, ratio_after, residual = st.plan(0)
    assert [(o["symbol"], o["side"], o["qty"]) for o in orders] == [
        (o["symbol"], o["side"], o["qty"]) for o in e["example_plan"]]
    assert (dec(ratio_after) * 100).quantize(D("0.01")) == D(e["example_plan_ratio_pct_after"])
    assert ratio_after >= 1.5
    assert residual == 0.0
    # the value traded covers the sizing formula (lots only round up)
    traded = sum(dec(o["value"]) for o in orders)
    assert traded >= D(e["liquidation_value_to_150"])
    # value = qty * price; for these accounts every fill moves A and L by its value (§4)
    A, L = money(st.assets()[0]), money(st.liabilities()[0])
    for o in orders:
        assert dec(o["value"]) == o["qty"] * dec(o["price"])
    assert ref.pct(A - traded, L - traded) == D(e["example_plan_ratio_pct_after"])
    # and the book after the orders fill, evaluated from scratch, has the reported ratio
    doc = book_from_vector(v)
    A2, L2 = reevaluate(doc, doc["accounts"][0], orders)
    assert ref.pct(A2, L2) == D(e["example_plan_ratio_pct_after"])
    assert ratio_after == round(float(A2 / L2), 6)
    assert st.plan_detail(0)["cash_repayment"] == 0.0


@pytest.mark.parametrize("v", CASH_FIRST, ids=[v["id"] for v in CASH_FIRST])
def test_cash_first_plan_is_reproduced_exactly(v):
    """The default (use_free_cash on): free cash repays interest, then principal, then the
    orders size on what is left (TV1, TV10-TV12), in the kernel and in the reference."""
    c = cash_first(v)
    doc = book_from_vector(v)
    st = MarginState(book_from_dict(doc))
    d = st.plan_detail(0)
    want = [(o["symbol"], o["side"], o["qty"]) for o in c["plan"]]
    assert [(o["symbol"], o["side"], o["qty"]) for o in d["orders"]] == want
    assert dec(d["cash_repayment"]) == D(c["cash_repayment"])
    assert dec(d["interest_repaid"]) == D(c["interest_repaid"])
    assert dec(d["principal_repaid"]) == D(c["principal_repaid"])
    assert (dec(d["ratio_after"]) * 100).quantize(D("0.01")) == D(c["ratio_pct_after"])
    assert d["residual"] == 0.0
    r = ref.RefBook(doc).evaluate(doc["accounts"][0])
    assert [(o["symbol"], o["side"], o["qty"]) for o in r["plan"]] == want
    assert (r["cash_repayment"], r["interest_repaid"], r["principal_repaid"]) == (
        D(c["cash_repayment"]), D(c["interest_repaid"]), D(c["principal_repaid"]))
    assert ref.pct(r["assets_after"], r["liabilities_after"]) == D(c["ratio_pct_after"])
    # the repayment then the orders, applied from scratch, leave the reported ratio
    A2, L2 = reevaluate(doc, after_repayment(doc["accounts"][0], d), d["orders"])
    assert ref.pct(A2, L2) == D(c["ratio_pct_after"])
    assert d["ratio_after"] == round(float(A2 / L2), 6)
    # the value used (repayment plus orders) exceeds x* by less than one lot of the last order
    x = D(v["expected"]["liquidation_value_to_150"])
    used = D(c["cash_repayment"]) + sum(dec(o["value"]) for o in d["orders"])
    last = d["orders"][-1]
    assert x <= used < x + 100 * dec(last["price"])


def test_without_cash_is_the_example_plan_with_free_cash_off():
    """TV10: today 6,000 shares are sold; with the cash, 1,000."""
    v = next(v for v in VECTORS if v["id"] == "TV10")
    off = MarginState(book_from_dict(book_from_vector(v, use_free_cash=False))).plan_detail(0)
    assert [(o["symbol"], o["qty"]) for o in off["orders"]] == [
        (o["symbol"], o["qty"]) for o in v["without_cash"]["plan"]]
    assert off["cash_repayment"] == 0.0
    assert (dec(off["ratio_after"]) * 100).quantize(D("0.01")) == D(
        v["without_cash"]["ratio_pct_after"])
    on = MarginState(book_from_dict(book_from_vector(v))).plan_detail(0)
    assert [(o["symbol"], o["qty"]) for o in on["orders"]] == [("S5", 1000)]
    assert on["cash_repayment"] == 50000.0


def test_unreachable_vector_liquidates_everything_and_reports_the_shortfall():
    v = next(v for v in VECTORS if v["id"] == "TV8")
    st = MarginState(book_from_dict(book_from_vector(v, use_free_cash=False)))
    orders, ratio_after, residual = st.plan(0)
    held = {p["symbol"]: p["qty"] for p in v["positions"] if p.get("sellable", True)}
    assert {o["symbol"]: o["qty"] for o in orders} == held
    assert all(o["side"] == "sell" for o in orders)
    # A = 452000 - 450000, L = 508000 - 450000: the shortfall is left, the ratio far below 1
    # (the sale's proceeds repay I and F; the 2000 of cash already there stays cash)
    assert ratio_after == round(2000 / 58000, 6)
    doc = book_from_vector(v)
    assert reevaluate(doc, doc["accounts"][0], orders) == (D(2000), D(58000))
    assert dec(residual) == D(v["expected"]["shortfall_if_fully_liquidated"])
    # free cash first (the default): the 2000 of cash repays interest before the sale, the
    # shortfall is the same, and nothing is left in the account
    d = MarginState(book_from_dict(doc)).plan_detail(0)
    assert {o["symbol"]: o["qty"] for o in d["orders"]} == held
    assert (d["cash_repayment"], d["interest_repaid"], d["principal_repaid"]) == (
        2000.0, 2000.0, 0.0)
    assert d["ratio_after"] == 0.0
    assert dec(d["residual"]) == D(v["expected"]["shortfall_if_fully_liquidated"])
    f = st.figures(0)
    # cure amounts are reported for every account that needs a cure, unreachable ones too
    assert dec(f["cure"]["deposit"]) == D("1.5") * 508000 - 452000
    assert abs(dec(f["cure"]["repay"]) - (508000 - D(452000) / D("1.5"))) <= D("0.005")


def test_no_debt_vector():
    v = next(v for v in VECTORS if v["id"] == "TV5")
    st = MarginState(book_from_dict(book_from_vector(v)))
    f = st.figures(0)
    assert f["ratio"] is None and f["tier"] == "NO_DEBT"
    assert f["withdrawable"] == 50000.0  # everything when nothing is owed
    assert f["cure"] == {"deposit": 0.0, "repay": 0.0}
    assert st.plan(0) == ([], None, 0.0)
    s = st.stress(0)
    assert s["stress_ratio"] is None
    assert s["distance"] == {"warning": None, "margin_call": None, "forced_liquidation": None}


# Worked by hand from the vectors (previous close = price, main board ±10%):
# TV1  A_s = 20000 + 20000·10.80 + 30000·5.40 = 398000, L_s = 302000
# TV2  A_s = 250000 + 10000·13.50 + 20000·8.10 = 547000, L_s = 205000 + 10000·28.60 = 491000
# TV7  A_s = 12000·11.70 = 140400, L_s = 105000
# distance to line b: 1 − (b·L − C⁺)/long_MV, e.g. TV1 to 1.30: 1 − (392600 − 20000)/420000
STRESS = {
    "TV1": (D(398000) / D(302000), {"warning": None,
                                    "margin_call": 1 - D(372600) / D(420000),
                                    "forced_liquidation": 1 - D(327300) / D(420000)}),
    "TV2": (D(547000) / D(491000), {"warning": None, "margin_call": None,
                                    "forced_liquidation": 1 - D(284750) / D(330000)}),
    "TV7": (D(140400) / D(105000), {"warning": None,
                                    "margin_call": 1 - D(136500) / D(156000),
                                    "forced_liquidation": 1 - D(120750) / D(156000)}),
}


@pytest.mark.parametrize("vid", sorted(STRESS))
def test_stress_and_distance_worked_by_hand(vid):
    v = next(v for v in VECTORS if v["id"] == vid)
    doc = book_from_vector(v)
    st = MarginState(book_from_dict(doc))
    ratio, dist = STRESS[vid]
    s = st.stress(0)
    assert abs(dec(s["stress_ratio"]) - ratio) <= D("0.0000005")
    for k, d in dist.items():
        if d is None:
            assert s["distance"][k] is None
        else:
            assert abs(dec(s["distance"][k]) - d) <= D("0.0000005")
    r = ref.RefBook(doc).evaluate(doc["accounts"][0])
    tiny = D("1e-20")  # the hand values are 28-digit quotients, the reference's 80-digit ones
    assert abs(r["stress_ratio"] - ratio) < tiny
    for k, d in dist.items():
        assert (r["distance"][k] is None) if d is None else abs(r["distance"][k] - d) < tiny


def test_cure_amounts_of_the_interfaces_examples():
    """interfaces.md shows TV1 (evaluate) and TV2 (alert event) with their cure amounts."""
    by_id = {v["id"]: v for v in VECTORS}
    for vid, deposit, repay in (("TV1", 13000.0, 8666.67), ("TV2", 117500.0, 78333.33)):
        f = MarginState(book_from_dict(book_from_vector(by_id[vid]))).figures(0)
        assert f["cure"] == {"deposit": deposit, "repay": repay}
        assert f["withdrawable"] == 0.0


def test_vectors_through_one_book():
    """All vectors as accounts of one book: nothing leaks between accounts."""
    docs = [book_from_vector(v) for v in VECTORS]
    secs, accounts = {}, []
    for v, d in zip(VECTORS, docs, strict=True):
        rename = {s["symbol"]: f"{v['id']}.{s['symbol']}" for s in d["securities"]}
        for s in d["securities"]:
            secs[rename[s["symbol"]]] = {**s, "symbol": rename[s["symbol"]]}
        a = d["accounts"][0]
        accounts.append({**a, "positions": [{**p, "symbol": rename[p["symbol"]]}
                                            for p in a["positions"]]})
    st = MarginState(book_from_dict({"securities": list(secs.values()), "accounts": accounts}))
    off = MarginState(book_from_dict({"securities": list(secs.values()), "accounts": accounts,
                                      "profiles": {"default": {"use_free_cash": False}}}))
    for i, v in enumerate(VECTORS):
        f = st.figures(i)
        assert f["account_id"] == v["id"]
        assert dec(f["assets"]) == D(v["expected"]["assets"])
        assert f["tier"] == v["expected"]["tier"]
        if "example_plan" in v["expected"]:
            assert [o["qty"] for o in off.plan(i)[0]] == [
                o["qty"] for o in v["expected"]["example_plan"]]
        if v in CASH_FIRST:
            assert [o["qty"] for o in st.plan(i)[0]] == [o["qty"] for o in cash_first(v)["plan"]]
    assert np.all(st.liabilities() >= 0)


# ---------------------------------------------------------------- plans on the account's cash


def reevaluate(doc: dict, acct: dict, orders: list, sell_cost="0", buy_cost="0"):
    """(A, L) in yuan of `acct` after `orders` fill one after the other at the book's prices,
    recomputed from scratch (§1) on the changed account.

    A sale: its shares leave the account's long positions; the proceeds less the fee (rounded up
    to the li) go to cash, and as far as cash is then positive they repay accrued interest, then
    financed principal. A cover: its shares leave the short position and the value plus the
    fee is paid from cash, which may go below zero."""
    rb = ref.RefBook(doc)
    a = copy.deepcopy(acct)
    cash = ref.dec(a["cash"])
    accrued = ref.dec(a.get("accrued_interest_fees") or 0)
    for o in orders:
        px = rb.securities[o["symbol"]].price
        value = o["qty"] * px
        short = o["side"] == "buy_to_cover"
        rate = ref.dec(buy_cost if short else sell_cost)
        fee = (value * rate).quantize(D("0.001"), rounding=ROUND_CEILING)
        left = o["qty"]
        for p in a["positions"]:
            if p["symbol"] == o["symbol"] and (p["kind"] == "short") == short and left:
                take = min(left, p["qty"])
                p["qty"] -= take
                left -= take
        assert left == 0, o
        if short:
            cash -= value + fee
            continue
        cash += value - fee
        repay = min(max(cash, D(0)), value - fee, accrued + sum(
            ref.dec(p["financed_cost"]) for p in a["positions"] if p["kind"] == "financed"))
        cash -= repay
        to_interest = min(repay, accrued)
        accrued -= to_interest
        repay -= to_interest
        for p in a["positions"]:
            if p["kind"] == "financed" and repay:
                part = min(repay, ref.dec(p["financed_cost"]))
                p["financed_cost"] = str(ref.dec(p["financed_cost"]) - part)
                repay -= part
    a["cash"] = str(cash)
    a["accrued_interest_fees"] = str(accrued)
    price = {s: sec.price for s, sec in rb.securities.items()}
    m = ref.amounts(rb, a, price)
    return m["assets"], m["liabilities"]


def after_repayment(acct: dict, d: dict) -> dict:
    """The account after a plan's cash repayment: cash less it, accrued interest less the
    interest repaid, financed principal less the principal repaid (in position order).
    Amounts as reported (floats) or exact (Decimal)."""

    def dec(x):
        return x if isinstance(x, D) else D(repr(float(x)))

    acct = copy.deepcopy(acct)
    acct["cash"] = str(ref.dec(acct["cash"]) - dec(d["cash_repayment"]))
    acct["accrued_interest_fees"] = str(ref.dec(acct.get("accrued_interest_fees") or 0)
                                        - dec(d["interest_repaid"]))
    left = dec(d["principal_repaid"])
    for p in acct["positions"]:
        if p["kind"] == "financed" and left:
            part = min(left, ref.dec(p["financed_cost"]))
            p["financed_cost"] = str(ref.dec(p["financed_cost"]) - part)
            left -= part
    assert left == 0
    return acct


def one_account(cash, positions, securities, accrued="0"):
    return {"securities": securities,
            "accounts": [{"account_id": "X", "cash": cash, "accrued_interest_fees": accrued,
                          "positions": positions}]}


def sec(symbol, price, prev_close=None, suspended=False):
    return {"symbol": symbol, "price": price, "prev_close": prev_close or price,
            "haircut": "0.5", "suspended": suspended}


def short(symbol, qty, sold_for):
    return {"symbol": symbol, "kind": "short", "qty": qty, "short_sell_amount": sold_for,
            "short_margin_ratio": "1.0"}


def coll(symbol, qty):
    return {"symbol": symbol, "kind": "collateral", "qty": qty}


def checked_plan(doc, costs=None):
    """The plan of the book's one account, with ratio_after checked against a fresh
    evaluation of the account after the orders fill (and against the reference's plan)."""
    sell, buy = costs or (0.0, 0.0)
    st = MarginState(book_from_dict(doc), costs=PlanCosts(sell=sell, buy=buy))
    d = st.plan_detail(0)
    orders, ratio_after, residual = d["orders"], d["ratio_after"], d["residual"]
    A2, L2 = reevaluate(doc, after_repayment(doc["accounts"][0], d), orders, repr(sell),
                        repr(buy))
    assert ratio_after == round(float(A2 / L2), 6)
    r = ref.RefBook(doc).evaluate(doc["accounts"][0], sell_cost=repr(sell), buy_cost=repr(buy))
    assert [(o["symbol"], o["side"], o["qty"]) for o in orders] == [
        (o["symbol"], o["side"], o["qty"]) for o in r["plan"]]
    assert (r["assets_after"], r["liabilities_after"]) == (A2, L2)
    return [(o["symbol"], o["side"], o["qty"]) for o in orders], A2, L2, residual


SECS = [sec("600000.SH", "10.00"), sec("600001.SH", "30.00")]
RISING = [sec("600000.SH", "10.00"), sec("600001.SH", "30.00", prev_close="28.00")]


def test_selling_collateral_with_nothing_to_repay_is_skipped_and_the_shorts_covered():
    """Reviewer case (a): cash 150000, collateral 5000 at 10, 5000 short at 30 sold at 30.
    R = 200000/150000. Selling the collateral only parks cash (no F, I or negative cash to
    repay) and leaves R at 1.333; covering from the cash is what helps."""
    doc = one_account("150000", [coll("600000.SH", 5000), short("600001.SH", 5000, "150000")],
                      SECS)
    orders, A2, L2, residual = checked_plan(doc)
    # cover x from cash: (200000 − x)/(150000 − x) >= 1.5 -> x >= 50000 -> 1667 -> 1700 shares
    assert orders == [("600001.SH", "buy_to_cover", 1700)]
    assert (A2, L2) == (D(149000), D(99000))
    assert A2 / L2 >= D("1.5") and residual == 0.0


def test_collateral_is_sold_when_a_later_cover_needs_the_cash():
    """As (a) but with cash 10000 and collateral 20000 at 10: R = 210000/150000. Covering
    30000 reaches 1.50 but needs 20000 more cash than the account has. The short is flat, so
    the strict walk covers only what the cash pays (400 shares, the lot past it overdrawing
    the least); nothing else reaches the target, so the funded walk then sells 20000 of
    collateral and covers the rest with it (rows merge per symbol and side)."""
    doc = one_account("10000", [coll("600000.SH", 20000), short("600001.SH", 5000, "150000")],
                      SECS)
    orders, A2, L2, residual = checked_plan(doc)
    assert orders == [("600001.SH", "buy_to_cover", 1000), ("600000.SH", "sell", 2000)]
    assert (A2, L2) == (D(180000), D(120000)) and residual == 0.0


def test_a_cover_beyond_the_cash_is_refilled_by_selling_collateral():
    """Reviewer case (b): cash 10000, collateral 20000 at 10, 5000 short at 30 sold for 100000
    (rising). Covering 1000 shares (30000) alone overdraws cash by 20000, which is debt:
    R = 200000/140000 = 1.43, not 1.50. The plan sells 20000 of collateral to refill it."""
    doc = one_account("10000", [coll("600000.SH", 20000), short("600001.SH", 5000, "100000")],
                      RISING)
    orders, A2, L2, residual = checked_plan(doc)
    assert orders == [("600001.SH", "buy_to_cover", 1000), ("600000.SH", "sell", 2000)]
    assert (A2, L2) == (D(180000), D(120000))  # exactly 1.50
    assert residual == 0.0
    # the cover alone (the old plan) really leaves 1.43
    A1, L1 = reevaluate(doc, doc["accounts"][0], [
        {"symbol": "600001.SH", "side": "buy_to_cover", "qty": 1000}])
    assert (A1, L1) == (D(200000), D(140000))


def test_a_cover_stops_where_it_stops_helping():
    """As (b) with the collateral suspended: nothing can refill an overdraft, so covering
    beyond the cash changes nothing (A stays, L swaps short value for negative cash). The
    cover stops at the first lot past the cash, and the rest is reported as residual."""
    secs = [sec("600000.SH", "10.00", suspended=True), sec("600001.SH", "30.00", "28.00")]
    doc = one_account("10000", [coll("600000.SH", 20000), short("600001.SH", 5000, "100000")],
                      secs)
    orders, A2, L2, residual = checked_plan(doc)
    # 300 shares (9000) leave 201000/141000 = 1.4255; 400 (12000) 200000/140000 = 1.4286,
    # and so does any larger cover
    assert orders == [("600001.SH", "buy_to_cover", 400)]
    assert (A2, L2) == (D(200000), D(140000))
    assert D(repr(residual)) == (D("1.5") * L2 - A2) / D("0.5")


def test_a_sale_refills_negative_cash():
    """Cash −30000 (debt), collateral 10000 at 15, 3000 short at 25 sold at 30: R = 150000 /
    105000. Sale proceeds first refill the negative cash: 15000 of them reach 1.50."""
    secs = [sec("600000.SH", "15.00"), sec("600001.SH", "25.00")]
    doc = one_account("-30000", [coll("600000.SH", 10000), short("600001.SH", 3000, "90000")],
                      secs)
    orders, A2, L2, residual = checked_plan(doc)
    assert orders == [("600000.SH", "sell", 1000)]
    assert (A2, L2) == (D(135000), D(90000))  # cash −15000 left, exactly 1.50
    assert residual == 0.0


def test_a_sale_repays_interest_then_principal_not_with_the_cash_already_there():
    """TV1's account: the proceeds of 4400 S2 (26400) repay I (2000) and 24400 of F; the 20000
    of cash already in the account stays cash."""
    v = next(v for v in VECTORS if v["id"] == "TV1")
    doc = book_from_vector(v, use_free_cash=False)
    orders, A2, L2, _ = checked_plan(doc)
    assert orders == [("S2", "sell", 4400)]
    assert (A2, L2) == (D(413600), D(275600))


@pytest.mark.parametrize("case", ["a", "b", "negative_cash", "short_of_cash"])
def test_plans_with_fees_are_what_they_claim(case):
    """With sell and buy fees (rounded up to the li) every fill costs a little more: the
    plans trade a little more and still reach the target, checked from scratch."""
    docs = {
        "a": one_account("150000", [coll("600000.SH", 5000),
                                    short("600001.SH", 5000, "150000")], SECS),
        "b": one_account("10000", [coll("600000.SH", 20000),
                                   short("600001.SH", 5000, "100000")], RISING),
        "negative_cash": one_account("-30000", [coll("600000.SH", 10000),
                                                short("600001.SH", 3000, "90000")],
                                     [sec("600000.SH", "15.00"), sec("600001.SH", "25.00")]),
        "short_of_cash": one_account("10000", [coll("600000.SH", 20000),
                                               short("600001.SH", 5000, "150000")], SECS),
    }
    doc = docs[case]
    free, A0, L0, _ = checked_plan(doc)
    orders, A2, L2, residual = checked_plan(doc, costs=(0.001, 0.0015))
    assert A2 / L2 >= D("1.5") and residual == 0.0
    assert [o[:2] for o in orders] == [o[:2] for o in free]
    assert all(q >= q0 for (_, _, q), (_, _, q0) in zip(orders, free, strict=True))
