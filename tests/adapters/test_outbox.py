"""RedisOutbox against a real redis-server: order, outages (stop/start, SIGSTOP), spill, secrets."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time

import orjson
import pytest
import redis
from conftest import free_port

from feeds.net import mask_url
from monitor.adapters.outbox import RedisOutbox, encode_event

TIERS = ["NORMAL", "WARNING", "MARGIN_CALL", "FORCED_LIQUIDATION"]


def make_events(start: int, n: int, pad: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        ev = {"event_id": f"run1-{i}", "seq": i, "account_id": f"C{i % 97:06d}",
              "tier": TIERS[i % 4], "previous_tier": TIERS[(i + 1) % 4],
              "ratio": 1.2 + i * 1e-6, "assets": 580000.0, "liabilities": 465000.0,
              "cure": {"deposit": 117500.0, "repay": 78333.33},
              "trigger": {"symbol": "600000.SH", "price": 9.0},
              "ts_event": 1763712000123456789 + i, "kind": "TIER_CHANGE"}
        if pad:
            ev["pad"] = "x" * pad
        out.append(ev)
    return out


def read_stream(url: str, stream: str) -> list[bytes]:
    r = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return [fields[b"data"] for _, fields in r.xrange(stream)]
    finally:
        r.close()


def assert_complete_in_order(datas: list[bytes], n: int) -> int:
    """Dedupe by event_id (keep first occurrence): exactly seq 0..n-1 in order. Returns the
    number of duplicates seen."""
    seen: set[str] = set()
    seqs = []
    for d in datas:
        ev = orjson.loads(d)
        if ev["event_id"] in seen:
            continue
        seen.add(ev["event_id"])
        seqs.append(ev["seq"])
    assert seqs == list(range(n)), f"first gap/reorder near {_first_bad(seqs)}"
    return len(datas) - len(seqs)


def _first_bad(seqs: list[int]) -> int | None:
    for i, s in enumerate(seqs):
        if s != i:
            return i
    return None


async def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def outbox_for(url: str, tmp_path, stream: str, **kw) -> RedisOutbox:
    kw.setdefault("backoff_initial", 0.02)
    kw.setdefault("backoff_max", 0.2)
    kw.setdefault("connect_timeout", 0.5)
    kw.setdefault("op_timeout", 0.5)
    return RedisOutbox(url, stream=stream, spill_dir=tmp_path / "spill", **kw)


class Producer:
    """Publishes `chunk` events every `period` seconds until stopped; records call times."""

    def __init__(self, outbox: RedisOutbox, chunk: int = 10, period: float = 0.002):
        self.outbox, self.chunk, self.period = outbox, chunk, period
        self.n = 0
        self.payloads: list[bytes] = []
        self.max_call = 0.0
        self.calls = 0
        self._stop = False
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop:
            evs = make_events(self.n, self.chunk)
            t0 = time.perf_counter()
            self.payloads += self.outbox.publish(evs)
            self.max_call = max(self.max_call, time.perf_counter() - t0)
            self.calls += 1
            self.n += self.chunk
            await asyncio.sleep(self.period)

    async def stop(self) -> None:
        self._stop = True
        await self.task


async def test_events_delivered_in_order_with_identical_payloads(redis_fresh, tmp_path):
    ob = outbox_for(redis_fresh.url, tmp_path, "t:order", batch=300)
    assert not inspect.iscoroutinefunction(ob.publish)
    ob.start()
    events = make_events(0, 2500)
    sent: list[bytes] = []
    i = 0
    for size in [1, 7, 300, 1000, 192] * 10:
        if i >= len(events):
            break
        sent += ob.publish(events[i:i + size])
        i += size
        await asyncio.sleep(0)
    # a second producer thread keeps order within its own calls
    summary = {"ts": 123, "accounts": 1_000_000, "breaches": 3}
    ob.publish_summary({"ts": 1})
    ob.publish_summary(summary)  # latest wins
    assert await ob.drain(timeout=10)
    datas = read_stream(redis_fresh.url, "t:order")
    assert datas == sent == [encode_event(e) for e in events]
    r = redis.Redis.from_url(redis_fresh.url)
    assert r.get("t:order:summary") == orjson.dumps(summary)
    r.close()
    st = ob.stats()
    assert st["published"] == 2500 and st["backlog"] == 0 and st["connected"]
    assert st["failures"] == 0 and st["oldest_queued_age_s"] is None
    await ob.aclose()
    assert not (tmp_path / "spill" / "t_order.spill.jsonl").exists()


async def test_publish_from_another_thread_and_maxlen(redis_fresh, tmp_path):
    ob = outbox_for(redis_fresh.url, tmp_path, "t:thread", maxlen=1000, batch=500,
                    summary_key="t:summary", summary_ttl=30)
    ob.start()
    ob.publish_summary({"ts": 5})
    events = make_events(0, 5000)

    def producer():
        for k in range(0, 5000, 50):
            ob.publish(events[k:k + 50])

    th = threading.Thread(target=producer)
    th.start()
    await asyncio.to_thread(th.join)
    assert await ob.drain(timeout=10)
    datas = read_stream(redis_fresh.url, "t:thread")
    # MAXLEN ~ trims whole nodes: at least maxlen kept, far fewer than all
    assert 1000 <= len(datas) < 5000
    tail = [orjson.loads(d)["seq"] for d in datas]
    assert tail == list(range(5000 - len(datas), 5000))
    r = redis.Redis.from_url(redis_fresh.url)
    assert r.get("t:summary") == b'{"ts":5}' and 0 < r.pttl("t:summary") <= 30_000
    r.close()
    await ob.aclose()


async def test_redis_stop_and_start_mid_stream_loses_nothing(redis_fresh, tmp_path):
    url = redis_fresh.url
    ob = outbox_for(url, tmp_path, "t:restart", batch=50)
    ob.start()
    prod = Producer(ob, chunk=10, period=0.002)
    prod.start()
    await wait_for(lambda: ob.stats()["published"] > 300, 10, "first deliveries")
    # No await between reading the stream and stopping the server: whatever the outbox has not
    # seen acknowledged by now is either lost with the server (no persistence) and retried, or
    # still queued. (A stream read before the stop + the stream after the restart = everything.)
    before = read_stream(url, "t:restart")
    redis_fresh.stop()
    await wait_for(lambda: not ob.stats()["connected"], 10, "outage detected")
    await asyncio.sleep(0.7)  # keep publishing into the outage
    assert ob.stats()["queued"] > 0
    redis_fresh.start()
    await asyncio.sleep(0.3)
    await prod.stop()
    assert await ob.drain(timeout=15)
    after = read_stream(url, "t:restart")
    dups = assert_complete_in_order(before + after, prod.n)
    st = ob.stats()
    assert st["reconnects"] >= 1 and st["failures"] >= 1
    assert dups <= st["resent"] + 50  # only a retried batch may repeat
    # identical bytes for every event
    first = {}
    for d in before + after:
        first.setdefault(orjson.loads(d)["event_id"], d)
    assert list(first.values()) == prod.payloads
    await ob.aclose()


async def test_redis_paused_publish_never_blocks_then_everything_delivered(redis_fresh,
                                                                             tmp_path):
    url = redis_fresh.url
    ob = outbox_for(url, tmp_path, "t:pause", batch=100, op_timeout=0.3, connect_timeout=0.3)
    ob.start()
    prod = Producer(ob, chunk=5, period=0.002)
    prod.start()
    await wait_for(lambda: ob.stats()["published"] > 100, 10, "first deliveries")
    redis_fresh.pause()
    try:
        t0 = time.monotonic()
        calls0 = prod.calls
        q_samples = []
        while time.monotonic() - t0 < 3.0:
            await asyncio.sleep(0.25)
            q_samples.append(ob.stats()["queued"])
        # the producer kept running the whole time and the queue grew behind the paused server
        assert prod.calls - calls0 > 100
        assert q_samples[-1] > q_samples[0] > 0
        assert not ob.stats()["connected"]
        assert ob.stats()["last_error"]
    finally:
        redis_fresh.resume()
    await prod.stop()
    # publish() is plain synchronous work: generous bound, it never waits for Redis
    assert prod.max_call < 0.25
    assert await ob.drain(timeout=15)
    dups = assert_complete_in_order(read_stream(url, "t:pause"), prod.n)
    assert dups <= ob.stats()["resent"]
    await ob.aclose()


async def test_spill_to_file_in_outage_then_delivered_in_order(redis_fresh, tmp_path):
    url = redis_fresh.url
    redis_fresh.stop()
    ob = outbox_for(url, tmp_path, "t:spill", max_memory_events=40, batch=25)
    ob.start()
    spill_file = tmp_path / "spill" / "t_spill.spill.jsonl"
    sent: list[bytes] = []
    for k in range(0, 1000, 20):
        sent += ob.publish(make_events(k, 20))
        await asyncio.sleep(0.002)
    await wait_for(lambda: ob.stats()["queued"] <= 40, 5, "memory bounded by spilling")
    st = ob.stats()
    assert st["spilled"] + st["queued"] == 1000 and st["spilled"] >= 960
    assert spill_file.exists() and spill_file.read_bytes().count(b"\n") >= 960
    # the file holds the exact payloads, oldest first
    lines = spill_file.read_bytes().splitlines()
    assert lines == sent[: len(lines)]
    assert st["oldest_queued_age_s"] > 0
    assert not await ob.drain(timeout=0.2)  # cannot drain while Redis is down
    redis_fresh.start()
    # more events while the backlog is being delivered
    for k in range(1000, 1500, 20):
        sent += ob.publish(make_events(k, 20))
        await asyncio.sleep(0.001)
    assert await ob.drain(timeout=15)
    datas = read_stream(url, "t:spill")
    assert datas == sent  # nothing was in flight when Redis went down: no duplicates at all
    assert not spill_file.exists()  # delivered spill files are removed
    assert ob.stats()["spilled"] == 0
    await ob.aclose()


async def test_aclose_in_outage_saves_backlog_and_next_run_delivers_it(redis_fresh, tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    ob = outbox_for(dead, tmp_path, "t:handover", max_memory_events=50)
    ob.start()
    sent = ob.publish(make_events(0, 120))
    await wait_for(lambda: ob.stats()["spilled"] > 0, 5, "spill")
    sent += ob.publish(make_events(120, 30))
    await ob.aclose()
    with pytest.raises(RuntimeError):
        ob.publish(make_events(150, 1))
    # a new outbox on the same spill dir and stream delivers the saved backlog first
    ob2 = outbox_for(redis_fresh.url, tmp_path, "t:handover")
    ob2.start()
    sent += ob2.publish(make_events(150, 50))
    assert await ob2.drain(timeout=10)
    assert read_stream(redis_fresh.url, "t:handover") == sent
    # one outbox per spill file
    ob3 = outbox_for(redis_fresh.url, tmp_path, "t:handover")
    with pytest.raises(RuntimeError, match="in use"):
        await ob3.run()
    await ob2.aclose()


SECRET = "s3cret-Pa55word-xyz"


def test_mask_url():
    assert mask_url(f"redis://user:{SECRET}@host:6380/2") == "redis://user:***@host:6380/2"
    assert mask_url(f"rediss://:{SECRET}@h/0") == "rediss://:***@h/0"
    assert SECRET not in mask_url(f"redis://h:1/0?password={SECRET}&db=1")
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


async def test_password_never_logged_or_exposed(redis_fresh, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    admin = redis.Redis.from_url(redis_fresh.url)
    admin.execute_command("ACL", "SETUSER", "mmuser", "on", f">{SECRET}", "~*", "&*", "+@all")
    try:
        port = redis_fresh.port
        good = RedisOutbox(f"redis://mmuser:{SECRET}@127.0.0.1:{port}/0", stream="t:auth",
                           spill_dir=tmp_path / "s1")
        good.start()
        good.publish(make_events(0, 10))
        assert await good.drain(timeout=5)
        assert len(read_stream(redis_fresh.url, "t:auth")) == 10
        assert SECRET not in repr(good) and SECRET not in str(good.stats())
        await good.aclose()

        dead = free_port()
        bad_urls = [f"redis://mmuser:wrong-{SECRET}@127.0.0.1:{port}/0",  # auth failure
                    f"redis://mmuser:{SECRET}@127.0.0.1:{dead}/0",  # connection refused
                    f"rediss://:{SECRET}@127.0.0.1:{dead}/0",  # TLS url, refused
                    f"redis://127.0.0.1:{dead}/0?password={SECRET}"]
        for i, url in enumerate(bad_urls):
            ob = RedisOutbox(url, stream=f"t:auth{i}", spill_dir=tmp_path / f"s{i + 2}",
                             backoff_initial=0.02, backoff_max=0.05, connect_timeout=0.5)
            ob.start()
            ob.publish(make_events(0, 3))
            await wait_for(lambda ob=ob: ob.stats()["failures"] >= 2, 5, "failures")
            st = ob.stats()
            assert st["last_error"] and SECRET not in str(st) and SECRET not in repr(ob)
            await ob.aclose()
    finally:
        admin.execute_command("ACL", "DELUSER", "mmuser")
        admin.close()
    assert "unavailable" in caplog.text
    assert SECRET not in caplog.text
    for rec in caplog.records:
        assert SECRET not in rec.getMessage()


async def test_command_errors_are_retried_in_order_not_dropped(redis_fresh, tmp_path):
    url = redis_fresh.url
    r = redis.Redis.from_url(url)
    r.set("t:wrongtype", "not a stream")  # every XADD now fails with WRONGTYPE
    ob = outbox_for(url, tmp_path, "t:wrongtype", batch=20)
    ob.start()
    sent = ob.publish(make_events(0, 100))
    await wait_for(lambda: ob.stats()["failures"] >= 3, 5, "command errors")
    st = ob.stats()
    assert st["published"] == 0 and st["backlog"] == 100 and "WRONGTYPE" in st["last_error"]
    r.delete("t:wrongtype")
    sent += ob.publish(make_events(100, 50))
    assert await ob.drain(timeout=10)
    assert read_stream(url, "t:wrongtype") == sent
    r.close()
    await ob.aclose()


async def test_spill_write_failure_keeps_events_in_memory(redis_fresh, tmp_path):
    url = redis_fresh.url
    redis_fresh.stop()
    ob = outbox_for(url, tmp_path, "t:spillfail", max_memory_events=10)
    ob.start()
    sent = ob.publish(make_events(0, 1))
    await wait_for(lambda: ob.stats()["failures"] >= 1, 5, "outage")
    spill_file = tmp_path / "spill" / "t_spillfail.spill.jsonl"
    spill_file.mkdir()  # the spill file cannot be opened for writing
    sent += ob.publish(make_events(1, 49))
    await wait_for(lambda: ob.stats()["spill_errors"] >= 1, 5, "spill error")
    assert ob.stats()["queued"] == 50 and ob.stats()["spilled"] == 0
    spill_file.rmdir()  # the disk "recovers": the next spill attempt succeeds
    await wait_for(lambda: ob.stats()["spilled"] > 0, 5, "spill retried")
    redis_fresh.start()
    assert await ob.drain(timeout=10)
    assert read_stream(url, "t:spillfail") == sent
    await ob.aclose()


class FreezableProxy:
    """A loopback TCP proxy in front of Redis that can be frozen into a network black hole:
    while frozen, bytes in either direction are discarded (nothing reaches Redis, no reply)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.frozen = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, r, w) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    if not self.frozen:
                        dst.write(data)
                        await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))

    async def aclose(self) -> None:
        self.server.close()


