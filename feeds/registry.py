"""`open_feed`: a feed adapter from the CLI's `--feed SPEC` (specs in `feeds.base`).

One row per kind of venue: adding a venue is adding its module and a row here."""

from __future__ import annotations

from feeds.base import Feed
from feeds.net import mask_url
from feeds.redisfeed import RedisFeed
from feeds.replay import ReplayFeed
from feeds.synthetic import SyntheticFeed
from feeds.wsfeed import WebSocketFeed


def _synthetic(spec, universe, **kw):
    return SyntheticFeed.from_spec(spec[len("synthetic"):], universe, **kw)


def _replay(spec, universe, **kw):
    return ReplayFeed.from_spec(spec[len("replay:"):], universe, **kw)


def _websocket(spec, universe, **kw):
    return WebSocketFeed(universe, spec, **kw)


def _redis(spec, universe, **kw):
    return RedisFeed.from_spec(spec, universe, **kw)


# (spec prefixes, factory); a bare "synthetic" is the default synthetic walk
ADAPTERS = (
    (("synthetic:", "synthetic?"), _synthetic),
    (("replay:",), _replay),
    (("ws://", "wss://"), _websocket),
    (("redis://", "rediss://"), _redis),
)


KINDS = (("synthetic", "synthetic"), ("replay:", "replay"), ("ws://", "websocket"),
         ("wss://", "websocket"), ("redis://", "redis"), ("rediss://", "redis"))


def feed_kind(spec: str) -> str:
    """`synthetic` (simulated prices), `replay`, `websocket`, `redis`, or "" (not a spec)."""
    return next((kind for prefix, kind in KINDS if spec.startswith(prefix)), "")


def open_feed(spec: str, universe, **kw) -> Feed:
    """A feed from a CLI spec. `kw` are passed to the adapter and override parameters given in
    the spec."""
    if spec == "synthetic":
        return _synthetic(spec, universe, **kw)
    for prefixes, factory in ADAPTERS:
        if spec.startswith(prefixes):
            return factory(spec, universe, **kw)
    raise ValueError(
        f"unknown feed spec {mask_url(spec)!r}: expected synthetic[:scenario], replay:PATH, "
        "ws://, wss://, redis:// or rediss://"
    )
