"""Trading-pattern watch: abnormal trading in credit accounts, read from the fills the engine
applies (account events of type `fill`). Each hit is one `TRADING_PATTERN` event on the alert
channels; the rules, their defaults and what they fire on are in docs/reports-and-audit.md.

Rules (per account and security, each with its own window over the fills' `ts`):

- `round_trips`: `count` round trips within `window_s`. A leg is a run of fills in one
  direction (buys: collateral_buy, financed_buy, buy_to_cover; sells: the other three); two
  consecutive legs are a round trip, so an order split into many fills is still one leg.
- `thin_turnover`: in a thin stock (usual daily traded value below `thin_value` yuan) the
  account traded at least `multiple` x the stock's usual daily volume within `window_s`, and at
  least `min_value` yuan. Usual volume: a CSV `usual_volume_file` (symbol, usual_volume in
  shares/day) where given, else derived from the book: `usual_turnover` x the shares the
  book's accounts hold (the book's own usual activity in the stock).
- `limit_trades`: `count` trades against the limit price within `window_s`: buying at (or
  above) limit-up or selling at (or below) limit-down, the band from `feeds.universe.limit_band`
  (via `Book.limit_prices`). Fills less than `merge_s` apart are one trade (one order's
  partial fills).

A hit consumes its evidence: the next hit of the rule for that account and security needs a
fresh set of fills. Plain Python per fill (a few microseconds): fills are thousands per second
at most, so no kernel pays off here.

Bounded memory: the evidence held (per rule, account and security) is charged ``KEY_BYTES`` per
entry and ``FILL_BYTES`` per fill; past ``state_bytes`` (the run config's
`pattern_state_bytes`) the entry changed longest ago is dropped whole, oldest first, and
counted (`dropped_entries`, `dropped_fills`: a rule can then miss a pattern whose evidence was
dropped, never fire on evidence it does not have).
"""

from __future__ import annotations

import csv
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from kernels import units as u
from monitor.core.account_events import AccountEventError, money_field
from monitor.core.state import yuan
from monitor.errors import ConfigError

BUY_SIDES = frozenset(("collateral_buy", "financed_buy", "buy_to_cover"))
SELL_SIDES = frozenset(("collateral_sell", "sell_to_repay", "short_sell"))
NS = 1_000_000_000
# what one held entry and one held fill cost (measured allowances: tests/core/test_patterns.py
# checks them against tracemalloc): the (account, security) key, its container (a deque) and
# the index slot; a fill's dict with its strings and numbers, and its slot in the container
KEY_BYTES = 1536
FILL_BYTES = 640


@dataclass(slots=True)
class RoundTripRule:
    enabled: bool = True
    count: int = 3
    window_s: float = 1800.0


@dataclass(slots=True)
class ThinTurnoverRule:
    enabled: bool = True
    window_s: float = 14_400.0  # one trading day (4 hours)
    thin_value: float = 5_000_000.0  # yuan of usual daily traded value
    multiple: float = 3.0  # "far above": at least 3x the usual daily volume
    min_value: float = 1_000_000.0  # yuan
    usual_turnover: float = 0.05  # derived usual volume: this share of the book's holdings
    usual_volume_file: str = ""


@dataclass(slots=True)
class LimitTradesRule:
    enabled: bool = True
    count: int = 3
    window_s: float = 3600.0
    merge_s: float = 10.0


