"""The byte caps of a running monitor (pattern_state_bytes, credit_state_bytes,
audit_queue_bytes): fills past the trading-pattern cap keep its evidence bounded, and what was
dropped is on /metrics; a cap below the minimum stops `run` with exit 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import orjson
import redis
from conftest import start_monitor
from test_liveness import metrics, samples, value, wait_for

from monitor.book.data import SAMPLE_BOOK

TOKEN = "liveness-test-token-0123456789"  # test_liveness.metrics() sends this one
CAP = 65536


def test_pattern_evidence_past_its_cap_is_dropped_and_counted(redis_fresh, tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "monitor.toml").write_text(
        f"heartbeat_s = 0.2\npattern_state_bytes = {CAP}\ncredit_state_bytes = {CAP}\n"
        f"audit_queue_bytes = {4 * CAP}\n"
        '[patterns.round_trips]\ncount = 50\nwindow_s = 100000\n'
        '[patterns.thin_turnover]\nenabled = false\n[patterns.limit_trades]\nenabled = false\n')
    proc, port = start_monitor(
        ["--book", str(SAMPLE_BOOK), "--config", str(tmp_path / "monitor.toml"),
         "--feed", f"{redis_fresh.url}/ticks?block_ms=100&start=0",
         "--events", f"{redis_fresh.url}/acct?block_ms=100&start=0",
         "--redis", redis_fresh.url, "--token-file", str(tmp_path / "token"),
         "--audit-dir", str(tmp_path / "audit")], tmp_path)
    r = redis.Redis.from_url(redis_fresh.url)
    try:
        doc = json.loads(SAMPLE_BOOK.read_text())
        prices = {s["symbol"]: s["price"] for s in doc["securities"]}
        n, now = 0, time.time_ns()
        for a in doc["accounts"]:
            for sym, price in prices.items():  # one buy per (account, security): no pattern
                r.xadd("acct", {"data": orjson.dumps({
                    "type": "fill", "event_id": f"cap-{n}", "account_id": a["account_id"],
                    "symbol": sym, "side": "collateral_buy", "qty": 100, "price": price,
                    "ts": now - 10**9 + n})})
                n += 1
        assert n * 1536 > CAP  # more evidence than the cap holds
        body = wait_for(lambda: (b := metrics(port)) and
                        f"mm_pattern_fills_total {float(n)}" in b and b,
                        what="every fill seen", proc=proc)
        got = samples(body)
        assert value(got, "mm_pattern_state_bytes") <= CAP
        dropped = value(got, "mm_pattern_dropped_fills_total")
        assert dropped > 0 and value(got, "mm_pattern_dropped_entries_total") == dropped
        assert value(got, "mm_pattern_tracked") + dropped == n
        assert value(got, "mm_credit_state_bytes") <= CAP
        assert ("mm_credit_state_dropped_total", frozenset()) in got
        assert value(got, "mm_audit_dropped_total") == 0  # the disk keeps up
        assert ("mm_audit_queued_bytes", frozenset()) in got
    finally:
        r.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_cap_below_the_minimum_stops_run(tmp_path):
    (tmp_path / "monitor.toml").write_text("audit_queue_bytes = 1000\n")
    p = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "--book", str(SAMPLE_BOOK),
                        "--feed", "synthetic", "--config", str(tmp_path / "monitor.toml")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "audit_queue_bytes" in p.stderr, p.stderr
