"""The liquidator end to end, as processes: the real monitor produces the alerts (and takes the
fills back), `margin-monitor liquidator` workers consume them, one of them killed with SIGKILL
while its webhook call hangs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
import redis
from conftest import start_monitor
from test_liquidator import (
    ORDERS,
    SAMPLE,
    SECRET,
    cfg_for,
    dead_in,
    done,
    fl_event,
    orders_in,
    pending_count,
    publish,
    receiver,  # noqa: F401 - fixture
    run_worker,
    sample_doc,
    vector_plan,
    vector_ratio_after,
)

from monitor.adapters.signing import write_key_file
from monitor.liquidator import HttpRepricer

TOKEN = "liquidator-e2e-token-0123456789"
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "monitor.cli", *args]


def write_config(path, **kw) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in kw.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_real_monitor_alerts_become_the_vector_orders(redis_fresh, tmp_path):
    """`margin-monitor run` on the sample book (TV1, TV3, TV7 in a profile whose
    forced-liquidation line they are under; TV8 underwater) announces the forced liquidations;
    `margin-monitor liquidator` turns them into the spec's lot-rounded orders. Both share one
    alert key file: every alert is signed and verified."""
    url = redis_fresh.url
    key = tmp_path / "alert.key"
    write_key_file(key)
    book = tmp_path / "book.json"
    book.write_text(json.dumps(sample_doc(strict=("C-TV1", "C-TV3", "C-TV7"))))
    ticks = tmp_path / "ticks.jsonl"
    # a replay runs on its ticks' time: the plans are priced now, so they are fresh
    ticks.write_text(json.dumps({"symbol": "600519.SH", "price": 20.01, "ts": time.time_ns()})
                     + "\n")
    run = subprocess.run(cli("run", "--book", str(book), "--feed", f"replay:{ticks}",
                             "--redis", url, "--until-feed-ends", "--listen", "127.0.0.1:0",
                             "--alert-key-file", str(key)),
                         cwd=tmp_path, env=ENV, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    conf = write_config(tmp_path / "liquidator.toml", max_plan_age=120.0, block=0.1,
                        hold_outside_sessions=False)  # whatever the time of day
    liq = subprocess.run(cli("liquidator", "--config", conf, "--redis", url,
                             "--alerts-stream", "margin:alerts", "--group", "liq",
                             "--consumer", "c1", "--hook", f"redis:{ORDERS}", "--mode", "auto",
                             "--until-idle", "0.5", "--alert-key-file", str(key)),
                         cwd=tmp_path, env=ENV, capture_output=True, timeout=60)
    assert liq.returncode == 0, liq.stderr.decode()[-2000:]
    r = redis.Redis.from_url(url)
    got: dict[str, list[dict]] = {}
    for o in orders_in(r):
        got.setdefault(o["account_id"], []).append(o)
    assert sorted(got) == ["C-TV1", "C-TV3", "C-TV7", "C-TV8"]
    for vid in ("TV1", "TV3", "TV7"):
        orders = got[f"C-{vid}"]
        assert [(o["symbol"], o["side"], o["qty"]) for o in orders] == vector_plan(vid)
        assert f"{orders[0]['ratio_after'] * 100:.2f}" == vector_ratio_after(vid)
    (tv8,) = got["C-TV8"]
    assert (tv8["qty"], tv8["liquidation_status"], tv8["shortfall"]) == (
        50_000, "UNREACHABLE_FULL_LIQUIDATION", 56000.0)
    assert pending_count(r, group="liq") == 0
    assert all(f.get(b"sig") and f.get(b"kid") == b"k1" for _, f in r.xrange("margin:alerts"))
    assert not dead_in(r)  # every alert verified


def test_worker_killed_mid_hook_another_reclaims_and_the_order_takes_effect_once(
        redis_fresh, tmp_path, receiver):  # noqa: F811 - fixture
    """Worker A's webhook call reaches the broker, which applies the orders but never answers;
    A is killed (SIGKILL). Worker B reclaims the entry once A's marker expired and re-sends the
    identical request with the same Idempotency-Key: the broker applies each order once."""
    url = redis_fresh.url
    r = redis.Redis.from_url(url)
    rec = receiver(hold_first=True)
    ev = fl_event("run-kill", "KA")
    ev["plan"]["orders"].append({"symbol": "601012.SH", "side": "buy_to_cover", "qty": 200,
                                 "price": 36.0, "value": 7200.0})
    publish(r, ev)
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    conf = write_config(tmp_path / "liquidator.toml", claim_idle=1.0, lock_ttl=1.5,
                        webhook_timeout=30.0, backoff_initial=0.05, backoff_max=0.2,
                        block=0.1, max_plan_age=3600.0, cooldown=0.0)
    base = ["liquidator", "--config", conf, "--redis", url, "--hook", rec.url,
            "--webhook-secret-file", str(secret), "--insecure-unsigned-alerts"]
    a = subprocess.Popen(cli(*base, "--consumer", "A"), cwd=tmp_path, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert rec.first.wait(30), "worker A never called the webhook"
        assert r.get("margin:liq:lock:run-kill").startswith(b"A:")
        assert r.exists("margin:liq:attempt:run-kill")
        a.send_signal(signal.SIGKILL)
        a.wait(10)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait(10)
    assert a.returncode == -signal.SIGKILL
    assert r.xpending_range("margin:alerts", "liquidator", "-", "+", 10)[0]["consumer"] == b"A"
    t0 = time.monotonic()
    b = subprocess.run(cli(*base, "--consumer", "B", "--until-idle", "0.5"), cwd=tmp_path,
                       env=ENV, capture_output=True, timeout=60)
    rec.release.set()
    log = b.stderr.decode()
    assert b.returncode == 0, log[-2000:]
    assert "reclaimed margin:alerts" in log and "re-sending the same 2 order(s)" in log
    assert time.monotonic() - t0 < 20
    assert len(rec.requests) == 2 and all(q["signed"] for q in rec.requests)
    assert rec.requests[0]["body"] == rec.requests[1]["body"]
    assert {q["headers"]["Idempotency-Key"] for q in rec.requests} == {"run-kill"}
    assert sorted(rec.applied) == ["run-kill-0", "run-kill-1"]  # each applied once
    d = done(r, "run-kill")
    assert d["outcome"] == "sent" and d["consumer"] == "B"
    assert d["order_ids"] == ["run-kill-0", "run-kill-1"]
    assert pending_count(r) == 0 and not dead_in(r)
    assert not r.exists("margin:liq:lock:run-kill") and not r.exists("margin:liq:attempt:run-kill")


@pytest.fixture
def live_monitor(redis_fresh, tmp_path):
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    proc, port = start_monitor(
        ["--book", str(SAMPLE), "--feed", f"{redis_fresh.url}/ticks?block_ms=100",
         "--events", f"{redis_fresh.url}/acct?block_ms=100", "--redis", redis_fresh.url,
         "--token-file", str(tok)], tmp_path)
    yield port
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_for_alert(r, pred, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, f in r.xrange("margin:alerts"):
            ev = orjson.loads(f[b"data"])
            if pred(ev):
                return ev
        time.sleep(0.05)
    raise AssertionError("no such alert")


async def test_fills_come_back_as_account_events_and_the_monitor_reevaluates(
        redis_fresh, live_monitor):
    """The whole loop against the running monitor. C-TV2 is at MARGIN_CALL at start (a call is
    issued); its short 300750.SZ rises to 31.00 and puts it under the forced-liquidation line.
    The liquidator re-prices the plan with the monitor's /api/account and sends it; the
    broker's fills go to the monitor's --events stream; the monitor applies them, the account
    leaves FORCED_LIQUIDATION and the margin call is cured; a repeated fill is refused as a
    duplicate; a fresh plan is now empty. Free cash first (the sample's default profile): the
    plan's first instruction repays 50,000 of free cash (cash 250,000 less 200,000 of short-sale
    proceeds), reported back as a cash repayment; then 6,500 shares are covered, not 10,000."""
    url, port = redis_fresh.url, live_monitor
    r = redis.Redis.from_url(url)
    wait_for_alert(r, lambda e: e["account_id"] == "C-TV2" and e["kind"] == "CALL_ISSUED")
    r.xadd("ticks", {"data": json.dumps({"symbol": "300750.SZ", "price": 31.00,
                                         "ts": time.time_ns()})})
    fl = wait_for_alert(r, lambda e: e["account_id"] == "C-TV2"
                        and e.get("tier") == "FORCED_LIQUIDATION")
    expected = [("300750.SZ", "buy_to_cover", 6500, 31.0), ("000001.SZ", "sell", 15000, 9.0)]
    assert [(o["symbol"], o["side"], o["qty"], o["price"]) for o in fl["plan"]["orders"]] \
        == expected
    assert (fl["plan"]["cash_repayment"], fl["plan"]["interest_repaid"]) == (50000.0, 5000.0)
    monitor = f"http://127.0.0.1:{port}"
    cfg = cfg_for(url, hook=f"redis:{ORDERS}", max_plan_age=0.0, repricer=monitor,
                  repricer_token=TOKEN, cooldown=30.0)
    w = await run_worker(cfg)
    assert w.stats["repriced"] == 2  # and TV8's, underwater since the start
    cash, *orders = [o for o in orders_in(r) if o["account_id"] == "C-TV2"]
    assert (cash["kind"], cash["value"], cash["row"], cash["rows"]) == (
        "cash_repayment", 50000.0, 0, 3)
    assert [(o["symbol"], o["side"], o["qty"], o["price"]) for o in orders] == expected
    assert {o["event_id"] for o in orders} == {fl["event_id"]}
    assert orders[0]["priced_ns"] >= fl["plan"]["priced_ns"]  # the monitor's fresh pricing
    # the broker executes and reports fills: the short is bought back; the financed shares
    # are sold and their proceeds repay the financing (卖券还款: sell_to_repay)
    fills = [{"type": "fill", "event_id": o["order_id"], "account_id": o["account_id"],
              "symbol": o["symbol"],
              "side": "buy_to_cover" if o["side"] == "buy_to_cover" else "sell_to_repay",
              "qty": o["qty"], "price": o["price"], "ts": time.time_ns()} for o in orders]
    r.xadd("acct", {"data": json.dumps({"type": "repayment", "event_id": cash["order_id"],
                                        "account_id": "C-TV2", "source": "cash",
                                        "amount": str(cash["value"]), "ts": time.time_ns()})})
    for f in fills:
        r.xadd("acct", {"data": json.dumps(f)})
    out = wait_for_alert(r, lambda e: e["account_id"] == "C-TV2" and e["kind"] == "TIER_CHANGE"
                         and (e.get("trigger") or {}).get("event_id") == orders[1]["order_id"])
    assert out["trigger"]["event"] == "fill" and out["ratio"] == 1.5
    assert out["tier"] == "WARNING"  # at the target (150%), within the hysteresis band
    wait_for_alert(r, lambda e: e["account_id"] == "C-TV2" and e["kind"] == "CALL_CURED")
    r.xadd("acct", {"data": json.dumps(fills[1])})  # the broker re-sends a fill
    deadline = time.monotonic() + 10
    while True:
        summary = orjson.loads(r.get("margin:alerts:summary") or b"{}")
        if summary.get("account_events", {}).get("rejected", {}).get("duplicate") == 1:
            break
        assert time.monotonic() < deadline, summary.get("account_events")
        await asyncio.sleep(0.1)
    plan = await HttpRepricer(monitor, TOKEN).reprice({"account_id": "C-TV2"})
    assert plan["orders"] == [] and plan["liquidation_status"] == "NOT_REQUIRED"
    w = await run_worker(cfg)  # leaving FORCED_LIQUIDATION, the cure: no order
    # TV2's three instructions, TV8's two (its 2,000 of cash repays interest, then it sells)
    assert len(orders_in(r)) == 5 and pending_count(r) == 0 and w.stats["ignored"] >= 2
