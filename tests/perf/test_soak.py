"""`margin-monitor soak` for a few seconds on a tiny book (the real soak is not in CI): the report
has one line per interval with memory, throughput, latency percentiles and queue depths."""

import json
import subprocess
import sys


def test_soak_report_shape(redis_fresh, tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "soak", "--seconds", "4", "--interval", "1",
         "--accounts", "2000", "--securities", "200", "--rate", "4000",
         "--redis", redis_fresh.url, "--output", str(out)],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "soak.json").read_text())
    assert rep["config"]["rate"] == 4000 and rep["config"]["accounts"] == 2000
    rows = rep["intervals"]
    assert len(rows) == 4 and [r["interval"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["rss_mb"] > 50 and r["redis_mb"] > 0
        assert set(r["tick_to_ws_ms"]) == {"p50", "p90", "p99", "max"}
        assert set(r["cycle_ms"]) == {"p50", "p99", "max"}
        assert set(r["queues"]) == {"tick_backlog", "outbox_backlog", "ws_queue_frames",
                                    "ws_write_buffer_bytes"}
        assert all(set(q) == {"max", "mean"} for q in r["queues"].values())
    assert sum(r["ticks"] for r in rows) > 4000  # the load went through the runtime...
    assert sum(r["ws_frames"] for r in rows) > 0  # ...and alerts reached the websocket client
    assert sum(r["latency_n"] for r in rows) > 0
    s = rep["summary"]
    assert s["intervals"] == 4 and "rss_mb" in s["drift"] and "p99_ms" in s["drift"]
    assert rep["outbox"]["backlog"] == 0 and "url" not in rep["outbox"]
    assert "p50 ms" in proc.stderr  # the per-interval table
