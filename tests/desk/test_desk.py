"""The risk desk's server side (monitor/desk.py, kernels/desk.py) against brute force on a
seeded synthetic book, its acknowledgement stores, and the AlertServer's desk routes: the
session cookie, the token form, /api/, request messages and ACK notices."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import orjson
import pytest
from conftest import raw_get
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from kernels import units as u
from monitor.book import synthetic as synthbook
from monitor.book.load import build_book
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState, yuan
from monitor.desk.readmodel import CROSS_KEYS, Desk, FileAckStore, RedisAckStore
from monitor.web.server import AlertServer

T0 = 1_763_712_000_000_000_000
TOKEN = "desk-unit-token-7c41e9a2"


def make_book(accounts=2_500, securities=120, seed=3):
    tables = synthbook.generate(accounts, securities, seed=seed)
    return build_book(tables, {k: f"synthetic {k}" for k in tables}, source="synthetic")


@pytest.fixture(scope="module")
def book():
    return make_book()


def make_desk(book, **kw):
    state = MarginState(book, live=True)
    engine = Engine(state, EngineConfig(run_id="t"))
    desk = Desk(engine, clock=lambda: T0 + 5, **kw)
    desk.record(engine.start(T0))
    desk.flush()
    return desk


def crash(desk, fall=0.06, every=1):
    """One cycle moving every `every`-th security down by `fall` (inside its limit band)."""
    st, eng = desk.state, desk.engine
    sec = np.arange(0, desk.book.n_securities, every, dtype=np.int64)
    p = np.maximum(np.round(st.price[sec] * (1 - fall) / 10).astype(np.int64) * 10,
                   st.limit_down[sec])
    eng.add_ticks(sec, p, np.full(sec.shape[0], T0 + 1, dtype=np.int64))
    desk.before_cycle()
    events = eng.cycle(T0 + 2)
    desk.enrich(events)
    desk.record(events)
    desk.flush()
    return events


def api(desk, path, **q):
    status, body = desk.api(path, {k: [str(v)] for k, v in q.items()})
    return status, orjson.loads(body)


def ok(desk, path, **q):
    status, body = api(desk, path, **q)
    assert status == 200, body
    return body


def ratios(desk):
    A, L = desk.state.assets(), desk.state.liabilities()
    r = np.full(A.shape[0], np.inf)
    np.divide(A, L, out=r, where=L > 0)
    return r


# ------------------------------------------------------------------------------ ranked lists

def test_worst_are_the_lowest_ratios_paged_and_filtered(book):
    desk = make_desk(book)
    crash(desk)
    r = ratios(desk)
    order = np.lexsort((np.arange(r.shape[0]), r))
    finite = order[np.isfinite(r[order])]
    got = ok(desk, "/api/worst", n=25)
    assert got["total"] == finite.shape[0]
    assert [x["account_id"] for x in got["rows"]] == [book.account_ids[a] for a in finite[:25]]
    for x in got["rows"]:
        a = book.account_index[x["account_id"]]
        assert x["ratio"] == desk.state.figures(a)["ratio"]
        assert x["tier"] == u.TIER_NAMES[desk.engine.reported[a]]
    page = ok(desk, "/api/accounts", offset=10, limit=7)
    assert [x["account_id"] for x in page["rows"]] == [book.account_ids[a]
                                                       for a in finite[10:17]]
    # tier filter (reported tiers)
    mc = ok(desk, "/api/accounts", tier="MARGIN_CALL,FORCED_LIQUIDATION", limit=500)
    want = np.flatnonzero(desk.engine.reported <= u.MARGIN_CALL)
    assert mc["total"] == want.shape[0] > 0
    want = want[np.lexsort((want, r[want]))][:500]
    assert [x["account_id"] for x in mc["rows"]] == [book.account_ids[a] for a in want]
    assert all(x["tier"] in ("MARGIN_CALL", "FORCED_LIQUIDATION") for x in mc["rows"])
    # holders of a symbol
    s = int(np.argmax(np.bincount(book.pos_sec, minlength=book.n_securities)))
    sym = book.symbols[s]
    held = ok(desk, "/api/accounts", symbol=sym, limit=500)
    holders = {int(a) for a in np.repeat(np.arange(book.n_accounts), np.diff(book.pos_ptr))[
        book.pos_sec == s]}
    assert held["total"] == sum(1 for a in holders if np.isfinite(r[a]))
    assert all(book.account_index[x["account_id"]] in holders for x in held["rows"])
    ratios_listed = [x["ratio"] for x in held["rows"]]
    assert ratios_listed == sorted(ratios_listed)
    # next line and the fall that reaches it
    for x in ok(desk, "/api/worst", n=500)["rows"]:
        a = book.account_index[x["account_id"]]
        lines = book.profile_lines[book.profile_of[a]]
        above = [k for k in range(3) if x["ratio"] is not None
                 and desk.state.assets()[a] * u.RATIO_SCALE
                 >= lines[u.LINE_NORMAL + k] * desk.state.liabilities()[a]]
        if not above:
            assert x["next"] is None
            continue
        k = above[0]
        assert x["next"]["tier"] == CROSS_KEYS[k]
        assert x["next"]["line"] == lines[u.LINE_NORMAL + k] / u.RATIO_SCALE
        assert x["next"]["fall"] == desk.state.stress(a)["distance"][CROSS_KEYS[k]]
    # bad parameters: 400 with a reason
    assert api(desk, "/api/worst", n=0)[0] == 400
    assert api(desk, "/api/accounts", tier="BAD")[0] == 400
    assert api(desk, "/api/accounts", symbol="NOPE.SH")[0] == 400
    assert api(desk, "/api/nope")[0] == 404


# ------------------------------------------------------------------------------ crowding, what-if

def dense(book, state):
    """Long and short quantities per (account, security)."""
    h = state.h
    n, m = book.n_accounts, book.n_securities
    Q = np.zeros((n, m), dtype=np.int64)
    SQ = np.zeros((n, m), dtype=np.int64)
    for ptr, sec, qty, out in ((h.long_ptr, h.long_sec, h.long_qty, Q),
                               (h.short_ptr, h.short_sec, h.short_qty, SQ)):
        acct = np.repeat(np.arange(n), np.diff(ptr))
        np.add.at(out, (acct, sec), qty)
    return Q, SQ


def test_crowding_matches_brute_force(book):
    desk = make_desk(book)
    crash(desk, fall=0.04, every=3)
    st = desk.state
    Q, SQ = dense(book, st)
    A, L = st.assets(), st.liabilities()
    bp = book.profile_lines[book.profile_of]
    move = np.maximum(st.price - st.limit_down, 0)
    table = desk.crowding_table(force=True)
    S = u.RATIO_SCALE
    for s in range(book.n_securities):
        A2 = A - Q[:, s] * move[s]
        L2 = L - SQ[:, s] * move[s]
        assert table["holders"][s] == np.count_nonzero(Q[:, s])
        for k in range(3):
            line = bp[:, u.LINE_NORMAL + k]
            cross = (L > 0) & (A * S >= line * L) & (A2 * S < line * L2)
            assert table["count"][s, k] == np.count_nonzero(cross), (s, k)
            assert table["debt"][s, k] == L[cross].sum(), (s, k)
    assert table["count"].sum() > 0
    got = ok(desk, "/api/crowding", sort="forced_liquidation", by="debt", limit=5)
    debts = [row["cross"]["forced_liquidation"]["debt"] for row in got["rows"]]
    assert debts == sorted(debts, reverse=True)
    assert debts[0] == yuan(int(table["debt"][:, 2].max()))
    assert ok(desk, "/api/crowding", board="star")["securities"] == int(
        np.count_nonzero(book.board == u.BOARD_CODES["star"]))
    assert api(desk, "/api/crowding", sort="x")[0] == 400


@pytest.mark.parametrize("scope", ["all", "board:main", "symbol:*", "symbol:*,**"])
def test_whatif_matches_the_book_at_shocked_prices(book, scope):
    desk = make_desk(book)
    crash(desk, fall=0.03, every=2)
    st = desk.state
    counts = np.bincount(book.pos_sec, minlength=book.n_securities)
    top = np.argsort(-counts, kind="stable")
    scope = scope.replace("**", book.symbols[top[1]]).replace("*", book.symbols[top[0]])
    got = ok(desk, "/api/whatif", scope=scope, shock=-0.15, top=30)
    if scope == "all":
        mask = np.ones(book.n_securities, dtype=bool)
    elif scope.startswith("board:"):
        mask = book.board == u.BOARD_CODES["main"]
    else:
        mask = np.isin(book.symbols, scope[len("symbol:"):].split(","))
    assert got["securities"] == mask.sum()
    after = st.price.copy()
    after[mask] = np.maximum(np.floor(st.price[mask] * 0.85 / 10 + 0.5).astype(np.int64) * 10, 10)
    # the reference: a fresh state on the live book at the shocked prices
    shocked = MarginState(dataclasses.replace(st.book, price=after), holdings=st.h)
    now = MarginState(dataclasses.replace(st.book, price=st.price.copy()), holdings=st.h)
    every = np.arange(book.n_accounts, dtype=np.int64)
    t_after = [f["tier"] for f in shocked.figures_many(every)]
    t_now = [f["tier"] for f in now.figures_many(every)]
    L1 = shocked.liabilities()
    for tier in u.TIER_NAMES:
        assert got["after"][tier]["accounts"] == t_after.count(tier), tier
        assert got["now"][tier]["accounts"] == t_now.count(tier), tier
        sel = np.array([t == tier for t in t_after])
        assert got["after"][tier]["debt"] == yuan(int(L1[sel].sum()))
    worse = [a for a in range(book.n_accounts)
             if u.TIER_CODES[t_after[a]] < u.TIER_CODES[t_now[a]]]
    assert got["worse"]["accounts"] == len(worse) > 0
    figs = shocked.figures_many(np.array(worse, dtype=np.int64))
    want = sorted((f["ratio"], f["account_id"]) for f in figs)[:30]
    assert [h["account_id"] for h in got["hardest"]] == [a for _, a in want]
    assert [h["ratio_after"] for h in got["hardest"]] == [r for r, _ in want]
    assert got["path"] == ("holders" if scope.startswith("symbol:") else "sweep")
    moved = sum(t["accounts"] for t in got["transitions"])
    assert moved == sum(1 for a, b in zip(t_now, t_after, strict=True) if a != b)
    assert api(desk, "/api/whatif", scope="board:nope")[0] == 400
    assert api(desk, "/api/whatif", shock=-2)[0] == 400


# ------------------------------------------------------------------------------ events and history

def test_previous_ratio_is_the_ratio_before_the_cycle(book):
    desk = make_desk(book)
    before = ratios(desk)
    events = crash(desk, fall=0.08)
    changes = [e for e in events if e["kind"] == "TIER_CHANGE"]
    assert changes
    for e in changes:
        a = book.account_index[e["account_id"]]
        assert e["previous_ratio"] == round(before[a], 6)
    # an account event: the ratio before it
    a = int(np.flatnonzero(desk.engine.reported == u.MARGIN_CALL)[0])
    aid = book.account_ids[a]
    r0 = desk.state.figures(a)["ratio"]
    ev = {"type": "deposit", "account_id": aid, "amount": "50000000"}
    desk.before_account_event(ev)
    out = desk.engine.apply_account_event(ev, T0 + 3)
    desk.enrich(out)
    tc = [e for e in out if e["kind"] == "TIER_CHANGE"]
    assert tc and tc[0]["previous_ratio"] == r0 and tc[0]["ratio"] > r0


def test_event_index_history_and_drill_down(book):
    desk = make_desk(book, recent=50, events_per_account=3, history_accounts=5,
                     history_points=8)
    events = crash(desk, fall=0.08)
    recent = ok(desk, "/api/events", limit=2000)
    assert recent["held"] == 50 and len(recent["events"]) == 50
    assert [e["seq"] for e in recent["events"]] == sorted(
        (e["seq"] for e in recent["events"]), reverse=True)
    fl = ok(desk, "/api/events", tier="FORCED_LIQUIDATION")["events"]
    assert all("FORCED_LIQUIDATION" in (e["tier"], e["previous_tier"]) for e in fl)
    last = events[-1]
    one = ok(desk, "/api/events", account=last["account_id"])["events"]
    assert one and all(e["account_id"] == last["account_id"] for e in one)
    assert len(desk._hist) == 5  # bounded: the accounts of the last events only
    # drill-down: the same figures as `evaluate`, itemised
    a = book.account_index[last["account_id"]]
    d = ok(desk, "/api/account", id=last["account_id"])
    fig = desk.state.figures(a)
    for k in ("ratio", "assets", "liabilities", "available_margin_balance", "cure",
              "liquidation_value", "liquidation_status", "shortfall", "withdrawable",
              "free_cash"):
        assert d[k] == fig[k], k
    assert d["tier"] == u.TIER_NAMES[desk.engine.reported[a]]
    assert d["distance"] == desk.state.stress(a)["distance"]
    b = d["breakdown"]
    assert yuan(int(round((b["long_market_value"] + b["cash"] * (b["cash"] > 0)) * 1000))) \
        == pytest.approx(d["assets"], abs=0.02)
    assert sum(p["market_value"] for p in d["positions"] if p["kind"] != "short") == \
        pytest.approx(b["long_market_value"], abs=0.01)
    orders, ratio_after, _ = desk.state.plan(a)
    if fig["liquidation_status"] != "NOT_REQUIRED":
        assert d["plan"]["orders"] == orders and d["plan"]["ratio_after"] == ratio_after
    kept = desk.events.of_account(a, 3)
    assert [e["event_id"] for e in d["events"]] == [m[0] for m in reversed(kept)]
    assert len(d["events"]) <= 3
    assert d["history"][-1][1] == fig["ratio"]
    # a history keeps its whole span when full: resolution halves
    s = desk._hist[a]
    t_first = s.t[0]
    for i in range(40):
        desk._append(s, T0 + 100 + i, 1.0 + i / 100)
    assert len(s.t) <= 8 and s.t[0] == t_first and s.t[-1] == T0 + 139
    assert api(desk, "/api/account", id="NOPE")[0] == 400


async def test_acks_in_the_file_store_survive_a_restart(book, tmp_path):
    desk = make_desk(book)
    desk.store = FileAckStore(tmp_path / "acks.json")
    assert await desk.load_acks()
    eid = next(desk.events.newest(1))[0]
    sent = []
    desk.notify = sent.append
    r = await desk.rpc({"op": "ack", "event_id": eid, "note": " called him ", "by": "ann"})
    assert r["ok"] and r["ack"]["note"] == "called him" and r["ack"]["by"] == "ann"
    assert sent and sent[0]["kind"] == "ACK" and sent[0]["event_id"] == eid
    assert (await desk.rpc({"op": "ack", "event_id": "nope"}))["ok"] is False
    assert (await desk.rpc({"op": "ack", "event_id": eid, "note": "x" * 501}))["ok"] is False
    assert (await desk.rpc({"op": "ack", "event_id": 5}))["ok"] is False
    assert (await desk.rpc({"op": "drop_table"}))["ok"] is False
    again = make_desk(book)
    again.store = FileAckStore(tmp_path / "acks.json")
    assert await again.load_acks()
    assert again.acks[eid]["note"] == "called him"
    assert ok(again, "/api/acks")["acks"][0]["event_id"] == eid
    # the account's drill-down shows it, even from an earlier run
    d = ok(again, "/api/account", id=again.acks[eid]["account_id"])
    assert eid in d["acks"]


async def test_acks_in_redis(book, redis_fresh):
    import redis.asyncio as aioredis

    desk = make_desk(book)
    desk.store = RedisAckStore(redis_fresh.url)
    assert await desk.load_acks()
    eid = next(desk.events.newest(1))[0]
    assert (await desk.rpc({"op": "ack", "event_id": eid, "note": "n1", "by": "bo"}))["ok"]
    r = aioredis.from_url(redis_fresh.url)
    assert orjson.loads(await r.hget("margin:acks", eid))["note"] == "n1"
    await r.aclose()
    again = make_desk(book)
    again.store = RedisAckStore(redis_fresh.url)
    assert await again.load_acks() and again.acks[eid]["by"] == "bo"
    redis_fresh.stop()
    try:
        r = await desk.rpc({"op": "ack", "event_id": eid, "note": "n2"})
        assert r["ok"] is False and "not stored" in r["error"]
        assert desk.acks[eid]["note"] == "n1"  # not acknowledged when not stored
    finally:
        redis_fresh.start()
        await desk.store.aclose()
        await again.store.aclose()


# ------------------------------------------------------------------------------ the server side



@pytest.fixture
async def served(book, tmp_path):
    desk = make_desk(book)
    crash(desk)
    desk.store = FileAckStore(tmp_path / "acks.json")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<!doctype html><p>desk</p>")
    (www / "desk.js").write_text("1")
    server = AlertServer(token=TOKEN, snapshot=lambda: desk.engine.open_breaches(T0),
                         health=lambda: {"ok": True}, static_dir=www, api=desk.api,
                         rpc=desk.rpc, close_timeout=0.5)
    desk.notify = server.broadcast_notice
    _, port = await server.start()
    yield desk, server, port
    await server.aclose()


async def test_session_cookie_token_form_and_api_auth(served):
    desk, server, port = served
    st, hdrs, body = await raw_get(port, "/")
    assert st == 401 and b"<form" in body and b"desk.js" not in body and b"Wrong" not in body
    st, _, body = await raw_get(port, "/?token=wrong")
    assert st == 401 and b"Wrong token" in body and b"ratio" not in body
    for path in ("/desk.js", "/api/summary", "/api/worst", "/logout"):
        assert (await raw_get(port, path))[0] == 401
        assert (await raw_get(port, path, {"Authorization": "Bearer wrong"}))[0] == 401
    st, hdrs, body = await raw_get(port, f"/?token={TOKEN}")
    assert st == 200 and body.startswith(b"<!doctype html>")
    cookie = hdrs["set-cookie"]
    name = f"mm_desk_{port}"
    assert cookie.startswith(name + "=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    assert "script-src 'self'" in hdrs["content-security-policy"]
    assert hdrs["referrer-policy"] == "no-referrer"
    jar = {"Cookie": cookie.split(";")[0]}
    assert (await raw_get(port, "/desk.js", jar))[0] == 200
    st, _, body = await raw_get(port, "/api/summary", jar)
    assert st == 200 and orjson.loads(body)["accounts"] == desk.book.n_accounts
    st, _, body = await raw_get(port, "/api/worst?n=3", {"Authorization": f"Bearer {TOKEN}"})
    assert st == 200 and len(orjson.loads(body)["rows"]) == 3
    assert (await raw_get(port, "/api/worst", {"Cookie": f"{name}=forged"}))[0] == 401
    assert (await raw_get(port, "/api/nope", jar))[0] == 404
    assert (await raw_get(port, "/api/worst?n=-1", jar))[0] == 400
    st, hdrs, _ = await raw_get(port, "/logout", jar)
    assert st == 303 and hdrs["location"] == "/" and "Max-Age=0" in hdrs["set-cookie"]
    # the websocket: cookie only from the same origin
    ws_url = f"ws://127.0.0.1:{port}/ws/alerts?snapshot=0&acks=1"
    with pytest.raises(InvalidStatus) as e:
        async with connect(ws_url, additional_headers=jar, origin="http://evil.example"):
            pass
    assert e.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as e:
        async with connect(ws_url):
            pass
    assert e.value.response.status_code == 401
    async with connect(ws_url, additional_headers=jar, origin=f"http://127.0.0.1:{port}") as ws:
        server.broadcast_summary({"x": 1})
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["kind"] == "HEARTBEAT"


async def test_requests_replies_and_ack_notices(served):
    desk, server, port = served
    base = f"ws://127.0.0.1:{port}/ws/alerts?token={TOKEN}"
    eid = next(desk.events.newest(1))[0]
    one = desk.engine.open_breaches(T0)[0]["account_id"]  # a one-frame snapshot for c
    async with connect(base + "&snapshot=0&acks=1") as a, connect(base + "&snapshot=0") as b, \
            connect(base + f"&accounts={one}") as c:
        first = orjson.loads(await asyncio.wait_for(c.recv(), 5))
        assert first["kind"] == "SNAPSHOT"  # the default is unchanged
        await a.send(orjson.dumps({"op": "ack", "event_id": eid, "note": "ok", "by": "x",
                                   "req": 7}).decode())
        got = [orjson.loads(await asyncio.wait_for(a.recv(), 5)) for _ in range(2)]
        kinds = {g["kind"]: g for g in got}
        assert kinds["REPLY"]["req"] == 7 and kinds["REPLY"]["ok"] is True
        assert kinds["ACK"]["event_id"] == eid and kinds["ACK"]["note"] == "ok"
        await a.send(b'{"op": "ack", "event_id": "nope", "req": "r2"}'.decode())
        reply = orjson.loads(await asyncio.wait_for(a.recv(), 5))
        assert reply == {**reply, "kind": "REPLY", "req": "r2", "ok": False}
        # b asked for no notices and no snapshot: silence
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.recv(), 0.3)
    assert (tmp := desk.store.path).exists() and eid in orjson.loads(tmp.read_bytes())


def test_query_costs_are_recorded(book):
    desk = make_desk(book)
    t0 = time.perf_counter()
    for path in ("/api/summary", "/api/worst", "/api/crowding", "/api/whatif", "/api/calls",
                 "/api/events", "/api/acks", "/api/symbols"):
        assert desk.api(path, {})[0] == 200, path
    assert set(desk.timings) >= {"worst", "crowding", "whatif", "crowding_refresh"}
    assert time.perf_counter() - t0 < 30


async def test_event_memory_stays_under_its_byte_budget(book):
    """Many more events than fit: the desk's event memory (monitor/eventring.py) stays under
    `event_bytes`, measured by tracemalloc, not only by its own count; the newest events stay
    queryable (feed, drill-down, acknowledgement) and evicted ones are simply gone."""
    import gc
    import tracemalloc

    budget = 4 * 2**20
    desk = make_desk(book, event_bytes=budget, recent=100, history_accounts=1)
    templates = crash(desk, fall=0.08)
    ids = book.account_ids
    group_a, group_b = range(0, 500), range(500, len(ids))

    def event(k):  # the k-th pushed event: (event_id, account_id), rebuilt, never kept here
        group = group_a if k < 10_000 else group_b
        return f"t-{10**6 + k}", ids[group[k % len(group)]]

    def push(k0, n):
        for k in range(k0, k0 + n, 1000):
            evs = []
            for j in range(k, k + 1000):
                e = dict(templates[j % len(templates)])
                e["event_id"], e["account_id"] = event(j)
                e["seq"] = 10**6 + j
                evs.append(e)
            desk.record(evs)
            desk.flush()

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        push(0, 10_000)  # group A
        push(10_000, 20_000)  # group B: A's events are all evicted
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    pushed = [event(k) for k in range(30_000)]
    ring = desk.events
    st = ring.stats()
    assert 0 < grown <= budget, grown
    assert ring.nbytes <= budget and st["evicted"] > 20_000
    assert ring.nbytes > budget - 8_192  # filled to the budget, not emptied
    held = len(ring)
    assert [m[0] for m in ring.newest()] == [e for e, _ in reversed(pushed[-held:])]
    # the alert feed: the newest `recent`
    feed = ok(desk, "/api/events", limit=2000)
    assert feed["held"] == 100
    assert [e["event_id"] for e in feed["events"]] == [e for e, _ in reversed(pushed[-100:])]
    # drill-down: the account's newest held events; a group A account has none left
    acct = pushed[-1][1]
    want = [e for e, a in pushed[-held:] if a == acct][-desk._per_account:]
    d = ok(desk, "/api/account", id=acct)
    assert [e["event_id"] for e in d["events"]] == want[::-1] and want
    assert ok(desk, "/api/account", id=ids[0])["events"] == []
    assert st["accounts"] <= len(group_b)
    # acknowledgements: the newest is known, an evicted one is refused with a reason
    r = await desk.rpc({"op": "ack", "event_id": pushed[-1][0], "note": "seen", "by": "ann"})
    assert r["ok"] and r["ack"]["account_id"] == acct
    r = await desk.rpc({"op": "ack", "event_id": pushed[0][0], "note": "late", "by": "ann"})
    assert not r["ok"] and "desk_event_bytes" in r["error"]
    assert ok(desk, "/api/summary")["desk_events"]["held"] == held


def test_event_ring_per_account_trim_and_compaction():
    from monitor.desk.eventring import ENTRY_BYTES, EventRing

    ring = EventRing(100 * (10 + ENTRY_BYTES), {"A": 0, "B": 1}, per_account=3)
    for i in range(10_000):  # compaction of the ring list happens on the way
        ring.add((f"e{i}", "A" if i % 10 else "B", "TIER_CHANGE", None, None, None, i,
                  b"x" * 10))
    assert len(ring) == 100 and ring.nbytes == 100 * (10 + ENTRY_BYTES)
    assert len(ring._ring) < 2 * 4096 + 100  # evicted slots are dropped
    assert [m[0] for m in ring.of_account(0, 3)] == ["e9997", "e9998", "e9999"]
    assert [m[0] for m in ring.of_account(1, 3)] == ["e9970", "e9980", "e9990"]
    assert len(ring.of_account(1, 50)) <= 2 * 3  # trimmed in steps to per_account
    assert ring.get("e9899") is None and ring.get("e9900")[6] == 9900
    assert len(ring._by_id) == 100
    big = EventRing(1000, {"A": 0})
    big.add(("x", "A", "K", None, None, None, 0, b"y" * 2000))  # larger than the budget
    assert len(big) == 0 and big.get("x") is None and big.of_account(0, 5) == []


def test_the_drill_down_lists_contracts_and_the_feed_holds_contract_events():
    """TV14 through the desk: the account's contracts in repayment order with their own margin
    ratios and terms, and CONTRACT_DUE / CONTRACT_EXPIRED in the recent events."""
    from datetime import date, datetime

    from monitor.book.load import book_from_dict
    from monitor.core.calendar import CHINA

    def at(d, hh, mm=0):
        return int(datetime(d.year, d.month, d.day, hh, mm, tzinfo=CHINA).timestamp()) * 10**9

    doc = {"securities": [{"symbol": "600008.SH", "price": "30.00", "haircut": "0.6"},
                          {"symbol": "600009.SH", "price": "10.00", "haircut": "0.6"}],
           "accounts": [{"account_id": "TV14", "cash": "0", "positions": [
               {"symbol": "600008.SH", "kind": "collateral", "qty": 5000},
               {"symbol": "600009.SH", "kind": "financed", "qty": 10000,
                "financed_cost": "100000", "fin_margin_ratio": "1.0", "contract_id": "FX",
                "open_date": "2026-06-04", "term_end": "2026-12-04"},
               {"symbol": "600009.SH", "kind": "financed", "qty": 1000,
                "financed_cost": "8000", "fin_margin_ratio": "0.80", "contract_id": "F0",
                "open_date": "2025-12-10", "term_end": "2026-12-10"}]}]}
    engine = Engine(MarginState(book_from_dict(doc), live=True),
                    EngineConfig(run_id="ct", clock="tape"))
    desk = Desk(engine, clock=lambda: T0 + 5)
    desk.record(engine.start(T0))
    for t in (at(date(2026, 12, 3), 10), at(date(2026, 12, 7), 9, 31)):
        engine.add_ticks(np.array([1]), np.array([10_000]), np.array([t]))
        desk.before_cycle()
        events = engine.cycle(T0 + 2)
        desk.enrich(events)
        desk.record(events)
    desk.flush()
    got = ok(desk, "/api/events", kind="CONTRACT_EXPIRED,CONTRACT_DUE")["events"]
    assert sorted((e["kind"], e["contract_id"]) for e in got) == [
        ("CONTRACT_DUE", "F0"), ("CONTRACT_DUE", "FX"), ("CONTRACT_EXPIRED", "FX")]
    d = ok(desk, "/api/account", id="TV14")
    assert [(c["contract_id"], c["margin_ratio"], c["term_end"], c["notice"])
            for c in d["contracts"]] == [("F0", 0.8, "2026-12-10", "DUE"),
                                         ("FX", 1.0, "2026-12-04", "EXPIRED")]
    assert d["contracts"][1]["principal"] == 100000.0 and d["contracts"][1]["qty"] == 10000
    assert [e["kind"] for e in d["events"]].count("CONTRACT_EXPIRED") == 1
    # the plan that closes the expired contract, for the liquidator's re-pricing
    assert list(d["contract_plans"]) == ["FX"]
    (o,) = d["contract_plans"]["FX"]["orders"]
    assert (o["qty"], o["purpose"], o["contract_id"]) == (10000, "sell_to_repay", "FX")
