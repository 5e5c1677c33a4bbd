"""Contracts (负债合约, margin-rules.md §6): each financed or short position keeps its own margin
ratio (TV13), fills open contracts and repayments settle them in repayment order, an extension
moves a term end, CONTRACT_DUE warns 5 trading days before and CONTRACT_EXPIRED closes the
contract at the close of its term end whatever the ratio (TV14), on the ticks' clock; a restart
from a snapshot keeps them."""

from __future__ import annotations

import copy
from datetime import date, datetime
from decimal import Decimal as D

import numpy as np
import pytest
import reference as ref
from bookgen import book_from_vector
from hypothesis import given, settings
from hypothesis import strategies as st
from spec import load_vectors

from kernels import units as u
from monitor.book.contracts import contract_name, contract_row
from monitor.book.load import book_from_dict
from monitor.core.calendar import CHINA
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState
from monitor.errors import AccountEventError

VECTORS = {v["id"]: v for v in load_vectors()}
WALL = int(datetime(2031, 5, 5, 3, 0, tzinfo=CHINA).timestamp()) * 10**9


def at(d: date, hh: int, mm: int = 0) -> int:
    return int(datetime(d.year, d.month, d.day, hh, mm, tzinfo=CHINA).timestamp()) * 10**9


def engine(doc, **kw) -> Engine:
    return Engine(MarginState(book_from_dict(doc), live=True),
                  EngineConfig(run_id="c", clock="tape", **kw))


def tick(e, symbol: str, price: str, t: int) -> list[dict]:
    s = e.state.book.symbol_index[symbol]
    e.add_ticks(np.array([s]), np.array([int(D(price) * u.MONEY_SCALE)]), np.array([t]))
    return e.cycle(WALL)


def kinds(events, prefix="CONTRACT_"):
    return [(x["kind"], x["contract_id"], x["ts_event"]) for x in events
            if x["kind"].startswith(prefix)]


def contracts_of(e, a=0) -> dict:
    b = e.state.book
    led = e.account_events.ledger
    return {contract_name(b, j): (int(b.pos_qty[j]), int(b.pos_cost[j]),
                                  float(b.pos_margin_ratio[j]))
            for j in led.rows(a) if b.pos_kind[j] != u.COLLATERAL}


# ------------------------------------------------------------------ TV13: per-contract AMB


def test_tv13_two_contracts_in_one_security_deduct_their_own_margin():
    v = VECTORS["TV13"]
    doc = book_from_vector(v)
    st_ = MarginState(book_from_dict(doc))
    f = st_.figures(0)
    assert D(repr(f["available_margin_balance"])) == D(v["expected"]["available_margin_balance"])
    m = ref.amounts(ref.RefBook(doc), doc["accounts"][0], {"S7": D("10.00")})
    assert ref.available_margin_balance(m, {"S7": D("10.00")}) == D("-84000")
    assert ref.contract_margin(v["positions"]) == (D("84000"), D("0"))
    b = st_.book
    assert [contract_name(b, j) for j in range(2)] == ["F1", "F2"]


def s7_doc(**profile):
    doc = {"securities": [{"symbol": "600007.SH", "price": "10.00", "haircut": "0.50"}],
           "accounts": [{"account_id": "A", "cash": "0", "positions": [
               {"symbol": "600007.SH", "kind": "financed", "qty": 8000, "financed_cost": "80000",
                "fin_margin_ratio": "0.80", "contract_id": "F1", "open_date": "2026-01-05",
                "term_end": "2026-07-03"}]}]}
    if profile:
        doc["profiles"] = {"default": profile}
    return doc


def financed_buy(e, qty, t, **kw):
    ev = {"type": "fill", "account_id": "A", "symbol": "600007.SH", "side": "financed_buy",
          "qty": qty, "price": "10.00", "ts": t, **kw}
    return e.apply_account_event(ev, t)


