"""Tick parsing and validation: every rejection reason, accepted values, fuzzing."""

from __future__ import annotations

import logging
import math
from datetime import date

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.ticks import NEVER, REASONS, Rejections, TickBatch, TickParser
from feeds.universe import Universe, board_of_symbol, limit_band
from kernels import units as u

SYMBOLS = ["600000.SH", "300750.SZ", "688981.SH", "000001.SZ"]
PREV = [10_000, 200_000, 50_000, 12_340]  # li
TS = 1_763_712_000_123_456_789
RECV = 1_763_712_999_000_000_000


@pytest.fixture
def universe():
    return Universe.from_prev_close(SYMBOLS, PREV)


@pytest.fixture
def parser(universe):
    return TickParser(universe, max_message_bytes=4096, clock=lambda: RECV)


def tick(symbol="600000.SH", price=10.21, ts=TS, **extra):
    d = {"symbol": symbol, "price": price}
    if ts is not None:
        d["ts"] = ts
    d.update(extra)
    return d


def msg(*ticks) -> bytes:
    return orjson.dumps(list(ticks) if len(ticks) != 1 else ticks[0])


def test_universe_band_and_boards(universe):
    assert [board_of_symbol(s) for s in SYMBOLS] == [
        u.BOARD_MAIN, u.BOARD_CHINEXT, u.BOARD_STAR, u.BOARD_MAIN]
    assert universe.limit_down.tolist() == [9_000, 160_000, 40_000, 11_110]
    assert universe.limit_up.tolist() == [11_000, 240_000, 60_000, 13_570]
    # 12.34 * 0.9 = 11.106 -> 11.11; * 1.1 = 13.574 -> 13.57 (half up on the 0.01 tick)
    # ST on the main board: ±5% before 2026-07-06, ±10% since (kernels/bands.py)
    down, up = limit_band(np.array([10_005]), np.array([u.BOARD_ST]), date(2026, 7, 3))
    assert (down[0], up[0]) == (9_500, 10_510)  # 9.50475 -> 9.50, 10.50525 -> 10.51
    down, up = limit_band(np.array([10_005]), np.array([u.BOARD_ST]), date(2026, 7, 6))
    assert (down[0], up[0]) == (9_000, 11_010)  # 9.0045 -> 9.00, 11.0055 -> 11.01
    assert universe.symbol_index["688981.SH"] == 2
    with pytest.raises(ValueError):
        Universe(["A", "A"], [1, 1], [1, 1], [1, 1], [1, 1])


def test_valid_ticks_applied_in_order(parser):
    b = parser.parse(msg(
        tick(price=10.21, ts=TS),
        tick("300750.SZ", 201.5, TS + 1, volume=100, bid=201.4, ask=201.6),
        tick("688981.SH", "55.123", TS + 2),  # decimal string, 0.001 tick
        tick(price=10, ts=TS + 3),  # JSON integer
        tick("000001.SZ", 12.34, None),  # no ts -> receive time
    ))
    assert isinstance(b, TickBatch)
    assert b.sec.dtype == np.int32 and b.price.dtype == np.int64 and b.ts.dtype == np.int64
    assert b.sec.tolist() == [0, 1, 2, 0, 3]
    assert b.price.tolist() == [10_210, 201_500, 55_123, 10_000, 12_340]
    assert b.ts.tolist() == [TS, TS + 1, TS + 2, TS + 3, RECV]
    assert b.recv_ns == RECV
    assert parser.rejections.total == 0
    assert parser.ticks_accepted == parser.ticks_seen == 5
    assert parser.last_ts.tolist() == [TS + 3, TS + 1, TS + 2, RECV]
    assert parser.last_price.tolist() == [10_000, 201_500, 55_123, 12_340]


