"""`margin-monitor soak`: sustained synthetic load through the real runtime, reported per interval.

What runs (all on loopback, like `bench/e2e.py`, whose load generator and price path it reuses):
a private `redis-server` (or `--redis`), a synthetic book, the real `monitor.app.runtime.Monitor`
(Redis tick feed, engine, Redis outbox, alert server), a generator process that XADDs JSON ticks
at `--rate` without pause (`bench/e2e_load.PricePath`, a swinging market, so accounts cross lines
all the time), and a websocket client process that timestamps every alert frame.

Per interval (`--interval`, default 60 s) it reports: the monitor's RSS (and Redis' memory), the
ticks accepted and events emitted, tick -> websocket frame latency percentiles (from the receive
time of the oldest tick of the cycle that made the event to the client's arrival time, as in
bench/e2e.py), cycle time percentiles, and queue depths sampled every 0.25 s (max / mean): tick
backlog (sent by the generator, not yet parsed), outbox backlog (events not yet acknowledged by
Redis), websocket send queues (frames) and socket write buffers (bytes). A table (rich) as it
goes, and `soak.json` in `--output`. Memory and latency are flat when the last intervals look
like the first ones (`summary.drift`). Needs the source tree (bench/), like `margin-monitor bench`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

TOKEN = "soak-token-0123456789abcdef0123"
TICKS = "soak:ticks"
ALERTS = "soak:alerts"
log = logging.getLogger("monitor.perf.soak")


def rss_bytes(pid: int | None = None) -> int:
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if x.size else None


# ------------------------------------------------------------------------ child processes

def generator_main(conn, sent, redis_url: str, universe: dict, rate: float, per_message: int,
                   seed: int, maxlen: int) -> None:
    """XADD messages of `per_message` ticks at `rate` ticks/s until told to stop; 1 s of
    messages is prepared ahead by a thread. `sent` counts messages sent (shared)."""
    import queue

    import redis

    from monitor.perf.e2e_load import PricePath

    r = redis.Redis.from_url(redis_url)
    path = PricePath(universe["symbols"], universe["price"], universe["limit_down"],
                     universe["limit_up"], universe["weights"], seed=seed, swing=0.02,
                     period=20.0)
    chunks: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def prepare():
        while not stop.is_set():
            msgs, offsets = path.messages(rate, 1.0, per_message)
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    chunks.put((msgs, offsets), timeout=0.2)
                    break

    threading.Thread(target=prepare, daemon=True).start()
    conn.send(("ready",))
    start = time.perf_counter_ns()
    second = 0
    while not conn.poll():
        msgs, offsets = chunks.get()
        base = start + second * 1_000_000_000
        j = 0
        while j < len(msgs):
            now = time.perf_counter_ns() - base
            due = int(np.searchsorted(offsets, now, side="right"))
            if due <= j:
                time.sleep(max(0.0, min((offsets[j] - now) / 1e9, 0.002)))
                continue
            k = min(due, j + 64)
            pipe = r.pipeline(transaction=False)
            for m in msgs[j:k]:
                pipe.xadd(TICKS, {b"data": m}, maxlen=maxlen, approximate=True)
            pipe.execute()
            with sent.get_lock():
                sent.value += k - j
            j = k
        second += 1
    stop.set()
    r.close()


def ws_client_main(conn, url: str) -> None:
    """Timestamps every event frame; answers ("pull",) with the (seq, arrival ns) since the last
    pull, and stops on ("stop",)."""
    asyncio.run(_ws_client(conn, url))


async def _ws_client(conn, url: str) -> None:
    import orjson
    from websockets.asyncio.client import connect

    seqs: list[int] = []
    times: list[int] = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"},
                       max_size=None, open_timeout=60, ping_interval=None) as ws:
        conn.send(("ready",))

        async def control():
            while True:
                if conn.poll():
                    cmd = conn.recv()
                    if cmd[0] == "stop":
                        await ws.close()
                        return
                    conn.send((np.asarray(seqs, dtype=np.int64),
                               np.asarray(times, dtype=np.int64)))
                    seqs.clear()
                    times.clear()
                await asyncio.sleep(0.02)

        ctl = asyncio.create_task(control())
        with contextlib.suppress(Exception):
            async for msg in ws:
                t = time.time_ns()
                obj = orjson.loads(msg)
                if obj.get("seq") is not None and obj.get("kind") != "HEARTBEAT":
                    seqs.append(obj["seq"])
                    times.append(t)
        await ctl


# ------------------------------------------------------------------------ the run

class Soak:
    def __init__(self, args, mon, universe: dict, redis_url: str):
        self.args, self.mon, self.redis_url = args, mon, redis_url
        self.ctx = mp.get_context("spawn")
        self.sent = self.ctx.Value("q", 0)
        self.universe = universe
        self.cycles: list[tuple[int, int, int, int]] = []  # (oldest recv ns, seq0, seq1, ns)
        self.carry = np.zeros((0, 3), dtype=np.int64)  # cycles of the previous interval
        self.samples: list[tuple[int, int, int, int]] = []
        self.rows: list[dict] = []
        self._oldest = 0
        self._t_prev = 0.0
        self._trace = self._snap = None
        if os.environ.get("MM_SOAK_TRACEMALLOC"):
            import tracemalloc

            tracemalloc.start(4)
            self._trace = tracemalloc

    def instrument(self) -> None:
        """Per-instance wrappers (as bench/e2e.py): which ticks each cycle's events came from."""
        eng, parser = self.mon.engine, self.mon.feed.parser
        add, cycle = eng.add_ticks, eng.cycle

        def add_ticks(sec, price, ts):
            if self._oldest == 0:
                self._oldest = parser.last_message_ns
            add(sec, price, ts)

        def timed_cycle(now_ns):
            oldest, self._oldest = self._oldest, 0
            s0 = eng.seq
            events = cycle(now_ns)
            if oldest:
                self.cycles.append((oldest, s0, eng.seq, eng.last_cycle.ns))
            return events

        eng.add_ticks, eng.cycle = add_ticks, timed_cycle

    def depths(self) -> tuple[int, int, int, int]:
        mon = self.mon
        backlog = max(0, self.sent.value - mon.feed.parser.messages) * self.args.ticks_per_message
        srv = mon.server
        wbuf = 0
        for c in list(getattr(srv, "_clients", ())):
            with contextlib.suppress(Exception):
                wbuf += c.ws.transport.get_write_buffer_size()
        return backlog, mon.outbox.stats()["backlog"], srv.stats()["queued"], wbuf

    async def recv(self, conn, timeout: float):
        deadline = time.monotonic() + timeout
        while not conn.poll():
            if time.monotonic() > deadline:
                raise TimeoutError("soak: a child process did not answer")
            await asyncio.sleep(0.02)
        return conn.recv()

    async def run(self) -> None:
        a, mon = self.args, self.mon
        while mon.bound is None or mon.outbox is None or mon.feed.reader.last_id is None:
            await asyncio.sleep(0.05)
        await mon.outbox.drain(timeout=300)  # the start-up announcements
        host, port = mon.bound
        ws_conn, child = self.ctx.Pipe()
        wsp = self.ctx.Process(target=ws_client_main, daemon=True, name="soak-ws",
                               args=(child, f"ws://{host}:{port}/ws/alerts?snapshot=0"))
        wsp.start()
        await self.recv(ws_conn, 120)
        gen_conn, child = self.ctx.Pipe()
        gen = self.ctx.Process(target=generator_main, daemon=True, name="soak-generator",
                               args=(child, self.sent, self.redis_url, self.universe, a.rate,
                                     a.ticks_per_message, a.seed,
                                     max(1000, int(30 * a.rate / a.ticks_per_message))))
        gen.start()
        await self.recv(gen_conn, 120)
        total = a.seconds if a.seconds else a.minutes * 60.0
        t_start = time.monotonic()
        ticks0, events0 = mon.feed.parser.ticks_accepted, mon.events_emitted
        try:
            k = 0
            while time.monotonic() - t_start < total - 1e-6:
                k += 1
                end = t_start + min(k * a.interval, total)
                while time.monotonic() < end:
                    self.samples.append(self.depths())
                    await asyncio.sleep(0.25)
                ws_conn.send(("pull",))
                seqs, arrivals = await self.recv(ws_conn, 60)
                t1, e1 = mon.feed.parser.ticks_accepted, mon.events_emitted
                self.rows.append(self.interval(k, time.monotonic() - t_start, seqs, arrivals,
                                               t1 - ticks0, e1 - events0))
                ticks0, events0 = t1, e1
                print_row(self.rows[-1], header=k == 1)
                if self._trace is not None:  # MM_SOAK_TRACEMALLOC=1: what grew, by line
                    snap = self._trace.take_snapshot()
                    if self._snap is not None:
                        for st in snap.compare_to(self._snap, "lineno")[:8]:
                            print(f"  {st}", file=sys.stderr)
                    self._snap = snap
        finally:
            gen_conn.send(("stop",))
            ws_conn.send(("stop",))
            for p in (gen, wsp):
                p.join(10)
                if p.is_alive():
                    p.kill()

    def interval(self, k, t_s, seqs, arrivals, ticks, events) -> dict:
        cyc = np.asarray(self.cycles, dtype=np.int64).reshape(-1, 4)
        self.cycles = []
        with_events = cyc[cyc[:, 2] > cyc[:, 1], :3]
        known = np.concatenate([self.carry, with_events])  # frames may arrive an interval late
        self.carry = with_events
        dt = max(t_s - self._t_prev, 1e-9)
        self._t_prev = t_s
        lat = np.zeros(0)
        if seqs.size and known.shape[0]:
            order = np.argsort(known[:, 2], kind="stable")
            s0, s1, oldest = known[order, 1], known[order, 2], known[order, 0]
            i = np.searchsorted(s1, seqs, side="left")
            ok = i < s1.shape[0]
            ok[ok] &= seqs[ok] > s0[i[ok]]
            lat = (arrivals[ok] - oldest[i[ok]]) / 1e6
        d = np.asarray(self.samples, dtype=np.float64).reshape(-1, 4)
        self.samples = []
        redis_mem = None
        with contextlib.suppress(Exception):
            import redis

            r = redis.Redis.from_url(self.redis_url, socket_timeout=2)
            redis_mem = int(r.info("memory")["used_memory"])
            r.close()
        cyc_ms = cyc[:, 3] / 1e6
        names = ("tick_backlog", "outbox_backlog", "ws_queue_frames", "ws_write_buffer_bytes")
        return {
            "interval": k, "t_s": round(t_s, 1), "rss_mb": rss_bytes() / 2**20,
            "redis_mb": redis_mem / 2**20 if redis_mem is not None else None,
            "ticks": int(ticks), "ticks_per_s": ticks / dt,
            "events": int(events), "ws_frames": int(seqs.size), "latency_n": int(lat.size),
            "desk_events": self.mon.desk.events.stats(),  # the desk's bounded event memory
            "tick_to_ws_ms": {f"p{q}": pct(lat, q) for q in (50, 90, 99)} | {
                "max": float(lat.max()) if lat.size else None},
            "cycle_ms": {"p50": pct(cyc_ms, 50), "p99": pct(cyc_ms, 99),
                         "max": float(cyc_ms.max()) if cyc_ms.size else None},
            "queues": {n: {"max": float(d[:, i].max()) if d.size else 0.0,
                           "mean": float(d[:, i].mean()) if d.size else 0.0}
                       for i, n in enumerate(names)},
        }


