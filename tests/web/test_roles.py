"""Named tokens with roles (monitor/web/auth.py, docs/security.md "Named tokens and roles"):
the token file's format and its errors, what each role may do over HTTP and the websocket
(viewer reads, operator acknowledges, approver also decides liquidation plans and flips the kill
switch), the name recorded with each action, the one-bare-token file working as before, and the
approvals and kill switch over HTTP against the liquidator's real control on a private Redis,
from a running monitor, seen by the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import pytest
import redis
from conftest import raw_get, start_monitor
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from monitor.app.config import RunConfig, load_config
from monitor.book.data import SAMPLE_BOOK
from monitor.errors import ConfigError
from monitor.web.auth import NamedToken, parse_tokens
from monitor.web.server import AlertServer

VIEWER = "viewer-token-8d0c1e5a2b7f4936"
OPERATOR = "operator-token-1f6e9a3c5d2b4870"
APPROVER = "approver-token-4b2a7e0d9c1f3586"
FILE = f"""# margin-monitor tokens
# NAME       ROLE      TOKEN
ann.li       viewer    {VIEWER}
desk-2       operator  {OPERATOR}

risk-head    approver  {APPROVER}
"""
TOKENS = parse_tokens(FILE)


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


# ---------------------------------------------------------------------- the file


def test_the_token_file():
    assert [(t.name, t.role, t.named) for t in TOKENS] == [
        ("ann.li", "viewer", True), ("desk-2", "operator", True), ("risk-head", "approver", True)]
    bare = parse_tokens(f"  {APPROVER}  \n")  # the format before names: one approver
    assert [(t.name, t.role, t.token, t.named) for t in bare] == [
        ("token", "approver", APPROVER, False)]
    bad = {
        "": "no token",
        "# only a comment\n": "no token",
        "short\n": "at least 16",
        f"a viewer {VIEWER} extra\n": "line 1: expected NAME ROLE TOKEN",
        f"a viewer {VIEWER}\nb admin {OPERATOR}\n": "line 2: role 'admin'",
        f"a viewer {VIEWER}\na operator {OPERATOR}\n": "line 2: name 'a' given twice",
        f"a viewer {VIEWER}\nb operator {VIEWER}\n": "line 2: the same token as 'a'",
        "a viewer tooshort\n": "line 1: the token must be at least 16",
        f"-a viewer {VIEWER}\n": "line 1: a name is",
        f"{VIEWER}\n{OPERATOR}\n": "line 1: expected NAME ROLE TOKEN",
    }
    for text, words in bad.items():
        with pytest.raises(ConfigError, match=words) as ei:
            parse_tokens(text)
        for tok in (VIEWER, OPERATOR):
            assert tok not in str(ei.value)  # a token is never echoed


def test_the_config_reads_it(tmp_path):
    f = tmp_path / "tokens"
    f.write_text(FILE)
    cfg = RunConfig(token_file=str(f))
    assert cfg.resolve_tokens() == TOKENS and cfg.resolve_token() == VIEWER
    assert VIEWER not in repr(cfg) and APPROVER not in repr(cfg)
    (tmp_path / "m.toml").write_text('tokens = ["x"]\n')
    with pytest.raises(ConfigError, match="unknown setting 'tokens'"):
        load_config(str(tmp_path / "m.toml"), {})
    assert RunConfig(token=APPROVER).resolve_tokens() == [
        NamedToken("token", "approver", APPROVER, named=False)]


# ---------------------------------------------------------------------- the server


class FakeControl:
    """The liquidator control's surface (monitor/liquidator/control.py), recorded."""

    def __init__(self):
        self.calls = []
        self.kill = None

    async def pending(self):
        return [{"event_id": "e1", "account_id": "A1", "state": "pending"}]

    async def approve(self, event_id, by, note=""):
        self.calls.append(("approve", event_id, by, note))
        return {"event_id": event_id, "state": "approved", "decided_by": by}

    async def reject(self, event_id, by, note=""):
        self.calls.append(("reject", event_id, by, note))
        return {"event_id": event_id, "state": "rejected", "decided_by": by}

    async def kill_switch(self):
        return self.kill

    async def engage_kill_switch(self, by, reason=""):
        self.calls.append(("kill_on", by, reason))
        self.kill = {"by": by, "reason": reason, "ts": 1}
        return self.kill

    async def release_kill_switch(self, by):
        self.calls.append(("kill_off", by))
        prev, self.kill = self.kill, None
        return prev


