"""Trading-pattern watch on crafted fill sequences: each rule fires at its threshold and not one
fill, one trip or one nanosecond short of it."""

import pytest

from monitor.app.config import ConfigError
from monitor.app.warmup import SAMPLE_BOOK
from monitor.book.load import load_book
from monitor.core.engine import Engine, EngineConfig
from monitor.core.patterns import PatternConfig
from monitor.core.state import MarginState

T0 = 1_772_415_000_000_000_000
S = 1_000_000_000
SYM = "600000.SH"  # prev_close 12.00 on the main board: limit-up 13.20, limit-down 10.80
ONLY = {"round_trips": {"enabled": False}, "thin_turnover": {"enabled": False},
        "limit_trades": {"enabled": False}}


def engine(rules: dict, usual_volume_file: str | None = None):
    d = {k: dict(v) for k, v in ONLY.items()}
    for k, v in rules.items():
        d[k] = {**d[k], "enabled": True, **v}
    if usual_volume_file:
        d["thin_turnover"]["usual_volume_file"] = usual_volume_file
    eng = Engine(MarginState(load_book(SAMPLE_BOOK), live=True), EngineConfig(run_id="pt"),
                 patterns=PatternConfig.from_dict(d))
    eng.start(T0)
    return eng


def fill(i, side, ts, qty=100, price="12.00", account="C-TV1", symbol=SYM):
    return {"type": "fill", "account_id": account, "symbol": symbol, "side": side, "qty": qty,
            "price": price, "ts": ts, "event_id": f"f{i}"}


def play(eng, fills):
    out = []
    for f in fills:
        out.extend(e for e in eng.apply_account_event(f, f["ts"])
                   if e["kind"] == "TRADING_PATTERN")
    return out


def alternating(n_fills, span_ns, first="collateral_buy"):
    other = "collateral_sell" if first == "collateral_buy" else "collateral_buy"
    step = span_ns // (n_fills - 1)
    ts = [T0 + k * step for k in range(n_fills)]
    ts[-1] = T0 + span_ns
    return [fill(k, first if k % 2 == 0 else other, t) for k, t in enumerate(ts)]


# ------------------------------------------------------------------ round trips
def test_n_round_trips_inside_the_window_fire_with_their_evidence():
    eng = engine({"round_trips": {"count": 3, "window_s": 1800}})
    hits = play(eng, alternating(6, 1800 * S))  # exactly the window: inclusive
    assert len(hits) == 1
    h = hits[0]
    assert h["rule"] == "round_trips" and h["account_id"] == "C-TV1" and h["symbol"] == SYM
    assert h["evidence"]["round_trips"] == 3 and h["evidence"]["count"] == 6
    assert [f["event_id"] for f in h["evidence"]["fills"]] == [f"f{k}" for k in range(6)]
    assert h["evidence"]["first_ns"] == T0 and h["evidence"]["last_ns"] == T0 + 1800 * S
    assert h["trigger"] == {"event": "fill", "event_id": "f5"}
    assert h["event_id"] == f"pt-{h['seq']}" and h["seq"] == eng.seq
    assert h["tier"] == "WARNING" and h["ratio"] == pytest.approx(1.456954, abs=1e-6)


def test_n_minus_one_round_trips_do_not_fire():
    eng = engine({"round_trips": {"count": 3, "window_s": 1800}})
    assert play(eng, alternating(5, 600 * S)) == []  # 2 trips and an open leg


def test_round_trips_one_nanosecond_wider_than_the_window_do_not_fire():
    eng = engine({"round_trips": {"count": 3, "window_s": 1800}})
    assert play(eng, alternating(6, 1800 * S + 1)) == []


def test_a_split_order_is_one_leg_and_sell_first_trips_count():
    eng = engine({"round_trips": {"count": 2, "window_s": 3600}})
    sides = ["collateral_sell", "collateral_sell", "collateral_buy", "collateral_buy",
             "collateral_sell", "collateral_sell"]  # 3 legs: one round trip
    assert play(eng, [fill(k, s, T0 + k * S) for k, s in enumerate(sides)]) == []
    hits = play(eng, [fill(9, "collateral_buy", T0 + 10 * S)])  # 4 legs: two round trips
    assert len(hits) == 1 and hits[0]["evidence"]["count"] == 7


def test_a_hit_consumes_its_trips_and_other_securities_are_separate():
    eng = engine({"round_trips": {"count": 1, "window_s": 60}})
    assert len(play(eng, alternating(2, S))) == 1
    assert play(eng, [fill(7, "collateral_sell", T0 + 2 * S)]) == []  # a fresh leg only
    other = [fill(8, "collateral_buy", T0 + 3 * S, symbol="601318.SH")]
    assert play(eng, other) == []


