"""Withdrawable cash (担保物提取, margin-rules.md §1 and §3): `max(0, min(C_free, AMB, A − 3.00·L))`
with debt, all free cash without, where C_free leaves out the short-sale proceeds of open shorts.

The spec's worked example (golden), the vectors against the Decimal reference (none of them
states a withdrawable amount; TV5 and the interfaces examples are pinned in test_vectors.py),
short proceeds, the pre-trade check's withdrawal, and a hypothesis property: withdrawing the
amount the monitor reports never leaves R < 3.00, AMB < 0 or spends short proceeds, and it is
the most that can be withdrawn (one li more breaks one of the three)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import ROUND_FLOOR
from decimal import Decimal as D

import reference as ref
from bookgen import book_from_vector
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec import load_vectors

from kernels import units as u
from monitor.book.load import book_from_dict
from monitor.core.pretrade import check
from monitor.core.state import MarginState

VECTORS = load_vectors()
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def spec_example() -> dict:
    """§3: cash 50,000, an ST stock of 900,000 at haircut 0, a financed 100,000 at margin
    ratio 1.00 (no gain): AMB = −50,000, nothing withdrawable although R = 10.5."""
    return {
        "securities": [
            {"symbol": "600001.SH", "price": "9.00", "haircut": "0", "board": "st"},
            {"symbol": "600000.SH", "price": "10.00", "haircut": "0.7"},
        ],
        "accounts": [{"account_id": "EX", "cash": "50000", "positions": [
            {"symbol": "600001.SH", "kind": "collateral", "qty": 100000},
            {"symbol": "600000.SH", "kind": "financed", "qty": 10000,
             "financed_cost": "100000", "fin_margin_ratio": "1.00"}]}],
    }


def test_spec_example_nothing_is_withdrawable():
    doc = spec_example()
    st_ = MarginState(book_from_dict(doc), live=True)
    f = st_.figures(0)
    assert (f["assets"], f["liabilities"], f["ratio"]) == (1_050_000.0, 100_000.0, 10.5)
    assert f["tier"] == "WITHDRAWABLE"
    assert f["available_margin_balance"] == -50_000.0
    assert f["free_cash"] == 50_000.0
    assert f["withdrawable"] == 0.0
    r = ref.RefBook(doc).evaluate(doc["accounts"][0])
    assert r["available_margin_balance"] == -50_000 and r["withdrawable"] == 0
    # the pre-trade check refuses any withdrawal, saying why
    d = check(st_, "EX", {"type": "cash_withdrawal", "amount": "1"})
    assert not d.allowed
    assert [x["code"] for x in d.reasons] == ["INSUFFICIENT_MARGIN"]
    assert d.reasons[0]["available_margin_balance"] == -50_000.0
    assert d.figures["withdrawable"] == 0.0 and d.figures["free_cash"] == 50_000.0


def test_spec_example_through_the_cli(tmp_path):
    path = tmp_path / "example.json"
    path.write_text(json.dumps(spec_example()))
    out = subprocess.run([sys.executable, "-m", "monitor", "evaluate", str(path)],
                         capture_output=True, text=True, check=True).stdout
    rec = json.loads(out.splitlines()[0])
    assert rec["withdrawable"] == 0.0 and rec["available_margin_balance"] == -50_000.0
    assert rec["free_cash"] == 50_000.0


def test_vectors_withdrawable_equals_the_reference():
    for v in VECTORS:
        doc = book_from_vector(v)
        f = MarginState(book_from_dict(doc)).figures(0)
        r = ref.RefBook(doc).evaluate(doc["accounts"][0])
        assert D(repr(f["withdrawable"])) == ref.fen(r["withdrawable"]), v["id"]
        if "withdrawable" in v["expected"]:  # a vector that states it is golden
            assert D(repr(f["withdrawable"])) == D(v["expected"]["withdrawable"]), v["id"]


def short_account(cash: str) -> dict:
    """No financing: 100,000 of collateral, a short sale of 80,000 (proceeds in the cash)
    now worth 50,000."""
    return {
        "securities": [
            {"symbol": "600000.SH", "price": "10.00", "haircut": "0.7"},
            {"symbol": "600036.SH", "price": "5.00", "haircut": "0.7"},
        ],
        "accounts": [{"account_id": "S", "cash": cash, "positions": [
            {"symbol": "600000.SH", "kind": "collateral", "qty": 10000},
            {"symbol": "600036.SH", "kind": "short", "qty": 10000,
             "short_sell_amount": "80000", "short_margin_ratio": "0.5"}]}],
    }


def test_short_sale_proceeds_are_never_withdrawn():
    # cash 100,000 of which 80,000 are short proceeds: at most 20,000 is free
    doc = short_account("100000")
    st_ = MarginState(book_from_dict(doc), live=True)
    f = st_.figures(0)
    # A = 100000 + 100000 = 200000, L = 50000: R = 4; A − 3L = 50000;
    # AMB = 100000 + 70000 + 30000·0.7 − 80000 − 25000 = 86000
    assert f["ratio"] == 4.0 and f["available_margin_balance"] == 86_000.0
    assert f["free_cash"] == 20_000.0 and f["withdrawable"] == 20_000.0
    d = check(st_, "S", {"type": "cash_withdrawal", "amount": "20000.01"})
    assert [x["code"] for x in d.reasons] == ["SHORT_PROCEEDS"]
    assert d.reasons[0] == {"code": "SHORT_PROCEEDS", "free_cash": 20_000.0,
                            "required": 20_000.01}
    assert check(st_, "S", {"type": "cash_withdrawal", "amount": "20000"}).allowed
    # cash below the proceeds: nothing is free
    f = MarginState(book_from_dict(short_account("60000"))).figures(0)
    assert f["free_cash"] == 0.0 and f["withdrawable"] == 0.0


def test_no_debt_withdraws_all_free_cash():
    doc = {"securities": [{"symbol": "600000.SH", "price": "10", "haircut": "0"}],
           "accounts": [{"account_id": "N", "cash": "1234.56", "positions": [
               {"symbol": "600000.SH", "kind": "collateral", "qty": 100}]}]}
    st_ = MarginState(book_from_dict(doc), live=True)
    assert st_.figures(0)["withdrawable"] == 1234.56
    assert check(st_, "N", {"type": "cash_withdrawal", "amount": "1234.56"}).allowed
    assert not check(st_, "N", {"type": "cash_withdrawal", "amount": "1234.57"}).allowed


# ---------------------------------------------------------------- the property

SYMS = ("600000.SH", "600036.SH", "000001.SZ")


@st.composite
def accounts(draw):
    """One account with cash (maybe negative), collateral, financed and short positions at
    whole-fen prices, haircuts and margin ratios of up to 2 decimals."""
    secs = []
    for s in SYMS:
        secs.append({"symbol": s, "price": str(D(draw(st.integers(100, 20_000))) / 100),
                     "haircut": str(D(draw(st.integers(0, 100))) / 100)})
    positions = []
    for s in SYMS:
        kind = draw(st.sampled_from(("none", "collateral", "financed", "short")))
        qty = draw(st.integers(1, 200)) * 100
        price = D(next(x["price"] for x in secs if x["symbol"] == s))
        cost = (qty * price * D(draw(st.integers(50, 150))) / 100).quantize(D("0.01"))
        ratio = str(D(draw(st.integers(50, 150))) / 100)
        if kind == "collateral":
            positions.append({"symbol": s, "kind": kind, "qty": qty})
        elif kind == "financed":
            positions.append({"symbol": s, "kind": kind, "qty": qty, "financed_cost": str(cost),
                              "fin_margin_ratio": ratio})
        elif kind == "short":
            positions.append({"symbol": s, "kind": kind, "qty": qty,
                              "short_sell_amount": str(cost), "short_margin_ratio": ratio})
    cash = D(draw(st.integers(-50_000_00, 3_000_000_00))) / 100
    accrued = D(draw(st.integers(0, 5_000_00))) / 100
    return {"securities": secs, "accounts": [{
        "account_id": "P", "cash": str(cash), "accrued_interest_fees": str(accrued),
        "positions": positions}]}


def _after(doc: dict, amount: D) -> tuple[D, D, D, D]:
    """(A, L, AMB, free cash) of the account once `amount` of cash is withdrawn, exact."""
    d2 = json.loads(json.dumps(doc))
    a = d2["accounts"][0]
    a["cash"] = str(D(a["cash"]) - amount)
    rb = ref.RefBook(d2)
    r = rb.evaluate(a)
    m = ref.amounts(rb, a, {s: x.price for s, x in rb.securities.items()})
    shorts = [p.cost for p in m["positions"] if p.is_short]
    return (r["assets"], r["liabilities"], r["available_margin_balance"],
            D(a["cash"]) - sum(shorts, D(0)))


@SETTINGS
@given(accounts())
def test_withdrawing_the_amount_keeps_every_rule(doc):
    st_ = MarginState(book_from_dict(doc), live=True)
    f = st_.figures(0)
    r = ref.RefBook(doc).evaluate(doc["accounts"][0])
    exact = r["withdrawable"]
    w = D(repr(f["withdrawable"]))
    assert w == ref.fen(exact)
    li = (exact * u.MONEY_SCALE).to_integral_value(rounding=ROUND_FLOOR) / u.MONEY_SCALE
    assert w <= li + D("0.005")
    # withdraw the exact amount rounded down to the li: every rule holds afterwards
    A, L, amb, free_left = _after(doc, li)
    assert free_left >= 0 or li == 0  # out of free cash only
    if L > 0:
        assert A >= 3 * L or li == 0
        assert amb >= 0 or li == 0
    # and it is the most: one li more breaks a rule (unless there is no free cash at all)
    one_more = li + ref.LI
    A2, L2, amb2, free2 = _after(doc, one_more)
    broken = free2 < 0 or (L2 > 0 and (A2 < 3 * L2 or amb2 < 0))
    assert broken
    # the pre-trade check agrees: the li-rounded amount passes, one li more is refused
    if li > 0:
        assert check(st_, "P", {"type": "cash_withdrawal", "amount": str(li)}).allowed
    assert not check(st_, "P", {"type": "cash_withdrawal", "amount": str(one_more)}).allowed
    assert D(repr(check(st_, "P", {"type": "cash_withdrawal", "amount": "0.001"})
                  .figures["withdrawable"])) == w
