"""End-to-end benchmark of the streaming runtime: tick -> alert latency and JSON ingest rate.

Tick received -> alert in Redis and on the websocket, cycle times, and the sustained rate of
JSON ticks the monitor keeps up with.

    .venv/bin/python -m monitor.perf.e2e --accounts 1000000 --rate 100000 --seconds 20 [--out DIR]
    .venv/bin/python -m monitor.perf.e2e --accounts 20000 --rate 20000 --seconds 5 \
        --ramp 10000,100000

What runs (all on loopback, bounded in time):

- a private `redis-server` on a free 127.0.0.1 port (never 6379), no persistence, in a temporary
  folder, killed at the end;
- this process: a synthetic book (`monitor.book.synthetic.generate` ->
  `monitor.book.load.build_book`) and the real `monitor.app.runtime.Monitor` with its Redis
  tick feed (`RedisFeed`: XREAD of JSON messages, `TickParser`), its engine, its `RedisOutbox`
  (alerts XADDed to a stream) and its `AlertServer` (`/ws/alerts`);
- a load generator process (`e2e_load.py`) that XADDs JSON messages of `--ticks-per-message`
  ticks to the tick stream at the target rate; ticks are drawn by popularity (holders per stock)
  and priced on a swinging market (`--swing`, `--period`) so that accounts cross lines all the
  time, in both directions;
- a websocket client process connected to `/ws/alerts` that timestamps every frame on arrival,
  with a Redis consumer of the alert stream in the same process.

Instrumentation (no project file is changed): the engine's `add_ticks` / `cycle`, the parser's
`parse_many` and the monitor's `publish` are wrapped per instance, and
the monitor is built with a subclass of `RedisOutbox` (its `outbox_factory`) whose `_ack` records
when Redis acknowledged each pipeline.
For every cycle: the receive time of its oldest tick (the wall clock when the XREAD reply holding
it was parsed, `TickParser.last_message_ns`), its duration, path and the range of event `seq`s it
produced. Event seqs are dense and published in
order, so the k-th acknowledged XADD is seq k. Latencies per event:

    tick_to_xadd          = the outbox saw Redis acknowledge the event's XADD pipeline
                            - oldest tick of its cycle received
    tick_to_stream_reader = a separate consumer (XREAD BLOCK on the alert stream, in the
                            websocket client's process) received the entry - same origin
    tick_to_ws            = the websocket client received the frame - same origin
    send_to_xadd          = as tick_to_xadd, from when the generator sent the oldest message
                            (adds the time a message waits in the tick stream while the monitor
                            is busy, e.g. in a cycle)

The acknowledgement is observed by the monitor's own event loop, so it can trail the moment
Redis answered by whatever the loop was doing then (a parse, a cycle); the stream reader shows
when a downstream consumer could have had the event.

Phases: a warm-up (2 s at `--rate`, not reported), the main phase (`--seconds` at `--rate`), then
a ramp (`--ramp` rates, `--ramp-seconds` each; plus up to two bisection steps between the last
sustained and the first saturated rate). Between phases the monitor drains (every tick consumed,
every event acknowledged). A rate is *sustained* when the tick backlog (sent by the generator, not
yet parsed by the monitor) does not grow: backlog slope over the last 60% of the step <= 5% of
the rate, and the backlog left at the step's end is consumed within 0.25 s (with 5 s steps, a
backlog growing at 5% of the monitor's speed leaves 0.25 s). A step lasts `--ramp-seconds` or
`--ramp-max-ticks` ticks, whichever is shorter.

The machine may be shared: the CPU used by everything else (from /proc/stat, minus this run's
processes) is sampled every 0.5 s. Phases where other jobs used more than 0.25 cores on average
are flagged as contended (a contended ramp step that fails is repeated once), and the main
phase's latencies are also given over its *quiet* cycles only: those during which, from 1 s
before their oldest tick to 0.2 s after they ended, no 0.5 s sample saw other jobs use more than
0.25 cores ("quiet" columns, `latency_quiet`, `quiet` in the report). `--wait-quiet S` first
waits up to S seconds for a quiet machine. The Python GC's collections are recorded (pauses per
generation, and what it tracks after the main phase).

Knobs for comparisons (the defaults measure the runtime as it is): `--threads`,
`--omp-wait-policy`, `--threading-layer` (how numba runs the parallel kernels), `--gc-freeze`
(`gc.freeze()` once the monitor has started), `--sweep-share`, `--xread-count`.

Output: `report.json` (and `cycles.npz`, per-cycle records) in `--out` (default
`bench/.cache/e2e/<accounts>`), and a table on the terminal. `--profile` runs cProfile over the
main phase (it slows the loop: latencies of a profiled run are not comparable) and writes
`profile.pstats` plus the top functions to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import logging
import multiprocessing as mp
import os
import platform
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monitor.errors import Saturated
from monitor.perf.jsonreport import dumps_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOKEN = "e2e-benchmark-token-0123456789abcdef"
TICK_STREAM = "bench:ticks"
ALERT_STREAM = "bench:alerts"
DEFAULT_REDIS_PORT = 6379
CONTENDED_CORES = 0.25  # CPU used by other jobs (cores) above which a phase / interval is loud
LOAD_INTERVAL = 0.5  # seconds between machine-load samples (/proc has 10 ms resolution)
QUIET_BEFORE_NS = 1_000_000_000  # a cycle is quiet if the machine was quiet from 1 s before
QUIET_AFTER_NS = 200_000_000  # its oldest tick to 0.2 s after it ended
SLOPE_MAX = 0.05  # a sustained rate: backlog growth over the step's last 60% <= 5% of the rate
DRAIN_MAX_S = 0.25  # and what is left at the step's end is consumed within 0.25 s
log = logging.getLogger("monitor.perf.e2e")


# ------------------------------------------------------------------------------ redis-server

def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != DEFAULT_REDIS_PORT:
            return port


@contextlib.contextmanager
def private_redis():
    """A throwaway redis-server on a free loopback port (no persistence); yields (url, pid)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("monitor.perf.e2e: redis-server not found (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mm-e2e-redis-") as d:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", d, "--logfile", os.path.join(d, "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"e2e: redis-server exited with {proc.returncode}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(64).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("monitor.perf.e2e: redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def system_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all cores, /proc/stat); NaN if unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        guest = sum(v[8:10]) if len(v) > 9 else 0  # already counted in user / nice
        return (sum(v) - idle - guest) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def wait_quiet(max_wait: float, threshold: float = 0.2, window: float = 2.0) -> float:
    """Wait (up to max_wait seconds) until the machine's busy CPU over `window` seconds is below
    `threshold` cores; returns the last measured busy cores (other jobs skew every figure)."""
    deadline = time.monotonic() + max_wait
    while True:
        b0 = system_busy_seconds()
        time.sleep(window)
        busy = (system_busy_seconds() - b0) / window
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        log.info("machine busy (%.2f cores used by other jobs); waiting", busy)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds; NaN if unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# ------------------------------------------------------------------------------ recording