# ------------------------------------------------------------------ thin stock turnover
def usual_volume(tmp_path, volume):
    p = tmp_path / "usual.csv"
    p.write_text(f"symbol,usual_volume\n{SYM},{volume}\nNOT.A.SYMBOL,5\n")
    return str(p)


def test_turnover_of_a_thin_stock_fires_at_the_multiple(tmp_path):
    eng = engine({"thin_turnover": {"multiple": 3.0, "min_value": 0.0, "window_s": 600}},
                 usual_volume(tmp_path, 1000))  # 12,000 yuan a day: thin
    assert play(eng, [fill(0, "collateral_buy", T0, qty=1500),
                      fill(1, "collateral_buy", T0 + 60 * S, qty=1499)]) == []  # 2,999
    hits = play(eng, [fill(2, "collateral_buy", T0 + 600 * S, qty=1)])  # 3,000, window edge
    assert len(hits) == 1
    ev = hits[0]["evidence"]
    assert hits[0]["rule"] == "thin_turnover"
    assert ev["turnover_qty"] == 3000 and ev["usual_volume"] == 1000 and ev["multiple"] == 3.0
    assert [f["event_id"] for f in ev["fills"]] == ["f0", "f1", "f2"]


def test_thin_turnover_outside_the_window_or_below_min_value_does_not_fire(tmp_path):
    eng = engine({"thin_turnover": {"multiple": 3.0, "min_value": 0.0, "window_s": 600}},
                 usual_volume(tmp_path, 1000))
    assert play(eng, [fill(0, "collateral_buy", T0, qty=1500),
                      fill(1, "collateral_buy", T0 + 600 * S + 1, qty=1500)]) == []
    eng = engine({"thin_turnover": {"multiple": 3.0, "min_value": 36_001.0}},
                 usual_volume(tmp_path, 1000))
    assert play(eng, [fill(0, "collateral_buy", T0, qty=3000)]) == []  # 36,000 yuan


def test_turnover_in_a_liquid_stock_does_not_fire(tmp_path):
    # usual 500,000 shares x 12.00 = 6M yuan a day: above the 5M thin line
    eng = engine({"thin_turnover": {"multiple": 0.001, "min_value": 0.0}},
                 usual_volume(tmp_path, 500_000))
    assert play(eng, [fill(0, "collateral_buy", T0, qty=100_000)]) == []


def test_usual_volume_is_derived_from_the_book_without_a_file():
    eng = engine({"thin_turnover": {"usual_turnover": 0.05}})
    s = eng.state.book.symbol_index[SYM]
    held = sum(int(q) for q, x in zip(eng.state.book.pos_qty, eng.state.book.pos_sec,
                                      strict=True) if x == s)
    assert eng.patterns.usual_volume[s] == pytest.approx(0.05 * held)


# ------------------------------------------------------------------ trades at the limit
def test_three_buys_at_limit_up_fire_and_two_do_not():
    eng = engine({"limit_trades": {"count": 3, "window_s": 3600, "merge_s": 10}})
    buys = [fill(k, "financed_buy", T0 + k * 600 * S, price="13.20") for k in range(3)]
    assert play(eng, buys[:2]) == []
    hits = play(eng, buys[2:])
    assert len(hits) == 1
    assert hits[0]["evidence"]["limit"] == "up" and hits[0]["evidence"]["limit_price"] == 13.2
    assert hits[0]["evidence"]["trades"] == 3


def test_sells_at_limit_down_fire_and_one_tick_inside_the_band_does_not_count():
    eng = engine({"limit_trades": {"count": 3, "window_s": 3600}})
    assert play(eng, [fill(k, "collateral_sell", T0 + k * 60 * S, price="10.81")
                      for k in range(5)]) == []
    hits = play(eng, [fill(10 + k, "collateral_sell", T0 + (400 + k * 60) * S, price="10.80")
                      for k in range(3)])
    assert len(hits) == 1 and hits[0]["evidence"]["limit"] == "down"