def test_a_new_financed_buy_opens_its_own_contract_and_leaves_the_older_ratio_alone():
    """The bug of issue 15: the second buy overwrote F1's 0.80. From 2026-01-19 only new
    contracts take the 100% minimum; F1 keeps 80%: AMB deducts 84,000, as TV13."""
    e = engine(s7_doc())
    e.start(WALL)
    tick(e, "600007.SH", "10.00", at(date(2026, 1, 20), 10))
    financed_buy(e, 2000, at(date(2026, 1, 20), 10, 5))
    c = contracts_of(e)
    assert c["F1"] == (8000, 80_000_000, 0.8)
    new = [k for k in c if k != "F1"]
    assert len(new) == 1 and c[new[0]] == (2000, 20_000_000, 1.0)
    assert e.state.figures(0)["available_margin_balance"] == -84000.0
    # the same as the Decimal reference of TV13
    assert D("-84000") == D(VECTORS["TV13"]["expected"]["available_margin_balance"])
    # a second buy that day at the same ratio adds to that contract
    financed_buy(e, 1000, at(date(2026, 1, 20), 10, 6))
    c = contracts_of(e)
    assert len(c) == 2 and c[new[0]][:2] == (3000, 30_000_000)


@pytest.mark.parametrize("day,kw,profile,want", [
    (date(2026, 1, 16), {}, {}, 0.8),  # before 2026-01-19: the 80% minimum
    (date(2026, 1, 19), {}, {}, 1.0),  # from 2026-01-19: 100%
    (date(2026, 1, 20), {}, {"fin_margin_ratio": "1.20"}, 1.2),  # the profile's
    (date(2026, 1, 20), {"margin_ratio": "1.5"}, {"fin_margin_ratio": "1.20"}, 1.5),  # event's
])
def test_the_margin_ratio_of_a_new_contract(day, kw, profile, want):
    e = engine(s7_doc(**profile))
    e.start(WALL)
    tick(e, "600007.SH", "10.00", at(day, 10))
    financed_buy(e, 100, at(day, 10, 1), **kw)
    c = contracts_of(e)
    assert c["F1"][2] == 0.8
    (other,) = [v for k, v in c.items() if k != "F1"]
    assert other[2] == want


def test_a_short_sale_takes_the_short_minimum_of_its_open_date():
    e = engine(s7_doc())
    e.start(WALL)
    tick(e, "600007.SH", "10.00", at(date(2024, 1, 26), 10))  # before 2024-01-29: 80%
    e.apply_account_event({"type": "fill", "account_id": "A", "symbol": "600007.SH",
                           "side": "short_sell", "qty": 100, "price": "10"},
                          at(date(2024, 1, 26), 10, 1))
    shorts = [v for k, v in contracts_of(e).items() if k != "F1"]
    assert shorts == [(100, 1_000_000, 0.8)]
    assert ref.default_margin_ratio("short", date(2024, 1, 29)) == D("1.00")


# ------------------------------------------------------------------ settling in order


def three_contracts_doc():
    return {"securities": [{"symbol": "600001.SH", "price": "10.00", "haircut": "0.5"},
                           {"symbol": "600002.SH", "price": "20.00", "haircut": "0.5"}],
            "accounts": [{"account_id": "A", "cash": "50000", "accrued_interest_fees": "300",
                          "positions": [
                {"symbol": "600002.SH", "kind": "financed", "qty": 1000,
                 "financed_cost": "20000", "contract_id": "C3", "open_date": "2026-03-02"},
                {"symbol": "600001.SH", "kind": "financed", "qty": 1000,
                 "financed_cost": "10000", "contract_id": "C1", "open_date": "2025-11-03"},
                {"symbol": "600001.SH", "kind": "financed", "qty": 500,
                 "financed_cost": "5000", "contract_id": "C2", "open_date": "2026-01-22"},
                {"symbol": "600002.SH", "kind": "short", "qty": 300,
                 "short_sell_amount": "6000", "contract_id": "S1", "open_date": "2025-12-01"},
                {"symbol": "600002.SH", "kind": "short", "qty": 200,
                 "short_sell_amount": "4200", "contract_id": "S2", "open_date": "2026-02-02"},
            ]}]}


