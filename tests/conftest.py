"""Shared fixtures: a real, private `redis-server` for integration tests, and `free_port()`.

The Redis server runs from the `redis-server` binary on a free loopback port (never the machine's
own 6379) with persistence off, in a temporary directory, and is killed at the end of the session.
Tests skip with a clear message when the binary is missing (`scripts/test` installs it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

DEFAULT_REDIS_PORT = 6379


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never the default Redis port)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != DEFAULT_REDIS_PORT:
            return port


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private redis-server process; `stop()` / `start()` keep the same port (data is lost:
    no persistence), `pause()` / `resume()` freeze it with SIGSTOP / SIGCONT."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None):
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.workdir / "redis.log"),
            "--daemonize", "no",
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.workdir / "redis.log")
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{tail}")
            if _ping(self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); connections drop at once."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.paused = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        if self.running and not self.paused:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.paused = False

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(64)


@pytest.fixture(scope="session")
def redis_server():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not found: install it (apt-get install redis-server; "
                    "scripts/test does this) to run the Redis integration tests")
    with tempfile.TemporaryDirectory(prefix="mm-redis-") as tmp:
        server = RedisServer(binary, Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture
def redis_fresh(redis_server):
    """The session's Redis server, running (restarted / resumed if a previous test left it
    stopped or paused) and empty."""
    redis_server.resume()
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    return redis_server


class RedisClusterNodes:
    """Three private redis-server processes with ``--cluster-enabled yes``, joined by
    ``redis-cli --cluster create`` (no replicas). Ports stay below 55536: each node's cluster
    bus listens on its port + 10000."""

    def __init__(self, binary: str, cli: str, workdir: Path, n: int = 3):
        self.binary, self.cli, self.workdir = binary, cli, workdir
        self.ports = _cluster_ports(n)
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        """Any node: the cluster client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 30.0) -> None:
        for port in self.ports:
            d = self.workdir / str(port)
            d.mkdir(parents=True, exist_ok=True)
            self.procs.append(subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(d), "--logfile", str(d / "redis.log"),
                 "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
                 "--cluster-node-timeout", "2000", "--daemonize", "no"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        while not all(_ping(p) for p in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster nodes did not come up")
            time.sleep(0.05)
        subprocess.run([self.cli, "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout)
        while b"cluster_state:ok" not in subprocess.run(
                [self.cli, "-p", str(self.ports[0]), "cluster", "info"],
                capture_output=True, timeout=10).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def flushall(self) -> None:
        for port in self.ports:
            subprocess.run([self.cli, "-p", str(port), "flushall"], capture_output=True,
                           timeout=10)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []


def _cluster_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p < 55536 and p not in ports and all(_free(q) for q in (p + 10000,)):
            ports.append(p)
    return ports


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="session")
def redis_cluster():
    """A real 3-node Redis Cluster on loopback for the session (emptied per test by
    `redis_cluster_fresh`)."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        pytest.skip("redis-server / redis-cli not found (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="mm-cluster-") as tmp:
        nodes = RedisClusterNodes(binary, cli, Path(tmp))
        try:
            nodes.start()
            yield nodes
        finally:
            nodes.kill()


@pytest.fixture
def redis_cluster_fresh(redis_cluster):
    redis_cluster.flushall()
    return redis_cluster


def start_monitor(args: list[str], cwd, timeout: float = 60.0):
    """`margin-monitor run ARGS --listen 127.0.0.1:<free port>` as a process, returned once
    /healthz answers: (process, port). The caller stops it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", *args, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"monitor did not come up: rc={proc.returncode}\n{err.decode()}")
        time.sleep(0.05)


async def raw_get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Raw HTTP/1.1 GET with the exact request target (no client-side path normalisation):
    (status, headers lower-cased with the first of repeated ones, body)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    w.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = await asyncio.wait_for(r.read(), 5)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
    hdrs: dict = {}
    for h in hdr_lines:
        k, _, v = h.partition(":")
        hdrs.setdefault(k.strip().lower(), v.strip())
    return int(status_line.split()[1]), hdrs, body
