"""The sans-I/O engine: both update paths agree, transitions and hysteresis, start-up picture,
seq / event_id, triggers and the margin-call lifecycle."""

from datetime import datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import units as u
from monitor.app.warmup import SAMPLE_BOOK
from monitor.book import synthetic as synthbook
from monitor.book.load import book_from_dict, load_book
from monitor.core.calendar import CHINA
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState

T0 = int(datetime(2026, 11, 20, 10, 0, tzinfo=CHINA).timestamp()) * 1_000_000_000  # a Friday


_BOOK = []


def _synth_book():
    if not _BOOK:
        _BOOK.append(book_from_dict(synthbook.generate_json_book(3000, 120, seed=11)))
    return _BOOK[0]


@pytest.fixture(scope="module")
def synth_book():
    return _synth_book()


def engine_for(book, **kw):
    return Engine(MarginState(book), EngineConfig(run_id="t", **kw))


def strip(events):
    return [{k: v for k, v in e.items() if k not in ("event_id", "ts_published")}
            for e in events]


def random_ticks(book, rng, n):
    """Prices within each security's limit band (what the feed guard lets through)."""
    down, up = book.limit_prices()
    sec = rng.integers(0, book.n_securities, n)
    price = rng.integers(np.maximum(down[sec], 10) // 10, up[sec] // 10 + 1) * 10
    return sec.astype(np.int64), price.astype(np.int64), np.arange(n, dtype=np.int64) + T0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cycles=st.integers(1, 6))
def test_incremental_sweep_and_reach_paths_give_identical_events_and_state(seed, cycles):
    synth_book = _synth_book()
    rng = np.random.default_rng(seed)
    inc = engine_for(synth_book, sweep_share=2.0, reach="off")  # never sweeps
    swp = engine_for(synth_book, sweep_share=-1.0, reach="off")  # always sweeps
    rch = engine_for(synth_book, reach="always", reach_chunk=700)  # 5 chunks
    assert strip(inc.start(T0)) == strip(swp.start(T0)) == strip(rch.start(T0))
    for c in range(cycles):
        sec, price, ts = random_ticks(synth_book, rng, int(rng.integers(1, 200)))
        for e in (inc, swp, rch):
            e.add_ticks(sec, price, ts)
        ev_i, ev_s, ev_r = inc.cycle(T0 + c), swp.cycle(T0 + c), rch.cycle(T0 + c)
        assert inc.last_cycle.path == "incremental" and swp.last_cycle.path == "sweep"
        assert rch.last_cycle.path == "reach"
        assert strip(ev_i) == strip(ev_s) == strip(ev_r)
    np.testing.assert_array_equal(inc.reported, rch.reported)
    rch.state.sync()
    np.testing.assert_array_equal(rch.state.long_mv, swp.state.long_mv)
    np.testing.assert_array_equal(inc.state.long_mv, swp.state.long_mv)
    np.testing.assert_array_equal(inc.state.short_mv, swp.state.short_mv)
    np.testing.assert_array_equal(inc.reported, swp.reported)
    fresh = MarginState(synth_book)
    fresh.price[:] = inc.state.price
    fresh.sweep()
    np.testing.assert_array_equal(fresh.long_mv, inc.state.long_mv)


def test_start_announces_every_breach_once_with_null_previous_tier():
    e = engine_for(load_book(SAMPLE_BOOK))
    events = e.start(T0)
    tiers = [ev for ev in events if ev["kind"] == "TIER_CHANGE"]
    assert {ev["account_id"] for ev in tiers} == {
        "C-TV1", "C-TV2", "C-TV3", "C-TV7", "C-TV8", "C-EXACT130", "C-CONSERVATIVE"}
    assert all(ev["previous_tier"] is None for ev in tiers)
    assert [ev["seq"] for ev in events] == list(range(1, len(events) + 1))
    assert len({ev["event_id"] for ev in events}) == len(events)
    # a margin call opens for the account that starts in MARGIN_CALL
    issued = [ev for ev in events if ev["kind"] == "CALL_ISSUED"]
    assert [ev["account_id"] for ev in issued] == ["C-TV2"]
    assert issued[0]["call"]["deadline"] == "2026-11-24"  # Fri + 2 trading days = Tue


def one_account_book(qty=13000, price="12.00", cost="120000", prev_close="12.00"):
    return book_from_dict({
        "securities": [{"symbol": "600000.SH", "price": price, "haircut": "0.7",
                        "prev_close": prev_close}],
        "accounts": [{"account_id": "A", "cash": "0", "positions": [
            {"symbol": "600000.SH", "kind": "financed", "qty": qty, "financed_cost": cost,
             "fin_margin_ratio": "1"}]}]})


def move(e, price_yuan, ts):
    e.add_ticks(np.array([0]), np.array([round(price_yuan * 1000)]), np.array([ts]))
    return e.cycle(ts)


