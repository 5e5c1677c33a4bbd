"""Daily price limits by trading date (kernels/bands.py, margin-rules.md §5): every row of the
one table and the dates they take effect, listing ages on the XSHG calendar, and hypothesis
properties that the kernel's and the book's (the engine's) limit prices equal the exact
Decimal reference (tests/reference.py), which is written from the spec, not from the table."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal as D

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import bands as kb
from kernels import units as u
from monitor.book.load import book_from_dict
from monitor.core.calendar import default_calendar
from monitor.core.state import MarginState

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BEFORE, SWITCH = date(2026, 7, 3), date(2026, 7, 6)  # a Friday and the Monday of the switch
ORDINARY = date(2026, 3, 2)


def band(day, board=u.BOARD_MAIN, rw=False, typ=kb.TYPE_STOCK, cs=False, override=kb.DERIVE,
         age=0) -> int:
    return int(kb.band_bps(day, np.array([board], dtype=np.int8), np.array([rw]),
                           np.array([typ], dtype=np.int8), np.array([cs]),
                           np.array([override], dtype=np.int64),
                           np.array([age], dtype=np.int64))[0])


# (what, day, band_bps keyword arguments, expected band, the rule it exercises)
ROWS = [
    ("main ordinary", ORDINARY, {}, 1_000, (kb.MAIN, kb.ORDINARY, kb.EPOCH)),
    ("main ST before", BEFORE, {"rw": True}, 500, (kb.MAIN, kb.RISK_WARNING, kb.EPOCH)),
    ("main ST since", SWITCH, {"rw": True}, 1_000,
     (kb.MAIN, kb.RISK_WARNING, date(2026, 7, 6))),
    ("board st before", BEFORE, {"board": u.BOARD_ST}, 500, None),
    ("board st since", SWITCH, {"board": u.BOARD_ST}, 1_000, None),
    ("main new day 5", ORDINARY, {"age": 5}, kb.NO_LIMIT,
     (kb.MAIN, kb.NEW_LISTING, date(2023, 4, 10))),
    ("main new day 6", ORDINARY, {"age": 6}, 1_000, None),
    ("main new ST day 1", SWITCH, {"age": 1, "rw": True}, kb.NO_LIMIT, None),
    ("main new before 2023-04-10", date(2023, 4, 7), {"age": 1}, 1_000, None),
    ("main new on 2023-04-10", date(2023, 4, 10), {"age": 1}, kb.NO_LIMIT, None),
    ("chinext ordinary", ORDINARY, {"board": u.BOARD_CHINEXT}, 2_000,
     (kb.CHINEXT, kb.ORDINARY, kb.EPOCH)),
    ("chinext ST", BEFORE, {"board": u.BOARD_CHINEXT, "rw": True}, 2_000,
     (kb.CHINEXT, kb.RISK_WARNING, kb.EPOCH)),
    ("chinext new day 5", ORDINARY, {"board": u.BOARD_CHINEXT, "age": 5}, kb.NO_LIMIT,
     (kb.CHINEXT, kb.NEW_LISTING, date(2023, 4, 10))),
    ("chinext new day 6", ORDINARY, {"board": u.BOARD_CHINEXT, "age": 6}, 2_000, None),
    ("star ordinary", ORDINARY, {"board": u.BOARD_STAR}, 2_000, (kb.STAR, kb.ORDINARY, kb.EPOCH)),
    ("star ST", BEFORE, {"board": u.BOARD_STAR, "rw": True}, 2_000,
     (kb.STAR, kb.RISK_WARNING, kb.EPOCH)),
    ("star new day 1", ORDINARY, {"board": u.BOARD_STAR, "age": 1}, kb.NO_LIMIT,
     (kb.STAR, kb.NEW_LISTING, date(2023, 4, 10))),
    ("star new day 6", ORDINARY, {"board": u.BOARD_STAR, "age": 6}, 2_000, None),
    ("bse ordinary", ORDINARY, {"board": u.BOARD_BSE}, 3_000, (kb.BSE, kb.ORDINARY, kb.EPOCH)),
    ("bse ST", BEFORE, {"board": u.BOARD_BSE, "rw": True}, 3_000,
     (kb.BSE, kb.RISK_WARNING, kb.EPOCH)),
    ("bse new day 1", ORDINARY, {"board": u.BOARD_BSE, "age": 1}, kb.NO_LIMIT,
     (kb.BSE, kb.NEW_LISTING, kb.EPOCH)),
    ("bse new day 2", ORDINARY, {"board": u.BOARD_BSE, "age": 2}, 3_000, None),
    ("fund", ORDINARY, {"typ": kb.TYPE_FUND}, 1_000, (kb.FUND, kb.ORDINARY, kb.EPOCH)),
    ("fund new listing: no first-days rule", ORDINARY, {"typ": kb.TYPE_FUND, "age": 1}, 1_000,
     None),
    ("STAR-index fund (588xxx)", ORDINARY, {"typ": kb.TYPE_FUND, "cs": True}, 2_000,
     (kb.FUND_CS, kb.ORDINARY, kb.EPOCH)),
    ("159xxx ChiNext fund, limit_pct 0.20", ORDINARY, {"typ": kb.TYPE_FUND, "override": 2_000},
     2_000, None),
    ("explicit no limit", ORDINARY, {"override": kb.NO_LIMIT}, kb.NO_LIMIT, None),
    ("explicit band beats the table", SWITCH, {"rw": True, "override": 700}, 700, None),
]


@pytest.mark.parametrize("what, day, kw, want, rule", ROWS, ids=[r[0] for r in ROWS])
def test_each_row_of_the_table(what, day, kw, want, rule):
    assert band(day, **kw) == want


def test_every_rule_of_the_table_is_exercised():
    covered = {r[4] for r in ROWS if r[4] is not None}
    assert covered == {(r.board, r.case, r.since) for r in kb.BAND_RULES}
    assert all(r.note for r in kb.BAND_RULES)


def test_rule_dates():
    assert kb.rule_in_force(kb.MAIN, kb.RISK_WARNING, BEFORE).band_bp == 500
    assert kb.rule_in_force(kb.MAIN, kb.RISK_WARNING, SWITCH).band_bp == 1_000
    assert kb.rule_in_force(kb.MAIN, kb.NEW_LISTING, date(2023, 4, 9)) is None
    assert kb.changes_between(BEFORE, SWITCH) and not kb.changes_between(SWITCH, date(2026, 12, 1))
    assert kb.star_chinext_fund("588000.SH") and not kb.star_chinext_fund("159915.SZ")


def test_limit_prices_round_half_up_to_the_tick():
    prev = np.array([10_005, 10_005, 12_340, 1_234, 50_000], dtype=np.int64)
    bnd = np.array([500, 1_000, 1_000, 1_000, kb.NO_LIMIT], dtype=np.int64)
    tick = np.array([10, 10, 10, 1, 10], dtype=np.int64)
    down, up = np.zeros(5, dtype=np.int64), np.zeros(5, dtype=np.int64)
    kb.limit_prices(prev, bnd, tick, down, up)
    # 10.005·0.95 = 9.50475 -> 9.50; ·1.05 = 10.50525 -> 10.51; ·0.9 = 9.0045 -> 9.00;
    # ·1.1 = 11.0055 -> 11.01; a fund of 1.234: 1.1106 -> 1.111, 1.3574 -> 1.357
    assert down.tolist() == [9_500, 9_000, 11_110, 1_111, 10]
    assert up.tolist() == [10_510, 11_010, 13_570, 1_357, 50_000 * kb.NO_LIMIT_CEILING]


def test_listing_ages_count_xshg_trading_days():
    cal = default_calendar()
    # 2026-09-30 listing: 10-01..10-07 is the National Day closure (XSHG), so the fifth
    # trading day is 10-13 (09-30, 10-08, 10-09, 10-12, 10-13)
    listed = np.array([date(2026, 9, 30).toordinal()], dtype=np.int64)
    ages = {d: int(kb.listing_ages(listed, d.toordinal(), cal.days)[0])
            for d in (date(2026, 9, 30), date(2026, 10, 9), date(2026, 10, 13),
                      date(2026, 10, 14))}
    assert ages == {date(2026, 9, 30): 1, date(2026, 10, 9): 3, date(2026, 10, 13): 5,
                    date(2026, 10, 14): 6}
    days = ref.trading_days()
    for d in ages:
        assert ref.listing_age(date(2026, 9, 30), d, days) == ages[d]
    # unknown listing day, an old listing, a day before the listing
    old = np.array([0, date(2020, 1, 2).toordinal(), date(2026, 11, 2).toordinal()])
    assert kb.listing_ages(old, date(2026, 10, 30).toordinal(), cal.days).tolist() == [0, 0, 1]


# ---------------------------------------------------------------- against the reference

@SETTINGS
@given(st.integers(1, 2_000_000), st.integers(0, 10_000), st.sampled_from((1, 10)))
def test_kernel_limit_prices_equal_the_decimal_reference(prev, bp, tick):
    prev = prev * tick  # on the tick
    down, up = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    kb.limit_prices(np.array([prev], dtype=np.int64), np.array([bp], dtype=np.int64),
                    np.array([tick], dtype=np.int64), down, up)
    t = D(tick) / 1000
    want_down = ref.limit_price(D(prev) / 1000, D(bp) / 10_000, False, t)
    want_up = ref.limit_price(D(prev) / 1000, D(bp) / 10_000, True, t)
    assert D(int(down[0])) / 1000 == max(want_down, D(0))
    assert D(int(up[0])) / 1000 == want_up


BOARD_SYMBOLS = {"main": "600{:03d}.SH", "chinext": "300{:03d}.SZ", "star": "688{:03d}.SH",
                 "bse": "830{:03d}.BJ", "fund": "510{:03d}.SH", "fund_cs": "588{:03d}.SH",
                 "fund_cn": "159{:03d}.SZ"}


@st.composite
def securities(draw):
    out = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(sorted(BOARD_SYMBOLS)))
        fund = kind.startswith("fund")
        tick = D("0.001") if fund else D("0.01")
        prev = D(draw(st.integers(100, 200_000))) * tick
        sec = {"symbol": BOARD_SYMBOLS[kind].format(i), "price": str(prev),
               "prev_close": str(prev), "haircut": "0.5"}
        if fund:
            sec["type"] = draw(st.sampled_from(("fund", "etf")))
            if kind == "fund_cn" and draw(st.booleans()):
                sec["limit_pct"] = "0.20"
        else:
            if draw(st.booleans()):
                sec["risk_warning"] = True
            if kind == "main" and draw(st.booleans()):
                sec["board"] = "st"
            if draw(st.booleans()):
                sec["listing_date"] = (date(2026, 6, 20)
                                       + timedelta(days=draw(st.integers(0, 30)))).isoformat()
        if draw(st.integers(0, 9)) == 0:
            sec["limit_pct"] = draw(st.sampled_from((None, "none", "0.15", "0.0725")))
        out.append(sec)
    return out


@SETTINGS
@given(securities(), st.integers(0, 40))
def test_book_and_engine_bands_equal_the_reference(secs, offset):
    """Book.bands / MarginState (what the guard, planner and stress use) against
    reference.Security, on trading dates around the 2026-07-06 switch and listing ages."""
    day = date(2026, 6, 22) + timedelta(days=offset)
    doc = {"securities": secs, "accounts": [{"account_id": "A", "cash": "1"}]}
    state = MarginState(book_from_dict(doc), band_day=day)
    rb = ref.RefBook(doc, day)
    for s, sym in enumerate(state.book.symbols):
        r = rb.securities[sym]
        if r.band is None:
            assert not state.has_limit[s], (sym, day)
        else:
            assert state.has_limit[s], (sym, day)
            assert D(int(state.limit_down[s])) / 1000 == r.limit_down, (sym, day)
            assert D(int(state.limit_up[s])) / 1000 == r.limit_up, (sym, day)
    # moving the state's day in place gives the same as a state built on that day
    later = day + timedelta(days=7)
    down_before = state.limit_down
    state.set_band_day(later)
    fresh = MarginState(state.book, band_day=later)
    assert state.limit_down is down_before
    assert state.limit_down.tolist() == fresh.limit_down.tolist()
    assert state.limit_up.tolist() == fresh.limit_up.tolist()
    assert state.has_limit.tolist() == fresh.has_limit.tolist()
