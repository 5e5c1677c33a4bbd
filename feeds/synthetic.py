"""Seeded synthetic market data with scripted scenarios.

Model (deterministic for a seed: the content of the feed depends only on the seed, the universe
and the parameters, never on pacing or wall time):

- Activity is Zipf-skewed: security weights are `universe.popularity` when given, else
  1 / rank^zipf over a seeded shuffle of the universe, so popular stocks tick most.
- Each batch covers `batch_ms` of wall time and `batch_ms · speed` of simulated time (`speed` is
  the time-compression factor: with speed=60 a 5-minute crash plays in 5 s). A batch carries
  `rate · batch_ms / 1000` ticks (`rate` is ticks per wall second), securities drawn by weight, at
  strictly increasing exchange times inside the batch's simulated interval. Exchange time starts
  at `start_ns` (default 2025-11-21 09:30 Asia/Shanghai).
- Price of security i: base_i · exp(beta_i · M(t) + X_i(t) + D_i(t)), with M a market log-level
  (random walk, `market_vol` annualised, plus the crash drift), X_i an idiosyncratic random walk
  (`vol` annualised, sampled exactly at the security's tick times), D_i a scripted drift; rounded to
  the 0.01 tick, plus a one-tick bid/ask bounce, and clipped into [limit_down, limit_up].

Scenarios (`synthetic:NAME?param=value&...`; times in simulated minutes from the start):

    walk         the plain random walk (default)
    crash        index falls by `drop` (default 0.07) linearly over `minutes` (5) from `at` (0);
                 betas are U(0.7, 1.3), so the average stock falls by about `drop`
    limit_down   `symbol` (default: the most active) slides to limit-down over `minutes` (2) from
                 `at` (0) and stays pinned there
    suspension   `symbol` (default: the most active) is suspended at `at` (0.5) for `minutes` (1):
                 no ticks meanwhile; the account-events {"type": "suspend"|"resume", "symbol",
                 "sec", "ts"} are listed in `scenario_events` and attached to the batch during
                 which they fall (`TickBatch.events`)
    bad_prints   at `at` (0), and every `every` minutes if > 0, a burst of `count` (200) raw bad
                 messages (truncated JSON, wrong shapes, missing fields, NaN / Infinity strings,
                 non-positive, unknown symbol, out of band, out of order, duplicate, oversize,
                 wrong types, a ts a year ahead) goes through the feed's parser: all are
                 rejected and counted in `stats().rejected`, none is applied

Common parameters: seed, rate (20000), batch_ms (10), duration (wall seconds of the run; the
number of batches is duration·1000/batch_ms), ticks (total), speed (1), pace (1: yield in real time;
0: as fast as possible), vol (0.35), market_vol (0.20), zipf (1.1), encode (0: hand the parser
arrays; 1: encode each batch as one JSON message and parse it, exercising the JSON path). Without
duration or ticks the feed runs until closed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import numpy as np
import orjson

from feeds.base import BaseFeed
from feeds.net import parse_params
from feeds.ticks import NEVER, TickBatch

DEFAULT_START_NS = 1_763_688_600_000_000_000  # 2025-11-21 09:30:00 +08:00
TRADING_SECONDS_PER_YEAR = 250 * 4 * 3600
TICK = 10  # li: the 0.01 yuan price step

SCENARIOS = ("walk", "crash", "limit_down", "suspension", "bad_prints")
COMMON_PARAMS = {
    "seed": int, "rate": float, "batch_ms": float, "duration": float, "ticks": int,
    "speed": float, "pace": bool, "vol": float, "market_vol": float, "zipf": float,
    "encode": bool, "start_ns": int,
}
SCENARIO_PARAMS = {
    "walk": {},
    "crash": {"drop": float, "minutes": float, "at": float},
    "limit_down": {"symbol": str, "minutes": float, "at": float},
    "suspension": {"symbol": str, "minutes": float, "at": float},
    "bad_prints": {"count": int, "at": float, "every": float},
}
SCENARIO_DEFAULTS = {
    "walk": {},
    "crash": {"drop": 0.07, "minutes": 5.0, "at": 0.0},
    "limit_down": {"symbol": None, "minutes": 2.0, "at": 0.0},
    "suspension": {"symbol": None, "minutes": 1.0, "at": 0.5},
    "bad_prints": {"count": 200, "at": 0.0, "every": 0.0},
}


class SyntheticFeed(BaseFeed):
    def __init__(
        self,
        universe,
        scenario: str | None = None,
        *,
        seed: int = 0,
        rate: float = 20_000,
        batch_ms: float = 10.0,
        duration: float | None = None,
        ticks: int | None = None,
        speed: float = 1.0,
        pace: bool = True,
        vol: float = 0.35,
        market_vol: float = 0.20,
        zipf: float = 1.1,
        encode: bool = False,
        start_ns: int = DEFAULT_START_NS,
        name: str | None = None,
        max_message_bytes: int = 1 << 20,
        **params,
    ):
        scenario = scenario or "walk"
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown synthetic scenario {scenario!r} (known: {SCENARIOS})")
        unknown = set(params) - set(SCENARIO_PARAMS[scenario])
        if unknown:
            raise ValueError(f"synthetic:{scenario}: unknown parameter(s) {sorted(unknown)}")
        if rate <= 0 or batch_ms <= 0 or speed <= 0:
            raise ValueError("synthetic: rate, batch_ms and speed must be positive")
        super().__init__(universe, name=name or f"synthetic:{scenario}",
                         max_message_bytes=max_message_bytes)
        self.scenario = scenario
        self.params = {**SCENARIO_DEFAULTS[scenario], **params}
        self.seed, self.rate, self.batch_ms = seed, float(rate), float(batch_ms)
        self.duration, self.ticks, self.speed, self.pace = duration, ticks, float(speed), pace
        self.encode, self.start_ns = encode, int(start_ns)
        self.zipf = zipf

        n = universe.n
        rng = np.random.default_rng(seed)
        self._rng = rng
        base = np.where(universe.price > 0, universe.price, universe.prev_close).astype(np.int64)
        self.base = base
        if universe.popularity is not None:
            w = np.asarray(universe.popularity, dtype=np.float64).copy()
        else:
            w = np.empty(n, dtype=np.float64)
            w[rng.permutation(n)] = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** zipf
        w[base <= 0] = 0.0
        if n == 0 or w.sum() <= 0:
            raise ValueError("synthetic: no security with a price to quote")
        self.weights = w / w.sum()
        self._cdf = np.cumsum(self.weights)
        self._cdf[-1] = 1.0
        self.most_active = int(np.argmax(self.weights))
        self.beta = rng.uniform(0.7, 1.3, n) if scenario == "crash" else np.ones(n)
        per_sec = 1.0 / math.sqrt(TRADING_SECONDS_PER_YEAR)
        self._sigma = vol * per_sec  # idiosyncratic, per sqrt(simulated second)
        self._sigma_m = market_vol * per_sec

        # state
        self._m = 0.0
        self._x = np.zeros(n, dtype=np.float64)
        self._last_upd = np.zeros(n, dtype=np.float64)  # simulated seconds
        self._drift = np.zeros(n, dtype=np.float64)
        self._k = 0
        self._emitted = 0
        self._dt_s = self.batch_ms / 1000.0 * self.speed  # simulated seconds per batch
        self._dt_ns = int(round(self._dt_s * 1e9))

        # scenario setup
        self.scenario_symbol: int | None = None
        self.scenario_events: list[dict] = []
        if scenario in ("limit_down", "suspension"):
            sym = self.params.get("symbol")
            if sym is None:
                self.scenario_symbol = self.most_active
            elif sym in universe.symbol_index:
                self.scenario_symbol = universe.symbol_index[sym]
            else:
                raise ValueError(f"synthetic:{scenario}: unknown symbol {sym!r}")
            self.params["symbol"] = universe.symbols[self.scenario_symbol]
        if scenario == "suspension":
            s = self.scenario_symbol
            t0 = self.start_ns + int(self.params["at"] * 60e9)
            t1 = t0 + int(self.params["minutes"] * 60e9)
            sym = universe.symbols[s]
            self.scenario_events = [
                {"type": "suspend", "symbol": sym, "sec": s, "ts": t0},
                {"type": "resume", "symbol": sym, "sec": s, "ts": t1},
            ]
        self._next_event = 0

    # -- construction from a spec --------------------------------------------------------

    @classmethod
    def from_spec(cls, rest: str, universe, **kw) -> SyntheticFeed:
        """`rest` is what follows "synthetic": "", ":crash", ":crash?drop=0.05", "?rate=1000"."""
        rest = rest[1:] if rest.startswith(":") else rest
        scenario, _, query = rest.partition("?")
        scenario = scenario or "walk"
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown synthetic scenario {scenario!r} (known: {SCENARIOS})")
        types = {**COMMON_PARAMS, **SCENARIO_PARAMS[scenario]}
        params = parse_params(query, types, f"synthetic:{scenario}")
        params.update(kw)
        return cls(universe, scenario, **params)

    # -- generation ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        if self.ticks is not None and self._emitted >= self.ticks:
            return True
        if self.duration is not None:
            return self._k >= math.ceil(self.duration * 1000.0 / self.batch_ms - 1e-9)
        return False

    def next_batch(self) -> TickBatch:
        """Generate the next batch (synchronously; `batches()` adds pacing)."""
        k = self._k
        self._k += 1
        rng = self._rng
        uni = self.universe
        t0_s, t1_s = k * self._dt_s, (k + 1) * self._dt_s
        per_batch = self.rate * self.batch_ms / 1000.0
        n_b = int(per_batch * (k + 1)) - int(per_batch * k)
        if self.ticks is not None:
            n_b = max(0, min(n_b, self.ticks - self._emitted))
        self._emitted += n_b

        # market
        dm = self._sigma_m * math.sqrt(self._dt_s) * rng.standard_normal()
        if self.scenario == "crash":
            dm += math.log1p(-self.params["drop"]) * self._window_fraction(t0_s, t1_s)
        self._m += dm
        if self.scenario == "limit_down":
            s = self.scenario_symbol
            target = math.log(max(int(uni.limit_down[s]), TICK) / self.base[s]) - 0.03
            self._drift[s] = target * self._window_progress(t1_s)

        # which securities tick, when
        sec = np.searchsorted(self._cdf, rng.random(n_b), side="right")
        np.minimum(sec, uni.n - 1, out=sec)
        span = max(self._dt_ns - n_b, 1)
        offs = np.sort(rng.integers(0, span, n_b)) + np.arange(n_b)
        ts = self.start_ns + k * self._dt_ns + offs
        bounce = rng.integers(0, 5, n_b)

        # idiosyncratic walk, sampled at this batch for the securities that tick
        useq = np.unique(sec)
        z = rng.standard_normal(useq.shape[0])
        el = np.maximum(t1_s - self._last_upd[useq], 0.0)
        self._x[useq] += self._sigma * np.sqrt(el) * z
        self._last_upd[useq] = t1_s

        logp = self.beta[sec] * self._m + self._x[sec] + self._drift[sec]
        price = np.rint(self.base[sec] * np.exp(logp) / TICK).astype(np.int64) * TICK
        step = np.where(bounce == 0, -TICK, np.where(bounce == 4, TICK, 0))
        if self.scenario == "limit_down" and self._window_progress(t1_s) > 0:
            step[sec == self.scenario_symbol] = 0
        price += step
        np.clip(price, uni.limit_down[sec], uni.limit_up[sec], out=price)

        if self.scenario == "suspension":
            a = self.params["at"] * 60.0
            b = a + self.params["minutes"] * 60.0
            keep = ~((sec == self.scenario_symbol) & (ts >= self.start_ns + int(a * 1e9))
                     & (ts < self.start_ns + int(b * 1e9)))
            if not keep.all():
                sec, price, ts = sec[keep], price[keep], ts[keep]

        recv_ns = time.time_ns()
        if self.encode:
            msg = self._encode(sec, price, ts)
            batch = self.parser.parse(msg, recv_ns)
        else:
            batch = self.parser.accept_arrays(sec, price, ts, recv_ns)

        if self.scenario == "bad_prints" and self._burst_due(t0_s, t1_s):
            batch = TickBatch.concat([batch, self._bad_burst(ts, recv_ns)])
            batch.recv_ns = recv_ns

        # account-events falling in this batch's interval
        end_ns = self.start_ns + (k + 1) * self._dt_ns
        ev = []
        while (self._next_event < len(self.scenario_events)
               and self.scenario_events[self._next_event]["ts"] < end_ns):
            ev.append(self.scenario_events[self._next_event])
            self._next_event += 1
        if ev:
            batch.events = tuple(ev)
        return batch

    def _window_fraction(self, t0_s: float, t1_s: float) -> float:
        """Share of the scenario window [at, at + minutes) inside [t0, t1)."""
        a = self.params["at"] * 60.0
        length = self.params["minutes"] * 60.0
        if length <= 0:
            return 1.0 if t0_s <= a < t1_s else 0.0
        return max(0.0, min(t1_s, a + length) - max(t0_s, a)) / length

    def _window_progress(self, t_s: float) -> float:
        a = self.params["at"] * 60.0
        length = self.params["minutes"] * 60.0
        if t_s <= a:
            return 0.0
        return 1.0 if length <= 0 else min(1.0, (t_s - a) / length)

    def _burst_due(self, t0_s: float, t1_s: float) -> bool:
        a = self.params["at"] * 60.0
        every = self.params["every"] * 60.0
        if t1_s <= a:
            return False
        if every <= 0:
            return t0_s <= a < t1_s
        j = math.floor((t1_s - a) / every - 1e-12)  # last burst time a + j·every < t1
        return a + j * every >= t0_s

    def _encode(self, sec, price, ts) -> bytes:
        syms = self.universe.symbols
        return orjson.dumps([
            {"symbol": syms[s], "price": p / 1000, "ts": t}
            for s, p, t in zip(sec.tolist(), price.tolist(), ts.tolist(), strict=True)
        ])

    def bad_messages(self, ts_hint: np.ndarray) -> list[bytes]:
        """A burst of `count` raw bad messages (see the module docstring)."""
        rng = self._rng
        uni = self.universe
        p = self.parser
        count = int(self.params["count"])
        now_ts = int(ts_hint[-1]) if ts_hint.shape[0] else self.start_ns + self._k * self._dt_ns
        ticked = np.flatnonzero(p.last_ts != NEVER)
        msgs: list[bytes] = []
        for j in range(count):
            s = int(rng.integers(uni.n))
            sym = uni.symbols[s]
            ok_price = int(uni.limit_down[s] + uni.limit_up[s]) // 2 // TICK * TICK / 1000
            kind = j % 16
            if kind in (10, 11) and ticked.shape[0] == 0:
                kind = 7
            if kind == 0:
                msgs.append(b'{"symbol": "' + sym.encode() + b'", "price": 1')
            elif kind == 1:
                msgs.append((b"42", b'"tick"', b"null", b"true")[j % 4])
            elif kind == 2:
                msgs.append(b'[1, "x", []]')
            elif kind == 3:
                msgs.append(orjson.dumps({"symbol": sym, "ts": now_ts}))
            elif kind == 4:
                msgs.append(orjson.dumps({"price": ok_price, "ts": now_ts}))
            elif kind == 5:
                msgs.append(orjson.dumps({"symbol": sym, "price": "NaN", "ts": now_ts}))
            elif kind == 6:
                msgs.append(orjson.dumps({"symbol": sym, "price": "-Infinity", "ts": now_ts}))
            elif kind == 7:
                msgs.append(orjson.dumps({"symbol": sym, "price": (0, -1.5)[j % 2],
                                          "ts": now_ts}))
            elif kind == 8:
                msgs.append(orjson.dumps({"symbol": "999999.XX", "price": ok_price}))
            elif kind == 9:
                bad = int(uni.limit_up[s]) * 3 // 2 / 1000
                msgs.append(orjson.dumps({"symbol": sym, "price": bad, "ts": now_ts}))
            elif kind in (10, 11):
                t = int(ticked[rng.integers(ticked.shape[0])])
                last_ts, last_px = int(p.last_ts[t]), int(p.last_price[t]) / 1000
                tsv = last_ts - 1_000_000 if kind == 10 else last_ts
                msgs.append(orjson.dumps({"symbol": uni.symbols[t], "price": last_px,
                                          "ts": tsv}))
            elif kind == 12:
                msgs.append(b"[" + b" " * (p.max_message_bytes + 1) + b"]")
            elif kind == 13:
                msgs.append(b'{"symbol": "' + sym.encode() + b'", "price": true}')
            elif kind == 15:  # a clock a year ahead
                msgs.append(orjson.dumps({"symbol": sym, "price": ok_price,
                                          "ts": int(p.clock()) + 365 * 86_400 * 10**9}))
            else:
                msgs.append(orjson.dumps({"symbol": sym, "price": ok_price, "ts": "yesterday"}))
        return msgs

    def _bad_burst(self, ts_hint: np.ndarray, recv_ns: int) -> TickBatch:
        return self.parser.parse_many(self.bad_messages(ts_hint), recv_ns)

    # -- the Feed protocol -----------------------------------------------------------------

    async def batches(self) -> AsyncIterator[TickBatch]:
        period = self.batch_ms / 1000.0
        w0 = time.monotonic()
        j = 0
        while not self.closed and not self.finished:
            batch = self.next_batch()
            j += 1
            if self.pace:
                delay = w0 + j * period - time.monotonic()
                await asyncio.sleep(delay if delay > 0 else 0)
            else:
                await asyncio.sleep(0)
            if self.closed:
                break
            if len(batch) or batch.events:
                yield batch
