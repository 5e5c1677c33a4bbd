"""Pre-trade check: the exact (Decimal) reference on seeded random books, every refusal reason
on a crafted book, bad requests, and POST /api/pretrade against a running monitor."""

from __future__ import annotations

import asyncio
import json
import random
from decimal import Decimal

import orjson
import pytest
import redis
from bookgen import make_book
from conftest import start_monitor
from credit_reference import CreditRef, add_credit_terms, random_action
from websockets.asyncio.client import connect

from monitor.book.load import book_from_dict
from monitor.core.engine import Engine
from monitor.core.pretrade import PretradeError, check
from monitor.core.state import MarginState

D = Decimal
TOKEN = "pretrade-test-token-5a9d0c11"


def _key(r: dict) -> tuple:
    code = r["code"]
    detail = {
        "SUSPENDED": lambda: r["symbol"], "NOT_ELIGIBLE": lambda: r["list"],
        "INSUFFICIENT_POSITION": lambda: r["symbol"],
        "INSUFFICIENT_CASH": lambda: D(repr(r["required"])),
        "SHORT_PROCEEDS": lambda: D(repr(r["required"])),
        "NEW_DEBT_BLOCKED": lambda: r["tier"],
        "INSUFFICIENT_MARGIN": lambda: D(repr(r["required"])),
        "FINANCING_HALTED": lambda: r["symbol"], "CREDIT_LINE": lambda: r["line"],
        "BELOW_WITHDRAWAL_LINE": lambda: None,
        "CONCENTRATION": lambda: (r["item_type"], r["name"]),
        "LOT_SIZE": lambda: r["qty"], "PRICE_OUTSIDE_BAND": lambda: D(repr(r["price"])),
    }[code]()
    return code, detail


@pytest.mark.parametrize("seed", range(6))
def test_decisions_match_the_exact_reference_on_random_books(seed):
    doc = add_credit_terms(make_book(seed, n_accounts=120, n_securities=30), seed)
    rf = CreditRef(json.loads(json.dumps(doc)))
    st = MarginState(book_from_dict(doc), live=True)
    rng = random.Random(seed)
    seen = set()
    for _ in range(400):
        acct = rng.choice(doc["accounts"])
        act = random_action(rng, doc, acct)
        got = check(st, acct["account_id"], dict(act))
        want = rf.decide(acct, act)
        mine = sorted((_key(r) for r in got.reasons), key=repr)
        # INSUFFICIENT_CASH/MARGIN amounts are compared at the fen
        norm = lambda xs: [(c, d.quantize(D("0.01")) if isinstance(d, Decimal) else d)  # noqa: E731
                           for c, d in xs]
        assert norm(mine) == norm(want), (acct["account_id"], act, got.reasons)
        assert got.allowed == (not want)
        seen.update(c for c, _ in want)
    assert {"CONCENTRATION", "INSUFFICIENT_MARGIN", "BELOW_WITHDRAWAL_LINE", "LOT_SIZE"} <= seen


# ---------------------------------------------------------------- one book, every reason