def _f(x, d=1):
    return "-" if x is None else f"{x:,.{d}f}"


def print_row(r: dict, header: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_header=header, box=None, pad_edge=False)
    cols = [("int", 4), ("t s", 7), ("RSS MB", 8), ("desk MB", 8), ("redis MB", 9),
            ("ticks/s", 9),
            ("events", 8), ("p50 ms", 7), ("p99 ms", 7), ("max ms", 8), ("cyc p99", 8),
            ("tick bl max", 11), ("outbox max", 10), ("ws q max", 9), ("ws buf max", 10)]
    for name, w in cols:
        t.add_column(name, justify="right", min_width=w)
    lat, q = r["tick_to_ws_ms"], r["queues"]
    t.add_row(str(r["interval"]), _f(r["t_s"]), _f(r["rss_mb"]),
              _f(r["desk_events"]["bytes"] / 2**20), _f(r["redis_mb"]),
              _f(r["ticks_per_s"], 0), str(r["events"]), _f(lat["p50"]), _f(lat["p99"]),
              _f(lat["max"]), _f(r["cycle_ms"]["p99"], 2), _f(q["tick_backlog"]["max"], 0),
              _f(q["outbox_backlog"]["max"], 0), _f(q["ws_queue_frames"]["max"], 0),
              _f(q["ws_write_buffer_bytes"]["max"], 0))
    con = Console(stderr=True)
    if not con.is_terminal:
        con = Console(stderr=True, width=180)  # a log file: one line per interval, not cut
    con.print(t)