def test_single_object_str_and_bytes_like(parser):
    assert parser.parse(orjson.dumps(tick()).decode()).price.tolist() == [10_210]
    assert parser.parse(bytearray(msg(tick(ts=TS + 1)))).ts.tolist() == [TS + 1]
    assert parser.parse(memoryview(msg(tick(ts=TS + 2)))).ts.tolist() == [TS + 2]
    assert len(parser.parse(b"[]")) == 0
    assert parser.rejections.total == 0


def test_band_edges_inclusive_and_rounding(parser):
    b = parser.parse(msg(
        tick(price=9.0, ts=TS), tick(price=11.0, ts=TS + 1),
        tick(price=10.2104, ts=TS + 2),  # not on the li: accepted, rounded
        tick(price=10.2105, ts=TS + 3),  # half a li: rounds to nearest (either is fine)
        tick(price="10.2106", ts=TS + 4),
        tick(price=8.9995, ts=TS + 5),  # rounds to 9.000: inside the band
    ))
    assert b.price.tolist()[:3] == [9_000, 11_000, 10_210]
    assert b.price[3] in (10_210, 10_211)
    assert b.price.tolist()[4:] == [10_211, 9_000]
    assert parser.sub_li >= 3
    assert parser.rejections.total == 0


REJECT_CASES = [
    ("oversize", b"[" + b" " * 5000 + b"]"),
    ("malformed", b'{"symbol": "600000.SH", "price": 1'),
    ("malformed", b"42"),
    ("malformed", b'"tick"'),
    ("malformed", b"null"),
    ("malformed", b"\xff\xfe"),
    ("malformed", b"[1]"),
    ("malformed", msg(tick(symbol=600000))),
    ("malformed", msg(tick(price=True))),
    ("malformed", msg(tick(price=[10.2]))),
    ("malformed", msg(tick(price="ten"))),
    ("malformed", msg(tick(ts="yesterday"))),
    ("malformed", msg(tick(ts=1.5e18))),
    ("malformed", msg(tick(ts=-1))),
    ("malformed", msg(tick(ts=2**64 - 1))),
    ("missing_field", msg({"price": 10.2, "ts": TS})),
    ("missing_field", msg({"symbol": "600000.SH", "ts": TS})),
    ("missing_field", msg(tick(price=None))),
    ("non_finite", msg(tick(price="NaN"))),
    ("non_finite", msg(tick(price="Infinity"))),
    ("non_finite", msg(tick(price="-inf"))),
    ("non_positive", msg(tick(price=0))),
    ("non_positive", msg(tick(price=-10.21))),
    ("non_positive", msg(tick(price="-0.0"))),
    ("unknown_symbol", msg(tick(symbol="999999.XX"))),
    ("unknown_symbol", msg(tick(symbol=""))),
    ("out_of_band", msg(tick(price=11.01))),
    ("out_of_band", msg(tick(price=8.99))),
    ("out_of_band", msg(tick(price=1e300))),
    ("out_of_band", msg(tick(price=5e-324))),
]


@pytest.mark.parametrize("reason,message", REJECT_CASES)
def test_each_rejection_reason_counted(parser, reason, message):
    b = parser.parse(message)
    assert len(b) == 0
    assert parser.rejections.as_dict() == {reason: 1}
    assert parser.rejections.recent[-1][0] == reason
    assert (parser.last_ts == NEVER).all()  # nothing applied


def test_out_of_order_and_duplicate(parser):
    parser.parse(msg(tick(price=10.21, ts=TS)))
    b = parser.parse(msg(
        tick(price=10.22, ts=TS - 1),  # older than last accepted -> out_of_order
        tick(price=10.21, ts=TS),  # same ts, same price -> duplicate
        tick(price=10.23, ts=TS),  # same ts, new price -> accepted
        tick(price=10.23, ts=TS),  # duplicate of the previous one (inside one message)
        tick(price=10.24, ts=TS + 5),
        tick(price=10.25, ts=TS + 4),  # out of order inside the message
        tick("300750.SZ", 200.0, TS - 100),  # other symbols are independent
    ))
    assert b.price.tolist() == [10_230, 10_240, 200_000]
    assert parser.rejections.as_dict() == {"out_of_order": 2, "duplicate": 2}
    assert parser.last_ts[0] == TS + 5 and parser.last_price[0] == 10_240


