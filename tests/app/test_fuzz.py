"""Hostile input, fuzzed (hypothesis): tick messages, account events, books (JSON and CSV),
websocket messages and raw HTTP requests against a real AlertServer.

Properties: nothing but the documented typed errors escapes (AccountEventError, BookError; the
parser and the server never raise), every bad input is counted, and the state after a mixed
stream equals the state after the valid inputs alone (a second parser / engine / filter fed only
those): prices, tiers, book arrays, emitted events, a client's filter.

CI runs a modest number of examples. The long run (docs/reliability.md, not in CI):
``scripts/fuzz --cases 100000`` sets MM_FUZZ_CASES, shared between the targets by WEIGHTS, and
MM_FUZZ_REPORT, a JSON file of examples run per target.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import json
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from test_bad_books import good as good_book_doc
from websockets.sync.client import connect as ws_connect

from feeds.ticks import TickParser
from monitor.app.warmup import SAMPLE_BOOK
from monitor.book.load import BookError, book_from_dict, load_book
from monitor.book.universe import universe_of
from monitor.core.account_events import FILL_SIDES, TYPES, AccountEventError
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState
from monitor.web.server import TIERS, AlertServer

CASES = int(os.environ.get("MM_FUZZ_CASES", "0"))
WEIGHTS = {"ticks": 0.25, "account_events": 0.25, "book_json": 0.1, "book_csv": 0.05,
           "websocket": 0.15, "http": 0.2}
CI = {"ticks": 150, "account_events": 150, "book_json": 80, "book_csv": 30, "websocket": 40,
      "http": 150}
RUN = Counter()
T0 = 1_763_712_000_000_000_000
NOW = T0 + 10**12
TOKEN = "fuzz-token-6b1f0e9d2c7a4e58"
SECRET = "do-not-serve-4f1c"


def fuzz(name: str):
    n = max(CI[name], int(CASES * WEIGHTS[name])) if CASES else CI[name]
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    out = os.environ.get("MM_FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps(dict(RUN), indent=1))


# ---------------------------------------------------------------------- shared strategies

def no_surrogates(**kw):
    return st.text(alphabet=st.characters(blacklist_categories=("Cs",)), **kw)


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | no_surrogates(max_size=20))
ANY_JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(no_surrogates(max_size=10), inner, max_size=4),
                        max_leaves=12)

BOOK = load_book(SAMPLE_BOOK)
UNI = universe_of(BOOK)
SYMS = list(UNI.symbols)


# ---------------------------------------------------------------------- ticks

def _bad_price():
    """Prices that fail a stateless check whatever the symbol."""
    def parses_ok(s):
        try:
            return math.isfinite(float(s)) and float(s) > 0
        except ValueError:
            return False
    return st.one_of(
        st.integers(-10**6, 0), st.floats(max_value=0, allow_nan=False),
        st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e999", "-1", "0", "", "10,5"]),
        no_surrogates(max_size=8).filter(lambda s: not parses_ok(s)),
        st.booleans(), st.lists(st.integers(-2**63, 2**63 - 1), max_size=2), st.just({"v": 1}),
        st.floats(min_value=1e7, max_value=1e300),  # far out of any band
    )


@st.composite
def bad_tick(draw, last: dict):
    """A tick every parser must reject: broken fields, or (stateful) out of order / duplicate
    against the good ticks before it (`last`: symbol -> (ts, price li))."""
    sym = draw(st.sampled_from(SYMS))
    lo, hi = UNI.limit_down[SYMS.index(sym)], UNI.limit_up[SYMS.index(sym)]
    good_price = draw(st.integers(int(lo), int(hi))) / 1000
    kind = draw(st.sampled_from(["symbol", "price", "band", "ts", "future", "missing", "order",
                                 "dup"]))
    t = {"symbol": sym, "price": good_price, "ts": T0}
    if kind == "symbol":
        t["symbol"] = draw(st.one_of(no_surrogates(max_size=12).filter(lambda s: s not in SYMS),
                                     st.integers(-2**63, 2**64 - 1),
                                     st.lists(st.just(sym), max_size=1),
                                     st.booleans()))
    elif kind == "price":
        t["price"] = draw(_bad_price())
    elif kind == "band":
        t["price"] = draw(st.sampled_from([(int(hi) + draw(st.integers(1, 10**6))) / 1000,
                                           max(int(lo) - draw(st.integers(1, 10**4)), 1) / 1000]))
        assume(not lo <= round(t["price"] * 1000) <= hi)
    elif kind == "ts":
        t["ts"] = draw(st.one_of(st.integers(-2**63, -1), st.integers(2**63, 2**64 - 1),
                                 # (NaN / inf would be written as null: "use receive time")
                                 st.floats(allow_nan=False, allow_infinity=False),
                                 no_surrogates(max_size=5),
                                 st.booleans()))
    elif kind == "future":  # beyond the clock (NOW) + the default skew of 5 s
        t["ts"] = NOW + 5 * 10**9 + draw(st.integers(1, 2**62))
    elif kind == "missing":
        del t[draw(st.sampled_from(["symbol", "price"]))]
        if draw(st.booleans()):
            t.setdefault("symbol", None)
            t.setdefault("price", None)
    elif kind in ("order", "dup"):
        seen = [s for s in SYMS if s in last]
        assume(seen)
        s = draw(st.sampled_from(seen))
        ts, li = last[s]
        t = {"symbol": s, "price": li / 1000, "ts": ts if kind == "dup" else ts - 1}
    return t


@st.composite
def tick_stream(draw):
    """Messages of a mixed stream, each with the good ticks it holds (in order) and the number
    of rejections it must cause."""
    last: dict = {}
    ts = T0 + 1_000
    out = []
    for _ in range(draw(st.integers(1, 12))):
        form = draw(st.sampled_from(["ticks", "ticks", "ticks", "bytes", "json", "oversize",
                                     "literal"]))
        if form == "literal":  # numbers no JSON encoder writes, with a known symbol
            sym = draw(st.sampled_from(SYMS))
            i = SYMS.index(sym)
            price = draw(st.integers(int(UNI.limit_down[i]), int(UNI.limit_up[i]))) / 1000
            lit = draw(st.sampled_from(['"ts":99999999999999999999999', '"ts":1e3',
                                        '"price":1e400', '"price":-0.0', '"price":NaN',
                                        '"ts":1.763712e18', '"ts":-1']))
            out.append((f'{{"symbol":"{sym}","price":{price},{lit}}}'.encode()
                        if "ts" in lit else f'{{"symbol":"{sym}",{lit}}}'.encode(), [], 1))
            continue
        if form == "bytes":
            raw = draw(st.binary(max_size=64))
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            assume(not any(s.encode() in raw for s in SYMS))
            out.append((raw, [], len(obj) if type(obj) is list else 1))
            continue
        if form == "json":
            obj = draw(ANY_JSON)
            text = orjson.dumps(obj)
            assume(not any(s.encode() in text for s in SYMS))
            out.append((text, [], len(obj) if type(obj) is list else 1))
            continue
        goods, items, bad = [], [], 0
        for _ in range(draw(st.integers(0, 8))):
            if draw(st.integers(0, 2)) == 0:
                items.append(draw(bad_tick(last)))
                bad += 1
                continue
            sym = draw(st.sampled_from(SYMS))
            i = SYMS.index(sym)
            li = draw(st.integers(int(UNI.limit_down[i]), int(UNI.limit_up[i])))
            ts += draw(st.integers(1, 10**9))
            price = draw(st.sampled_from([li / 1000, f"{li / 1000:.3f}", f"{li / 1000}"]))
            t = {"symbol": sym, "price": price, "ts": ts, "volume": draw(JSON_SCALARS)}
            items.append(t)
            if form == "oversize":
                continue
            goods.append(t)
            last[sym] = (ts, li)
        if form == "oversize":  # looks valid, refused whole: its ticks never count
            out.append((orjson.dumps(items + [{"pad": "x" * 5000}]), [], 1))
        elif len(items) == 1 and draw(st.booleans()):
            out.append((orjson.dumps(items[0]), goods, bad))
        else:
            out.append((orjson.dumps(items), goods, bad))
    return out


def run_ticks(messages, engine):
    parser = TickParser(UNI, max_message_bytes=4096, clock=lambda: NOW)
    accepted, events = [], []
    for m in messages:
        b = parser.parse(m, recv_ns=NOW)
        accepted.append((b.sec.tolist(), b.price.tolist(), b.ts.tolist()))
        engine.add_ticks(b.sec, b.price, b.ts)
        events.extend(engine.cycle(NOW))
    return parser, accepted, events


def new_engine(book=BOOK):
    e = Engine(MarginState(copy.deepcopy(book), live=True), EngineConfig(run_id="fz"))
    start = e.start(T0)
    return e, start


@fuzz("ticks")
@given(tick_stream())
def test_fuzz_ticks(stream):
    RUN["ticks"] += 1
    mixed = [m for m, _, _ in stream]
    valid = [orjson.dumps(g) for _, g, _ in stream]  # the good ticks alone, same grouping
    ea, _ = new_engine()
    eb, _ = new_engine()
    pa_, acc_a, ev_a = run_ticks(mixed, ea)
    pb, acc_b, ev_b = run_ticks(valid, eb)
    assert pb.rejections.total == 0
    assert pa_.rejections.total == sum(n for _, _, n in stream)
    assert acc_a == acc_b
    np.testing.assert_array_equal(pa_.last_ts, pb.last_ts)
    np.testing.assert_array_equal(pa_.last_price, pb.last_price)
    np.testing.assert_array_equal(ea.state.price, eb.state.price)
    np.testing.assert_array_equal(ea.reported, eb.reported)
    assert ev_a == ev_b


# ---------------------------------------------------------------------- account events

ACCOUNTS = list(BOOK.account_ids)
PROFILES = list(BOOK.profile_names)
MONEY = st.one_of(st.integers(1, 10**7).map(str),
                  st.decimals(min_value="0.001", max_value="1000000", places=3).map(str),
                  st.integers(1, 10**6))


@st.composite
def good_event(draw):
    kind = draw(st.sampled_from(TYPES))
    ev = {"type": kind}
    acct = draw(st.sampled_from(ACCOUNTS))
    sym = draw(st.sampled_from(SYMS))
    if kind in ("deposit", "withdrawal"):
        ev.update(account_id=acct, amount=draw(MONEY))
    elif kind == "repayment":
        ev.update(account_id=acct, amount=draw(MONEY),
                  source=draw(st.sampled_from(["cash", "external"])))
    elif kind == "fill":
        ev.update(account_id=acct, symbol=sym, side=draw(st.sampled_from(FILL_SIDES)),
                  qty=draw(st.integers(1, 5000)) * 100, price=draw(MONEY))
        if draw(st.booleans()):
            ev["fee"] = draw(st.decimals(min_value="0", max_value="100", places=2).map(str))
    elif kind == "interest_accrual":
        ev.update(financing_rate=draw(st.sampled_from(["0.08", "0.1", 0.0835])),
                  short_fee_rate=draw(st.sampled_from(["0.1", "0.0", 0.12])))
        if draw(st.booleans()):
            ev["account_id"] = acct
    elif kind == "haircut":
        ev.update(symbol=sym, haircut=draw(st.sampled_from(["0", "0.5", "0.65", "1"])))
    elif kind in ("suspend", "resume"):
        ev["symbol"] = sym
    else:
        ev.update(account_id=acct, profile=draw(st.sampled_from(PROFILES)))
    if draw(st.booleans()):
        ev["event_id"] = draw(st.sampled_from(["a", "b", "c", 1, 2]))
    if draw(st.booleans()):
        ev["ts"] = draw(st.integers(T0, T0 + 10**12))
    return ev


@st.composite
def hostile_event(draw):
    how = draw(st.sampled_from(["field", "field", "drop", "extra", "any", "shape"]))
    value = ANY_JSON | st.integers(2**63, 2**80) | st.integers(-2**80, -2**63)
    if how == "shape":
        return draw(ANY_JSON)
    if how == "any":
        keys = st.sampled_from(["account_id", "amount", "symbol", "side", "qty", "price", "ts",
                                "days", "event_id", "haircut", "profile", "source", "fee",
                                "financing_rate", "short_fee_rate", "day_count"])
        return {"type": draw(st.sampled_from(TYPES)),
                **draw(st.dictionaries(keys, value, max_size=6))}
    ev = draw(good_event())
    keys = sorted(ev)
    if how == "drop":
        del ev[draw(st.sampled_from(keys))]
    elif how == "extra":
        ev[draw(no_surrogates(max_size=8))] = draw(ANY_JSON)
    else:
        ev[draw(st.sampled_from(keys + ["ts", "event_id", "fee", "margin_ratio", "days",
                                        "day_count"]))] = draw(value)
    return ev


def book_arrays(e):
    b, s = e.state.book, e.state
    idx = np.arange(b.n_accounts)
    assets, liabilities = s.values(idx)
    return [b.cash, b.accrued, b.pos_qty, b.pos_cost, b.pos_used, b.haircut, b.suspended,
            b.profile_of, assets, liabilities, e.reported, e.calls.accounts, s.price]


@fuzz("account_events")
@given(st.lists(good_event() | hostile_event(), min_size=1, max_size=25))
def test_fuzz_account_events(evs):
    RUN["account_events"] += 1
    ea, sa = new_engine()
    eb, sb = new_engine()
    assert sa == sb
    out_a, out_b, rejected = [], [], 0
    for i, ev in enumerate(evs):
        now = NOW + i
        try:
            got = ea.apply_account_event(ev, now)
        except AccountEventError as e:
            assert e.reason and str(e)  # typed, with a reason to count and a message
            rejected += 1
            continue
        out_a.extend(got)
        out_b.extend(eb.apply_account_event(copy.deepcopy(ev), now))  # the valid ones only
    assert out_a == out_b
    for x, y in zip(book_arrays(ea), book_arrays(eb), strict=True):
        np.testing.assert_array_equal(x, y)
    assert ea.account_events.applied == len(evs) - rejected


# ---------------------------------------------------------------------- books

def _paths(doc):
    """Every (table, row, field) path still present in a (maybe already mutated) document."""
    def dicts(x):
        return [(i, r) for i, r in enumerate(x) if isinstance(r, dict)] \
            if isinstance(x, list) else []
    out = []
    for table in ("securities", "accounts"):
        for i, row in dicts(doc.get(table)):
            out += [(table, i, k) for k in row]
            for j, p in dicts(row.get("positions")):
                out += [(table, i, "positions", j, k) for k in p]
    profiles = doc.get("profiles")
    if isinstance(profiles, dict):
        for name, lines in profiles.items():
            if isinstance(lines, dict):
                out += [("profiles", name, k) for k in lines]
    return out


@st.composite
def mutated_book(draw):
    doc = good_book_doc()
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["set", "set", "drop", "row", "table"]))
        paths = _paths(doc)
        if how == "table" or not paths:
            doc[draw(st.sampled_from(["securities", "accounts", "profiles", "x"]))] = \
                draw(ANY_JSON)
            continue
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if how == "set":
            parent[path[-1]] = draw(ANY_JSON | st.sampled_from(
                ["-1", "0", "1e9999", "NaN", "000001.SZ", "600000.SH", "C1", "financed",
                 "short", "99999999999999999999", "0.0001", ""]))
        elif how == "drop":
            del parent[path[-1]]
        elif isinstance(doc.get(path[0]), list):
            doc[path[0]].append(draw(ANY_JSON))
    return doc


def usable(book):
    """A book that loads is usable: a full sweep and every account's figures."""
    st_ = MarginState(book)
    st_.sweep()
    st_.figures_many(np.arange(book.n_accounts))


