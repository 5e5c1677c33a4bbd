"""Issue 7, faults: a stalled and a flooding websocket client against a running monitor (a
real process playing a synthetic crash): the flooder is cut off and counted, and meanwhile a
well-behaved client still gets every event in order and the tick path keeps cycling. (That a
stalled client is dropped once its queue fills is tests/web/test_server.py's; filling the kernel's
socket buffers here would take far more events than a test should wait for.)"""

import asyncio
import json
import socket
import time
import urllib.request

import orjson
import pytest
from conftest import start_monitor
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from monitor.book import synthetic as synthbook

TOKEN = "abuse-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEED = ("synthetic:crash?drop=0.12&minutes=5&at=0.1&speed=60&duration=12&rate=4000&batch_ms=50"
        "&seed=5")


def _summary(port: int) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/summary", headers=AUTH)
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def _metrics(port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=AUTH)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


@pytest.fixture
def monitor(tmp_path):
    tables = synthbook.generate(4000, 300, seed=11)
    synthbook.write_book(tables, tmp_path / "book")
    (tmp_path / "token").write_text(TOKEN)
    proc, port = start_monitor(["--book", str(tmp_path / "book"), "--feed", FEED,
                                "--token-file", str(tmp_path / "token")], tmp_path)
    yield port
    proc.kill()
    proc.wait(10)


async def test_a_stalled_and_a_flooding_client_do_not_hold_up_the_others_or_the_tick_path(monitor):
    port = monitor
    url = f"ws://127.0.0.1:{port}/ws/alerts"
    good = await connect(url, additional_headers=AUTH, max_size=None)
    # stalled: a raw websocket handshake, then it never reads again (a 4 KB receive buffer,
    # so the kernel does not absorb the backlog for it)
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall((f"GET /ws/alerts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
                    .encode())
    assert stalled.recv(12) == b"HTTP/1.1 101"
    flooder = await connect(url, additional_headers=AUTH)
    seqs: list[int] = []

    async def read_good():
        async for raw in good:
            e = orjson.loads(raw)
            if "seq" in e and e.get("kind") not in ("HEARTBEAT", "SNAPSHOT"):
                seqs.append(e["seq"])

    async def flood():
        async def drain():  # it reads what it is sent: it floods, it is not slow
            async for _ in flooder:
                pass
        draining = asyncio.create_task(drain())
        try:
            while True:  # subscription messages as fast as the socket takes them
                await flooder.send('{"tiers": ["MARGIN_CALL", "FORCED_LIQUIDATION"]}')
                await asyncio.sleep(0)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None
        finally:
            draining.cancel()

    reader = asyncio.create_task(read_good())
    flooding = asyncio.create_task(flood())
    cycles = []
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end:
        cycles.append(_summary(port)["cycles"])
        await asyncio.sleep(0.5)
    # the flooder was cut off, the tick path never stopped, the good client saw every event
    assert await asyncio.wait_for(flooding, 10) == 1008  # policy violation: too many messages
    assert all(b > a for a, b in zip(cycles, cycles[1:], strict=False)), cycles
    assert len(seqs) > 50 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # the flooder was refused, and counted
    metrics = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
               for ln in _metrics(port).splitlines() if ln and not ln.startswith("#")}
    assert metrics.get('mm_server_refused_total{reason="flood"}', 0) >= 1, metrics
    stalled.close()
    reader.cancel()
    await good.close()
