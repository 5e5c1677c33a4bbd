"""Faults against real processes, killed or frozen by pid (docs/reliability.md, "Faults and
restart"): the monitor SIGKILLed and restarted from its state dir, Redis SIGKILLed or SIGSTOPped
under a stream of account events, a websocket tick feed that drops and goes silent.

Elsewhere: Redis stopped under the alert stream (test_run_redis_outage.py), a liquidator worker
SIGKILLed mid-hook (test_liquidator_e2e.py::test_worker_killed_mid_hook_...)."""

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import orjson
import pytest
import redis
from conftest import start_monitor
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from kernels import units as u
from monitor.book import synthetic as synthbook
from monitor.book.load import load_book

TOKEN = "fault-test-token-0123456789abcdef"
T0 = 1_763_712_000_000_000_000
N_EVENTS = int(os.environ.get("MM_FAULT_EVENTS", "5000"))


# ---------------------------------------------------------------------------- helpers
def wait_for(pred, timeout=60.0, what="condition", proc=None):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"monitor exited ({proc.returncode}) while waiting for {what}:"
                                 f"\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def summary(r):
    raw = r.get("margin:alerts:summary")
    return orjson.loads(raw) if raw else None


def alerts(r, stream="margin:alerts"):
    return [orjson.loads(f[b"data"]) for _, f in r.xrange(stream)]


def dedupe(events):
    """First occurrence per event_id; a repeated id must carry the same event."""
    seen, out = {}, []
    for e in events:
        if e["event_id"] in seen:
            assert seen[e["event_id"]] == e, "an event_id was reused for another event"
            continue
        seen[e["event_id"]] = e
        out.append(e)
    return out


def fold(events):
    """What a consumer knows: tier per account, checking every transition continues from the
    tier it last saw (an account never announced is at none, or at a tier above WARNING)."""
    tiers = {}
    for e in events:
        if e["kind"] != "TIER_CHANGE":
            continue
        known = tiers.get(e["account_id"])
        if known is None:
            assert e["previous_tier"] in (None, "NORMAL", "WITHDRAWABLE", "NO_DEBT"), e
        else:
            assert e["previous_tier"] == known, e
        tiers[e["account_id"]] = e["tier"]
    return tiers


def token_file(tmp_path):
    p = tmp_path / "token"
    p.write_text(TOKEN)
    return str(p)


