"""Fail safe and visibly: /healthz and /metrics of a running monitor tell idle from hung.

- A Redis error that is not a connection error (the tick key or the account-event key turned
  into a string: WRONGTYPE) no longer ends a source: /healthz answers 503 with the reason while
  it lasts, and the ticks and events added once it is put right are applied.
- /metrics follows Prometheus' conventions (promtool, when installed, and a parser check that
  always runs): counters end in `_total`, labelled reasons are there from 0, and the liveness
  figures are set (last cycle end, feed and event-source state, outbox connected, feed lag).
- `run` needs a feed named; the summary key follows the alert stream and expires.
- health() itself: the grace period of a source, and a cycle that does not come.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest
import redis
from conftest import start_monitor
from prometheus_client.parser import text_string_to_metric_families

from feeds.ticks import REASONS
from kernels.units import TIER_NAMES
from monitor.app.config import RunConfig
from monitor.app.metrics import ACCOUNT_EVENT_REASONS, FEED_STATES
from monitor.app.runtime import Monitor
from monitor.book.data import SAMPLE_BOOK
from monitor.book.load import load_book

TOKEN = "liveness-test-token-0123456789"
STREAM = "lv:alerts"
T0 = 1_763_712_000_000_000_000


# ---------------------------------------------------------------------------- helpers
def health(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def metrics(port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def samples(body: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: dict, name: str, **labels) -> float:
    return got[(name, frozenset(labels.items()))]


def wait_for(pred, timeout=60.0, what="condition", proc=None):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"monitor exited ({proc.returncode}) waiting for {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alerts(r) -> list[dict]:
    return [orjson.loads(f[b"data"]) for _, f in r.xrange(STREAM)]


@pytest.fixture
def monitor(redis_fresh, tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "monitor.toml").write_text(
        "heartbeat_s = 0.2\nsource_grace_s = 1.0\nstale_feed_unhealthy = false\n")
    proc, port = start_monitor(
        ["--book", str(SAMPLE_BOOK), "--config", str(tmp_path / "monitor.toml"),
         "--feed", f"{redis_fresh.url}/ticks?block_ms=100&start=0",
         "--events", f"{redis_fresh.url}/acct?block_ms=100&start=0",
         "--redis", redis_fresh.url, "--alerts-stream", STREAM,
         "--token-file", str(tmp_path / "token")], tmp_path)
    r = redis.Redis.from_url(redis_fresh.url)
    yield proc, port, r
    r.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def xadd_tick(r, price, ts):
    r.xadd("ticks", {"data": json.dumps({"symbol": "600000.SH", "price": price, "ts": ts})})


# ---------------------------------------------------------------------------- a running monitor
def test_wrongtype_on_either_key_is_503_until_put_right_then_nothing_is_lost(monitor):
    proc, port, r = monitor
    st, h = wait_for(lambda: (x := health(port))[1]["events_state"] == "live" and x,
                     what="the event source live")
    # an idle Redis feed (connected, no tick yet) is not an outage with this config
    assert st == 200 and h["ok"] and h["reasons"] == []
    xadd_tick(r, 10.80, T0 + 1)  # C-EXACT130 -> MARGIN_CALL
    wait_for(lambda: any(e["kind"] == "TIER_CHANGE" and e["account_id"] == "C-EXACT130"
                         for e in alerts(r)), what="the first transition", proc=proc)
    assert health(port)[1]["feed_state"] == "live"

    # the tick key is overwritten by a string: the feed stays up, retrying, and says so
    r.delete("ticks")
    r.set("ticks", "oops")
    st, h = wait_for(lambda: (x := health(port))[0] == 503 and x, what="503 on WRONGTYPE")
    assert h["ok"] is False and h["feed_state"] == "error" and "WRONGTYPE" in h["feed_error"]
    assert any("feed" in why and "WRONGTYPE" in why for why in h["reasons"]), h["reasons"]
    got = samples(metrics(port))
    assert value(got, "mm_feed_state", state="error") == 1
    assert value(got, "mm_feed_state", state="live") == 0
    assert value(got, "mm_feed_errors_total", kind="server") >= 1
    assert value(got, "mm_healthy") == 0
    # put right: the next tick is read and applied, and health is back
    r.delete("ticks")
    xadd_tick(r, 12.10, T0 + 4)  # 1.3108: back to WARNING
    wait_for(lambda: any(e["kind"] == "TIER_CHANGE" and e["tier"] == "WARNING"
                         and e["account_id"] == "C-EXACT130" for e in alerts(r)),
             what="the tick after the fix", proc=proc)
    wait_for(lambda: health(port)[0] == 200, what="200 again")

    # the same for the account-event key
    r.delete("acct")
    r.set("acct", "oops")
    st, h = wait_for(lambda: (x := health(port))[0] == 503 and x, what="503 on the events key")
    assert h["events_state"] == "error" and "WRONGTYPE" in h["events_error"]
    assert any(why.startswith("account events") for why in h["reasons"]), h["reasons"]
    assert value(samples(metrics(port)), "mm_account_events_state", state="error") == 1
    r.delete("acct")
    r.xadd("acct", {"data": b'{"type": "deposit", "account_id": "C-EXACT130", '
                            b'"amount": "30000", "event_id": "d1"}'})
    wait_for(lambda: any((e.get("trigger") or {}).get("event_id") == "d1" for e in alerts(r)),
             what="the deposit after the fix", proc=proc)
    wait_for(lambda: health(port)[0] == 200, what="200 again")
    got = samples(metrics(port))
    assert value(got, "mm_account_events_applied_total") == 1
    assert value(got, "mm_account_events_errors_total", kind="server") >= 1

    # the summary key is the alert stream's, and it expires
    wait_for(lambda: (raw := r.get(f"{STREAM}:summary")) and orjson.loads(raw)["health"]["ok"],
             what="a summary saying ok")  # each heartbeat's summary carries the health
    assert 0 < r.pttl(f"{STREAM}:summary") <= 2000  # 5 heartbeats of 0.2 s, at least 2 s
    assert r.get("margin:summary") is None


def test_metrics_follow_prometheus_conventions(monitor):
    proc, port, r = monitor
    now_ns = time.time_ns()
    r.xadd("ticks", {"data": json.dumps([
        {"symbol": "600000.SH", "price": 10.80, "ts": now_ns - 30_000_000_000},  # 30 s old
        {"symbol": "NOPE.SH", "price": 1.0, "ts": now_ns}])})
    r.xadd("acct", {"data": b'{"type": "deposit", "account_id": "NOPE", "amount": "1"}'})
    r.xadd("acct", {"data": b"{not json"})
    body = wait_for(lambda: (b := metrics(port)) and
                    'mm_account_events_rejected_total{reason="unknown_account"} 1.0' in b
                    and 'mm_account_events_rejected_total{reason="undecodable"} 1.0' in b
                    and 'mm_ticks_rejected_total{reason="unknown_symbol"} 1.0' in b
                    and 'mm_cycles_total{path="none"} 0.0' not in b
                    and "mm_outbox_connected 1.0" in b and b,
                    what="the rejects counted, a heartbeat, the outbox up", proc=proc)
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    for fam in fams.values():  # counters end in _total, nothing else does
        for s in fam.samples:
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            else:
                assert not s.name.endswith("_total"), s.name
    got = samples(body)
    for reason in REASONS:  # every reason from 0
        assert ("mm_ticks_rejected_total", frozenset({("reason", reason)})) in got
    for reason in ACCOUNT_EVENT_REASONS:
        assert ("mm_account_events_rejected_total", frozenset({("reason", reason)})) in got
    assert value(got, "mm_account_events_rejected_total", reason="undecodable") == 1
    assert [value(got, "mm_feed_state", state=s) for s in FEED_STATES].count(1) == 1
    assert value(got, "mm_feed_state", state="live") == 1
    assert value(got, "mm_account_events_state", state="live") == 1
    assert value(got, "mm_feed_lag_seconds") >= 30  # receive time - the tick's exchange time
    assert value(got, "mm_last_cycle_end_timestamp_seconds") > 1.6e9  # Unix seconds
    assert value(got, "mm_feed_last_message_timestamp_seconds") > 1.6e9
    assert value(got, "mm_outbox_connected") == 1
    assert ("mm_outbox_backlog", frozenset()) in got
    assert value(got, "mm_healthy") == 1
    for tier in TIER_NAMES:  # the summary's figures
        assert ("mm_accounts", frozenset({("tier", tier)})) in got
        assert ("mm_debt_yuan", frozenset({("tier", tier)})) in got
    assert value(got, "mm_book_accounts") == 8 and ("mm_open_calls", frozenset()) in got
    assert fams["mm_feed_info"].samples[0].labels["kind"] == "redis"
    # every cycle is counted, the ones without ticks too
    cycles = sum(value(got, "mm_cycles_total", path=p)
                 for p in ("incremental", "sweep", "reach", "none"))
    assert cycles == value(got, "mm_cycle_seconds_count") and cycles > 0
    assert value(got, "mm_cycles_total", path="none") > 0  # heartbeats (call deadlines)

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); the parser check "
                    "above passed")
    p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


# ---------------------------------------------------------------------------- the command line
def test_run_without_a_feed_exits_2_and_says_why(tmp_path):
    for extra in ([], ["--config", str(tmp_path / "monitor.toml")]):
        (tmp_path / "monitor.toml").write_text(f'book = "{SAMPLE_BOOK}"\n')
        p = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "--book",
                            str(SAMPLE_BOOK), *extra], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
        assert p.returncode == 2, p.stderr
        assert "no feed" in p.stderr and "synthetic" in p.stderr, p.stderr


def test_the_summary_key_follows_the_alert_stream_and_expires():
    cfg = RunConfig(alerts_stream="desk-a:alerts")
    assert cfg.summary_key_resolved == "desk-a:alerts:summary"
    assert cfg.summary_ttl_resolved == 5.0  # five 1-second heartbeats
    assert RunConfig(summary_key="k", summary_ttl_s=30).summary_key_resolved == "k"
    assert RunConfig(heartbeat_s=0.1).summary_ttl_resolved == 2.0
    with pytest.raises(ValueError, match="no feed"):
        Monitor(RunConfig(book="x"), load_book(SAMPLE_BOOK))


# ---------------------------------------------------------------------------- health() itself
async def test_a_source_is_given_its_grace_and_then_reported(tmp_path):
    """A websocket feed that cannot connect: within `source_grace_s` health is ok (a restart
    of the venue's gateway is not an alarm), beyond it not, with the error."""
    from conftest import free_port

    port = free_port()  # nothing listens there
    cfg = RunConfig(book="x", feed=f"ws://127.0.0.1:{port}/", listen="127.0.0.1:0",
                    spill_dir=str(tmp_path / "spill"), token="t" * 24, source_grace_s=10.0)
    mon = Monitor(cfg, load_book(SAMPLE_BOOK))
    task = asyncio.create_task(mon.run())
    try:
        async with asyncio.timeout(120):
            while mon.feed.status.state != "reconnecting":
                await asyncio.sleep(0.05)
        now = time.time_ns()
        h = mon.health(now_ns=now)
        assert h["ok"] and h["feed_state"] == "reconnecting" and h["feed_error"]
        h = mon.health(now_ns=now + 60 * 10**9)  # a minute later, still down
        assert not h["ok"] and h["reasons"][0].startswith("feed reconnecting for 6")
        assert h["reasons"][0].endswith(h["feed_error"]) and "Error" in h["feed_error"]
        assert str(port) not in orjson.dumps(h).decode()  # /healthz is open: no address in it
        assert mon.summary()["feed"]["errors"]["connection"] >= 1
    finally:
        mon.stop()
        await asyncio.wait_for(task, 60)


async def test_ticks_waiting_for_a_cycle_beyond_cycle_stall_s_are_unhealthy(tmp_path):
    """Ticks queued and no cycle run (the cycle task is not running here): health is ok while
    they are young, not ok once they waited longer than `cycle_stall_s`."""
    ticks = tmp_path / "ticks.jsonl"
    ticks.write_text(json.dumps({"symbol": "600000.SH", "price": 10.8, "ts": T0}) + "\n")
    cfg = RunConfig(book="x", feed=f"replay:{ticks}", cycle_stall_s=10.0)
    mon = Monitor(cfg, load_book(SAMPLE_BOOK))
    await mon._feed_loop()  # the feed task alone: the ticks wait for a cycle
    assert mon.engine.pending == 1
    now = time.time_ns()
    h = mon.health(now_ns=now)
    assert h["ok"] and h["feed_state"] == "done" and h["pending_symbols"] == 1
    h = mon.health(now_ns=now + 30 * 10**9)
    assert not h["ok"] and h["reasons"] == [h["reasons"][0]]
    assert h["reasons"][0].startswith("cycle stalled: 1 securities")
    assert "no cycle has run yet" in h["reasons"][0]