def test_hysteresis_reports_worse_at_once_better_only_beyond_the_band():
    # L = 120000; R = 13000·p / 120000. 1.50 at p = 13.846..., band 0.5 pt -> 1.505 at 13.8923
    e = engine_for(one_account_book(price="14.00"))
    assert e.start(T0) == []  # NORMAL: nothing to announce
    ev = move(e, 13.80, T0 + 1)  # R = 1.495 -> WARNING at once
    assert [(x["previous_tier"], x["tier"]) for x in ev] == [("NORMAL", "WARNING")]
    assert ev[0]["trigger"] == {"symbol": "600000.SH", "price": 13.8}
    assert ev[0]["ts_event"] == T0 + 1
    assert move(e, 13.86, T0 + 2) == []  # R = 1.5015: above the line, inside the band
    assert move(e, 13.80, T0 + 3) == []  # flaps back: no new event
    ev = move(e, 13.90, T0 + 4)  # R = 1.50583: clears the band
    assert [(x["previous_tier"], x["tier"]) for x in ev] == [("WARNING", "NORMAL")]


def test_exactly_on_the_line_is_the_upper_tier():
    e = engine_for(one_account_book(price="14.00"))
    e.start(T0)
    ev = move(e, 12.00, T0 + 1)  # 156000 / 120000 = 1.30 exactly -> still WARNING
    assert [x["tier"] for x in ev] == ["WARNING"]
    ev = move(e, 11.99, T0 + 2)
    assert [x["tier"] for x in ev if x["kind"] == "TIER_CHANGE"] == ["MARGIN_CALL"]


def test_margin_call_issued_cured_and_expired():
    e = engine_for(one_account_book(price="12.50"))
    e.start(T0)
    ev = move(e, 11.50, T0 + 1)  # R = 1.2458 -> MARGIN_CALL
    kinds = [x["kind"] for x in ev]
    assert kinds == ["TIER_CHANGE", "CALL_ISSUED"]
    call = ev[1]["call"]
    assert call["state"] == "OPEN" and call["amount"] == ev[0]["cure"]["deposit"] > 0
    ev = move(e, 13.90, T0 + 2)  # R = 1.5058 >= target 1.50 -> cured
    assert "CALL_CURED" in [x["kind"] for x in ev]
    assert e.calls.open_accounts() == []
    # a new call, then nothing cures it before the deadline: the engine's clock (the ticks'
    # time, here moved on without ticks) passes the close of the due day
    move(e, 11.50, T0 + 3)
    assert len(e.calls.open_accounts()) == 1
    deadline_ns = e.calls.get(0).deadline_ns
    settle = int(e.config.close_settle_s * 1e9)
    assert e.cycle(deadline_ns + settle) == []  # the wall clock passed in does not count
    e.advance_clock(deadline_ns + settle)  # ticks stamped up to the close's settle belong to it
    assert e.cycle(T0) == []
    e.advance_clock(deadline_ns + settle + 1)
    ev = e.cycle(T0)
    assert [x["kind"] for x in ev] == ["CALL_EXPIRED"]
    assert ev[0]["call"]["state"] == "EXPIRED"
    assert ev[0]["ts_event"] == deadline_ns  # the close it was judged at


def test_summary_counts_match_the_reported_tiers(synth_book):
    e = engine_for(synth_book)
    e.start(T0)
    s = e.summary(T0)
    assert sum(s["tiers"].values()) == synth_book.n_accounts
    for name, n in s["tiers"].items():
        assert n == int(np.sum(e.reported == u.TIER_CODES[name]))


def test_forced_liquidation_and_expired_calls_carry_a_plan_at_trigger_prices():
    e = engine_for(one_account_book(price="14.00", prev_close="11.50"))  # limit-down 10.35
    e.start(T0)
    ev = move(e, 12.61, T0 + 1)  # 163930 / 120000 = 1.366: WARNING, no plan
    assert "plan" not in ev[0]
    ev = move(e, 11.00, T0 + 2)  # 143000 / 120000 = 1.1917: MARGIN_CALL (the call opens)
    assert "plan" not in ev[0]
    ev = move(e, 10.50, T0 + 3)  # 136500 / 120000 = 1.1375: FORCED_LIQUIDATION
    fl = [x for x in ev if x["kind"] == "TIER_CHANGE"][0]
    assert fl["tier"] == "FORCED_LIQUIDATION"
    plan = fl["plan"]
    assert plan["priced_ns"] == T0 + 3
    assert [(o["symbol"], o["side"], o["price"]) for o in plan["orders"]] == [
        ("600000.SH", "sell", 10.5)]
    assert plan["ratio_after"] >= 1.5 and plan["residual"] == 0.0
    e.advance_clock(e.calls.get(0).deadline_ns + 3600 * 10**9)
    expired = e.cycle(T0)
    assert [x["kind"] for x in expired] == ["CALL_EXPIRED"] and "plan" in expired[0]
