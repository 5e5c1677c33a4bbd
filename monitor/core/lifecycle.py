"""The margin-call lifecycle per line profile (margin-rules.md §6), run by the engine on its
clock (the ticks' exchange time, monitor/core/engine.py).

Per profile (monitor/book/call_terms.py): `call_basis`, `cure_line` (default the target),
`call_days` (T+N trading days, default the monitor's `call_days`) and the target the plan of an
expired call is sized to.

- `intraday` basis: a call opens when the account's reported tier enters MARGIN_CALL; it is
  cured as soon as R >= cure line (any cycle, any account event); at the close of its due day
  it is cured if R >= cure line, else it expires.
- `close` basis: judged on the ratio at the close (15:00) of a trading day. At the close of
  day T an account below its warning line (the call line: MARGIN_CALL or worse) without an
  open call gets one, due at the close of T+N; at each later close R >= cure line cures it;
  at the close of the due day it expires otherwise. Intraday moves open and cure nothing.
- The forced-liquidation line is always intraday: the engine's FORCED_LIQUIDATION transitions
  carry their plan whatever the basis.
- An expired call carries the plan (sized to the profile's target) of the account at the close;
  it was made outside a session, so the event says when orders may go (`release_at`, the next
  session's start, monitor/core/sessions.py).

A deadline the calendar does not know is refused loudly: the call stays open without one,
a `CALENDAR_UNKNOWN` event names the day needed, and `health()` says `calendar_ok: false`
until `set_calendar` (closures added) dates it (a `CALL_DEADLINE` event per call then).
"""

from __future__ import annotations

from datetime import date

import numpy as np

from kernels import units as u
from monitor.book.model import CALL_CLOSE, CALL_INTRADAY
from monitor.core.calendar import TradingCalendar, china_day, close_ns
from monitor.core.calls import MarginCall, MarginCalls
from monitor.errors import CalendarUnknown

MAX_LISTED = 1000  # accounts named in one CALENDAR_UNKNOWN event (the count is always there)


