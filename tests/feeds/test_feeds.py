"""Feed adapters: synthetic scenarios, file replay, websocket and Redis (real local servers)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import orjson
import pytest

from feeds.base import Feed, FeedStats
from feeds.net import Backoff, mask_url
from feeds.redisfeed import RedisFeed, split_redis_spec
from feeds.registry import open_feed
from feeds.replay import ReplayFeed
from feeds.synthetic import SyntheticFeed
from feeds.ticks import NEVER, REASONS, TickBatch
from feeds.universe import Universe
from feeds.wsfeed import WebSocketFeed

TS0 = 1_763_688_600_000_000_000


def make_universe(n_main=300, n_chinext=60, n_star=40, seed=7) -> Universe:
    rng = np.random.default_rng(seed)
    syms = ([f"{600000 + i:06d}.SH" for i in range(n_main)]
            + [f"{300000 + i:06d}.SZ" for i in range(n_chinext)]
            + [f"{688000 + i:06d}.SH" for i in range(n_star)])
    prev = rng.integers(300, 30_000, len(syms)) * 10  # 3.00 .. 300.00 yuan on the 0.01 tick
    return Universe.from_prev_close(syms, prev)


@pytest.fixture(scope="module")
def universe():
    return make_universe()


async def collect(feed, n_ticks: int | None = None, timeout: float = 20.0) -> list[TickBatch]:
    """Batches until the feed ends or `n_ticks` ticks arrived."""
    out, got = [], 0
    async with asyncio.timeout(timeout):
        async with contextlib.aclosing(feed.batches()) as it:
            async for b in it:
                out.append(b)
                got += len(b)
                if n_ticks is not None and got >= n_ticks:
                    break
    return out


def cat(batches) -> TickBatch:
    return TickBatch.concat(batches)


def assert_valid(universe, b: TickBatch):
    assert ((b.price >= universe.limit_down[b.sec]) & (b.price <= universe.limit_up[b.sec])).all()


# -- specs, helpers ------------------------------------------------------------------------

def test_open_feed_specs(universe, tmp_path):
    f = open_feed("synthetic", universe)
    assert isinstance(f, SyntheticFeed) and f.scenario == "walk"
    assert isinstance(f, Feed)
    f = open_feed("synthetic:crash?drop=0.05&minutes=2&speed=30&pace=0&seed=3", universe,
                  rate=1000)
    assert (f.params["drop"], f.params["minutes"], f.speed, f.pace, f.seed, f.rate) == (
        0.05, 2.0, 30.0, False, 3, 1000)
    with pytest.raises(ValueError, match="unknown parameter"):
        open_feed("synthetic:crash?dorp=0.05", universe)
    with pytest.raises(ValueError, match="scenario"):
        open_feed("synthetic:meteor", universe)
    with pytest.raises(ValueError, match="bad value"):
        open_feed("synthetic?rate=fast", universe)
    p = tmp_path / "t.jsonl"
    p.write_text("")
    f = open_feed(f"replay:{p}?speed=2", universe)
    assert isinstance(f, ReplayFeed) and f.speed == 2 and f.format == "jsonl"
    f = open_feed("ws://127.0.0.1:1/ticks", universe)
    assert isinstance(f, WebSocketFeed)
    f = open_feed("redis://user:s3cret@127.0.0.1:6390/2/md:ticks?start=0&block_ms=50", universe)
    assert isinstance(f, RedisFeed)
    assert (f.stream, f.reader.start, f.reader.block_ms) == ("md:ticks", "0", 50)
    assert "s3cret" not in f.name and "s3cret" not in repr(f) and "***" in f.name
    with pytest.raises(ValueError) as e:
        open_feed("kafka://user:s3cret@host/x", universe)
    assert "s3cret" not in str(e.value)


def test_mask_url_and_redis_spec():
    assert mask_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url("rediss://:pw@h:1/0/s") == "rediss://:***@h:1/0/s"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
    assert mask_url("wss://u:pw@[::1]:9/x?y=1") == "wss://u:***@[::1]:9/x?y=1"
    assert split_redis_spec("redis://u:pw@h:7/3/ticks?count=5") == (
        "redis://u:pw@h:7/3", "ticks", "count=5")
    assert split_redis_spec("rediss://h:7/a%2Fb") == ("rediss://h:7/0", "a/b", "")
    with pytest.raises(ValueError):
        split_redis_spec("redis://h:7")


def test_backoff_capped_with_jitter():
    b = Backoff(0.1, 1.0, jitter=0.5)
    delays = [b.next() for _ in range(10)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 1.0 for d in delays) and max(delays) >= 0.5
    b.reset()
    assert b.next() <= 0.1


# -- synthetic -----------------------------------------------------------------------------

async def test_synthetic_deterministic_for_a_seed(universe):
    def feed(seed):
        return SyntheticFeed(universe, seed=seed, rate=20_000, ticks=5_000, pace=False)

    a, b, c = [cat(await collect(feed(s))) for s in (1, 1, 2)]
    assert len(a) == 5_000
    for x, y in ((a.sec, b.sec), (a.price, b.price), (a.ts, b.ts)):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.sec, c.sec)


async def test_synthetic_realistic_walk(universe):
    f = SyntheticFeed(universe, seed=5, rate=50_000, duration=1.0, speed=60, pace=False)
    b = cat(await collect(f))
    assert len(b) == 50_000
    assert (b.price % 10 == 0).all()  # the 0.01 tick
    assert_valid(universe, b)
    for s in np.unique(b.sec):
        assert (np.diff(b.ts[b.sec == s]) > 0).all()
    counts = np.bincount(b.sec, minlength=universe.n)
    assert counts.argmax() == f.most_active
    top = np.sort(counts)[::-1]
    assert top[: universe.n // 10].sum() > 0.5 * len(b)  # Zipf: 10% of stocks, most ticks
    # one simulated minute of a 35% vol walk: prices move, but by little
    moves = f.universe.price  # starting prices
    last = moves.copy()
    last[b.sec] = b.price
    rel = np.abs(last / moves - 1)
    assert np.median(rel) < 0.02 and rel.max() > 0
    st = f.stats()
    assert st.ticks_accepted == 50_000 and st.rejected == {} and st.reconnects == 0


async def test_synthetic_rate_and_pacing(universe):
    f = open_feed("synthetic?rate=4000&duration=0.3&batch_ms=10", universe)
    t0 = time.monotonic()
    batches = await collect(f)
    dt = time.monotonic() - t0
    assert sum(map(len, batches)) == 1200
    assert 0.2 < dt < 3.0
    assert 20 <= len(batches) <= 30  # about one batch per 10 ms


async def test_crash_moves_prices_down_by_about_n_percent(universe):
    f = open_feed("synthetic:crash?drop=0.07&minutes=5&speed=100&duration=3.5&pace=0",
                  universe, rate=40_000, seed=11)
    b = cat(await collect(f))
    assert_valid(universe, b)
    last = universe.price.copy()
    for s, p in zip(b.sec.tolist(), b.price.tolist(), strict=True):
        last[s] = p
    moved = np.bincount(b.sec, minlength=universe.n) > 0
    change = last[moved] / universe.price[moved] - 1
    assert -0.085 < np.median(change) < -0.055
    assert np.mean(change < 0) > 0.9
    # inside the crash window the move is partial: half-way prices fall by about half of it
    half = b.ts < TS0 + int(150e9)
    mid = universe.price.copy()
    mid[b.sec[half]] = b.price[half]
    assert -0.05 < np.median(mid[moved] / universe.price[moved] - 1) < -0.02


async def test_limit_down_scenario_pins_one_stock(universe):
    f = open_feed("synthetic:limit_down?minutes=1&speed=60&duration=2&pace=0", universe,
                  rate=20_000)
    b = cat(await collect(f))
    s = f.scenario_symbol
    assert s == f.most_active and f.params["symbol"] == universe.symbols[s]
    mine = b.price[b.sec == s]
    assert mine[-1] == universe.limit_down[s]
    assert mine[: len(mine) // 10].mean() > universe.limit_down[s] * 1.05
    assert_valid(universe, b)
    # the others did not crash
    others = np.median(np.array([b.price[b.sec == t][-1] / universe.price[t]
                                 for t in np.unique(b.sec) if t != s]))
    assert abs(others - 1) < 0.02
    sym = universe.symbols[3]
    f = open_feed(f"synthetic:limit_down?symbol={sym}&minutes=0.5&speed=60&duration=1&pace=0",
                  universe)
    b = cat(await collect(f))
    assert b.price[b.sec == 3][-1] == universe.limit_down[3]


async def test_suspension_scenario(universe):
    f = open_feed("synthetic:suspension?at=0.25&minutes=0.5&speed=60&duration=1.5&pace=0",
                  universe, rate=20_000)
    batches = await collect(f)
    b = cat(batches)
    s = f.scenario_symbol
    ev = [e for x in batches for e in x.events]
    assert [e["type"] for e in ev] == ["suspend", "resume"] == [
        e["type"] for e in f.scenario_events]
    assert all(e["symbol"] == universe.symbols[s] and e["sec"] == s for e in ev)
    t_susp, t_res = ev[0]["ts"], ev[1]["ts"]
    assert t_res - t_susp == 30 * 10**9
    ts_s = b.ts[b.sec == s]
    assert ((ts_s < t_susp) | (ts_s >= t_res)).all()
    assert (ts_s < t_susp).sum() > 50 and (ts_s >= t_res).sum() > 50  # trades before and after
    # each event rides on the batch whose interval contains it
    for x in batches:
        for e in x.events:
            assert x.ts.min() - 10**9 < e["ts"] <= x.ts.max() + 10**9


async def test_bad_prints_are_rejected_and_counted(universe):
    f = open_feed("synthetic:bad_prints?count=150&every=0.5&speed=60&duration=1.2&pace=0",
                  universe, rate=10_000)
    b = cat(await collect(f))
    assert len(b) == 12_000  # the good ticks, all delivered
    assert_valid(universe, b)
    st = f.stats()
    assert set(st.rejected) == set(REASONS)
    assert st.rejected_total >= 3 * 150  # three bursts (0, 0.5 and 1.0 minutes)
    assert st.ticks_accepted == 12_000


async def test_synthetic_encode_uses_json_path(universe):
    a = cat(await collect(SyntheticFeed(universe, seed=4, ticks=3000, pace=False)))
    b = cat(await collect(SyntheticFeed(universe, seed=4, ticks=3000, pace=False, encode=True)))
    assert np.array_equal(a.price, b.price) and np.array_equal(a.ts, b.ts)


async def test_stats_staleness(universe):
    f = SyntheticFeed(universe, seed=1, ticks=2000, pace=False)
    b = cat(await collect(f))
    st = f.stats()
    assert isinstance(st, FeedStats)
    ticked = np.unique(b.sec)
    assert (st.last_ts[ticked] != NEVER).all()
    stale = st.staleness_s(now_ns=TS0 + 10**12)
    assert np.isnan(stale).sum() == universe.n - len(ticked)
    assert (stale[ticked] > 0).all()
    assert st.as_dict()["securities_ticked"] == len(ticked)


# -- replay --------------------------------------------------------------------------------

def ticks_for_file(universe, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    sec = rng.integers(0, universe.n, n)
    price = universe.price[sec]
    ts = TS0 + np.arange(n, dtype=np.int64) * 1_000_000  # 1 ms apart: 3 s of exchange time
    return sec, price, ts


BAD_ROWS = [("999999.XX", "10.00"), ("600000.SH", "NaN"), ("600000.SH", "-1")]


def write_jsonl(path, universe, sec, price, ts):
    with open(path, "wb") as f:
        for i, (s, p, t) in enumerate(zip(sec.tolist(), price.tolist(), ts.tolist(),
                                          strict=True)):
            f.write(orjson.dumps({"symbol": universe.symbols[s], "price": p / 1000, "ts": t,
                                  "volume": 100}) + b"\n")
            if i == 10:
                f.write(b"\n{not json\n")
                for sym, px in BAD_ROWS:
                    f.write(orjson.dumps({"symbol": sym, "price": px, "ts": t}) + b"\n")
                # an array message of two ticks
                f.write(orjson.dumps([{"symbol": universe.symbols[0], "price": "bad"},
                                      {"symbol": universe.symbols[1], "price": None}]) + b"\n")


def write_table(path, universe, sec, price, ts, fmt):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    syms = [universe.symbols[s] for s in sec.tolist()] + [s for s, _ in BAD_ROWS]
    prices = [f"{p / 1000:.2f}" for p in price.tolist()] + [p for _, p in BAD_ROWS]
    tss = ts.tolist() + [int(ts[-1])] * len(BAD_ROWS)
    if fmt == "csv":
        table = pa.table({"symbol": syms, "price": prices, "ts": tss, "volume": [1] * len(syms)})
        pcsv.write_csv(table, path)
    else:
        table = pa.table({"symbol": syms, "price": pa.array([float(p) for p in prices]),
                          "ts": pa.array(tss, pa.int64())})
        pq.write_table(table, path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
async def test_replay_in_order_with_rejections(universe, tmp_path, fmt):
    sec, price, ts = ticks_for_file(universe)
    path = tmp_path / f"ticks.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, universe, sec, price, ts)
    else:
        write_table(path, universe, sec, price, ts, fmt)
    f = open_feed(f"replay:{path}?batch=500", universe)
    batches = await collect(f)
    b = cat(batches)
    assert b.sec.tolist() == sec.tolist()
    assert b.price.tolist() == price.tolist()
    assert b.ts.tolist() == ts.tolist()
    assert max(map(len, batches)) <= 500
    st = f.stats()
    assert st.rejected["unknown_symbol"] == 1 and st.rejected["non_positive"] == 1
    assert st.rejected["non_finite"] == 1
    if fmt == "jsonl":
        assert st.rejected["malformed"] == 2 and st.rejected["missing_field"] == 1


async def test_replay_csv_without_ts_and_with_junk(universe, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("symbol,price\n600000.SH,abc\n600001.SH,\n"
                    f"{universe.symbols[2]},{int(universe.price[2]) / 1000:.2f}\n")
    f = ReplayFeed(universe, path)
    b = cat(await collect(f))
    assert b.sec.tolist() == [2]
    assert f.stats().rejected == {"malformed": 1, "missing_field": 1}


async def test_replay_speed_pacing(universe, tmp_path):
    sec, price, ts = ticks_for_file(universe, n=2000)  # 2 s of exchange time
    path = tmp_path / "t.jsonl"
    write_jsonl(path, universe, sec, price, ts)
    t0 = time.monotonic()
    fast = cat(await collect(open_feed(f"replay:{path}", universe)))
    t_fast = time.monotonic() - t0
    t0 = time.monotonic()
    batches = await collect(open_feed(f"replay:{path}?speed=5", universe))
    t_paced = time.monotonic() - t0
    paced = cat(batches)
    assert paced.ts.tolist() == fast.ts.tolist()
    assert t_paced > 0.3  # 2 s / 5 = 0.4 s, loosely
    assert t_paced > t_fast
    assert t_paced < 4.0
    assert len(batches) > 10  # paced delivery comes in many small batches


# -- websocket -----------------------------------------------------------------------------

async def test_websocket_reconnects_and_delivers_everything(universe):
    from websockets.asyncio.server import serve

    sec, price, ts = ticks_for_file(universe, n=2000)
    msgs = [orjson.dumps([{"symbol": universe.symbols[s], "price": p / 1000, "ts": t}
                          for s, p, t in zip(sec[i:i + 100].tolist(), price[i:i + 100].tolist(),
                                             ts[i:i + 100].tolist(), strict=True)])
            for i in range(0, 2000, 100)]
    singles = [orjson.dumps({"symbol": universe.symbols[0], "price": int(universe.price[0]) / 1000,
                             "ts": int(ts[-1]) + k + 1}) for k in range(50)]
    connections = []

    async def handler(ws):
        connections.append(ws)
        if len(connections) == 1:
            for m in msgs[:10]:
                await ws.send(m)
            await asyncio.sleep(0.05)
            ws.transport.abort()  # drop the connection, no close frame
            return
        for m in msgs[10:] + singles:  # single-tick frames, coalesced by the feed
            await ws.send(m)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        feed = open_feed(f"ws://127.0.0.1:{port}/ticks", universe, backoff_initial=0.05,
                         backoff_max=0.2)
        batches = await collect(feed, n_ticks=2050, timeout=15)
        await feed.aclose()
    b = cat(batches)
    assert b.ts.tolist() == ts.tolist() + [int(ts[-1]) + k + 1 for k in range(50)]
    st = feed.stats()
    assert st.reconnects == 1 and st.connect_failures >= 1
    assert st.rejected == {}
    assert len(batches) < 70  # frames were coalesced into batches


async def test_websocket_refused_then_server_appears(universe):
    from websockets.asyncio.server import serve

    from tests.conftest import free_port

    port = free_port()
    feed = WebSocketFeed(universe, f"ws://127.0.0.1:{port}", backoff_initial=0.05,
                         backoff_max=0.1)
    good = orjson.dumps({"symbol": universe.symbols[1], "price": int(universe.price[1]) / 1000,
                         "ts": TS0})

    async def handler(ws):
        await ws.send(b"{broken")
        await ws.send(good)
        await ws.wait_closed()

    async def start_later():
        await asyncio.sleep(0.3)
        return await serve(handler, "127.0.0.1", port).__aenter__()

    task = asyncio.create_task(start_later())
    batches = await collect(feed, n_ticks=1, timeout=10)
    server = await task
    await feed.aclose()
    server.close()
    await server.wait_closed()
    assert cat(batches).sec.tolist() == [1]
    st = feed.stats()
    assert st.connect_failures >= 1 and st.reconnects == 0  # one successful connection
    assert st.rejected == {"malformed": 1}


# -- redis ---------------------------------------------------------------------------------

def entry(universe, s, ts, price=None):
    p = int(universe.price[s]) if price is None else price
    return {"data": orjson.dumps({"symbol": universe.symbols[s], "price": p / 1000, "ts": ts})}


async def test_redis_feed_reads_stream(universe, redis_fresh):
    from redis.asyncio import Redis

    r = Redis.from_url(redis_fresh.url)
    try:
        for k in range(100):
            await r.xadd("ticks", entry(universe, k % universe.n, TS0 + k))
        await r.xadd("ticks", {"other": b"x"})  # no data field -> malformed
        p0 = int(universe.price[0]) / 1000
        await r.xadd("ticks", {"data": orjson.dumps(
            [{"symbol": universe.symbols[0], "price": p0, "ts": TS0 + 1000},
             {"symbol": "NOPE", "price": 1.0}])})
        feed = open_feed(f"redis://127.0.0.1:{redis_fresh.port}/0/ticks?start=0&block_ms=100",
                         universe)
        b = cat(await collect(feed, n_ticks=101))
        await feed.aclose()
        assert b.ts.tolist() == [TS0 + k for k in range(100)] + [TS0 + 1000]
        st = feed.stats()
        assert st.rejected == {"malformed": 1, "unknown_symbol": 1}
        # start=$: only entries added after the feed connected
        feed = RedisFeed(universe, redis_fresh.url, "ticks", block_ms=100)
        got = asyncio.create_task(collect(feed, n_ticks=5))
        while feed.last_id is None:
            await asyncio.sleep(0.01)
        for k in range(5):
            await r.xadd("ticks", entry(universe, 0, TS0 + 2000 + k))
        b = cat(await got)
        await feed.aclose()
        assert b.ts.tolist() == [TS0 + 2000 + k for k in range(5)]
    finally:
        await r.aclose()


async def test_redis_restart_resumes_from_last_id(universe, redis_fresh):
    """Stop redis mid-stream and start it again on the same port: the feed reconnects and
    resumes right after the last id it read: entries re-added with old ids are not re-read,
    entries added while it was still backing off are not lost."""
    from redis.asyncio import Redis

    first = [(f"{1000 + k}-0", entry(universe, k % 50, TS0 + k)) for k in range(200)]
    second = [(f"{2000 + k}-0", entry(universe, k % 50, TS0 + 1000 + k)) for k in range(300)]
    r = Redis.from_url(redis_fresh.url)
    try:
        for i, fields in first:
            await r.xadd("md", fields, id=i)
    finally:
        await r.aclose()
    feed = RedisFeed(universe, redis_fresh.url, "md", start="0", block_ms=100,
                     backoff_initial=0.4, backoff_max=0.5)
    received: list[TickBatch] = []
    got = 0

    async def consume():
        nonlocal got
        async with contextlib.aclosing(feed.batches()) as it:
            async for b in it:
                received.append(b)
                got += len(b)
                if got >= 500:
                    return

    task = asyncio.create_task(consume())
    async with asyncio.timeout(15):
        while got < 200:
            await asyncio.sleep(0.01)
    assert feed.last_id == b"1199-0"
    redis_fresh.stop()
    await asyncio.sleep(0.3)
    redis_fresh.start()
    r = Redis.from_url(redis_fresh.url)
    try:  # the server comes back with its old entries (as if persisted) and new ones
        for i, fields in first + second:
            await r.xadd("md", fields, id=i)
    finally:
        await r.aclose()
    async with asyncio.timeout(15):
        await task
    await feed.aclose()
    b = cat(received)
    assert b.ts.tolist() == [TS0 + k for k in range(200)] + [TS0 + 1000 + k for k in range(300)]
    st = feed.stats()
    assert st.reconnects >= 1 and st.connect_failures >= 1
    assert st.rejected == {}
    assert feed.last_id == b"2299-0"


async def test_redis_pause_resume(universe, redis_fresh):
    from redis.asyncio import Redis

    feed = RedisFeed(universe, redis_fresh.url, "p", start="0", block_ms=100,
                     socket_timeout=0.5, backoff_initial=0.05, backoff_max=0.2)
    r = Redis.from_url(redis_fresh.url)
    received = []

    async def consume():
        async with contextlib.aclosing(feed.batches()) as it:
            async for b in it:
                received.append(b)
                if sum(map(len, received)) >= 20:
                    return

    try:
        for k in range(10):
            await r.xadd("p", entry(universe, 1, TS0 + k))
        task = asyncio.create_task(consume())
        async with asyncio.timeout(10):
            while sum(map(len, received)) < 10:
                await asyncio.sleep(0.01)
        redis_fresh.pause()
        await asyncio.sleep(1.2)  # the feed times out and retries meanwhile
        redis_fresh.resume()
        for k in range(10, 20):
            await r.xadd("p", entry(universe, 1, TS0 + k))
        async with asyncio.timeout(10):
            await task
    finally:
        redis_fresh.resume()
        await r.aclose()
        await feed.aclose()
    assert cat(received).ts.tolist() == [TS0 + k for k in range(20)]
    assert feed.stats().connect_failures >= 1