def test_contracts_are_numbered_oldest_first_and_take_the_minimum_of_their_open_date():
    b = book_from_dict(three_contracts_doc())
    rows = {contract_name(b, j): j for j in range(b.n_positions)}
    order = sorted(rows, key=lambda k: int(b.pos_cid[rows[k]]))
    assert order == ["C1", "S1", "C2", "S2", "C3"]
    assert b.pos_margin_ratio[rows["C1"]] == 0.8 and b.pos_margin_ratio[rows["C2"]] == 1.0
    assert b.pos_margin_ratio[rows["S1"]] == 1.0


PRINCIPALS = [D(10000), D(5000), D(20000)]  # C1, C2, C3 in repayment order


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12_000), min_size=1, max_size=6))
def test_repaying_in_order_never_pays_a_later_contract_while_an_earlier_is_open(amounts):
    e = engine(three_contracts_doc())
    e.start(WALL)
    b = e.state.book
    interest, left = D(300), list(PRINCIPALS)
    for i, amt in enumerate(amounts):
        owed = interest + sum(left)
        ev = {"type": "repayment", "account_id": "A", "amount": str(amt), "source": "external",
              "event_id": f"r{i}"}
        if amt > owed:
            with pytest.raises(AccountEventError):
                e.apply_account_event(ev, WALL)
            continue
        e.apply_account_event(ev, WALL)
        interest, left = ref.repay_contracts(interest, left, D(amt))
        got = [D(int(b.pos_cost[contract_row(b, 0, c)])) / u.MONEY_SCALE
               for c in ("C1", "C2", "C3")]
        assert got == left
        assert D(int(b.accrued[0])) / u.MONEY_SCALE == interest
        for k in range(1, 3):  # a later contract repaid at all: every earlier one is closed
            if got[k] < PRINCIPALS[k]:
                assert all(g == 0 for g in got[:k])


def test_sell_to_repay_takes_the_named_contract_then_the_oldest_of_the_security():
    e = engine(three_contracts_doc())
    e.start(WALL)
    e.apply_account_event({"type": "fill", "account_id": "A", "symbol": "600001.SH",
                           "side": "sell_to_repay", "qty": 600, "price": "10",
                           "contract_id": "C2"}, WALL)
    c = contracts_of(e)
    # 500 shares of C2, then 100 of C1; 6,000 repays interest 300, then C2 5,000, C1 700
    assert c["C2"][:2] == (0, 0)
    assert c["C1"][:2] == (900, 9_300_000)
    assert int(e.state.book.accrued[0]) == 0
    e.apply_account_event({"type": "fill", "account_id": "A", "symbol": "600001.SH",
                           "side": "sell_to_repay", "qty": 900, "price": "12"}, WALL)
    c = contracts_of(e)
    # 10,800 repays C1 9,300, then the next in repayment order (C3) 1,500
    assert c["C1"][:2] == (0, 0) and c["C3"][:2] == (1000, 18_500_000)


def test_buy_to_cover_settles_the_oldest_short_first():
    e = engine(three_contracts_doc())
    e.start(WALL)
    e.apply_account_event({"type": "fill", "account_id": "A", "symbol": "600002.SH",
                           "side": "buy_to_cover", "qty": 400, "price": "20"}, WALL)
    c = contracts_of(e)
    assert c["S1"][:2] == (0, 0)
    assert c["S2"][:2] == (100, 2_100_000)  # half of its shares, half of its sale amount


def test_a_repayment_may_name_its_contract():
    e = engine(three_contracts_doc())
    e.start(WALL)
    e.apply_account_event({"type": "repayment", "account_id": "A", "amount": "1300",
                           "contract_id": "C3"}, WALL)
    c = contracts_of(e)
    assert c["C3"][1] == 19_000_000 and c["C1"][1] == 10_000_000
    with pytest.raises(AccountEventError) as ei:
        e.apply_account_event({"type": "repayment", "account_id": "A", "amount": "1",
                               "contract_id": "nope"}, WALL)
    assert ei.value.reason == "unknown_contract"