def test_mixed_message_keeps_good_ticks(parser):
    b = parser.parse(msg(
        tick(price=10.21, ts=TS), 7, tick(symbol="NOPE"), tick(price="NaN"),
        {"symbol": "688981.SH"}, tick("688981.SH", 50.0, TS), tick(price=99.0),
    ))
    assert b.sec.tolist() == [0, 2]
    assert parser.rejections.as_dict() == {
        "malformed": 1, "unknown_symbol": 1, "non_finite": 1, "missing_field": 1,
        "out_of_band": 1}
    assert parser.ticks_seen == 7 and parser.ticks_accepted == 2


def test_parse_many_and_message_level_counts(parser):
    b = parser.parse_many([msg(tick(ts=TS)), b"not json", None, msg(tick(ts=TS + 1)),
                           b"x" * 5000, 12345])
    assert b.ts.tolist() == [TS, TS + 1]
    assert parser.rejections.as_dict() == {"malformed": 3, "oversize": 1}
    assert parser.messages == 6


def test_columns_and_arrays(parser):
    b = parser.parse_columns(
        ["600000.SH", "300750.SZ", "XX", "600000.SH", None],
        ["10.5", 200.0, 1.0, "abc", 10.6],
        [TS, TS, TS, TS + 1, None],
    )
    assert b.sec.tolist() == [0, 1] and b.price.tolist() == [10_500, 200_000]
    assert parser.rejections.as_dict() == {"unknown_symbol": 1, "malformed": 1,
                                           "missing_field": 1}
    b = parser.parse_columns(["600000.SH", "600000.SH"], np.array([10.6, 10.7]),
                             np.array([TS + 2, TS + 1], dtype=np.int64))
    assert b.price.tolist() == [10_600]
    b = parser.parse_columns(["600000.SH"], np.array([10.8]), None)
    assert b.ts.tolist() == [RECV]
    b = parser.accept_arrays(np.array([0, 1, 7, 0]), np.array([10_900, 300_000, 1, 10_950]),
                             np.array([RECV + 1, TS + 9, TS, RECV + 2]))
    assert b.sec.tolist() == [0, 0] and b.price.tolist() == [10_900, 10_950]
    assert parser.rejections.counts["out_of_band"] == 1
    assert parser.rejections.counts["unknown_symbol"] == 2


def test_concat_and_empty():
    e = TickBatch.empty(5)
    assert len(e) == 0 and e.recv_ns == 5
    b = TickBatch(np.array([1], np.int32), np.array([10], np.int64), np.array([3], np.int64), 7,
                  ({"type": "x"},))
    c = TickBatch.concat([e, b, b])
    assert c.sec.tolist() == [1, 1] and c.recv_ns == 7 and len(c.events) == 2
    assert len(TickBatch.concat([])) == 0


def test_flood_is_logged_at_most_once_per_second_per_reason(universe, caplog):
    parser = TickParser(universe)
    bad = msg(*[tick(symbol="NOPE", ts=TS + i) for i in range(100)])
    with caplog.at_level(logging.WARNING, logger="feeds.ticks"):
        for _ in range(200):
            parser.parse(bad)
            parser.parse(b"{oops")
    assert parser.rejections.counts["unknown_symbol"] == 20_000
    assert parser.rejections.counts["malformed"] == 200
    records = [r for r in caplog.records if r.name == "feeds.ticks"]
    assert 2 <= len(records) <= 6  # one per reason (a second one if the loop crossed 1 s)
    assert all(r.levelno == logging.WARNING for r in records)
    assert all(len(r.getMessage()) < 600 for r in records)  # a sample, never the flood
    assert len(parser.rejections.recent) <= 64


