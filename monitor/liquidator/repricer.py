"""Re-pricing: a fresh plan for an account when the trigger's plan is too old to send.

A repricer is any object with ``async reprice(event) -> plan``, where ``plan`` is
``{"orders": [{symbol, side, qty, price, value}], "ratio_after", "residual", "priced_ns"}``
(optionally ``tier``, ``liquidation_status``, ``shortfall`` of the account now). Empty
``orders`` with ``residual`` 0 means the account no longer needs liquidating.

- ``http(s)://MONITOR:PORT`` (the default kind): asks the running monitor,
  ``GET /api/account?id=<account_id>`` with ``Authorization: Bearer <token>``; the monitor
  answers with the account now, including ``plan`` computed by the kernels at the current
  prices (docs/liquidation.md, "Re-pricing", states the contract).
- ``python:package.module:function``: ``function(event) -> plan`` (sync or ``async def``).
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import time
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from feeds.net import mask_url
from monitor.errors import PermanentRepriceError, RepriceError
from monitor.liquidator.hooks import call_maybe_async, load_callable
from monitor.liquidator.orders import BadEvent, check_plan

ACCOUNT_PATH = "/api/account"


class Repricer:
    name = "repricer"

    async def reprice(self, event: dict) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def _checked(plan: Any, where: str) -> dict:
    try:
        check_plan(plan)
    except BadEvent as e:
        raise RepriceError(f"{where}: {e}") from None
    return plan


class HttpRepricer(Repricer):
    def __init__(self, base_url: str, token: str, timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"repricer: not an http(s) URL: {mask_url(base_url)!r}")
        if not token:
            raise ValueError("repricer: the monitor's token is required (repricer_token_file "
                             "or MARGIN_MONITOR_TOKEN)")
        self._token = token
        self.name = mask_url(base_url)
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._ssl = ssl_context if ssl_context is not None else (
            ssl.create_default_context() if self._https else None)

    async def reprice(self, event: dict) -> dict:
        account = event["account_id"]
        path = f"{self._base}{ACCOUNT_PATH}?id={quote(account, safe='')}"
        try:
            status, body = await asyncio.to_thread(self._get, path)
        except (OSError, http.client.HTTPException) as e:
            raise RepriceError(f"{self.name}: {type(e).__name__}: {e}") from None
        if status == 400 and b"unknown account" in body:
            raise PermanentRepriceError(f"{self.name}: the monitor does not know account "
                                        f"{account!r}")
        if status != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise RepriceError(f"{self.name}: HTTP {status}: {text}")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RepriceError(f"{self.name}: the answer is not JSON") from None
        if not isinstance(doc, dict) or doc.get("account_id", account) != account:
            raise RepriceError(f"{self.name}: the answer is not about account {account!r}")
        plan = dict(_checked(doc.get("plan"), self.name))
        ns = doc.get("server_ns")
        plan["priced_ns"] = ns if isinstance(ns, int) and not isinstance(ns, bool) \
            else time.time_ns()
        for k in ("tier", "liquidation_status", "shortfall"):
            if k in doc:
                plan[k] = doc[k]
        return plan

    def _get(self, path: str) -> tuple[int, bytes]:
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self._token}",
                                               "Accept": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read(8 << 20)
        finally:
            conn.close()


class PythonRepricer(Repricer):
    def __init__(self, spec: str):
        self.fn = load_callable(spec, "python repricer")
        self.name = f"python:{spec}"

    async def reprice(self, event: dict) -> dict:
        try:
            plan = await call_maybe_async(self.fn, event)
        except RepriceError:
            raise
        except Exception as e:  # noqa: BLE001
            raise RepriceError(f"{self.name}: {type(e).__name__}: {e}") from e
        plan = dict(_checked(plan, self.name))
        if not isinstance(plan.get("priced_ns"), int):
            plan["priced_ns"] = time.time_ns()
        return plan


def open_repricer(spec: str, *, token: str = "", timeout: float = 5.0) -> Repricer | None:
    """None for an empty spec or ``none``."""
    if not spec or spec == "none":
        return None
    if spec.startswith("python:"):
        return PythonRepricer(spec[len("python:"):])
    if spec.startswith(("http://", "https://")):
        return HttpRepricer(spec, token, timeout)
    raise ValueError(f"repricer: expected http(s)://MONITOR:PORT or "
                     f"python:package.module:function, got {mask_url(spec)!r}")
