"""`margin-monitor bench --quick` end to end: report.json fields per size, report.md, PNGs.

Figures are not asserted (machines differ); only that every one is there with a sane type.
Needs redis-server on PATH (bench/e2e.py starts a private one)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not on PATH")


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("margin-monitor")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "monitor.cli"]


def test_bench_quick(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([*_cli(), "bench", "--quick", "--output", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["quick"] is True
    assert rep["machine"]["cpus"] >= 1 and rep["machine"]["numba"]
    sizes = rep["sizes"]
    assert [s["accounts"] for s in sizes] == [10_000, 50_000]
    for s in sizes:
        assert isinstance(s["accounts"], int) and isinstance(s["positions"], int)
        assert s["positions"] > s["accounts"]
        for key in ("sweep_ns_per_position", "numpy_sweep_ns_per_position",
                    "python_loop_ns_per_position", "tick_to_event_p99_ms",
                    "ingest_ticks_per_s", "rss_bytes_per_account"):
            assert isinstance(s[key], (int, float)) and not isinstance(s[key], bool), key
            assert s[key] > 0, key
        spread = s["sweep_by_threads"]["1"]["ns_per_position"]
        assert spread["min"] <= spread["median"] <= spread["max"] and spread["n"] >= 3
        assert set(s["incremental"]) == {"cold", "median", "hot"}
        assert s["tick_to_event_by_rate"] and s["throughput"]
        assert s["cold_start"]["book_load_s"] > 0
    cap = rep["capacity"]
    assert cap["p99_ms_limit"] == 10.0 and "projected_accounts_n_cores" in cap
    md = (out / "report.md").read_text()
    assert "capacity:" in md
    for name in ("cost_vs_size.png", "latency_cdf.png", "throughput.png"):
        assert name in rep["plots"]
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
