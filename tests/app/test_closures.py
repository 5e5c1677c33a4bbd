"""The run's calendar from monitor.toml (`closures`, `closures_file`, `calendar_through`), the
closures file re-read while running, and what the runtime's health() says about it."""

from __future__ import annotations

import os
from datetime import date

import pytest

from monitor.app.closures import ClosuresWatch, build_calendar, read_closures_file
from monitor.app.config import RunConfig, load_config
from monitor.app.runtime import Monitor
from monitor.book.data import SAMPLE_BOOK
from monitor.book.load import load_book
from monitor.errors import ConfigError


def test_no_closures_is_exchange_calendars_alone():
    cal = build_calendar(RunConfig())
    assert cal.last_day == date(2026, 12, 31) and cal.closures == ()


def test_closures_from_the_list_the_file_and_the_older_holidays_key(tmp_path):
    f = tmp_path / "closures.txt"
    f.write_text("# 2027, as announced\n2027-01-01\n2027-02-10  # Spring Festival\n\n"
                 "through 2027-06-30\n")
    assert read_closures_file(str(f)) == ([date(2027, 1, 1), date(2027, 2, 10)],
                                          date(2027, 6, 30))
    cfg = RunConfig(closures=["2027-02-11"], holidays=["2026-11-23"], closures_file=str(f))
    cal = build_calendar(cfg)
    assert cal.last_day == date(2027, 6, 30)
    for d in (date(2027, 1, 1), date(2027, 2, 10), date(2027, 2, 11), date(2026, 11, 23)):
        assert not cal.is_trading_day(d.toordinal())
    assert cal.is_trading_day(date(2027, 1, 4).toordinal())
    cfg.calendar_through = "2027-12-31"  # the setting wins over the file's line
    assert build_calendar(cfg).last_day == date(2027, 12, 31)


def test_the_config_file_takes_them(tmp_path):
    p = tmp_path / "monitor.toml"
    p.write_text('closures = ["2027-01-01"]\ncalendar_through = "2027-03-31"\n'
                 'close_settle_s = 30\n')
    cfg = load_config(str(p), {})
    cal = build_calendar(cfg)
    assert cal.last_day == date(2027, 3, 31) and cfg.close_settle_s == 30


@pytest.mark.parametrize(("kw", "message"), [
    ({"closures": ["2027-13-01"]}, "closures: '2027-13-01' is not an ISO date"),
    ({"closures": "2027-01-01"}, "expected a list"),
    ({"closures": ["2027-01-02"]}, "is a weekend day"),
    ({"calendar_through": "soon"}, "calendar_through"),
    ({"closures_file": "/nonexistent/closures.txt"}, "closures_file: cannot read"),
])
def test_bad_settings_are_named(kw, message):
    with pytest.raises(ConfigError) as e:
        build_calendar(RunConfig(**kw))
    assert message in str(e.value)


def test_a_bad_line_of_the_file_is_named(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("2027-01-01\n2027/02/10\n")
    with pytest.raises(ConfigError) as e:
        read_closures_file(str(f))
    assert "line 2" in str(e.value) and "2027/02/10" in str(e.value)


def test_the_watch_reloads_a_changed_file_and_keeps_the_calendar_on_a_bad_one(tmp_path):
    f = tmp_path / "closures.txt"
    f.write_text("")
    w = ClosuresWatch(RunConfig(closures_file=str(f)))
    assert w.poll() is None  # unchanged
    f.write_text("2027-01-01\n")
    os.utime(f, ns=(1, 10**18))
    cal = w.poll()
    assert cal is not None and cal.last_day == date(2027, 12, 31)
    assert w.poll() is None
    f.write_text("not a date\n")
    os.utime(f, ns=(1, 2 * 10**18))
    assert w.poll() is None  # logged; the calendar in use stays


def test_health_says_whether_the_calendar_is_ok_and_the_market_state(tmp_path):
    ticks = tmp_path / "ticks.jsonl"
    ticks.write_text("")
    mon = Monitor(RunConfig(book=str(SAMPLE_BOOK), feed=f"replay:{ticks}"),
                  load_book(SAMPLE_BOOK))
    assert mon.tape and mon.engine.config.clock == "tape"
    h = mon.health()
    assert h["calendar_ok"] is True and h["calendar_reason"] is None
    assert h["market"] == "unknown"  # a tape before its first tick has no time
    assert h["calendar_last_day"] == "2026-12-31"
