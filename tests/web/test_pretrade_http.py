"""The keep-alive pre-trade listener (`--pretrade-listen`, monitor/pretrade_http.py) against a
running monitor: many requests on one connection, pipelining, token, size and HTTP errors, the
idle timeout, the connection cap, their counts on /metrics; and the `[credit]` table."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import orjson
import pytest
from conftest import free_port, raw_get, start_monitor

from monitor.app.config import ConfigError, RunConfig
from monitor.core.credit import CreditConfig

TOKEN = "pretrade-http-token-77e1b2c4"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
MAX_CONN = 4
IDLE_S = 3.0

BOOK = {
    "securities": [
        {"symbol": "600000.SH", "price": "10.00", "haircut": "0.6", "group": "bank"},
        {"symbol": "600036.SH", "price": "20.00", "haircut": "0.7", "group": "bank"},
    ],
    "profiles": {"default": {"concentration_caps": [{"below": "2.40", "single": "0.50"}]}},
    "accounts": [
        {"account_id": "A", "cash": "10000", "financing_line": "200000",
         "positions": [{"symbol": "600000.SH", "kind": "collateral", "qty": 10000},
                       {"symbol": "600036.SH", "kind": "financed", "qty": 5000,
                        "financed_cost": "95000", "fin_margin_ratio": "1.0"}]},
        {"account_id": "RICH", "cash": "1000000", "financing_line": "500000", "positions": []},
    ],
}


@pytest.fixture(scope="module")
def mon(tmp_path_factory):
    d = tmp_path_factory.mktemp("pretrade-http")
    (d / "token").write_text(TOKEN)
    (d / "book.json").write_text(json.dumps(BOOK))
    (d / "empty.jsonl").write_text("")
    (d / "monitor.toml").write_text(
        f"pretrade_max_connections = {MAX_CONN}\npretrade_idle_timeout_s = {IDLE_S}\n"
        "[credit]\nslice_accounts = 1024\n")
    pport = free_port()
    proc, port = start_monitor(
        ["--config", str(d / "monitor.toml"), "--book", str(d / "book.json"),
         "--feed", f"replay:{d / 'empty.jsonl'}", "--token-file", str(d / "token"),
         "--pretrade-listen", f"127.0.0.1:{pport}"], d)
    yield port, pport
    proc.kill()
    proc.wait(10)


def request(body: bytes, *, auth: str = AUTH, path: str = "/api/pretrade",
            extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def response(r: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    line, *rest = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
    body = await asyncio.wait_for(r.readexactly(int(hdrs.get("content-length", 0))), 10)
    return int(line.split()[1]), hdrs, body


async def closed(r: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (EOF or reset) with nothing more sent."""
    try:
        return await asyncio.wait_for(r.read(), 15) == b""
    except ConnectionResetError:
        return True


