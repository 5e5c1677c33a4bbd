"""Where orders go: the pluggable hooks (docs/liquidation.md, "Hooks").

Each hook receives the orders of one plan at once (the trigger's `event_id` is the idempotency
key and is in every order). A hook call that returns is a success; `PermanentHookError` means
"do not retry" (the plan goes to the dead-letter stream at once); any other exception is retried
with backoff by the worker.

- ``redis:STREAM``: one stream entry per order (field ``data``), on the worker's own Redis, in
  the same MULTI/EXEC transaction that records the event as done and acknowledges it: exactly
  once, no duplicates, as long as Redis keeps what it acknowledged.
- ``http://…`` / ``https://…``: a JSON POST of the list of orders, signed with HMAC-SHA256
  (``X-Margin-Signature``), ``Idempotency-Key: <event_id>``; 2xx (or 409) is success. One
  pooled keep-alive ``httpx`` client per hook (outbound.py).
- ``python:package.module:function``: ``function(orders)``; a plain function runs in a thread,
  an ``async def`` on the worker's event loop.
- dry run (``--dry-run``): the orders are logged, nothing is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import inspect
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from feeds.net import mask_url
from monitor.errors import HookError, OutboundError, PermanentHookError
from monitor.liquidator.outbound import HttpSettings, OutboundClient, split_userinfo

log = logging.getLogger("monitor.liquidator")

SIGNATURE_HEADER = "X-Margin-Signature"
TIMESTAMP_HEADER = "X-Margin-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
ORDERS_MAXLEN = 1_000_000
REPLY_LIMIT = 64 * 1024  # bytes of a webhook's answer read (the status is what counts)


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Margin-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``"<ts>." + body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, str(int(timestamp)).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str | bytes, timestamp: str | int, body: bytes, signature: str,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """For receivers: True when ``signature`` is ours for this body and the timestamp is within
    ``tolerance_s`` of ``now`` (a replayed old request fails)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), str(signature).strip())


class Hook:
    """Base: `send(orders, key)`; transactional hooks (`add_to`) instead add their writes to the
    worker's completion transaction."""

    transactional = False
    name = "hook"

    async def send(self, orders: list[dict], key: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def add_to(self, pipe: Any, orders: list[dict]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class RedisStreamHook(Hook):
    transactional = True

    def __init__(self, stream: str, maxlen: int | None = ORDERS_MAXLEN):
        if not stream:
            raise ValueError("redis hook: no stream key (redis:STREAM)")
        self.stream = stream
        self.maxlen = maxlen
        self.name = f"redis:{stream}"

    def add_to(self, pipe: Any, orders: list[dict]) -> None:
        for o in orders:
            pipe.xadd(self.stream, {b"data": orjson.dumps(o)}, maxlen=self.maxlen,
                      approximate=True)


class WebhookHook(Hook):
    """JSON POST of the list of orders; one attempt per `send` (the worker retries). One pooled
    keep-alive client for the hook's life (outbound.py); `aclose` closes it.

    ``http`` holds the timeouts, TLS files and pool size; without it every timeout is
    ``timeout`` (seconds)."""

    def __init__(self, url: str, secret: str, timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None, *,
                 http: HttpSettings | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook: not an http(s) URL: {mask_url(url)!r}")
        if not secret or len(secret) < 16:
            raise ValueError("webhook: a signing secret of at least 16 characters is required "
                             "(webhook_secret_file or MARGIN_LIQ_WEBHOOK_SECRET)")
        self._secret = secret.encode()
        self.name = mask_url(url)
        # userinfo becomes Basic auth; the URL we keep and hand to httpx has none
        self.url, auth = split_userinfo(url)
        try:
            httpx.URL(self.url)
        except httpx.InvalidURL as e:
            raise ValueError(f"webhook: not a usable URL: {self.name!r}: {e}") from None
        self.http = http if http is not None else HttpSettings.uniform(timeout)
        self.timeout = self.http.read_timeout
        self._client = OutboundClient(self.http, what="webhook", auth=auth, verify=ssl_context)

    def request(self, orders: list[dict], key: str, now: float | None = None
                ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one attempt (the body is the same on every attempt; the
        Basic credentials of the URL are added by the client)."""
        body = orjson.dumps(orders)
        ts = int(time.time() if now is None else now)
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key,
                   TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(self._secret, ts, body),
                   "User-Agent": "margin-monitor-liquidator/1"}
        return body, headers

    async def send(self, orders: list[dict], key: str) -> None:
        body, headers = self.request(orders, key)
        try:
            status, reply = await self._client.request("POST", self.url, headers=headers,
                                                       content=body, limit=REPLY_LIMIT)
        except OutboundError as e:  # no answer (connect, TLS, timeout, reset): retried
            raise HookError(f"{self.name}: {e}") from None
        if 200 <= status < 300 or status == 409:  # 409: the receiver already has this key
            return
        text = reply[:200].decode("utf-8", "replace").strip()
        msg = f"{self.name}: HTTP {status}" + (f": {text}" if text else "")
        if status in (408, 425, 429) or status >= 500:
            raise HookError(msg)
        raise PermanentHookError(msg)

    async def aclose(self) -> None:
        await self._client.aclose()


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function."""
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise ValueError(f"{what}: expected python:package.module:function, got {spec!r}")
    try:
        obj: Any = importlib.import_module(mod)
        for part in fn.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what}: cannot load {spec!r}: {e}") from None
    if not callable(obj):
        raise ValueError(f"{what}: {spec!r} is not callable")
    return obj


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Await an ``async def``; run a plain function in a thread (it may block)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    res = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(res):
        res = await res
    return res


class PythonHook(Hook):
    def __init__(self, spec: str):
        self.fn = load_callable(spec, "python hook")
        self.name = f"python:{spec}"

    async def send(self, orders: list[dict], key: str) -> None:
        try:
            await call_maybe_async(self.fn, orders)
        except HookError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the hook is retried
            raise HookError(f"{self.name}: {type(e).__name__}: {e}") from e


class DryRunHook(Hook):
    def __init__(self, inner: str):
        self.name = f"dry-run (instead of {inner})"

    async def send(self, orders: list[dict], key: str) -> None:
        for o in orders:
            log.warning("DRY RUN order %s: %s %s %d @ %s (account %s, %s)", o["order_id"],
                        o["side"], o["symbol"], o["qty"], o["price"], o["account_id"],
                        o["reason"])


def open_hook(spec: str, *, secret: str = "", timeout: float = 5.0,
              dry_run: bool = False, http: HttpSettings | None = None) -> Hook:
    """A hook from its spec (``redis:STREAM``, ``http(s)://…``, ``python:mod:fn``); with
    ``dry_run`` the spec is only checked and the orders are logged instead."""
    is_redis = spec.startswith("redis:") and not spec.startswith("redis://")
    if not (is_redis or spec.startswith(("http://", "https://", "python:"))):
        raise ValueError(f"hook: expected redis:STREAM, http(s)://URL or "
                         f"python:package.module:function, got {mask_url(spec)!r}")
    if dry_run:
        return DryRunHook(mask_url(spec))
    if is_redis:
        return RedisStreamHook(spec[len("redis:"):])
    if spec.startswith("python:"):
        return PythonHook(spec[len("python:"):])
    return WebhookHook(spec, secret, timeout, http=http)