# ------------------------------------------------------------------ TV14: expiry


def tv14_engine(**kw):
    v = VECTORS["TV14"]
    return v, engine(book_from_vector(v), **kw)


def test_tv14_a_contract_open_at_the_close_of_its_term_end_expires_with_a_closing_plan():
    v, e = tv14_engine()
    e.start(WALL)
    fri, mon = date(2026, 12, 4), date(2026, 12, 7)
    assert v["at"] == "2026-12-04T15:00:00+08:00"
    ev = tick(e, "S9", "10.00", at(fri, 14, 59))
    assert kinds(ev) == []
    f = e.state.figures(0)
    x = v["expected"]
    assert f["tier"] == x["tier"] and D(repr(f["available_margin_balance"])) == D(
        x["available_margin_balance"])
    ev = tick(e, "S9", "10.00", at(mon, 9, 31))  # the clock passes 15:00 of the term end
    assert kinds(ev) == [("CONTRACT_EXPIRED", "FX", at(fri, 15))]
    (exp,) = [x for x in ev if x["kind"] == "CONTRACT_EXPIRED"]
    want = v["contract_expired"]
    plan = exp["plan"]
    assert plan["contract_id"] == want["contract_id"]
    assert [{k: o[k] for k in ("symbol", "side", "purpose", "qty")} for o in plan["orders"]] \
        == want["plan"]
    assert all(o["contract_id"] == "FX" for o in plan["orders"])
    assert plan["tier_after"] == want["tier_after"] and plan["ratio_after"] is None
    assert exp["tier"] == "NORMAL" and exp["term_end"] == "2026-12-04"
    assert exp["release_at"] == at(mon, 9, 15)  # made at the close: the next session
    # the exact reference agrees
    doc = book_from_vector(v)
    r = ref.expiry_plan(ref.RefBook(doc), doc["accounts"][0], "FX")
    assert r["plan"] == want["plan"] and r["tier_after"] == want["tier_after"]
    # sent once
    assert kinds(tick(e, "S9", "10.10", at(date(2026, 12, 8), 10))) == []


def test_tv14_through_a_fill_of_its_plan_the_account_has_no_debt():
    v, e = tv14_engine()
    e.start(WALL)
    tick(e, "S9", "10.00", at(date(2026, 12, 4), 14, 59))
    ev = tick(e, "S9", "10.00", at(date(2026, 12, 7), 9, 31))
    (o,) = next(x for x in ev if x["kind"] == "CONTRACT_EXPIRED")["plan"]["orders"]
    e.apply_account_event({"type": "fill", "account_id": "TV14", "symbol": o["symbol"],
                           "side": o["purpose"], "qty": o["qty"], "price": "10.00",
                           "contract_id": o["contract_id"]}, WALL)
    assert e.state.figures(0)["tier"] == "NO_DEBT"


def due_doc(term_end="2026-10-09"):
    return {"securities": [{"symbol": "600000.SH", "price": "10.00", "haircut": "0.6"}],
            "accounts": [{"account_id": "A", "cash": "100000", "positions": [
                {"symbol": "600000.SH", "kind": "financed", "qty": 10000,
                 "financed_cost": "100000", "contract_id": "K", "open_date": "2026-04-09",
                 "term_end": term_end}]}]}