def summarize(rows: list[dict]) -> dict:
    """First vs last interval (the warm-up interval aside when there are 3 or more)."""
    if not rows:
        return {}
    body = rows[1:] if len(rows) >= 3 else rows
    first, last = body[0], body[-1]

    def p99(r):
        return r["tick_to_ws_ms"]["p99"]

    all_p99 = [p99(r) for r in body if p99(r) is not None]
    return {"intervals": len(rows), "rss_mb_first": first["rss_mb"], "rss_mb_last": last["rss_mb"],
            "rss_mb_max": max(r["rss_mb"] for r in rows),
            "drift": {"rss_mb": last["rss_mb"] - first["rss_mb"],
                      "p99_ms": (p99(last) - p99(first)) if p99(last) is not None
                      and p99(first) is not None else None},
            "p99_ms_max": max(all_p99) if all_p99 else None,
            "ticks_per_s_min": min(r["ticks_per_s"] for r in body),
            "tick_backlog_max": max(r["queues"]["tick_backlog"]["max"] for r in rows)}


async def _main(args, book, redis_url: str) -> dict:
    from monitor.app.config import RunConfig
    from monitor.app.runtime import Monitor
    from monitor.book.universe import popularity

    cfg = RunConfig(feed=f"{redis_url}/{TICKS}?start=$&block_ms=1000&count=1000",
                    redis=redis_url, alerts_stream=ALERTS, alerts_maxlen=args.alerts_maxlen,
                    listen="127.0.0.1:0", token=TOKEN, spill_dir=str(Path(args.output) / "spill"),
                    desk_event_bytes=args.desk_event_bytes)
    mon = Monitor(cfg, book, redis_url=redis_url)
    lo, hi = book.limit_prices()
    universe = {"symbols": list(book.symbols), "price": book.price, "limit_down": lo,
                "limit_up": hi, "weights": popularity(book)}
    soak = Soak(args, mon, universe, redis_url)
    soak.instrument()
    task = asyncio.create_task(mon.run())
    try:
        run = asyncio.create_task(soak.run())
        done, _ = await asyncio.wait({run, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            raise RuntimeError("soak: the monitor stopped")
        run.result()
    finally:
        mon.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
    return {"rows": soak.rows, "server": mon.server.stats() if mon.server else {},
            "outbox": {k: v for k, v in mon.outbox.stats().items() if k != "url"}}


def run(args) -> int:
    """The `soak` subcommand."""
    from monitor.app.demo import private_redis
    from monitor.book import synthetic as synthbook
    from monitor.book.load import build_book

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", stream=sys.stderr)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tables = synthbook.generate(args.accounts, args.securities, seed=args.seed)
    book = build_book(tables, {k: f"synthetic {k}" for k in tables}, source="synthetic")
    del tables
    print(f"soak: {book.n_accounts:,} accounts, {book.n_securities:,} securities, "
          f"{args.rate:,.0f} ticks/s for {args.seconds or args.minutes * 60:.0f} s "
          f"(book built in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    config = {k: getattr(args, k) for k in ("minutes", "seconds", "accounts", "securities",
                                            "rate", "interval", "ticks_per_message", "seed",
                                            "desk_event_bytes")}
    if args.redis:
        res = asyncio.run(_main(args, book, args.redis))
    else:
        with private_redis() as url:
            if url is None:
                raise SystemExit("margin-monitor soak: no redis-server on PATH; give --redis")
            res = asyncio.run(_main(args, book, url))
    report = {"config": config, "machine": {"cpus": os.cpu_count()},
              "intervals": res["rows"], "summary": summarize(res["rows"]),
              "server": res["server"], "outbox": res["outbox"]}
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    print(f"soak: report in {out / 'soak.json'}: {json.dumps(report['summary'])}",
          file=sys.stderr)
    return 0

