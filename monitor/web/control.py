"""The liquidator's approvals list and kill switch over HTTP (the CLI's ``margin-monitor
approvals`` / ``kill-switch``, for the desk and scripts).

``control`` is the liquidator's ``LiquidationControl`` (monitor/liquidator/control.py), handed in
by the runtime (the web layer does not import the liquidator); without one every route answers
503.

===========================================  ========  =========================================
route                                        role      body / answer
===========================================  ========  =========================================
``GET /api/approvals``                       viewer    ``{"approvals": [record, ...]}``
``POST /api/approvals/approve``              approver  ``{"event_id", "note"?}`` -> the record
``POST /api/approvals/reject``               approver  ``{"event_id", "note"?}`` -> the record
``GET /api/kill-switch``                     viewer    ``{"on": bool, "by"?, "reason"?, "ts"?}``
``POST /api/kill-switch``                    approver  ``{"on": bool, "reason"?}`` -> the state
===========================================  ========  =========================================

Decisions and switch changes record the token's name (a bare, unnamed token: the body's
``by``, else ``desk``); a decision the liquidator refuses (no such plan, already decided, the
kill switch on) answers 409 with its reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from monitor.errors import ControlError
from monitor.web.auth import Principal

log = logging.getLogger("monitor.web.server")

GET_ROUTES = ("/api/approvals", "/api/kill-switch")
POST_ROUTES = ("/api/approvals/approve", "/api/approvals/reject", "/api/kill-switch")


class ControlRoutes:
    def __init__(self, control: Any) -> None:
        self.control = control
        self._last_log = 0.0

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.control is None:
            return _unavailable()
        try:
            if path == "/api/approvals":
                return 200, _json({"approvals": await self.control.pending()})
            return 200, _json(_switch(await self.control.kill_switch()))
        except Exception as e:  # noqa: BLE001 - Redis down: say so, keep serving
            return self._failed(path, e)

    async def post(self, path: str, body: bytes, principal: Principal) -> tuple[int, bytes]:
        if self.control is None:
            return _unavailable()
        try:
            doc = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError:
            return 400, _json({"error": "body is not valid JSON", "code": "malformed"})
        if not isinstance(doc, dict):
            return 400, _json({"error": "body must be a JSON object", "code": "malformed"})
        by = principal.name if principal.named else str(doc.get("by") or "desk")[:100]
        note = doc.get("note", doc.get("reason", ""))
        if not isinstance(note, str) or len(note) > 500:
            return 400, _json({"error": "note must be a string of at most 500 characters",
                               "code": "bad_value"})
        ctl = self.control
        try:
            if path == "/api/kill-switch":
                on = doc.get("on")
                if not isinstance(on, bool):
                    return 400, _json({"error": "on must be true or false", "code": "bad_value"})
                if on:
                    await ctl.engage_kill_switch(by=by, reason=note)
                else:
                    await ctl.release_kill_switch(by=by)
                log.warning("kill switch turned %s over HTTP by %s", "ON" if on else "off", by)
                return 200, _json(_switch(await ctl.kill_switch()))
            eid = doc.get("event_id")
            if not isinstance(eid, str) or not eid or len(eid) > 100:
                return 400, _json({"error": "event_id must be a non-empty string",
                                   "code": "bad_value"})
            fn = ctl.approve if path.endswith("/approve") else ctl.reject
            rec = await fn(eid, by=by, note=note)
            log.info("liquidation plan %s %s over HTTP by %s", eid,
                     "approved" if fn is ctl.approve else "rejected", by)
            return 200, _json(rec)
        except ControlError as e:
            return 409, _json({"error": str(e), "code": "refused"})
        except Exception as e:  # noqa: BLE001 - Redis down: say so, keep serving
            return self._failed(path, e)

    def _failed(self, path: str, e: Exception) -> tuple[int, bytes]:
        now = time.monotonic()
        if now - self._last_log >= 10.0:
            self._last_log = now
            log.warning("liquidator control %s failed: %s", path, type(e).__name__)
        return 503, _json({"error": "the liquidator's Redis is unavailable; try again",
                           "code": "unavailable"})


def _switch(rec: dict | None) -> dict:
    return {"on": rec is not None, **(rec or {})}


def _unavailable() -> tuple[int, bytes]:
    return 503, _json({"error": "no liquidator control here (the monitor has no Redis)",
                       "code": "unavailable"})


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