def test_rejections_flush_log(caplog):
    r = Rejections(log_interval=3600)
    with caplog.at_level(logging.WARNING, logger="feeds.ticks"):
        r.add("duplicate", 3, {"a": 1})
        r.add("duplicate", 4, "x" * 1000)
        r.flush_log()
    msgs = [rec.getMessage() for rec in caplog.records]
    assert len(msgs) == 2 and "rejected 4 tick(s) as duplicate (total 7)" in msgs[1]
    assert r.total == 7 and r.as_dict() == {"duplicate": 7}


# -- fuzzing -------------------------------------------------------------------------------

def reference(items, universe, last_ts, last_price, recv):
    """A straightforward per-tick validator: (accepted [(sec, li, ts)], reasons counts)."""
    acc, counts = [], dict.fromkeys(REASONS, 0)
    for d in items:
        if type(d) is not dict:
            counts["malformed"] += 1
            continue
        s, p, t = d.get("symbol"), d.get("price"), d.get("ts")
        if s is None:
            counts["missing_field"] += 1
            continue
        if type(s) is not str:
            counts["malformed"] += 1
            continue
        if p is None:
            counts["missing_field"] += 1
            continue
        if type(p) in (int, float):
            pf = float(p)
        elif type(p) is str:
            try:
                pf = float(p)
            except ValueError:
                counts["malformed"] += 1
                continue
        else:
            counts["malformed"] += 1
            continue
        if t is None:
            t = recv
        elif type(t) is not int or not 0 <= t < 2**63:
            counts["malformed"] += 1
            continue
        if not math.isfinite(pf):
            counts["non_finite"] += 1
            continue
        if pf <= 0:
            counts["non_positive"] += 1
            continue
        sec = universe.symbol_index.get(s)
        if sec is None:
            counts["unknown_symbol"] += 1
            continue
        scaled = pf * 1000.0 + 0.5
        li = math.floor(scaled) if math.isfinite(scaled) else None  # huge: beyond any band
        if li is None or not universe.limit_down[sec] <= li <= universe.limit_up[sec]:
            counts["out_of_band"] += 1
            continue
        if t > recv + 5 * 10**9:  # the clock is `recv` here, the default skew 5 s
            counts["future_ts"] += 1
            continue
        if t < last_ts[sec]:
            counts["out_of_order"] += 1
            continue
        if t == last_ts[sec] and li == last_price[sec]:
            counts["duplicate"] += 1
            continue
        last_ts[sec], last_price[sec] = t, li
        acc.append((sec, li, t))
    return acc, counts


json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20,
)
symbols = st.sampled_from(SYMBOLS) | st.sampled_from(["", "NOPE", "600000.sh"]) | json_scalars
in_band = st.integers(8_000, 250_000).map(lambda li: li / 1000)
prices = (in_band | in_band.map(str) | json_scalars
          | st.sampled_from(["NaN", "inf", "-Infinity", "1e999", "0", "-1", " 10.5 "]))
ts_values = (st.none() | st.integers(TS - 5, TS + 5) | st.integers(-(2**63), 2**64 - 1)
             | st.floats(allow_nan=False) | st.text(max_size=5))


@st.composite
def tick_dicts(draw):
    d = {"symbol": draw(symbols)}
    if draw(st.integers(0, 9)):
        d["price"] = draw(prices)
    if draw(st.integers(0, 3)):
        d["ts"] = draw(ts_values)
    if draw(st.booleans()):
        d["volume"] = draw(json_values)
    if not draw(st.integers(0, 19)):
        d.pop("symbol")
    return d


tick_like = tick_dicts() | json_values
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_bytes_never_raise(universe, data):
    p = TickParser(universe, max_message_bytes=200)
    b = p.parse(data)
    b2 = p.parse(data.decode("utf-8", "replace"))
    for batch in (b, b2):
        assert ((batch.price >= universe.limit_down[batch.sec])
                & (batch.price <= universe.limit_up[batch.sec])).all()