@dataclass
class Recorder:
    """Per-cycle and per-ack records, filled by the wrappers on the monitor's event loop."""

    # per cycle (lists, converted to arrays at the end)
    c_oldest: list = field(default_factory=list)  # receive ns of the oldest tick, 0 if none
    c_first_msg: list = field(default_factory=list)  # index of the oldest message
    c_start: list = field(default_factory=list)
    c_end: list = field(default_factory=list)
    c_ns: list = field(default_factory=list)  # engine's own cycle time
    c_path: list = field(default_factory=list)  # 0 none, 1 incremental, 2 sweep
    c_ticks: list = field(default_factory=list)
    c_symbols: list = field(default_factory=list)
    c_touched: list = field(default_factory=list)
    c_seq0: list = field(default_factory=list)  # events of the cycle: seq in (seq0, seq1]
    c_seq1: list = field(default_factory=list)
    # per parse_many call (one XREAD reply): wall start, duration, ticks accepted
    p_start: list = field(default_factory=list)
    p_ns: list = field(default_factory=list)
    p_ticks: list = field(default_factory=list)
    # Python GC collections: end time, duration, generation
    gc_start: list = field(default_factory=list)
    gc_ns: list = field(default_factory=list)
    gc_gen: list = field(default_factory=list)
    # acks: (time, n) in publish order
    ack_t: list = field(default_factory=list)
    ack_n: list = field(default_factory=list)
    # cheap timers of the loop's work (ns)
    parse_ns: int = 0
    add_ns: int = 0
    cycle_ns: int = 0
    publish_ns: int = 0
    publish_events: int = 0
    # wrapper state
    oldest: int = 0
    first_msg: int = 0
    msgs_seen: int = 0

    def timers(self) -> dict:
        return {"parse": self.parse_ns, "add_ticks": self.add_ns, "cycle": self.cycle_ns,
                "publish": self.publish_ns}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k[2:]: np.asarray(getattr(self, k), dtype=np.int64)
               for k in ("c_oldest", "c_first_msg", "c_start", "c_end", "c_ns", "c_path",
                         "c_ticks", "c_symbols", "c_touched", "c_seq0", "c_seq1")}
        out.update({"parse_" + k[2:]: np.asarray(getattr(self, k), dtype=np.int64)
                    for k in ("p_start", "p_ns", "p_ticks")})
        out.update({k: np.asarray(getattr(self, k), dtype=np.int64)
                    for k in ("gc_start", "gc_ns", "gc_gen")})
        return out


PATHS = {"none": 0, "incremental": 1, "sweep": 2, "reach": 3}


def instrument(mon, rec: Recorder) -> None:
    """Wrap the engine, parser and publish of one Monitor instance (not the classes)."""
    eng = mon.engine
    parser = mon.feed.parser
    orig_add, orig_cycle = eng.add_ticks, eng.cycle
    orig_parse, orig_publish = parser.parse_many, mon.publish
    now = time.time_ns
    perf = time.perf_counter_ns

    def parse_many(messages, recv_ns=None):
        t = perf()
        t_wall = now()
        out = orig_parse(messages, recv_ns)
        dt = perf() - t
        rec.parse_ns += dt
        rec.p_start.append(t_wall)
        rec.p_ns.append(dt)
        rec.p_ticks.append(len(out))
        return out

    def add_ticks(sec, price, ts):
        t = perf()
        if rec.oldest == 0:
            rec.oldest = parser.last_message_ns  # recv_ns of the batch being added
            rec.first_msg = rec.msgs_seen
        rec.msgs_seen = parser.messages
        orig_add(sec, price, ts)
        rec.add_ns += perf() - t

    def cycle(now_ns):
        oldest, first = rec.oldest, rec.first_msg
        rec.oldest = 0
        s0 = eng.seq
        t0 = now()
        p0 = perf()
        events = orig_cycle(now_ns)
        rec.cycle_ns += perf() - p0
        t1 = now()
        c = eng.last_cycle
        if c.path != "none" or events:
            rec.c_oldest.append(oldest)
            rec.c_first_msg.append(first)
            rec.c_start.append(t0)
            rec.c_end.append(t1)
            rec.c_ns.append(c.ns)
            rec.c_path.append(PATHS.get(c.path, 0))
            rec.c_ticks.append(c.ticks)
            rec.c_symbols.append(c.symbols)
            rec.c_touched.append(c.touched)
            rec.c_seq0.append(s0)
            rec.c_seq1.append(eng.seq)
        return events

    def publish(events):
        t = perf()
        orig_publish(events)
        rec.publish_ns += perf() - t
        rec.publish_events += len(events)

    gc_t0 = [0]

    def on_gc(phase, info):  # Python's cyclic GC pauses the event loop
        if phase == "start":
            gc_t0[0] = perf()
        else:
            rec.gc_start.append(now())
            rec.gc_ns.append(perf() - gc_t0[0])
            rec.gc_gen.append(info["generation"])

    gc.callbacks.append(on_gc)
    parser.parse_many = parse_many
    eng.add_ticks = add_ticks
    eng.cycle = cycle
    mon.publish = publish


def timed_outbox_class(rec: Recorder):
    from monitor.adapters.outbox import RedisOutbox

    class TimedOutbox(RedisOutbox):
        async def _ack(self, n: int) -> None:
            if n and self._inflight is not None:
                rec.ack_t.append(time.time_ns())
                rec.ack_n.append(n)
            await super()._ack(n)

    return TimedOutbox


# ------------------------------------------------------------------------------ statistics

def pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if x.size else None


def summarize_ms(x_ns: np.ndarray) -> dict:
    x = x_ns.astype(np.float64) / 1e6
    return {"n": int(x.size), "p50_ms": pct(x, 50), "p90_ms": pct(x, 90), "p99_ms": pct(x, 99),
            "max_ms": float(x.max()) if x.size else None,
            "mean_ms": float(x.mean()) if x.size else None}


def per_seq_times(ack_t, ack_n, n_seq: int) -> np.ndarray:
    """Ack time of seq 1..n_seq (index seq - 1); -1 when not acknowledged."""
    out = np.full(n_seq, -1, dtype=np.int64)
    t = np.repeat(np.asarray(ack_t, dtype=np.int64), np.asarray(ack_n, dtype=np.int64))
    k = min(n_seq, t.shape[0])
    out[:k] = t[:k]
    return out


def ws_times(seqs: np.ndarray, arrivals: np.ndarray, n_seq: int) -> np.ndarray:
    out = np.full(n_seq, -1, dtype=np.int64)
    ok = (seqs >= 1) & (seqs <= n_seq)
    out[seqs[ok] - 1] = arrivals[ok]
    return out


# ------------------------------------------------------------------------------ phases

