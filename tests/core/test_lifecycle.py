"""The margin-call lifecycle per profile, on the engine's clock (margin-rules.md §6): the three
worked cases, the clock of a replay, the calendar's refusals and closures, release times of
plans made outside a session, and the engine against the exact reference on random paths."""

from __future__ import annotations

import copy
from datetime import date, datetime, timedelta
from decimal import Decimal as D

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import units as u
from monitor.book.load import book_from_dict
from monitor.core.calendar import CHINA, TradingCalendar, default_calendar
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState
from monitor.errors import CalendarUnknown

WALL = int(datetime(2031, 5, 5, 3, 0, tzinfo=CHINA).timestamp()) * 10**9  # any other time


def at(d: date, hh: int, mm: int = 0, ss: int = 0) -> int:
    return int(datetime(d.year, d.month, d.day, hh, mm, ss, tzinfo=CHINA).timestamp()) * 10**9


def worked_doc(basis="close", days=1, cure="1.30", target="1.45", price="13.50") -> dict:
    """One account, R = price / 10 (10000 financed shares against 100000 of debt)."""
    profile = {"target": target, "call_basis": basis, "call_days": days}
    if cure is not None:
        profile["cure_line"] = cure
    return {
        "securities": [{"symbol": "600000.SH", "price": price, "haircut": "0.7",
                        "prev_close": price}],
        "profiles": {"default": profile},
        "accounts": [{"account_id": "A", "cash": "0", "positions": [
            {"symbol": "600000.SH", "kind": "financed", "qty": 10000,
             "financed_cost": "100000", "fin_margin_ratio": "1"}]}]}


def engine(doc, clock="tape", **kw) -> Engine:
    return Engine(MarginState(book_from_dict(doc), live=True),
                  EngineConfig(run_id="w", clock=clock, **kw))


def tick(e, price: str, t: int, now: int = WALL) -> list[dict]:
    e.add_ticks(np.array([0]), np.array([int(D(price) * u.MONEY_SCALE)]), np.array([t]))
    return e.cycle(now)


def calls(events) -> list[tuple]:
    return [(x["kind"], x["ts_event"], x["call"]["deadline"]) for x in events
            if x["kind"].startswith("CALL_")]


WED, THU, FRI = date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)


# ------------------------------------------------------------------------ the worked cases
# close basis, cure line 1.30, target 1.45, T+1 (margin-rules.md §6)

def test_an_intraday_low_that_closes_above_the_line_opens_no_call():
    e = engine(worked_doc())
    ev = e.start(WALL)
    ev += tick(e, "12.50", at(WED, 10))  # R = 1.25 intraday: MARGIN_CALL, but close basis
    ev += tick(e, "13.50", at(WED, 14, 59))  # closes at 1.35
    ev += tick(e, "13.50", at(THU, 9, 30))  # the next day: the close of WED was judged
    e.advance_clock(at(FRI, 16))
    ev += e.cycle(WALL)
    assert [x["tier"] for x in ev if x["kind"] == "TIER_CHANGE"] == [
        "WARNING", "MARGIN_CALL", "WARNING"]
    assert calls(ev) == []


def test_a_close_below_the_line_then_the_cure_line_at_the_next_close_is_cured():
    e = engine(worked_doc())
    ev = e.start(WALL)
    ev += tick(e, "12.50", at(WED, 14, 59))  # closes at 1.25
    ev += tick(e, "13.60", at(THU, 10))  # 1.36 intraday cures nothing: judged at the close
    assert calls(ev) == [("CALL_ISSUED", at(WED, 15), "2026-11-19")]
    issued = [x for x in ev if x["kind"] == "CALL_ISSUED"][0]
    assert issued["call"]["basis"] == "close" and issued["call"]["days"] == 1
    assert issued["call"]["deadline_ns"] == at(THU, 15)
    ev = tick(e, "13.20", at(THU, 14, 59))  # 1.32 at the close of T+1
    ev += tick(e, "13.20", at(FRI, 9, 30))
    assert calls(ev) == [("CALL_CURED", at(THU, 15), "2026-11-19")]
    assert e.calls.open_accounts() == []