@pytest.fixture
async def served(tmp_path):
    servers = []

    async def make(**kw):
        acks = []

        async def rpc(msg):
            acks.append(dict(msg))
            return {"ok": True, "ack": {"event_id": msg.get("event_id"), "by": msg.get("by")}}

        (tmp_path / "index.html").write_text("<p>desk</p>")
        kw.setdefault("tokens", TOKENS)
        s = AlertServer(snapshot=lambda: [], health=lambda: {"ok": True}, rpc=rpc,
                        registry=CollectorRegistry(), static_dir=tmp_path, close_timeout=0.5,
                        post=lambda path, body: (200, b"{}"), **kw)
        _, port = await s.start()
        servers.append(s)
        return s, port, acks

    yield make
    for s in servers:
        await s.aclose()


async def post(port: int, path: str, body: dict, headers: dict) -> tuple[int, dict]:
    data = orjson.dumps(body)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
            f"Content-Length: {len(data)}", "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items())]
    w.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    raw = await asyncio.wait_for(r.read(), 5)
    w.close()
    head, _, out = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(out)


async def ack(port: int, tok: str, by: str = "mallory") -> dict:
    async with connect(f"ws://127.0.0.1:{port}/ws/alerts?snapshot=0",
                       additional_headers=bearer(tok)) as ws:
        await ws.send(orjson.dumps({"op": "ack", "event_id": "e1", "by": by, "req": 1}).decode())
        while (reply := orjson.loads(await asyncio.wait_for(ws.recv(), 5)))["kind"] != "REPLY":
            pass
        return reply


async def test_what_each_role_may_do(served):
    ctl = FakeControl()
    s, port, acks = await served(control=ctl)
    # who am I
    for tok, name, role in ((VIEWER, "ann.li", "viewer"), (OPERATOR, "desk-2", "operator"),
                            (APPROVER, "risk-head", "approver")):
        st, _, body = await raw_get(port, "/api/whoami", bearer(tok))
        me = orjson.loads(body)
        assert st == 200 and (me["name"], me["role"], me["named"], me["control"]) == (
            name, role, True, True)
    # everyone reads, the pre-trade check included
    for tok in (VIEWER, OPERATOR, APPROVER):
        assert (await raw_get(port, "/metrics", bearer(tok)))[0] == 200
        assert (await raw_get(port, "/api/approvals", bearer(tok)))[0] == 200
        st, doc = await post(port, "/api/pretrade", {}, bearer(tok))
        assert st == 200
    st, _, body = await raw_get(port, "/api/kill-switch", bearer(VIEWER))
    assert st == 200 and orjson.loads(body) == {"on": False}
    # acknowledging: operator and approver, recorded under the token's name
    reply = await ack(port, VIEWER)
    assert reply["ok"] is False and reply["code"] == "forbidden" and "viewer" in reply["error"]
    assert acks == []
    assert (await ack(port, OPERATOR))["ok"] and (await ack(port, APPROVER))["ok"]
    assert [a["by"] for a in acks] == ["desk-2", "risk-head"]  # not the client's "mallory"
    # deciding and the kill switch: approver only
    for tok in (VIEWER, OPERATOR):
        for path, body in (("/api/approvals/approve", {"event_id": "e1"}),
                           ("/api/approvals/reject", {"event_id": "e1"}),
                           ("/api/kill-switch", {"on": True})):
            st, doc = await post(port, path, body, bearer(tok))
            assert st == 403 and doc["code"] == "forbidden", (tok, path)
    assert ctl.calls == []
    st, doc = await post(port, "/api/approvals/approve", {"event_id": "e1", "note": "ok",
                                                          "by": "mallory"}, bearer(APPROVER))
    assert st == 200 and doc["decided_by"] == "risk-head"
    st, doc = await post(port, "/api/kill-switch", {"on": True, "reason": "gateway"},
                         bearer(APPROVER))
    assert st == 200 and doc["on"] and doc["by"] == "risk-head"
    st, doc = await post(port, "/api/kill-switch", {"on": False}, bearer(APPROVER))
    assert st == 200 and not doc["on"]
    assert ctl.calls == [("approve", "e1", "risk-head", "ok"), ("kill_on", "risk-head", "gateway"),
                         ("kill_off", "risk-head")]
    st, doc = await post(port, "/api/kill-switch", {"on": "yes"}, bearer(APPROVER))
    assert st == 400
    assert s.stats()["refused"]["forbidden"] == 7  # 1 websocket ack + 6 POSTs


