"""Network helpers every adapter shares (feeds here, and the monitor's Redis, HTTP and liquidator
clients): the one retry backoff, the one URL masking and secret redaction, and spec parameters.

Passwords never appear in names, reprs or logs: `mask_url` replaces them with `***` and
`redact` removes the literal secrets a URL carries from any text about to be logged."""

from __future__ import annotations

import random
import re
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit


class Backoff:
    """Capped exponential backoff with jitter: delay k is min(cap, initial·factor^k), scaled by a
    random factor in [1 − jitter, 1]. `reset()` after a success."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0,
                 jitter: float = 0.5, rng: random.Random | None = None):
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self.rng = rng or random.Random()
        self.attempt = 0

    def peek(self) -> float:
        """The next delay before jitter (for a log line), without taking it."""
        return min(self.maximum, self.initial * self.factor ** min(self.attempt, 64))

    def next(self) -> float:
        base = self.peek()
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (userinfo and ``password=`` query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The literal secrets a URL carries (password, percent-decoded too), longest first."""
    out: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            out += [parts.password, unquote(parts.password)]
        for m in re.finditer(r"(?i)(?:^|&)password=([^&]*)", parts.query):
            out += [m.group(1), unquote(m.group(1))]
    except ValueError:
        pass
    return sorted({s for s in out if s}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret of `secrets` (from `url_secrets`) replaced by ``***``."""
    for s in secrets:
        text = text.replace(s, "***")
    return text


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


def redis_client(url: str, *, cluster: bool = False, **opts):
    """An asyncio Redis client for `url`: redis-py's cluster client when `cluster` (the URL is
    any node of a Redis Cluster; it discovers the others and follows MOVED / ASK), else a plain
    one. `opts` are the connection options of both (timeouts, decode_responses, retry, ...);
    those only the plain client knows are dropped for the cluster one."""
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        for k in ("retry_on_timeout", "single_connection_client"):
            opts.pop(k, None)
        return RedisCluster.from_url(url, **opts)
    from redis.asyncio import Redis

    return Redis.from_url(url, **opts)