def crafted() -> dict:
    return {
        "securities": [
            {"symbol": "600000.SH", "price": "10.00", "haircut": "0.6", "group": "bank",
             "free_float": 1_000_000, "market_financing": "2400000"},
            {"symbol": "600036.SH", "price": "20.00", "haircut": "0.7", "group": "bank"},
            {"symbol": "000002.SZ", "price": "8.00", "haircut": "0.5", "group": "property",
             "short_eligible": False},
            {"symbol": "000001.SZ", "price": "5.00", "haircut": "0",
             "financing_eligible": False},
            {"symbol": "600519.SH", "price": "100.00", "haircut": "0.7", "suspended": True},
        ],
        "profiles": {
            "default": {"concentration_caps": [{"below": "1.80", "single": "0.30"},
                                               {"below": "2.40", "single": "0.50",
                                                "group": "0.70"}],
                        "block_new_debt_at": "WARNING"},
            "open": {},
        },
        "accounts": [
            # R = 210000 / 95000 = 2.21: single cap 50%, group cap 70%
            {"account_id": "A", "cash": "10000", "financing_line": "200000",
             "short_line": "1000",
             "positions": [{"symbol": "600000.SH", "kind": "collateral", "qty": 10000},
                           {"symbol": "600036.SH", "kind": "financed", "qty": 5000,
                            "financed_cost": "95000", "fin_margin_ratio": "1.0"}]},
            # plenty of cash, no debt
            {"account_id": "RICH", "cash": "1000000", "profile": "open",
             "financing_line": "500000",
             "positions": [{"symbol": "000002.SZ", "kind": "collateral", "qty": 1000}]},
            # R = 1.40: WARNING
            {"account_id": "WARN", "cash": "40000",
             "positions": [{"symbol": "600036.SH", "kind": "financed", "qty": 5000,
                            "financed_cost": "100000", "fin_margin_ratio": "1.0"},
                           {"symbol": "600036.SH", "kind": "collateral", "qty": 1}]},
        ],
    }


@pytest.fixture(scope="module")
def crafted_state():
    return MarginState(book_from_dict(crafted()), live=True)


def codes(d):
    return [r["code"] for r in d.reasons]


def reason(d, code):
    return next(r for r in d.reasons if r["code"] == code)


def test_an_ordinary_financed_buy_is_allowed(crafted_state):
    d = check(crafted_state, "RICH", {"type": "financed_buy", "symbol": "000002.SZ",
                                      "qty": 1000})
    assert d.allowed and d.reasons == []
    assert d.figures["margin_required"] == 8000.0 and d.figures["ratio_after"] == 127.0


def test_every_refusal_reason(crafted_state):
    st = crafted_state
    d = check(st, "RICH", {"type": "financed_buy", "symbol": "000001.SZ", "qty": 100})
    assert codes(d) == ["NOT_ELIGIBLE", "NOT_ELIGIBLE"]
    assert {r["list"] for r in d.reasons} == {"financing", "collateral"}
    d = check(st, "RICH", {"type": "short_sale", "symbol": "000002.SZ", "qty": 100})
    assert reason(d, "NOT_ELIGIBLE")["list"] == "short"
    d = check(st, "RICH", {"type": "collateral_buy", "symbol": "600519.SH", "qty": 100})
    assert codes(d) == ["SUSPENDED"]
    d = check(st, "A", {"type": "collateral_sell", "symbol": "600000.SH", "qty": 10001})
    assert reason(d, "INSUFFICIENT_POSITION") == {"code": "INSUFFICIENT_POSITION",
                                                  "symbol": "600000.SH", "held": 10000,
                                                  "qty": 10001}
    d = check(st, "A", {"type": "collateral_buy", "symbol": "600000.SH", "qty": 1001})
    assert reason(d, "INSUFFICIENT_CASH") == {"code": "INSUFFICIENT_CASH", "cash": 10000.0,
                                              "required": 10010.0}
    d = check(st, "A", {"type": "cash_withdrawal", "amount": "10000.01"})
    assert "INSUFFICIENT_CASH" in codes(d)
    # AMB of A: 10000 + 100000·0.6 + (100000 − 95000)·0.7 − 95000 = −21500
    d = check(st, "A", {"type": "financed_buy", "symbol": "600000.SH", "qty": 100})
    r = reason(d, "INSUFFICIENT_MARGIN")
    assert r["available_margin_balance"] == -21500.0 and r["required"] == 1000.0
    # the halt: 2.4M outside the book + 0 financed in the book vs 25% of 10M: not halted;
    # RICH's line: 500000; a 0.26M financed buy would pass the line
    d = check(st, "RICH", {"type": "financed_buy", "symbol": "600000.SH", "qty": 10000})
    assert d.allowed
    d = check(st, "A", {"type": "financed_buy", "symbol": "600036.SH", "qty": 6000})
    r = reason(d, "CREDIT_LINE")
    assert (r["limit"], r["used"], r["after"]) == (200000.0, 95000.0, 215000.0)
    d = check(st, "A", {"type": "short_sale", "symbol": "600036.SH", "qty": 100})
    assert reason(d, "CREDIT_LINE")["line"] == "short"
    d = check(st, "WARN", {"type": "short_sale", "symbol": "600000.SH", "qty": 100})
    r = reason(d, "NEW_DEBT_BLOCKED")
    assert (r["tier"], r["blocked_at"]) == ("WARNING", "WARNING")
    d = check(st, "A", {"type": "cash_withdrawal", "amount": "100"})
    r = reason(d, "BELOW_WITHDRAWAL_LINE")
    assert r["line"] == 3.0 and r["withdrawable"] == 0.0
    d = check(st, "A", {"type": "collateral_transfer_out", "symbol": "600000.SH", "qty": 100})
    assert "BELOW_WITHDRAWAL_LINE" in codes(d)
    # A's bank group is already over its 70% cap; adding to it is refused, with numbers
    d = check(st, "A", {"type": "financed_buy", "symbol": "600036.SH", "qty": 100})
    r = reason(d, "CONCENTRATION")
    assert (r["item_type"], r["name"], r["cap"]) == ("group", "bank", 0.7)
    assert r["share_after"] > r["share_before"] == 0.952381
    # selling collateral is never refused for concentration
    assert check(st, "A", {"type": "collateral_sell", "symbol": "600000.SH",
                           "qty": 100}).allowed


