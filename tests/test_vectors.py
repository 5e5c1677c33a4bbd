"""Golden tests: every vector of the spec's vectors.json through the monitor (MarginState, the
bulk kernels) and through the Decimal reference, against the exact expected values."""

from __future__ import annotations

from decimal import Decimal as D

import numpy as np
import pytest
import reference as ref
from bookgen import book_from_vector
from spec import load_vectors

from kernels import units as u
from monitor.bookio import book_from_dict
from monitor.state import MarginState

VECTORS = load_vectors()
PLAN_VECTORS = [v for v in VECTORS if "example_plan" in v["expected"]]


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
    assert r["shortfall"] == D(e["shortfall_if_fully_liquidated"])
    if "example_plan" in e:
        got = [(o["symbol"], o["side"], o["qty"]) for o in r["plan"]]
        assert got == [(o["symbol"], o["side"], o["qty"]) for o in e["example_plan"]]
        assert ref.pct(r["assets_after"], r["liabilities_after"]) == D(
            e["example_plan_ratio_pct_after"])


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
    e = v["expected"]
    st = MarginState(book_from_dict(book_from_vector(v)))
    orders, ratio_after, residual = st.plan(0)
    assert [(o["symbol"], o["side"], o["qty"]) for o in orders] == [
        (o["symbol"], o["side"], o["qty"]) for o in e["example_plan"]]
    assert (dec(ratio_after) * 100).quantize(D("0.01")) == D(e["example_plan_ratio_pct_after"])
    assert ratio_after >= 1.5
    assert residual == 0.0
    # the value traded covers the sizing formula (lots only round up)
    traded = sum(dec(o["value"]) for o in orders)
    assert traded >= D(e["liquidation_value_to_150"])
    # value = qty * price, and the ratio after follows from it on the §4 model
    A, L = money(st.assets()[0]), money(st.liabilities()[0])
    for o in orders:
        assert dec(o["value"]) == o["qty"] * dec(o["price"])
    assert ref.pct(A - traded, L - traded) == D(e["example_plan_ratio_pct_after"])


def test_unreachable_vector_liquidates_everything_and_reports_the_shortfall():
    v = next(v for v in VECTORS if v["id"] == "TV8")
    st = MarginState(book_from_dict(book_from_vector(v)))
    orders, ratio_after, residual = st.plan(0)
    held = {p["symbol"]: p["qty"] for p in v["positions"] if p.get("sellable", True)}
    assert {o["symbol"]: o["qty"] for o in orders} == held
    assert all(o["side"] == "sell" for o in orders)
    # A = 452000 - 450000, L = 508000 - 450000: the shortfall is left, the ratio far below 1
    assert ratio_after == round(2000 / 58000, 6)
    assert dec(residual) == D(v["expected"]["shortfall_if_fully_liquidated"])
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
    for i, v in enumerate(VECTORS):
        f = st.figures(i)
        assert f["account_id"] == v["id"]
        assert dec(f["assets"]) == D(v["expected"]["assets"])
        assert f["tier"] == v["expected"]["tier"]
        if "example_plan" in v["expected"]:
            assert [o["qty"] for o in st.plan(i)[0]] == [
                o["qty"] for o in v["expected"]["example_plan"]]
    assert np.all(st.liabilities() >= 0)
