"""Signed alerts and the plan re-check, against a real Redis and a real monitor: with the
monitor's alert key the liquidator dead-letters and counts every unsigned or badly signed alert
and never acts on it; before sending it re-checks each plan with the monitor and dead-letters
(`plan_mismatch`) a correctly signed alert whose plan trades shares the account does not hold
or that the monitor never published."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import orjson
import pytest
import redis
from conftest import start_monitor
from prometheus_client import CollectorRegistry, generate_latest
from test_liquidator import (
    ALERTS,
    CAPTURED,
    ORDERS,
    SAMPLE,
    cfg_for,
    dead_in,
    done,
    fl_event,
    orders_in,
    pending_count,
    run_worker,
)

from monitor.adapters.outbox import encode_event
from monitor.adapters.signing import load_keys, write_key_file
from monitor.cli import main as cli_main
from monitor.liquidator import Liquidator
from monitor.liquidator.metrics import LiquidatorCollector
from monitor.liquidator.orders import plan_mismatch

TOKEN = "signed-alerts-token-0123456789"
OTHER = "k1 " + "z" * 64 + "\n"


@pytest.fixture(autouse=True)
def _clear():
    CAPTURED.clear()


@pytest.fixture
def key(tmp_path) -> str:
    p = tmp_path / "alert.key"
    write_key_file(p)
    return str(p)


def publish_signed(r, keys, *events: dict, tamper=None) -> None:
    for ev in events:
        data = encode_event(ev)
        sig, kid = keys.sign(data)
        if tamper is not None:
            data = tamper(data)
        r.xadd(ALERTS, {"data": data, "sig": sig, "kid": kid})


def refused(w: Liquidator) -> dict[str, float]:
    reg = CollectorRegistry()
    reg.register(LiquidatorCollector(w))
    out = {}
    for line in generate_latest(reg).decode().splitlines():
        if line.startswith("mm_liquidator_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


async def test_unsigned_and_badly_signed_alerts_are_dead_lettered_never_acted_on(
        redis_fresh, key, tmp_path):
    r = redis.Redis.from_url(redis_fresh.url)
    keys = load_keys(key)
    other_file = tmp_path / "other.key"
    other_file.write_text(OTHER)
    os.chmod(other_file, 0o600)
    other = load_keys(str(other_file))
    publish_signed(r, keys, fl_event("run-good", "G1"))
    r.xadd(ALERTS, {"data": encode_event(fl_event("run-unsigned", "U1"))})
    publish_signed(r, keys, fl_event("run-tampered", "T1", qty=100),
                   tamper=lambda d: d.replace(b'"qty":100', b'"qty":900'))
    publish_signed(r, other, fl_event("run-other-key", "K1"))  # a key the liquidator lacks
    r.xadd(ALERTS, {"data": encode_event({**fl_event("run-warn", "W1"), "tier": "WARNING"})})
    w = await run_worker(cfg_for(redis_fresh.url, alert_key_file=key))
    assert [b[0]["event_id"] for b in CAPTURED] == ["run-good"]  # only the signed one
    assert w.stats["refused_unsigned"] == 2 and w.stats["refused_bad_signature"] == 2
    assert refused(w) == {"unsigned": 2.0, "bad_signature": 2.0, "plan_mismatch": 0.0}
    dead = dead_in(r)
    assert sorted(d["code"] for d in dead) == ["bad_signature", "bad_signature", "unsigned",
                                                "unsigned"]
    assert all(d["event_id"] is None and d["raw"] for d in dead)  # the raw entry is kept
    for eid in ("run-unsigned", "run-tampered", "run-other-key", "run-warn"):
        assert done(r, eid) is None  # nothing recorded about what they claim
    assert pending_count(r) == 0
    secret = open(key).read().split()[-1]
    assert all(secret not in orjson.dumps(d).decode() for d in dead)
    r.close()


def test_the_liquidator_refuses_to_start_without_a_key_unless_told(redis_fresh, key, capsys,
                                                                   tmp_path):
    base = ["liquidator", "--redis", redis_fresh.url, "--until-idle", "0.2",
            "--hook", "redis:t:orders"]
    assert cli_main(base) == 2
    assert "no alert_key_file" in capsys.readouterr().err
    assert cli_main([*base, "--insecure-unsigned-alerts"]) == 0
    assert cli_main([*base, "--alert-key-file", key]) == 0
    os.chmod(key, 0o644)
    assert cli_main([*base, "--alert-key-file", key]) == 2
    assert "permissions" in capsys.readouterr().err
    conf = tmp_path / "liq.toml"
    conf.write_text('confirm_plans = true\ninsecure_unsigned_alerts = true\n')
    assert cli_main([*base, "--config", str(conf)]) == 2  # re-check without a monitor URL
    assert "confirm_plans" in capsys.readouterr().err


def test_plan_mismatch_is_pure():
    ev = fl_event("e1", "A1", qty=300, symbol="600036.SH")
    doc = {"account_id": "A1", "positions": [
        {"symbol": "600036.SH", "kind": "collateral", "qty": 200},
        {"symbol": "600036.SH", "kind": "financed", "qty": 100},
        {"symbol": "601012.SH", "kind": "short", "qty": 50}]}
    plan = ev["plan"]
    assert plan_mismatch(plan, doc, ev, ev, check_origin=True) is None
    assert plan_mismatch(plan, doc, None, ev, check_origin=False) is None  # re-priced
    assert "holds no event" in plan_mismatch(plan, doc, None, ev, check_origin=True)
    other = {**ev, "plan": {**plan, "orders": [{**plan["orders"][0], "qty": 200}]}}
    assert "not the one" in plan_mismatch(plan, doc, other, ev, check_origin=True)
    assert "not the one the monitor published as" in plan_mismatch(
        plan, doc, {**ev, "tier": "WARNING"}, ev, check_origin=True)
    two = {**plan, "orders": plan["orders"] * 2}  # 600 of 300 held, in two rows
    assert "holds 300 long" in plan_mismatch(two, doc, None, ev, check_origin=False)
    cover = {**plan, "orders": [{"symbol": "601012.SH", "side": "buy_to_cover", "qty": 60,
                                 "price": 1.0, "value": 60.0}]}
    assert "holds 50 short" in plan_mismatch(cover, doc, None, ev, check_origin=False)
    sell_short = {**plan, "orders": [{**cover["orders"][0], "side": "sell", "qty": 10}]}
    assert "holds 0 long" in plan_mismatch(sell_short, doc, None, ev, check_origin=False)
    assert "another account" in plan_mismatch(plan, {**doc, "account_id": "B"}, ev, ev,
                                              check_origin=True)


@pytest.fixture
def signing_monitor(redis_fresh, tmp_path, key):
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    proc, port = start_monitor(
        ["--book", str(SAMPLE), "--feed", f"{redis_fresh.url}/ticks?block_ms=100",
         "--redis", redis_fresh.url, "--token-file", str(tok), "--alert-key-file", key],
        tmp_path)
    yield port
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def test_a_signed_plan_the_monitor_does_not_confirm_is_not_sent(
        redis_fresh, signing_monitor, key):
    """The running monitor signs its alerts; C-TV8 is under the forced-liquidation line from
    the start. Hand-made, correctly signed alerts: C-TV5 (no debt, holds 10,000 600519.SH)
    selling shares it does not hold, and more than it holds; C-TV8 with a plan the monitor
    never published. None is sent: dead-lettered `plan_mismatch` and counted; the monitor's
    own plan for C-TV8 is confirmed and sent."""
    r = redis.Redis.from_url(redis_fresh.url)
    keys = load_keys(key)
    deadline = time.monotonic() + 30
    genuine = None
    while genuine is None:
        for _, f in r.xrange(ALERTS):
            ev = orjson.loads(f[b"data"])
            assert keys.verify(f[b"data"], f.get(b"sig"), f.get(b"kid")) is None
            if ev["account_id"] == "C-TV8" and ev.get("tier") == "FORCED_LIQUIDATION":
                genuine = ev
        assert time.monotonic() < deadline, "no FORCED_LIQUIDATION alert for C-TV8"
        await asyncio.sleep(0.1)
    publish_signed(
        r, keys,
        fl_event("forged-tv5", "C-TV5", symbol="000001.SZ", qty=5000, price=9.0),
        fl_event("forged-tv5-more", "C-TV5", symbol="600519.SH", qty=20000, price=20.0),
        {**genuine, "event_id": "forged-tv8", "plan": {
            **genuine["plan"], "orders": [{**genuine["plan"]["orders"][0], "qty": 40000}]}})
    cfg = cfg_for(redis_fresh.url, hook=f"redis:{ORDERS}", alert_key_file=key,
                  repricer=f"http://127.0.0.1:{signing_monitor}", repricer_token=TOKEN,
                  max_plan_age=3600.0)
    assert cfg.confirming  # on by default with the monitor's URL
    w = await run_worker(cfg)
    sent = orders_in(r)
    assert {o["event_id"] for o in sent} == {genuine["event_id"]}
    trades = [o for o in sent if o["side"] != "cash_repayment"]  # free cash goes first
    assert [(o["symbol"], o["side"], o["qty"]) for o in trades] == [
        (o["symbol"], o["side"], o["qty"]) for o in genuine["plan"]["orders"]]
    dead = {d["event_id"]: d for d in dead_in(r)}
    assert set(dead) == {"forged-tv5", "forged-tv5-more", "forged-tv8"}
    assert all(d["code"] == "plan_mismatch" for d in dead.values())
    assert "sell 5000 000001.SZ: the account holds 0" in dead["forged-tv5"]["reason"]
    assert "sell 20000 600519.SH: the account holds 10000" in dead["forged-tv5-more"]["reason"]
    assert "holds no event 'forged-tv8'" in dead["forged-tv8"]["reason"]
    assert w.stats["refused_plan_mismatch"] == 3 and w.stats["confirmed"] == 1
    assert refused(w)["plan_mismatch"] == 3.0
    assert done(r, "forged-tv5")["outcome"] == "dead_letter" and pending_count(r) == 0
    r.close()
