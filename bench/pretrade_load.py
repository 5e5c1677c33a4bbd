"""HTTP load on POST /api/pretrade over loopback: latency per check at a fixed request rate.

Starts `margin-monitor run` on a synthetic book with credit terms (written once under
bench/.cache/), then sends pre-trade checks open-loop at `--rate` per second for `--seconds`
(a request is sent on schedule whether or not earlier ones have been answered, so a slow
server cannot hide its queueing). Two modes:

- one-shot (default): one TCP connection per check to the main port (the websockets server
  answers `Connection: close`); latency from the first byte written to the last byte read.
- `--keepalive N`: N persistent connections, to the monitor's main port (`--main-port`, the
  pre-trade check is served there with keep-alive) or to the `--pretrade-listen` listener,
  request i on connection i mod N, pipelined when an answer is late; latency from the request's
  *scheduled* send time to the last byte of its answer, so neither a slow server nor a late
  client hides a stall (no coordinated omission).

    .venv/bin/python bench/pretrade_load.py --accounts 100000 --rate 1000 --seconds 30
    .venv/bin/python bench/pretrade_load.py --keepalive 4 --main-port --accounts 1000000 --repeat 5

Prints one JSON object per measured run (percentiles in ms, achieved rate, statuses, refusal
share, the machine's load) and with `--repeat` a last one with the medians over the runs.
Traffic goes to 127.0.0.1 only, and the run is bounded by --seconds x --repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _credit import random_actions, write_credit_book  # noqa: E402

from monitor.book.load import load_book  # noqa: E402

TOKEN = "pretrade-load-token-3c7f1e"


def book_folder(accounts: int, securities: int) -> Path:
    cache = Path(os.environ.get("MM_BENCH_CACHE", Path.cwd() / ".mm-bench-cache"))
    out = cache / f"credit-{accounts}-{securities}"
    if not (out / "positions.parquet").exists():
        print(f"writing the book to {out} ...", file=sys.stderr)
        write_credit_book(out, accounts, securities)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sched_ns(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one) of all a process's threads, from the
    scheduler's own clock (/proc/PID/task/*/schedstat): exact, unlike the tick-sampled
    utime/stime, which miss short bursts. The wait is the contention the process met."""
    run = wait = 0
    try:
        for t in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                f = (t / "schedstat").read_text().split()
                run, wait = run + int(f[0]), wait + int(f[1])
    except (OSError, ValueError, IndexError):
        return None
    return run, wait


def start(book: Path, feed: str, workdir: Path,
          pretrade_port: int | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    tok = workdir / "token"
    tok.write_text(TOKEN)
    if feed == "none":
        empty = workdir / "empty.jsonl"
        empty.write_text("")
        feed = f"replay:{empty}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--book", str(book), "--feed", feed,
         "--listen", f"127.0.0.1:{port}", "--token-file", str(tok), "--log-level", "warning",
         *(["--pretrade-listen", f"127.0.0.1:{pretrade_port}"] if pretrade_port else [])],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"monitor exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("monitor did not come up in 300 s")


async def one(port: int, body: bytes) -> tuple[float, int, bytes]:
    req = (f"POST /api/pretrade HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(req)
    data = await r.read()
    dt = time.perf_counter() - t0
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return dt, int(head.split()[1]) if head else 0, rest


async def load(port: int, bodies: list[bytes], rate: float, seconds: float) -> dict:
    n = int(rate * seconds)
    tasks = []
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(port, bodies[i % len(bodies)])))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - start
    lat = np.array([r[0] for r in results if not isinstance(r, BaseException)])
    statuses: dict[str, int] = {}
    refused = 0
    server_ms = []
    for r in results:
        if isinstance(r, BaseException):
            statuses["error"] = statuses.get("error", 0) + 1
            continue
        statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1
        if r[1] == 200:
            doc = orjson.loads(r[2])
            refused += not doc["allowed"]
            server_ms.append(doc["ms"])
    pct = lambda q: round(float(np.percentile(lat, q)) * 1e3, 3) if lat.size else None  # noqa: E731
    return {"requests": n, "wall_s": round(wall, 2), "achieved_rate": round(n / wall, 1),
            "statuses": statuses, "refused_share": round(refused / max(len(server_ms), 1), 3),
            "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "p99.9": pct(99.9),
                           "max": round(float(lat.max()) * 1e3, 3) if lat.size else None},
            "server_check_ms": {"p50": round(float(np.percentile(server_ms, 50)), 3),
                                "p99": round(float(np.percentile(server_ms, 99)), 3)}
            if server_ms else None}