def test_financing_halt_with_hysteresis():
    doc = crafted()
    st = MarginState(book_from_dict(doc), live=True)
    eng = Engine(st)
    eng.start(0)
    buy = {"type": "financed_buy", "symbol": "600000.SH", "qty": 1000}
    assert "FINANCING_HALTED" not in codes(check(st, "RICH", buy, eng.credit))
    # RICH finances 100000 of 600000.SH: 2.5M of 10M free-float value = 25%: halted
    evs = eng.apply_account_event({"type": "fill", "account_id": "RICH", "symbol": "600000.SH",
                                   "side": "financed_buy", "qty": 10000, "price": "10"}, 1)
    halt = [e for e in evs if e["kind"] == "FINANCING_HALT"]
    assert len(halt) == 1 and halt[0]["halted"] and halt[0]["share"] == 0.25
    r = reason(check(st, "RICH", buy, eng.credit), "FINANCING_HALTED")
    assert r["financing_balance"] == 2_500_000.0 and r["free_float_value"] == 10_000_000.0
    # the price rises 10%: 2.5M / 11M = 22.7%, under the halt line but not under 20%
    eng.add_ticks(*_tick(st, "600000.SH", 11_000))
    eng.cycle(2)
    assert not [e for e in eng.credit_slice(3) if e["kind"] == "FINANCING_HALT"]
    assert "FINANCING_HALTED" in codes(check(st, "RICH", buy, eng.credit))
    # without memory of the halt, the book alone says it is not halted at 22.7%
    assert "FINANCING_HALTED" not in codes(check(st, "RICH", buy))
    eng.add_ticks(*_tick(st, "600000.SH", 12_600))  # 2.5M / 12.6M = 19.8%: resumed
    eng.cycle(4)
    evs = eng.credit_slice(5)
    assert [e["halted"] for e in evs if e["kind"] == "FINANCING_HALT"] == [False]
    assert "FINANCING_HALTED" not in codes(check(st, "RICH", buy, eng.credit))


def _tick(st, sym, price):
    import numpy as np
    s = st.book.symbol_index[sym]
    return (np.array([s], dtype=np.int64), np.array([price], dtype=np.int64),
            np.array([1], dtype=np.int64))


