"""Every source retries every error, not only connection errors, and says so in its status:
a tick stream key turned into a string (WRONGTYPE), an ACL that forbids the key (NOPERM), an
account-event file that cannot be read, a websocket handshake refused. Once the cause is gone,
the source reads on from where it was, and nothing that arrived meanwhile is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil

import orjson
import pytest
import redis
from redis.asyncio import Redis
from test_feeds import TS0, make_universe

from feeds.account_events import FileEvents, RedisEvents
from feeds.redisfeed import RedisFeed
from feeds.wsfeed import WebSocketFeed

ACL_USER, ACL_PASSWORD = "mm-feed", "feed-password-0123456789"


@pytest.fixture(scope="module")
def universe():
    return make_universe()


def tick(universe, k: int) -> dict:
    s = k % universe.n
    return {"data": orjson.dumps({"symbol": universe.symbols[s],
                                  "price": int(universe.price[s]) / 1000, "ts": TS0 + k})}


async def until(pred, timeout: float = 20.0, what: str = "condition"):
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


class Consumer:
    """Drains a feed's (or an event source's) batches into a list, in a task."""

    def __init__(self, it):
        self.items: list = []
        self.task = asyncio.create_task(self._run(it))

    async def _run(self, it):
        async with contextlib.aclosing(it) as gen:
            async for b in gen:
                self.items.extend(b.ts.tolist() if hasattr(b, "ts") else b)

    async def stop(self):
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_redis_feed_survives_wrongtype_and_reads_on(universe, redis_fresh):
    r = Redis.from_url(redis_fresh.url)
    feed = RedisFeed(universe, redis_fresh.url, "t", start="0", block_ms=100,
                     backoff_initial=0.02, backoff_max=0.1)
    try:
        for k in range(5):
            await r.xadd("t", tick(universe, k))
        c = Consumer(feed.batches())
        await until(lambda: len(c.items) == 5)
        assert feed.status.state == "live" and feed.status.error_total == 0
        await r.delete("t")
        await r.set("t", "not a stream")  # someone overwrites the key
        await until(lambda: feed.status.state == "error")
        assert "WRONGTYPE" in feed.status.last_error
        await until(lambda: feed.status.errors["server"] >= 3)  # retried, with backoff
        assert feed.status.down_since_ns is not None
        await r.delete("t")  # put right: the stream is back with new entries
        for lo in range(5, 9000, 1000):
            pipe = r.pipeline(transaction=False)
            for k in range(lo, min(lo + 1000, 9000)):
                pipe.xadd("t", tick(universe, k))
            await pipe.execute()
        await until(lambda: len(c.items) == 9000, timeout=60)
        assert c.items == [TS0 + k for k in range(9000)]
        assert feed.status.state == "live" and feed.status.down_since_ns is None
        assert feed.stats().connect_failures >= 3
        await c.stop()
    finally:
        await feed.aclose()
        await r.aclose()
    assert feed.status.state == "done"


async def test_redis_feed_survives_noperm_and_never_logs_the_password(universe, redis_fresh,
                                                                      caplog):
    admin = redis.Redis(port=redis_fresh.port)
    admin.execute_command("ACL", "SETUSER", ACL_USER, "reset", "on", f">{ACL_PASSWORD}",
                          "~other:*", "+@all")
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{redis_fresh.port}/0"
    caplog.set_level(logging.DEBUG)
    feed = RedisFeed(universe, url, "md", start="0", block_ms=100, backoff_initial=0.02,
                     backoff_max=0.1)
    try:
        admin.xadd("md", tick(universe, 0))
        c = Consumer(feed.batches())
        await until(lambda: feed.status.state == "error")
        assert "NOPERM" in feed.status.last_error or "permission" in feed.status.last_error
        assert c.items == []
        admin.execute_command("ACL", "SETUSER", ACL_USER, "~*")  # the ACL is fixed
        await until(lambda: len(c.items) == 1)
        assert feed.status.state == "live" and feed.status.errors["server"] >= 1
        await c.stop()
    finally:
        await feed.aclose()
        admin.execute_command("ACL", "DELUSER", ACL_USER)
        admin.close()
    assert ACL_PASSWORD not in caplog.text and ACL_PASSWORD not in repr(feed.status.as_dict())
    assert "NOPERM" in caplog.text or "permission" in caplog.text  # logged (rate-limited)


async def test_redis_account_events_survive_wrongtype(redis_fresh):
    r = Redis.from_url(redis_fresh.url)
    src = RedisEvents(redis_fresh.url, "acct", start="0", block_ms=100, backoff_initial=0.02,
                      backoff_max=0.1)
    try:
        await r.xadd("acct", {"data": b'{"type": "deposit", "n": 1}'})
        c = Consumer(src.batches())
        await until(lambda: len(c.items) == 1)
        assert src.status.state == "live"
        await r.delete("acct")
        await r.hset("acct", "x", "y")
        await until(lambda: src.status.state == "error")
        assert "WRONGTYPE" in src.stats()["error"]
        await r.delete("acct")
        await r.xadd("acct", {"data": b'{"type": "deposit", "n": 2}'})
        await until(lambda: len(c.items) == 2)
        assert [e["n"] for e in c.items] == [1, 2] and src.status.state == "live"
        await c.stop()
    finally:
        await src.aclose()
        await r.aclose()


async def test_account_event_file_unreadable_is_retried_then_read_to_its_end(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"n": 1}\n{"n": 2}\n')
    src = FileEvents(str(path), backoff_initial=0.02, backoff_max=0.1)
    path.unlink()
    path.mkdir()  # not a readable file for now (root ignores permissions, so not chmod)
    c = Consumer(src.batches())
    await until(lambda: src.status.state == "error")
    assert "IsADirectoryError" in src.status.last_error
    shutil.rmtree(path)
    path.write_text('{"n": 1}\n{"n": 2}\nnot json\n{"n": 3}\n')
    await until(lambda: src.status.state == "done")
    await c.task
    assert [e["n"] for e in c.items] == [1, 2, 3]
    assert src.stats()["malformed"] == 1 and src.status.errors["other"] >= 1


async def test_websocket_feed_refused_handshake_is_retried(universe):
    from websockets.asyncio.server import serve
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    refused = []

    def process_request(conn, request):
        if len(refused) < 3:  # a proxy in front answers 503 for a while
            refused.append(1)
            return Response(503, "Service Unavailable", Headers(), b"")
        return None

    good = orjson.dumps({"symbol": universe.symbols[1],
                         "price": int(universe.price[1]) / 1000, "ts": TS0})

    async def handler(ws):
        await ws.send(good)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        feed = WebSocketFeed(universe, f"ws://127.0.0.1:{port}/", backoff_initial=0.02,
                             backoff_max=0.1)
        c = Consumer(feed.batches())
        await until(lambda: len(c.items) == 1)
        assert feed.status.state == "live"
        assert feed.status.errors["connection"] == 3 and "503" in feed.status.last_error
        await c.stop()
        await feed.aclose()