def test_below_the_cure_line_at_the_due_close_expires_with_a_plan_to_the_target():
    e = engine(worked_doc())
    e.start(WALL)
    tick(e, "12.50", at(WED, 14, 59))
    tick(e, "13.60", at(THU, 10))
    ev = tick(e, "12.80", at(THU, 14, 59))  # 1.28 at the close of T+1
    assert calls(ev) == []
    ev = tick(e, "12.90", at(FRI, 9, 31))  # the close is judged on the prices before it
    assert calls(ev) == [("CALL_EXPIRED", at(THU, 15), "2026-11-19")]
    exp = ev[[x["kind"] for x in ev].index("CALL_EXPIRED")]
    # made at the close, outside a session: released at the next session's start
    assert exp["release_at"] == at(FRI, 9, 15)
    # sized to the profile's target (1.45), as the exact reference plans it at 12.80
    doc = worked_doc()
    r = ref.evaluate_account(ref.RefBook(doc), doc["accounts"][0], {"600000.SH": "12.80"})
    assert r["lines"]["target"] == D("1.45")
    plan = exp["plan"]
    assert [(o["symbol"], o["side"], o["qty"]) for o in plan["orders"]] == [
        (o["symbol"], o["side"], o["qty"]) for o in r["plan"]] == [("600000.SH", "sell", 3000)]
    assert ref.pct(r["assets_after"], r["liabilities_after"]) == D("145.45")
    assert plan["ratio_after"] >= 1.45 and plan["priced_ns"] == at(THU, 15)


def test_the_forced_liquidation_line_stays_intraday_under_a_close_basis():
    e = engine(worked_doc())
    e.start(WALL)
    ev = tick(e, "11.00", at(WED, 10))  # R = 1.10 < 1.15
    fl = [x for x in ev if x["kind"] == "TIER_CHANGE"][-1]
    assert fl["tier"] == "FORCED_LIQUIDATION" and "plan" in fl
    assert "release_at" not in fl  # 10:00, continuous trading: the orders go now
    assert calls(ev) == []


def test_intraday_basis_cures_at_the_cure_line_at_once():
    e = engine(worked_doc(basis="intraday", days=2))
    e.start(WALL)
    ev = tick(e, "12.50", at(WED, 10))
    assert calls(ev) == [("CALL_ISSUED", at(WED, 10), "2026-11-20")]
    assert calls(tick(e, "12.99", at(WED, 10, 1))) == []  # 1.299
    ev = tick(e, "13.00", at(WED, 10, 5))  # 1.30: the cure line, though not yet the target
    assert calls(ev) == [("CALL_CURED", at(WED, 10, 5), "2026-11-20")]


def test_without_profile_fields_the_call_is_cured_at_the_target_and_due_at_t_plus_two():
    doc = worked_doc()
    del doc["profiles"]
    e = engine(doc)
    e.start(WALL)
    assert calls(tick(e, "12.50", at(WED, 10))) == [("CALL_ISSUED", at(WED, 10), "2026-11-20")]
    assert calls(tick(e, "14.99", at(WED, 11))) == []  # 1.499 < target 1.50
    assert calls(tick(e, "15.00", at(WED, 11, 1)))[0][0] == "CALL_CURED"


# ------------------------------------------------------------------------ the clock

def replay(now: int) -> list[dict]:
    """Ticks of 2026-09-30 (a Wednesday before the National Day closure)."""
    e = engine(worked_doc(basis="intraday", days=2, cure=None, target="1.50", price="14.00"))
    d = date(2026, 9, 30)
    out = e.start(now)
    for i, (p, hh, mm) in enumerate([("13.80", 9, 31), ("12.40", 10, 15), ("11.40", 13, 40),
                                     ("12.00", 14, 59)]):
        out += tick(e, p, at(d, hh, mm), now + i)
    e.advance_clock(at(date(2026, 10, 9), 16))
    out += e.cycle(now + 10)
    return out