async def test_aclose_with_a_batch_in_flight_keeps_original_order(redis_fresh, tmp_path):
    proxy = FreezableProxy(redis_fresh.port)
    await proxy.start()
    ob = outbox_for(f"redis://127.0.0.1:{proxy.port}/0", tmp_path, "t:inflight",
                    max_memory_events=20, batch=10, op_timeout=3.0, connect_timeout=1.0)
    ob.start()
    sent = ob.publish(make_events(0, 1))
    assert await ob.drain(timeout=5)
    proxy.frozen = True
    sent += ob.publish(make_events(1, 10))
    await wait_for(lambda: ob.stats()["in_flight"] == 10, 5, "a batch in flight")
    sent += ob.publish(make_events(11, 100))  # newer events spill while the batch hangs
    await wait_for(lambda: ob.stats()["spilled"] > 0, 5, "spill")
    await ob.aclose(timeout=0.2)
    assert (tmp_path / "spill" / "t_inflight.spill.jsonl").read_bytes().splitlines() == sent[1:]
    await proxy.aclose()
    ob2 = outbox_for(redis_fresh.url, tmp_path, "t:inflight")
    ob2.start()
    assert await ob2.drain(timeout=10)
    assert read_stream(redis_fresh.url, "t:inflight") == sent
    await ob2.aclose()


async def test_recovers_a_crashed_runs_spill_file(redis_fresh, tmp_path):
    """A previous process died: its spill file has an offset (3 events already delivered) and a
    torn last line (a write that never completed). The next run delivers exactly the rest."""
    d = tmp_path / "spill"
    d.mkdir()
    payloads = [encode_event(e) for e in make_events(0, 10)]
    lines = [p + b"\n" for p in payloads]
    (d / "t_crash.spill.jsonl").write_bytes(b"".join(lines) + payloads[0][:17])
    (d / "t_crash.spill.jsonl.offset").write_text(f"{sum(map(len, lines[:3]))}\n")
    ob = outbox_for(redis_fresh.url, tmp_path, "t:crash")
    ob.start()
    assert await ob.drain(timeout=5)
    assert read_stream(redis_fresh.url, "t:crash") == payloads[3:]
    assert not (d / "t_crash.spill.jsonl").exists()
    assert not (d / "t_crash.spill.jsonl.offset").exists()
    await ob.aclose()