@pytest.fixture(scope="module")
def crash_book(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults") / "book"
    synthbook.write_book(synthbook.generate(3000, 120, seed=21), d)
    return d


def crash_feed(book_dir, steps=60, seed=4):
    """A market falling from the book's prices, on securities nobody is short (so every ratio
    only falls, and the final tiers do not depend on how ticks were conflated), as one stream
    entry per step, with interest accruals and withdrawals (each with an event_id) between."""
    book = load_book(str(book_dir))
    rng = np.random.default_rng(seed)
    shorted = np.unique(book.pos_sec[book.pos_kind == u.SHORT])
    down, _ = book.limit_prices()
    secs = np.setdiff1d(np.arange(book.n_securities), shorted)
    ticks, events = [], []
    for k in range(1, steps + 1):
        pick = rng.choice(secs, size=min(40, secs.shape[0]), replace=False)
        msg = []
        for s in sorted(pick.tolist()):
            li = max(int(book.price[s] * (1 - 0.09 * k / steps)) // 10 * 10, int(down[s]))
            msg.append({"symbol": book.symbols[s], "price": li / 1000, "ts": T0 + k})
        ticks.append(msg)
        for j in range(3):
            a = book.account_ids[int(rng.integers(book.n_accounts))]
            events.append({"type": "withdrawal", "account_id": a, "amount": "500",
                           "event_id": f"w{k}-{j}"})
        if k % 10 == 0:
            events.append({"type": "interest_accrual", "financing_rate": "0.3",
                           "short_fee_rate": "0", "days": 30, "event_id": f"i{k}"})
    return ticks, events


def push(r, ticks, events, lo, hi):
    """Steps lo..hi-1: the step's ticks, then its share of the account events."""
    per = len(events) / len(ticks)
    for k in range(lo, hi):
        r.xadd("ticks", {"data": json.dumps(ticks[k])})
        for ev in events[int(k * per):int((k + 1) * per)]:
            r.xadd("acct", {"data": json.dumps(ev)})


def run_args(book, db_url, *extra):
    return ["--book", str(book), "--feed", f"{db_url}/ticks?block_ms=100&start=0",
            "--events", f"{db_url}/acct?block_ms=100&start=0", "--redis", db_url, *extra]


def consumed(r, n_ticks, n_events):
    s = summary(r)
    return (s is not None and s["feed"]["ticks_received"] >= n_ticks
            and s["account_events"]["received"] >= n_events and s)


# ---------------------------------------------------------------------------- monitor kill
def test_monitor_sigkilled_and_restarted_from_its_snapshot_loses_no_transition(
        redis_fresh, tmp_path, crash_book):
    ticks, events = crash_feed(crash_book)
    n_ticks = sum(map(len, ticks))
    cfg = tmp_path / "monitor.toml"
    cfg.write_text("heartbeat_s = 0.2\n")

    # the reference: the same feed, uninterrupted
    ref_url = redis_fresh.url[:-1] + "1"
    ref = redis.Redis.from_url(ref_url)
    push(ref, ticks, events, 0, len(ticks))
    proc, _ = start_monitor(run_args(crash_book, ref_url, "--config", str(cfg),
                                     "--token-file", token_file(tmp_path)), tmp_path)
    try:
        want = wait_for(lambda: consumed(ref, n_ticks, len(events)), what="reference run")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    ref_tiers = fold(dedupe(alerts(ref)))

    # the same feed: a snapshot, more input, SIGKILL, the rest while it is down, restart
    url = redis_fresh.url[:-1] + "2"
    r = redis.Redis.from_url(url)
    state = tmp_path / "state"
    args = run_args(crash_book, url, "--config", str(cfg), "--token-file",
                    token_file(tmp_path), "--state-dir", str(state), "--snapshot-interval", "2")
    proc, _ = start_monitor(args, tmp_path)
    try:
        push(r, ticks, events, 0, 20)
        first = wait_for(lambda: consumed(r, sum(map(len, ticks[:20])), len(events) // 3),
                         what="first third consumed", proc=proc)
        manifest = state / "snapshot.json"
        snap = wait_for(lambda: manifest.exists() and orjson.loads(manifest.read_bytes())[
            "seq"] == summary(r)["seq"] and orjson.loads(manifest.read_bytes()),
            what="a snapshot of the first third", proc=proc)
        assert snap["seq"] >= first["seq"]
        push(r, ticks, events, 20, 40)
        wait_for(lambda: (alerts(r) or [{}])[-1].get("seq", 0) > snap["seq"] + 5,
                 what="events published after the snapshot", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = dedupe(alerts(r))
    killed_at = before[-1]["seq"]
    assert killed_at > snap["seq"]  # transitions after the snapshot died with the process
    push(r, ticks, events, 40, len(ticks))
    snap = orjson.loads(manifest.read_bytes())  # what the restart will use
    left_ticks = sum(len(orjson.loads(f[b"data"]))
                     for _, f in r.xrange("ticks", "(" + snap["feed"]["stream_id"], "+"))
    left_events = len(r.xrange("acct", "(" + snap["events"]["stream_id"], "+"))
    r.delete("margin:alerts:summary")
    proc, _ = start_monitor(args, tmp_path)
    try:
        got = wait_for(lambda: consumed(r, left_ticks, left_events), what="the rest", proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    events_out = dedupe(alerts(r))
    seqs = [e["seq"] for e in events_out]
    assert seqs == list(range(1, len(seqs) + 1))  # one run, gap-free, ids never reused
    assert {e["event_id"].rsplit("-", 1)[0] for e in events_out} == {snap["run_id"]}
    restored = [e for e in events_out if e.get("restored")]
    assert restored and restored[0]["seq"] == killed_at + 1  # announced first, once
    assert all(e["kind"] == "TIER_CHANGE" for e in restored)
    assert all(e["seq"] <= killed_at + len(restored) for e in restored)
    at_risk = [e for e in restored if e["tier"] in
               ("WARNING", "MARGIN_CALL", "FORCED_LIQUIDATION")]
    assert at_risk  # open breaches were re-announced, naming the event that announced them
    assert all(e["restored_event_id"].startswith(snap["run_id"]) for e in at_risk)
    assert any(e["call"] for e in at_risk if e["tier"] == "MARGIN_CALL")
    # no transition lost: a consumer of the stream ends with the reference's picture
    assert fold(events_out) == ref_tiers
    assert got["tiers"] == want["tiers"]
    # every account event applied exactly once across the crash (duplicates rejected)
    assert got["account_events"]["applied"] == want["account_events"]["applied"]
    assert sum(1 for e in events_out if e["kind"] == "TIER_CHANGE") > len(restored) + 50


# ---------------------------------------------------------------------------- Redis faults
def test_redis_sigkilled_and_restarted_under_account_events_loses_none(
        redis_fresh, tmp_path, crash_book):
    """Account events arrive on one Redis, alerts go to another that is SIGKILLed and
    restarted mid-stream: every event comes out, in order, duplicates only with the same
    event_id. MM_FAULT_EVENTS sets how many (default 5000; the issue's case is 100000)."""
    from conftest import RedisServer

    book = load_book(str(crash_book))
    src = redis.Redis.from_url(redis_fresh.url)
    sink = RedisServer(redis_fresh.binary, tmp_path)
    sink.start()
    try:
        out = redis.Redis.from_url(sink.url)
        # deposits and withdrawals that move accounts across the WARNING line and back
        a = book.account_ids
        cfg = tmp_path / "monitor.toml"
        cfg.write_text("heartbeat_s = 0.2\n")
        proc, _ = start_monitor(["--book", str(crash_book), "--config", str(cfg),
                                 "--feed", f"{redis_fresh.url}/ticks?block_ms=100",
                                 "--events", f"{redis_fresh.url}/acct?block_ms=100&count=500",
                                 "--redis", sink.url, "--token-file", token_file(tmp_path)],
                                tmp_path)
        try:
            pipe = src.pipeline(transaction=False)
            for i in range(N_EVENTS):
                kind = "deposit" if i % 2 == 0 else "withdrawal"
                pipe.xadd("acct", {"data": json.dumps({
                    "type": kind, "account_id": a[(i // 2) % len(a)], "amount": "1000000",
                    "event_id": f"e{i}"})})
                if i % 1000 == 999:
                    pipe.execute()
            pipe.execute()
            wait_for(lambda: (summary(out) or {}).get("account_events", {}).get(
                "received", 0) >= N_EVENTS // 4, what="a quarter applied", proc=proc)
            os.kill(sink.pid, signal.SIGKILL)
            sink.proc.wait()
            sink.proc = None
            time.sleep(1.0)
            sink.start()
            s = wait_for(lambda: (summary(out) or {}).get("account_events", {}).get(
                "received", 0) >= N_EVENTS and summary(out)["outbox"]["queued"] == 0
                and summary(out)["outbox"]["spilled"] == 0 and summary(out),
                timeout=60 + N_EVENTS / 1000, what="all events", proc=proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        raw = alerts(out)
        deduped = dedupe(raw)
        seqs = [e["seq"] for e in deduped]
        # Redis lost what it held when killed (no persistence); from the restart on, every
        # event is there, gap-free and in order
        assert seqs == list(range(seqs[0], s["seq"] + 1))
        assert s["seq"] - seqs[0] > 100  # the outage spanned the stream
        # in the order of the account events that caused them
        order = [int(e["trigger"]["event_id"][1:]) for e in deduped
                 if e["kind"] == "TIER_CHANGE" and (e.get("trigger") or {}).get("event_id")]
        assert order == sorted(order) and len(order) > 100
        assert s["account_events"]["applied"] + sum(
            s["account_events"]["rejected"].values()) == N_EVENTS
        assert s["outbox"]["failures"] > 0  # the outage was real
    finally:
        sink.kill()


def test_redis_sigstopped_the_tick_path_keeps_cycling_and_events_flow_after(
        redis_fresh, tmp_path):
    """Ticks come from a websocket feed; Redis (alerts and account events) is frozen for
    several seconds: cycles continue and websocket clients keep getting events; account
    events queued meanwhile are applied after SIGCONT."""
    from monitor.app.warmup import SAMPLE_BOOK

    async def scenario():
        feed_clients = set()

        async def feed_handler(ws):
            feed_clients.add(ws)
            await ws.wait_closed()

        async with serve(feed_handler, "127.0.0.1", 0) as srv:
            fport = srv.sockets[0].getsockname()[1]
            proc, port = start_monitor(
                ["--book", str(SAMPLE_BOOK), "--feed", f"ws://127.0.0.1:{fport}/",
                 "--events", f"{redis_fresh.url}/acct?block_ms=100",
                 "--redis", redis_fresh.url, "--token-file", token_file(tmp_path)], tmp_path)
            try:
                await _until(lambda: feed_clients)
                r = redis.Redis.from_url(redis_fresh.url)
                async with connect(f"ws://127.0.0.1:{port}/ws/alerts?token={TOKEN}") as ws:
                    redis_fresh.pause()
                    try:
                        t = T0
                        for price in (10.8, 12.1, 10.8, 12.1):  # C-EXACT130 across 1.30
                            t += 1
                            for c in list(feed_clients):
                                await c.send(json.dumps({"symbol": "600000.SH",
                                                         "price": price, "ts": t}))
                            got = await _recv_kind(ws, "TIER_CHANGE")
                            assert got["account_id"] == "C-EXACT130"
                        cycles = _health(port)["cycles"]
                        assert cycles >= 4
                    finally:
                        time.sleep(3.0)  # Redis frozen for several seconds in all
                        redis_fresh.resume()
                    r.xadd("acct", {"data": json.dumps({"type": "deposit", "account_id":
                                                        "C-EXACT130", "amount": "30000",
                                                        "event_id": "after"})})
                    got = await _recv_kind(ws, "TIER_CHANGE", timeout=30)
                    assert got["trigger"] == {"event": "deposit", "event_id": "after"}
                    assert (got["previous_tier"], got["tier"]) == ("WARNING", "NORMAL")
                # the alerts published while Redis was frozen reached the stream afterwards
                await _until(lambda: any(e.get("trigger", {}) and e["trigger"].get(
                    "event_id") == "after" for e in alerts(r)), timeout=30)
                seqs = [e["seq"] for e in dedupe(alerts(r))]
                assert seqs == list(range(1, len(seqs) + 1))
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- feed faults
def test_feed_drop_and_silence_reconnect_stale_state_and_no_false_breach(tmp_path):
    """The websocket tick feed drops (server gone), comes back and replays old ticks, then
    goes silent: the monitor reconnects with backoff, /healthz and the summary say the feed is
    reconnecting / stale, and old or absent prices move no account."""
    from monitor.app.warmup import SAMPLE_BOOK

    async def scenario():
        clients = set()

        async def handler(ws):
            clients.add(ws)
            try:
                await ws.wait_closed()
            finally:
                clients.discard(ws)

        srv = await serve(handler, "127.0.0.1", 0)
        fport = srv.sockets[0].getsockname()[1]
        cfg = tmp_path / "monitor.toml"
        cfg.write_text("heartbeat_s = 0.2\nstale_feed_s = 1.0\n")
        proc, port = start_monitor(["--book", str(SAMPLE_BOOK), "--config", str(cfg),
                                    "--feed", f"ws://127.0.0.1:{fport}/", "--token-file",
                                    token_file(tmp_path)], tmp_path)
        try:
            async with connect(f"ws://127.0.0.1:{port}/ws/alerts?token={TOKEN}") as ws:
                await _until(lambda: clients)
                t1 = {"symbol": "600000.SH", "price": 10.8, "ts": T0 + 10}
                for c in list(clients):
                    await c.send(json.dumps(t1))
                got = await _recv_kind(ws, "TIER_CHANGE")
                assert (got["account_id"], got["tier"]) == ("C-EXACT130", "MARGIN_CALL")
                assert _health(port)["feed_state"] == "live"
                srv.close()  # the feed server goes away
                for c in list(clients):
                    await c.close()
                await srv.wait_closed()
                await _until(lambda: _health(port)["feed_state"] == "reconnecting")
                srv = await serve(handler, "127.0.0.1", fport)  # back, same port
                await _until(lambda: clients, timeout=30)
                # it replays an old tick (a recovery price from before): refused as out of
                # order, so no transition on a stale price
                for c in list(clients):
                    await c.send(json.dumps({"symbol": "600000.SH", "price": 12.5,
                                             "ts": T0 + 5}))
                await _until(lambda: _health(port)["feed_state"] == "stale", timeout=10)
                hb = await _recv_kind(ws, "HEARTBEAT", timeout=10, where=_stale_no_breach)
                assert hb["feed"]["reconnects"] >= 1
                assert hb["feed"]["rejected"].get("out_of_order") == 1
                assert hb["tiers"]["MARGIN_CALL"] >= 1
                # silence: heartbeats go on, and no TIER_CHANGE comes from nowhere
                with pytest.raises(TimeoutError):
                    await _recv_kind(ws, "TIER_CHANGE", timeout=1.5)
                for c in list(clients):  # a fresh tick moves it again
                    await c.send(json.dumps({"symbol": "600000.SH", "price": 12.1,
                                             "ts": T0 + 20}))
                got = await _recv_kind(ws, "TIER_CHANGE")
                assert (got["previous_tier"], got["tier"]) == ("MARGIN_CALL", "WARNING")
                assert _health(port)["feed_state"] == "live"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            srv.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- async helpers
def _health(port):
    """/healthz's body, also when it answers 503 (not ok)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        assert e.code == 503
        return orjson.loads(e.read())


async def _until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def _stale_no_breach(e):
    assert e["kind"] != "TIER_CHANGE", e  # nothing moves on an old or absent price
    return e["kind"] == "HEARTBEAT" and e["feed"]["state"] == "stale"


async def _recv_kind(ws, kind, timeout=10.0, where=None):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(kind)
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            raise TimeoutError(kind) from None
        e = orjson.loads(raw)
        if e["kind"] == kind if where is None else where(e):
            return e