def test_a_replayed_day_opens_its_calls_due_on_its_own_calendar_whatever_the_wall_clock():
    a, b = replay(WALL), replay(int(datetime(2026, 12, 4, 12, tzinfo=CHINA).timestamp()) * 10**9)
    issued = [x for x in a if x["kind"] == "CALL_ISSUED"]
    assert [x["call"]["deadline"] for x in issued] == ["2026-10-09"]
    assert issued[0]["call"]["issued_ns"] == at(date(2026, 9, 30), 10, 15)
    assert [x["kind"] for x in a if x["kind"].startswith("CALL_")] == [
        "CALL_ISSUED", "CALL_EXPIRED"]
    assert a[0]["ts_event"] == at(date(2026, 9, 30), 9, 31)  # start-up: the tape's first time

    def strip(evs):
        return [{k: v for k, v in x.items() if k != "ts_published"} for x in evs]

    assert strip(a) == strip(b)


def test_ticks_of_one_batch_across_the_close_are_split_at_the_close():
    e = engine(worked_doc())
    e.start(WALL)
    e.add_ticks(np.array([0, 0]), np.array([12_500, 14_000]),
                np.array([at(WED, 14, 59), at(THU, 10)]))
    ev = e.cycle(WALL)
    assert calls(ev) == [("CALL_ISSUED", at(WED, 15), "2026-11-19")]  # on 12.50, not 14.00
    assert ev[[x["kind"] for x in ev].index("CALL_ISSUED")]["ratio"] == 1.25
    assert e.clock_ns == at(THU, 10) and e.market() == "open"


def test_live_clock_before_the_first_tick_is_the_processing_time():
    e = engine(worked_doc(basis="intraday", price="12.50"), clock="ticks")
    ev = e.start(at(WED, 10))  # already at MARGIN_CALL: the call is issued at start
    assert calls(ev) == [("CALL_ISSUED", at(WED, 10), "2026-11-19")]
    ev = e.cycle(at(THU, 15, 2))  # no tick yet: the processing time runs the clock
    assert calls(ev) == [("CALL_EXPIRED", at(THU, 15), "2026-11-19")]
    tick(e, "12.60", at(THU, 15, 3), at(THU, 15, 3))
    assert e.cycle(at(date(2026, 11, 23), 16)) == []  # a tick set it: wall time no longer


# ------------------------------------------------------------------------ the calendar

DEC30 = date(2026, 12, 30)


def test_a_deadline_past_the_known_days_is_refused_loudly_until_closures_are_added():
    e = engine(worked_doc(basis="intraday", days=2))
    e.start(WALL)
    tick(e, "13.50", at(DEC30, 9, 30))
    ev = tick(e, "12.50", at(DEC30, 10))
    kinds = [x["kind"] for x in ev]
    assert kinds == ["TIER_CHANGE", "CALL_ISSUED", "CALENDAR_UNKNOWN"]
    call = ev[1]["call"]
    assert call["state"] == "OPEN" and call["deadline"] is None and call["deadline_ns"] is None
    unknown = ev[2]
    assert unknown["needed"] == "2027-01-01" and unknown["cause"] == "call_deadline"
    assert unknown["accounts"] == ["A"] and unknown["known"]["last"] == "2026-12-31"
    h = e.calendar_health()
    assert h["calendar_ok"] is False and "2027-01-01" in h["calendar_reason"]
    e.advance_clock(at(date(2026, 12, 31), 16))  # the last known close passes: nothing expires
    ev = e.cycle(WALL)
    assert calls(ev) == [] and e.calls.get(0).deadline is None
    # the operator adds 2027's closures: the call gets its due day
    cal = TradingCalendar.xshg([date(2027, 1, 1)])
    ev = e.set_calendar(cal, WALL)
    assert [(x["kind"], x["call"]["deadline"]) for x in ev] == [("CALL_DEADLINE", "2027-01-04")]
    assert e.calendar_health()["calendar_ok"] is True
    e.advance_clock(at(date(2027, 1, 4), 15, 2))
    assert calls(e.cycle(WALL)) == [("CALL_EXPIRED", at(date(2027, 1, 4), 15), "2027-01-04")]