class CallLifecycle:
    """Open calls and their lifecycle. `engine` gives the state, the reported tiers, the
    envelope (seq) and the plans; nothing here keeps time of its own."""

    def __init__(self, engine, calendar: TradingCalendar, default_days: int = 2):
        self.engine = engine
        self.calls = MarginCalls(calendar, default_days)
        self._unknown: dict[tuple[str, date], list[int]] = {}  # not yet announced
        self._announced: set[tuple[str, date]] = set()
        self.problem: str | None = None  # the last refusal not about a call (clock, release)

    @property
    def calendar(self) -> TradingCalendar:
        return self.calls.calendar

    # ------------------------------------------------------------------ terms
    def _terms(self, accounts: np.ndarray):
        """(basis, cure line bp, warning line bp, days) per account, from its current profile."""
        b = self.engine.state.book
        terms = b.calls()
        p = b.profile_of[accounts]
        days = terms.days[p]
        days = np.where(days < 0, self.calls.days, days)
        return (terms.basis[p], terms.cure_lines(b.profile_lines, p),
                b.profile_lines[p, u.LINE_WARNING], days)

    def _ratio_at_least(self, accounts: np.ndarray, line_bp: np.ndarray) -> np.ndarray:
        """R >= line, exactly (no debt counts as above every line)."""
        A, L = self.engine.state.values(accounts)
        return (L <= 0) | (A * u.RATIO_SCALE >= line_bp * L)

    # ------------------------------------------------------------------ events
    def call_event(self, kind: str, a: int, call: MarginCall, ts: int, now_ns: int,
                   figures: dict | None = None) -> dict:
        eng = self.engine
        ev = eng.envelope(kind, ts, now_ns)
        ev.update(figures or eng.state.figures(a))
        ev["tier"] = u.TIER_NAMES[int(eng.reported[a])]
        ev["previous_tier"] = ev["tier"]
        ev["profile"] = eng.state.book.profile_names[eng.state.book.profile_of[a]]
        ev["call"] = call.as_dict()
        return ev

    def _issue(self, a: int, t: int, ts: int, now_ns: int, figures: dict, basis: int,
               days: int) -> list[dict]:
        call, err = self.calls.open(a, t, figures, basis=basis, days=days)
        if call is None:
            return []
        if err is not None:
            self.note_unknown(err, "call_deadline", a)
        return [self.call_event("CALL_ISSUED", a, call, ts, now_ns, figures)]

    def _expire(self, a: int, t: int, now_ns: int) -> dict:
        eng = self.engine
        call = self.calls.close(a, "EXPIRED", t)
        ev = self.call_event("CALL_EXPIRED", a, call, t, now_ns)
        ev["plan"] = eng.plan(a, t)
        rel = eng.release_at(t)
        if rel is not None:
            ev["release_at"] = rel
        return ev

    # ------------------------------------------------------------------ lifecycle
    def entered_margin_call(self, a: int, t: int, ts: int, now_ns: int,
                            figures: dict) -> list[dict]:
        """The reported tier of `a` entered MARGIN_CALL at engine time `t`: an intraday-basis
        profile opens a call (a close-basis one waits for the close)."""
        b = self.engine.state.book  # scalar lookups: a crash cycle calls this per account
        terms = b.calls()
        p = int(b.profile_of[a])
        if int(terms.basis[p]) != CALL_INTRADAY:
            return []
        days = int(terms.days[p])
        return self._issue(a, t, ts, now_ns, figures, CALL_INTRADAY,
                           days if days > 0 else self.calls.days)

    def cure_intraday(self, t: int, now_ns: int) -> list[dict]:
        """Cure the open intraday-basis calls whose account is at its cure line."""
        calls = self.calls
        if calls.accounts.shape[0] == 0:
            return []
        sel = np.flatnonzero(calls.bases == CALL_INTRADAY)
        if sel.shape[0] == 0:
            return []
        accts = calls.accounts[sel]
        _, cure, _, _ = self._terms(accts)
        out = []
        for a in accts[self._ratio_at_least(accts, cure)].tolist():
            call = calls.close(a, "CURED", t)
            out.append(self.call_event("CALL_CURED", a, call, t, now_ns))
        return out

    def at_close(self, day: int, now_ns: int) -> list[dict]:
        """The close (15:00) of trading day `day`: judge the open calls, then open the
        close-basis calls of accounts below their warning line."""
        t = close_ns(day)
        calls = self.calls
        out = []
        closed = set()
        if calls.accounts.shape[0]:
            accts = calls.accounts.copy()
            due = calls.deadline_days <= day
            close_basis = calls.bases == CALL_CLOSE
            issued_before = np.array([calls.get(a).issued_day < day for a in accts.tolist()],
                                     dtype=bool)
            judged = (due & ~close_basis) | (close_basis & issued_before)
            sel = accts[judged]
            if sel.shape[0]:
                _, cure, _, _ = self._terms(sel)
                ok = self._ratio_at_least(sel, cure)
                dd = due[judged]
                for a, cured, is_due in zip(sel.tolist(), ok.tolist(), dd.tolist(),
                                            strict=True):
                    if cured:
                        call = calls.close(a, "CURED", t)
                        out.append(self.call_event("CALL_CURED", a, call, t, now_ns))
                    elif is_due:
                        out.append(self._expire(a, t, now_ns))
                    else:
                        continue
                    closed.add(a)
        out.extend(self._issue_at_close(t, now_ns, closed))
        return out

    def _issue_at_close(self, t: int, now_ns: int, skip: set) -> list[dict]:
        eng = self.engine
        b = eng.state.book
        terms = b.calls()
        if not (terms.basis == CALL_CLOSE).any():
            return []
        # the reported tier is never better than the exact one (worse moves are reported at
        # once), so accounts below the warning line are among those reported MARGIN_CALL or worse
        cand = np.flatnonzero((eng.reported <= u.MARGIN_CALL) & (eng.reported >= 0)
                              & (terms.basis[b.profile_of] == CALL_CLOSE))
        cand = np.array([a for a in cand.tolist()
                         if a not in skip and self.calls.get(a) is None], dtype=np.int64)
        if cand.shape[0] == 0:
            return []
        _, _, warning, days = self._terms(cand)
        below = ~self._ratio_at_least(cand, warning)
        cand, days = cand[below], days[below]
        out = []
        for a, f, n in zip(cand.tolist(), eng.state.figures_many(cand), days.tolist(),
                           strict=True):
            out.extend(self._issue(a, t, t, now_ns, f, CALL_CLOSE, int(n)))
        return out

    # ------------------------------------------------------------------ the calendar
    def note_unknown(self, err: CalendarUnknown, cause: str, account: int | None = None) -> None:
        """Remember a refusal for the next `flush_unknown` (and for health)."""
        key = (cause, err.day)
        if cause != "call_deadline":
            self.problem = f"{cause}: {err}"
            if key in self._announced:
                return
        self._unknown.setdefault(key, [])
        if account is not None:
            self._unknown[key].append(account)

    def flush_unknown(self, ts: int, now_ns: int) -> list[dict]:
        """One CALENDAR_UNKNOWN event per refusal cause and day needed since the last flush."""
        if not self._unknown:
            return []
        out = []
        ids = self.engine.state.book.account_ids
        cal = self.calendar
        for (cause, day), accts in self._unknown.items():
            self._announced.add((cause, day))
            ev = self.engine.envelope("CALENDAR_UNKNOWN", ts, now_ns)
            ev.update({"cause": cause, "needed": day.isoformat(),
                       "known": {"first": cal.first_day.isoformat(),
                                 "last": cal.last_day.isoformat()},
                       "count": len(accts), "accounts": [ids[a] for a in accts[:MAX_LISTED]],
                       "message": str(CalendarUnknown(day, cal.first_day, cal.last_day))})
            out.append(ev)
        self._unknown.clear()
        return out

    def set_calendar(self, calendar: TradingCalendar, ts: int, now_ns: int) -> list[dict]:
        """Use `calendar` (closures added): date the waiting calls (CALL_DEADLINE each)."""
        dated, err = self.calls.set_calendar(calendar)
        self._announced.clear()
        self.problem = None
        if err is not None:
            for c in self.calls.waiting():
                self.note_unknown(err, "call_deadline", c.account)
        return [self.call_event("CALL_DEADLINE", c.account, c, ts, now_ns) for c in dated]

    def health(self, clock_ns: int) -> dict:
        cal = self.calendar
        reasons = []
        waiting = self.calls.waiting()
        if waiting:
            try:
                cal.add_days(waiting[0].issued_day, waiting[0].days)
                need = None
            except CalendarUnknown as e:
                need = e.day
            reasons.append(f"{len(waiting)} margin call(s) without a deadline"
                           + (f": {need} is needed" if need else ""))
        if clock_ns and not cal.knows(china_day(clock_ns)):
            reasons.append(f"the engine clock's day {date.fromordinal(china_day(clock_ns))} is "
                           f"not in the calendar")
        elif self.problem:
            reasons.append(self.problem)
        reason = "; ".join(reasons) if reasons else None
        if reason:
            reason += (f" (the calendar knows {cal.first_day} to {cal.last_day}: add the "
                       f"closures of the days needed)")
        return {"calendar_ok": not reasons, "calendar_reason": reason,
                "calendar_last_day": cal.last_day.isoformat(),
                "calls_without_deadline": len(waiting)}