@dataclass
class Phase:
    name: str
    rate: float
    seconds: float
    t_start: int = 0  # wall ns when the generator was told to go
    t_gen_end: int = 0  # wall ns when the generator reported done
    t_drained: int = 0
    msg0: int = 0  # global index of the phase's first message
    n_msgs: int = 0
    n_bytes: int = 0
    prep_s: float = 0.0
    sched: np.ndarray | None = None
    send: np.ndarray | None = None
    ack: np.ndarray | None = None
    samples: list = field(default_factory=list)  # (t_ns, messages parsed, ticks accepted, outbox)
    drained: bool = True
    cpu: dict = field(default_factory=dict)
    main_thread_cpu_s: float = 0.0
    timers: dict = field(default_factory=dict)
    profile: str | None = None
    loadavg: tuple = ()
    gc_objects: dict = field(default_factory=dict)


class Bench:
    def __init__(self, args, book, positions: int, redis_url: str, redis_pid: int):
        self.args = args
        self.book = book
        self.positions = positions
        self.redis_url = redis_url
        self.redis_pid = redis_pid
        self.rec = Recorder()
        self.phases: list[Phase] = []
        self.msgs_total = 0
        self.ctx = mp.get_context("spawn")
        self.gen_conn = self.gen_proc = None
        self.ws_conn = self.ws_proc = None
        self.ws_result = None
        self.ws_ready_info = None
        self.deadline = time.monotonic() + args.budget
        self.startup_events = 0
        self.load_samples: list = []

    # -- child processes ----------------------------------------------------------------
    def start_generator(self, universe: dict) -> None:
        from monitor.perf.e2e_load import generator_main

        a = self.args
        parent, child = self.ctx.Pipe()
        self.gen_conn = parent
        self.gen_proc = self.ctx.Process(
            target=generator_main, name="e2e-generator", daemon=True,
            args=(child, self.redis_url, TICK_STREAM, universe, a.seed, a.swing, a.period,
                  a.ticks_per_message, 400_000_000))
        self.gen_proc.start()

    def start_ws_client(self, url: str) -> None:
        from monitor.perf.e2e_load import ws_client_main

        parent, child = self.ctx.Pipe()
        self.ws_conn = parent
        self.ws_proc = self.ctx.Process(target=ws_client_main, name="e2e-ws-client", daemon=True,
                                        args=(child, url, TOKEN, self.redis_url, ALERT_STREAM))
        self.ws_proc.start()

    def pids(self) -> dict[str, int]:
        out = {"monitor": os.getpid(), "redis": self.redis_pid}
        if self.gen_proc is not None:
            out["generator"] = self.gen_proc.pid
        if self.ws_proc is not None:
            out["ws_client"] = self.ws_proc.pid
        return out

    async def sample_load(self) -> None:
        """Every LOAD_INTERVAL s: machine busy CPU and this run's CPU (for the quiet windows)."""
        pids = self.pids()
        while True:
            self.load_samples.append((time.time_ns(), system_busy_seconds(),
                                      sum(cpu_seconds(p) for p in pids.values())))
            await asyncio.sleep(LOAD_INTERVAL)

    def other_load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(interval start ns, interval end ns, cores used by other jobs) per sampling interval."""
        s = np.asarray(self.load_samples, dtype=np.float64)
        if s.shape[0] < 2:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        dt = np.diff(s[:, 0]) / 1e9
        other = (np.diff(s[:, 1]) - np.diff(s[:, 2])) / dt
        return s[:-1, 0], s[1:, 0], other

    def quiet_cycles(self, c: dict) -> np.ndarray:
        """True for cycles during which (from 1 s before their oldest tick to 0.2 s after they
        ended) no sampling interval saw other jobs use more than CONTENDED_CORES."""
        t0, t1, other = self.other_load()
        out = np.zeros(c["start"].shape[0], dtype=bool)
        if other.size == 0:
            return out
        lo = np.where(c["oldest"] > 0, c["oldest"], c["start"]) - QUIET_BEFORE_NS
        hi = c["end"] + QUIET_AFTER_NS
        i0 = np.searchsorted(t1, lo, side="right")  # first interval ending after lo
        i1 = np.searchsorted(t0, hi, side="left")  # intervals starting before hi
        loud = (other > CONTENDED_CORES).astype(np.int64)
        cum = np.concatenate([[0], np.cumsum(loud)])
        covered = (i1 > i0) & (i0 < other.size) & (lo >= t0[0]) & (hi <= t1[-1])
        out = covered & (cum[np.minimum(i1, other.size)] - cum[np.minimum(i0, other.size)] == 0)
        return out

    async def recv(self, conn, timeout: float):
        deadline = time.monotonic() + timeout
        while not conn.poll():
            if time.monotonic() > deadline:
                raise TimeoutError("child process did not answer")
            await asyncio.sleep(0.02)
        return conn.recv()

    # -- the run ------------------------------------------------------------------------
    async def orchestrate(self, mon) -> None:
        a = self.args
        while mon.bound is None or mon.feed.reader.last_id is None or mon.outbox is None:
            await asyncio.sleep(0.05)
        self.startup_events = mon.engine.seq
        if not await mon.outbox.drain(timeout=120):
            raise RuntimeError("start-up events not acknowledged by Redis within 120 s")
        if a.gc_freeze:  # what a gc.freeze() after start-up in Monitor.run() would do
            gc.collect()
            gc.freeze()
        host, port = mon.bound
        self.start_ws_client(f"ws://{host}:{port}/ws/alerts")
        msg = await self.recv(self.ws_conn, 120)
        self.ws_ready_info = {"snapshot_frames": msg[1]}
        log.info("websocket client ready (%d snapshot frames)", msg[1])
        sampler = asyncio.create_task(self.sample_load())
        try:
            await self.phases_all(mon)
        finally:
            sampler.cancel()

    async def phases_all(self, mon) -> None:
        a = self.args
        await self.phase(mon, Phase("warmup", a.rate, 2.0))
        await self.phase(mon, Phase("main", a.rate, a.seconds), profile=a.profile)
        if a.ramp:
            await self.ramp(mon)

    def step_seconds(self, rate: float) -> float:
        return min(self.args.ramp_seconds, self.args.ramp_max_ticks / rate)

    async def ramp(self, mon) -> None:
        a = self.args
        results = []
        for rate in a.ramp:
            if not self.time_left(rate):
                log.warning("ramp: skipping %.0f ticks/s (time budget)", rate)
                break
            ph = await self.phase(mon, Phase(f"ramp {rate:,.0f}", rate, self.step_seconds(rate)))
            ok = self.sustained(ph)
            if not ok and self.contended(ph) and self.time_left(rate):
                log.warning("ramp: %.0f ticks/s failed while other jobs used the CPU; "
                            "repeating it once", rate)
                ph = await self.phase(mon, Phase(f"ramp {rate:,.0f} (repeat)", rate,
                                                 self.step_seconds(rate)))
                ok = self.sustained(ph)
            results.append((rate, ok))
            if not ok:
                break
        # up to two bisection steps between the last sustained and the first saturated rate
        for _ in range(2):
            good = [r for r, ok in results if ok]
            bad = [r for r, ok in results if not ok]
            if not good or not bad:
                break
            lo, hi = max(good), min(bad)
            if hi / lo < 1.3:
                break
            mid = float(round(np.sqrt(lo * hi), -3))
            if not self.time_left(mid):
                break
            ph = await self.phase(mon, Phase(f"ramp {mid:,.0f}", mid, self.step_seconds(mid)))
            results.append((mid, self.sustained(ph)))

    @staticmethod
    def contended(ph: Phase) -> bool:
        wall = max((ph.t_drained - ph.t_start) / 1e9, 1e-9)
        return ph.cpu.get("other_processes", 0.0) / wall > CONTENDED_CORES

    def time_left(self, rate: float) -> bool:
        secs = self.step_seconds(rate)
        est = secs + 3 + rate * secs / 1.5e6 + 20  # step, prepare, drain
        return time.monotonic() + est < self.deadline

    async def phase(self, mon, ph: Phase, profile: bool = False) -> Phase:
        parser = mon.feed.parser
        log.info("phase %s: preparing %.0f ticks/s for %.0f s", ph.name, ph.rate, ph.seconds)
        self.gen_conn.send(("prepare", ph.rate, ph.seconds))
        _, ph.n_msgs, ph.n_bytes, ph.prep_s = await self.recv(self.gen_conn, 120)
        ph.msg0 = self.msgs_total
        self.msgs_total += ph.n_msgs
        pids = self.pids()
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        busy0 = system_busy_seconds()
        thr0 = time.thread_time()
        timers0 = self.rec.timers()
        prof = cProfile.Profile() if profile else None
        if prof is not None:
            prof.enable()
        ph.t_start = time.time_ns()
        self.gen_conn.send(("go",))
        ob = mon.outbox
        while not self.gen_conn.poll():
            ph.samples.append((time.time_ns(), parser.messages, parser.ticks_accepted,
                               ob.stats()["backlog"]))
            await asyncio.sleep(0.05)
        _, ph.sched, ph.send, ph.ack = self.gen_conn.recv()
        ph.t_gen_end = time.time_ns()
        # drain: every message of the phase parsed, every event acknowledged
        target = self.msgs_total
        limit = time.monotonic() + self.args.drain_timeout
        while parser.messages < target or mon.engine.pending or ob.stats()["backlog"]:
            ph.samples.append((time.time_ns(), parser.messages, parser.ticks_accepted,
                               ob.stats()["backlog"]))
            if time.monotonic() > limit:
                ph.drained = False
                break
            await asyncio.sleep(0.01)
        ph.samples.append((time.time_ns(), parser.messages, parser.ticks_accepted,
                           ob.stats()["backlog"]))
        ph.t_drained = time.time_ns()
        if prof is not None:
            prof.disable()
            ph.profile = self.save_profile(prof)
        ph.main_thread_cpu_s = time.thread_time() - thr0
        ph.cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        # CPU used by everything else on the machine meanwhile (other users' jobs)
        ph.cpu["other_processes"] = system_busy_seconds() - busy0 - sum(ph.cpu.values())
        ph.loadavg = os.getloadavg()
        wall = max((ph.t_drained - ph.t_start) / 1e9, 1e-9)
        if ph.cpu["other_processes"] / wall > CONTENDED_CORES:
            log.warning("phase %s: other jobs on this machine used %.2f cores meanwhile; its "
                        "figures are skewed", ph.name, ph.cpu["other_processes"] / wall)
        t1 = self.rec.timers()
        ph.timers = {k: (t1[k] - timers0[k]) / 1e9 for k in t1}
        if ph.name == "main" and self.args.gc_diagnostics:
            # what the cyclic GC has to walk (outside the measured window; walks live objects)
            objs = gc.get_objects()
            kinds = Counter(type(o).__name__ for o in objs)
            ph.gc_objects = {"tracked": len(objs), "frozen": gc.get_freeze_count(),
                             "top_types": kinds.most_common(10),
                             "who_holds": object_holders(
                                 objs, [k for k, _ in kinds.most_common(3)])}
            del objs
        self.phases.append(ph)
        if not ph.drained:
            log.warning("phase %s: not drained within %.0f s (%d of %d messages parsed)",
                        ph.name, self.args.drain_timeout, parser.messages, target)
            raise Saturated(ph)
        await asyncio.sleep(0.3)  # let the heartbeat / stragglers settle
        return ph

    def save_profile(self, prof: cProfile.Profile) -> str:
        out = Path(self.args.out)
        prof.dump_stats(out / "profile.pstats")
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
        return s.getvalue()

    # -- analysis -----------------------------------------------------------------------
    def phase_ticks(self, ph: Phase) -> int:
        return ph.n_msgs * self.args.ticks_per_message

    def backlog_series(self, ph: Phase) -> tuple[np.ndarray, np.ndarray]:
        """(t seconds from the phase start, backlog in ticks) at every sample."""
        s = np.asarray(ph.samples, dtype=np.int64)
        t = s[:, 0]
        parsed = s[:, 1] - ph.msg0
        sent = np.searchsorted(np.sort(ph.send), t, side="right")
        backlog = (sent - parsed) * self.args.ticks_per_message
        return (t - ph.t_start) / 1e9, backlog

    def ingest(self, ph: Phase) -> dict:
        s = np.asarray(ph.samples, dtype=np.int64)
        t, backlog = self.backlog_series(ph)
        dur = (ph.t_gen_end - ph.t_start) / 1e9
        gen_dur = max((int(ph.send[-1]) - int(ph.send[0])) / 1e9, 1e-9)
        gen_rate = (ph.n_msgs - 1) * self.args.ticks_per_message / gen_dur if ph.n_msgs > 1 \
            else float("nan")
        in_step = t <= dur
        tail = in_step & (t >= 0.4 * dur)
        slope = float(np.polyfit(t[tail], backlog[tail], 1)[0]) if tail.sum() >= 3 else 0.0
        # the step's ticks over the time it took to consume all of them
        done = s[:, 1] - ph.msg0 >= ph.n_msgs
        t_done = int(s[np.argmax(done), 0]) if done.any() else ph.t_drained
        consumed = int(min(s[-1, 1] - ph.msg0, ph.n_msgs)) * self.args.ticks_per_message
        consume_s = max((t_done - ph.t_start) / 1e9, ph.seconds)
        drain_s = max(0.0, (t_done - ph.t_gen_end) / 1e9)
        late = (ph.send - ph.sched) / 1e6
        ok = bool(ph.drained and slope <= SLOPE_MAX * ph.rate and drain_s <= DRAIN_MAX_S)
        return {
            "rate": ph.rate, "seconds": ph.seconds, "ticks_sent": self.phase_ticks(ph),
            "generator_rate": gen_rate, "generator_late_p99_ms": pct(late, 99),
            "monitor_rate": consumed / consume_s if consume_s > 0 else None,
            "backlog_max_ticks": int(backlog.max()) if backlog.size else 0,
            "backlog_end_ticks": int(backlog[in_step][-1]) if in_step.any() else 0,
            "backlog_slope_ticks_per_s": slope, "drain_s": drain_s,
            "outbox_backlog_max": int(s[:, 3].max()) if s.size else 0,
            "sustained": ok,
            "generator_limited": bool(gen_rate < 0.95 * ph.rate),
        }

    def sustained(self, ph: Phase) -> bool:
        return self.ingest(ph)["sustained"]

    def latency(self, ph: Phase, c: dict, ack_seq: np.ndarray, ws_seq: np.ndarray,
                xr_seq: np.ndarray, only: np.ndarray | None = None) -> dict:
        sel = (c["oldest"] >= ph.t_start) & (c["oldest"] <= ph.t_drained)
        if only is not None:
            sel &= only
        ticked = sel & (c["oldest"] > 0)
        # events of the phase's cycles
        s0, s1 = c["seq0"][ticked], c["seq1"][ticked]
        counts = s1 - s0
        oldest = np.repeat(c["oldest"][ticked], counts)
        first = np.repeat(c["first_msg"][ticked], counts)
        seq_idx = (np.concatenate([np.arange(a, b) for a, b in zip(s0, s1, strict=True)])
                   if counts.sum() else np.empty(0, dtype=np.int64))
        ack = ack_seq[seq_idx] if seq_idx.size else np.empty(0, dtype=np.int64)
        ws = ws_seq[seq_idx] if seq_idx.size else np.empty(0, dtype=np.int64)
        xr = xr_seq[seq_idx] if seq_idx.size else np.empty(0, dtype=np.int64)
        has_xr = xr > 0
        # when the generator sent the cycle's oldest message (global index -> phase arrays)
        send_all = self.send_all()
        fm = np.clip(first, 0, send_all.shape[0] - 1)
        sent = send_all[fm] if fm.size else fm
        path = c["path"][sel]
        dur = (ph.t_gen_end - ph.t_start) / 1e9
        n_events = int(counts.sum())
        has_ack, has_ws = ack > 0, ws > 0
        return {
            "events": n_events,
            "events_per_s": n_events / dur if dur > 0 else None,
            "events_acked": int(has_ack.sum()),
            "events_ws": int(has_ws.sum()),
            "tick_to_xadd": summarize_ms(ack[has_ack] - oldest[has_ack]),
            "tick_to_ws": summarize_ms(ws[has_ws] - oldest[has_ws]),
            "tick_to_stream_reader": summarize_ms(xr[has_xr] - oldest[has_xr]),
            "send_to_xadd": summarize_ms(ack[has_ack] - sent[has_ack]),
            "send_to_ws": summarize_ms(ws[has_ws] - sent[has_ws]),
            "tick_to_cycle_done": summarize_ms(c["end"][ticked] - c["oldest"][ticked]),
            "cycle": summarize_ms(c["ns"][sel]),
            "cycle_sweep": summarize_ms(c["ns"][sel & (c["path"] == 2)]),
            "cycle_incremental": summarize_ms(c["ns"][sel & (c["path"] == 1)]),
            "cycle_reach": summarize_ms(c["ns"][sel & (c["path"] == 3)]),
            "cycles": int(sel.sum()),
            "path_mix": {"incremental": int((path == 1).sum()), "sweep": int((path == 2).sum()),
                         "reach": int((path == 3).sum()), "none": int((path == 0).sum())},
            "ticks_per_cycle_mean": float(c["ticks"][sel].mean()) if sel.any() else None,
            "symbols_per_cycle_mean": float(c["symbols"][sel].mean()) if sel.any() else None,
            "cycles_with_events": int((counts > 0).sum()),
            "gc": self.gc_stats(ph, c),
        }

    @staticmethod
    def gc_stats(ph: Phase, c: dict) -> dict:
        sel = (c["gc_start"] >= ph.t_start) & (c["gc_start"] <= ph.t_drained)
        gen, ms = c["gc_gen"][sel], c["gc_ns"][sel] / 1e6
        return {"collections_by_generation": np.bincount(gen, minlength=3).tolist(),
                "max_pause_ms": float(ms.max()) if ms.size else 0.0,
                "gen2_pauses_ms": [round(x, 1) for x in ms[gen == 2].tolist()],
                "total_ms": float(ms.sum())}

    def send_all(self) -> np.ndarray:
        parts = [ph.send for ph in self.phases if ph.send is not None]
        return np.concatenate(parts) if parts else np.zeros(1, dtype=np.int64)


def _name(x) -> str:
    """A JSON-safe label for a live object: a string as it is, else its (qualified) name or type."""
    if isinstance(x, str):
        return x[:80]
    return str(getattr(x, "__qualname__", None) or type(x).__name__)


def object_holders(objs: list, kinds: list[str], per_kind: int = 5) -> dict:
    """For a few objects of each of the most common tracked types: their size and the types of
    the containers that refer to them (a clue to who keeps them alive). Only names, counts and
    sizes go out: the sampled objects themselves may be anything."""
    out = {}
    rng = np.random.default_rng(0)
    for kind in kinds:
        pool = [o for o in objs if type(o).__name__ == kind]
        picks = [pool[i] for i in rng.choice(len(pool), min(per_kind, len(pool)), replace=False)]
        rows = []
        for o in picks:
            refs = [r for r in gc.get_referrers(o) if r is not objs and r is not pool
                    and r is not picks]
            row = {"len": len(o) if hasattr(o, "__len__") else None,
                   "referrers": [type(r).__name__ for r in refs[:3]]}
            if isinstance(o, dict):
                row["keys"] = [_name(k) for k in list(o)[:6]]
            elif isinstance(o, list) and o:
                row["item_types"] = sorted({type(x).__name__ for x in o[:20]})
            rows.append(row)
        out[kind] = rows
        del pool, picks
    return out


# ------------------------------------------------------------------------------ main

def build(args):
    from monitor.book import synthetic as synthbook
    from monitor.book.load import build_book

    t0 = time.perf_counter()
    tables = synthbook.generate(args.accounts, args.securities, seed=args.seed)
    t1 = time.perf_counter()
    book = build_book(tables, {k: k for k in tables}, source="synthbook")
    t2 = time.perf_counter()
    positions = tables["positions"].num_rows
    del tables
    log.info("book: %d accounts, %d positions, %d securities (generated %.1fs, built %.1fs)",
             book.n_accounts, positions, book.n_securities, t1 - t0, t2 - t1)
    return book, positions, {"generate_s": t1 - t0, "build_s": t2 - t1}


async def run_monitor(args, book, positions, redis_url, redis_pid, spill_dir):
    from monitor.app.config import RunConfig
    from monitor.app.runtime import Monitor
    from monitor.book.universe import popularity

    cfg = RunConfig(
        feed=f"{redis_url}/{TICK_STREAM}?start=$&block_ms=1000&count={args.xread_count}",
        redis=redis_url, alerts_stream=ALERT_STREAM, listen="127.0.0.1:0", token=TOKEN,
        spill_dir=str(spill_dir), sweep_share=args.sweep_share, reach=args.reach)
    bench = Bench(args, book, positions, redis_url, redis_pid)
    lo, hi = book.limit_prices()
    bench.start_generator({"symbols": list(book.symbols), "price": book.price,
                           "limit_down": lo, "limit_up": hi, "weights": popularity(book)})
    t0 = time.perf_counter()
    mon = Monitor(cfg, book, redis_url=redis_url, outbox_factory=timed_outbox_class(bench.rec))
    setup = {"monitor_init_s": time.perf_counter() - t0}
    instrument(mon, bench.rec)
    run_task = asyncio.create_task(mon.run(), name="monitor")
    saturated = None
    try:
        orch = asyncio.create_task(bench.orchestrate(mon))
        done, _ = await asyncio.wait({orch, run_task}, return_when=asyncio.FIRST_COMPLETED)
        if run_task in done:
            run_task.result()
            raise RuntimeError("the monitor stopped during the benchmark")
        try:
            orch.result()
        except Saturated as e:
            saturated = e.phase.name
    finally:
        if bench.ws_conn is not None:
            with contextlib.suppress(Exception):
                bench.ws_conn.send(("stop",))
                bench.ws_result = await bench.recv(bench.ws_conn, 30)
        if bench.gen_conn is not None:
            with contextlib.suppress(Exception):
                bench.gen_conn.send(("stop",))
        mon.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run_task, 60)
        for p in (bench.gen_proc, bench.ws_proc):
            if p is not None:
                p.join(10)
                if p.is_alive():
                    p.kill()
    setup["saturated_phase"] = saturated
    return bench, mon, setup


def report(args, bench: Bench, mon, setup: dict) -> dict:
    c = bench.rec.arrays()
    n_seq = mon.engine.seq
    ack_seq = per_seq_times(bench.rec.ack_t, bench.rec.ack_n, n_seq)
    ws = bench.ws_result
    if ws is not None:
        _, seqs, arrivals, ws_info, x_seqs, x_arrivals = ws
        ws_seq = ws_times(seqs, arrivals, n_seq)
        xr_seq = ws_times(x_seqs, x_arrivals, n_seq)
        ws_info["stream_consumer_entries"] = int(x_seqs.shape[0])
        # stream order == seq order (so the k-th acknowledged XADD is seq k)
        ws_info["stream_in_seq_order"] = bool(np.all(np.diff(x_seqs) == 1))
    else:
        ws_seq, ws_info = np.full(n_seq, -1, dtype=np.int64), {"error": "no result"}
        xr_seq = ws_seq
    quiet = bench.quiet_cycles(c)
    phases = {}
    for ph in bench.phases:
        lat = bench.latency(ph, c, ack_seq, ws_seq, xr_seq)
        ql = bench.latency(ph, c, ack_seq, ws_seq, xr_seq, only=quiet)
        ql["share_of_cycles"] = ql["cycles"] / max(1, lat["cycles"])
        ql["share_of_events"] = ql["events"] / max(1, lat["events"])
        d = {"ingest": bench.ingest(ph), "latency": lat, "latency_quiet": ql,
             "cpu_s": ph.cpu, "main_thread_cpu_s": ph.main_thread_cpu_s,
             "loop_timers_s": ph.timers, "wall_s": (ph.t_drained - ph.t_start) / 1e9,
             "messages": ph.n_msgs, "bytes_per_tick": ph.n_bytes / max(1, bench.phase_ticks(ph)),
             "prepare_s": ph.prep_s, "loadavg_1_5_15": ph.loadavg,
             "other_jobs_cores": ph.cpu["other_processes"] / max(1e-9, (ph.t_drained
                                                                       - ph.t_start) / 1e9)}
        d["contended"] = bool(d["other_jobs_cores"] > CONTENDED_CORES)
        if ph.gc_objects:
            d["gc_objects_after"] = ph.gc_objects
        if ph.profile:
            d["profile_top"] = ph.profile
        phases[ph.name] = d
    main = phases.get("main")
    ramp = [{"name": k, **v["ingest"], "contended": v["contended"],
             "other_jobs_cores": v["other_jobs_cores"],
             "cycle_p99_ms": v["latency"]["cycle"]["p99_ms"],
             "tick_to_xadd_p99_ms": v["latency"]["tick_to_xadd"]["p99_ms"],
             "path_mix": v["latency"]["path_mix"]}
            for k, v in phases.items() if k.startswith("ramp")]
    last = {r["rate"]: r for r in ramp}  # a repeated step counts by its last attempt
    sustained = [x for x, r in last.items() if r["sustained"]]
    measured = [r["monitor_rate"] for r in ramp if r["monitor_rate"]]
    saturated = [x for x, r in last.items() if not r["sustained"]]
    ml = main["latency"] if main else {}
    mq = main["latency_quiet"] if main else {}
    mi = main["ingest"] if main else {}
    out = {
        "accounts": bench.book.n_accounts,
        "positions": bench.positions,
        "securities": bench.book.n_securities,
        "rate": args.rate,
        "seconds": args.seconds,
        "ticks_per_message": args.ticks_per_message,
        "swing": args.swing,
        "period_s": args.period,
        "sweep_share": args.sweep_share,
        "reach": args.reach,
        "tick_to_xadd_p50_ms": ml.get("tick_to_xadd", {}).get("p50_ms"),
        "tick_to_xadd_p99_ms": ml.get("tick_to_xadd", {}).get("p99_ms"),
        "tick_to_xadd_max_ms": ml.get("tick_to_xadd", {}).get("max_ms"),
        "tick_to_ws_p50_ms": ml.get("tick_to_ws", {}).get("p50_ms"),
        "tick_to_ws_p99_ms": ml.get("tick_to_ws", {}).get("p99_ms"),
        "tick_to_ws_max_ms": ml.get("tick_to_ws", {}).get("max_ms"),
        "tick_to_stream_reader_p50_ms": ml.get("tick_to_stream_reader", {}).get("p50_ms"),
        "tick_to_stream_reader_p99_ms": ml.get("tick_to_stream_reader", {}).get("p99_ms"),
        "send_to_xadd_p50_ms": ml.get("send_to_xadd", {}).get("p50_ms"),
        "send_to_xadd_p99_ms": ml.get("send_to_xadd", {}).get("p99_ms"),
        "tick_to_cycle_done_p50_ms": ml.get("tick_to_cycle_done", {}).get("p50_ms"),
        "tick_to_cycle_done_p99_ms": ml.get("tick_to_cycle_done", {}).get("p99_ms"),
        "cycle_p50_ms": ml.get("cycle", {}).get("p50_ms"),
        "cycle_p99_ms": ml.get("cycle", {}).get("p99_ms"),
        "cycle_max_ms": ml.get("cycle", {}).get("max_ms"),
        "quiet": {
            "what": "the main phase's events whose cycle saw no other job use more than "
                    f"{CONTENDED_CORES} cores (from 1 s before its oldest tick to 0.2 s after)",
            "share_of_cycles": mq.get("share_of_cycles"),
            "share_of_events": mq.get("share_of_events"),
            **{f"{k}_{q}_ms": mq.get(k, {}).get(f"{q}_ms")
               for k in ("tick_to_xadd", "tick_to_ws", "tick_to_stream_reader",
                         "tick_to_cycle_done", "cycle")
               for q in ("p50", "p99", "max")},
        },
        "cycles": ml.get("cycles"),
        "path_mix": ml.get("path_mix"),
        "events": ml.get("events"),
        "events_per_s": ml.get("events_per_s"),
        "events_ws_received": ml.get("events_ws"),
        "main_generator_rate": mi.get("generator_rate"),
        "main_sustained": mi.get("sustained"),
        "main_other_jobs_cores": main["other_jobs_cores"] if main else None,
        "contended_phases": [k for k, v in phases.items() if v["contended"]],
        "ingest_ticks_per_s": max(sustained) if sustained else None,
        "saturated_at_ticks_per_s": min(saturated) if saturated else None,
        "max_measured_ingest_ticks_per_s": max(measured) if measured else None,
        "goals": {
            "tick_to_xadd_p99_le_10ms": _le(ml.get("tick_to_xadd", {}).get("p99_ms"), 10.0),
            "tick_to_ws_p99_le_10ms": _le(ml.get("tick_to_ws", {}).get("p99_ms"), 10.0),
            "ingest_ge_500k": (max(sustained) >= 500_000) if sustained else False,
        },
        "ramp": ramp,
        "phases": phases,
        "startup": {**setup, "startup_events": bench.startup_events,
                    **(bench.ws_ready_info or {})},
        "websocket_client": ws_info,
        "outbox": {k: v for k, v in mon.outbox.stats().items() if k != "url"}
        if mon.outbox is not None else None,
        # the latency join assumes the k-th acknowledged XADD is seq k: these must agree
        "seq_check": {"engine_seq": n_seq, "xadd_acked": int(sum(bench.rec.ack_n)),
                      "ws_events": int((ws_seq > 0).sum()),
                      "stream_reader_events": int((xr_seq > 0).sum())},
        "feed": {k: v for k, v in mon.feed.stats().as_dict().items()},
        "gc_freeze": args.gc_freeze,
        "environment": environment(),
        "command": " ".join([".venv/bin/python", "-m", "monitor.perf.e2e", *sys.argv[1:]]),
    }
    return out


def _le(x, lim):
    return None if x is None else bool(x <= lim)


def environment() -> dict:
    import numba

    env = {"python": platform.python_version(), "numba": numba.__version__,
           "numpy": np.__version__, "cpus": os.cpu_count(),
           "numba_threads": numba.get_num_threads(),
           "numba_threading_layer": _threading_layer(), "machine": platform.machine(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
           "NUMBA_THREADING_LAYER": os.environ.get("NUMBA_THREADING_LAYER")}
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                           capture_output=True, text=True,
                                           timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=5).stdout
        env["git_dirty_files"] = [ln[3:] for ln in dirty.splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def _threading_layer() -> str | None:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def print_table(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 132)

    def f(x, d=2):
        if x is None:
            return "-"
        if isinstance(x, bool):
            return "yes" if x else "NO"
        if isinstance(x, float):
            return f"{x:,.{d}f}"
        return f"{x:,}" if isinstance(x, int) else str(x)

    t = Table(title=f"margin-monitor end to end: {rep['accounts']:,} accounts, "
                    f"{rep['positions']:,} positions, {rep['rate']:,.0f} ticks/s for "
                    f"{rep['seconds']:.0f} s (JSON via Redis stream)")
    t.add_column("measure")
    t.add_column("p50", justify="right")
    t.add_column("p99", justify="right")
    t.add_column("max", justify="right")
    t.add_column("n", justify="right")
    t.add_column("quiet p50", justify="right")
    t.add_column("quiet p99", justify="right")
    t.add_column("quiet max", justify="right")
    t.add_column("quiet n", justify="right")
    lat = rep["phases"].get("main", {}).get("latency", {})
    qlat = rep["phases"].get("main", {}).get("latency_quiet", {})
    for key, label in (("tick_to_xadd", "tick received -> XADD acked (ms)"),
                       ("tick_to_ws", "tick received -> ws frame received (ms)"),
                       ("tick_to_stream_reader", "tick received -> alert XREAD by a consumer (ms)"),
                       ("send_to_xadd", "tick sent by generator -> XADD acked (ms)"),
                       ("tick_to_cycle_done", "tick received -> cycle done (ms)"),
                       ("cycle", "cycle time, all (ms)"),
                       ("cycle_sweep", "cycle time, sweep (ms)"),
                       ("cycle_incremental", "cycle time, incremental (ms)")):
        s, q = lat.get(key, {}), qlat.get(key, {})
        t.add_row(label, f(s.get("p50_ms")), f(s.get("p99_ms")), f(s.get("max_ms")),
                  f(s.get("n")), f(q.get("p50_ms")), f(q.get("p99_ms")), f(q.get("max_ms")),
                  f(q.get("n")))
    con.print(t)
    qs = rep["quiet"]
    share_c = qs["share_of_cycles"] * 100 if qs["share_of_cycles"] is not None else None
    share_e = qs["share_of_events"] * 100 if qs["share_of_events"] is not None else None
    con.print(f"quiet columns: {qs['what']}: {f(share_c, 0)}% of cycles, {f(share_e, 0)}% of "
              "events")
    pm = rep.get("path_mix") or {}
    ph = rep["phases"].get("main", {})
    con.print(f"events: {f(rep['events'], 0)} ({f(rep['events_per_s'], 0)}/s), ws received "
              f"{f(rep['events_ws_received'], 0)}; cycles {f(rep['cycles'])}: "
              f"incremental {pm.get('incremental')}, sweep {pm.get('sweep')}, reach "
              f"{pm.get('reach')}; ticks/cycle "
              f"{f(lat.get('ticks_per_cycle_mean'), 0)}, symbols/cycle "
              f"{f(lat.get('symbols_per_cycle_mean'), 0)}")
    if ph:
        wall = ph["wall_s"]
        cpu = ", ".join(f"{k} {v / wall * 100:.0f}%" for k, v in ph["cpu_s"].items())
        tm = ", ".join(f"{k} {v / wall * 100:.0f}%" for k, v in ph["loop_timers_s"].items())
        con.print(f"main phase CPU (% of one core): {cpu}; monitor main thread "
                  f"{ph['main_thread_cpu_s'] / wall * 100:.0f}%; load average "
                  f"{ph['loadavg_1_5_15'][0]:.1f}")
        con.print(f"monitor loop wall time share: {tm}")
        gcs = lat.get("gc", {})
        con.print(f"Python GC during the main phase: collections by generation "
                  f"{gcs.get('collections_by_generation')}, full-collection pauses (ms) "
                  f"{gcs.get('gen2_pauses_ms')}")
    r = Table(title="ingest ramp (JSON ticks through the Redis stream feed)")
    for col in ("rate", "generator", "monitor", "backlog max", "slope/s", "drain s",
                "cycle p99 ms", "xadd p99 ms", "sweeps", "other jobs", "sustained"):
        r.add_column(col, justify="right")
    for x in rep["ramp"]:
        pm = x["path_mix"]
        r.add_row(f(x["rate"], 0), f(x["generator_rate"], 0), f(x["monitor_rate"], 0),
                  f(x["backlog_max_ticks"]), f(x["backlog_slope_ticks_per_s"], 0),
                  f(x["drain_s"]), f(x["cycle_p99_ms"]), f(x["tick_to_xadd_p99_ms"]),
                  f"{pm['sweep']}/{pm['sweep'] + pm['incremental'] + pm.get('reach', 0)}",
                  f"{x['other_jobs_cores']:.2f}" + (" !" if x["contended"] else ""),
                  f(x["sustained"]) + (" (gen-limited)" if x["generator_limited"] else ""))
    if rep["ramp"]:
        con.print(r)
    if rep["contended_phases"]:
        con.print(f"[bold red]other jobs used more than {CONTENDED_CORES} cores during: "
                  f"{', '.join(rep['contended_phases'])}; those figures are skewed[/]")
    g = rep["goals"]
    con.print(f"sustained ingest: {f(rep['ingest_ticks_per_s'], 0)} ticks/s "
              f"(saturated at {f(rep['saturated_at_ticks_per_s'], 0)}; best measured "
              f"{f(rep['max_measured_ingest_ticks_per_s'], 0)})")
    con.print(f"goals: tick->XADD p99 <= 10 ms: {f(g['tick_to_xadd_p99_le_10ms'])}; "
              f"tick->ws p99 <= 10 ms: {f(g['tick_to_ws_p99_le_10ms'])}; "
              f">= 500k ticks/s: {f(g['ingest_ge_500k'])}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m monitor.perf.e2e",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--securities", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=100_000, help="ticks/s of the main phase")
    ap.add_argument("--seconds", type=float, default=20.0, help="main phase length")
    ap.add_argument("--ticks-per-message", type=int, default=1000)
    ap.add_argument("--swing", type=float, default=0.02,
                    help="market swing, peak to trough (0.02: -1%% .. +1%%)")
    ap.add_argument("--period", type=float, default=20.0, help="seconds per market swing")
    ap.add_argument("--ramp", default="10000,100000,500000,1000000,2000000",
                    help="comma-separated ticks/s of the ingest ramp, run until one saturates "
                         "('' to skip)")
    ap.add_argument("--ramp-seconds", type=float, default=5.0)
    ap.add_argument("--ramp-max-ticks", type=float, default=6e6,
                    help="a ramp step lasts at most this many ticks (the generator holds a "
                         "step's messages in memory)")
    ap.add_argument("--sweep-share", type=float, default=0.15,
                    help="engine sweep_share (the runtime's default is 0.15)")
    ap.add_argument("--reach", default="off", choices=("auto", "always", "off"),
                    help="engine reach mode (docs/capacity.md)")
    ap.add_argument("--xread-count", type=int, default=1000,
                    help="tick feed XREAD COUNT (the feed's default is 1000)")
    ap.add_argument("--drain-timeout", type=float, default=30.0)
    ap.add_argument("--budget", type=float, default=280.0,
                    help="seconds; ramp steps that would not fit are skipped")
    ap.add_argument("--omp-wait-policy", choices=("default", "passive", "active"),
                    default="default",
                    help="OMP_WAIT_POLICY for numba's OpenMP threading layer (set before numba "
                         "loads; 'default' leaves the environment as it is)")
    ap.add_argument("--threading-layer", choices=("default", "omp", "workqueue", "tbb"),
                    default="default", help="NUMBA_THREADING_LAYER (set before numba loads)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() once the monitor has started (moves start-up objects out "
                         "of the cyclic GC: no ~100 ms full collections on the tick path)")
    ap.add_argument("--threads", type=int, default=0,
                    help="numba threads of the monitor's kernels (0: numba's default, one per "
                         "core)")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="first wait up to this many seconds for other jobs to leave the CPU")
    ap.add_argument("--profile", action="store_true", help="cProfile the main phase")
    ap.add_argument("--gc-diagnostics", action="store_true",
                    help="after the main phase, walk the live objects the cyclic GC tracks and "
                         "report the commonest types and who holds a few of them (slow)")
    ap.add_argument("--out", help="output folder (default bench/.cache/e2e/<accounts>)")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    a.ramp = [float(x) for x in a.ramp.split(",") if x.strip()]
    if a.out is None:
        a.out = str(Path.cwd() / ".mm-bench-cache" / "e2e" / str(a.accounts))
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(getattr(logging, args.log_level.upper()))
    log.setLevel(min(logging.INFO, log.getEffectiveLevel()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    # both are read once, when numba / libgomp load (nothing has imported numba yet)
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    if args.threading_layer != "default":
        os.environ["NUMBA_THREADING_LAYER"] = args.threading_layer
    if args.threads:
        import numba

        numba.set_num_threads(args.threads)
    busy = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    load0 = os.getloadavg()
    book, positions, timings = build(args)
    timings["loadavg_at_start"] = load0
    timings["busy_cores_before_start"] = busy
    with private_redis() as (url, pid), tempfile.TemporaryDirectory(prefix="mm-e2e-") as tmp:
        bench, mon, setup = asyncio.run(run_monitor(args, book, positions, url, pid, tmp))
    rep = report(args, bench, mon, {**timings, **setup})
    rep["total_wall_s"] = time.perf_counter() - t_all
    (out / "report.json").write_text(dumps_report(rep))
    ls = np.asarray(bench.load_samples, dtype=np.float64).reshape(-1, 3)
    np.savez_compressed(out / "cycles.npz", **bench.rec.arrays(), load_t=ls[:, 0],
                        load_busy_s=ls[:, 1], load_ours_s=ls[:, 2])
    print_table(rep)
    try:
        shown = out.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = out
    print(f"report: {shown / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