def test_with_next_years_closures_configured_the_call_gets_its_due_day():
    cal = TradingCalendar.xshg([date(2027, 1, 1), date(2027, 1, 4)])
    e = engine(worked_doc(basis="intraday", days=2), calendar=cal)
    e.start(WALL)
    ev = tick(e, "12.50", at(DEC30, 10))
    assert calls(ev) == [("CALL_ISSUED", at(DEC30, 10), "2027-01-05")]
    assert "CALENDAR_UNKNOWN" not in [x["kind"] for x in ev]
    assert e.calendar_health()["calendar_ok"] is True


def test_a_clock_past_the_known_days_is_flagged_and_judges_no_close():
    e = engine(worked_doc())
    e.start(WALL)
    ev = tick(e, "13.00", at(date(2027, 1, 5), 10))
    unknown = [x for x in ev if x["kind"] == "CALENDAR_UNKNOWN"]
    assert [x["cause"] for x in unknown] == ["clock"] and unknown[0]["needed"] == "2027-01-05"
    assert e.market() == "unknown"
    h = e.calendar_health()
    assert not h["calendar_ok"] and "2027-01-05" in h["calendar_reason"]
    assert not [x for x in tick(e, "13.10", at(date(2027, 1, 5), 10, 1))
                if x["kind"] == "CALENDAR_UNKNOWN"]  # announced once


def test_an_undated_call_survives_a_snapshot():
    e = engine(worked_doc(basis="intraday", days=2))
    e.start(WALL)
    tick(e, "12.50", at(DEC30, 10))
    meta, arrays = e.export_state()
    f = engine(worked_doc(basis="intraday", days=2))
    f.restore_state(meta, copy.deepcopy(arrays), WALL)
    c = f.calls.get(0)
    assert c is not None and c.deadline is None and c.days == 2
    assert f.clock_ns == at(DEC30, 10)
    assert f.calendar_health()["calendar_ok"] is False


# ------------------------------------------------------------------------ sessions

@pytest.mark.parametrize(("t", "release"), [
    (at(WED, 10), None),  # continuous trading
    (at(WED, 9, 20), None),  # opening call auction
    (at(WED, 14, 58), None),  # closing call auction
    (at(WED, 9, 27), at(WED, 9, 30)),  # orders wait for the open
    (at(WED, 11, 45), at(WED, 13)),  # lunch
    (at(WED, 8), at(WED, 9, 15)),
    (at(FRI, 15, 30), at(date(2026, 11, 23), 9, 15)),  # Friday after the close: Monday
    (at(date(2026, 9, 30), 20), at(date(2026, 10, 8), 9, 15)),  # over the National Day
])
def test_forced_liquidation_plans_made_outside_a_session_carry_release_at(t, release):
    e = engine(worked_doc())
    e.start(WALL)
    ev = tick(e, "11.00", t)
    fl = [x for x in ev if x.get("tier") == "FORCED_LIQUIDATION"][0]
    assert fl.get("release_at") == release
    assert fl["plan"]["priced_ns"] == t


# ------------------------------------------------------------------------ against the reference

DAYS, FIRST, LAST = ref.xshg_days()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), basis=st.sampled_from(["intraday", "close"]),
       cure=st.sampled_from([None, "1.30", "1.40"]), n=st.integers(1, 3),
       start=st.sampled_from([date(2026, 9, 24), date(2026, 11, 16), date(2026, 12, 24)]))
