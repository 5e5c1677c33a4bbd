"""The exchange calendar (margin-rules.md §6): which days are trading days, for call deadlines,
due days and expiries.

Trading days are those of `exchange_calendars` "XSHG" (the Shanghai and Shenzhen calendar),
less configured closures, plus, beyond the package's last day (it stops at 2026-12-31), the
weekdays of the years the operator has given closures for (`closures` / `closures_file` in
monitor.toml; `calendar_through` says through which day). A day outside the known range is
never guessed from weekdays: every lookup that needs one raises `CalendarUnknown` naming it.

Nothing here runs per tick: the trading days are computed once into a sorted int64 array of
day ordinals (`date.toordinal()`), and a lookup is a `searchsorted`. Times are China time
(UTC+8, no daylight saving), in integer ns since the epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from datetime import date, timedelta, timezone

import numpy as np

from monitor.errors import CalendarUnknown

CHINA = timezone(timedelta(hours=8))
NS = 1_000_000_000
NS_PER_DAY = 86_400 * NS
CHINA_OFFSET_NS = 8 * 3600 * NS
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
CLOSE_S = 15 * 3600  # the 15:00 close, seconds after midnight China time
XSHG_START = "2000-01-04"  # the oldest day asked of exchange_calendars


def china_day(ns: int) -> int:
    """The China-time calendar day (ordinal) of an instant."""
    return (int(ns) + CHINA_OFFSET_NS) // NS_PER_DAY + EPOCH_ORDINAL


def china_seconds(ns: int) -> float:
    """Seconds after China-time midnight of an instant."""
    return ((int(ns) + CHINA_OFFSET_NS) % NS_PER_DAY) / NS


def at_china(day: int, seconds: float) -> int:
    """ns of `seconds` after midnight China time on day ordinal `day`."""
    return (int(day) - EPOCH_ORDINAL) * NS_PER_DAY + round(seconds * NS) - CHINA_OFFSET_NS


def close_ns(day: int) -> int:
    """The 15:00 close of day ordinal `day`, ns."""
    return at_china(day, CLOSE_S)


_XSHG: list = []


def default_calendar() -> TradingCalendar:
    """exchange_calendars' XSHG with no configured closures (built once per process)."""
    if not _XSHG:
        _XSHG.append(TradingCalendar.xshg())
    return _XSHG[0]


class TradingCalendar:
    """Trading days known from `first` through `last` (ordinals, inclusive)."""

    __slots__ = ("days", "first", "last", "closures", "source")

    def __init__(self, days: np.ndarray, first: int, last: int,
                 closures: tuple[date, ...] = (), source: str = ""):
        self.days = np.ascontiguousarray(np.unique(np.asarray(days, dtype=np.int64)))
        self.first, self.last = int(first), int(last)
        self.closures = tuple(closures)
        self.source = source

    # ------------------------------------------------------------------ building
    @classmethod
    def xshg(cls, closures: Iterable[date] = (), through: date | None = None) -> TradingCalendar:
        """exchange_calendars' XSHG, less `closures`, extended by them past its last day."""
        import exchange_calendars as xc  # pandas: paid once, at start

        with warnings.catch_warnings():  # the package's own use of a deprecated pandas API
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            cal = xc.get_calendar("XSHG", start=XSHG_START)
            sessions = np.array([d.toordinal() for d in cal.sessions.date], dtype=np.int64)
        return cls.build(sessions, int(sessions[0]), int(sessions[-1]), closures, through,
                         source="exchange_calendars XSHG")

    @classmethod
    def build(cls, sessions: np.ndarray, first: int, last: int,
              closures: Iterable[date] = (), through: date | None = None,
              source: str = "") -> TradingCalendar:
        """`sessions` (ordinals) known from `first` through `last`; `closures` removed. Past
        `last`, the weekdays through `through` are trading days less the closures; without
        `through`, through the end of the latest year a closure past `last` is listed for
        (giving a year's closures declares that year)."""
        closed = sorted(set(closures))
        beyond = [d for d in closed if d.toordinal() > last]
        end = last
        if through is not None:
            end = max(last, through.toordinal())
        elif beyond:
            end = date(beyond[-1].year, 12, 31).toordinal()
        extra = np.arange(last + 1, end + 1, dtype=np.int64)
        extra = extra[(extra + 6) % 7 < 5]  # ordinal 1 (0001-01-01) is a Monday
        days = np.concatenate([np.asarray(sessions, dtype=np.int64), extra])
        shut = np.array([d.toordinal() for d in closed], dtype=np.int64)
        days = days[~np.isin(days, shut)]
        return cls(days, first, end, tuple(closed), source)

    # ------------------------------------------------------------------ lookups
    def knows(self, day: int) -> bool:
        return self.first <= int(day) <= self.last

    def unknown(self, day: int) -> CalendarUnknown:
        """The error for needing day ordinal `day`."""
        return CalendarUnknown(date.fromordinal(int(day)), date.fromordinal(self.first),
                               date.fromordinal(self.last))

    def is_trading_day(self, day: int) -> bool:
        if not self.knows(day):
            raise self.unknown(day)
        i = int(np.searchsorted(self.days, day))
        return i < self.days.shape[0] and int(self.days[i]) == int(day)

    def add_days(self, day: int, n: int) -> int:
        """The n-th trading day after `day` (T+n; n >= 1), as an ordinal."""
        if int(day) < self.first:
            raise self.unknown(day)
        i = int(np.searchsorted(self.days, day, side="right")) + int(n) - 1
        if i >= self.days.shape[0]:
            raise self.unknown(self.last + 1)
        return int(self.days[i])

    def next_day(self, day: int) -> int:
        """The first trading day at or after `day`."""
        if int(day) < self.first:
            raise self.unknown(day)
        i = int(np.searchsorted(self.days, day, side="left"))
        if i >= self.days.shape[0]:
            raise self.unknown(max(int(day), self.last + 1))
        return int(self.days[i])

    @property
    def first_day(self) -> date:
        return date.fromordinal(self.first)

    @property
    def last_day(self) -> date:
        return date.fromordinal(self.last)

    def describe(self) -> dict:
        return {"source": self.source, "first": self.first_day.isoformat(),
                "last": self.last_day.isoformat(), "closures": len(self.closures)}