async def test_a_session_keeps_its_role(served):
    s, port, acks = await served()
    st, hdrs, _ = await raw_get(port, f"/?token={VIEWER}")
    cookie = hdrs["set-cookie"].split(";")[0]
    st, _, body = await raw_get(port, "/api/whoami", {"Cookie": cookie})
    assert st == 200 and orjson.loads(body)["role"] == "viewer"
    # a cookie-only POST must be same-origin, and then the role applies
    st, doc = await post(port, "/api/kill-switch", {"on": True},
                         {"Cookie": cookie, "Origin": "http://x"})
    assert st == 403 and doc["code"] == "forbidden"
    assert s.stats()["refused"]["forbidden"] == 1
    # no control configured: the routes say so
    st, _, body = await raw_get(port, "/api/approvals", bearer(APPROVER))
    assert st == 503 and orjson.loads(body)["code"] == "unavailable"
    # two different right tokens in one request: refused
    assert (await raw_get(port, f"/metrics?token={VIEWER}", bearer(APPROVER)))[0] == 401


async def test_one_bare_token_works_as_before(served):
    s, port, acks = await served(tokens=None, token=APPROVER)
    st, _, body = await raw_get(port, "/api/whoami", bearer(APPROVER))
    assert orjson.loads(body) == {"name": None, "role": "approver",
                                  "may": ["ack", "approve", "read"], "named": False,
                                  "control": False}
    assert (await ack(port, APPROVER, by="e2e operator"))["ok"]
    assert acks[0]["by"] == "e2e operator"  # the name the operator typed, as before
    with pytest.raises(InvalidStatus):
        async with connect(f"ws://127.0.0.1:{port}/ws/alerts?token={VIEWER}"):
            pass


# ---------------------------------------------------------------------- end to end


def test_approvals_and_kill_switch_over_http_from_a_running_monitor(tmp_path, redis_fresh):
    """`run` with a named token file and a Redis: the approver decides a plan and flips the
    kill switch over HTTP; the liquidator's own control (and its CLI) sees the token's name."""
    from monitor.liquidator.control import LiquidationControl

    (tmp_path / "tokens").write_text(FILE)
    (tmp_path / "empty.jsonl").write_text("")

    r = redis.Redis(port=redis_fresh.port)
    for eid in ("e-1", "e-2"):
        r.hset("margin:liq:approvals", eid, orjson.dumps({
            "event_id": eid, "account_id": "C000001", "state": "pending",
            "held": "approval_required", "reason": "forced_liquidation",
            "created_ns": time.time_ns(), "orders": []}))
    proc, port = start_monitor(["--book", str(SAMPLE_BOOK), "--feed",
                                f"replay:{tmp_path / 'empty.jsonl'}", "--redis", redis_fresh.url,
                                "--token-file", str(tmp_path / "tokens")], tmp_path)
    try:
        async def go():
            st, _, body = await raw_get(port, "/api/approvals", bearer(VIEWER))
            assert st == 200 and {a["event_id"] for a in orjson.loads(body)["approvals"]} == {
                "e-1", "e-2"}
            assert (await post(port, "/api/approvals/approve", {"event_id": "e-1"},
                               bearer(OPERATOR)))[0] == 403
            st, doc = await post(port, "/api/approvals/approve",
                                 {"event_id": "e-1", "note": "called"}, bearer(APPROVER))
            assert st == 200 and doc["state"] == "approved" and doc["decided_by"] == "risk-head"
            st, doc = await post(port, "/api/kill-switch", {"on": True, "reason": "drill"},
                                 bearer(APPROVER))
            assert st == 200 and doc["on"] and doc["by"] == "risk-head"
            st, doc = await post(port, "/api/approvals/approve", {"event_id": "e-2"},
                                 bearer(APPROVER))
            assert st == 409 and "kill switch" in doc["error"]  # the liquidator's own rule
            st, doc = await post(port, "/api/approvals/reject", {"event_id": "e-2"},
                                 bearer(APPROVER))
            assert st == 200 and doc["decided_by"] == "risk-head"
            ctl = LiquidationControl(redis_fresh.url)
            try:
                assert (await ctl.kill_switch())["by"] == "risk-head"
                audit = await ctl.audit()
                assert [(a["action"], a["by"]) for a in audit] == [
                    ("rejected", "risk-head"), ("kill_switch_on", "risk-head"),
                    ("approved", "risk-head")]
            finally:
                await ctl.aclose()

        asyncio.run(go())
        out = subprocess.run([sys.executable, "-m", "monitor.cli", "kill-switch", "status",
                              "--redis", redis_fresh.url, "--json"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and orjson.loads(out.stdout)["by"] == "risk-head"
    finally:
        proc.kill()
        proc.wait(10)
        r.close()