@FUZZ
@given(value=json_values)
def test_fuzz_arbitrary_json_never_raises(universe, value):
    p = TickParser(universe)
    p.parse(orjson.dumps(value))


@FUZZ
@given(messages=st.lists(st.lists(tick_like, max_size=12) | tick_like, min_size=1, max_size=6))
def test_fuzz_ticks_match_reference(universe, messages):
    p = TickParser(universe, clock=lambda: RECV)
    last_ts = [NEVER] * universe.n
    last_price = [NEVER] * universe.n
    exp_acc, exp_counts = [], dict.fromkeys(REASONS, 0)
    got_acc = []
    for m in messages:
        raw = orjson.dumps(m)
        b = p.parse(raw)
        obj = orjson.loads(raw)
        if isinstance(obj, list):
            acc, counts = reference(obj, universe, last_ts, last_price, RECV)
        elif isinstance(obj, dict):
            acc, counts = reference([obj], universe, last_ts, last_price, RECV)
        else:
            acc, counts = [], {**dict.fromkeys(REASONS, 0), "malformed": 1}
        exp_acc += acc
        for k, v in counts.items():
            exp_counts[k] += v
        got_acc += list(zip(b.sec.tolist(), b.price.tolist(), b.ts.tolist(), strict=True))
        # every accepted tick is valid
        assert ((b.price >= universe.limit_down[b.sec]) & (b.price <= universe.limit_up[b.sec])
                & (b.price > 0) & (b.ts >= 0)).all()
    assert got_acc == exp_acc
    assert p.rejections.counts == exp_counts
    assert p.last_ts.tolist() == last_ts and p.last_price.tolist() == last_price


# -- ticks from the future ---------------------------------------------------------------

def test_a_future_tick_is_refused_and_cannot_freeze_the_symbol(universe):
    """The tester's case: a normal price with a ts a year ahead was accepted, and every real
    tick after it was out_of_order. Now it is refused (future_ts) and real ticks go on."""
    now = [RECV]
    p = TickParser(universe, clock=lambda: now[0])
    year = 365 * 86_400 * 10**9
    b = p.parse(msg(tick(ts=RECV + year)))
    assert len(b) == 0 and p.rejections.counts["future_ts"] == 1
    assert p.last_ts[0] == NEVER
    b = p.parse(msg(tick(price=10.22, ts=RECV - 10), tick(price=10.23, ts=RECV)))
    assert b.price.tolist() == [10_220, 10_230]
    assert p.rejections.counts["out_of_order"] == 0
    # within the skew (5 s by default) a tick is taken; beyond it, refused
    b = p.parse(msg(tick(price=10.24, ts=RECV + 5 * 10**9), tick(price=10.25,
                                                                   ts=RECV + 5 * 10**9 + 1)))
    assert b.price.tolist() == [10_240] and p.rejections.counts["future_ts"] == 2
    # the clock is read per parse call: the same tick is taken once the clock has caught up
    now[0] = RECV + 10**9
    assert p.parse(msg(tick(price=10.25, ts=RECV + 5 * 10**9 + 1))).price.tolist() == [10_250]


def test_future_guard_on_every_path_and_a_configured_skew(universe):
    p = TickParser(universe, clock=lambda: RECV, max_skew_s=60)
    ts = np.array([RECV + 59 * 10**9, RECV + 61 * 10**9], dtype=np.int64)
    b = p.accept_arrays(np.array([0, 1]), np.array([10_100, 200_100]), ts)
    assert b.sec.tolist() == [0] and p.rejections.counts["future_ts"] == 1
    b = p.parse_columns(["688981.SH", "000001.SZ"], np.array([50.1, 12.4]), ts)
    assert b.sec.tolist() == [2] and p.rejections.counts["future_ts"] == 2
    p.max_skew_ns = 0  # the monitor sets it from max_tick_skew_s
    b = p.parse(msg(tick(symbol="300750.SZ", price=200.2, ts=RECV + 1)))
    assert len(b) == 0 and p.rejections.counts["future_ts"] == 3