@fuzz("book_json")
@given(mutated_book())
def test_fuzz_book_json(doc):
    RUN["book_json"] += 1
    try:
        book = book_from_dict(doc)
    except BookError as e:
        assert e.problems and all(str(p) in str(e) for p in e.problems)
        return
    usable(book)


def _csv_tables(doc):
    cols = {"securities": ["symbol", "price", "haircut", "board", "lot", "suspended",
                           "prev_close"],
            "accounts": ["account_id", "cash", "accrued_interest_fees", "profile"],
            "positions": ["account_id", "symbol", "kind", "qty", "financed_cost",
                          "fin_margin_ratio", "short_sell_amount", "short_margin_ratio"]}
    rows = {"securities": [[s.get(c, "") for c in cols["securities"]] for s in doc["securities"]],
            "accounts": [[a.get(c, "") for c in cols["accounts"]] for a in doc["accounts"]],
            "positions": [[a["account_id"]] + [p.get(c, "") for c in cols["positions"][1:]]
                          for a in doc["accounts"] for p in a["positions"]]}
    return cols, rows


CELL = st.one_of(no_surrogates(max_size=12), st.sampled_from(
    ["", "-1", "1e400", "nan", '"', ",", "\n", "0x10", "true", "600000.SH", "C1", "collateral",
     "9" * 30]), st.integers().map(str))


