"""The feed adapter protocol, shared bookkeeping, and `open_feed` (the CLI's `--feed SPEC`).

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

Passwords never appear in names, reprs or logs: `mask_url` replaces them with `***`.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

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


class Backoff:
    """Capped exponential backoff with jitter: delay k is min(cap, initial·factor^k), scaled by a
    random factor in [1 − jitter, 1]."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0,
                 jitter: float = 0.5, rng: random.Random | None = None):
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{user}:***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_params(query: str, types: dict[str, type], where: str) -> dict:
    """`a=1&b=x` -> typed kwargs; unknown keys are an error (a typo must not pass silently)."""
    out = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in types:
            raise ValueError(f"{where}: unknown parameter {key!r} (known: {', '.join(types)})")
        t = types[key]
        try:
            if t is bool:
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                out[key] = low in ("1", "true", "yes", "on")
            else:
                out[key] = t(value)
        except ValueError:
            raise ValueError(f"{where}: bad value for {key!r}: {value!r}") from None
    return out


def open_feed(spec: str, universe, **kw) -> Feed:
    """A feed from a CLI spec (see the module docstring). `kw` are passed to the adapter and
    override parameters given in the spec."""
    if spec == "synthetic" or spec.startswith(("synthetic:", "synthetic?")):
        from feeds.synthetic import SyntheticFeed

        return SyntheticFeed.from_spec(spec[len("synthetic"):], universe, **kw)
    if spec.startswith("replay:"):
        from feeds.replay import ReplayFeed

        return ReplayFeed.from_spec(spec[len("replay:"):], universe, **kw)
    if spec.startswith(("ws://", "wss://")):
        from feeds.wsfeed import WebSocketFeed

        return WebSocketFeed(universe, spec, **kw)
    if spec.startswith(("redis://", "rediss://")):
        from feeds.redisfeed import RedisFeed

        return RedisFeed.from_spec(spec, universe, **kw)
    raise ValueError(
        f"unknown feed spec {mask_url(spec)!r}: expected synthetic[:scenario], replay:PATH, "
        "ws://, wss://, redis:// or rediss://"
    )
