"""The engine: ticks in, tier transitions out. Sans-I/O: no sockets, no clocks of its own, no
logging on the tick path; asyncio tasks around it feed ticks and ship the events it returns.

Per cycle: ticks accumulated since the last cycle are conflated per symbol (the last price is
the state), then the cheaper exact path is taken: an incremental update over the holders of the
changed symbols, or a full sweep when they hold a large share of all positions. Both are exact
(integer money), so the choice changes cost, never results.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from kernels import units as u
from kernels.conflate import conflate, take_pending, triggers
from kernels.incremental import apply_price_changes, holders_touched, retier_accounts
from kernels.ratios import collect_changes, sweep_tiers

from .account_events import AccountEventError, AccountEvents
from .calls import MarginCalls
from .state import MarginState, yuan


@dataclass(slots=True)
class EngineConfig:
    hysteresis_bp: int = u.DEFAULT_HYSTERESIS_BP
    # sweep when the changed symbols' holder rows exceed this share of all rows: an incremental
    # row costs several times a sweep row (random access), see docs/capacity.md
    sweep_share: float = 0.08
    call_days: int = 2  # margin-call deadline, trading days after the day of issue
    holidays: frozenset[date] = field(default_factory=frozenset)
    run_id: str = ""


@dataclass(slots=True)
class CycleStats:
    ticks: int = 0
    symbols: int = 0
    path: str = "none"  # "incremental" | "sweep" | "none"
    touched: int = 0
    events: int = 0
    ns: int = 0


class Engine:
    def __init__(self, state: MarginState, config: EngineConfig | None = None):
        self.state = state
        self.config = config or EngineConfig()
        self.run_id = self.config.run_id or uuid.uuid4().hex[:12]
        b = state.book
        n, ns = b.n_accounts, b.n_securities
        self.reported = np.full(n, u.UNSET_TIER, dtype=np.int8)
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
        self.seq = 0
        self.calls = MarginCalls(self.config.call_days, self.config.holidays)
        self.account_events = AccountEvents(state) if b.pos_used is not None else None
        self._one = np.empty(1, dtype=np.int64)
        self.last_cycle = CycleStats()
        self.cycles = 0
        self.sweeps = 0

    # ------------------------------------------------------------------ input
    def add_ticks(self, sec: np.ndarray, price: np.ndarray, ts: np.ndarray) -> None:
        """Queue validated ticks (dense security indices, money-unit prices, ns timestamps)."""
        n = sec.shape[0]
        if n:
            self._n_pending = conflate(sec, price, ts, n, self._pending_price, self._pending_ts,
                                       self._pending_flag, self._pending_list, self._n_pending)
            self._pending_ticks += n

    @property
    def pending(self) -> int:
        return self._n_pending

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
        bad = np.flatnonzero(self.reported <= u.WARNING)
        prev = np.full(bad.shape[0], u.UNSET_TIER, dtype=np.int8)
        trig = np.full(bad.shape[0], -1, dtype=np.int64)
        return self._events(bad, prev, trig, now_ns, now_ns)

    def cycle(self, now_ns: int) -> list[dict]:
        """Apply everything queued since the last cycle; return the events it causes."""
        t0 = time.perf_counter_ns()
        st, h, b = self.state, self.state.h, self.state.book
        stats = CycleStats(ticks=self._pending_ticks)
        k = take_pending(self._pending_list, self._n_pending, self._pending_price,
                         self._pending_flag, st.price, self.old_price, self._secs, self._prices)
        self._n_pending = 0
        self._pending_ticks = 0
        stats.symbols = k
        n_changed = 0
        if k:
            secs, prices = self._secs[:k], self._prices[:k]
            self.last_ts[secs] = self._pending_ts[secs]
            rows = holders_touched(secs, k, h.long_hptr, h.short_hptr)
            if rows > self.config.sweep_share * max(h.n_rows, 1):
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
            ts_event = np.where(trig >= 0, self._pending_ts[np.maximum(trig, 0)], now_ns)
            events = self._events(changed.copy(), self._previous[:n_changed].copy(),
                                  trig.copy(), ts_event, now_ns)
        if k:
            self.old_price[self._secs[:k]] = st.price[self._secs[:k]]
        events.extend(self._call_lifecycle(now_ns))
        stats.events = len(events)
        stats.ns = time.perf_counter_ns() - t0
        self.last_cycle = stats
        self.cycles += 1
        return events

    def apply_account_event(self, ev: dict, now_ns: int) -> list[dict]:
        """Apply one account event (a fill, a deposit, ...) and re-tier the accounts it moved.
        Raises AccountEventError, leaving the book unchanged, when the event is invalid."""
        if self.account_events is None:
            raise AccountEventError("read_only", "this engine's book is read-only "
                                    "(build its MarginState with live=True)")
        accounts = self.account_events.apply(ev)
        if not accounts:
            return []
        events = self._account_event_transitions(ev, accounts, now_ns)
        events.extend(self._call_lifecycle(now_ns))  # a deposit may cure a call at once
        return events

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
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else now_ns
        events = self._events(self._changed[:n].copy(), self._previous[:n].copy(),
                              np.full(n, -1, dtype=np.int64), ts, now_ns)
        trigger = {"event": ev["type"], "event_id": ev.get("event_id")}
        for e in events:
            if e["kind"] == "TIER_CHANGE":
                e["trigger"] = trigger
        return events

    # ------------------------------------------------------------------ events
    def _events(self, accounts, previous, trig, ts_event, now_ns) -> list[dict]:
        if accounts.shape[0] == 0:
            return []
        st = self.state
        figs = st.figures_many(accounts)
        ts_ev = np.broadcast_to(np.asarray(ts_event, dtype=np.int64), accounts.shape)
        out = []
        for a, prev, s, ts, f in zip(accounts.tolist(), previous.tolist(), trig.tolist(),
                                     ts_ev.tolist(), figs, strict=True):
            tier = int(self.reported[a])
            ev = self._envelope("TIER_CHANGE", ts, now_ns)
            ev.update(f)
            ev["tier"] = u.TIER_NAMES[tier]  # the reported (hysteresis) tier
            ev["previous_tier"] = None if prev == u.UNSET_TIER else u.TIER_NAMES[prev]
            ev["profile"] = st.book.profile_names[st.book.profile_of[a]]
            ev["trigger"] = (None if s < 0 else
                             {"symbol": st.book.symbols[s], "price": yuan(int(st.price[s]))})
            if tier == u.FORCED_LIQUIDATION:
                ev["plan"] = self.plan(a, now_ns)
            out.append(ev)
            if tier == u.MARGIN_CALL and (prev == u.UNSET_TIER or prev > u.MARGIN_CALL):
                # the engine's clock (not the tick's exchange time) runs deadlines, so a
                # replay of old ticks does not open calls that are already expired
                call = self.calls.open(a, now_ns, f)
                if call is not None:
                    out.append(self._call_event("CALL_ISSUED", a, call, ts, now_ns, f))
        return out

    def _envelope(self, kind: str, ts_event: int, now_ns: int) -> dict:
        self.seq += 1
        return {"event_id": f"{self.run_id}-{self.seq}", "seq": self.seq, "kind": kind,
                "ts_event": int(ts_event), "ts_published": int(now_ns)}

    def _call_event(self, kind, a, call, ts, now_ns, figures=None) -> dict:
        ev = self._envelope(kind, ts, now_ns)
        ev.update(figures or self.state.figures(a))
        ev["tier"] = u.TIER_NAMES[int(self.reported[a])]
        ev["previous_tier"] = ev["tier"]
        ev["profile"] = self.state.book.profile_names[self.state.book.profile_of[a]]
        ev["call"] = call.as_dict()
        return ev

    def _call_lifecycle(self, now_ns: int) -> list[dict]:
        """Cure open calls whose account is back at the target; expire those past deadline."""
        calls = self.calls
        if calls.accounts.shape[0] == 0:
            return []
        st, h, b = self.state, self.state.h, self.state.book
        accts = calls.accounts
        A = h.base_assets[accts] + st.long_mv[accts]
        L = h.base_liabilities[accts] + st.short_mv[accts]
        T = b.profile_lines[b.profile_of[accts], u.LINE_TARGET]
        cured = (L <= 0) | (A * u.RATIO_SCALE >= T * L)
        due = np.flatnonzero(cured | (calls.deadlines <= now_ns))
        out = []
        for a, ok in zip(accts[due].tolist(), cured[due].tolist(), strict=True):
            if ok:
                call = calls.close(a, "CURED", now_ns)
                out.append(self._call_event("CALL_CURED", a, call, now_ns, now_ns))
            else:
                call = calls.close(a, "EXPIRED", now_ns)
                ev = self._call_event("CALL_EXPIRED", a, call, now_ns, now_ns)
                ev["plan"] = self.plan(a, now_ns)
                out.append(ev)
        return out

    def plan(self, a: int, now_ns: int) -> dict:
        """The lot-rounded liquidation plan of account `a` at the current prices; events into
        FORCED_LIQUIDATION and CALL_EXPIRED carry it, so a liquidation hook acts on the prices
        that triggered it (`priced_ns` tells a consumer how old they are)."""
        orders, ratio_after, residual = self.state.plan(a)
        return {"orders": orders, "ratio_after": ratio_after, "residual": residual,
                "priced_ns": int(now_ns)}

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
        L = st.liabilities()
        counts = np.bincount(self.reported.astype(np.int64) + 1, minlength=u.N_LINES + 2)[1:]
        debt = np.bincount(self.reported.astype(np.int64) + 1, weights=L.astype(np.float64),
                           minlength=u.N_LINES + 2)[1:]
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
            "cycles": self.cycles,
            "sweeps": self.sweeps,
            "last_cycle": {"ticks": c.ticks, "symbols": c.symbols, "path": c.path,
                           "touched": c.touched, "events": c.events, "ms": c.ns / 1e6},
        }