@dataclass(slots=True)
class PatternConfig:
    enabled: bool = True
    round_trips: RoundTripRule = field(default_factory=RoundTripRule)
    thin_turnover: ThinTurnoverRule = field(default_factory=ThinTurnoverRule)
    limit_trades: LimitTradesRule = field(default_factory=LimitTradesRule)
    # byte cap of the evidence held (the run config's `pattern_state_bytes`, not a [patterns]
    # setting): past it the oldest entry is dropped, counted
    state_bytes: int = 64 * 2**20

    @classmethod
    def from_dict(cls, d: dict | None) -> PatternConfig:
        """From the run config's `[patterns]` table; unknown keys and bad values are errors."""
        cfg = cls()
        for k, v in (d or {}).items():
            k = k.replace("-", "_")
            sub = getattr(cfg, k, None) if k in {f.name for f in fields(cls)} - {
                "state_bytes"} else None
            if k == "enabled":
                cfg.enabled = _typed("patterns.enabled", v, bool)
            elif sub is not None and isinstance(v, dict):
                names = {f.name: f for f in fields(sub)}
                for kk, vv in v.items():
                    kk = kk.replace("-", "_")
                    if kk not in names:
                        raise ConfigError(f"patterns.{k}: unknown setting {kk!r}")
                    setattr(sub, kk, _typed(f"patterns.{k}.{kk}", vv,
                                            type(getattr(sub, kk))))
            else:
                raise ConfigError(f"patterns: unknown setting {k!r}")
        for name in ("round_trips", "limit_trades"):
            if getattr(cfg, name).count < 1:
                raise ConfigError(f"patterns.{name}.count must be >= 1")
        for name in ("round_trips", "thin_turnover", "limit_trades"):
            if getattr(cfg, name).window_s <= 0:
                raise ConfigError(f"patterns.{name}.window_s must be > 0")
        return cfg


def _typed(where, v, typ):
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {v!r}")
    if typ in (int, float) and v < 0:
        raise ConfigError(f"{where}: must be >= 0")
    return v


def load_usual_volume(path: str, symbol_index: dict[str, int], out: np.ndarray) -> int:
    """Overwrite `out[sec]` from a CSV of `symbol,usual_volume` (shares per day); returns the
    rows used. Unknown symbols are skipped; a bad number is a ConfigError naming the row."""
    try:
        rows = list(csv.DictReader(Path(path).open(newline="")))
    except OSError as e:
        raise ConfigError(f"patterns.thin_turnover.usual_volume_file: {e.strerror}") from None
    used = 0
    for i, r in enumerate(rows, start=2):
        s = symbol_index.get((r.get("symbol") or "").strip())
        if s is None:
            continue
        try:
            v = float(r.get("usual_volume") or "")
        except ValueError:
            raise ConfigError(f"{path} line {i}: usual_volume must be a number") from None
        if not v >= 0:
            raise ConfigError(f"{path} line {i}: usual_volume must be >= 0")
        out[s] = v
        used += 1
    return used


class _Legs:
    """Fills of one (account, security) as legs: runs of one direction."""

    __slots__ = ("legs", "last")

    def __init__(self):
        self.legs: deque[tuple[int, list]] = deque()
        self.last = 0