def test_contract_due_goes_out_five_trading_days_before_the_term_end_closed_days_skipped():
    days, _, last = ref.xshg_days()
    term = date(2026, 10, 9)  # after the National Day closures
    # the 5th trading day before the term end: at its close, 5 trading days are left
    warn = term
    for _ in range(5):
        warn = max(x for x in days if x < warn)
    # 9-25 (Mid-Autumn) and 10-01..10-07 (National Day) are closed: 9-28, 9-29, 9-30, 10-08
    # and 10-09 are the 5 left after the close of 9-24
    assert warn == date(2026, 9, 24)
    e = engine(due_doc())
    e.start(WALL)
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 9, 23), 10))
    ev += tick(e, "600000.SH", "10.00", at(date(2026, 9, 24), 10))  # the close of 9-23 passed
    assert kinds(ev) == []
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 9, 28), 9, 31))
    assert kinds(ev) == [("CONTRACT_DUE", "K", at(warn, 15))]
    (due,) = [x for x in ev if x["kind"] == "CONTRACT_DUE"]
    assert due["term_end"] == "2026-10-09" and due["trading_days_left"] == 5
    assert due["contract"]["open_date"] == "2026-04-09" and "plan" not in due
    # not again; the expiry at the close of 10-09 (a holiday week in between)
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 10, 9), 14, 59))
    assert kinds(ev) == []
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 10, 12), 9, 31))
    assert kinds(ev) == [("CONTRACT_EXPIRED", "K", at(term, 15))]


def test_a_term_end_on_a_closed_day_expires_at_the_last_close_before_it():
    e = engine(due_doc("2026-10-04"))  # a National Day closure
    e.start(WALL)
    tick(e, "600000.SH", "10.00", at(date(2026, 9, 30), 10))
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 10, 8), 9, 31))
    assert kinds(ev) == [("CONTRACT_EXPIRED", "K", at(date(2026, 9, 30), 15))]


def test_an_extension_moves_the_term_end():
    e = engine(due_doc())
    e.start(WALL)
    tick(e, "600000.SH", "10.00", at(date(2026, 9, 24), 10))
    assert e.apply_account_event({"type": "extension", "account_id": "A", "contract_id": "K",
                                  "term_end": "2026-12-09"}, WALL) == []
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 10, 12), 9, 31))
    assert kinds(ev) == []  # neither due nor expired at the old term end
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 12, 3), 9, 31))
    assert kinds(ev) == [("CONTRACT_DUE", "K", at(date(2026, 12, 2), 15))]
    # an extension after the notice: due again at the new term end
    e.apply_account_event({"type": "extension", "account_id": "A", "contract_id": "K",
                           "term_end": "2027-01-08"}, WALL)
    b = e.state.book
    j = contract_row(b, 0, "K")
    assert date.fromordinal(int(b.pos_term_day[j])) == date(2027, 1, 8)
    assert b.pos_notice[j] == 0 and b.pos_margin_ratio[j] == 1.0


@pytest.mark.parametrize("ev,reason", [
    ({"term_end": "2026-09-01"}, "bad_value"),  # earlier
    ({"term_end": "2027-05-01"}, "out_of_range"),  # more than 6 months past the term end
    ({"term_end": "not a date"}, "bad_value"),
    ({}, "missing_field"),
    ({"contract_id": "nope", "term_end": "2026-12-01"}, "unknown_contract"),
    ({"contract_id": 5, "term_end": "2026-12-01"}, "bad_value"),
])
def test_a_bad_extension_is_refused_with_a_reason(ev, reason):
    e = engine(due_doc())
    e.start(WALL)
    with pytest.raises(AccountEventError) as ei:
        e.apply_account_event({"type": "extension", "account_id": "A", "contract_id": "K", **ev},
                              WALL)
    assert ei.value.reason == reason


def test_a_short_contract_expires_with_a_buy_to_cover():
    doc = {"securities": [{"symbol": "600000.SH", "price": "10.00", "haircut": "0.6"}],
           "accounts": [{"account_id": "A", "cash": "200000", "positions": [
               {"symbol": "600000.SH", "kind": "short", "qty": 3000,
                "short_sell_amount": "30000", "short_margin_ratio": "1.0",
                "open_date": "2026-06-04", "term_end": "2026-12-04"}]}]}
    e = engine(doc)
    e.start(WALL)
    tick(e, "600000.SH", "10.00", at(date(2026, 12, 4), 14))
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 12, 7), 9, 31))
    (exp,) = [x for x in ev if x["kind"] == "CONTRACT_EXPIRED"]
    assert exp["contract_id"] == "#1"
    assert [(o["side"], o["purpose"], o["qty"]) for o in exp["plan"]["orders"]] == [
        ("buy_to_cover", "buy_to_cover", 3000)]
    assert exp["plan"]["tier_after"] == "NO_DEBT"