@pytest.mark.parametrize("action,code,status", [
    ({"type": "margin_buy"}, "unknown_action", 400),
    ({"type": "financed_buy", "symbol": "NOPE", "qty": 100}, "unknown_symbol", 404),
    ({"type": "financed_buy", "symbol": "600000.SH", "qty": 0}, "bad_value", 400),
    ({"type": "financed_buy", "symbol": "600000.SH", "qty": 1.5}, "bad_value", 400),
    ({"type": "financed_buy", "symbol": "600000.SH", "qty": 100, "price": "1.0001"},
     "bad_value", 400),
    ({"type": "financed_buy", "symbol": "600000.SH", "qty": 100, "price": "nan"},
     "bad_value", 400),
    ({"type": "cash_withdrawal"}, "missing_field", 400),
    ({"type": "cash_withdrawal", "amount": -5}, "bad_value", 400),
    ("financed_buy", "malformed", 400),
])
def test_bad_requests_raise_typed_errors(crafted_state, action, code, status):
    with pytest.raises(PretradeError) as e:
        check(crafted_state, "A", action)
    assert (e.value.code, e.value.status) == (code, status)


def test_unknown_account(crafted_state):
    with pytest.raises(PretradeError) as e:
        check(crafted_state, "NOBODY", {"type": "cash_withdrawal", "amount": 1})
    assert e.value.status == 404 and "NOBODY" in str(e.value)


# ---------------------------------------------------------------- over HTTP


async def post(port: int, path: str, body: bytes, headers: dict | None = None,
               length: int | str | None = None) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             "Content-Type: application/json",
             f"Content-Length: {len(body) if length is None else length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    w.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


@pytest.fixture
def monitor_proc(redis_fresh, tmp_path):
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    book = tmp_path / "book.json"
    doc = crafted()
    doc["profiles"]["open"]["line_alerts"] = ["0.9", "1.0"]
    book.write_text(json.dumps(doc))
    proc, port = start_monitor(
        ["--book", str(book), "--feed", f"{redis_fresh.url}/ticks?block_ms=100&start=0",
         "--events", f"{redis_fresh.url}/acct?block_ms=100&start=0",
         "--token-file", str(tok)], tmp_path)
    yield port, redis_fresh
    proc.kill()
    proc.wait(10)


async def test_pretrade_endpoint_on_a_running_monitor(monitor_proc):
    port, rs = monitor_proc
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = orjson.dumps({"account_id": "RICH", "type": "financed_buy",
                         "symbol": "600000.SH", "qty": 45000})
    assert (await post(port, "/api/pretrade", body))[0] == 401
    assert (await post(port, "/api/pretrade", body, {"Authorization": "Bearer nope"}))[0] == 401
    st, out = await post(port, "/api/pretrade", body, auth)
    got = orjson.loads(out)
    assert st == 200 and got["allowed"] and got["action"] == "financed_buy"
    # the same action nested under "action", and a refusal with its reasons
    st, out = await post(port, "/api/pretrade", orjson.dumps(
        {"account_id": "A", "action": {"type": "cash_withdrawal", "amount": "100"}}), auth)
    assert st == 200 and [r["code"] for r in orjson.loads(out)["reasons"]] == [
        "INSUFFICIENT_MARGIN", "BELOW_WITHDRAWAL_LINE", "CONCENTRATION"]
    # bad requests: JSON, size, unknown account, wrong method target
    assert (await post(port, "/api/pretrade", b"{nope", auth))[0] == 400
    st, out = await post(port, "/api/pretrade", b"x" * 20_000, auth)
    assert st == 413
    st, out = await post(port, "/api/pretrade", orjson.dumps(
        {"account_id": "ZZ", "type": "cash_withdrawal", "amount": 1}), auth)
    assert st == 404 and orjson.loads(out)["code"] == "unknown_account"
    assert (await post(port, "/api/elsewhere", b"{}", auth))[0] == 404
    assert (await post(port, "/ws/alerts", b"{}", auth))[0] == 405
    assert (await post(port, "/api/pretrade", b"{}", auth, length="12x"))[0] == 400
    # a fill through the account-event stream uses RICH's financing line: 450000 of 500000
    # (90%: a CREDIT_LINE event) and the halt (2.4M + 0.45M >= 25% of 10M: FINANCING_HALT)
    r = redis.Redis.from_url(rs.url)
    async with connect(f"ws://127.0.0.1:{port}/ws/alerts?snapshot=0",
                       additional_headers=auth) as ws:
        r.xadd("acct", {"data": json.dumps({"type": "fill", "account_id": "RICH",
                                            "symbol": "600000.SH", "side": "financed_buy",
                                            "qty": 45000, "price": "10"})})
        kinds = {}
        while not {"CREDIT_LINE", "FINANCING_HALT"} <= kinds.keys():
            ev = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
            kinds.setdefault(ev["kind"], ev)
    line = kinds["CREDIT_LINE"]
    assert (line["account_id"], line["line"], line["threshold"], line["direction"]) == (
        "RICH", "financing", 0.9, "up")
    assert line["utilisation"] == 0.9 and line["seq"] > 0
    assert kinds["FINANCING_HALT"]["symbol"] == "600000.SH"
    st, out = await post(port, "/api/pretrade", body, auth)
    assert {x["code"] for x in orjson.loads(out)["reasons"]} == {
        "FINANCING_HALTED", "CREDIT_LINE"}


