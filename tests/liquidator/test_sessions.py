"""The liquidator holds the orders of a plan made outside a trading session until the event's
`release_at` (the next session's start, margin-rules.md §6), then sends them; on a short fake
clock (a lunch break that ends in under a second), not by sleeping through one."""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import pytest
import redis
from test_liquidator import cfg_for, fl_event, publish, run_worker

from monitor.book.load import book_from_dict
from monitor.core.calendar import CHINA
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState

SENT: list[tuple[int, list[dict]]] = []  # (fake time at the hook, orders)
CLOCK: list = []


def capture(orders):
    SENT.append((CLOCK[0](), orders))


@pytest.fixture(autouse=True)
def _reset():
    SENT.clear()
    CLOCK.clear()
    yield


def fake_clock(release_at: int, before_s: float):
    """A clock `before_s` seconds before `release_at` now, running at real speed."""
    t0 = time.monotonic_ns()
    base = release_at - int(before_s * 1e9)
    return lambda: base + (time.monotonic_ns() - t0)


def lunch_event(eid: str, account: str) -> dict:
    """A forced liquidation planned in the lunch break: released at 13:00 China time."""
    ev = fl_event(eid, account)
    ev["release_at"] = int(datetime(2026, 11, 18, 13, 0, tzinfo=CHINA).timestamp()) * 10**9
    return ev


@pytest.fixture
def r(redis_fresh):
    client = redis.Redis.from_url(redis_fresh.url)
    yield client
    client.close()


async def test_orders_planned_in_the_lunch_break_wait_for_the_afternoon_session(redis_fresh, r):
    held = lunch_event("run-lunch", "L1")
    rel = held["release_at"]
    CLOCK.append(fake_clock(rel, 0.8))  # 12:59:59.2: longer than claim_idle (0.5 s)
    publish(r, held, fl_event("run-now", "N1"))  # the second one has no release_at
    w = await run_worker(cfg_for(redis_fresh.url, hook="python:test_sessions:capture",
                                 hold_outside_sessions=True), clock=CLOCK[0])
    assert [o[0]["account_id"] for _, o in SENT] == ["N1", "L1"]  # the held one after
    (t_now, _), (t_held, orders) = SENT
    assert t_now < rel <= t_held  # nothing of L1 went out before the session's start
    assert orders[0]["event_id"] == "run-lunch" and orders[0]["qty"] == 100
    assert w.stats["held"] >= 1 and w.stats["sent"] == 2
    # held entries stay this worker's: refreshed, never reclaimed as idle meanwhile
    assert w.stats["reclaimed"] == 0


async def test_without_holding_the_orders_go_at_once(redis_fresh, r):
    ev = lunch_event("run-lunch2", "L2")
    CLOCK.append(fake_clock(ev["release_at"], 600.0))
    publish(r, ev)
    w = await run_worker(cfg_for(redis_fresh.url, hook="python:test_sessions:capture",
                                 hold_outside_sessions=False), clock=CLOCK[0])
    assert len(SENT) == 1 and SENT[0][0] < ev["release_at"] and w.stats["held"] == 0


async def test_an_engine_plan_made_after_the_close_is_released_at_the_next_morning(
        redis_fresh, r):
    """The engine's event (a forced liquidation planned at 15:30 on a Friday) carries
    release_at = Monday 09:15; the worker holds it until then."""
    doc = {"securities": [{"symbol": "600000.SH", "price": "13.00", "haircut": "0.7",
                           "prev_close": "12.00"}],  # limit-down 10.80
           "accounts": [{"account_id": "E1", "cash": "0", "positions": [
               {"symbol": "600000.SH", "kind": "financed", "qty": 10000,
                "financed_cost": "100000", "fin_margin_ratio": "1"}]}]}
    e = Engine(MarginState(book_from_dict(doc), live=True),
               EngineConfig(run_id="eng-s", clock="tape"))
    fri = int(datetime(2026, 11, 20, 15, 30, tzinfo=CHINA).timestamp()) * 10**9
    e.start(0)
    e.add_ticks(np.array([0]), np.array([11_000]), np.array([fri]))  # R = 1.10
    events = e.cycle(0)
    fl = [x for x in events if x.get("tier") == "FORCED_LIQUIDATION"][0]
    mon = int(datetime(2026, 11, 23, 9, 15, tzinfo=CHINA).timestamp()) * 10**9
    assert fl["release_at"] == mon
    CLOCK.append(fake_clock(mon, 0.3))
    publish(r, *events)
    await run_worker(cfg_for(redis_fresh.url, hook="python:test_sessions:capture",
                             hold_outside_sessions=True, max_plan_age=10 * 365 * 86400.0),
                     clock=CLOCK[0])
    assert len(SENT) == 1 and SENT[0][0] >= mon
    assert SENT[0][1][0]["account_id"] == "E1"
