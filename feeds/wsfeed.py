"""Websocket tick feed: a JSON tick message per frame (interfaces.md, Ticks).

A reader task keeps one connection open and queues the raw frames; `batches()` drains whatever is
queued (up to `max_batch_messages` frames) into one validated `TickBatch`, so a feed that sends
one tick per frame still reaches the monitor in batches. When the connection drops or cannot be
opened, the reader reconnects after a capped exponential backoff with jitter (reset once a
connection delivers a frame); `stats().reconnects` counts successful re-connections and
`connect_failures` counts failed attempts and dropped connections. Any error of the connection
(not only network errors: a refused handshake, a bad URI, anything unexpected) is retried the same
way, counted and logged rate-limited in `status` (`feeds.status.SourceStatus`: `waiting`, `live`,
`reconnecting`, `error`). A live feed never ends by itself: only `aclose()` (or
`reconnect=False` and a lost connection) ends `batches()`.

Frames longer than `max_message_bytes` are rejected as `oversize`; the websocket layer itself
closes the connection (and the feed reconnects) only for frames beyond 4x that size. Frames sent
while the feed was disconnected are lost unless the server replays them: websocket feeds have no
resume point (the Redis feed does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from feeds.base import BaseFeed
from feeds.net import Backoff, mask_url, url_secrets
from feeds.status import SourceStatus
from feeds.ticks import TickBatch

log = logging.getLogger(__name__)
_END = object()


class WebSocketFeed(BaseFeed):
    def __init__(self, universe, url: str, *, subscribe: str | bytes | None = None,
                 reconnect: bool = True, backoff_initial: float = 0.1, backoff_max: float = 5.0,
                 open_timeout: float = 5.0, ping_interval: float | None = 20.0,
                 queue_size: int = 10_000, max_batch_messages: int = 1000,
                 max_message_bytes: int = 1 << 20, proxy: str | bool | None = None,
                 name: str | None = None):
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"websocket feed: not a ws:// or wss:// URL: {mask_url(url)!r}")
        super().__init__(universe, name=name or mask_url(url),
                         max_message_bytes=max_message_bytes)
        self.url = url
        self.subscribe = subscribe
        self.reconnect = reconnect
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.max_batch_messages = max_batch_messages
        self.proxy = proxy
        self.status = SourceStatus(self.name, secrets=url_secrets(url), logger=log)
        self._connections = 0
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self._reader: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self.status.state == "live"

    async def _read_loop(self) -> None:
        q = self._queue
        try:
            while not self.closed:
                try:
                    async with connect(
                        self.url,
                        open_timeout=self.open_timeout,
                        ping_interval=self.ping_interval,
                        max_size=self.parser.max_message_bytes * 4,
                        proxy=self.proxy,
                    ) as ws:
                        self._connections += 1
                        if self._connections > 1:
                            self.reconnects += 1
                        self.status.ok()
                        log.info("%s: connected", self.name)
                        if self.subscribe is not None:
                            await ws.send(self.subscribe)
                        first = True
                        async for frame in ws:
                            if first:
                                self.backoff.reset()
                                first = False
                            await q.put(frame)
                    # the server closed the connection cleanly
                    self.connect_failures += 1
                    self.status.failed(ConnectionError("connection closed by the server"),
                                       "connection", self.backoff.peek())
                except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                    self.connect_failures += 1
                    self.status.failed(exc, "connection", self.backoff.peek())
                except InvalidURI as exc:  # cannot get better by waiting, but stays visible
                    self.connect_failures += 1
                    self.status.failed(ValueError(f"invalid URL ({exc.__class__.__name__})"),
                                       "other", self.backoff.peek())
                except Exception as exc:  # noqa: BLE001 - anything else: retried too
                    self.connect_failures += 1
                    self.status.failed(exc, "other", self.backoff.peek())
                if self.closed or not self.reconnect:
                    break
                await asyncio.sleep(self.backoff.next())
        finally:
            if self.closed or not self.reconnect:
                self.status.finished()
            if not self.closed:
                await q.put(_END)

    async def batches(self) -> AsyncIterator[TickBatch]:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop(), name=f"wsfeed {self.name}")
        q = self._queue
        parse_many = self.parser.parse_many
        try:
            while not self.closed:
                item = await q.get()
                frames = []
                stop = None
                while True:
                    if item is _END or isinstance(item, BaseException):
                        stop = item
                        break
                    frames.append(item)
                    if len(frames) >= self.max_batch_messages or q.empty():
                        break
                    item = q.get_nowait()
                if frames:
                    batch = parse_many(frames, time.time_ns())
                    if len(batch):
                        yield batch
                if isinstance(stop, BaseException):
                    raise stop
                if stop is _END:
                    return
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self.closed:
            return
        await super().aclose()
        task, self._reader = self._reader, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        # wake a consumer blocked in batches()
        while True:
            try:
                self._queue.put_nowait(_END)
                break
            except asyncio.QueueFull:
                self._queue.get_nowait()