@pytest.mark.parametrize("day,profile,action,want", [
    (None, {}, {}, 1.0),  # the latest minimum, not the older contract's 0.80
    ("2026-01-16", {}, {}, 0.8),  # before 2026-01-19 the minimum was 80%
    ("2026-01-19", {}, {}, 1.0),
    ("2026-03-02", {"fin_margin_ratio": "1.20"}, {}, 1.2),  # the profile's
    ("2026-03-02", {"fin_margin_ratio": "1.20"}, {"margin_ratio": "1.5"}, 1.5),  # raised
    ("2026-03-02", {}, {"margin_ratio": "0.5"}, 1.0),  # the caller cannot lower it
])
def test_a_financed_buy_is_checked_at_the_new_contract_s_own_margin_ratio(day, profile, action,
                                                                         want):
    """A new contract never takes the ratio of an older one in the same stock (issue 15)."""
    from datetime import date

    doc = {"securities": [{"symbol": "600007.SH", "price": "10.00", "haircut": "0.5"}],
           "accounts": [{"account_id": "A", "cash": "100000", "positions": [
               {"symbol": "600007.SH", "kind": "financed", "qty": 1000,
                "financed_cost": "10000", "fin_margin_ratio": "0.80"}]}]}
    if profile:
        doc["profiles"] = {"default": profile}
    st = MarginState(book_from_dict(doc), live=True)
    d = check(st, "A", {"type": "financed_buy", "symbol": "600007.SH", "qty": 1000, **action},
              day=date.fromisoformat(day).toordinal() if day else None)
    assert d.figures["margin_ratio"] == want
    assert d.figures["margin_required"] == 10000 * want


def test_prices_outside_the_days_band_and_odd_lots_are_refused(crafted_state):
    """Issue 16: a short sale of 1,000,000 shares at 0.01 with the market at 10.00 came back
    allowed, and 150 shares on the main board passed."""
    st = crafted_state
    d = check(st, "RICH", {"type": "short_sale", "symbol": "600000.SH", "qty": 1_000_000,
                           "price": "0.01"})
    r = reason(d, "PRICE_OUTSIDE_BAND")
    assert (r["price"], r["limit_down"], r["limit_up"]) == (0.01, 9.0, 11.0) and not d.allowed
    assert "PRICE_OUTSIDE_BAND" not in codes(check(st, "RICH", {
        "type": "collateral_buy", "symbol": "600000.SH", "qty": 100, "price": "11.00"}))
    assert "PRICE_OUTSIDE_BAND" in codes(check(st, "RICH", {
        "type": "collateral_buy", "symbol": "600000.SH", "qty": 100, "price": "11.01"}))
    r = reason(check(st, "RICH", {"type": "collateral_buy", "symbol": "600000.SH",
                                  "qty": 150}), "LOT_SIZE")
    assert (r["qty"], r["lot"], r["step"]) == (150, 100, 100)
    # a sale of round lots, or of round lots with the whole odd remainder, is fine
    assert check(st, "A", {"type": "collateral_sell", "symbol": "600000.SH",
                           "qty": 200}).allowed
    assert "LOT_SIZE" in codes(check(st, "A", {"type": "collateral_sell",
                                               "symbol": "600000.SH", "qty": 250}))


