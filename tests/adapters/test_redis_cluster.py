"""Every Redis role on a real 3-node Redis Cluster (`--redis-cluster`): a shard's monitor reads
ticks and its per-shard account events from the cluster and publishes to `<alerts>:{I}`; a
liquidator worker whose keys carry the same hash tag turns each of the shard's forced accounts
into exactly one plan, committed with MULTI/EXEC inside one slot."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import orjson
import pytest
from conftest import start_monitor

from monitor.book.shard import shard_of
from monitor.errors import ConfigError
from monitor.liquidator.config import LiquidatorConfig, hash_tag

TOKEN = "cluster-test-token-0123456789abcdef"
T0 = 1_795_000_000_000_000_000  # 2026-11-19, in the morning session


def _book(tmp_path):
    accounts = []
    for i in range(12):  # R = 200000 / 180000 = 1.11: forced liquidation at start
        accounts.append({"account_id": f"F{i:02d}", "cash": "0", "positions": [
            {"symbol": "600000.SH", "kind": "financed", "qty": 20000,
             "financed_cost": "180000", "fin_margin_ratio": "1.0"}]})
    for i in range(12):  # R = 270000 / 200000 = 1.35 at 10.00: WARNING; at 9.20, 1.242
        accounts.append({"account_id": f"W{i:02d}", "cash": "0", "positions": [
            {"symbol": "600036.SH", "kind": "financed", "qty": 27000,
             "financed_cost": "200000", "fin_margin_ratio": "1.0"}]})
    doc = {"securities": [{"symbol": "600000.SH", "price": "10.00", "haircut": "0.5"},
                          {"symbol": "600036.SH", "price": "10.00", "haircut": "0.5"}],
           "accounts": accounts}
    path = tmp_path / "book.json"
    path.write_text(json.dumps(doc))
    return path, [a["account_id"] for a in accounts]


def _cluster_client(url):
    from redis.cluster import RedisCluster

    return RedisCluster.from_url(url)


def _stream(rc, key):
    return [orjson.loads(f[b"data"]) for _, f in rc.xrange(key)]


def _wait(pred, proc, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the monitor exited while waiting for {what}: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_shard_and_a_liquidator_run_on_a_redis_cluster(redis_cluster_fresh, tmp_path):
    url = redis_cluster_fresh.url
    book, ids = _book(tmp_path)
    (tmp_path / "token").write_text(TOKEN)
    key = tmp_path / "alert.key"
    key.write_text("k1 " + "s" * 40 + "\n")
    key.chmod(0o600)
    rc = _cluster_client(url)
    mine = [a for a in ids if shard_of(a, 2) == 0]
    assert any(a.startswith("F") for a in mine) and any(a.startswith("W") for a in mine)
    proc, port = start_monitor(
        ["--book", str(book), "--shard", "0/2", "--redis-cluster", "--redis", url,
         "--alerts-stream", "cl:alerts",
         "--feed", f"{url}/cl:ticks?start=0&block_ms=100",
         "--events", url + "/cl:events:{shard}?start=0&block_ms=100",
         "--token-file", str(tmp_path / "token"), "--alert-key-file", str(key)], tmp_path)
    try:
        forced = {a for a in mine if a.startswith("F")}
        # the start-up announcement of the shard's forced accounts, on the shard's stream
        _wait(lambda: {e["account_id"] for e in _stream(rc, "cl:alerts:{0}")
                       if e.get("tier") == "FORCED_LIQUIDATION"} >= forced, proc,
              "the forced accounts' alerts")
        # ticks from the cluster move the WARNING accounts into a margin call
        rc.xadd("cl:ticks", {"data": json.dumps([{"symbol": "600036.SH", "price": 9.2,
                                                  "ts": T0}])})
        warned = {a for a in mine if a.startswith("W")}
        _wait(lambda: {e["account_id"] for e in _stream(rc, "cl:alerts:{0}")
                       if e.get("tier") == "MARGIN_CALL"} >= warned, proc, "the margin calls")
        # an account event on the shard's own stream cures one of them
        cured = sorted(warned)[0]
        rc.xadd("cl:events:{0}", {"data": json.dumps({
            "type": "deposit", "account_id": cured, "amount": "200000", "event_id": "dep-1",
            "ts": T0 + 1})})
        _wait(lambda: any(e["account_id"] == cured and e.get("kind") == "CALL_CURED"
                          for e in _stream(rc, "cl:alerts:{0}")), proc, "the cure")
        events = _stream(rc, "cl:alerts:{0}")
        assert all(f.get(b"sig") and f.get(b"kid") == b"k1"
                   for _, f in rc.xrange("cl:alerts:{0}"))  # signed on the cluster too
        assert all(e["shard"] == 0 and shard_of(e["account_id"], 2) == 0 for e in events)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert not rc.exists("cl:alerts") and not rc.exists("cl:alerts:{1}")
    finally:
        proc.terminate()
        proc.wait(30)

    # two liquidator workers, one hash tag: each forced account gets exactly one plan
    cfg = tmp_path / "liq.toml"
    cfg.write_text('key_prefix = "margin:liq:{0}"\ncooldown = 0\nmax_plan_age = 86400\n'
                   "hold_outside_sessions = false\n")  # start-up plans, made out of session
    logs = [tmp_path / f"w{k}.log" for k in range(2)]
    workers = [subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "liquidator", "--config", str(cfg),
         "--redis", url, "--redis-cluster", "--alerts-stream", "cl:alerts:{0}",
         "--hook", "redis:margin:orders:{0}", "--consumer", f"w{k}", "--until-idle", "3",
         "--alert-key-file", str(key),
         "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=logs[k].open("wb"))
        for k in range(2)]  # stderr to files: a full pipe would stall a worker
    for w, log in zip(workers, logs, strict=True):
        try:
            w.wait(timeout=90)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
            pytest.fail(f"a liquidator did not finish: {log.read_text()[-3000:]}")
        assert w.returncode == 0, log.read_text()[-2000:]
    orders = _stream(rc, "margin:orders:{0}")
    assert sorted({o["account_id"] for o in orders}) == sorted(forced)
    per_event = {}
    for o in orders:
        per_event.setdefault(o["event_id"], set()).add(o["order_id"])
    assert len(per_event) == len(forced)  # one plan per forced account, none twice
    assert len({o["order_id"] for o in orders}) == len(orders)
    rc.close()


def test_on_a_cluster_the_liquidators_keys_must_share_one_hash_tag():
    assert hash_tag("margin:alerts:{0}") == "0" and hash_tag("margin:alerts") is None
    assert hash_tag("a:{}:b") is None
    ok = LiquidatorConfig(redis="redis://127.0.0.1:7000/0", redis_cluster=True,
                          alerts_stream="margin:alerts:{0}", key_prefix="margin:liq:{0}",
                          hook="redis:margin:orders:{0}")
    assert ok.check() is ok
    for bad in ({"alerts_stream": "margin:alerts"}, {"key_prefix": "margin:liq:{1}"},
                {"hook": "redis:margin:orders"}):
        cfg = LiquidatorConfig(**{**dict(redis="redis://127.0.0.1:7000/0", redis_cluster=True,
                                         alerts_stream="margin:alerts:{0}",
                                         key_prefix="margin:liq:{0}",
                                         hook="redis:margin:orders:{0}"), **bad})
        with pytest.raises(ConfigError, match="hash tag"):
            cfg.check()
