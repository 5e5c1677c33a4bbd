"""`margin-monitor liquidator` serves its own /metrics (--metrics-listen, loopback only): what
it handled by outcome, orders sent, dead letters, retries, hook failures, Redis errors and what
is pending, in Prometheus' text format (promtool-clean when promtool is installed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from test_liquidator import cfg_for, fl_event, publish

from monitor.app.config import ConfigError
from monitor.liquidator import Liquidator
from monitor.liquidator.config import parse_listen
from monitor.liquidator.metrics import OUTCOMES, MetricsServer

SENT: list[list[dict]] = []


def picky(orders):
    """python:test_liquidator_metrics:picky -- the broker refuses 13-share orders."""
    if orders[0]["qty"] == 13:
        raise RuntimeError("broker gateway refused the order")
    SENT.append(orders)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def samples(body: str) -> dict:
    """{(sample name, frozenset(labels)): value}; every counter sample ends in _total."""
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            else:
                assert not s.name.endswith("_total"), s.name
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def check_with_promtool(body: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # the parser check above always runs; test_liveness skips visibly
    p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def test_metrics_listen_is_loopback_only():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("0.0.0.0:9464", "10.1.2.3:9464", "127.0.0.1:http", "example.com:1"):
        with pytest.raises(ConfigError, match="metrics_listen"):
            parse_listen(bad)


async def test_worker_metrics_count_what_it_did(redis_fresh):
    SENT.clear()
    r = redis.Redis.from_url(redis_fresh.url)
    publish(r, fl_event("ev-ok", "C-TV1", qty=100), fl_event("ev-bad", "C-TV2", qty=13),
            {**fl_event("ev-normal", "C-TV3"), "tier": "WARNING", "plan": None})
    cfg = cfg_for(redis_fresh.url, hook="python:test_liquidator_metrics:picky", max_attempts=3,
                  metrics_listen="127.0.0.1:0")
    w = Liquidator(cfg)
    server = MetricsServer(w, cfg.metrics_listen)
    _, port = server.start()
    try:
        before = samples(scrape(port))
        for o in OUTCOMES:  # every outcome is there from 0
            assert before[("mm_liquidator_handled_total", frozenset({("outcome", o)}))] == 0
        await w.run(until_idle=0.3)
        body = scrape(port)
    finally:
        server.close()
        r.close()
    got = samples(body)

    def v(name, **labels):
        return got[(name, frozenset(labels.items()))]

    assert len(SENT) == 1
    assert v("mm_liquidator_handled_total", outcome="sent") == 1
    assert v("mm_liquidator_handled_total", outcome="dead_letter") == 1
    assert v("mm_liquidator_handled_total", outcome="ignored") == 1
    assert v("mm_liquidator_orders_sent_total") == 1
    assert v("mm_liquidator_dead_lettered_total") == 1
    assert v("mm_liquidator_hook_failures_total") == 3
    assert v("mm_liquidator_retries_total") == 2  # 3 attempts: 2 retries
    assert v("mm_liquidator_redis_errors_total") == 0
    assert v("mm_liquidator_pending", stream="alerts") == 0
    assert v("mm_liquidator_in_progress") == 0
    assert v("mm_liquidator_redis_up") == 1
    assert v("mm_liquidator_last_loop_timestamp_seconds") > 1.6e9  # Unix seconds
    assert v("mm_liquidator_kill_switch") == 0
    check_with_promtool(body)


def test_cli_serves_metrics_and_refuses_a_public_address(redis_fresh, tmp_path):
    cmd = [sys.executable, "-m", "monitor.cli", "liquidator", "--redis", redis_fresh.url,
           "--hook", "redis:t:orders", "--insecure-unsigned-alerts"]
    p = subprocess.run(cmd + ["--metrics-listen", "0.0.0.0:9464"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "not a loopback address" in p.stderr, p.stderr
    proc = subprocess.Popen(cmd + ["--metrics-listen", "127.0.0.1:0"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, cwd=tmp_path,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None:
            line = proc.stderr.readline().decode()
            assert line and time.monotonic() < deadline, "no metrics line"
            if "metrics on http://127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1].split("/")[0])
        while True:  # the first loop of the worker reached Redis
            got = samples(scrape(port))
            if got[("mm_liquidator_redis_up", frozenset())] == 1:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert got[("mm_liquidator_pending", frozenset({("stream", "alerts")}))] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
