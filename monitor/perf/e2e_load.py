"""Child processes of the end-to-end benchmark (`bench/e2e.py`): the tick load generator and the
websocket alert client. Each runs in its own process (multiprocessing, spawn) and talks to the
benchmark over a `Pipe`, so neither steals the monitor's event loop.

Generator
---------
Ticks are drawn by popularity (`weights`: holders per security, so popular stocks tick most),
priced on a market path that swings smoothly (a slow crash then a recovery then a rally:
`M(t) = -swing/2 · sin(2πt / period)`, stock i moving by `beta_i · M(t)`, betas U(0.7, 1.3)) plus
a small idiosyncratic random walk and a one-tick bid/ask bounce, rounded to the 0.01 tick and
clipped into the daily limit band. Accounts near a line therefore cross it all the time, in both
directions. Ticks are encoded as JSON arrays of `ticks_per_message` objects
(`{"symbol", "price", "ts", "volume"}`, interfaces.md "Ticks") before a phase starts, then XADDed
to a Redis stream (field `data`) on a fixed schedule: message j of a phase is due at
`j · ticks_per_message / rate` seconds after the phase starts. Messages that are due together are
sent in one pipeline. The generator reports, per message, its scheduled time and the wall-clock
time just before its XADD was sent.

Commands (parent -> generator): ("prepare", rate, seconds) -> ("ready", n_messages, n_bytes,
prep_s); ("go",) -> ("done", sched_ns, send_ns, ack_ns); ("stop",).

Websocket client (and alert-stream consumer)
--------------------------------------------
Connects to `/ws/alerts` with the token, timestamps every frame on arrival (`time.time_ns`, the
same clock as the monitor's receive times), keeps `(seq, arrival)` of live events and counts
SNAPSHOT / HEARTBEAT frames. In the same process, a Redis consumer XREADs (BLOCK) the alert
stream and timestamps each entry when its reply arrives: when the event became visible to a
downstream consumer of the stream. Sends ("ready", n_snapshot) after its first heartbeat (the server
sends the whole snapshot before anything else) and ("result", seq, arrival_ns, info) on
("stop",).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import numpy as np
import orjson

EXCHANGE_START_NS = 1_763_688_600_000_000_000  # 2025-11-21 09:30:00 +08:00
TICK_LI = 10  # 0.01 yuan
NOT_EVENTS = frozenset({"SNAPSHOT", "HEARTBEAT", "SUBSCRIBED", "ERROR"})
TRADING_SECONDS_PER_YEAR = 250 * 4 * 3600


class PricePath:
    """The deterministic tick source (see the module docstring). Market time runs on across
    phases, so prices and exchange timestamps continue where the previous phase ended."""

    def __init__(self, symbols, base, limit_down, limit_up, weights, *, seed: int, swing: float,
                 period: float, vol: float = 0.35):
        self.symbols = list(symbols)
        self.base = np.asarray(base, dtype=np.int64)
        self.lo = np.asarray(limit_down, dtype=np.int64)
        self.hi = np.asarray(limit_up, dtype=np.int64)
        w = np.asarray(weights, dtype=np.float64).copy()
        w[self.base <= 0] = 0.0
        self.cdf = np.cumsum(w / w.sum())
        self.cdf[-1] = 1.0
        self.n = len(self.symbols)
        self.rng = np.random.default_rng([seed, 99])
        self.beta = self.rng.uniform(0.7, 1.3, self.n)
        self.amp = swing / 2.0
        self.period = period
        self.sigma = vol / math.sqrt(TRADING_SECONDS_PER_YEAR)
        self.x = np.zeros(self.n)
        self.last_t = np.zeros(self.n)
        self.t = 0.0  # market seconds since the first phase started

    def market(self, t: float) -> float:
        return -self.amp * math.sin(2.0 * math.pi * t / self.period)

    def messages(self, rate: float, seconds: float, per_message: int) -> tuple[list[bytes],
                                                                               np.ndarray]:
        """Encoded messages of one phase and their due offsets (ns from the phase start)."""
        n_msgs = max(1, int(round(rate * seconds / per_message)))
        interval = per_message / rate
        offsets = (np.arange(n_msgs) * interval * 1e9).astype(np.int64)
        msgs = []
        rng = self.rng
        syms = self.symbols
        for j in range(n_msgs):
            t = self.t + j * interval
            sec = np.minimum(np.searchsorted(self.cdf, rng.random(per_message), side="right"),
                             self.n - 1)
            u = np.unique(sec)
            dt = np.maximum(t - self.last_t[u], 0.0)
            self.x[u] += self.sigma * np.sqrt(dt) * rng.standard_normal(u.shape[0])
            self.last_t[u] = t
            logp = self.beta[sec] * self.market(t) + self.x[sec]
            price = np.rint(self.base[sec] * np.exp(logp) / TICK_LI).astype(np.int64) * TICK_LI
            bounce = rng.integers(0, 5, per_message)
            price += np.where(bounce == 0, -TICK_LI, np.where(bounce == 4, TICK_LI, 0))
            np.clip(price, self.lo[sec], self.hi[sec], out=price)
            # strictly increasing exchange times: no duplicate / out-of-order rejections
            ts = EXCHANGE_START_NS + int(t * 1e9) + np.arange(per_message)
            msgs.append(orjson.dumps([
                {"symbol": s, "price": p, "ts": x, "volume": 100}
                for s, p, x in zip([syms[i] for i in sec.tolist()], (price / 1000).tolist(),
                                   ts.tolist(), strict=True)
            ]))
        self.t += n_msgs * interval
        return msgs, offsets


def generator_main(conn, redis_url: str, stream: str, universe: dict, seed: int, swing: float,
                   period: float, per_message: int, max_stream_bytes: int) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    path = PricePath(universe["symbols"], universe["price"], universe["limit_down"],
                     universe["limit_up"], universe["weights"], seed=seed, swing=swing,
                     period=period)
    msgs: list[bytes] = []
    offsets = np.empty(0, dtype=np.int64)
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        if cmd[0] == "prepare":
            _, rate, seconds = cmd
            t0 = time.perf_counter()
            msgs, offsets = path.messages(rate, seconds, per_message)
            nbytes = sum(map(len, msgs))
            conn.send(("ready", len(msgs), nbytes, time.perf_counter() - t0))
        elif cmd[0] == "go":
            conn.send(("done", *_pace(r, stream, msgs, offsets, max_stream_bytes)))
            msgs = []
    r.close()


def _pace(r, stream: str, msgs: list[bytes], offsets: np.ndarray, max_stream_bytes: int):
    n = len(msgs)
    sched = np.empty(n, dtype=np.int64)
    send = np.empty(n, dtype=np.int64)
    ack = np.empty(n, dtype=np.int64)
    avg = max(1, sum(map(len, msgs[:50])) // max(1, min(50, n)))
    maxlen = max(1000, max_stream_bytes // avg)  # bound Redis memory if the monitor lags
    start_wall = time.time_ns()
    start = time.perf_counter_ns()
    sched[:] = start_wall + offsets
    j = 0
    while j < n:
        now = time.perf_counter_ns() - start
        due = int(np.searchsorted(offsets, now, side="right"))
        if due <= j:
            wait = (offsets[j] - now) / 1e9
            time.sleep(min(wait, 0.002) if wait > 0.0002 else 0)
            continue
        k = min(due, j + 64)
        pipe = r.pipeline(transaction=False)
        for m in msgs[j:k]:
            pipe.xadd(stream, {b"data": m}, maxlen=maxlen, approximate=True)
        send[j:k] = time.time_ns()
        pipe.execute()
        ack[j:k] = time.time_ns()
        j = k
    return sched, send, ack


# ------------------------------------------------------------------------ websocket client

def ws_client_main(conn, url: str, token: str, redis_url: str, alert_stream: str) -> None:
    asyncio.run(_ws_client(conn, url, token, redis_url, alert_stream))


async def _stream_consumer(redis_url: str, stream: str, seqs: list, arrivals: list,
                           started: asyncio.Event) -> None:
    """XREAD BLOCK on the alert stream: when each event became visible to a Redis consumer."""
    import redis.asyncio as aioredis

    r = aioredis.from_url(redis_url)
    try:
        last = await r.xrevrange(stream, count=1)
        last_id = last[0][0] if last else b"0-0"
        started.set()
        loads = orjson.loads
        while True:
            resp = await r.xread({stream: last_id}, count=10_000, block=200)
            t = time.time_ns()
            if not resp:
                continue
            entries = resp[0][1]
            last_id = entries[-1][0]
            for _id, fields in entries:
                seqs.append(loads(fields[b"data"])["seq"])
                arrivals.append(t)
    finally:
        await r.aclose()


async def _ws_client(conn, url: str, token: str, redis_url: str, alert_stream: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    seqs: list[int] = []
    arrivals: list[int] = []
    x_seqs: list[int] = []
    x_arrivals: list[int] = []
    info = {"snapshot": 0, "heartbeats": 0, "other": 0, "close": None}
    ready = False
    started = asyncio.Event()
    consumer = asyncio.create_task(_stream_consumer(redis_url, alert_stream, x_seqs, x_arrivals,
                                                    started))
    await asyncio.wait_for(started.wait(), 30)
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                       max_size=None, open_timeout=30, ping_interval=None) as ws:

        async def control():
            while True:
                if conn.poll():
                    cmd = conn.recv()
                    if cmd[0] == "stop":
                        await asyncio.sleep(0.5)  # let the consumer read the last entries
                        await ws.close()
                        return
                await asyncio.sleep(0.02)

        ctl = asyncio.create_task(control())
        loads = orjson.loads
        try:
            async for msg in ws:
                t = time.time_ns()
                obj = loads(msg)
                kind = obj.get("kind")
                seq = obj.get("seq")
                if kind not in NOT_EVENTS and seq is not None:  # TIER_CHANGE, CALL_*
                    seqs.append(seq)
                    arrivals.append(t)
                    continue
                if kind == "SNAPSHOT":
                    info["snapshot"] += 1
                elif kind == "HEARTBEAT":
                    info["heartbeats"] += 1
                    if not ready:
                        ready = True
                        conn.send(("ready", info["snapshot"]))
                else:
                    info["other"] += 1
        except ConnectionClosed:
            pass
        finally:
            if ws.close_code is not None:
                info["close"] = [ws.close_code, ws.close_reason]
        if not ctl.done():  # the server closed first (e.g. dropped as slow): wait for stop
            await ctl
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await consumer
    conn.send(("result", np.asarray(seqs, dtype=np.int64), np.asarray(arrivals, dtype=np.int64),
               info, np.asarray(x_seqs, dtype=np.int64), np.asarray(x_arrivals, dtype=np.int64)))
