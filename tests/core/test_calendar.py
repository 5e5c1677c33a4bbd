"""The exchange calendar and the trading sessions (margin-rules.md §6): XSHG trading days,
configured closures beyond its coverage, refusals that never guess, and the market's state."""

from __future__ import annotations

from datetime import date, datetime

import pytest
import reference as ref

from monitor.core.calendar import CHINA, TradingCalendar, china_day, close_ns, default_calendar
from monitor.core.calls import MarginCalls
from monitor.core.sessions import in_session, market_state, release_at
from monitor.errors import CalendarUnknown


def at(d: date, hh: int, mm: int = 0) -> int:
    return int(datetime(d.year, d.month, d.day, hh, mm, tzinfo=CHINA).timestamp()) * 10**9


def due(cal, d: date, n: int = 2) -> date:
    return date.fromordinal(cal.add_days(d.toordinal(), n))


def test_2026_has_19_weekday_closures():
    cal = default_calendar()
    days = [date.fromordinal(o) for o in range(date(2026, 1, 1).toordinal(),
                                                date(2026, 12, 31).toordinal() + 1)]
    closed = [d for d in days if d.weekday() < 5 and not cal.is_trading_day(d.toordinal())]
    assert len(closed) == 19
    assert date(2026, 10, 1) in closed and date(2026, 2, 16) in closed


@pytest.mark.parametrize(("issued", "due_on"), [
    (date(2026, 9, 30), date(2026, 10, 9)),  # over the National Day closure
    (date(2026, 2, 13), date(2026, 2, 25)),  # over the Spring Festival
    (date(2026, 11, 20), date(2026, 11, 24)),  # a weekend
])
def test_t_plus_2_counts_trading_days(issued, due_on):
    cal = default_calendar()
    assert due(cal, issued) == due_on
    days, _, last = ref.xshg_days()
    assert ref.due_day(issued, 2, days, last) == due_on
    calls = MarginCalls(cal, 2)
    assert calls.deadline_for(at(issued, 10)) == (due_on, close_ns(due_on.toordinal()))


def test_a_call_issued_2026_12_30_needs_2027_and_is_refused_not_guessed():
    cal = default_calendar()
    assert cal.last_day == date(2026, 12, 31)
    with pytest.raises(CalendarUnknown) as e:
        cal.add_days(date(2026, 12, 30).toordinal(), 2)
    assert e.value.day == date(2027, 1, 1) and e.value.last == date(2026, 12, 31)
    assert "2027-01-01 is needed" in str(e.value)
    days, _, last = ref.xshg_days()
    assert ref.due_day(date(2026, 12, 30), 2, days, last) is None


def test_closures_extend_the_calendar_through_their_year():
    cal = TradingCalendar.xshg([date(2027, 1, 1), date(2027, 2, 10)])
    assert cal.last_day == date(2027, 12, 31)
    assert due(cal, date(2026, 12, 30)) == date(2027, 1, 4)
    assert not cal.is_trading_day(date(2027, 2, 10).toordinal())
    assert not cal.is_trading_day(date(2027, 2, 13).toordinal())  # a Saturday
    days, _, last = ref.xshg_days([date(2027, 1, 1), date(2027, 2, 10)])
    assert last == cal.last_day
    for o in range(date(2026, 12, 1).toordinal(), date(2027, 12, 31).toordinal() + 1):
        assert cal.is_trading_day(o) == (date.fromordinal(o) in days)
    with pytest.raises(CalendarUnknown):
        cal.add_days(date(2027, 12, 30).toordinal(), 2)


def test_through_sets_the_end_and_a_closure_inside_the_coverage_is_honoured():
    cal = TradingCalendar.xshg([date(2026, 11, 23)], through=date(2027, 1, 15))
    assert cal.last_day == date(2027, 1, 15)
    assert due(cal, date(2026, 11, 20)) == date(2026, 11, 25)  # an ad-hoc closure on Monday
    assert due(cal, date(2026, 12, 30)) == date(2027, 1, 1)  # no closure given: a weekday
    with pytest.raises(CalendarUnknown):
        cal.add_days(date(2027, 1, 14).toordinal(), 2)


def test_days_before_the_coverage_are_unknown_too():
    cal = default_calendar()
    with pytest.raises(CalendarUnknown):
        cal.add_days(date(1999, 6, 1).toordinal(), 2)
    assert market_state(cal, 1) == "unknown"


def test_china_days_and_closes():
    assert china_day(at(date(2026, 11, 20), 0, 0)) == date(2026, 11, 20).toordinal()
    assert china_day(at(date(2026, 11, 20), 23, 59)) == date(2026, 11, 20).toordinal()
    assert close_ns(date(2026, 11, 20).toordinal()) == at(date(2026, 11, 20), 15)


WED = date(2026, 11, 18)


@pytest.mark.parametrize(("hh", "mm", "state"), [
    (9, 0, "closed"), (9, 15, "opening_auction"), (9, 24, "opening_auction"),
    (9, 25, "pre_open"), (9, 30, "open"), (11, 29, "open"), (11, 30, "lunch"),
    (12, 59, "lunch"), (13, 0, "open"), (14, 56, "open"), (14, 57, "closing_auction"),
    (14, 59, "closing_auction"), (15, 0, "closed"), (20, 0, "closed"),
])
def test_market_state_through_a_trading_day(hh, mm, state):
    assert market_state(default_calendar(), at(WED, hh, mm)) == state


def test_no_session_on_a_closure_or_a_weekend_and_none_known_beyond_the_calendar():
    cal = default_calendar()
    assert market_state(cal, at(date(2026, 10, 1), 10)) == "closed"
    assert market_state(cal, at(date(2026, 11, 21), 10)) == "closed"  # Saturday
    assert not in_session(cal, at(date(2026, 10, 1), 10))
    assert market_state(cal, at(date(2027, 1, 4), 10)) == "unknown"
    with pytest.raises(CalendarUnknown):
        in_session(cal, at(date(2027, 1, 4), 10))
    with pytest.raises(CalendarUnknown):  # the next session is in 2027
        release_at(cal, at(date(2026, 12, 31), 15, 30))


def test_release_is_the_next_sessions_start():
    cal = default_calendar()
    assert release_at(cal, at(WED, 10)) is None
    assert release_at(cal, at(WED, 11, 30)) == at(WED, 13)
    assert release_at(cal, at(WED, 9, 26)) == at(WED, 9, 30)
    assert release_at(cal, at(WED, 15)) == at(date(2026, 11, 19), 9, 15)
    assert release_at(cal, at(date(2026, 9, 30), 15, 1)) == at(date(2026, 10, 8), 9, 15)
