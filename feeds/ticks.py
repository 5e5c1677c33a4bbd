"""Tick messages -> validated `TickBatch`es (sans-I/O).

A message is JSON text (bytes or str): one tick object or an array of them (interfaces.md, Ticks):

    {"symbol": "600000.SH", "price": 10.21, "ts": 1763712000123456789}

`ts` is exchange time in integer ns since the epoch; when missing (or null) the receive time is
used. Extra fields are ignored. `price` is a JSON number or a decimal string ("10.21").

Every tick is either accepted (returned in a `TickBatch`) or rejected and counted under exactly one
reason, checked in this order:

    oversize        the message is longer than `max_message_bytes` (counted per message)
    malformed       invalid JSON, a top level that is neither an object nor an array (counted per
                    message); an array element that is not an object, a symbol that is not a
                    string, a price that is not a number / decimal string, a ts that is not an
                    integer in [0, 2**63) (counted per tick)
    missing_field   no (or null) `symbol` or `price`
    non_finite      NaN / Infinity price (only reachable through strings: JSON has no NaN)
    non_positive    price <= 0
    unknown_symbol  symbol not in the universe
    out_of_band     price outside [limit_down, limit_up] of the security (inclusive), after
                    rounding to li
    future_ts       ts more than `max_skew_s` (default 5 s) ahead of the parser's clock, read
                    once per parse call: a tick from a wrong clock is refused, so it can never
                    become the symbol's last ts and make every real tick after it out_of_order
    out_of_order    ts older than the last accepted ts of that symbol
    duplicate       same symbol, same ts and same price as the last accepted tick of that symbol

The order checks run in message order, also inside one message, and against the state left by
earlier messages (the parser is stateful: `last_ts` / `last_price` per security). Ticks that use
the receive time as ts are subject to the same checks, so a feed mixing exchange and receive
times can see `out_of_order` rejections when the clocks disagree.

Price conversion: the decimal price is converted to li (0.001 yuan, `kernels.units`) by rounding
to the nearest li (halves up). A price that is not within 1e-9 yuan of a li multiple (e.g.
10.2104) is still accepted, rounded (10.210); such ticks are counted in `TickParser.sub_li`, not
rejected. Float parsing is exact enough for this: any decimal with <= 15 significant digits
round-trips, so every li-exact price converts exactly.

Speed: the JSON path extracts the three fields column-wise with C-level `map`s, converts them with
NumPy and runs all checks in one Numba loop; per-tick Python work happens only in a slow path for
messages whose fields have unusual types (strings, nulls, bools, ...).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numba
import numpy as np
import orjson

from kernels import units as u

log = logging.getLogger(__name__)

REASONS = (
    "oversize",
    "malformed",
    "missing_field",
    "non_finite",
    "non_positive",
    "unknown_symbol",
    "out_of_band",
    "out_of_order",
    "duplicate",
    "future_ts",  # checked before out_of_order (see the list above); last here: codes are stable
)
# Reason codes: 0 is "accepted", reason r has code REASONS.index(r) + 1.
OK = 0
(OVERSIZE, MALFORMED, MISSING, NON_FINITE, NON_POSITIVE, UNKNOWN, OUT_OF_BAND, OUT_OF_ORDER, DUP,
 FUTURE) = range(1, len(REASONS) + 1)
DEFAULT_MAX_SKEW_S = u.DEFAULT_MAX_SKEW_NS / 1e9
NEVER = -1  # last_ts / last_price of a security that has not ticked yet
_NS_PER_DAY = 86_400 * 10**9
_CHINA_OFFSET_NS = 8 * 3600 * 10**9
_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()
_TS_MAX = 2**63
_TS_MIN = -(2**63)
_SAMPLE_CHARS = 200
_NoneType = type(None)


@dataclass(slots=True)
class TickBatch:
    """Accepted ticks, in arrival order. `sec` indexes the universe."""

    sec: np.ndarray  # int32
    price: np.ndarray  # int64 li
    ts: np.ndarray  # int64 ns since the epoch (exchange time, or receive time when missing)
    recv_ns: int  # wall-clock ns when the message(s) were received
    events: tuple = ()  # scenario account-events due with this batch (synthetic feed), as dicts

    def __len__(self) -> int:
        return int(self.sec.shape[0])

    @classmethod
    def empty(cls, recv_ns: int = 0) -> TickBatch:
        return cls(
            np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64), recv_ns
        )

    @classmethod
    def concat(cls, batches: Sequence[TickBatch]) -> TickBatch:
        if not batches:
            return cls.empty()
        return cls(
            np.concatenate([b.sec for b in batches]),
            np.concatenate([b.price for b in batches]),
            np.concatenate([b.ts for b in batches]),
            max(b.recv_ns for b in batches),
            tuple(e for b in batches for e in b.events),
        )


class Rejections:
    """Counts of rejected ticks per reason, a ring of recent samples, rate-limited logging.

    `counts[reason]` counts ticks (messages for the message-level reasons). `recent` holds the
    last `ring` samples as `(reason, sample_text, wall_time_s)`. At most one WARNING per
    `log_interval` seconds per reason is logged, with the count since the previous log and one
    sample; a flood of bad ticks is never logged tick by tick."""

    def __init__(self, logger: logging.Logger | None = None, log_interval: float = 1.0,
                 ring: int = 64):
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.recent: deque[tuple[str, str, float]] = deque(maxlen=ring)
        self.log_interval = log_interval
        self._log = logger or log
        self._unlogged: dict[str, int] = dict.fromkeys(REASONS, 0)
        self._last_log: dict[str, float] = dict.fromkeys(REASONS, -math.inf)
        self.context = ""  # prefixed to log lines, e.g. the feed's (masked) name

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        """Non-zero counts only."""
        return {r: c for r, c in self.counts.items() if c}

    def add(self, reason: str, n: int = 1, sample: object = None) -> None:
        if n <= 0:
            return
        self.counts[reason] += n
        self._unlogged[reason] += n
        text = _sample_text(sample)
        self.recent.append((reason, text, time.time()))
        now = time.monotonic()
        if now - self._last_log[reason] >= self.log_interval:
            self._emit(reason, text, now)

    def flush_log(self) -> None:
        """Log whatever was counted but not yet logged (e.g. when a feed closes)."""
        now = time.monotonic()
        for reason, n in self._unlogged.items():
            if n:
                sample = next((s for r, s, _ in reversed(self.recent) if r == reason), "")
                self._emit(reason, sample, now)

    def _emit(self, reason: str, sample: str, now: float) -> None:
        n = self._unlogged[reason]
        self._unlogged[reason] = 0
        self._last_log[reason] = now
        prefix = f"{self.context}: " if self.context else ""
        self._log.warning(
            "%srejected %d tick(s) as %s (total %d); sample: %s",
            prefix, n, reason, self.counts[reason], sample,
        )


def _sample_text(sample: object) -> str:
    if sample is None:
        return ""
    if isinstance(sample, memoryview):
        sample = sample.tobytes()
    if isinstance(sample, (bytes, bytearray)):
        text = bytes(sample[: _SAMPLE_CHARS + 1]).decode("utf-8", "replace")
    elif isinstance(sample, str):
        text = sample[: _SAMPLE_CHARS + 1]
    else:
        try:
            text = orjson.dumps(sample, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        except TypeError:
            text = repr(sample)
    return text if len(text) <= _SAMPLE_CHARS else text[:_SAMPLE_CHARS] + "…"


@numba.njit(cache=True, nogil=True)
def _check(sec, price_f, ts, reason, limit_down, limit_up, last_ts, last_price, price_li,
           max_ts, start, band_from, band_to, stop):
    """All per-tick checks, in order, from tick `start` on, updating the per-security state of
    accepted ticks; `max_ts` is the latest ts taken (the clock + the allowed skew).

    `reason` arrives pre-filled with the structural verdicts (malformed / missing_field); a tick
    with a non-zero reason is skipped. The band holds for ticks timed in [band_from, band_to)
    (one trading date): at the first tick outside it the loop stops, `stop[0]` says where (else
    the number of ticks), so the caller can move the band to that tick's date and go on.
    Returns the number of accepted ticks that were rounded."""
    n_sec = limit_down.shape[0]
    rounded = 0
    stop[0] = sec.shape[0]
    for i in range(start, sec.shape[0]):
        if reason[i] != 0:
            continue
        t = ts[i]
        if t < 0:
            reason[i] = 2  # malformed
            continue
        if t < band_from or t >= band_to:
            stop[0] = i  # another trading date: its band first
            return rounded
        p = price_f[i]
        if not np.isfinite(p):
            reason[i] = 4  # non_finite
            continue
        if p <= 0.0:
            reason[i] = 5  # non_positive
            continue
        s = sec[i]
        if s < 0 or s >= n_sec:
            reason[i] = 6  # unknown_symbol
            continue
        lo = limit_down[s]
        hi = limit_up[s]
        x = p * 1000.0
        if x < lo - 0.5 or x >= hi + 0.5:
            reason[i] = 7  # out_of_band (also keeps huge values away from the int cast)
            continue
        li = np.int64(math.floor(x + 0.5))
        if li < lo or li > hi:
            reason[i] = 7
            continue
        if t > max_ts:
            reason[i] = 10  # future_ts
            continue
        if abs(x - li) > 1e-6:
            rounded += 1
        lt = last_ts[s]
        if t < lt:
            reason[i] = 8  # out_of_order
            continue
        if t == lt and li == last_price[s]:
            reason[i] = 9  # duplicate
            continue
        last_ts[s] = t
        last_price[s] = li
        price_li[i] = li
    return rounded


def _china_days(ts):
    """China-time (UTC+8) day ordinals of ns timestamps (an array or one int)."""
    return (ts + _CHINA_OFFSET_NS) // _NS_PER_DAY + _EPOCH_ORDINAL


class TickParser:
    """Stateful validator of tick messages for one universe (one per feed).

    `parse(message)` / `parse_many(messages)` take JSON text; `parse_columns` takes columns
    (CSV / Parquet replay); `accept_arrays` takes already-typed arrays (the synthetic feed). All
    four apply the same checks and update the same per-security state."""

    def __init__(self, universe, max_message_bytes: int = 1 << 20,
                 rejections: Rejections | None = None, clock=time.time_ns,
                 max_skew_s: float = DEFAULT_MAX_SKEW_S):
        self.universe = universe
        self.max_message_bytes = int(max_message_bytes)
        self.max_skew_ns = int(max_skew_s * 1e9)  # ts beyond clock() + this: future_ts
        self.rejections = rejections if rejections is not None else Rejections()
        self.clock = clock
        n = len(universe.symbols)
        self.last_ts = np.full(n, NEVER, dtype=np.int64)  # last accepted ts per security
        self.last_price = np.full(n, NEVER, dtype=np.int64)  # last accepted price (li)
        self.messages = 0
        self.ticks_seen = 0  # ticks that reached the per-tick checks (accepted or rejected)
        self.ticks_accepted = 0
        self.sub_li = 0  # accepted ticks whose price was rounded to the li
        self.last_message_ns = 0  # wall clock of the last message / column block
        self._stop = np.zeros(1, dtype=np.int64)  # where _check stopped (another date)

    # -- JSON ------------------------------------------------------------------------------

    def parse(self, message, recv_ns: int | None = None) -> TickBatch:
        """One message (bytes / str): a tick object or an array of them."""
        return self.parse_many((message,), recv_ns)

    def parse_many(self, messages: Iterable, recv_ns: int | None = None) -> TickBatch:
        """Several messages (e.g. one Redis XREAD reply) into one batch, in order. A `None`
        message (e.g. a stream entry without the data field) counts as malformed."""
        if recv_ns is None:
            recv_ns = self.clock()
        limit = self.max_message_bytes
        loads = orjson.loads
        items: list = []
        rej = self.rejections
        for m in messages:
            self.messages += 1
            if type(m) is bytes or type(m) is str:
                size = len(m) if type(m) is bytes or m.isascii() else _utf8_len(m)
            elif isinstance(m, (bytes, bytearray, memoryview)):
                m = bytes(m)
                size = len(m)
            else:
                rej.add("malformed", 1, repr(m))
                continue
            if size > limit:
                rej.add("oversize", 1, m[:_SAMPLE_CHARS])
                continue
            try:
                obj = loads(m)
            except orjson.JSONDecodeError:
                rej.add("malformed", 1, m)
                continue
            t = type(obj)
            if t is list:
                items.extend(obj)
            elif t is dict:
                items.append(obj)
            else:
                rej.add("malformed", 1, m)
        self.last_message_ns = recv_ns
        if not items:
            return TickBatch.empty(recv_ns)
        return self._items(items, recv_ns)

    def _items(self, items: list, recv_ns: int) -> TickBatch:
        get = dict.get
        if set(map(type, items)) == {dict}:
            syms = list(map(get, items, repeat("symbol")))
            prices = list(map(get, items, repeat("price")))
            tss = list(map(get, items, repeat("ts")))
            pre = None
        else:
            n = len(items)
            pre = np.zeros(n, dtype=np.int8)
            syms, prices, tss = [None] * n, [0.0] * n, [None] * n
            for i, d in enumerate(items):
                if type(d) is dict:
                    syms[i] = get(d, "symbol")
                    prices[i] = get(d, "price")
                    tss[i] = get(d, "ts")
                else:
                    pre[i] = MALFORMED
        return self._columns(syms, prices, tss, recv_ns, pre, items)

    # -- columns ---------------------------------------------------------------------------

    def parse_columns(self, symbols: Sequence, prices, ts=None,
                      recv_ns: int | None = None) -> TickBatch:
        """Columns of ticks (one block of a CSV / Parquet file). `prices` is a float64 array or a
        sequence of numbers / decimal strings / None; `ts` an int64 array, a sequence of ints /
        None (missing -> receive time), or None for "no ts column"."""
        if recv_ns is None:
            recv_ns = self.clock()
        self.messages += 1
        self.last_message_ns = recv_ns
        n = len(symbols)
        if n == 0:
            return TickBatch.empty(recv_ns)
        if ts is None:
            ts = np.full(n, recv_ns, dtype=np.int64)
        return self._columns(list(symbols), prices, ts, recv_ns, None, None)

    def accept_arrays(self, sec, price_li, ts, recv_ns: int | None = None) -> TickBatch:
        """Already-typed ticks (sec indices, int li prices, int ns ts): band / order / duplicate
        checks and state update only."""
        if recv_ns is None:
            recv_ns = self.clock()
        self.messages += 1
        self.last_message_ns = recv_ns
        sec = np.asarray(sec, dtype=np.int64)
        price_f = np.asarray(price_li, dtype=np.float64) / u.PRICE_SCALE
        ts = np.asarray(ts, dtype=np.int64)
        reason = np.zeros(sec.shape[0], dtype=np.int8)
        return self._finish(sec, price_f, ts, reason, recv_ns, None,
                            (_SymbolsOf(self.universe.symbols, sec), price_f, ts))

    # -- core ------------------------------------------------------------------------------

    def _columns(self, syms, prices, tss, recv_ns, pre, items) -> TickBatch:
        n = len(syms)
        reason = pre if pre is not None else np.zeros(n, dtype=np.int8)
        index = self.universe.symbol_index

        # symbols -> sec (-1: unknown); None -> missing_field, non-str -> malformed
        if set(map(type, syms)) == {str}:
            sec = np.fromiter(map(index.get, syms, repeat(-1)), dtype=np.int64, count=n)
        else:
            sec = np.full(n, -1, dtype=np.int64)
            for i, s in enumerate(syms):
                if type(s) is str:
                    sec[i] = index.get(s, -1)
                elif reason[i] == 0:
                    reason[i] = MISSING if s is None else MALFORMED

        # prices -> float64
        price_f = None
        if isinstance(prices, np.ndarray) and prices.dtype.kind == "f":
            price_f = prices.astype(np.float64, copy=False)
        elif set(map(type, prices)) <= {float, int}:
            try:
                price_f = np.array(prices, dtype=np.float64)
            except OverflowError:
                price_f = None
        if price_f is None:
            price_f = np.zeros(n, dtype=np.float64)
            for i, p in enumerate(prices):
                t = type(p)
                if t is float or t is int:
                    try:
                        price_f[i] = p
                        continue
                    except OverflowError:
                        pass
                elif t is str:
                    try:
                        price_f[i] = float(p)
                        continue
                    except ValueError:
                        pass
                elif p is None:
                    if reason[i] == 0:
                        reason[i] = MISSING
                    continue
                elif isinstance(p, (np.floating, np.integer)) and not isinstance(p, np.bool_):
                    price_f[i] = p
                    continue
                if reason[i] == 0:
                    reason[i] = MALFORMED

        # ts -> int64; None -> receive time, anything but an int in [0, 2**63) -> malformed
        ts = None
        if isinstance(tss, np.ndarray) and tss.dtype.kind in "iu":
            ts = tss.astype(np.int64, copy=False)
            if tss.dtype.kind == "u" and (tss >= _TS_MAX).any():
                ts = None
                tss = tss.tolist()
        else:
            kinds = set(map(type, tss))
            if kinds == {int}:
                try:
                    ts = np.array(tss, dtype=np.int64)
                except OverflowError:
                    ts = None
            elif kinds == {_NoneType}:
                ts = np.full(n, recv_ns, dtype=np.int64)
        if ts is None:
            ts = np.zeros(n, dtype=np.int64)
            for i, t in enumerate(tss):
                if t is None:
                    ts[i] = recv_ns
                elif (type(t) is int or isinstance(t, np.integer)) and 0 <= t < _TS_MAX:
                    ts[i] = t
                elif reason[i] == 0:
                    reason[i] = MALFORMED
        return self._finish(sec, price_f, ts, reason, recv_ns, items, (syms, prices, tss))

    def _finish(self, sec, price_f, ts, reason, recv_ns, items, columns) -> TickBatch:
        n = sec.shape[0]
        price_li = np.zeros(n, dtype=np.int64)
        max_ts = min(int(self.clock()) + self.max_skew_ns, _TS_MAX - 1)
        self.sub_li += self._check_by_day(sec, price_f, ts, reason, price_li, max_ts)
        self.ticks_seen += n
        if not reason.any():
            self.ticks_accepted += n
            return TickBatch(sec.astype(np.int32), price_li, ts, recv_ns)
        ok = reason == OK
        counts = np.bincount(reason, minlength=len(REASONS) + 1)
        for code in np.flatnonzero(counts[1:]) + 1:
            i = int(np.argmax(reason == code))
            if items is not None:
                sample = items[i]
            else:
                sample = {"symbol": _py(columns[0][i]), "price": _py(columns[1][i]),
                          "ts": _py(columns[2][i]) if columns[2] is not None else None}
            self.rejections.add(REASONS[code - 1], int(counts[code]), sample)
        n_ok = int(counts[0])
        self.ticks_accepted += n_ok
        return TickBatch(sec[ok].astype(np.int32), price_li[ok], ts[ok], recv_ns)

    def _check_by_day(self, sec, price_f, ts, reason, price_li, max_ts) -> int:
        """`_check` with each tick against the band of its own trading date: a universe with
        `rebands` moves its band to the date of the first tick outside the current one and
        the checks go on from there (message order is kept); without, one fixed band."""
        uni = self.universe
        stop = self._stop
        if getattr(uni, "rebands", None) is None:
            return _check(sec, price_f, ts, reason, uni.limit_down, uni.limit_up, self.last_ts,
                          self.last_price, price_li, max_ts, 0, _TS_MIN, _TS_MAX - 1, stop)
        rounded, start, n = 0, 0, sec.shape[0]
        while True:
            lo, hi = uni.band_window()
            rounded += _check(sec, price_f, ts, reason, uni.limit_down, uni.limit_up,
                              self.last_ts, self.last_price, price_li, max_ts, start, lo, hi,
                              stop)
            start = int(stop[0])
            if start >= n:
                return rounded
            uni.set_day(int(_china_days(int(ts[start]))))

class _SymbolsOf:
    """Symbol names of sec indices, for samples of rejected typed ticks."""

    def __init__(self, symbols, sec):
        self.symbols, self.sec = symbols, sec

    def __getitem__(self, i):
        s = int(self.sec[i])
        return self.symbols[s] if 0 <= s < len(self.symbols) else f"#{s}"


def _py(x):
    return x.item() if isinstance(x, np.generic) else x


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))