def _request(port: int, body: bytes) -> bytes:
    return (f"POST /api/pretrade HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class KeepAlive:
    """N persistent connections, a reader thread each. Plain threads and blocking sockets, not
    asyncio: time.sleep wakes within tens of µs of the schedule, asyncio's timers only to the
    millisecond, which would add up to 1 ms of the client's own lateness to every figure."""

    def __init__(self, port: int, n: int):
        self.socks = []
        self.due: list[deque] = []
        self.got: list[list] = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks.append(s)
            self.due.append(deque())
            self.got.append([])
        self.threads = [threading.Thread(target=self._read, args=(k,), daemon=True)
                        for k in range(n)]
        for t in self.threads:
            t.start()

    def _read(self, k: int) -> None:
        """Answers of connection k, in order: (from schedule, from send, status, body)."""
        s, due, got = self.socks[k], self.due[k], self.got[k]
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                try:
                    data = s.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                continue
            head = buf[:end]
            n = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            while len(buf) < end + 4 + n:
                try:
                    data = s.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
            now = time.perf_counter()
            at, sent = due.popleft()
            got.append((now - at, now - sent, int(head[9:12]), buf[end + 4:end + 4 + n]))
            buf = buf[end + 4 + n:]

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def load_keepalive(port: int, ka: KeepAlive, bodies: list[bytes], rate: float,
                   seconds: float) -> dict:
    """Open loop over persistent connections: request i is due at start + i / rate, on
    connection i mod N, whether or not the answers before it have come back."""
    n = int(rate * seconds)
    reqs = [_request(port, bodies[i % len(bodies)]) for i in range(n)]
    for g in ka.got:
        g.clear()
    late = np.zeros(n)
    nc = len(ka.socks)
    start = time.perf_counter() + 0.01
    for i in range(n):
        at = start + i / rate
        while (d := at - time.perf_counter()) > 0:
            time.sleep(d)
        k = i % nc
        t = time.perf_counter()
        ka.due[k].append((at, t))
        ka.socks[k].sendall(reqs[i])
        late[i] = t - at
    deadline = time.perf_counter() + 30
    while sum(len(g) for g in ka.got) < n and time.perf_counter() < deadline:
        time.sleep(0.01)
    wall = time.perf_counter() - start
    results = [x for g in ka.got for x in g]
    missing = n - len(results)
    lat = np.array([x[0] for x in results])
    svc = np.array([x[1] for x in results])
    statuses: dict[str, int] = {"no answer": missing} if missing else {}
    refused, server_ms = 0, []
    for _, _, st, body in results:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
        if st == 200:
            doc = orjson.loads(body)
            refused += not doc["allowed"]
            server_ms.append(doc["ms"])

    def pcts(a):
        if not a.size:
            return None
        q = {k: round(float(np.percentile(a, v)) * 1e3, 3)
             for k, v in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))}
        return {**q, "max": round(float(a.max()) * 1e3, 3)}

    return {"requests": n, "wall_s": round(wall, 2), "achieved_rate": round(n / wall, 1),
            "statuses": statuses, "refused_share": round(refused / max(len(server_ms), 1), 3),
            "latency_ms": pcts(lat), "from_send_ms": pcts(svc),
            "client_send_late_ms": {"p50": round(float(np.percentile(late, 50)) * 1e3, 3),
                                    "p99": round(float(np.percentile(late, 99)) * 1e3, 3)},
            "server_check_ms": {"p50": round(float(np.percentile(server_ms, 50)), 3),
                                "p99": round(float(np.percentile(server_ms, 99)), 3)}
            if server_ms else None}