# ------------------------------------------------------------------ restart


def test_a_restart_from_a_snapshot_keeps_the_contracts():
    e = engine(due_doc())
    e.start(WALL)
    tick(e, "600000.SH", "10.00", at(date(2026, 9, 24), 10))
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 9, 28), 9, 31))
    assert kinds(ev) == [("CONTRACT_DUE", "K", at(date(2026, 9, 24), 15))]
    financed_like = {"type": "fill", "account_id": "A", "symbol": "600000.SH",
                     "side": "financed_buy", "qty": 100, "price": "10", "contract_id": "NEW"}
    e.apply_account_event(financed_like, WALL)
    before = copy.deepcopy(contracts_of(e))
    meta, arrays = e.export_state()
    e2 = engine(due_doc())
    e2.restore_state(meta, arrays, WALL)
    assert contracts_of(e2) == before
    b, b2 = e.state.book, e2.state.book
    j, j2 = contract_row(b, 0, "NEW"), contract_row(b2, 0, "NEW")
    assert (b2.pos_term_day[j2], b2.pos_open_day[j2]) == (b.pos_term_day[j], b.pos_open_day[j])
    assert b2.pos_notice[contract_row(b2, 0, "K")] != 0  # the DUE is not sent again
    assert b2.next_cid == b.next_cid
    ev = tick(e2, "600000.SH", "10.00", at(date(2026, 10, 12), 9, 31))
    assert kinds(ev) == [("CONTRACT_EXPIRED", "K", at(date(2026, 10, 9), 15))]


def test_a_snapshot_without_contracts_still_restores():
    e = engine(due_doc())
    e.start(WALL)
    meta, arrays = e.export_state()
    old = {k: x for k, x in arrays.items()
           if k not in ("book_pos_cid", "book_pos_open_day", "book_pos_term_day",
                        "book_pos_notice", "contract_names")}
    e2 = engine(due_doc())
    e2.restore_state(meta, old, WALL)
    b = e2.state.book
    rows = [j for j in e2.account_events.ledger.rows(0) if b.pos_kind[j] != u.COLLATERAL]
    assert [contract_name(b, j) for j in rows] == ["#1"]
    assert b.pos_term_day[rows[0]] == 0  # without its dates: it never expires


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["financed", "short"]),
                          st.integers(min_value=1, max_value=50),
                          st.integers(min_value=0, max_value=2_000_000),
                          st.sampled_from(["0.5", "0.8", "1.0", "1.2"])),
                min_size=1, max_size=6),
       st.sampled_from(["7.77", "10.00", "12.34"]))
def test_the_available_margin_balance_deducts_every_contract_s_own_margin(rows, price):
    """Several contracts of both kinds in one security, each with its own ratio: the kernel's
    AMB is the exact reference's (float64 of exact amounts: well within a fen)."""
    positions = []
    for i, (kind, lots, cost, mr) in enumerate(rows):
        p = {"symbol": "600000.SH", "kind": kind, "qty": lots * 100, "contract_id": f"K{i}"}
        if kind == "financed":
            p.update(financed_cost=str(D(cost) / 100), fin_margin_ratio=mr)
        else:
            p.update(short_sell_amount=str(D(cost) / 100), short_margin_ratio=mr)
        positions.append(p)
    doc = {"securities": [{"symbol": "600000.SH", "price": price, "haircut": "0.55"}],
           "accounts": [{"account_id": "A", "cash": "10000", "positions": positions}]}
    got = MarginState(book_from_dict(doc)).figures(0)["available_margin_balance"]
    m = ref.amounts(ref.RefBook(doc), doc["accounts"][0], {"600000.SH": D(price)})
    want = ref.available_margin_balance(m, {"600000.SH": D(price)})
    assert abs(D(repr(got)) - want) <= D("0.005")