def test_lots_on_star_and_odd_remainders():
    doc = {"securities": [{"symbol": "688001.SH", "price": "50.00", "haircut": "0.5"},
                          {"symbol": "600010.SH", "price": "5.00", "haircut": "0.5"}],
           "accounts": [{"account_id": "S", "cash": "1000000", "positions": [
               {"symbol": "688001.SH", "kind": "collateral", "qty": 150},
               {"symbol": "600010.SH", "kind": "collateral", "qty": 1250}]}]}
    st = MarginState(book_from_dict(doc), live=True)

    def ok(kind, sym, qty):
        return "LOT_SIZE" not in codes(check(st, "S", {"type": kind, "symbol": sym,
                                                      "qty": qty}))

    assert not ok("collateral_buy", "688001.SH", 100) and ok("collateral_buy", "688001.SH", 201)
    assert ok("collateral_sell", "688001.SH", 150)  # all of a holding under 200
    assert not ok("collateral_sell", "688001.SH", 120)
    assert ok("collateral_sell", "600010.SH", 250) and ok("collateral_sell", "600010.SH", 1200)
    assert not ok("collateral_sell", "600010.SH", 230)


def test_a_reserve_holds_the_margin_for_later_checks_until_the_fill_or_the_time_out():
    """Issue 16: three 160k financed-buy checks against 170k of margin all passed."""
    from monitor.core.pretrade import Holds, PretradeService

    doc = {"securities": [{"symbol": "600000.SH", "price": "10.00", "haircut": "0.5"}],
           "accounts": [{"account_id": "R", "cash": "170000"}]}
    st = MarginState(book_from_dict(doc), live=True)
    clock = [0.0]
    svc = PretradeService(Engine(st), Holds(ttl_s=30.0, clock=lambda: clock[0]))

    def ask(reserve=True):
        status, body = svc.http("/api/pretrade", orjson.dumps({
            "account_id": "R", "reserve": reserve,
            "action": {"type": "financed_buy", "symbol": "600000.SH", "qty": 16000,
                       "margin_ratio": "1.0"}}))
        assert status == 200
        return orjson.loads(body)

    first = ask()
    assert first["allowed"] and first["hold"]["hold_id"]
    second = ask()
    assert not second["allowed"]
    r = next(x for x in second["reasons"] if x["code"] == "INSUFFICIENT_MARGIN")
    assert r["available_margin_balance"] == 10000.0 and second["figures"]["reserved_margin"] \
        == 160000.0
    assert ask(reserve=False)["allowed"] is False and len(svc.holds) == 1
    assert svc.holds.release(first["hold"]["hold_id"])  # the fill came back
    again = ask()
    assert again["allowed"]
    clock[0] = 31.0  # nobody filled it: the hold lapses
    assert ask()["allowed"] and svc.holds.expired == 1
    status, body = svc.http("/api/pretrade", orjson.dumps({
        "account_id": "R", "reserve": "yes", "type": "cash_withdrawal", "amount": "1"}))
    assert status == 400 and orjson.loads(body)["code"] == "bad_value"


def test_a_callers_margin_ratio_can_raise_the_requirement_never_lower_it(crafted_state):
    """Issue 16: a caller-given margin_ratio of 0.01 let a 300k financed buy pass."""
    st = crafted_state
    act = {"type": "financed_buy", "symbol": "000002.SZ", "qty": 1000}
    assert check(st, "RICH", {**act, "margin_ratio": "0.01"}).figures["margin_ratio"] == 1.0
    assert check(st, "RICH", {**act, "margin_ratio": "1.5"}).figures["margin_ratio"] == 1.5
