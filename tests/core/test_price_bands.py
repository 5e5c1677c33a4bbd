"""Price bands by trading date in the live monitor (margin-rules.md §5, kernels/bands.py): the
tick guard checks each tick against the band of its own trading date, the engine's state
moves its bands with the clock, limit-lock detection and the planner's tradability use them
(a security without a limit is never locked), and the one-day stress moves a security without
a limit by the configurable shock. Also the book fields that feed the table."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from decimal import Decimal as D

import numpy as np
import orjson
import pytest
import reference as ref

from feeds.ticks import TickParser
from kernels import bands as kb
from monitor.book.load import book_from_dict
from monitor.book.universe import universe_of
from monitor.core.calendar import at_china
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState
from monitor.errors import BookError

BEFORE, SWITCH = date(2026, 7, 3), date(2026, 7, 6)


def ts(day: date, hh=10, mm=0) -> int:
    return at_china(day.toordinal(), hh * 3600 + mm * 60)


def book_doc() -> dict:
    """ST 600001 (risk flag), board-st 600002, a main-board listing of 2026-07-01 (five
    trading days: 07-01 .. 07-07), a STAR-index ETF and a 159xxx ChiNext ETF with limit_pct."""
    return {
        "securities": [
            {"symbol": "600001.SH", "price": "10.00", "haircut": "0", "risk_warning": True},
            {"symbol": "600002.SH", "price": "10.00", "haircut": "0", "board": "st"},
            {"symbol": "603999.SH", "price": "20.00", "haircut": "0.3",
             "listing_date": "2026-07-01"},
            {"symbol": "588000.SH", "price": "1.000", "haircut": "0.8", "type": "etf"},
            {"symbol": "159915.SZ", "price": "2.000", "haircut": "0.8", "type": "fund",
             "limit_pct": "0.20"},
            {"symbol": "510300.SH", "price": "4.000", "haircut": "0.8", "type": "fund"},
        ],
        "accounts": [{"account_id": "A", "cash": "1000", "positions": [
            {"symbol": "600001.SH", "kind": "collateral", "qty": 1000}]}],
    }


def guard(state: MarginState) -> TickParser:
    uni = universe_of(state.book, state.bands_for, state.bands.day)
    return TickParser(uni, clock=lambda: ts(date(2030, 1, 1)))


def tick(sym, price, t) -> bytes:
    return orjson.dumps({"symbol": sym, "price": price, "ts": t})


def test_st_tick_seven_percent_away_by_date():
    """The spec's switch: a main-board ST tick 7% away is rejected on 2026-07-03 (±5%) and
    accepted on 2026-07-06 (±10%), for the flag and for board `st` alike."""
    state = MarginState(book_from_dict(book_doc()), band_day=BEFORE)
    p = guard(state)
    for sym in ("600001.SH", "600002.SH"):
        assert len(p.parse(tick(sym, 10.70, ts(BEFORE)))) == 0
        assert len(p.parse(tick(sym, 9.30, ts(BEFORE, 11)))) == 0
        assert len(p.parse(tick(sym, 10.70, ts(SWITCH)))) == 1
        assert len(p.parse(tick(sym, 9.30, ts(SWITCH, 11)))) == 1
    assert p.rejections.counts["out_of_band"] == 4


def test_one_message_spanning_the_switch():
    state = MarginState(book_from_dict(book_doc()), band_day=SWITCH)
    p = guard(state)
    msg = orjson.dumps([{"symbol": "600001.SH", "price": 10.40, "ts": ts(BEFORE)},
                        {"symbol": "600001.SH", "price": 10.60, "ts": ts(BEFORE, 11)},
                        {"symbol": "600001.SH", "price": 10.70, "ts": ts(SWITCH)},
                        # back to the earlier date (another symbol), a malformed tick between
                        {"symbol": "600002.SH", "price": 10.40, "ts": ts(BEFORE)},
                        {"symbol": "600002.SH", "price": 10.60, "ts": ts(BEFORE, 11)},
                        {"symbol": 5, "price": 10.0},
                        {"symbol": "600002.SH", "price": 10.70, "ts": ts(SWITCH)}])
    batch = p.parse(msg)
    assert batch.price.tolist() == [10_400, 10_700, 10_400, 10_700]
    assert p.rejections.counts["out_of_band"] == 2
    assert p.rejections.counts["malformed"] == 1
    assert p.universe.band_day == SWITCH.toordinal()


def test_new_listing_has_no_limit_for_five_trading_days():
    state = MarginState(book_from_dict(book_doc()), band_day=date(2026, 7, 7))
    s = state.book.symbol_index["603999.SH"]
    assert not state.has_limit[s]
    p = guard(state)
    # day 5 (07-07): +50% is accepted; day 6 (07-08): ±10% again
    assert len(p.parse(tick("603999.SH", 30.00, ts(date(2026, 7, 7))))) == 1
    assert len(p.parse(tick("603999.SH", 30.00, ts(date(2026, 7, 8))))) == 0
    assert len(p.parse(tick("603999.SH", 21.99, ts(date(2026, 7, 8), 11)))) == 1
    state.set_band_day(date(2026, 7, 8))
    assert state.has_limit[s] and state.limit_up[s] == 22_000


def test_funds_bands_and_tick():
    state = MarginState(book_from_dict(book_doc()), band_day=SWITCH)
    b = state.book.symbol_index
    # STAR ETF ±20% (588xxx), 159xxx with limit_pct 0.20, a plain ETF ±10%, 0.001 tick
    assert (state.limit_down[b["588000.SH"]], state.limit_up[b["588000.SH"]]) == (800, 1_200)
    assert (state.limit_down[b["159915.SZ"]], state.limit_up[b["159915.SZ"]]) == (1_600, 2_400)
    assert (state.limit_down[b["510300.SH"]], state.limit_up[b["510300.SH"]]) == (3_600, 4_400)
    assert state.bands.tick[b["510300.SH"]] == 1


def test_engine_bands_follow_the_clock():
    """The engine's clock (the ticks' exchange time) moves the state's bands: the planner and
    the stress see the band of the trading date."""
    state = MarginState(book_from_dict(book_doc()), live=True, band_day=date(2026, 1, 5))
    eng = Engine(state, EngineConfig(clock="tape"))
    eng.start(ts(BEFORE))
    s = state.book.symbol_index["600001.SH"]
    eng.add_ticks(np.array([s], dtype=np.int32), np.array([10_100]), np.array([ts(BEFORE)]))
    eng.cycle(ts(BEFORE))
    assert state.bands.day == BEFORE and state.limit_up[s] == 10_500
    eng.add_ticks(np.array([s], dtype=np.int32), np.array([10_200]), np.array([ts(SWITCH)]))
    eng.cycle(ts(SWITCH))
    assert state.bands.day == SWITCH and state.limit_up[s] == 11_000
    assert state.limit_down[s] == 9_000


def lock_doc(st_price: str, new_price: str) -> dict:
    """An account below its target holding an ST stock (prev 10.00) and a new listing."""
    return {
        "securities": [
            {"symbol": "600001.SH", "price": st_price, "prev_close": "10.00", "haircut": "0",
             "risk_warning": True},
            {"symbol": "603999.SH", "price": new_price, "prev_close": "20.00",
             "haircut": "0.3", "listing_date": "2026-07-01"},
        ],
        "accounts": [{"account_id": "L", "cash": "0", "positions": [
            {"symbol": "600001.SH", "kind": "financed", "qty": 10000,
             "financed_cost": "90000", "fin_margin_ratio": "1.0"},
            {"symbol": "603999.SH", "kind": "financed", "qty": 1000,
             "financed_cost": "20000", "fin_margin_ratio": "1.0"}]}],
    }


def test_limit_lock_by_date_and_never_without_a_limit():
    # ST at 9.50: locked at limit-down on 07-03 (±5%), tradable on 07-06 (±10%); the new
    # listing at 8.00 (−60%) is never locked (no limit in its first five trading days)
    doc = lock_doc("9.50", "8.00")
    for day, sold in ((BEFORE, {"603999.SH"}), (SWITCH, {"600001.SH", "603999.SH"})):
        state = MarginState(book_from_dict(doc), band_day=day)
        orders, _, _ = state.plan(0)  # R < 1: everything tradable is sold
        assert {o["symbol"] for o in orders} == sold, day
        r = ref.RefBook(doc, day).evaluate(doc["accounts"][0])
        assert [(o["symbol"], o["qty"]) for o in orders] == [
            (o["symbol"], o["qty"]) for o in r["plan"]], day
    # the desk's flag agrees
    state = MarginState(book_from_dict(doc), band_day=BEFORE)
    assert state.has_limit.tolist() == [True, False]


@pytest.mark.parametrize("shock_bp", [kb.DEFAULT_UNLIMITED_SHOCK_BP, 5_000])
def test_stress_moves_a_security_without_a_limit_by_the_shock(shock_bp):
    doc = lock_doc("9.80", "30.00")
    state = MarginState(book_from_dict(doc), band_day=BEFORE, unlimited_shock_bp=shock_bp)
    got = state.stress(0)["stress_ratio"]
    shock = D(shock_bp) / 10_000
    # longs: the ST stock to its limit-down 9.50, the new listing to 30·(1 − shock)
    A = 10000 * D("9.50") + 1000 * (D(30) * (1 - shock)).quantize(D("0.01"))
    L = D(110_000)
    assert abs(D(repr(got)) - A / L) <= D("0.0000005")
    if shock_bp == kb.DEFAULT_UNLIMITED_SHOCK_BP:
        r = ref.RefBook(doc, BEFORE).evaluate(doc["accounts"][0])
        assert abs(D(repr(got)) - r["stress_ratio"]) <= D("0.0000005")


def test_evaluate_cli_date_and_shock(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(lock_doc("9.80", "30.00")))

    def stress(*extra):
        out = subprocess.run([sys.executable, "-m", "monitor", "evaluate", str(path),
                              "--stress", *extra], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.splitlines()[0])["stress_ratio"]

    before, since = stress("--date", "2026-07-03"), stress("--date", "2026-07-06")
    assert before > since  # the ST stock's limit-down falls from 9.50 to 9.00
    assert stress("--date", "2026-07-03", "--no-limit-shock", "0.5") < before
    bad = subprocess.run([sys.executable, "-m", "monitor", "evaluate", str(path), "--date",
                          "2026-13-01"], capture_output=True, text=True)
    assert bad.returncode == 2 and "evaluate" in bad.stderr


@pytest.mark.parametrize("field, value, needle", [
    ("type", "bond", "not one of"),
    ("listing_date", "2026-02-30", "not an ISO date"),
    ("limit_pct", "1.5", "not a band"),
    ("limit_pct", "0", "not a band"),
    ("limit_pct", "0.123456", "not a band"),
    ("risk_warning", "maybe", "not a boolean"),
])
def test_bad_band_fields_are_rejected_with_a_reason(field, value, needle):
    doc = book_doc()
    doc["securities"][0][field] = value
    with pytest.raises(BookError) as e:
        book_from_dict(doc)
    assert any(p.field == field and needle in p.message for p in e.value.problems)


def test_band_fields_in_csv_tables(tmp_path):
    from monitor.book.load import load_book
    (tmp_path / "securities.csv").write_text(
        "symbol,price,haircut,risk_warning,listing_date,type,limit_pct\n"
        "600001.SH,10.00,0,true,,,\n"
        "603999.SH,20.00,0.3,,2026-07-01,,\n"
        "159915.SZ,2.000,0.8,,,fund,0.20\n"
        "600003.SH,5.00,0.5,,,,none\n")
    (tmp_path / "accounts.csv").write_text("account_id,cash\nA,100\n")
    (tmp_path / "positions.csv").write_text("account_id,symbol,kind,qty\nA,600001.SH,"
                                            "collateral,100\n")
    book = load_book(tmp_path)
    state = MarginState(book, band_day=date(2026, 7, 3))
    assert state.bands.band_bp.tolist() == [500, kb.NO_LIMIT, 2_000, kb.NO_LIMIT]
    assert state.bands.tick.tolist() == [10, 10, 1, 10]
