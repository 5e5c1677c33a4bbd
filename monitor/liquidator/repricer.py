"""Re-pricing: a fresh plan for an account when the trigger's plan is too old to send.

A repricer is any object with ``async reprice(event) -> plan``, where ``plan`` is
``{"orders": [{symbol, side, qty, price, value}], "ratio_after", "residual", "priced_ns"}``
(optionally ``tier``, ``liquidation_status``, ``shortfall`` of the account now). Empty
``orders`` with ``residual`` 0 means the account no longer needs liquidating.

- ``http(s)://MONITOR:PORT`` (the default kind): asks the running monitor,
  ``GET /api/account?id=<account_id>`` with ``Authorization: Bearer <token>``; the monitor
  answers with the account now, including ``plan`` computed by the kernels at the current
  prices (docs/liquidation.md, "Re-pricing", states the contract; for CONTRACT_EXPIRED the
  answer's ``contract_plans[contract_id]``, the plan that closes that contract). One pooled
  keep-alive ``httpx`` client per repricer (outbound.py).
- ``python:package.module:function``: ``function(event) -> plan`` (sync or ``async def``).

The HTTP repricer also serves the plan re-check (``confirm_plans``, worker.py): ``account(id)``
is the monitor's view of the account now (its positions), ``event(id)`` the event as the
monitor published it (``GET /api/event?id=``), None when the monitor does not hold it.
"""

from __future__ import annotations

import ssl
import time
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

from feeds.net import mask_url
from monitor.errors import OutboundError, PermanentRepriceError, RepriceError
from monitor.liquidator.hooks import call_maybe_async, load_callable
from monitor.liquidator.orders import BadEvent, check_plan
from monitor.liquidator.outbound import HttpSettings, OutboundClient, split_userinfo

ACCOUNT_PATH = "/api/account"
EVENT_PATH = "/api/event"  # the plan re-check: the event as the monitor published it
ANSWER_LIMIT = 8 << 20  # bytes of the monitor's answer read at most


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
    """``GET /api/account`` on the monitor over one pooled keep-alive client (outbound.py);
    `aclose` closes it. ``http`` holds the timeouts, TLS files and pool size; without it every
    timeout is ``timeout`` (seconds). A ``user:password@`` in the URL is dropped, never sent:
    the monitor takes the bearer token."""

    def __init__(self, base_url: str, token: str, timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None, *,
                 http: HttpSettings | None = None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"repricer: not an http(s) URL: {mask_url(base_url)!r}")
        if not token:
            raise ValueError("repricer: the monitor's token is required (repricer_token_file "
                             "or MARGIN_MONITOR_TOKEN)")
        self._token = token
        self.name = mask_url(base_url)
        bare, _ = split_userinfo(base_url)
        bp = urlsplit(bare)
        self._base = f"{bp.scheme}://{bp.netloc}{bp.path.rstrip('/')}"
        try:
            httpx.URL(self._base)
        except httpx.InvalidURL as e:
            raise ValueError(f"repricer: not a usable URL: {self.name!r}: {e}") from None
        self.http = http if http is not None else HttpSettings.uniform(timeout)
        self.timeout = self.http.read_timeout
        self._client = OutboundClient(self.http, what="repricer", verify=ssl_context)

    async def _get(self, path: str, what: str) -> dict:
        try:
            status, body = await self._client.request(
                "GET", f"{self._base}{path}",
                headers={"Authorization": f"Bearer {self._token}",
                         "Accept": "application/json"}, limit=ANSWER_LIMIT)
        except OutboundError as e:  # no answer (connect, TLS, timeout, reset): retried
            raise RepriceError(f"{self.name}: {e}") from None
        if status == 400 and f"unknown {what}".encode() in body:
            raise PermanentRepriceError(f"{self.name}: the monitor does not know {what}")
        if status != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise RepriceError(f"{self.name}: HTTP {status}: {text}")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RepriceError(f"{self.name}: the answer is not JSON") from None
        if not isinstance(doc, dict):
            raise RepriceError(f"{self.name}: the answer is not a JSON object")
        return doc

    async def account(self, account: str) -> dict:
        """The monitor's view of the account now (``GET /api/account``: positions, plan)."""
        try:
            doc = await self._get(f"{ACCOUNT_PATH}?id={quote(account, safe='')}", "account")
        except PermanentRepriceError:
            raise PermanentRepriceError(f"{self.name}: the monitor does not know account "
                                        f"{account!r}") from None
        if doc.get("account_id", account) != account:
            raise RepriceError(f"{self.name}: the answer is not about account {account!r}")
        return doc

    async def event(self, event_id: str) -> dict | None:
        """The event as the monitor published it (``GET /api/event``), or None when the
        monitor does not hold it."""
        doc = await self._get(f"{EVENT_PATH}?id={quote(event_id, safe='')}", "event")
        if doc.get("event_id") != event_id:
            raise RepriceError(f"{self.name}: the answer is not about event {event_id!r}")
        ev = doc.get("event")
        return ev if doc.get("held") is True and isinstance(ev, dict) else None

    async def reprice(self, event: dict) -> dict:
        account = event["account_id"]
        doc = await self.account(account)
        if event.get("kind") == "CONTRACT_EXPIRED":
            # the plan that closes that contract now; none when it is settled (or extended)
            plans = doc.get("contract_plans")
            plan = plans.get(event.get("contract_id")) if isinstance(plans, dict) else None
            if plan is None:
                plan = {"orders": [], "ratio_after": doc.get("ratio"), "residual": 0.0}
            plan = dict(_checked(plan, self.name))
        else:
            plan = dict(_checked(doc.get("plan"), self.name))
        ns = doc.get("server_ns")
        plan["priced_ns"] = ns if isinstance(ns, int) and not isinstance(ns, bool) \
            else time.time_ns()
        for k in ("tier", "liquidation_status", "shortfall"):
            if k in doc:
                plan[k] = doc[k]
        return plan

    async def aclose(self) -> None:
        await self._client.aclose()


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


def open_repricer(spec: str, *, token: str = "", timeout: float = 5.0,
                  http: HttpSettings | None = None) -> Repricer | None:
    """None for an empty spec or ``none``."""
    if not spec or spec == "none":
        return None
    if spec.startswith("python:"):
        return PythonRepricer(spec[len("python:"):])
    if spec.startswith(("http://", "https://")):
        return HttpRepricer(spec, token, timeout, http=http)
    raise ValueError(f"repricer: expected http(s)://MONITOR:PORT or "
                     f"python:package.module:function, got {mask_url(spec)!r}")
