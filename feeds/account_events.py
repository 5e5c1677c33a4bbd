"""Account-event sources: a JSONL file or a Redis stream (entry field `data`), each yielding
lists of decoded JSON objects in order. Validation against the book happens in the monitor
(monitor/core/account_events.py); here only undecodable or oversize messages are rejected:
counted (`malformed`) and handed to `on_reject` (the monitor dead-letters them).

Specs: `PATH` or `jsonl:PATH` (read once, to the end), `redis://[user:pass@]host:port/N/STREAM`
or `rediss://…` (live; resumes after the last id on reconnect; `?start=0` replays the stream).

Every source has a `status` (`feeds.status.SourceStatus`): a Redis source retries any error
(connection, WRONGTYPE, NOPERM...) with the backoff and reads on after the last id; a file that
cannot be read (gone, no permission, an I/O error) is retried the same way from the byte after
the last line consumed, and is `done` at its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from feeds.net import Backoff, mask_url, parse_params
from feeds.redisfeed import PARAMS, StreamReader, split_redis_spec
from feeds.status import SourceStatus

log = logging.getLogger(__name__)
MAX_EVENT_BYTES = 64 * 1024


class EventSource:
    def __init__(self, name: str, status: SourceStatus | None = None):
        self.name = name
        self.received = 0
        self.malformed = 0
        self.closed = False
        self.status = status if status is not None else SourceStatus(name, logger=log)
        # called with (reason, raw bytes, why) for each message refused here: the monitor
        # counts and dead-letters it (monitor/adapters/deadletter.py)
        self.on_reject = None

    def _refuse(self, reason: str, raw, why: str) -> None:
        self.malformed += 1
        if self.on_reject is not None:
            try:
                self.on_reject(reason, raw if raw is not None else b"", why)
            except Exception:  # noqa: BLE001 - reporting a bad message never stops the source
                log.exception("%s: reporting a refused account event failed", self.name)
        elif self.malformed <= 5 or self.malformed % 1000 == 0:
            log.warning("%s: %s account event (%d so far)", self.name, reason, self.malformed)

    def _decode(self, raw) -> object | None:
        self.received += 1
        if raw is None:
            self._refuse("malformed", raw, "the stream entry has no data field")
            return None
        if len(raw) > MAX_EVENT_BYTES:
            self._refuse("oversize", raw[:4096], f"{len(raw)} bytes, over {MAX_EVENT_BYTES}")
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._refuse("malformed", raw, "not valid JSON")
            return None

    def batches(self) -> AsyncIterator[list]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def aclose(self) -> None:
        self.closed = True
        self.status.finished()

    def stats(self) -> dict:
        st = self.status
        return {"name": self.name, "received": self.received, "malformed": self.malformed,
                "state": st.state, "error": st.last_error, "errors": dict(st.errors)}


class FileEvents(EventSource):
    def __init__(self, path: str, batch: int = 1000, *, backoff_initial: float = 0.1,
                 backoff_max: float = 5.0):
        super().__init__(f"events:{Path(path).name}")
        self.path = Path(path)
        self.batch = batch
        self.skip = 0  # lines already applied before a restart (monitor/snapshot.py)
        self.offset = 0  # bytes consumed: a retry after a read error goes on from here
        self.backoff = Backoff(backoff_initial, backoff_max)
        if not self.path.exists():
            raise ValueError(f"account events: no such file {path!r}")

    async def batches(self) -> AsyncIterator[list]:
        out: list = []
        while not self.closed:
            try:
                with self.path.open("rb") as f:
                    f.seek(self.offset)
                    self.status.ok()
                    for line in f:
                        if self.closed:
                            return
                        self.offset += len(line)
                        if not line.strip():
                            continue
                        if self.skip:
                            self.skip -= 1
                            self.received += 1
                            continue
                        ev = self._decode(line.rstrip(b"\r\n"))
                        if ev is not None:
                            out.append(ev)
                        if len(out) >= self.batch:
                            batch, out = out, []
                            yield batch
                            await asyncio.sleep(0)
                self.backoff.reset()
                break
            except Exception as exc:  # noqa: BLE001 - unreadable now: retried from offset
                self.status.failed(exc, "other", self.backoff.peek())
            if out:  # what was read before the error
                batch, out = out, []
                yield batch
            await asyncio.sleep(self.backoff.next())
        if out:
            yield out
        self.status.finished()


class RedisEvents(EventSource):
    def __init__(self, url: str, stream: str, **kw):
        name = f"events:{mask_url(url)}/{stream}"
        self.reader = StreamReader(url, stream, name=name, **kw)
        super().__init__(name, self.reader.status)

    async def batches(self) -> AsyncIterator[list]:
        async for payloads in self.reader.payloads():
            if self.closed:
                return
            evs = [ev for ev in map(self._decode, payloads) if ev is not None]
            if evs:
                yield evs

    async def aclose(self) -> None:
        self.closed = True
        self.reader.close()


def open_events(spec: str, *, cluster: bool = False) -> EventSource:
    """The account-event source of `spec`; `cluster`: a Redis stream on a Redis Cluster."""
    if spec.startswith(("redis://", "rediss://")):
        conn, stream, query = split_redis_spec(spec)
        params = parse_params(query, PARAMS, "account events")
        if cluster:
            params["cluster"] = True
        return RedisEvents(conn, stream, **params)
    if spec.startswith("jsonl:"):
        spec = spec[len("jsonl:"):]
    return FileEvents(spec)