@fuzz("book_csv")
@given(st.data())
def test_fuzz_book_csv(tmp_path_factory, data):
    RUN["book_csv"] += 1
    folder = tmp_path_factory.mktemp("csvbook")
    cols, rows = _csv_tables(good_book_doc())
    for _ in range(data.draw(st.integers(1, 3))):
        table = data.draw(st.sampled_from(sorted(rows)))
        how = data.draw(st.sampled_from(["cell", "cell", "header", "row", "bytes"]))
        if rows[table] is None:
            continue
        if how == "cell" and rows[table]:
            r = data.draw(st.integers(0, len(rows[table]) - 1))
            row = rows[table][r]
            if row:
                row[data.draw(st.integers(0, len(row) - 1))] = data.draw(CELL)
        elif how == "header":
            cols[table] = list(cols[table])
            cols[table][data.draw(st.integers(0, len(cols[table]) - 1))] = data.draw(CELL)
        elif how == "row" and rows[table] is not None:
            rows[table].append(data.draw(st.lists(CELL, max_size=10)))
        else:
            rows[table] = None
            (folder / f"{table}.csv").write_bytes(data.draw(st.binary(max_size=200)))
    for table, rs in rows.items():
        if rs is None:
            continue
        with open(folder / f"{table}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols[table])
            w.writerows(rs)
    try:
        book = load_book(folder)
    except BookError as e:
        assert e.problems
        return
    usable(book)


# ---------------------------------------------------------------------- server

class Served:
    """An AlertServer on its own event-loop thread (sync clients talk to it from the test)."""

    def __init__(self, static: Path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.errors: list[logging.LogRecord] = []
        self.server = AlertServer(token=TOKEN, snapshot=lambda: [], health=lambda: {"ok": True},
                                  registry=CollectorRegistry(), static_dir=static,
                                  max_inbound_per_s=0, close_timeout=0.5, open_timeout=2)
        self.port = self.call(self.server.start())[1]

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self):
        self.call(self.server.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Errors(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record):
        self.sink.append(record)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("www")
    root = base / "static"
    root.mkdir()
    (root / "index.html").write_text("<h1>desk</h1>")
    (root / "app.js").write_text("1")
    (base / "secret.txt").write_text(SECRET)
    s = Served(root)
    h = _Errors(s.errors)
    for name in ("monitor.web.server", "monitor.web.server.websockets"):
        logging.getLogger(name).addHandler(h)
    yield s
    for name in ("monitor.web.server", "monitor.web.server.websockets"):
        logging.getLogger(name).removeHandler(h)
    s.close()


WS_MESSAGES = st.one_of(
    st.builds(lambda t, a: {"subscribe": {"tiers": t, "accounts": a}},
              st.none() | st.lists(st.sampled_from(sorted(TIERS)) | no_surrogates(max_size=6),
                                   max_size=3),
              st.none() | st.lists(st.sampled_from(["A1", "A2", "A3"]), max_size=3)),
    st.builds(lambda s: {"subscribe": s}, ANY_JSON),
    st.builds(lambda op, req: {"op": op, "req": req}, ANY_JSON, ANY_JSON),
    ANY_JSON,
).map(lambda o: orjson.dumps(o).decode()) | no_surrogates(max_size=40) | st.binary(max_size=40)


def expected_reply(msg, filt):
    """(reply kind, new filter) of one client message: the valid-only oracle."""
    try:
        obj = orjson.loads(msg)
    except orjson.JSONDecodeError:
        return "ERROR", filt
    if isinstance(obj, dict) and "op" in obj:
        return "REPLY", filt
    sub = obj.get("subscribe") if isinstance(obj, dict) else None
    if not isinstance(sub, dict):
        return "ERROR", filt
    tiers, accounts = sub.get("tiers"), sub.get("accounts")
    for v in (tiers, accounts):
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            return "ERROR", filt
    if tiers and not set(tiers) <= TIERS:
        return "ERROR", filt
    return "SUBSCRIBED", (frozenset(tiers) if tiers else None,
                          frozenset(accounts) if accounts else None)


@fuzz("websocket")
@given(st.lists(WS_MESSAGES, min_size=1, max_size=15))
def test_fuzz_websocket_messages(served, msgs):
    RUN["websocket"] += 1
    events = [{"seq": i, "kind": "TIER_CHANGE", "account_id": a, "tier": t,
               "previous_tier": "NORMAL"} for i, (a, t) in enumerate(
                   (a, t) for a in ("A1", "A2", "A9") for t in sorted(TIERS))]
    filt = (None, None)
    with ws_connect(f"ws://127.0.0.1:{served.port}/ws/alerts?snapshot=0",
                    additional_headers={"Authorization": f"Bearer {TOKEN}"},
                    open_timeout=10) as ws:
        for m in msgs:
            ws.send(m)
            kind, filt = expected_reply(m, filt)
            while True:
                reply = orjson.loads(ws.recv(timeout=10))
                if reply["kind"] != "HEARTBEAT":
                    break
            assert reply["kind"] == kind, (m, reply)
        served.server.broadcast(events)
        ws.send("end")  # answered in line after the events queued before it
        got = []
        while (f := orjson.loads(ws.recv(timeout=10)))["kind"] != "ERROR":
            got.append(f["seq"])
    tiers, accounts = filt
    want = [e["seq"] for e in events
            if (tiers is None or e["tier"] in tiers or e["previous_tier"] in tiers)
            and (accounts is None or e["account_id"] in accounts)]
    assert got == want
    assert not served.errors, logging.Formatter().format(served.errors[0])


SEGMENTS = st.sampled_from(["", "healthz", "metrics", "ws", "alerts", "api", "index.html",
                            "app.js", "..", "%2e%2e", "%2E%2e", "..%2f", "%00", "%5c", "static",
                            "secret.txt", "logout", ".", "//", "%252e%252e", "~", "?"])
PATHS = st.one_of(st.sampled_from(["/", "/healthz", "/metrics", "/ws/alerts", "/index.html",
                                   "/app.js", "/logout", "/api/summary"]),
                  st.lists(SEGMENTS | st.text("abcxyz%./", max_size=6), min_size=1,
                           max_size=6).map(lambda p: "/" + "/".join(p)))
QUERIES = st.sampled_from(["", f"?token={TOKEN}", "?token=wrong", "?token=", "?tiers=X",
                           "?snapshot=0&token=" + TOKEN[:-1], "?a=%ff%fe"])
HEADER_NAMES = st.sampled_from(["Authorization", "Cookie", "Origin", "Host", "Upgrade",
                                "Connection", "Content-Length", "Transfer-Encoding",
                                "Sec-WebSocket-Key", "Sec-WebSocket-Version", "X-Junk"])
HEADER_VALUES = st.one_of(
    st.sampled_from([f"Bearer {TOKEN}", "Bearer wrong", "Basic x", "websocket", "Upgrade",
                     "13", "dGhlIHNhbXBsZSBub25jZQ==", "0", "5", "chunked",
                     f"mm_desk_0={TOKEN}", "http://evil.example", "127.0.0.1"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))


@st.composite
def http_request(draw):
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "PUT", "DELETE", "BREW",
                                   "get", ""]))
    target = draw(PATHS) + draw(QUERIES)
    proto = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2", ""]))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5))
    body = draw(st.binary(max_size=40)) if draw(st.booleans()) else b""
    lines = [f"{method} {target} {proto}".strip()] + [f"{k}: {v}" for k, v in headers]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    if draw(st.integers(0, 20)) == 0:
        raw = draw(st.binary(max_size=100))
    authed = (f"Bearer {TOKEN}" in [v for k, v in headers if k == "Authorization"]
              or f"token={TOKEN}" in target.replace(f"token={TOKEN[:-1]}&", ""))
    return raw, target, authed


