"""Trading sessions (margin-rules.md §6), China time, on the calendar's trading days:

    09:15-09:25  opening call auction      opening_auction
    09:25-09:30  orders wait for the open  pre_open          (not a session)
    09:30-11:30  continuous trading        open
    11:30-13:00  lunch break               lunch             (not a session)
    13:00-14:57  continuous trading        open
    14:57-15:00  closing call auction      closing_auction
    otherwise, and on days that are not trading days: closed; on days the calendar does not
    know: unknown

A start is inclusive, an end exclusive (11:30:00 is lunch; 15:00:00 is closed). Orders go out
only inside a session; a plan made outside one is released at the next session's start
(`release_at`). The after-hours fixed-price trading of 15:05-15:30 trades at the close price and
is not a session here.
"""

from __future__ import annotations

from monitor.core.calendar import TradingCalendar, at_china, china_day, china_seconds

H = 3600
M = 60
SESSIONS = (  # (start, end) seconds after midnight, in order
    (9 * H + 15 * M, 9 * H + 25 * M),  # opening call auction
    (9 * H + 30 * M, 11 * H + 30 * M),  # continuous, morning
    (13 * H, 14 * H + 57 * M),  # continuous, afternoon
    (14 * H + 57 * M, 15 * H),  # closing call auction
)
STATES = ("closed", "opening_auction", "pre_open", "open", "lunch", "closing_auction",
          "unknown")
_NAMES = ("opening_auction", "open", "open", "closing_auction")


def market_state(cal: TradingCalendar, ns: int) -> str:
    """One of STATES at instant `ns`."""
    day = china_day(ns)
    if not cal.knows(day):
        return "unknown"
    if not cal.is_trading_day(day):
        return "closed"
    s = china_seconds(ns)
    for (a, b), name in zip(SESSIONS, _NAMES, strict=True):
        if a <= s < b:
            return name
    if SESSIONS[0][1] <= s < SESSIONS[1][0]:
        return "pre_open"
    if SESSIONS[1][1] <= s < SESSIONS[2][0]:
        return "lunch"
    return "closed"


def in_session(cal: TradingCalendar, ns: int) -> bool:
    """Whether an order sent at `ns` can trade; CalendarUnknown when the day is not known."""
    day = china_day(ns)
    if not cal.knows(day):
        raise cal.unknown(day)
    return market_state(cal, ns) in ("opening_auction", "open", "closing_auction")


def release_at(cal: TradingCalendar, ns: int) -> int | None:
    """None inside a session (orders can go now); else the ns of the next session's start.
    CalendarUnknown when that needs a day the calendar does not know."""
    if in_session(cal, ns):
        return None
    day = china_day(ns)
    if cal.is_trading_day(day):
        s = china_seconds(ns)
        for a, _ in SESSIONS:
            if s < a:
                return at_china(day, a)
    return at_china(cal.next_day(day + 1), SESSIONS[0][0])

