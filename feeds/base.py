"""The feed adapter protocol and the adapters' shared bookkeeping (`feeds.registry.open_feed`
turns the CLI's `--feed SPEC` into one of them).

A feed yields `TickBatch`es of validated ticks:

    feed = open_feed("synthetic:crash?drop=0.07&minutes=5&speed=60", universe)
    async with feed:
        async for batch in feed.batches():
            ...

Finite feeds (replay, synthetic with `duration` / `ticks`) end; live feeds (websocket, Redis,
open-ended synthetic) run until `aclose()`. `stats()` is cheap and may be called at any time from
the same event loop.

Specs:

    synthetic[:SCENARIO][?k=v&...]     feeds.synthetic (scenarios: walk, crash, limit_down,
                                       suspension, bad_prints)
    replay:PATH[?speed=2&batch=1000]   feeds.replay (.jsonl/.ndjson[.gz], .csv, .parquet)
    ws://HOST:PORT/PATH, wss://...     feeds.wsfeed
    redis://[user:pass@]host:port/N/STREAM[?start=0&block_ms=1000&count=1000]
    rediss://...                       feeds.redisfeed (the last path element is the stream key,
                                       the one before it the database number)

Passwords never appear in names, reprs or logs (`feeds.net.mask_url`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from feeds.ticks import NEVER, TickBatch, TickParser


@dataclass(slots=True)
class FeedStats:
    name: str
    messages: int  # messages (or column blocks / synthetic batches) received
    ticks_received: int  # ticks that reached validation (accepted + rejected per tick)
    ticks_accepted: int
    rejected: dict[str, int]  # reason -> count (non-zero only)
    reconnects: int  # successful connections after the first (live feeds)
    connect_failures: int  # failed connection attempts and dropped connections
    last_message_ns: int  # wall clock ns of the last message, 0 if none yet
    last_ts: np.ndarray = field(repr=False)  # int64 last accepted ts per sec, -1 if never

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def staleness_s(self, now_ns: int | None = None) -> np.ndarray:
        """Seconds since the last accepted tick per security (by tick ts); NaN if never."""
        now = time.time_ns() if now_ns is None else now_ns
        out = (now - self.last_ts).astype(np.float64) / 1e9
        out[self.last_ts == NEVER] = np.nan
        return out

    def as_dict(self) -> dict:
        """JSON-friendly summary (no per-security arrays)."""
        ticked = self.last_ts != NEVER
        return {
            "name": self.name,
            "messages": self.messages,
            "ticks_received": self.ticks_received,
            "ticks_accepted": self.ticks_accepted,
            "rejected": dict(self.rejected),
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "last_message_ns": self.last_message_ns,
            "securities_ticked": int(ticked.sum()),
        }


@runtime_checkable
class Feed(Protocol):
    """What the monitor consumes. `batches()` is an async generator method."""

    name: str

    def batches(self) -> AsyncIterator[TickBatch]: ...

    async def aclose(self) -> None: ...

    def stats(self) -> FeedStats: ...


class BaseFeed:
    """Shared state of the adapters: a `TickParser`, reconnect counters, close flag."""

    name: str = "feed"

    def __init__(self, universe, *, name: str | None = None, max_message_bytes: int = 1 << 20,
                 parser: TickParser | None = None):
        self.universe = universe
        if name is not None:
            self.name = name
        self.parser = parser if parser is not None else TickParser(universe, max_message_bytes)
        self.parser.rejections.context = self.name
        self.reconnects = 0
        self.connect_failures = 0
        self.closed = False

    def batches(self) -> AsyncIterator[TickBatch]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[TickBatch]:
        return self.batches()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.parser.rejections.flush_log()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    def stats(self) -> FeedStats:
        p = self.parser
        return FeedStats(
            name=self.name,
            messages=p.messages,
            ticks_received=p.ticks_seen,
            ticks_accepted=p.ticks_accepted,
            rejected=p.rejections.as_dict(),
            reconnects=self.reconnects,
            connect_failures=self.connect_failures,
            last_message_ns=p.last_message_ns,
            last_ts=p.last_ts.copy(),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
