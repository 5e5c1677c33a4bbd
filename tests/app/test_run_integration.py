"""`margin-monitor run` end to end, as a process: ticks from a real Redis stream in, alerts out to
a real Redis stream and a real websocket client, identical payloads on both."""

import asyncio
import json
import signal
import time
import urllib.request

import orjson
import pytest
import redis
from conftest import start_monitor
from websockets.asyncio.client import connect

from monitor.book.data import SAMPLE_BOOK

SAMPLE = SAMPLE_BOOK
TOKEN = "integration-test-token-0123456789"


@pytest.fixture
def monitor_proc(redis_fresh, tmp_path):
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    proc, port = start_monitor(
        ["--book", str(SAMPLE), "--feed", f"{redis_fresh.url}/ticks?block_ms=100&start=0",
         "--events", f"{redis_fresh.url}/acct?block_ms=100&start=0",
         "--redis", redis_fresh.url, "--alerts-stream", "it:alerts", "--token-file", str(tok)],
        tmp_path)
    yield proc, port, redis_fresh
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


async def recv_until(ws, pred, timeout=20.0):
    got = []
    deadline = time.monotonic() + timeout
    while not pred(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; got {[orjson.loads(g).get('kind') for g in got]}")
        raw = await asyncio.wait_for(ws.recv(), left)
        raw = raw.encode() if isinstance(raw, str) else raw
        if orjson.loads(raw)["kind"] not in ("HEARTBEAT", "SNAPSHOT"):
            got.append(raw)
    return got


def xadd(r, *ticks):
    r.xadd("ticks", {"data": json.dumps(list(ticks))})


async def test_replayed_ticks_give_the_expected_transitions_on_both_outputs(monitor_proc):
    proc, port, rs = monitor_proc
    r = redis.Redis.from_url(rs.url)
    async with connect(f"ws://127.0.0.1:{port}/ws/alerts",
                       additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        # C-EXACT130 holds 13000 financed 600000.SH against 120000 of debt: R = 0.1083·price
        t0 = 1_763_712_000_000_000_000
        xadd(r, {"symbol": "600000.SH", "price": 10.80, "ts": t0 + 1},
             {"symbol": "NOPE.SH", "price": 1.0, "ts": t0 + 1},
             {"symbol": "600000.SH", "price": "NaN", "ts": t0 + 2})
        live = await recv_until(ws, lambda g: len(g) >= 2)
        xadd(r, {"symbol": "600000.SH", "price": 12.00, "ts": t0 + 3})  # 1.30: inside the band
        xadd(r, {"symbol": "600000.SH", "price": 12.10, "ts": t0 + 4})  # 1.3108: clears it
        live += await recv_until(ws, lambda g: len(g) >= 1)
        # account events: an invalid one is rejected, a deposit cures the call
        r.xadd("acct", {"data": b'{"type": "deposit", "account_id": "NOPE", "amount": "1"}'})
        r.xadd("acct", {"data": b'{"type": "deposit", "account_id": "C-EXACT130", '
                                b'"amount": "30000", "event_id": "d1"}'})
        live += await recv_until(ws, lambda g: len(g) >= 2)
    events = [orjson.loads(x) for x in live]
    assert [(e["kind"], e["account_id"], e["previous_tier"], e["tier"]) for e in events] == [
        ("TIER_CHANGE", "C-EXACT130", "WARNING", "MARGIN_CALL"),
        ("CALL_ISSUED", "C-EXACT130", "MARGIN_CALL", "MARGIN_CALL"),
        ("TIER_CHANGE", "C-EXACT130", "MARGIN_CALL", "WARNING"),
        ("TIER_CHANGE", "C-EXACT130", "WARNING", "NORMAL"),  # 187300 / 120000 = 1.5608
        ("CALL_CURED", "C-EXACT130", "NORMAL", "NORMAL"),
    ]
    assert events[3]["trigger"] == {"event": "deposit", "event_id": "d1"}
    assert events[0]["trigger"] == {"symbol": "600000.SH", "price": 10.8}
    assert events[0]["ts_event"] == t0 + 1
    assert events[0]["ratio"] == 1.17 and events[2]["ratio"] == 1.310833
    # the Redis stream holds the start-up picture, then the same bytes the websocket got
    time.sleep(0.5)
    entries = [e[1][b"data"] for e in r.xrange("it:alerts")]
    seqs = [orjson.loads(x)["seq"] for x in entries]
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free, in order
    start = [orjson.loads(x) for x in entries[:-5]]
    assert {e["account_id"] for e in start if e["kind"] == "TIER_CHANGE"} == {
        "C-TV1", "C-TV2", "C-TV3", "C-TV7", "C-TV8", "C-EXACT130", "C-CONSERVATIVE"}
    assert all(e["previous_tier"] is None for e in start if e["kind"] == "TIER_CHANGE")
    assert entries[-5:] == live
    # bad ticks were rejected and counted, not applied
    time.sleep(1.5)  # one heartbeat
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    metrics = urllib.request.urlopen(req, timeout=5).read().decode()
    assert 'mm_ticks_rejected_total{reason="unknown_symbol"} 1.0' in metrics
    assert 'mm_ticks_rejected_total{reason="non_finite"} 1.0' in metrics
    assert 'mm_ticks_rejected_total{reason="out_of_band"} 0.0' in metrics  # there from 0
    assert 'mm_account_events_rejected_total{reason="unknown_account"} 1.0' in metrics
    assert 'mm_feed_state{state="live"} 1.0' in metrics
    summary = orjson.loads(r.get("it:alerts:summary"))
    assert summary["account_events"]["rejected"] == {"unknown_account": 1}
    assert summary["account_events"]["applied"] == 1
    assert summary["tiers"]["MARGIN_CALL"] == 1  # C-TV2 only; C-EXACT130 is back to WARNING
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_wrong_token_is_refused(monitor_proc):
    _, port, _ = monitor_proc
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 401


REPLAY_BOOK = {
    "securities": [{"symbol": "600000.SH", "price": "14.00", "haircut": "0.7",
                    "prev_close": "13.00"}],  # the limit band: 11.70 to 14.30
    "accounts": [{"account_id": "R1", "cash": "0", "positions": [
        {"symbol": "600000.SH", "kind": "financed", "qty": 10000, "financed_cost": "100000",
         "fin_margin_ratio": "1"}]}],
}
# 2026-09-30 (China time, UTC+8): R = price / 10 falls into MARGIN_CALL at 10:15
SEP30 = 1_790_731_800_000_000_000  # 09:30
REPLAY_TICKS = [("13.80", SEP30 + 60 * 10**9), ("12.40", SEP30 + 45 * 60 * 10**9),
                ("12.20", SEP30 + 5 * 3600 * 10**9)]


def test_a_replayed_day_gives_its_own_deadlines_and_the_same_events_twice(redis_fresh,
                                                                          tmp_path):
    """`run --feed replay:` runs on the tape's time: calls issued on 2026-09-30 at T+2 are due
    2026-10-09 whatever the wall clock, and two runs publish the same events (but for
    ts_published and the run's own event ids)."""
    import subprocess
    import sys

    book = tmp_path / "book.json"
    book.write_text(json.dumps(REPLAY_BOOK))
    ticks = tmp_path / "ticks.jsonl"
    ticks.write_text("".join(json.dumps({"symbol": "600000.SH", "price": p, "ts": t}) + "\n"
                             for p, t in REPLAY_TICKS))
    r = redis.Redis.from_url(redis_fresh.url)
    runs = []
    for stream in ("rp:a", "rp:b"):
        proc = subprocess.run(
            [sys.executable, "-m", "monitor.cli", "run", "--book", str(book),
             "--feed", f"replay:{ticks}", "--redis", redis_fresh.url,
             "--alerts-stream", stream, "--until-feed-ends", "--listen", "127.0.0.1:0"],
            cwd=tmp_path, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        runs.append([orjson.loads(f[b"data"]) for _, f in r.xrange(stream)])
    a, b = runs
    issued = [e for e in a if e["kind"] == "CALL_ISSUED"]
    assert [e["call"]["deadline"] for e in issued] == ["2026-10-09"]
    # issued at the tape's time (the cycle's last tick: a replay's ticks are conflated)
    assert REPLAY_TICKS[1][1] <= issued[0]["call"]["issued_ns"] <= REPLAY_TICKS[-1][1]
    assert a[0]["kind"] == "TIER_CHANGE" and a[0]["ts_event"] == REPLAY_TICKS[0][1]

    def strip(events):
        return [{k: v for k, v in e.items() if k not in ("ts_published", "event_id")}
                for e in events]

    assert strip(a) == strip(b)


# TV14 (vectors.json), on earlier dates (a tape ahead of the wall clock is refused as future_ts):
# contract FX, term end 2026-10-30, open at that day's 15:00 close
CONTRACT_BOOK = {
    "securities": [{"symbol": "600008.SH", "price": "30.00", "haircut": "0.6"},
                   {"symbol": "600009.SH", "price": "10.00", "haircut": "0.6"}],
    "accounts": [{"account_id": "TV14", "cash": "0", "positions": [
        {"symbol": "600008.SH", "kind": "collateral", "qty": 5000},
        {"symbol": "600009.SH", "kind": "financed", "qty": 10000, "financed_cost": "100000",
         "fin_margin_ratio": "1.0", "contract_id": "FX", "open_date": "2026-04-30",
         "term_end": "2026-10-30"}]}],
}
OCT30 = 1_793_323_800_000_000_000  # 2026-10-30 09:30 China time


async def test_contract_expired_goes_out_on_both_outputs(redis_fresh, tmp_path):
    """A replay across the close of a contract's term end: CONTRACT_EXPIRED, with the plan
    that closes the contract, byte for byte the same on the websocket and the Redis stream."""
    book = tmp_path / "book.json"
    book.write_text(json.dumps(CONTRACT_BOOK))
    ticks = tmp_path / "ticks.jsonl"
    ticks.write_text("".join(json.dumps({"symbol": "600009.SH", "price": "10.00", "ts": t}) + "\n"
                             for t in (OCT30, OCT30 + 72 * 3600 * 10**9)))  # to 11-02 09:30
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    # paced: 72 hours of tape in about 6 seconds, so the websocket is connected in time
    proc, port = start_monitor(
        ["--book", str(book), "--feed", f"replay:{ticks}?speed=43200", "--redis",
         redis_fresh.url, "--alerts-stream", "ct:alerts", "--token-file", str(tok)], tmp_path)
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws/alerts",
                           additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            got = await recv_until(ws, lambda g: any(
                orjson.loads(x)["kind"] == "CONTRACT_EXPIRED" for x in g), timeout=60)
        raw = next(x for x in got if orjson.loads(x)["kind"] == "CONTRACT_EXPIRED")
        ev = orjson.loads(raw)
        assert ev["contract_id"] == "FX" and ev["term_end"] == "2026-10-30"
        assert ev["ts_event"] == OCT30 + 330 * 60 * 10**9  # 15:00 China time
        assert [(o["symbol"], o["side"], o["purpose"], o["qty"], o["contract_id"])
                for o in ev["plan"]["orders"]] == [
            ("600009.SH", "sell", "sell_to_repay", 10000, "FX")]
        assert ev["plan"]["tier_after"] == "NO_DEBT" and ev["tier"] == "NORMAL"
        r = redis.Redis.from_url(redis_fresh.url)
        deadline = time.monotonic() + 10
        while True:
            entries = [f[b"data"] for _, f in r.xrange("ct:alerts")]
            if raw in entries or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert raw in entries
    finally:
        proc.kill()
        proc.wait(10)