class PatternWatch:
    """Consumes applied fills, returns TRADING_PATTERN events (built on the engine's envelope,
    so they carry event_id and seq like every other alert)."""

    def __init__(self, state, stamps, reported: np.ndarray, config: PatternConfig | None = None):
        self.state = state
        self.stamps = stamps
        self.reported = reported
        self.config = config or PatternConfig()
        b = state.book
        held = np.bincount(b.pos_sec, weights=b.pos_qty.astype(np.float64),
                           minlength=b.n_securities)
        tt = self.config.thin_turnover
        self.usual_volume = held * tt.usual_turnover  # shares per day
        if tt.usual_volume_file:
            load_usual_volume(tt.usual_volume_file, b.symbol_index, self.usual_volume)
        self._trips: dict[tuple[int, int], _Legs] = {}
        self._turnover: dict[tuple[int, int], deque] = {}
        self._limit: dict[tuple[int, int], deque] = {}
        self.fills = 0
        self.hits: dict[str, int] = {"round_trips": 0, "thin_turnover": 0, "limit_trades": 0}
        # evidence held per (rule, key): fills, in the order the entries last changed
        self._rules = {"round_trips": self._trips, "thin_turnover": self._turnover,
                       "limit_trades": self._limit}
        self._held: dict[tuple[str, tuple[int, int]], int] = {}
        self.nbytes = 0
        self.dropped_entries = 0
        self.dropped_fills = 0

    def thin(self, s: int) -> bool:
        b = self.state.book
        value = self.usual_volume[s] * int(b.prev_close[s]) / u.MONEY_SCALE
        return value < self.config.thin_turnover.thin_value

    # ------------------------------------------------------------------ input
    def observe(self, ev: dict, now_ns: int) -> list[dict]:
        """Called by the engine after it applied an account event (valid by then)."""
        if not self.config.enabled or ev.get("type") != "fill":
            return []
        st = self.state
        b = st.book
        a = b.account_index.get(ev.get("account_id"))
        s = b.symbol_index.get(ev.get("symbol"))
        side = ev.get("side")
        if a is None or s is None or side not in BUY_SIDES and side not in SELL_SIDES:
            return []
        try:
            price = money_field(ev, "price")
        except AccountEventError:
            return []
        ts = ev.get("ts")
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else now_ns
        buy = side in BUY_SIDES
        fill = {"event_id": ev.get("event_id"), "ts": ts, "side": side, "qty": int(ev["qty"]),
                "price": yuan(price)}
        self.fills += 1
        if self.fills % 65_536 == 0:
            self._forget(ts)
        key = (a, s)
        out = []
        cfg = self.config
        if cfg.round_trips.enabled:
            out.extend(self._round_trips(key, buy, ts, fill, now_ns))
        if cfg.thin_turnover.enabled and self.thin(s):
            out.extend(self._thin_turnover(key, ts, fill, price, now_ns))
        if cfg.limit_trades.enabled:
            at_limit = bool(st.has_limit[s]) and (price >= st.limit_up[s] if buy
                                                  else price <= st.limit_down[s])
            if at_limit:
                out.extend(self._limit_trades(key, buy, ts, fill, now_ns))
        return out

    # ------------------------------------------------------------------ rules
    def _round_trips(self, key, buy, ts, fill, now_ns):
        r = self.config.round_trips
        st = self._trips.get(key)
        if st is None:
            st = self._trips[key] = _Legs()
        st.last = ts
        legs = st.legs
        if legs and legs[-1][0] == buy:
            legs[-1][1].append(fill)
        else:
            legs.append((buy, [fill]))
        lo = ts - int(r.window_s * NS)
        while legs:  # the window holds fills with ts >= now - window (both ends inclusive)
            first = legs[0][1]
            while first and first[0]["ts"] < lo:
                first.pop(0)
            if first:
                break
            legs.popleft()
        if len(legs) < 2 * r.count:
            self._charge("round_trips", key, sum(len(fl) for _, fl in legs))
            return []
        evidence_fills = [f for _, fl in legs for f in fl]
        legs.clear()
        self._charge("round_trips", key, 0)
        return [self._event("round_trips", key, ts, now_ns, evidence_fills,
                            {"round_trips": r.count, "window_s": r.window_s})]

    def _thin_turnover(self, key, ts, fill, price, now_ns):
        r = self.config.thin_turnover
        q = self._turnover.get(key)
        if q is None:
            q = self._turnover[key] = deque()
        q.append((ts, fill, fill["qty"] * price))
        lo = ts - int(r.window_s * NS)
        while q and q[0][0] < lo:
            q.popleft()
        qty = sum(f["qty"] for _, f, _ in q)
        value = sum(v for _, _, v in q)
        usual = float(self.usual_volume[key[1]])
        if qty < r.multiple * usual or value < r.min_value * u.MONEY_SCALE:
            self._charge("thin_turnover", key, len(q))
            return []
        fills = [f for _, f, _ in q]
        q.clear()
        self._charge("thin_turnover", key, 0)
        return [self._event("thin_turnover", key, ts, now_ns, fills, {
            "turnover_qty": qty, "turnover_value": yuan(value),
            "usual_volume": round(usual, 1),
            "usual_value": yuan(int(usual * int(self.state.book.prev_close[key[1]]))),
            "multiple": round(qty / usual, 2) if usual > 0 else None,
            "window_s": r.window_s})]

    def _limit_trades(self, key, buy, ts, fill, now_ns):
        r = self.config.limit_trades
        st = self.state
        q = self._limit.get(key)
        if q is None:
            q = self._limit[key] = deque()
        if q and ts - q[-1][-1]["ts"] < r.merge_s * NS:
            q[-1].append(fill)  # the same order's partial fills: one trade
        else:
            q.append([fill])
        lo = ts - int(r.window_s * NS)
        while q and q[0][0]["ts"] < lo:
            q.popleft()
        if len(q) < r.count:
            self._charge("limit_trades", key, sum(len(t) for t in q))
            return []
        fills = [f for trade in q for f in trade]
        n = len(q)
        q.clear()
        self._charge("limit_trades", key, 0)
        s = key[1]
        return [self._event("limit_trades", key, ts, now_ns, fills, {
            "trades": n, "window_s": r.window_s,
            "limit": "up" if buy else "down",
            "limit_price": yuan(int(st.limit_up[s] if buy else st.limit_down[s]))})]

    # ------------------------------------------------------------------ output
    def _event(self, rule, key, ts, now_ns, fills, extra) -> dict:
        a, s = key
        b = self.state.book
        self.hits[rule] += 1
        ev = self.stamps.envelope("TRADING_PATTERN", ts, now_ns)
        tier = int(self.reported[a])
        A, L = self.state.values(np.array([a], dtype=np.int64))
        ev.update({
            "account_id": b.account_ids[a], "symbol": b.symbols[s], "rule": rule,
            "tier": u.TIER_NAMES[tier] if tier >= 0 else None,
            "previous_tier": u.TIER_NAMES[tier] if tier >= 0 else None,
            "profile": b.profile_names[int(b.profile_of[a])],
            "ratio": round(int(A[0]) / int(L[0]), 6) if L[0] > 0 else None,
            "evidence": {"count": len(fills), **extra,
                         "first_ns": fills[0]["ts"], "last_ns": fills[-1]["ts"],
                         "fills": fills},
            "trigger": {"event": "fill", "event_id": fills[-1]["event_id"]},
        })
        return ev

    # ------------------------------------------------------------------ bounded state
    def _charge(self, rule: str, key: tuple[int, int], fills: int) -> None:
        """The entry (rule, key) now holds `fills` fills: account its bytes (newest last),
        then drop the oldest entries while the evidence is over `state_bytes`."""
        k = (rule, key)
        old = self._held.pop(k, None)
        if old is not None:
            self.nbytes -= KEY_BYTES + FILL_BYTES * old
        self._held[k] = fills
        self.nbytes += KEY_BYTES + FILL_BYTES * fills
        cap = int(self.config.state_bytes)
        while self.nbytes > cap and self._held:
            (r, kk), n = next(iter(self._held.items()))
            self._drop(r, kk)
            self.dropped_entries += 1
            self.dropped_fills += n

    def _drop(self, rule: str, key: tuple[int, int]) -> None:
        n = self._held.pop((rule, key), None)
        if n is not None:
            self.nbytes -= KEY_BYTES + FILL_BYTES * n
        self._rules[rule].pop(key, None)

    def _forget(self, now: int) -> None:
        """Drop per-(account, security) state idle for longer than every window."""
        c = self.config
        lo = now - int(max(c.round_trips.window_s, c.thin_turnover.window_s,
                           c.limit_trades.window_s) * NS)
        for k in [k for k, v in self._trips.items() if v.last < lo]:
            self._drop("round_trips", k)
        for rule, d in (("thin_turnover", self._turnover), ("limit_trades", self._limit)):
            for k in [k for k, v in d.items() if not v or _last_ts(v) < lo]:
                self._drop(rule, k)

    def stats(self) -> dict:
        return {"fills": self.fills, "hits": dict(self.hits),
                "tracked": len(self._trips) + len(self._turnover) + len(self._limit),
                "bytes": self.nbytes, "max_bytes": int(self.config.state_bytes),
                "dropped_entries": self.dropped_entries, "dropped_fills": self.dropped_fills}


def _last_ts(q) -> int:
    x = q[-1]
    if isinstance(x, tuple):
        return x[0]
    return x[-1]["ts"]