async def metrics(port: int) -> dict[str, float]:
    st, _, body = await raw_get(port, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert st == 200
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("mm_pretrade"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def withdrawal(acct: str, amount: str) -> bytes:
    return orjson.dumps({"account_id": acct, "type": "cash_withdrawal", "amount": amount})


async def test_many_requests_on_one_connection(mon):
    port, pport = mon
    before = await metrics(port)
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    for i in range(60):
        acct = ("A", "RICH")[i % 2]
        w.write(request(withdrawal(acct, "100")))
        st, hdrs, body = await response(r)
        doc = orjson.loads(body)
        assert st == 200 and doc["account_id"] == acct and "connection" not in hdrs
        # A (ratio 2.21) may not withdraw (below 300%); RICH (no debt) may
        assert doc["allowed"] == (acct == "RICH")
    w.close()
    after = await metrics(port)
    key = "mm_pretrade_listener_connections_accepted_total"
    assert after[key] - before[key] == 1
    assert after["mm_pretrade_checks_total"] - before["mm_pretrade_checks_total"] == 60


async def test_the_same_answer_as_the_main_port(mon):
    port, pport = mon
    body = orjson.dumps({"account_id": "A", "type": "financed_buy", "symbol": "600000.SH",
                         "qty": 1000})
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    w.write(request(body))
    _, _, keep = await response(r)
    w.close()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(request(body))
    _, _, main = await response(r)
    w.close()
    a, b = orjson.loads(keep), orjson.loads(main)
    a.pop("ms"), b.pop("ms")
    assert a == b and not a["allowed"]


async def test_pipelined_requests_are_answered_in_order(mon):
    port, pport = mon
    bodies = [withdrawal(("A", "RICH")[i % 2], str(i + 1)) for i in range(40)]
    bodies[17] = b"{not json"  # a bad body answers 400 and keeps the connection
    bodies[23] = orjson.dumps({"account_id": "NOBODY", "type": "cash_withdrawal", "amount": 1})
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    w.write(b"".join(request(b) for b in bodies))  # all at once, before any answer
    for i in range(40):
        st, _, body = await response(r)
        doc = orjson.loads(body)
        if i == 17:
            assert (st, doc["code"]) == (400, "malformed")
        elif i == 23:
            assert (st, doc["code"]) == (404, "unknown_account")
        else:
            assert st == 200 and doc["account_id"] == ("A", "RICH")[i % 2]
            assert doc["figures"]["value"] == i + 1  # the i-th request's own answer
    w.write(request(withdrawal("RICH", "5"), extra="Connection: close\r\n"))
    st, hdrs, _ = await response(r)
    assert st == 200 and hdrs["connection"] == "close"
    assert await closed(r)


async def test_token_is_required(mon):
    port, pport = mon
    before = await metrics(port)
    for auth in ("", "Authorization: Bearer wrong-token-0000000000\r\n",
                 f"Authorization: Basic {TOKEN}\r\n"):
        r, w = await asyncio.open_connection("127.0.0.1", pport)
        w.write(request(withdrawal("RICH", "1"), auth=auth))
        st, hdrs, body = await response(r)
        assert st == 401 and hdrs["www-authenticate"].startswith("Bearer")
        assert TOKEN.encode() not in body
        assert await closed(r)
    after = await metrics(port)
    k = 'mm_pretrade_listener_refused_total{reason="auth"}'
    assert after[k] - before[k] == 3


async def test_oversize_bodies_get_413(mon):
    port, pport = mon
    before = await metrics(port)
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    w.write(request(b"x" * 20_000))
    st, hdrs, _ = await response(r)
    assert st == 413 and hdrs["connection"] == "close"
    assert await closed(r)
    # chunked: no Content-Length to refuse up front, the body is counted as it comes
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    chunk = b"4000\r\n" + b"y" * 0x4000 + b"\r\n"
    w.write(f"POST /api/pretrade HTTP/1.1\r\nHost: x\r\n{AUTH}Transfer-Encoding: chunked"
            "\r\n\r\n".encode() + chunk * 2)
    st, _, _ = await response(r)
    assert st == 413
    assert await closed(r)
    after = await metrics(port)
    k = 'mm_pretrade_listener_refused_total{reason="too_large"}'
    assert after[k] - before[k] == 2


@pytest.mark.parametrize("raw, status, reason", [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"POST /api/pretrade HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n", 400,
     "bad_request"),
    (b"POST /api/pretrade HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400, "bad_request"),
    (b"POST /api/pretrade HTTP/1.1\r\nHost: x\r\nX: " + b"h" * 40_000 + b"\r\n\r\n", 431,
     "bad_request"),
    (request(b"{}", path="/api/elsewhere"), 404, "not_found"),
    (b"GET /api/pretrade HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"\r\n", 405, "method"),
])
async def test_malformed_requests_get_an_error_and_a_close(mon, raw, status, reason):
    port, pport = mon
    before = await metrics(port)
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    w.write(raw)
    st, _, body = await response(r)
    assert st == status and orjson.loads(body)["code"] == reason
    assert await closed(r)
    after = await metrics(port)
    k = f'mm_pretrade_listener_refused_total{{reason="{reason}"}}'
    assert after[k] - before[k] == 1


async def test_bad_json_keeps_the_connection_and_is_counted(mon):
    port, pport = mon
    before = await metrics(port)
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    w.write(request(b"[1, 2]"))
    assert (await response(r))[0] == 400
    w.write(request(withdrawal("RICH", "1")))
    assert (await response(r))[0] == 200
    w.close()
    after = await metrics(port)
    k = 'mm_pretrade_bad_requests_total{code="malformed"}'
    assert after[k] - before.get(k, 0) == 1


async def test_idle_connections_are_closed(mon):
    port, pport = mon
    before = await metrics(port)
    idle_r, _ = await asyncio.open_connection("127.0.0.1", pport)
    used_r, used_w = await asyncio.open_connection("127.0.0.1", pport)
    used_w.write(request(withdrawal("RICH", "1")))
    assert (await response(used_r))[0] == 200
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", pport)
    slow_w.write(request(withdrawal("RICH", "1"))[:30])  # a request that never completes
    assert await closed(idle_r) and await closed(used_r) and await closed(slow_r)
    after = await metrics(port)
    k = 'mm_pretrade_listener_refused_total{reason="idle_timeout"}'
    assert after[k] - before[k] == 1  # only the unfinished request is a refusal


async def test_connection_cap(mon):
    port, pport = mon
    for _ in range(100):  # connections of the tests before, closing
        if (await metrics(port))["mm_pretrade_listener_connections"] == 0:
            break
        await asyncio.sleep(0.05)
    before = await metrics(port)
    conns = []
    for _ in range(MAX_CONN):
        r, w = await asyncio.open_connection("127.0.0.1", pport)
        w.write(request(withdrawal("RICH", "1")))
        assert (await response(r))[0] == 200  # accepted and served
        conns.append((r, w))
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    st, hdrs, _ = await response(r)
    assert st == 503 and hdrs["retry-after"]
    assert await closed(r)
    after = await metrics(port)
    k = 'mm_pretrade_listener_refused_total{reason="full"}'
    assert after[k] - before[k] == 1
    assert after["mm_pretrade_listener_connections"] == MAX_CONN
    # a freed slot is taken again
    conns.pop()[1].close()
    for _ in range(100):
        if (await metrics(port))["mm_pretrade_listener_connections"] < MAX_CONN:
            break
        await asyncio.sleep(0.05)
    r, w = await asyncio.open_connection("127.0.0.1", pport)
    w.write(request(withdrawal("RICH", "1")))
    assert (await response(r))[0] == 200
    for _, cw in [*conns, (r, w)]:
        cw.close()


# ---------------------------------------------------------------- settings


def test_credit_table_is_read_and_checked():
    cfg = CreditConfig.from_dict({"slice_accounts": 1024, "max-changes": 10,
                                  "hysteresis_bp": 0})
    assert (cfg.slice_accounts, cfg.max_changes, cfg.hysteresis_bp) == (1024, 10, 0)
    assert CreditConfig.from_dict(None) == CreditConfig()
    for bad, words in [({"slice_accounts": 0}, "credit.slice_accounts"),
                       ({"slice_accounts": "1000"}, "whole number"),
                       ({"hysteresis_bp": True}, "credit.hysteresis_bp"),
                       ({"hysteresis_bp": 20_000}, "0 to 10000"),
                       ({"slice": 5}, "unknown setting 'slice'")]:
        with pytest.raises(ConfigError, match=words):
            CreditConfig.from_dict(bad)


def test_the_engine_builds_its_controls_with_the_table(tmp_path):
    from monitor.app.runtime import Monitor
    from monitor.book.load import book_from_dict

    (tmp_path / "empty.jsonl").write_text("")
    cfg = RunConfig(book="x", feed=f"replay:{tmp_path / 'empty.jsonl'}",
                    credit={"slice_accounts": 7, "hysteresis_bp": 0})
    m = Monitor(cfg, book_from_dict(json.loads(json.dumps(BOOK))))
    assert (m.engine.credit.config.slice_accounts, m.engine.credit.config.hysteresis_bp) == (7, 0)


@pytest.mark.parametrize("toml, flag, words", [
    ("[credit]\nmax_changes = -1\n", [], "credit.max_changes"),
    ("[credit]\nrotation = 3\n", [], "unknown setting 'rotation'"),
    ("pretrade_idle_timeout_s = 0\n", [], "pretrade_idle_timeout_s"),
    ("", ["--pretrade-listen", "127.0.0.1:http"], "pretrade_listen"),
])
def test_bad_settings_stop_the_run(tmp_path, toml, flag, words):
    (tmp_path / "monitor.toml").write_text(toml)
    (tmp_path / "book.json").write_text(json.dumps(BOOK))
    (tmp_path / "empty.jsonl").write_text("")
    p = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "--config",
                        str(tmp_path / "monitor.toml"), "--book", str(tmp_path / "book.json"),
                        "--feed", f"replay:{tmp_path / 'empty.jsonl'}", *flag],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and words in p.stderr, p.stderr
