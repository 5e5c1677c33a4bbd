"""The exchange calendar of a run (docs/running.md#calendar): exchange_calendars' XSHG plus the
closures the operator configures, and a watch on the closures file so that adding next year's
closures takes effect without a restart.

    closures = ["2027-01-01", "2027-02-11"]    # weekday closures, ISO dates
    closures_file = "calendar/closures.txt"   # one ISO date a line; '#' comments; may hold
                                              # a line "through 2027-12-31"
    calendar_through = "2027-12-31"           # optional: the last day the closures cover

Past exchange_calendars' last day (2026-12-31 for 4.13), the weekdays through `calendar_through`
(default: the end of the latest year a closure is given for) less the closures are trading days.
"""

from __future__ import annotations

import logging
import os
from datetime import date
from pathlib import Path

from monitor.core.calendar import TradingCalendar
from monitor.errors import ConfigError

log = logging.getLogger("monitor")


def read_closures_file(path: str) -> tuple[list[date], date | None]:
    """(closures, through) of a closures file; ConfigError naming the line that is wrong."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"closures_file: cannot read {path}: {e.strerror}") from None
    days, through = [], None
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            if line.lower().startswith("through"):
                through = date.fromisoformat(line[len("through"):].strip())
            else:
                days.append(date.fromisoformat(line))
        except ValueError:
            raise ConfigError(f"closures_file: {path} line {i}: {raw.strip()!r} is not an ISO "
                              f"date (YYYY-MM-DD) or 'through YYYY-MM-DD'") from None
    return days, through


def _dates(name: str, values) -> list[date]:
    if not isinstance(values, list):
        raise ConfigError(f"{name}: expected a list of ISO dates, got {values!r}")
    out = []
    for v in values:
        try:
            out.append(date.fromisoformat(str(v)))
        except ValueError:
            raise ConfigError(f"{name}: {v!r} is not an ISO date (YYYY-MM-DD)") from None
    return out


def build_calendar(cfg) -> TradingCalendar:
    """The calendar of a RunConfig (`closures`, `holidays`, `closures_file`,
    `calendar_through`)."""
    days = _dates("closures", cfg.closures) + _dates("holidays", cfg.holidays)
    through = None
    if cfg.closures_file:
        more, through = read_closures_file(cfg.closures_file)
        days += more
    if cfg.calendar_through:
        try:
            through = date.fromisoformat(str(cfg.calendar_through))
        except ValueError:
            raise ConfigError(f"calendar_through: {cfg.calendar_through!r} is not an ISO "
                              f"date") from None
    weekend = [d for d in days if d.weekday() >= 5]
    if weekend:
        raise ConfigError(f"closures: {weekend[0]} is a weekend day (the exchange never trades "
                          f"then); list weekday closures only")
    base = TradingCalendar.xshg()
    if through is not None and through.toordinal() < base.last:
        through = None  # exchange_calendars already covers it
    return TradingCalendar.build(base.days, base.first, base.last, days, through,
                                 source=base.source + (" + closures" if days else ""))


class ClosuresWatch:
    """Re-reads the closures file when it changes (`poll`, once a heartbeat)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.path = cfg.closures_file
        self._mtime = self._stat()

    def _stat(self):
        if not self.path:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def poll(self) -> TradingCalendar | None:
        """A new calendar when the file changed and reads well (else None; a bad file is
        logged and the calendar in use stays)."""
        if not self.path:
            return None
        m = self._stat()
        if m == self._mtime:
            return None
        self._mtime = m
        try:
            cal = build_calendar(self.cfg)
        except ConfigError as e:
            log.error("closures not reloaded: %s", e)
            return None
        log.info("closures reloaded from %s: trading days known to %s", self.path, cal.last_day)
        return cal