def _median_of(runs: list[dict]) -> dict:
    med = lambda xs: round(float(np.median(xs)), 3)  # noqa: E731
    keys = ("p50", "p90", "p99", "p99.9", "max")
    return {"runs": len(runs),
            "latency_ms": {k: med([r["latency_ms"][k] for r in runs]) for k in keys},
            "from_send_ms": ({k: med([r["from_send_ms"][k] for r in runs]) for k in keys}
                             if all(r.get("from_send_ms") for r in runs) else None),
            "latency_p99_ms_each": [r["latency_ms"]["p99"] for r in runs],
            "loadavg_1m_each": [r["loadavg_1m"] for r in runs],
            "server_runq_wait_us_per_check_each": [r.get("server_runq_wait_us_per_check")
                                                   for r in runs],
            "server_cpu_us_per_check": med([r.get("server_cpu_us_per_check") or 0
                                            for r in runs])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--securities", type=int, default=5_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="checks per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load not measured")
    ap.add_argument("--feed", default="none",
                    help='"none" (no ticks) or a monitor feed spec, e.g. "synthetic?rate=20000"')
    ap.add_argument("--keepalive", type=int, default=0, metavar="N",
                    help="N persistent connections to the keep-alive listener (0: one TCP "
                         "connection per check to the main port)")
    ap.add_argument("--main-port", action="store_true",
                    help="with --keepalive: connect to the main port, not a --pretrade-listen "
                         "listener")
    ap.add_argument("--repeat", type=int, default=1, help="measured runs on the same monitor")
    args = ap.parse_args(argv)
    if not (0 < args.rate <= 20_000 and 0 < args.seconds <= 600):
        ap.error("--rate must be in (0, 20000] and --seconds in (0, 600]")
    if not (0 <= args.keepalive <= 256 and 1 <= args.repeat <= 20):
        ap.error("--keepalive must be in [0, 256] and --repeat in [1, 20]")
    folder = book_folder(args.accounts, args.securities)
    book = load_book(folder)
    bodies = [orjson.dumps({"account_id": a, **act}) for a, act in random_actions(book, 20_000)]
    del book
    pport = free_port() if args.keepalive and not args.main_port else None
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(folder, args.feed, Path(tmp), pport)
        try:
            runs = asyncio.run(_measure(args, proc, port, pport or port, bodies))
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    if len(runs) > 1:
        print(json.dumps({"median": _median_of(runs), "accounts": args.accounts,
                          "rate": args.rate, "keepalive": args.keepalive}))
    return 0


async def _measure(args, proc, port, pport, bodies) -> list[dict]:
    conns = KeepAlive(pport, args.keepalive) if args.keepalive else None

    async def once(seconds):
        if conns is not None:
            return await asyncio.to_thread(load_keepalive, pport, conns, bodies, args.rate,
                                           seconds)
        return await load(port, bodies, args.rate, seconds)

    if args.warmup > 0:
        await once(args.warmup)
    runs = []
    for _ in range(args.repeat):
        load0 = os.getloadavg()[0]
        s0, c0 = sched_ns(proc.pid), sched_ns(os.getpid())
        out = await once(args.seconds)
        s1, c1 = sched_ns(proc.pid), sched_ns(os.getpid())
        if s0 is not None and s1 is not None and c0 is not None and c1 is not None:
            n = out["requests"]
            # the monitor's CPU time per check (its idle heartbeat included), and how long it
            # waited for a core while runnable: the contention the run met
            out["server_cpu_us_per_check"] = round((s1[0] - s0[0]) / n / 1e3, 1)
            out["server_runq_wait_us_per_check"] = round((s1[1] - s0[1]) / n / 1e3, 1)
            out["client_cpu_us_per_check"] = round((c1[0] - c0[0]) / n / 1e3, 1)
        out.update({"accounts": args.accounts, "securities": args.securities,
                    "feed": args.feed, "rate": args.rate, "keepalive": args.keepalive,
                    "port": "main" if args.main_port else "pretrade_listen",
                    "loadavg_1m_before": load0, "loadavg_1m": os.getloadavg()[0]})
        print(json.dumps(out), flush=True)
        runs.append(out)
    if conns is not None:
        conns.close()
    return runs


if __name__ == "__main__":
    raise SystemExit(main())
