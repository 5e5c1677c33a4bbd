"""The engine: ticks in, tier transitions out. Sans-I/O: no sockets, no clocks of its own, no
logging on the tick path; asyncio tasks around it feed ticks and ship the events it returns.

Per cycle: ticks accumulated since the last cycle are conflated per symbol (the last price is
the state), then the cheaper exact path is taken: an incremental update over the holders of the
changed symbols, or a full sweep when they hold a large share of all positions. Both are exact
(integer money), so the choice changes cost, never results.

The engine's clock (`clock_ns`) is the exchange time of the ticks it has applied (receive time
for a tick that had none), so a replayed day gives that day's deadlines and expiries. Before the
first tick the processing time passed in stands in (`clock="ticks"`, the live default: the
first tick's time then replaces it, later ticks only move it forward); with
`clock="tape"` (a replay) nothing is dated before the first tick: the start-up picture is
announced at the tape's first time. `advance_clock` moves it on without ticks (a live feed gone
silent). Ticks stamped after the next close judgement (15:00 plus `close_settle_s`) wait until
the close is judged on the prices before it (monitor/core/lifecycle.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import date

import numpy as np
import orjson

from kernels import units as u
from kernels.conflate import conflate, take_pending, triggers
from kernels.incremental import apply_price_changes, holders_touched, retier_accounts
from kernels.ratios import collect_changes, sweep_tiers
from kernels.reach import (
    N_CLASSES,
    PINNED,
    account_values,
    price_classes,
    rebase_all,
    refresh_range,
    scan_range,
    scan_scratch,
    update_deltas,
)
from kernels.totals import tier_totals
from monitor.book.model import Holdings
from monitor.core.account_events import AccountEventError, AccountEvents
from monitor.core.calendar import TradingCalendar, china_day, close_ns, default_calendar
from monitor.core.calls import NO_DEADLINE, MarginCall
from monitor.core.contracts import ContractWatch
from monitor.core.credit import CreditConfig, CreditControls
from monitor.core.envelope import EventStamps
from monitor.core.lifecycle import CallLifecycle
from monitor.core.patterns import PatternConfig, PatternWatch
from monitor.core.sessions import market_state, release_at
from monitor.core.state import MarginState, yuan
from monitor.errors import CalendarUnknown

# big cycles between re-measurements of the path not taken: doubles (up to _PROBE_MAX) while
# the same path keeps winning, since switching into reach mode costs a re-base of every account
_PROBE_EVERY = 256
_PROBE_MAX = 16_384


def _ewma(old: float | None, x: int) -> float:
    return float(x) if old is None else 0.8 * old + 0.2 * x


@dataclass(slots=True)
class EngineConfig:
    hysteresis_bp: int = u.DEFAULT_HYSTERESIS_BP
    # sweep when the changed symbols' holder rows exceed this share of all rows: an incremental
    # row costs several times a sweep row (random access), see docs/capacity.md
    sweep_share: float = 0.08
    # reach mode (kernels/reach.py): per cycle, evaluate exactly only the accounts prices could
    # have moved across a line, and refresh one chunk of `reach_chunk` accounts in rotation
    # "off" (default) | "auto": the cheaper of reach and sweep cycles, measured | "always".
    # Opt-in: with values lagging, per-account readers (margin-call cures, the desk) pay for
    # exact values, which the path cost does not see; on the end-to-end tape "auto" made whole
    # cycles 25% slower than sweeping (docs/capacity.md)
    reach: str = "off"
    reach_chunk: int = 16_384
    # a reach cycle that had to evaluate more than this share of the book has the next big
    # cycle measure a full sweep again
    reach_resweep_share: float = 0.25
    # credit controls (monitor/credit.py) walk one slice of the book per this interval, so a
    # price-driven cap or line crossing is seen within (accounts / slice) intervals
    credit_interval_ns: int = 50_000_000
    call_days: int = 2  # margin-call deadline, trading days after the day of issue (the
    # default of profiles without call_days)
    contract_due_days: int = 5  # CONTRACT_DUE this many trading days before a term end (the
    # default of profiles without contract_due_days)
    calendar: TradingCalendar | None = None  # None: exchange_calendars XSHG, no closures
    close_settle_s: float = 60.0  # ticks stamped up to 15:00 + this belong to the day's close
    clock: str = "ticks"  # "ticks" (live) | "tape" (replay: nothing dated before a tick)
    # how far ahead of the clock an account event's ts (and, at restore, a symbol's last tick
    # time) may be: the monitor's max_tick_skew_s
    max_skew_ns: int = u.DEFAULT_MAX_SKEW_NS
    run_id: str = ""
    shard: int | None = None  # the shard this engine monitors (its events say so); None: all


@dataclass(slots=True)
class CycleStats:
    ticks: int = 0
    symbols: int = 0
    path: str = "none"  # "incremental" | "sweep" | "reach" | "none"
    touched: int = 0  # accounts evaluated exactly
    events: int = 0
    ns: int = 0


class Engine:
    """The sans-I/O core: ticks and account events in, events out (one thread, no I/O).

    Built with its collaborators: `credit` configures the credit controls (always on; a book
    without credit fields makes them no-ops), `patterns` the trading-pattern watch (off when
    None)."""

    def __init__(self, state: MarginState, config: EngineConfig | None = None, *,
                 credit: CreditConfig | None = None, patterns: PatternConfig | None = None):
        self.state = state
        self.config = config or EngineConfig()
        run_id = self.config.run_id or uuid.uuid4().hex[:12]
        if self.config.shard is not None and not self.config.run_id:
            run_id = f"s{self.config.shard}-{run_id}"  # unique across shards by construction
        self.stamps = EventStamps(run_id, shard=self.config.shard)
        b = state.book
        n, ns = b.n_accounts, b.n_securities
        self.reported = np.full(n, u.UNSET_TIER, dtype=np.int8)
        self.credit = CreditControls(state, self.stamps, self.reported, credit)
        self.patterns = (PatternWatch(state, self.stamps, self.reported, patterns)
                         if patterns is not None else None)
        # per-cycle buffers, allocated once
        self._candidate = np.empty(n, dtype=np.int8)
        self._mark = np.zeros(n, dtype=np.uint8)
        self._touched = np.empty(n, dtype=np.int64)
        self._changed = np.empty(n, dtype=np.int64)
        self._previous = np.empty(n, dtype=np.int8)
        self._trigger = np.empty(n, dtype=np.int64)
        self._pending_price = np.zeros(ns, dtype=np.int64)
        self._pending_ts = np.zeros(ns, dtype=np.int64)
        self._pending_flag = np.zeros(ns, dtype=np.uint8)
        self._pending_list = np.empty(ns, dtype=np.int64)
        self._n_pending = 0
        self._pending_ticks = 0
        self._secs = np.empty(ns, dtype=np.int64)
        self._prices = np.empty(ns, dtype=np.int64)
        self.old_price = state.price.copy()
        self.last_ts = np.zeros(ns, dtype=np.int64)  # exchange time of each symbol's last price
        self.tier_seq = np.zeros(n, dtype=np.int64)  # seq of the event announcing each tier
        if self.config.clock not in ("ticks", "tape"):
            raise ValueError(f"clock: expected ticks or tape, got {self.config.clock!r}")
        self.lifecycle = CallLifecycle(self, self.config.calendar or default_calendar(),
                                       self.config.call_days)
        if self.config.calendar is not None or state.calendar is None:
            # listing ages (price bands) count this engine's trading days
            state.calendar = self.lifecycle.calendar
            state.set_band_day(state.bands.day, force=True)
        self.calls = self.lifecycle.calls
        self.contracts = ContractWatch(self, self.config.contract_due_days)
        # the clock (module docstring): 0 until known
        self.clock_ns = 0
        self._band_ordinal = state.bands.day.toordinal()  # the bands' trading date
        self._ticked = False  # a tick has set the clock
        self._settle_ns = int(self.config.close_settle_s * 1e9)
        self._boundary = 0  # the next close judgement (ns); 0 unknown, NO_DEADLINE none known
        self._deferred: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # ticks after it
        self._first_ts = 0  # earliest tick queued while the clock was unknown
        self._target = 0  # advance_clock's
        self._startup = None  # tape: the start-up picture, announced at the first tick
        self.account_events = (AccountEvents(state, max_skew_ns=self.config.max_skew_ns)
                               if b.pos_used is not None else None)
        self._one = np.empty(1, dtype=np.int64)
        self.last_cycle = CycleStats()
        self.cycles = 0
        self.sweeps = 0
        # reach mode: reference prices and largest relative move per chunk, reach per account
        self.reach_mode = self.config.reach != "off" and n > 0
        chunk = max(int(self.config.reach_chunk), 1)
        self._chunk = chunk
        self._n_chunks = -(-n // chunk) if n else 0
        self._ref = np.empty((self._n_chunks, ns), dtype=np.int64)
        self._delta = np.zeros((self._n_chunks, N_CLASSES), dtype=np.float64)
        self._reach = np.zeros(n, dtype=np.float32)
        self._share = np.full((n, N_CLASSES), 255, dtype=np.uint8)
        self._class = price_classes(b.price)
        self._cand, self._stage = scan_scratch(min(chunk, max(n, 1)))
        self._next_refresh = 0
        # reach bounds hold: every account not PINNED has reach/shares for its reported tier at
        # its chunk's reference prices, and the chunk's deltas cover every move since. They
        # depend on prices, tiers and positions only, so a sync of the market values keeps them
        self._based = False
        # measured cost (EWMA ns) of a reach cycle and of a full sweep; the cheaper one runs,
        # the other is re-measured after _probe_in more big cycles
        self._cost_reach: float | None = None
        self._cost_sweep: float | None = None
        self._probe_in = _PROBE_EVERY
        self._probing = False
        self._probed = False
        self._credit_last_ns = 0

    # ------------------------------------------------------------------ input
    def add_ticks(self, sec: np.ndarray, price: np.ndarray, ts: np.ndarray) -> None:
        """Queue validated ticks (dense security indices, money-unit prices, ns timestamps).
        Ticks stamped after the next close judgement wait for it (kept in order)."""
        n = sec.shape[0]
        if not n:
            return
        # the kernel's dtypes are the feed's (TickBatch: int32 sec, int64 price and ts), which
        # pass uncopied; other callers' arrays are converted here
        sec = np.ascontiguousarray(sec, dtype=np.int32)
        price = np.ascontiguousarray(price, dtype=np.int64)
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        if self._deferred:
            self._deferred.append((sec.copy(), price.copy(), ts.copy()))
            return
        if self.clock_ns == 0:
            lo = int(ts.min())
            self._first_ts = min(self._first_ts, lo) if self._first_ts else lo
            if self._boundary == 0:
                self._boundary = self._next_boundary(self._first_ts)
        if int(ts.max()) > self._boundary:
            late = ts > self._boundary
            self._deferred.append((sec[late], price[late], ts[late]))
            keep = ~late
            sec, price, ts = sec[keep], price[keep], ts[keep]
            n = sec.shape[0]
            if not n:
                return
        self._n_pending = conflate(sec, price, ts, n, self._pending_price, self._pending_ts,
                                   self._pending_flag, self._pending_list, self._n_pending)
        self._pending_ticks += n

    @property
    def pending(self) -> int:
        return self._n_pending + len(self._deferred)

    # ------------------------------------------------------------------ the clock
    def now(self, now_ns: int) -> int:
        """The engine's time: its clock, else (before anything set it) `now_ns`."""
        return self.clock_ns or int(now_ns)

    def advance_clock(self, t_ns: int) -> None:
        """Move the clock on to `t_ns` at the next cycle, without ticks (a live feed silent:
        its receive time; a test). Never moves it back."""
        self._target = max(self._target, int(t_ns))

    def _next_boundary(self, t: int) -> int:
        """The first close judgement (15:00 + settle of a trading day) at or after `t`;
        NO_DEADLINE when the calendar does not know the days (announced, never guessed)."""
        cal = self.lifecycle.calendar
        try:
            d = cal.next_day(china_day(t))
            j = close_ns(d) + self._settle_ns
            if j < t:
                d = cal.next_day(d + 1)
                j = close_ns(d) + self._settle_ns
            return j
        except CalendarUnknown as e:
            self.lifecycle.note_unknown(e, "clock")
            return NO_DEADLINE

    def _set_clock(self, t: int) -> None:
        self.clock_ns = int(t)
        self._boundary = self._next_boundary(self.clock_ns)
        self._sync_bands()

    def _sync_bands(self) -> None:
        """The price bands follow the clock's trading date (kernels/bands.py): a rule taking
        effect, a listing past its first days."""
        if self.clock_ns:
            day = china_day(self.clock_ns)
            if day != self._band_ordinal:
                self._band_ordinal = day
                self.state.set_band_day(date.fromordinal(day))

    def _advance_to(self, t: int, now_ns: int) -> list[dict]:
        """Move the clock to `t`, judging every close passed on the way."""
        if self.clock_ns == 0:
            self._set_clock(t)
            return []
        out = []
        while t > self._boundary:
            b = self._boundary
            self.clock_ns = max(self.clock_ns, b)
            day = china_day(b - self._settle_ns)
            out.extend(self.lifecycle.at_close(day, now_ns))
            out.extend(self.contracts.at_close(day, now_ns))
            self._boundary = self._next_boundary(b + 1)
        self.clock_ns = max(self.clock_ns, int(t))
        self._sync_bands()
        return out

    def _catch_up(self, now_ns: int) -> list[dict]:
        """Before the first tick: processing time drives the clock ("ticks"), or the tape's
        first time starts it and the start-up picture is announced then ("tape")."""
        if self.config.clock == "ticks":
            if self._ticked:
                return []
            t = min(int(now_ns), self._first_ts) if self._first_ts else int(now_ns)
            return self._advance_to(t, now_ns)
        if self._startup is None:
            return []
        t = self._first_ts or self._target
        if not t:
            return []
        self._set_clock(t)
        bad, prev, trig = self._startup
        self._startup = None
        return self._events(bad, prev, trig, t, now_ns)

    def finish_tape(self, now_ns: int) -> list[dict]:
        """A tape that ended without a tick: its start-up picture, at `now_ns` (the clock stays
        unknown)."""
        if self._startup is None:
            return []
        bad, prev, trig = self._startup
        self._startup = None
        return self._events(bad, prev, trig, now_ns, now_ns)

    def release_at(self, t: int) -> int | None:
        """When the orders of a plan made at `t` may go: None inside a session (now), else the
        next session's start (ns). None too when the calendar does not know the days (then
        announced: calendar_ok is false)."""
        try:
            return release_at(self.lifecycle.calendar, t)
        except CalendarUnknown as e:
            self.lifecycle.note_unknown(e, "release")
            return None

    def set_calendar(self, calendar: TradingCalendar, now_ns: int) -> list[dict]:
        """Use `calendar` from now on (closures added): dates the calls waiting for it
        (CALL_DEADLINE events), and closes are judged again if the clock had run past the
        known days (the closes it passed meanwhile are not judged after the fact)."""
        t = self.now(now_ns)
        self.state.calendar = calendar  # listing ages count the new trading days
        self.state.set_band_day(self.state.bands.day, force=True)
        events = self.lifecycle.set_calendar(calendar, t, now_ns)
        if self.clock_ns:
            self._boundary = self._next_boundary(self.clock_ns)
        events.extend(self.lifecycle.flush_unknown(t, now_ns))
        return events

    def market(self) -> str:
        """The market's state at the engine clock (monitor/core/sessions.py)."""
        if not self.clock_ns:
            return "unknown"
        return market_state(self.lifecycle.calendar, self.clock_ns)

    def calendar_health(self) -> dict:
        h = self.lifecycle.health(self.clock_ns)
        h["market"] = self.market()
        h["clock_ns"] = self.clock_ns or None
        return h

    # ------------------------------------------------------------------ cycles
    def start(self, now_ns: int) -> list[dict]:
        """Sweep at the book's prices and announce every account already at WARNING or worse
        once, with `previous_tier: null`, so the stream alone gives a consumer the picture."""
        st = self.state
        h = st.h
        sweep_tiers(st.price, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr, h.short_sec,
                    h.short_qty, h.base_assets, h.base_liabilities, st.book.profile_of,
                    st.book.profile_lines, self.config.hysteresis_bp, st.long_mv, st.short_mv,
                    self.reported, self._candidate)
        self.reported[:] = self._candidate
        st.stale = False
        self._based = False
        bad = np.flatnonzero(self.reported <= u.WARNING)
        prev = np.full(bad.shape[0], u.UNSET_TIER, dtype=np.int8)
        trig = np.full(bad.shape[0], -1, dtype=np.int64)
        if self.config.clock == "tape" and not self.clock_ns:
            self._startup = (bad, prev, trig)  # announced at the tape's first time
            return []
        events = self._catch_up(now_ns)
        t = self.now(now_ns)
        events.extend(self._events(bad, prev, trig, t, now_ns))
        events.extend(self.lifecycle.flush_unknown(t, now_ns))
        return events

    def cycle(self, now_ns: int) -> list[dict]:
        """Apply everything queued since the last cycle; return the events it causes. A close
        judgement the ticks (or `advance_clock`) pass is made on the prices before it."""
        t0 = time.perf_counter_ns()
        stats = CycleStats(ticks=self._pending_ticks)
        events = self._catch_up(now_ns)
        while True:
            events.extend(self._apply_pending(now_ns, stats))
            if not self._deferred:
                break
            events.extend(self._advance_to(self._boundary + 1, now_ns))  # the close
            later, self._deferred = self._deferred, []
            for sec, price, ts in later:
                stats.ticks += sec.shape[0]
                self.add_ticks(sec, price, ts)
        if self._target > self.clock_ns:
            events.extend(self._advance_to(self._target, now_ns))
        if now_ns - self._credit_last_ns >= self.config.credit_interval_ns:
            self._credit_last_ns = now_ns  # price-driven credit crossings: one slice at a time
            events.extend(self.credit_slice(now_ns))
        events.extend(self.lifecycle.flush_unknown(self.now(now_ns), now_ns))
        stats.events = len(events)
        stats.ns = time.perf_counter_ns() - t0
        self.last_cycle = stats
        self.cycles += 1
        return events

    def _apply_pending(self, now_ns: int, stats: CycleStats) -> list[dict]:
        """The queued ticks (all stamped before the next close judgement) move the book."""
        st, h, b = self.state, self.state.h, self.state.book
        self._pending_ticks = 0
        k = take_pending(self._pending_list, self._n_pending, self._pending_price,
                         self._pending_flag, st.price, self.old_price, self._secs, self._prices)
        self._n_pending = 0
        stats.symbols += k
        n_changed = 0
        if k:
            secs, prices = self._secs[:k], self._prices[:k]
            self.last_ts[secs] = self._pending_ts[secs]
            hi = int(self._pending_ts[secs].max())
            # the first tick's exchange time replaces the stand-in processing time, even an
            # earlier one (closes already judged are not judged again: the boundary stays)
            self.clock_ns = max(self.clock_ns, hi) if self._ticked else hi
            self._ticked = True
            self._sync_bands()
            rows = holders_touched(secs, k, h.long_hptr, h.short_hptr)
            big = rows > self.config.sweep_share * max(h.n_rows, 1)
            t_path = time.perf_counter_ns()
            if (big or st.stale or self.config.reach == "always") and self._choose_reach():
                stats.path = "reach"
                if not self._based:
                    self._rebase_all()  # at the prices before this cycle's ticks
                st.price[secs] = prices
                n_changed, stats.touched = self._reach_cycle(secs, k)
                self._cost_reach = _ewma(self._cost_reach, time.perf_counter_ns() - t_path)
            elif big or st.stale:
                stats.path = "sweep"
                self.sweeps += 1
                st.price[secs] = prices
                stats.touched = b.n_accounts
                sweep_tiers(st.price, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr,
                            h.short_sec, h.short_qty, h.base_assets, h.base_liabilities,
                            b.profile_of, b.profile_lines, self.config.hysteresis_bp,
                            st.long_mv, st.short_mv, self.reported, self._candidate)
                n_changed = collect_changes(self._candidate, self.reported, self._previous,
                                            self._changed)
                st.stale = False
                self._based = False
                self._cost_sweep = _ewma(self._cost_sweep, time.perf_counter_ns() - t_path)
            else:
                stats.path = "incremental"
                n_t = apply_price_changes(secs, prices, k, st.price, h.long_hptr, h.long_hacct,
                                          h.long_hqty, h.short_hptr, h.short_hacct,
                                          h.short_hqty, st.long_mv, st.short_mv, self._mark,
                                          self._touched)
                stats.touched = n_t
                n_changed = retier_accounts(self._touched, n_t, h.base_assets,
                                            h.base_liabilities, st.long_mv, st.short_mv,
                                            b.profile_of, b.profile_lines,
                                            self.config.hysteresis_bp, self.reported,
                                            self._previous, self._changed)
                if self._based:  # keep the reach bounds true: the moves, the new tiers
                    update_deltas(secs, k, st.price, self._class, self._ref, self._delta)
                    self._reach[self._changed[:n_changed]] = PINNED
        events = []
        if n_changed:
            if stats.path == "incremental":  # report in account order, as a sweep does
                order = np.argsort(self._changed[:n_changed], kind="stable")
                self._changed[:n_changed] = self._changed[:n_changed][order]
                self._previous[:n_changed] = self._previous[:n_changed][order]
            changed = self._changed[:n_changed]
            triggers(changed, n_changed, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr,
                     h.short_sec, h.short_qty, st.price, self.old_price, self._trigger)
            trig = self._trigger[:n_changed]
            ts_event = np.where(trig >= 0, self._pending_ts[np.maximum(trig, 0)],
                                self.now(now_ns))
            events = self._events(changed.copy(), self._previous[:n_changed].copy(),
                                  trig.copy(), ts_event, now_ns)
        if k:
            self.old_price[self._secs[:k]] = st.price[self._secs[:k]]
        events.extend(self.lifecycle.cure_intraday(self.now(now_ns), now_ns))
        return events

    def apply_account_event(self, ev: dict, now_ns: int) -> list[dict]:
        """Apply one account event (a fill, a deposit, ...) and re-tier the accounts it moved.
        Raises AccountEventError, leaving the book unchanged, when the event is invalid; any
        other exception is a bug, and the derived structures are rebuilt from the book before
        it propagates (the runtime dead-letters the event as `internal_error`)."""
        if self.account_events is None:
            raise AccountEventError("read_only", "this engine's book is read-only "
                                    "(build its MarginState with live=True)")
        try:
            self.account_events.clock_ns = self.clock_ns  # the day a contract opens on
            accounts = self.account_events.apply(ev, now_ns)
        except AccountEventError:
            raise  # refused before any change
        except Exception:
            # a bug: whatever it changed, the derived structures (holdings, base amounts,
            # market values) are rebuilt from the book so they never disagree with it
            self.account_events.ledger.rebuild()
            self._based = False
            raise
        if not accounts:
            return []
        events = self._catch_up(now_ns)
        if self._based:
            if len(accounts) > self._chunk:  # e.g. interest accrued on the whole book
                self.state.stale = True
                self.state.sync()  # one sweep: every value exact, references dropped
            else:
                self._pin(accounts)
        events.extend(self._account_event_transitions(ev, accounts, now_ns))
        if self.patterns is not None:
            events.extend(self.patterns.observe(ev, now_ns))
        t = self.now(now_ns)
        events.extend(self.lifecycle.cure_intraday(t, now_ns))  # a deposit may cure at once
        events.extend(self.credit.check(accounts, now_ns))  # caps, lines (monitor/credit.py)
        events.extend(self.lifecycle.flush_unknown(t, now_ns))
        return events

    @property
    def run_id(self) -> str:
        return self.stamps.run_id

    @property
    def seq(self) -> int:
        """The seq of the last event this run published (dense, gap-free)."""
        return self.stamps.seq

    @seq.setter
    def seq(self, value: int) -> None:
        self.stamps.seq = int(value)

    def credit_slice(self, now_ns: int) -> list[dict]:
        """Credit controls of the next slice of accounts (bounded cost); `cycle` calls it once
        per `credit_interval_ns`."""
        return self.credit.check_slice(now_ns)

    def _account_event_transitions(self, ev, accounts, now_ns) -> list[dict]:
        st, h, b = self.state, self.state.h, self.state.book
        idx = np.asarray(accounts, dtype=np.int64)
        n = retier_accounts(idx, idx.shape[0], h.base_assets, h.base_liabilities, st.long_mv,
                            st.short_mv, b.profile_of, b.profile_lines,
                            self.config.hysteresis_bp, self.reported, self._previous,
                            self._changed)
        if n == 0:
            return []
        ts = ev.get("ts")
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else self.now(now_ns)
        events = self._events(self._changed[:n].copy(), self._previous[:n].copy(),
                              np.full(n, -1, dtype=np.int64), ts, now_ns)
        trigger = {"event": ev["type"], "event_id": ev.get("event_id")}
        for e in events:
            if e["kind"] == "TIER_CHANGE":
                e["trigger"] = trigger
        return events

    # ------------------------------------------------------------------ reach mode
    def _reach_cycle(self, secs: np.ndarray, k: int) -> tuple[int, int]:
        """Prices are already moved. Refresh one chunk (exact values at the new prices become
        its reference), scan the others for accounts within reach of a line; report in
        account order. Returns (changes, accounts evaluated)."""
        st, h, b = self.state, self.state.h, self.state.book
        st.stale = True
        update_deltas(secs, k, st.price, self._class, self._ref, self._delta)
        n = b.n_accounts
        band = self.config.hysteresis_bp
        refresh = self._next_refresh
        self._next_refresh = (refresh + 1) % self._n_chunks
        m = checked = 0
        for c in range(self._n_chunks):
            lo, hi = c * self._chunk, min((c + 1) * self._chunk, n)
            if c == refresh:
                m = refresh_range(lo, hi, st.price, self._class, h.long_ptr, h.long_sec,
                                  h.long_qty, h.short_ptr, h.short_sec, h.short_qty,
                                  h.base_assets, h.base_liabilities, b.profile_of,
                                  b.profile_lines, band, st.long_mv, st.short_mv,
                                  self.reported, self._reach, self._share, self._previous,
                                  self._changed, m)
                self._ref[c] = st.price
                self._delta[c] = 0.0
                checked += hi - lo
            else:
                m, cc = scan_range(lo, hi, self._delta[c], self._reach, self._share,
                                   st.price, h.long_ptr,
                                   h.long_sec, h.long_qty, h.short_ptr, h.short_sec,
                                   h.short_qty, h.base_assets, h.base_liabilities,
                                   b.profile_of, b.profile_lines, band, self.reported,
                                   self._previous, self._changed, m, self._cand,
                                   self._stage)
                checked += cc
        if checked > self.config.reach_resweep_share * n:
            self._cost_sweep = None  # most of the book was in reach: measure a sweep next
        return m, checked

    def _choose_reach(self) -> bool:
        if not self.reach_mode:
            return False
        if self.config.reach == "always":
            return True
        if self._cost_reach is None:
            return True
        if self._cost_sweep is None:
            return False
        best = self._cost_reach <= self._cost_sweep
        if self._probing:  # the probe was measured last cycle: did it change the winner?
            self._probing = False
            self._probe_in = (_PROBE_EVERY if best == self._probed else
                              min(2 * self._probe_in, _PROBE_MAX))
        self._probe_in -= 1
        if self._probe_in <= 0:  # re-measure the path not taken
            self._probing, self._probed = True, not best
            return not best
        return best

    def _rebase_all(self) -> None:
        """Every account's market values are exact at the current prices (a full sweep just
        ran): make those prices every chunk's reference and recompute every reach."""
        st, h, b = self.state, self.state.h, self.state.book
        self._ref[:] = st.price
        self._delta[:] = 0.0
        rebase_all(self._n_chunks, self._chunk, st.price, self._class, h.long_ptr, h.long_sec,
                   h.long_qty, h.short_ptr, h.short_sec, h.short_qty, h.base_assets,
                   h.base_liabilities, b.profile_of, b.profile_lines, self.config.hysteresis_bp,
                   self.reported, self._reach, self._share)
        self._based = True

    def _pin(self, accounts) -> None:
        """An account event changed these accounts' positions or base amounts: their values
        become exact at the current prices, off their chunk's reference, so they are evaluated
        every cycle until their chunk's next refresh."""
        st, h = self.state, self.state.h
        idx = np.asarray(accounts, dtype=np.int64)
        lmv = np.empty(idx.shape[0], dtype=np.int64)
        smv = np.empty(idx.shape[0], dtype=np.int64)
        account_values(idx, st.price, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr,
                       h.short_sec, h.short_qty, lmv, smv)
        st.long_mv[idx] = lmv
        st.short_mv[idx] = smv
        self._reach[idx] = PINNED

    # ------------------------------------------------------------------ events
    def _events(self, accounts, previous, trig, ts_event, now_ns) -> list[dict]:
        if accounts.shape[0] == 0:
            return []
        st = self.state
        figs = st.figures_many(accounts)
        ts_ev = np.broadcast_to(np.asarray(ts_event, dtype=np.int64), accounts.shape)
        t = self.now(now_ns)
        release = None
        out = []
        for a, prev, s, ts, f in zip(accounts.tolist(), previous.tolist(), trig.tolist(),
                                     ts_ev.tolist(), figs, strict=True):
            tier = int(self.reported[a])
            ev = self.envelope("TIER_CHANGE", ts, now_ns)
            self.tier_seq[a] = self.seq
            ev.update(f)
            ev["tier"] = u.TIER_NAMES[tier]  # the reported (hysteresis) tier
            ev["previous_tier"] = None if prev == u.UNSET_TIER else u.TIER_NAMES[prev]
            ev["profile"] = st.book.profile_names[st.book.profile_of[a]]
            ev["trigger"] = (None if s < 0 else
                             {"symbol": st.book.symbols[s], "price": yuan(int(st.price[s]))})
            if tier == u.FORCED_LIQUIDATION:  # always intraday, whatever the call basis
                ev["plan"] = self.plan(a, t)
                if release is None:
                    release = self.release_at(t) or 0
                if release:
                    ev["release_at"] = release
            out.append(ev)
            if tier == u.MARGIN_CALL and (prev == u.UNSET_TIER or prev > u.MARGIN_CALL):
                out.extend(self.lifecycle.entered_margin_call(a, t, ts, now_ns, f))
        return out

    def envelope(self, kind: str, ts_event: int, now_ns: int) -> dict:
        """A new event's envelope (next seq of this run)."""
        return self.stamps.envelope(kind, ts_event, now_ns)

    def plan(self, a: int, t_ns: int) -> dict:
        """The lot-rounded liquidation plan of account `a` at the current prices, made at
        engine time `t_ns`; events into FORCED_LIQUIDATION and CALL_EXPIRED carry it, so a
        liquidation hook acts on the prices that triggered it (`priced_ns` tells a consumer
        how old they are)."""
        d = self.state.plan_detail(a)
        d["priced_ns"] = int(t_ns)
        return d

    # ------------------------------------------------------------------ views
    def open_breaches(self, now_ns: int) -> list[dict]:
        """Current state of every account at WARNING or worse, as events without a seq (the
        snapshot a websocket client gets on connect)."""
        st = self.state
        bad = np.flatnonzero(self.reported <= u.WARNING)
        out = []
        for a, f in zip(bad.tolist(), st.figures_many(bad), strict=True):
            f = dict(f)
            f["kind"] = "SNAPSHOT"
            f["tier"] = u.TIER_NAMES[int(self.reported[a])]
            f["ts_published"] = now_ns
            call = self.calls.get(a)
            if call is not None:
                f["call"] = call.as_dict()
            out.append(f)
        return out

    def summary(self, now_ns: int) -> dict:
        st = self.state
        counts = np.empty(len(u.TIER_NAMES), dtype=np.int64)
        debt = np.empty(len(u.TIER_NAMES), dtype=np.float64)
        tier_totals(self.reported, st.liabilities(), counts, debt)  # one pass (kernels/totals)
        c = self.last_cycle
        return {
            "kind": "SUMMARY",
            "ts": now_ns,
            "run_id": self.run_id,
            "seq": self.seq,
            "accounts": st.book.n_accounts,
            "tiers": {name: int(counts[i]) for i, name in enumerate(u.TIER_NAMES)},
            "debt": {name: round(float(debt[i]) / u.MONEY_SCALE, 2)
                     for i, name in enumerate(u.TIER_NAMES)},
            "open_calls": int(self.calls.accounts.shape[0]),
            "clock_ns": self.clock_ns or None,
            "market": self.market(),
            "cycles": self.cycles,
            "sweeps": self.sweeps,
            "last_cycle": {"ticks": c.ticks, "symbols": c.symbols, "path": c.path,
                           "touched": c.touched, "events": c.events, "ms": c.ns / 1e6},
        }

    # ------------------------------------------------------------------ snapshot / restore
    def export_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Copies of everything ticks and account events have changed since the book was
        loaded, as (meta, arrays). Take it between cycles, with nothing pending; the runtime
        writes it with monitor/snapshot.py."""
        st, b, ae = self.state, self.state.book, self.account_events
        b.contracts()
        arrays = {"book_" + k: np.array(getattr(b, k), copy=True) for k in LIVE_BOOK
                  if getattr(b, k) is not None}
        named = [[int(cid), int(a), nm] for (a, nm), cid in b.contract_index.items()]
        arrays["contract_names"] = np.frombuffer(orjson.dumps(named), dtype=np.uint8).copy()
        arrays.update(price=st.price.copy(), reported=self.reported.copy(),
                      last_ts=self.last_ts.copy(), tier_seq=self.tier_seq.copy())
        calls = self.calls.all_open()
        arrays["call_account"] = np.array([c.account for c in calls], dtype=np.int64)
        arrays["call_issued_ns"] = np.array([c.issued_ns for c in calls], dtype=np.int64)
        arrays["call_deadline_ns"] = np.array([c.deadline_ns for c in calls], dtype=np.int64)
        arrays["call_deadline_day"] = np.array(  # -1: no deadline (the calendar's)
            [c.deadline.toordinal() if c.deadline is not None else -1 for c in calls],
            dtype=np.int64)
        arrays["call_deposit"] = np.array([c.deposit for c in calls], dtype=np.float64)
        arrays["call_basis"] = np.array([c.basis for c in calls], dtype=np.int8)
        arrays["call_days"] = np.array([c.days for c in calls], dtype=np.int64)
        arrays.update(self.credit.export_state())  # crossed credit controls (credit.py)
        seen = ae.seen_ids() if ae is not None else []
        arrays["seen_ids"] = np.frombuffer(orjson.dumps(seen), dtype=np.uint8).copy()
        meta = {"run_id": self.run_id, "seq": self.seq, "cycles": self.cycles,
                "events_applied": ae.applied if ae is not None else 0,
                "clock_ns": self.clock_ns, "ticked": self._ticked, "next_cid": b.next_cid}
        return meta, arrays

    def restore_state(self, meta: dict, arrays: dict, now_ns: int, *, seq: int | None = None,
                      run_id: str | None = None,
                      published: dict[int, int] | None = None) -> list[dict]:
        """Instead of `start`: put back what `export_state` saved (on an engine built from the
        same book) and re-announce, once, every account at WARNING or worse and every account
        whose last tier published after the snapshot (`published`: account -> tier) is not
        its restored tier: `restored: true`, `previous_tier` = the tier last published for it
        (else its restored tier), `restored_event_id` = the event that announced the restored
        tier. ValueError, before any change, when the arrays do not fit."""
        st, b = self.state, self.state.book
        _check_restore(b, arrays)
        self.credit.check_restore(arrays)
        old_run = meta.get("run_id")
        applied, new_seq = meta.get("events_applied", 0), meta.get("seq") if seq is None else seq
        if not isinstance(old_run, str) or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63
                for x in (applied, new_seq)):
            raise ValueError("snapshot manifest: run_id, seq or events_applied malformed")
        clock = meta.get("clock_ns") or 0
        if not isinstance(clock, int) or isinstance(clock, bool) or not 0 <= clock < 2**63 \
                or not isinstance(meta.get("ticked", False), bool):
            raise ValueError("snapshot manifest: clock_ns or ticked malformed")
        for k in ("cash", "accrued", "other_debt", "other_collateral", "profile_of", "haircut",
                  "suspended"):
            getattr(b, k)[:] = arrays["book_" + k]
        for k in ("pos_ptr", "pos_sec", "pos_kind", "pos_qty", "pos_cost", "pos_margin_ratio",
                  "pos_used"):  # sizes differ when the live book was rebuilt
            setattr(b, k, np.ascontiguousarray(arrays["book_" + k], dtype=getattr(b, k).dtype))
        if "book_pos_cid" in arrays:
            for k in CONTRACT_COLUMNS:
                setattr(b, k, np.ascontiguousarray(arrays["book_" + k],
                                                   dtype=CONTRACT_DTYPES[k]))
            named = orjson.loads(arrays["contract_names"].tobytes())
            b.contract_names = {int(c): str(nm) for c, _, nm in named}
            b.contract_index = {(int(a), str(nm)): int(c) for c, a, nm in named}
            b.next_cid = max(int(meta.get("next_cid") or 0),
                             int(b.pos_cid.max(initial=0)) + 1)
        else:  # a snapshot without contracts (version 1): numbered in book order, no dates
            for k in CONTRACT_COLUMNS:
                setattr(b, k, None)
            b.contract_names = b.contract_index = None
            b.next_cid = 0
            b.contracts()
        st.h = Holdings.from_book(b, slack=True)
        self._based = False  # reach bounds are re-based on the next reach cycle
        st.price[:] = arrays["price"]
        self.old_price[:] = st.price
        # a last tick time beyond the clock + skew (a bad clock, or a snapshot of an older
        # version that took future ticks) would freeze the symbol's ordering: clip it
        self.last_ts[:] = np.minimum(arrays["last_ts"], now_ns + self.config.max_skew_ns)
        self.reported[:] = arrays["reported"]
        self.tier_seq[:] = arrays["tier_seq"]
        self._n_pending = 0
        self._pending_ticks = 0
        st.sweep()  # exact market values at the restored prices
        # the credit controls' financing counts of the restored positions and their crossed
        # state (a snapshot without it: the first rotation announces what is crossed)
        self.credit.restore(arrays)
        k = arrays["call_account"].shape[0]  # basis and days: older snapshots lack them
        basis = arrays.get("call_basis", np.zeros(k, dtype=np.int8))
        days = arrays.get("call_days", np.full(k, self.config.call_days, dtype=np.int64))
        self.calls.restore([
            MarginCall(int(a), int(i), date.fromordinal(int(d)) if d > 0 else None,
                       int(dn) if d > 0 else NO_DEADLINE, float(x), basis=int(cb), days=int(n))
            for a, i, dn, d, x, cb, n in zip(
                arrays["call_account"], arrays["call_issued_ns"], arrays["call_deadline_ns"],
                arrays["call_deadline_day"], arrays["call_deposit"], basis, days, strict=True)])
        self._deferred = []
        self._startup = None
        self._ticked = bool(meta.get("ticked", False))
        if clock:
            self._set_clock(clock)
        if self.account_events is not None:
            self.account_events.restore(orjson.loads(arrays["seen_ids"].tobytes()), applied)
        self.stamps.run_id = run_id or old_run
        self.seq = new_seq
        published = published or {}
        moved = [a for a, t in published.items() if t != self.reported[a]]
        bad = np.union1d(np.flatnonzero(self.reported <= u.WARNING),
                         np.array(moved, dtype=np.int64)).astype(np.int64)
        prev = self.reported[bad].copy()
        for i, a in enumerate(bad.tolist()):
            prev[i] = published.get(a, prev[i])
        origin = self.tier_seq[bad].tolist()
        t = self.now(now_ns)
        events = self._events(bad, prev, np.full(bad.shape[0], -1, dtype=np.int64), t, now_ns)
        ids = self.state.book.account_ids
        origin_of = {ids[a]: (a, s) for a, s in zip(bad.tolist(), origin, strict=True)}
        for e in events:
            if e["kind"] != "TIER_CHANGE":
                continue  # a call opened now (a tier published after the snapshot was better)
            a, s = origin_of[e["account_id"]]
            e["restored"] = True
            e["restored_event_id"] = f"{old_run}-{s}" if s > 0 else None
            call = self.calls.get(a)  # the whole picture: the open call, or none
            e["call"] = call.as_dict() if call is not None else None
        events.extend(self.lifecycle.flush_unknown(t, now_ns))
        return events


# what account events change in a live book (monitor/account_events.py, monitor/ledger.py)
LIVE_BOOK = ("cash", "accrued", "other_debt", "other_collateral", "profile_of", "haircut",
             "suspended", "pos_ptr", "pos_sec", "pos_kind", "pos_qty", "pos_cost",
             "pos_margin_ratio", "pos_used", "pos_cid", "pos_open_day", "pos_term_day",
             "pos_notice")
CONTRACT_COLUMNS = ("pos_cid", "pos_open_day", "pos_term_day", "pos_notice")
CONTRACT_DTYPES = {"pos_cid": np.int64, "pos_open_day": np.int32, "pos_term_day": np.int32,
                   "pos_notice": np.int8}


def _check_restore(b, arrays: dict) -> None:
    """Shapes and index ranges of restored arrays against the book (a checksum already
    caught corruption; this catches a snapshot of another book or a bug)."""
    n, ns = b.n_accounts, b.n_securities
    want = {"price": ns, "last_ts": ns, "reported": n, "tier_seq": n, "book_haircut": ns,
            "book_suspended": ns, "book_pos_ptr": n + 1, "book_pos_used": n}
    want.update({"book_" + k: n for k in ("cash", "accrued", "other_debt", "other_collateral",
                                          "profile_of")})
    for k in ("call_account", "call_issued_ns", "call_deadline_ns", "call_deadline_day",
              "call_deposit", "seen_ids"):
        if k not in arrays or arrays[k].ndim != 1:
            raise ValueError(f"snapshot array {k!r} is missing")
    for k, size in want.items():
        if k not in arrays or arrays[k].shape != (size,):
            raise ValueError(f"snapshot array {k!r} is missing or has the wrong shape for "
                             f"this book ({n} accounts, {ns} securities)")
    ptr = arrays["book_pos_ptr"]
    m = int(ptr[-1])
    for k in ("pos_sec", "pos_kind", "pos_qty", "pos_cost", "pos_margin_ratio"):
        if arrays["book_" + k].shape != (m,):
            raise ValueError(f"snapshot array 'book_{k}' does not match book_pos_ptr")
    if "book_pos_cid" in arrays:
        for k in CONTRACT_COLUMNS:
            if "book_" + k not in arrays or arrays["book_" + k].shape != (m,):
                raise ValueError(f"snapshot array 'book_{k}' does not match book_pos_ptr")
        if "contract_names" not in arrays or arrays["contract_names"].ndim != 1:
            raise ValueError("snapshot array 'contract_names' is missing")
        try:
            named = orjson.loads(arrays["contract_names"].tobytes())
        except orjson.JSONDecodeError:
            named = None
        if not isinstance(named, list) or not all(
                isinstance(x, list) and len(x) == 3 and isinstance(x[0], int)
                and isinstance(x[1], int) and 0 <= x[1] < n and isinstance(x[2], str)
                for x in named):
            raise ValueError("snapshot array 'contract_names' is not a list of "
                             "[number, account, id]")
        days = (arrays["book_pos_open_day"], arrays["book_pos_term_day"])
        if m and (arrays["book_pos_cid"].min() < 0 or any(
                d.min() < 0 or d.max() > date.max.toordinal() for d in days)):
            raise ValueError("snapshot contracts hold impossible numbers or dates")
    if m and (arrays["book_pos_sec"].min() < 0 or arrays["book_pos_sec"].max() >= ns):
        raise ValueError("snapshot positions name securities this book does not have")
    pf = arrays["book_profile_of"]
    if n and (pf.min() < 0 or pf.max() >= b.profile_lines.shape[0]):
        raise ValueError("snapshot accounts name line profiles this book does not have")
    if (arrays["price"] <= 0).any() or np.any(np.diff(ptr) < arrays["book_pos_used"]):
        raise ValueError("snapshot prices or position rows are inconsistent")
    ca = arrays["call_account"]
    n_calls = ca.shape[0]
    if any(arrays[k].shape != (n_calls,) for k in ("call_issued_ns", "call_deadline_ns",
                                                  "call_deadline_day", "call_deposit")):
        raise ValueError("snapshot margin-call arrays differ in length")
    dd = arrays["call_deadline_day"]  # -1: a call the calendar could not date
    if n_calls and (ca.min() < 0 or ca.max() >= n or ((dd < 1) & (dd != -1)).any()
                    or dd.max() > date.max.toordinal()):
        raise ValueError("snapshot margin calls name unknown accounts or impossible dates")
    for k, ok in (("call_basis", lambda a: ((a == 0) | (a == 1)).all()),
                  ("call_days", lambda a: ((a >= 1) & (a <= 366)).all())):
        if k in arrays and (arrays[k].shape != (n_calls,) or not ok(arrays[k])):
            raise ValueError(f"snapshot array {k!r} does not fit the margin calls")
    try:
        seen = orjson.loads(arrays["seen_ids"].tobytes())
    except orjson.JSONDecodeError:
        seen = None
    if not isinstance(seen, list):
        raise ValueError("snapshot array 'seen_ids' is not a JSON list")
    # every account within the bounds of kernels/units.py (a snapshot of an older version
    # could hold balances that overflowed)
    up = np.maximum(b.price, b.price_ceiling()).astype(np.float64)
    acct = np.repeat(np.arange(n), np.diff(ptr))
    mv = np.abs(arrays["book_pos_qty"].astype(np.float64)) * up[arrays["book_pos_sec"]]
    total = np.bincount(acct, weights=mv + np.abs(arrays["book_pos_cost"].astype(np.float64)),
                        minlength=n)
    for k in ("cash", "accrued", "other_debt", "other_collateral"):
        total += np.abs(arrays["book_" + k].astype(np.float64))
    if n and total.max() > u.MAX_ACCOUNT_MONEY:
        raise ValueError(f"snapshot holds {int((total > u.MAX_ACCOUNT_MONEY).sum())} accounts "
                         "beyond the exact range of kernels/units.py")