def test_engine_calls_match_the_exact_reference(seed, basis, cure, n, start):
    rng = np.random.default_rng(seed)
    doc = worked_doc(basis=basis, days=n, cure=cure, target="1.50", price="13.50")
    e = engine(doc)
    t0 = at(start, 9, 0)
    times = np.sort(rng.integers(0, 12 * 86400, int(rng.integers(3, 40)))) * 10**9 + t0
    prices = rng.integers(1000, 1601, times.shape[0]) / 100
    got = e.start(WALL)
    for t, p in zip(times.tolist(), prices.tolist(), strict=True):
        got += tick(e, f"{p:.2f}", t)
    end = t0 + 14 * 86400 * 10**9
    e.advance_clock(end)
    got += e.cycle(WALL)
    got = [(f"TIER:{x['tier']}" if x["kind"] == "TIER_CHANGE" else x["kind"], x["ts_event"],
            x["call"]["deadline"] if "call" in x else None) for x in got
           if x["kind"] == "TIER_CHANGE" or x["kind"].startswith("CALL_")]

    def china(ns):
        return datetime.fromtimestamp(ns / 1e9, CHINA)

    rb = ref.RefBook(doc)
    lines, terms = rb.lines(doc["accounts"][0]), rb.calls(doc["accounts"][0])
    points = [(china(times[0]), D(135000), D(100000))]  # the start: at the first tick's time
    points += [(china(t), D(round(p * 100)) * 100, D(100000))
               for t, p in zip(times.tolist(), prices.tolist(), strict=True)]
    want = ref.call_lifecycle(points, lines, basis=terms["call_basis"],
                              cure=terms["cure_line"], n=terms["call_days"], days=DAYS,
                              last=LAST, end=china(end))
    want = [(k, int(t.timestamp()) * 10**9, d.isoformat() if d else None) for k, t, d in want]
    assert [(k, d) for k, _, d in got] == [(k, d) for k, _, d in want]
    assert [t for _, t, _ in got] == [t for _, t, _ in want]


def test_the_calendar_agrees_with_the_reference_on_every_day_of_two_years():
    cal = default_calendar()
    d = date(2025, 1, 1)
    while d <= date(2026, 12, 31):
        for n in (1, 2, 3):
            want = ref.due_day(d, n, DAYS, LAST)
            try:
                got = date.fromordinal(cal.add_days(d.toordinal(), n))
            except CalendarUnknown:
                got = None
            assert got == want, (d, n)
        d += timedelta(days=1)


def test_the_first_tick_replaces_the_stand_in_processing_time():
    e = engine(worked_doc(basis="intraday"), clock="ticks")
    e.start(WALL)  # a live start: the processing time stands in
    assert e.clock_ns == WALL
    ev = tick(e, "12.50", at(WED, 10), WALL + 1)
    assert e.clock_ns == at(WED, 10)
    assert calls(ev) == [("CALL_ISSUED", at(WED, 10), "2026-11-19")]
    tick(e, "12.40", at(WED, 9))  # older: the clock only moves forward now
    assert e.clock_ns == at(WED, 10)


@pytest.mark.parametrize("bad", [{"clock_ns": "soon"}, {"clock_ns": -1}, {"ticked": "yes"},
                                 {"call_basis": np.array([7], dtype=np.int8)},
                                 {"call_deadline_day": np.array([-5])}])
def test_a_snapshot_with_a_malformed_clock_or_call_is_refused(bad):
    e = engine(worked_doc(basis="intraday", days=2))
    e.start(WALL)
    tick(e, "12.50", at(DEC30, 10))
    meta, arrays = e.export_state()
    meta, arrays = dict(meta), dict(arrays)
    for k, v in bad.items():
        (arrays if isinstance(v, np.ndarray) else meta)[k] = v
    with pytest.raises(ValueError):
        engine(worked_doc(basis="intraday", days=2)).restore_state(meta, arrays, WALL)