def test_a_notice_the_calendar_cannot_date_is_refused_loudly_not_guessed():
    """Near the last day the exchange calendar knows (2026-12-31 until 2027's closures are
    configured), a term end it knows still gets its CONTRACT_DUE; one past it is refused with
    CALENDAR_UNKNOWN (cause contract_due), never counted on weekdays."""
    from monitor.core.calendar import default_calendar

    last = default_calendar().last_day
    doc = due_doc("2026-12-31")
    doc["accounts"][0]["positions"].append(
        {"symbol": "600000.SH", "kind": "financed", "qty": 100, "financed_cost": "1000",
         "contract_id": "LATER", "open_date": "2026-07-10", "term_end": "2027-01-08"})
    e = engine(doc)
    e.start(WALL)
    if last != date(2026, 12, 31):
        pytest.skip(f"the calendar knows through {last}")
    tick(e, "600000.SH", "10.00", at(date(2026, 12, 28), 10))
    ev = tick(e, "600000.SH", "10.00", at(date(2026, 12, 29), 10))  # the close of 12-28
    assert kinds(ev) == [("CONTRACT_DUE", "K", at(date(2026, 12, 28), 15))]
    unknown = [x for x in ev if x["kind"] == "CALENDAR_UNKNOWN"]
    assert [x["cause"] for x in unknown] == ["contract_due"]
    assert e.calendar_health()["calendar_ok"] is False


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("sell"), st.integers(min_value=1, max_value=6).map(lambda k: k * 100),
              st.sampled_from(["6", "10", "14"])),
    st.tuples(st.just("repay"), st.integers(min_value=1, max_value=9_000), st.just(""))),
    min_size=1, max_size=8))
def test_sales_take_the_oldest_contract_s_shares_first_and_interest_comes_first(ops):
    """Sales of 600001.SH without a named contract and direct repayments, in any mix: the
    shares of the newer contract (C2) are never sold while the older (C1) owes and holds any,
    and every yuan goes to interest first. (The proceeds repay the contract whose shares were
    sold, as sell_to_repay says: so C2 may be repaid while C1 still owes, once C1's shares are
    gone.)"""
    e = engine(three_contracts_doc())
    e.start(WALL)
    b = e.state.book
    c1, c2 = contract_row(b, 0, "C1"), contract_row(b, 0, "C2")
    for i, (op, x, px) in enumerate(ops):
        if op == "sell":
            ev = {"type": "fill", "account_id": "A", "symbol": "600001.SH",
                  "side": "sell_to_repay", "qty": x, "price": px, "event_id": f"s{i}"}
        else:
            ev = {"type": "repayment", "account_id": "A", "amount": str(x),
                  "source": "external", "event_id": f"r{i}"}
        accrued = int(b.accrued[0])
        debt = sum(int(b.pos_cost[j]) for j in e.account_events.ledger.rows(0)
                   if b.pos_kind[j] == u.FINANCED)
        try:
            e.apply_account_event(ev, WALL)
        except AccountEventError:
            continue
        if int(b.accrued[0]) > 0:  # interest left: no principal was repaid
            assert sum(int(b.pos_cost[j]) for j in e.account_events.ledger.rows(0)
                       if b.pos_kind[j] == u.FINANCED) == debt
        assert int(b.accrued[0]) <= accrued
        if int(b.pos_qty[c2]) < 500:  # (shares of a repaid contract go last)
            assert int(b.pos_qty[c1]) == 0 or int(b.pos_cost[c1]) == 0
        if int(b.pos_qty[c1]) > 0:  # only C1's shares sold yet: C2 repaid only after C1
            assert int(b.pos_cost[c2]) == 5_000_000 or int(b.pos_cost[c1]) == 0
