"""The liquidator (monitor/liquidator/) against a real Redis and real HTTP servers: plans from
the engine's own events, delivery semantics (idempotency, retries, dead letters, reclaim), the
kill switch, approvals, re-pricing, cool-down and rate limit. Subprocess tests (a real monitor,
a worker killed with SIGKILL) are in test_liquidator_e2e.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
import pytest
import redis
from conftest import free_port

from monitor.adapters.outbox import encode_event
from monitor.app.config import ConfigError
from monitor.book.data import SAMPLE_BOOK
from monitor.book.load import book_from_dict
from monitor.cli import main as cli_main
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState
from monitor.errors import BadEvent
from monitor.liquidator import (
    ControlError,
    HttpRepricer,
    LiquidationControl,
    Liquidator,
    LiquidatorConfig,
    build_orders,
    load_liquidator_config,
    verify,
)
from monitor.liquidator.hooks import WebhookHook
from monitor.liquidator.orders import check_plan

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = SAMPLE_BOOK
VECTORS = json.loads((ROOT / "tests" / "data" / "vectors.json").read_text())["vectors"]
SECRET = "webhook-secret-0123456789abcdef"
# a line profile under which the vector accounts are below the forced-liquidation line at the
# book's own prices, while the target stays the spec's 1.50: their plans are the vectors'
STRICT = {"withdrawable": "3.00", "normal": "1.90", "warning": "1.80", "margin_call": "1.70",
          "target": "1.50"}
ALERTS = "margin:alerts"
ORDERS = "margin:orders"


# ------------------------------------------------------------------------------ helpers

def sample_doc(strict: tuple[str, ...] = (), free_cash: bool = False) -> dict:
    """The sample book, `strict` accounts in the STRICT profile. `free_cash=False` (these
    tests' default) turns free cash first off in every profile, so the plans are the vectors'
    `example_plan`; with it on they are `cash_first` (a cash repayment, then the orders)."""
    doc = json.loads(SAMPLE.read_text())
    doc["profiles"]["strict"] = dict(STRICT)
    doc["profiles"].setdefault("default", {})
    for p in doc["profiles"].values():
        p["use_free_cash"] = free_cash
    for a in doc["accounts"]:
        if a["account_id"] in strict:
            a["profile"] = "strict"
    return doc


def vector_plan(vid: str) -> list[tuple[str, str, int]]:
    """A vector's example plan with its S1…S4 symbols mapped to the sample book's symbols (the
    book's C-<id> account holds the same positions in the same order)."""
    vec = next(v for v in VECTORS if v["id"] == vid)
    acct = next(a for a in json.loads(SAMPLE.read_text())["accounts"]
                if a["account_id"] == f"C-{vid}")
    names = {p["symbol"]: q["symbol"]
             for p, q in zip(vec["positions"], acct["positions"], strict=True)}
    return [(names[o["symbol"]], o["side"], o["qty"]) for o in vec["expected"]["example_plan"]]


def vector_ratio_after(vid: str) -> str:
    vec = next(v for v in VECTORS if v["id"] == vid)
    return vec["expected"]["example_plan_ratio_pct_after"]


def fl_event(eid: str, account: str, *, profile: str = "default", qty: int = 100,
             symbol: str = "600036.SH", side: str = "sell", price: float = 6.0,
             priced_ns: int | None = None, kind: str = "TIER_CHANGE") -> dict:
    """An alert shaped like the engine's (for tests that are about delivery, not sizing)."""
    now = time.time_ns()
    ev = {"event_id": eid, "seq": 1, "kind": kind, "account_id": account, "profile": profile,
          "tier": "FORCED_LIQUIDATION", "previous_tier": "MARGIN_CALL", "ratio": 1.1,
          "liquidation_status": "REQUIRED", "shortfall": 0.0, "ts_event": now,
          "ts_published": now,
          "plan": {"orders": [{"symbol": symbol, "side": side, "qty": qty, "price": price,
                               "value": round(qty * price, 3)}],
                   "ratio_after": 1.5, "residual": 0.0,
                   "priced_ns": now if priced_ns is None else priced_ns}}
    if kind == "CALL_EXPIRED":
        ev["tier"] = "MARGIN_CALL"
    return ev


def publish(r: redis.Redis, *events: dict, stream: str = ALERTS) -> None:
    for ev in events:
        r.xadd(stream, {"data": encode_event(ev)})


def orders_in(r: redis.Redis, stream: str = ORDERS) -> list[dict]:
    return [orjson.loads(f[b"data"]) for _, f in r.xrange(stream)]


def dead_in(r: redis.Redis) -> list[dict]:
    return [orjson.loads(f[b"data"]) for _, f in r.xrange("margin:liq:dead")]


def done(r: redis.Redis, eid: str) -> dict | None:
    raw = r.get(f"margin:liq:done:{eid}")
    return orjson.loads(raw) if raw else None


def pending_count(r: redis.Redis, stream: str = ALERTS, group: str = "liquidator") -> int:
    return r.xpending(stream, group)["pending"]


def cfg_for(url: str, **kw) -> LiquidatorConfig:
    cfg = LiquidatorConfig(redis=url, consumer="w1", block=0.05, claim_idle=0.5, lock_ttl=1.0,
                           backoff_initial=0.02, backoff_max=0.1, cooldown=0.0,
                           max_plan_age=3600.0, max_orders_per_second=0,
                           hook="python:test_liquidator:capture",
                           hold_outside_sessions=False)  # test_sessions.py holds
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


async def run_worker(cfg: LiquidatorConfig, until_idle: float = 0.3, **kw) -> Liquidator:
    w = Liquidator(cfg, **kw)
    await asyncio.wait_for(w.run(until_idle=until_idle), 30)
    return w


# python hooks and repricers named by "python:test_liquidator:<name>"
CAPTURED: list[list[dict]] = []
STATE: dict = {}


def capture(orders):
    CAPTURED.append(orders)


def slow(orders):
    time.sleep(0.4)
    CAPTURED.append(orders)


def always_fails(orders):
    raise RuntimeError("broker gateway down")


def kill_on_second(orders):
    CAPTURED.append(orders)
    if len(CAPTURED) == 2:  # the operator pulls the switch while orders are flowing
        redis.Redis.from_url(STATE["url"]).set("margin:liq:kill", b'{"by": "test"}')


def recovered(event):
    STATE.setdefault("repriced", []).append(event["event_id"])
    return {"orders": [], "ratio_after": 1.62, "residual": 0.0}


@pytest.fixture(autouse=True)
def _reset():
    CAPTURED.clear()
    STATE.clear()
    yield


@pytest.fixture
def r(redis_fresh):
    client = redis.Redis.from_url(redis_fresh.url)
    yield client
    client.close()


class Receiver:
    """A broker's order endpoint: checks the HMAC signature with its own code (not the
    liquidator's), keeps every request, and applies each order id once (its dedupe)."""

    def __init__(self, secret: str, *, fail: int = 0, fail_status: int = 503,
                 hold_first: bool = False):
        self.secret = secret.encode()
        self.fail = fail
        self.fail_status = fail_status
        self.hold_first = hold_first
        self.requests: list[dict] = []
        self.applied: dict[str, dict] = {}
        self.first = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers.get("X-Margin-Timestamp", "")
                sig = self.headers.get("X-Margin-Signature", "")
                good = "sha256=" + hmac.new(rec.secret, ts.encode() + b"." + body,
                                            hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(sig, good) and abs(time.time() - int(ts or 0)) < 300
                with rec.lock:
                    n = len(rec.requests)
                    rec.requests.append({"body": body, "headers": dict(self.headers),
                                         "signed": ok, "path": self.path})
                    if ok and not (rec.fail and n < rec.fail):
                        for o in orjson.loads(body):  # idempotent on order_id
                            rec.applied.setdefault(o["order_id"], o)
                if not ok:
                    return self._reply(401, b'{"error": "bad signature"}')
                if rec.fail and n < rec.fail:
                    return self._reply(rec.fail_status, b'{"error": "try later"}')
                if rec.hold_first and n == 0:  # applied, but the answer never comes back
                    rec.first.set()
                    rec.release.wait(30)
                    return
                self._reply(200, b'{"ok": true}')

            def _reply(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/orders"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(secret: str = SECRET, **kw) -> Receiver:
        rec = Receiver(secret, **kw)
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()


# ------------------------------------------------------------------------------ plans

async def test_engine_events_reach_the_hook_with_the_vector_plans(redis_fresh, r):
    """Real engine events: TV1, TV3, TV7 move (profile events) into a profile whose
    forced-liquidation line they are under; TV2's margin call, issued at start, expires uncured;
    TV8 is underwater at start. Each plan reaches the order stream as the spec's vector says."""
    doc = sample_doc()
    eng = Engine(MarginState(book_from_dict(doc), live=True), EngineConfig(run_id="eng"))
    week_ago = 1_763_002_800 * 10**9  # 2025-11-13 11:00 China time, a week before `now`
    now = week_ago + 7 * 86400 * 10**9
    events = eng.start(week_ago)  # the engine's clock: this time until a tick sets it
    kinds = {(e["account_id"], e["kind"]) for e in events}
    assert ("C-TV2", "CALL_ISSUED") in kinds
    for acct in ("C-TV1", "C-TV3", "C-TV7"):  # past TV2's deadline: CALL_EXPIRED with its plan
        events += eng.apply_account_event({"type": "profile", "account_id": acct,
                                           "profile": "strict"}, now)
    assert ("C-TV2", "CALL_EXPIRED") in {(e["account_id"], e["kind"]) for e in events}
    publish(r, *events)
    # the plans were priced on those days: allow their age (re-pricing has its tests)
    w = await run_worker(cfg_for(redis_fresh.url, hook=f"redis:{ORDERS}",
                                 max_plan_age=100 * 365 * 86400.0))
    assert w.stats["sent"] == 5 and pending_count(r) == 0
    got: dict[str, list[dict]] = {}
    for o in orders_in(r):
        got.setdefault(o["account_id"], []).append(o)
    for vid in ("TV1", "TV2", "TV3", "TV7"):
        orders = got[f"C-{vid}"]
        assert [(o["symbol"], o["side"], o["qty"]) for o in orders] == vector_plan(vid)
        assert f"{orders[0]['ratio_after'] * 100:.2f}" == vector_ratio_after(vid)
        assert all(o["value"] == pytest.approx(o["qty"] * o["price"]) for o in orders)
    assert got["C-TV2"][0]["reason"] == "call_expired"
    assert got["C-TV1"][0]["reason"] == "forced_liquidation"
    # underwater (R <= 100%): everything is sold and the shortfall travels with the order
    (tv8,) = got["C-TV8"]
    assert (tv8["symbol"], tv8["side"], tv8["qty"]) == ("002594.SZ", "sell", 50_000)
    assert tv8["liquidation_status"] == "UNREACHABLE_FULL_LIQUIDATION"
    assert tv8["shortfall"] == 56000.0 and tv8["residual"] == 56000.0
    # every order: the contract's fields, a deterministic id, the trigger's event id
    for o in (x for v in got.values() for x in v):
        assert {"order_id", "event_id", "account_id", "symbol", "side", "qty", "price", "value",
                "reason", "ts"} <= set(o)
        assert o["order_id"] == f"{o['event_id']}-{o['row']}"
        assert done(r, o["event_id"])["order_ids"] == [o["order_id"]]


async def test_the_cash_repayment_is_the_first_instruction_of_the_plan(redis_fresh, r):
    """Free cash first (on in the profile): TV1's plan is a cash repayment of 20,000 (2,000 of
    interest, 18,000 of principal), then 1,000 S2 (the vector's cash_first); underwater TV8
    repays 2,000 of interest from its cash, then sells everything. The repayment travels as
    row 0 (`kind`/`side` cash_repayment), the orders follow with their rows."""
    doc = sample_doc(free_cash=True)
    eng = Engine(MarginState(book_from_dict(doc), live=True), EngineConfig(run_id="cash"))
    t = 1_763_002_800 * 10**9
    events = eng.start(t)
    events += eng.apply_account_event({"type": "profile", "account_id": "C-TV1",
                                       "profile": "strict"}, t)
    publish(r, *[e for e in events if e["account_id"] in ("C-TV1", "C-TV8")])
    w = await run_worker(cfg_for(redis_fresh.url, hook=f"redis:{ORDERS}",
                                 max_plan_age=100 * 365 * 86400.0))
    assert w.stats["sent"] == 2 and pending_count(r) == 0
    got: dict[str, list[dict]] = {}
    for o in orders_in(r):
        got.setdefault(o["account_id"], []).append(o)
    vec = next(v for v in VECTORS if v["id"] == "TV1")["expected"]["cash_first"]
    cash, *orders = got["C-TV1"]
    assert (cash["kind"], cash["side"], cash["symbol"], cash["qty"]) == (
        "cash_repayment", "cash_repayment", None, 0)
    assert (cash["value"], cash["interest"], cash["principal"]) == (
        float(vec["cash_repayment"]), float(vec["interest_repaid"]),
        float(vec["principal_repaid"]))
    assert [(o["kind"], o["side"], o["qty"]) for o in orders] == [
        ("order", o["side"], o["qty"]) for o in vec["plan"]]
    assert f"{cash['ratio_after'] * 100:.2f}" == vec["ratio_pct_after"]
    assert [(o["row"], o["rows"]) for o in got["C-TV1"]] == [(0, 2), (1, 2)]
    assert [o["order_id"] for o in got["C-TV1"]] == [
        f"{cash['event_id']}-0", f"{cash['event_id']}-1"]
    cash8, sale8 = got["C-TV8"]
    assert (cash8["side"], cash8["value"], cash8["interest"]) == ("cash_repayment", 2000.0,
                                                                  2000.0)
    assert (sale8["qty"], sale8["shortfall"], sale8["residual"]) == (50_000, 56000.0, 56000.0)
    assert done(r, cash["event_id"])["order_ids"] == [o["order_id"] for o in got["C-TV1"]]


def test_a_plan_of_only_a_cash_repayment_is_sent():
    ev = fl_event("run-c", "A1")
    ev["plan"].update(orders=[], cash_repayment=1234.5, interest_repaid=34.5,
                      principal_repaid=1200.0)
    (o,) = build_orders(ev, ev["plan"], "forced_liquidation", ts_ns=1)
    assert (o["order_id"], o["kind"], o["value"], o["interest"], o["principal"]) == (
        "run-c-0", "cash_repayment", 1234.5, 34.5, 1200.0)
    check_plan(ev["plan"])
    for bad in (-1, True, "12", float("nan")):
        with pytest.raises(BadEvent):
            check_plan(dict(ev["plan"], cash_repayment=bad))


async def test_lifecycle_events_that_need_no_orders_are_acknowledged(redis_fresh, r):
    doc = sample_doc()
    eng = Engine(MarginState(book_from_dict(doc), live=True), EngineConfig(run_id="life"))
    events = eng.start(time.time_ns())  # TV2: TIER_CHANGE to MARGIN_CALL + CALL_ISSUED
    events += eng.apply_account_event({"type": "deposit", "account_id": "C-TV2",
                                       "amount": "200000"}, time.time_ns())
    assert {"CALL_ISSUED", "CALL_CURED"} <= {e["kind"] for e in events}
    publish(r, *events)
    w = await run_worker(cfg_for(redis_fresh.url))
    assert [o["account_id"] for batch in CAPTURED for o in batch] == ["C-TV8"]
    assert w.stats["ignored"] == len(events) - 1 and pending_count(r) == 0


def test_build_orders_ids_are_deterministic():
    ev = fl_event("run-7", "A1")
    ev["plan"]["orders"].append({"symbol": "600000.SH", "side": "sell", "qty": 200,
                                 "price": 12.0, "value": 2400.0})
    a = build_orders(ev, ev["plan"], "forced_liquidation", ts_ns=1)
    b = build_orders(ev, ev["plan"], "forced_liquidation", ts_ns=2)
    assert [o["order_id"] for o in a] == [o["order_id"] for o in b] == ["run-7-0", "run-7-1"]
    assert a[1]["rows"] == 2 and a[1]["qty"] == 200


# ------------------------------------------------------------------------------ idempotency

async def test_duplicate_deliveries_give_one_order(redis_fresh, r):
    """The outbox may publish an event twice (same event_id); two workers share the group."""
    e1 = fl_event("run-1", "A1")
    e2 = fl_event("run-2", "A2", qty=300)
    publish(r, e1, e1, e2, e1, e2)
    c1 = cfg_for(redis_fresh.url, hook=f"redis:{ORDERS}")
    c2 = cfg_for(redis_fresh.url, hook=f"redis:{ORDERS}", consumer="w2")
    w1, w2 = await asyncio.gather(run_worker(c1), run_worker(c2))
    orders = orders_in(r)
    assert sorted(o["order_id"] for o in orders) == ["run-1-0", "run-2-0"]
    assert w1.stats["duplicates"] + w2.stats["duplicates"] >= 3  # (a deferred one may be
    # looked at by both workers: the second finds it done)
    assert pending_count(r) == 0
    # a redelivery long after: still no second order
    publish(r, e1)
    await run_worker(c1)
    assert len(orders_in(r)) == 2


async def test_duplicate_while_the_first_is_in_the_hook_gives_one_call(redis_fresh, r):
    ev = fl_event("run-3", "A3")
    publish(r, ev, ev)
    c1 = cfg_for(redis_fresh.url, hook="python:test_liquidator:slow")
    c2 = cfg_for(redis_fresh.url, hook="python:test_liquidator:slow", consumer="w2")
    w1, w2 = await asyncio.gather(run_worker(c1, until_idle=0.6), run_worker(c2, until_idle=0.6))
    assert len(CAPTURED) == 1 and CAPTURED[0][0]["order_id"] == "run-3-0"
    # the second delivery saw the in-progress marker (or, if it came late, the done record)
    assert sum(w.stats["busy"] + w.stats["duplicates"] for w in (w1, w2)) >= 1
    assert pending_count(r) == 0


async def test_entries_of_a_dead_consumer_are_reclaimed(redis_fresh, r):
    """A consumer read the entry and vanished without acknowledging it (its lock expired)."""
    ev = fl_event("run-4", "A4")
    w = Liquidator(cfg_for(redis_fresh.url))
    await w._setup()
    await w._client.aclose()
    publish(r, ev)
    r.xreadgroup("liquidator", "ghost", {ALERTS: ">"}, count=10)
    assert pending_count(r) == 1
    t0 = time.monotonic()
    w = await run_worker(cfg_for(redis_fresh.url), until_idle=0.2)
    assert time.monotonic() - t0 >= 0.4  # not before claim_idle (0.5 s)
    assert w.stats["reclaimed"] == 1 and len(CAPTURED) == 1 and pending_count(r) == 0


async def test_frozen_orders_are_resent_identically(redis_fresh, r):
    """A worker handed orders to the hook and died before recording the result: the next one
    sends the very same orders (ids, quantities, prices, ts), never a re-priced variant."""
    ev = fl_event("run-5", "A5", priced_ns=time.time_ns() - 10**12)  # very stale
    first = build_orders(ev, ev["plan"], "forced_liquidation", ts_ns=123)
    r.set("margin:liq:attempt:run-5", orjson.dumps({"orders": first, "consumer": "dead"}))
    publish(r, ev)
    w = await run_worker(cfg_for(redis_fresh.url, max_plan_age=1.0,
                                 repricer="python:test_liquidator:recovered"))
    assert CAPTURED == [first] and w.stats["resumed"] == 1
    assert "repriced" not in STATE
    assert r.get("margin:liq:attempt:run-5") is None


# ------------------------------------------------------------------------------ webhook

async def test_webhook_posts_signed_orders_that_the_receiver_verifies(redis_fresh, r, receiver):
    rec = receiver()
    ev = fl_event("run-6", "A6")
    ev["plan"]["orders"].append({"symbol": "601012.SH", "side": "buy_to_cover", "qty": 100,
                                 "price": 36.0, "value": 3600.0})
    publish(r, ev)
    await run_worker(cfg_for(redis_fresh.url, hook=rec.url, webhook_secret=SECRET))
    (req,) = rec.requests
    assert req["signed"] and req["path"] == "/orders"
    assert req["headers"]["Idempotency-Key"] == "run-6"
    assert req["headers"]["Content-Type"] == "application/json"
    body = orjson.loads(req["body"])
    assert [o["order_id"] for o in body] == ["run-6-0", "run-6-1"]
    assert [o["side"] for o in body] == ["sell", "buy_to_cover"]
    assert verify(SECRET, req["headers"]["X-Margin-Timestamp"], req["body"],
                  req["headers"]["X-Margin-Signature"])
    assert not verify("another-secret-0123456789", req["headers"]["X-Margin-Timestamp"],
                      req["body"], req["headers"]["X-Margin-Signature"])
    assert not verify(SECRET, "1000", req["body"], req["headers"]["X-Margin-Signature"])
    assert done(r, "run-6")["outcome"] == "sent"


async def test_webhook_failures_are_retried_with_backoff_same_body(redis_fresh, r, receiver):
    rec = receiver(fail=2)
    publish(r, fl_event("run-7", "A7"))
    t0 = time.monotonic()
    await run_worker(cfg_for(redis_fresh.url, hook=rec.url, webhook_secret=SECRET,
                             backoff_initial=0.1, backoff_max=1.0))
    assert len(rec.requests) == 3 and time.monotonic() - t0 >= 0.2
    assert len({q["body"] for q in rec.requests}) == 1  # identical payload on every attempt
    assert {q["headers"]["Idempotency-Key"] for q in rec.requests} == {"run-7"}
    assert list(rec.applied) == ["run-7-0"] and done(r, "run-7")["outcome"] == "sent"


async def test_a_refused_signature_goes_to_dead_letters_at_once(redis_fresh, r, receiver):
    rec = receiver(secret="the-receivers-own-secret-000")
    publish(r, fl_event("run-8", "A8"))
    w = await run_worker(cfg_for(redis_fresh.url, hook=rec.url, webhook_secret=SECRET))
    assert len(rec.requests) == 1 and not rec.requests[0]["signed"] and not rec.applied
    (d,) = dead_in(r)
    assert d["event_id"] == "run-8" and "HTTP 401" in d["reason"]
    assert d["orders"][0]["order_id"] == "run-8-0"
    assert done(r, "run-8")["outcome"] == "dead_letter" and w.stats["dead_letter"] == 1
    assert pending_count(r) == 0


def test_webhook_needs_a_secret():
    with pytest.raises(ValueError, match="secret"):
        WebhookHook("http://127.0.0.1:1/x", "short")


async def test_a_failing_hook_is_dead_lettered_after_max_attempts(redis_fresh, r):
    ev = fl_event("run-9", "A9")
    publish(r, ev)
    cfg = cfg_for(redis_fresh.url, hook="python:test_liquidator:always_fails", max_attempts=3)
    w = await run_worker(cfg)
    (d,) = dead_in(r)
    assert "3 time(s)" in d["reason"] and "broker gateway down" in d["reason"]
    assert w.stats["hook_failures"] == 3 and pending_count(r) == 0
    publish(r, ev)  # redelivered: done (dead_letter) stops it
    await run_worker(cfg)
    assert len(dead_in(r)) == 1


async def test_malformed_and_unrelated_entries(redis_fresh, r):
    r.xadd(ALERTS, {"data": b"{not json"})
    bad = fl_event("run-10", "A10")
    del bad["account_id"]
    publish(r, bad)
    publish(r, {"event_id": "x-1", "kind": "TIER_CHANGE", "tier": "WARNING", "account_id": "B"})
    r.xadd(ALERTS, {"other": b"field"})
    w = await run_worker(cfg_for(redis_fresh.url))
    reasons = sorted(d["reason"] for d in dead_in(r))
    assert len(reasons) == 3 and all(x.startswith("malformed alert") for x in reasons)
    assert w.stats["ignored"] == 1 and not CAPTURED and pending_count(r) == 0


async def test_empty_plans_end_as_not_required_or_dead_letters(redis_fresh, r):
    cured = fl_event("run-e1", "E1")
    cured["plan"].update(orders=[], residual=0.0)
    stuck = fl_event("run-e2", "E2")  # everything it holds is suspended
    stuck["plan"].update(orders=[], residual=52000.0)
    publish(r, cured, stuck)
    await run_worker(cfg_for(redis_fresh.url))
    assert not CAPTURED and done(r, "run-e1")["outcome"] == "not_required"
    (d,) = dead_in(r)
    assert d["event_id"] == "run-e2" and "no order that can trade" in d["reason"]
    assert "52000" in d["reason"]


# ------------------------------------------------------------------------------ safety

def test_kill_switch_stops_orders_within_one_cycle(redis_fresh, r, capsys):
    """The switch goes on while orders flow (set from inside the second hook call): the very
    next plan is not sent; the held plans wait; approving is refused until it is off."""
    url = redis_fresh.url
    STATE["url"] = url
    publish(r, *[fl_event(f"run-k{i}", f"K{i}") for i in range(5)])
    cfg = cfg_for(url, hook="python:test_liquidator:kill_on_second", concurrency=1)
    asyncio.run(run_worker(cfg))
    assert len(CAPTURED) == 2
    assert cli_main(["kill-switch", "status", "--redis", url]) == 0
    assert "kill switch ON" in capsys.readouterr().out
    recs = asyncio.run(_pending(url))
    assert len(recs) == 3 and {x["held"] for x in recs} == {"kill_switch"}
    assert not any(x["frozen"] for x in recs)  # never handed to the hook
    assert cli_main(["approvals", "approve", "--all", "--redis", url, "--by", "ops"]) == 1
    assert "kill switch is on" in capsys.readouterr().err
    assert cli_main(["kill-switch", "off", "--redis", url, "--by", "ops"]) == 0
    assert cli_main(["approvals", "list", "--redis", url]) == 0
    assert capsys.readouterr().out.count("held: kill_switch") == 3
    assert cli_main(["approvals", "approve", "--all", "--redis", url, "--by", "ops"]) == 0
    asyncio.run(run_worker(cfg_for(url)))
    sent = [b[0] for b in CAPTURED[2:]]
    assert len(sent) == 3 and {o["approved_by"] for o in sent} == {"ops"}
    assert asyncio.run(_pending(url)) == []
    assert cli_main(["kill-switch", "on", "--redis", url, "--reason", "drill"]) == 0
    assert r.exists("margin:liq:kill")


async def test_an_approved_plan_stopped_by_the_kill_switch_waits_again(redis_fresh, r):
    publish(r, fl_event("run-a1", "AA", profile="vip"))
    cfg = cfg_for(redis_fresh.url, modes={"vip": "approve"})
    await run_worker(cfg)
    ctl = LiquidationControl(redis_fresh.url)
    await ctl.approve("run-a1", by="ops")
    await ctl.engage_kill_switch(by="head", reason="drill")
    assert (await ctl.kill_switch())["reason"] == "drill"
    await run_worker(cfg)
    (rec,) = await ctl.pending()
    assert (rec["state"], rec["held"], CAPTURED) == ("pending", "kill_switch", [])
    assert "decided_by" not in rec
    assert await ctl.release_kill_switch(by="head") is not None
    await ctl.approve("run-a1", by="ops2")
    await run_worker(cfg)
    assert CAPTURED[0][0]["approved_by"] == "ops2" and await ctl.pending() == []
    assert (await ctl.done("run-a1"))["outcome"] == "sent"
    await ctl.aclose()


async def _pending(url):
    ctl = LiquidationControl(url)
    try:
        return await ctl.pending()
    finally:
        await ctl.aclose()


def WindowRecorder(cfg):
    """A worker whose policy records the one-second window each plan was let into."""
    w = Liquidator(cfg)
    inner = w.policy.rate_limit

    async def rate_limit(n):
        window = await inner(n)
        STATE.setdefault("windows", []).append(window)
        return window

    w.policy.rate_limit = rate_limit
    return w


async def test_orders_per_second_are_capped_over_all_workers(redis_fresh, r):
    publish(r, *[fl_event(f"run-r{i}", f"R{i}") for i in range(5)])
    c1 = cfg_for(redis_fresh.url, max_orders_per_second=2)
    c2 = cfg_for(redis_fresh.url, max_orders_per_second=2, consumer="w2")
    w1, w2 = WindowRecorder(c1), WindowRecorder(c2)
    await asyncio.wait_for(asyncio.gather(w1.run(until_idle=0.3), w2.run(until_idle=0.3)), 30)
    assert len(CAPTURED) == 5
    per_second: dict[int, int] = {}
    for window in STATE["windows"]:  # the one-second window each plan was let into
        per_second[window] = per_second.get(window, 0) + 1
    assert max(per_second.values()) <= 2 and len(per_second) >= 3
    assert w1.stats["rate_limited"] + w2.stats["rate_limited"] >= 1


async def test_cooldown_defers_a_second_plan_which_is_then_repriced(redis_fresh, r):
    publish(r, fl_event("run-c1", "C1"), fl_event("run-c2", "C1", kind="CALL_EXPIRED"))
    t0 = time.monotonic()
    w = await run_worker(cfg_for(redis_fresh.url, cooldown=0.8, concurrency=1,
                                 repricer="python:test_liquidator:recovered"))
    assert time.monotonic() - t0 >= 0.8
    assert len(CAPTURED) == 1 and CAPTURED[0][0]["event_id"] == "run-c1"
    assert w.stats["cooldown_deferred"] >= 1 and STATE["repriced"] == ["run-c2"]
    assert done(r, "run-c2")["outcome"] == "not_required"


# ------------------------------------------------------------------------------ modes

async def test_profiles_choose_auto_approve_or_notify(redis_fresh, r):
    publish(r, fl_event("run-m1", "M1", profile="default"),
            fl_event("run-m2", "M2", profile="strict"),
            fl_event("run-m3", "M3", profile="strict"),
            fl_event("run-m4", "M4", profile="retail"))
    cfg = cfg_for(redis_fresh.url, modes={"strict": "approve", "retail": "notify"})
    await run_worker(cfg)
    assert [b[0]["event_id"] for b in CAPTURED] == ["run-m1"]
    (notice,) = [orjson.loads(f[b"data"]) for _, f in r.xrange("margin:liq:notices")]
    assert notice["kind"] == "LIQUIDATION_NOTICE" and notice["account_id"] == "M4"
    assert notice["orders"][0]["order_id"] == "run-m4-0"
    assert done(r, "run-m4")["outcome"] == "notified"
    ctl = LiquidationControl(redis_fresh.url)
    recs = await ctl.pending()  # oldest first (these two were parked concurrently)
    assert sorted(x["event_id"] for x in recs) == ["run-m2", "run-m3"]
    assert recs[0]["created_ns"] <= recs[1]["created_ns"]
    assert {x["held"] for x in recs} == {"approval_required"}
    assert recs[0]["orders"][0]["qty"] == 100
    await ctl.approve("run-m2", by="li.na", note="client unreachable")
    await ctl.reject("run-m3", by="li.na", note="client deposited")
    with pytest.raises(ControlError):
        await ctl.approve("run-m3", by="li.na")
    await run_worker(cfg)
    assert [b[0]["event_id"] for b in CAPTURED] == ["run-m1", "run-m2"]
    assert CAPTURED[1][0]["approved_by"] == "li.na"
    assert done(r, "run-m3")["outcome"] == "rejected"
    assert await ctl.pending() == []
    actions = [a["action"] for a in await ctl.audit()]
    assert {"approved", "rejected", "held", "sent", "notified"} <= set(actions)
    publish(r, fl_event("run-m3", "M3", profile="strict"))  # redelivered after the rejection
    await run_worker(cfg)
    assert await ctl.pending() == [] and len(CAPTURED) == 2
    await ctl.aclose()


def test_config_file_and_flags(tmp_path):
    p = tmp_path / "liquidator.toml"
    p.write_text('redis = "redis://127.0.0.1:1/0"\nmode = "approve"\ncooldown = 5\n'
                 '[modes]\nretail = "notify"\n')
    cfg = load_liquidator_config(str(p), {"group": "g2", "mode": None}).check()
    assert (cfg.mode, cfg.modes, cfg.cooldown, cfg.group) == ("approve", {"retail": "notify"},
                                                              5.0, "g2")
    assert cfg.mode_for("retail") == "notify" and cfg.mode_for("default") == "approve"
    assert cfg.mode_for("retail+30000/15000/13000/11500/16000") == "notify"  # overridden lines
    forced = load_liquidator_config(str(p), {"mode": "notify"}).check()
    assert forced.mode_for("retail") == forced.mode_for("x") == "notify"
    p.write_text('redis = "redis://127.0.0.1:1/0"\nfoo = 1\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_liquidator_config(str(p), {})
    with pytest.raises(ConfigError, match="modes.x"):
        LiquidatorConfig(redis="redis://h/0", modes={"x": "yolo"}).check()
    with pytest.raises(ConfigError, match="no Redis"):
        LiquidatorConfig().check()
    assert cli_main(["liquidator", "--redis", "redis://127.0.0.1:1/0",
                     "--hook", "ftp://x"]) == 2
    assert cli_main(["liquidator", "--redis", "redis://127.0.0.1:1/0",
                     "--hook", "https://broker.example/orders"]) == 2  # no signing secret


def test_no_redis_with_until_idle_exits_1_without_leaking_the_password(caplog):
    port = free_port()
    with caplog.at_level("INFO", logger="monitor.liquidator"):
        rc = cli_main(["liquidator", "--redis", f"redis://:s3cret-pw@127.0.0.1:{port}/0",
                       "--until-idle", "0.2", "--insecure-unsigned-alerts"])
    assert rc == 1 and "giving up" in caplog.text
    assert "s3cret-pw" not in caplog.text and ":***@" in caplog.text


async def test_a_redis_outage_is_ridden_out(redis_fresh, r):
    """Redis restarts empty (no persistence): the worker backs off, re-creates its group and
    goes on with what is published afterwards."""
    w = Liquidator(cfg_for(redis_fresh.url, backoff_max=0.2))
    task = asyncio.create_task(w.run())
    publish(r, fl_event("run-o1", "O1"))
    for _ in range(100):
        if CAPTURED:
            break
        await asyncio.sleep(0.02)
    redis_fresh.stop()
    await asyncio.sleep(0.5)
    redis_fresh.start()
    r2 = redis.Redis.from_url(redis_fresh.url)
    publish(r2, fl_event("run-o2", "O2"))  # the stream and group are gone: created anew
    for _ in range(250):
        if len(CAPTURED) == 2:
            break
        await asyncio.sleep(0.02)
    w.stop()
    await asyncio.wait_for(task, 15)
    r2.close()
    assert [b[0]["event_id"] for b in CAPTURED] == ["run-o1", "run-o2"]
    assert w.stats["redis_errors"] >= 1


def test_dry_run_logs_only(redis_fresh, r, caplog):
    publish(r, fl_event("run-d1", "D1"))
    with caplog.at_level("WARNING", logger="monitor.liquidator"):
        rc = cli_main(["liquidator", "--redis", redis_fresh.url, "--dry-run",
                       "--hook", f"redis:{ORDERS}", "--until-idle", "0.3", "--consumer", "d",
                       "--insecure-unsigned-alerts"])
    assert rc == 0
    assert "DRY RUN order run-d1-0" in caplog.text
    assert not r.exists(ORDERS) and not r.exists("margin:liq:done:run-d1")
    assert r.exists("margin:liq:dry-run:done:run-d1")
    assert pending_count(r, group="liquidator.dry-run") == 0
    assert [g["name"] for g in r.xinfo_groups(ALERTS)] == [b"liquidator.dry-run"]


# ------------------------------------------------------------------------------ re-pricing

class MonitorStub:
    """Serves GET /api/account?id=… like the monitor (token required), with a fresh plan."""

    def __init__(self, token: str, plan: dict, fail: int = 0, extra: dict | None = None):
        self.token, self.plan, self.fail = token, plan, fail
        self.extra = extra or {}
        self.calls: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                q = parse_qs(url.query)
                stub.calls.append({"path": url.path, "q": q,
                                   "auth": self.headers.get("Authorization")})
                if self.headers.get("Authorization") != f"Bearer {stub.token}":
                    return self._reply(401, b"Unauthorized.\n")
                if len(stub.calls) <= stub.fail:
                    return self._reply(503, b"busy")
                aid = q.get("id", [""])[0]
                if aid != "P1":
                    return self._reply(400, orjson.dumps({"error": f"unknown account {aid!r}"}))
                self._reply(200, orjson.dumps({
                    "account_id": aid, "tier": "FORCED_LIQUIDATION", "ratio": 1.05,
                    "liquidation_status": "REQUIRED", "shortfall": 0.0,
                    "plan": stub.plan, "server_ns": 1_700_000_000_000_000_000,
                    **stub.extra}))

            def _reply(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_stale_plan_is_repriced_by_the_monitor_before_it_is_sent(redis_fresh, r):
    fresh = {"orders": [{"symbol": "600036.SH", "side": "sell", "qty": 5200, "price": 5.5,
                         "value": 28600.0}], "ratio_after": 1.5012, "residual": 0.0}
    stub = MonitorStub("monitor-token-0123456789", fresh, fail=1)
    try:
        old = time.time_ns() - 30 * 10**9
        publish(r, fl_event("run-p1", "P1", qty=4400, priced_ns=old),
                fl_event("run-p2", "P-UNKNOWN", priced_ns=old))
        cfg = cfg_for(redis_fresh.url, max_plan_age=5.0, repricer=stub.url,
                      repricer_token="monitor-token-0123456789", concurrency=1,
                      confirm_plans=False)  # the stub re-prices only (see test_signed_alerts)
        await run_worker(cfg)
    finally:
        stub.close()
    (batch,) = CAPTURED
    o = batch[0]
    assert (o["qty"], o["price"], o["priced_ns"]) == (5200, 5.5, 1_700_000_000_000_000_000)
    assert o["order_id"] == "run-p1-0" and o["ratio_after"] == 1.5012
    assert stub.calls[0]["path"] == "/api/account" and stub.calls[0]["q"]["id"] == ["P1"]
    assert stub.calls[0]["auth"] == "Bearer monitor-token-0123456789"
    (d,) = dead_in(r)  # the monitor does not know the account: no retry
    assert d["event_id"] == "run-p2" and "does not know account" in d["reason"]


async def test_http_repricer_reports_failures():
    stub = MonitorStub("monitor-token-0123456789", {"orders": []})
    try:
        rp = HttpRepricer(stub.url, "wrong-token-0123456789", timeout=2)
        with pytest.raises(Exception, match="HTTP 401"):
            await rp.reprice({"account_id": "P1"})
    finally:
        stub.close()


async def test_a_stale_plan_without_repricer_waits_for_a_decision(redis_fresh, r):
    publish(r, fl_event("run-s1", "S1", priced_ns=time.time_ns() - 60 * 10**9))
    await run_worker(cfg_for(redis_fresh.url, max_plan_age=5.0, repricer=""))
    assert not CAPTURED
    ctl = LiquidationControl(redis_fresh.url)
    (rec,) = await ctl.pending()
    assert rec["held"] == "stale_plan"
    await ctl.aclose()


async def test_restored_reannouncement_of_a_handled_event_sends_nothing(redis_fresh, r):
    """A monitor restarted from a snapshot re-announces FORCED_LIQUIDATION accounts with
    `restored: true` and the id of the event that announced the tier: when that one was
    handled, nothing is sent, and the re-announcement is recorded done for the next restart.
    An original that was never handled is acted on as usual."""
    c = cfg_for(redis_fresh.url, hook=f"redis:{ORDERS}")
    publish(r, fl_event("run-7", "R1"))
    await run_worker(c)
    assert len(orders_in(r)) == 1
    again = dict(fl_event("run-40", "R1"), restored=True, restored_event_id="run-7",
                 previous_tier="FORCED_LIQUIDATION")
    third = dict(fl_event("run-90", "R1"), restored=True, restored_event_id="run-40",
                 previous_tier="FORCED_LIQUIDATION")
    unhandled = dict(fl_event("run-41", "R2"), restored=True, restored_event_id="run-8",
                     previous_tier="FORCED_LIQUIDATION")
    publish(r, again, unhandled)
    w = await run_worker(c)
    publish(r, third)  # a second restart, later
    w2 = await run_worker(c)
    assert w.stats["restored_done"] == 1 and w2.stats["restored_done"] == 1
    assert done(r, "run-40")["outcome"] == "restored_done"
    assert done(r, "run-40")["of"] == "run-7"
    assert [o["account_id"] for o in orders_in(r)] == ["R1", "R2"]
    assert pending_count(r) == 0


# ------------------------------------------------------------------------------ contracts

TV14_DOC = {"securities": [{"symbol": "600008.SH", "price": "30.00", "haircut": "0.6"},
                           {"symbol": "600009.SH", "price": "10.00", "haircut": "0.6"}],
            "accounts": [{"account_id": "TV14", "cash": "0", "positions": [
                {"symbol": "600008.SH", "kind": "collateral", "qty": 5000},
                {"symbol": "600009.SH", "kind": "financed", "qty": 10000,
                 "financed_cost": "100000", "fin_margin_ratio": "1.0", "contract_id": "FX",
                 "open_date": "2026-06-04", "term_end": "2026-12-04"}]}]}


async def test_an_expired_contract_becomes_orders_that_close_it(redis_fresh, r):
    """CONTRACT_EXPIRED (TV14) from the engine: its plan's orders, naming the contract, with
    reason contract_expired, though the account is at 250%."""
    eng = Engine(MarginState(book_from_dict(TV14_DOC), live=True),
                 EngineConfig(run_id="ctr", clock="tape"))
    events = eng.start(time.time_ns())
    fri = 1_796_349_600_000_000_000  # 2026-12-04 10:00 China time
    for t in (fri, fri + 71 * 3600 * 10**9):  # to Monday 09:00: the close of 12-04 passed
        eng.add_ticks(np.array([1]), np.array([10_000]), np.array([t]))
        events += eng.cycle(time.time_ns())
    assert [e["kind"] for e in events] == ["CONTRACT_EXPIRED"]
    publish(r, *events)
    w = await run_worker(cfg_for(redis_fresh.url, hook=f"redis:{ORDERS}",
                                 max_plan_age=100 * 365 * 86400.0))
    assert w.stats["sent"] == 1 and pending_count(r) == 0
    (o,) = orders_in(r)
    assert (o["account_id"], o["symbol"], o["side"], o["qty"]) == ("TV14", "600009.SH", "sell",
                                                                   10000)
    assert (o["reason"], o["purpose"], o["contract_id"]) == ("contract_expired",
                                                             "sell_to_repay", "FX")


async def test_a_stale_contract_plan_is_repriced_as_the_contract_s_plan(redis_fresh, r):
    """Re-pricing a CONTRACT_EXPIRED takes the monitor's contract_plans[contract_id], not the
    account's liquidation plan; a contract the monitor no longer holds open needs nothing."""
    target = {"orders": [{"symbol": "600036.SH", "side": "sell", "qty": 100, "price": 5.5,
                          "value": 550.0}], "ratio_after": 1.5, "residual": 0.0}
    closing = {"orders": [{"symbol": "600036.SH", "side": "sell", "qty": 700, "price": 5.5,
                           "value": 3850.0, "purpose": "sell_to_repay", "contract_id": "K1"}],
               "ratio_after": 2.1, "tier_after": "NORMAL", "residual": 0.0}
    stub = MonitorStub("monitor-token-0123456789", target,
                       extra={"contract_plans": {"K1": closing}})
    try:
        old = time.time_ns() - 30 * 10**9
        ev = fl_event("run-k1", "P1", priced_ns=old, kind="CONTRACT_EXPIRED")
        ev.update(tier="NORMAL", contract_id="K1", term_end="2026-12-04")
        gone = fl_event("run-k2", "P1", priced_ns=old, kind="CONTRACT_EXPIRED")
        gone.update(tier="NORMAL", contract_id="K-SETTLED", term_end="2026-12-04")
        publish(r, ev, gone)
        cfg = cfg_for(redis_fresh.url, max_plan_age=5.0, repricer=stub.url,
                      repricer_token="monitor-token-0123456789", concurrency=1, cooldown=0.0,
                      confirm_plans=False)  # the stub knows no positions to confirm against
        await run_worker(cfg)
    finally:
        stub.close()
    (batch,) = CAPTURED
    assert [(o["qty"], o["contract_id"], o["reason"]) for o in batch] == [
        (700, "K1", "contract_expired")]
    assert done(r, "run-k2")["outcome"] == "not_required"