def test_partial_fills_of_one_order_are_one_trade_and_the_window_is_inclusive():
    eng = engine({"limit_trades": {"count": 3, "window_s": 100, "merge_s": 10}})
    parts = [fill(k, "collateral_buy", T0 + k * 3 * S, price="13.20") for k in range(5)]
    assert play(eng, parts) == []  # five fills 3 s apart: one trade
    assert play(eng, [fill(20, "collateral_buy", T0 + 60 * S, price="13.20")]) == []
    hits = play(eng, [fill(21, "collateral_buy", T0 + 100 * S, price="13.20")])
    assert len(hits) == 1  # first trade at T0 is still inside [T0+100-100, T0+100]
    eng = engine({"limit_trades": {"count": 3, "window_s": 100, "merge_s": 10}})
    late = [fill(k, "collateral_buy", T0 + t, price="13.20")
            for k, t in enumerate((0, 60 * S, 100 * S + 1))]
    assert play(eng, late) == []


def test_non_fill_events_and_disabled_watch_produce_nothing():
    eng = engine({"round_trips": {"count": 1}})
    assert play(eng, [{"type": "deposit", "account_id": "C-TV1", "amount": "10", "ts": T0}]) \
        == []
    eng.patterns.config.enabled = False
    assert play(eng, alternating(2, S)) == []


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("d, msg", [
    ({"round_trip": {}}, "unknown setting 'round_trip'"),
    ({"round_trips": {"cnt": 2}}, "unknown setting 'cnt'"),
    ({"round_trips": {"count": 0}}, "count must be >= 1"),
    ({"limit_trades": {"window_s": -1}}, "must be >= 0"),
    ({"thin_turnover": {"multiple": "x"}}, "expected float"),
])
def test_bad_pattern_settings_are_config_errors(d, msg):
    with pytest.raises(ConfigError, match=msg):
        PatternConfig.from_dict(d)


def test_defaults_are_documented_values():
    c = PatternConfig.from_dict({})
    assert (c.round_trips.count, c.round_trips.window_s) == (3, 1800.0)
    assert (c.limit_trades.count, c.limit_trades.window_s, c.limit_trades.merge_s) == \
        (3, 3600.0, 10.0)
    assert (c.thin_turnover.multiple, c.thin_turnover.thin_value,
            c.thin_turnover.min_value) == (3.0, 5_000_000.0, 1_000_000.0)


# ------------------------------------------------------------------ byte cap
def _buys(eng, n_per_key=3):
    """One leg of buys per (account, security) of the sample book, in key order, each key's
    fills after the previous key's: nothing fires, everything is held."""
    b = eng.state.book
    keys = [(a, s) for a in b.account_ids for s in b.symbols]
    i = 0
    for a, s in keys:
        for _ in range(n_per_key):
            eng.patterns.observe(fill(i, "collateral_buy", T0 + i * S, account=a, symbol=s),
                                 T0 + i * S)
            i += 1
    return keys, i


def test_pattern_state_is_capped_by_bytes_oldest_first_and_the_drops_are_counted():
    from monitor.core import patterns as pt

    eng = engine({"round_trips": {"count": 3, "window_s": 10**6}})
    w = eng.patterns
    per_key = pt.KEY_BYTES + 3 * pt.FILL_BYTES
    w.config.state_bytes = 10 * per_key
    keys, n = _buys(eng)
    assert len(keys) > 20
    st = w.stats()
    assert st["bytes"] <= w.config.state_bytes and st["tracked"] <= 10
    held = sum(len(fl) for legs in w._trips.values() for _, fl in legs.legs)
    assert st["dropped_fills"] == n - held and st["dropped_entries"] == len(keys) - st["tracked"]
    # the newest keys are the ones kept
    b = eng.state.book
    kept = {(b.account_ids[a], b.symbols[s]) for a, s in w._trips}
    assert kept == set(keys[-st["tracked"]:])
    # a dropped key starts afresh: its old fills no longer count towards a pattern
    a, s = keys[0]
    hits = []
    for k, side in enumerate(["collateral_sell", "collateral_buy"] * 2 + ["collateral_sell"]):
        hits += w.observe(fill(n + k, side, T0 + (n + k) * S, account=a, symbol=s),
                          T0 + (n + k) * S)
    assert hits == []  # 5 legs: 2 trips; with the dropped buys it would have been 3


def test_pattern_state_allowances_cover_the_real_allocation():
    import tracemalloc

    eng = engine({"round_trips": {"count": 3, "window_s": 10**6}})
    w = eng.patterns
    w.config.state_bytes = 2**40
    tracemalloc.start()
    t0 = tracemalloc.take_snapshot()
    _buys(eng)
    t1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    real = sum(x.size_diff for x in t1.compare_to(t0, "filename"))
    assert 0 < real <= w.nbytes, (real, w.nbytes)
