"""Rejected account events: counted per reason, sampled in the log, kept as dead letters.

Every account event the monitor cannot apply — undecodable, invalid, out of range, or one whose
application raised an unexpected exception (`internal_error`) — goes through `DeadLetters.reject`
on the event loop, which never blocks and never raises:

- `counts[reason]` (and the `on_count` callback: `mm_account_events_rejected_total{reason}`);
- at most one WARNING per reason per `log_interval_s` (10 s), with the count since the last
  line and one sample; an internal error's traceback is logged once per distinct place;
- a dead letter `{reason, error, event | raw, source, ts}` queued for the writer task: XADD to
  the Redis stream `<events stream>:dead` (field `data`, `MAXLEN ~ maxlen`) when the events come
  from a Redis stream, else (or while that Redis fails) a line appended to the JSONL file
  `<spill_dir>/account-events.dead.jsonl` (capped at `max_file_bytes`; beyond it dead letters
  are only counted, as `dropped`).

The source has already moved past the event: a dead letter is for a person to look at, never
re-read by the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import orjson

log = logging.getLogger("monitor.account_events")

MAX_RAW_CHARS = 65_536  # of an event's text kept in its dead letter
FILE_NAME = "account-events.dead.jsonl"


def _encode_event(ev: object) -> str:
    """The event as JSON text, whatever it holds (integers beyond 64 bits included)."""
    if isinstance(ev, (bytes, bytearray, memoryview)):
        return bytes(ev)[:MAX_RAW_CHARS].decode("utf-8", "replace")
    try:
        text = orjson.dumps(ev, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
        import json

        try:
            text = json.dumps(ev, default=repr)
        except (TypeError, ValueError):
            text = repr(ev)
    return text[:MAX_RAW_CHARS]


class DeadLetters:
    def __init__(self, *, redis_url: str | None = None, stream: str | None = None,
                 spill_dir: str | Path = "spill", maxlen: int = 100_000,
                 log_interval_s: float = 10.0, max_file_bytes: int = 256 * 2**20,
                 queue_max: int = 100_000, on_count: Callable[[str], None] | None = None,
                 cluster: bool = False):
        self.redis_url = redis_url if stream else None
        self.cluster = cluster  # a Redis Cluster node (redis-py's cluster client)
        self.stream = stream
        self.path = Path(spill_dir) / FILE_NAME
        self.maxlen = int(maxlen)
        self.log_interval_s = float(log_interval_s)
        self.max_file_bytes = int(max_file_bytes)
        self.on_count = on_count
        self.counts: Counter = Counter()
        self.written = {"redis": 0, "file": 0}
        self.dropped = 0  # dead letters not kept (queue or file full); still counted
        self._queue: deque[dict] = deque()
        self._queue_max = int(queue_max)
        self._wake = asyncio.Event()
        self._unlogged: Counter = Counter()
        self._last_log: dict[str, float] = {}
        self._traced: set[tuple] = set()
        self._client = None
        self._redis_retry_at = 0.0
        self._closed = False

    # ------------------------------------------------------------------ on the event loop
    def reject(self, reason: str, error: str, event: object, source: str = "") -> None:
        """Count, log (sampled) and queue the dead letter of one refused event."""
        self.counts[reason] += 1
        self._unlogged[reason] += 1
        if self.on_count is not None:
            with contextlib.suppress(Exception):
                self.on_count(reason)
        key = "raw" if isinstance(event, (bytes, bytearray, memoryview)) else "event"
        text = _encode_event(event)
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e18) >= self.log_interval_s:
            n, self._unlogged[reason] = self._unlogged[reason], 0
            self._last_log[reason] = now
            log.warning("account event rejected (%s): %s; %d since the last line, %d in all; "
                        "event: %s", reason, error, n, self.counts[reason], text[:300])
        if len(self._queue) >= self._queue_max:
            self.dropped += 1
            return
        self._queue.append({"reason": reason, "error": str(error)[:1000], key: text,
                            "source": source, "ts": time.time_ns()})
        self._wake.set()

    def internal(self, exc: BaseException, event: object, source: str = "") -> None:
        """An unexpected exception while applying one event: its traceback once per place
        (type, file, line), then as any reject under `internal_error`."""
        tb = traceback.extract_tb(exc.__traceback__)
        where = (type(exc).__name__, tb[-1].filename, tb[-1].lineno) if tb else (
            type(exc).__name__,)
        if where not in self._traced:
            self._traced.add(where)
            log.error("account event failed with an unexpected %s (dead-lettered; the monitor "
                      "goes on)", type(exc).__name__, exc_info=exc)
        self.reject("internal_error", f"{type(exc).__name__}: {exc}", event, source)

    def stats(self) -> dict:
        return {"rejected": dict(self.counts), "dead_letters": dict(self.written),
                "dropped": self.dropped, "queued": len(self._queue),
                "where": f"redis stream {self.stream}" if self.redis_url else str(self.path)}

    # ------------------------------------------------------------------ the writer task
    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._drain()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a writer failure must never reach the monitor
            log.exception("dead-letter writer failed; what is queued goes to %s", self.path)

    async def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
            if self.redis_url and time.monotonic() >= self._redis_retry_at:
                try:
                    await asyncio.wait_for(self._xadd(batch), 10)
                    self.written["redis"] += len(batch)
                    continue
                except asyncio.CancelledError:
                    self._to_file(batch)
                    raise
                except Exception as e:  # noqa: BLE001 - Redis down: the file keeps them
                    self._redis_retry_at = time.monotonic() + 5.0
                    log.warning("dead letters: Redis stream %s unwritable (%s); writing to %s",
                                self.stream, type(e).__name__, self.path)
                    await self._drop_client()
            self._to_file(batch)

    async def _xadd(self, batch: list[dict]) -> None:
        if self._client is None:
            from feeds.net import redis_client

            self._client = redis_client(self.redis_url, cluster=self.cluster,
                                        socket_connect_timeout=2, socket_timeout=5)
        pipe = self._client.pipeline(transaction=False)
        for d in batch:
            fields = {k: (v if isinstance(v, (str, bytes)) else str(v)) for k, v in d.items()}
            fields["data"] = orjson.dumps(d)
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        await pipe.execute()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    def _to_file(self, batch: list[dict]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = self.path.stat().st_size if self.path.exists() else 0
            lines = []
            for d in batch:
                line = orjson.dumps(d) + b"\n"
                if size + len(line) > self.max_file_bytes:
                    self.dropped += 1
                    continue
                size += len(line)
                lines.append(line)
            if lines:
                with open(self.path, "ab") as f:
                    f.write(b"".join(lines))
                self.written["file"] += len(lines)
        except OSError as e:
            self.dropped += len(batch)
            log.error("dead letters: cannot write %s: %s", self.path, e.strerror or e)

    async def aclose(self) -> None:
        """Write what is queued (Redis if it answers, else the file), then close."""
        if self._closed:
            return
        self._closed = True
        for reason, n in self._unlogged.items():  # what the sampling kept out of the log
            if n:
                log.warning("account events rejected (%s): %d since the last line, %d in all",
                            reason, n, self.counts[reason])
        self._unlogged.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._drain(), 15)
        if self._queue:
            self._to_file(list(self._queue))
            self._queue.clear()
        await self._drop_client()