def send_raw(port, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@fuzz("http")
@given(http_request())
def test_fuzz_http_requests(served, req):
    RUN["http"] += 1
    raw, target, authed = req
    try:
        resp = send_raw(served.port, raw)
    except ConnectionResetError:
        resp = b""  # the server may abort a connection it refuses
    assert SECRET.encode() not in resp and TOKEN.encode() not in resp
    if resp:
        status_line = resp.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        status = int(status_line.split()[1])
        assert status in (101, 200, 303, 400, 401, 403, 404, 405, 413, 414, 426, 431, 500, 503,
                          505)  # 505: a websocket handshake over HTTP/1.0
        if status in (101, 200):  # only the open health check without the token
            path = urlsplit(target).path  # as the server reads it ('///x' is path '/x')
            assert authed or path == "/healthz", (raw, resp[:200])
        assert status != 500, resp[:300]
    assert not served.errors, logging.Formatter().format(served.errors[0])


def test_server_still_serves_after_the_fuzz(served):
    """Run last in this module: a good client is still served normally."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    with ws_connect(f"ws://127.0.0.1:{served.port}/ws/alerts?snapshot=0",
                    additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        ws.send('{"subscribe": {"tiers": ["WARNING"]}}')
        assert orjson.loads(ws.recv(timeout=5))["kind"] == "SUBSCRIBED"
    # hostile connections linger at most open_timeout (2 s here): none is leaked
    deadline = time.monotonic() + 10
    while served.server.stats()["tcp_open"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served.server.stats()["tcp_open"] == 0
