"""Redis Streams tick feed: `XREAD BLOCK` on one stream; each entry's field `data` holds a JSON tick
message (interfaces.md, Ticks).

Spec: `redis://[user:pass@]host:port/N/STREAM[?start=$&block_ms=1000&count=1000&field=data]`
(`rediss://` for TLS). The last path element is the stream key (URL-quoted if needed), the one
before it the database number (default 0).

Where to start: `start="$"` (default) means "entries added from now on", resolved to the stream's
current last id when the feed first connects; `start=0` replays the whole stream; any entry id
works. The feed remembers the id of the last entry it read and, after a lost connection, resumes
right after it (no loss, no duplicates), reconnecting with a capped exponential backoff with
jitter. Every other error is retried the same way, not only connection errors: a command the
server refuses (WRONGTYPE when the key is not a stream, NOPERM from an ACL, NOAUTH, OOM) puts the
feed in state `error` with the redacted message (`feeds.status.SourceStatus`), logged
rate-limited, and the feed reads on from the last id once the server accepts the read again.
Entries that the server itself lost (a restart without persistence, MAXLEN trimming)
cannot be recovered, and entries re-added with ids at or below the last id read are not re-read.

An entry without the `data` field counts as one `malformed` message. `aclose()` from another task
takes effect within `block_ms`; cancelling the consuming task takes effect at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from urllib.parse import unquote, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from feeds.base import BaseFeed
from feeds.net import Backoff, mask_url, parse_params, redis_client, url_secrets
from feeds.status import SourceStatus, redis_error_kind
from feeds.ticks import TickBatch

log = logging.getLogger(__name__)
PARAMS = {"start": str, "block_ms": int, "count": int, "field": str, "cluster": bool}


def split_redis_spec(spec: str) -> tuple[str, str, str]:
    """`redis://u:p@h:6379/2/ticks?count=10` -> ("redis://u:p@h:6379/2", "ticks", "count=10")."""
    parts = urlsplit(spec)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis feed: not a redis:// or rediss:// URL: {mask_url(spec)!r}")
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError(f"redis feed: no stream key in {mask_url(spec)!r} "
                         "(expected redis://host:port/N/STREAM)")
    stream = unquote(segments[-1])
    db = segments[-2] if len(segments) >= 2 else "0"
    if not db.isdigit():
        raise ValueError(f"redis feed: database must be a number, got {db!r}")
    conn = urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))
    return conn, stream, parts.query


class StreamReader:
    """XREAD BLOCK over one stream with resume-after-last-id and capped backoff; yields the
    `field` payload of each entry (None when an entry lacks it). Shared by the tick feed and
    the account-event source."""

    def __init__(self, url: str, stream: str, *, start: str = "$", block_ms: int = 1000,
                 count: int = 50, field: str = "data", backoff_initial: float = 0.1,
                 backoff_max: float = 5.0, connect_timeout: float = 2.0,
                 socket_timeout: float | None = None, name: str = "", cluster: bool = False):
        self.url = url
        self.cluster = cluster  # a Redis Cluster node (redis-py's cluster client)
        self.stream = stream
        self.start = start
        self.block_ms = int(block_ms)
        self.count = int(count)
        self.field = field.encode()
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.connect_timeout = connect_timeout
        # a blocked XREAD must not hit the socket timeout
        self.socket_timeout = socket_timeout or self.block_ms / 1000.0 + 10.0
        self.name = name or f"{mask_url(url)}/{stream}"
        self.last_id: bytes | None = None
        self.closed = False
        self.reconnects = 0
        self.connect_failures = 0  # failed attempts and dropped connections (any error)
        self.status = SourceStatus(self.name, secrets=url_secrets(url), logger=log)
        self._connections = 0

    @property
    def connected(self) -> bool:
        return self.status.state == "live"

    def close(self) -> None:
        """Stop reading (within `block_ms`; cancelling the consumer takes effect at once)."""
        self.closed = True
        self.status.finished()

    def _client(self) -> Redis:
        return redis_client(
            self.url, cluster=self.cluster,
            decode_responses=False,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.socket_timeout,
            retry=Retry(NoBackoff(), 0),  # the reader does its own reconnecting
            retry_on_timeout=False,
        )

    async def _resolve_start(self, client: Redis) -> bytes:
        if self.start != "$":
            return b"0-0" if self.start in ("0", "0-0") else self.start.encode()
        last = await client.xrevrange(self.stream, count=1)
        return last[0][0] if last else b"0-0"

    async def payloads(self) -> AsyncIterator[list]:
        """Lists of payloads, in stream order, until `closed`. Never raises for a Redis or
        network error: every one is counted, logged and retried with the backoff."""
        fkey = self.field
        try:
            while not self.closed:
                client = None
                try:
                    client = self._client()
                    await client.ping()
                    self._connections += 1
                    if self._connections > 1:
                        self.reconnects += 1
                        log.info("%s: reconnected, resuming after %s", self.name,
                                 self.last_id.decode() if self.last_id else "start")
                    if self.last_id is None:
                        self.last_id = await self._resolve_start(client)
                    block = None  # the first read after connecting does not wait: it proves the
                    while not self.closed:  # stream is readable (live) at once
                        resp = await client.xread({self.stream: self.last_id},
                                                  count=self.count, block=block)
                        block = self.block_ms
                        self.status.ok()
                        self.backoff.reset()
                        if not resp:
                            continue
                        entries = (resp[0][1] if isinstance(resp, list)
                                   else next(iter(resp.values()))[0])
                        if not entries:
                            continue
                        self.last_id = entries[-1][0]
                        yield [fields.get(fkey) for _id, fields in entries]
                except Exception as exc:  # noqa: BLE001 - any error: counted, logged, retried
                    self.connect_failures += 1
                    if not self.closed:
                        self.status.failed(exc, redis_error_kind(exc), self.backoff.peek())
                finally:
                    if client is not None:
                        try:
                            await client.aclose()
                        except Exception:  # already broken; nothing to release
                            pass
                if self.closed:
                    break
                await asyncio.sleep(self.backoff.next())
        finally:
            if self.closed:
                self.status.finished()


class RedisFeed(BaseFeed):
    def __init__(self, universe, url: str, stream: str, *, start: str = "$",
                 block_ms: int = 1000, count: int = 50, field: str = "data",
                 backoff_initial: float = 0.1, backoff_max: float = 5.0,
                 connect_timeout: float = 2.0, socket_timeout: float | None = None,
                 name: str | None = None, max_message_bytes: int = 1 << 20,
                 cluster: bool = False):
        super().__init__(universe, name=name or f"{mask_url(url)}/{stream}",
                         max_message_bytes=max_message_bytes)
        self.reader = StreamReader(url, stream, start=start, block_ms=block_ms, count=count,
                                   field=field, backoff_initial=backoff_initial,
                                   backoff_max=backoff_max, connect_timeout=connect_timeout,
                                   socket_timeout=socket_timeout, name=self.name,
                                   cluster=cluster)
        self.url = url
        self.stream = stream

    @property
    def last_id(self) -> bytes | None:
        return self.reader.last_id

    @property
    def connected(self) -> bool:
        return self.reader.connected

    @property
    def status(self) -> SourceStatus:
        return self.reader.status

    def stats(self):
        return replace(super().stats(), reconnects=self.reader.reconnects,
                       connect_failures=self.reader.connect_failures)

    @classmethod
    def from_spec(cls, spec: str, universe, **kw) -> RedisFeed:
        conn, stream, query = split_redis_spec(spec)
        params = parse_params(query, PARAMS, "redis feed")
        params.update(kw)
        return cls(universe, conn, stream, **params)

    def __repr__(self) -> str:
        return f"<RedisFeed {self.name} last_id={self.last_id!r}>"

    async def aclose(self) -> None:
        self.reader.close()
        await super().aclose()

    async def batches(self) -> AsyncIterator[TickBatch]:
        try:
            async for payloads in self.reader.payloads():
                if self.closed:
                    break
                batch = self.parser.parse_many(payloads, time.time_ns())
                if len(batch):
                    yield batch
        finally:
            await self.aclose()
