"""Poison account events (issue 14): numbers beyond any bound, running balances that would
overflow int64, timestamps that are not timestamps, unexpected exceptions. Each is refused with a
reason and the book unchanged; over any sequence of maximal events every account stays within
the bounds of kernels/units.py and its tier equals the exact Decimal reference."""

from __future__ import annotations

import copy
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import orjson
import pytest
import reference as ref
from bookgen import make_book
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import units as u
from kernels.ratios import tier_of
from monitor.book import synthetic as synthbook
from monitor.book.load import book_from_dict
from monitor.core.account_events import REASONS, AccountEventError, AccountEvents
from monitor.core.engine import Engine, EngineConfig
from monitor.core.pretrade import PretradeService
from monitor.core.state import MarginState

NOW = 1_763_712_000_000_000_000  # the engine's clock in these tests (2025-11-21)
MAXY = Decimal(u.MAX_EVENT_MONEY).scaleb(-3)  # the largest amount of one event, in yuan
D = Decimal


def engine_of(book) -> Engine:
    e = Engine(MarginState(book, live=True), EngineConfig(run_id="bounds"))
    e.start(NOW)
    return e


_TESTER = []


def synth_book():
    """A synthetic book like the tester's (their 20k accounts; 200 here): ids C0000000..."""
    if not _TESTER:
        _TESTER.append(book_from_dict(synthbook.generate_json_book(200, 30, seed=14)))
    return _TESTER[0]


def cheapest(book) -> str:
    """The symbol whose highest possible price (limit-up) is lowest."""
    return book.symbols[int(np.argmin(np.maximum(book.price, book.limit_prices()[1])))]


def arrays(e: Engine) -> list[np.ndarray]:
    """Every array of the live book and of the state derived from it, copied."""
    b, s, h = e.state.book, e.state, e.state.h
    out = [getattr(b, k).copy() for k in ("cash", "accrued", "other_debt", "other_collateral",
                                         "profile_of", "haircut", "suspended", "pos_ptr",
                                         "pos_sec", "pos_kind", "pos_qty", "pos_cost",
                                         "pos_margin_ratio", "pos_used")]
    out += [s.price.copy(), s.long_mv.copy(), s.short_mv.copy(), h.base_assets.copy(),
            h.base_liabilities.copy(), h.long_qty.copy(), h.short_qty.copy(),
            e.reported.copy()]
    return out


def assert_unchanged(before, e):
    for x, y in zip(before, arrays(e), strict=True):
        np.testing.assert_array_equal(x, y)


def refused(e, ev, reason, now=NOW):
    before, seen, applied = arrays(e), e.account_events.seen_ids(), e.account_events.applied
    with pytest.raises(AccountEventError) as err:
        e.apply_account_event(ev, now)
    assert err.value.reason == reason, str(err.value)
    assert err.value.reason in REASONS
    assert_unchanged(before, e)
    assert e.account_events.seen_ids() == seen and e.account_events.applied == applied
    return err.value


# ------------------------------------------------------------------ defect 1: huge numbers


@pytest.mark.parametrize("raw", [
    b'{"type": "deposit", "account_id": "C0000002", "amount": 1e30}',
    b'{"type": "deposit", "account_id": "C0000002", "amount": "1e28"}',
    b'{"type": "deposit", "account_id": "C0000002", "amount": "1e30"}',
    b'{"type": "withdrawal", "account_id": "C0000002", "amount": 1e30}',
    b'{"type": "repayment", "account_id": "C0000002", "amount": "1e28"}',
    b'{"type": "fill", "account_id": "C0000002", "symbol": "%s", "side": "collateral_buy",'
    b' "qty": 100, "price": 1e30}',
    b'{"type": "fill", "account_id": "C0000002", "symbol": "%s", "side": "collateral_buy",'
    b' "qty": 100, "price": "1e28"}',
    b'{"type": "fill", "account_id": "C0000002", "symbol": "%s", "side": "financed_buy",'
    b' "qty": 100, "price": "10", "fee": 1e30}',
    b'{"type": "fill", "account_id": "C0000002", "symbol": "%s", "side": "short_sell",'
    b' "qty": 100, "price": "10", "fee": "1e28"}',
    b'{"type": "fill", "account_id": "C0000002", "symbol": "%s", "side": "financed_buy",'
    b' "qty": 100, "price": "10", "margin_ratio": 1e30}',
    b'{"type": "interest_accrual", "financing_rate": 1e30, "short_fee_rate": "0.1"}',
    b'{"type": "haircut", "symbol": "%s", "haircut": "1e28"}',
])
def test_the_testers_huge_numbers_are_refused_as_out_of_range(raw):
    e = engine_of(synth_book())
    sym = e.state.book.symbols[0].encode()
    ev = orjson.loads(raw.replace(b"%s", sym))  # as the event sources decode them
    refused(e, ev, "out_of_range")


@pytest.mark.parametrize("amount,reason", [
    ("x", "bad_number"), ([1], "bad_number"), ({"v": 1}, "bad_number"), (True, "bad_number"),
    ("1" * 65, "bad_number"), ("sNaN", "non_finite"), ("-Infinity", "non_finite"),
    (10**40, "out_of_range"), (-(10**40), "out_of_range"), ("1e-999999999", "bad_value"),
    ("0.0001", "bad_value"), ("92233720368.548", "out_of_range"),
])
def test_numbers_that_are_not_amounts(amount, reason):
    e = engine_of(synth_book())
    refused(e, {"type": "deposit", "account_id": "C0000002", "amount": amount}, reason)


def test_the_same_input_to_pretrade_answers_400_with_a_reason():
    e = engine_of(synth_book())
    svc = PretradeService(e)
    sym = e.state.book.symbols[0]
    cases = [
        ({"type": "cash_withdrawal", "amount": 1e30}, "out_of_range"),
        ({"type": "cash_withdrawal", "amount": "1e28"}, "out_of_range"),
        ({"type": "financed_buy", "symbol": sym, "qty": 100, "price": 1e30}, "out_of_range"),
        ({"type": "financed_buy", "symbol": sym, "qty": 100, "price": "1e28"}, "out_of_range"),
        ({"type": "financed_buy", "symbol": sym, "qty": 100, "price": "10", "fee": 1e30},
         "out_of_range"),
        ({"type": "short_sale", "symbol": sym, "qty": 100, "margin_ratio": "1e30"},
         "out_of_range"),
        ({"type": "financed_buy", "symbol": sym, "qty": 10**13}, "out_of_range"),
        ({"type": "financed_buy", "symbol": sym, "qty": 10**12, "price": "10000000"},
         "out_of_range"),
        ({"type": "cash_withdrawal", "amount": "1" * 80}, "bad_value"),
        ({"type": "cash_withdrawal", "amount": "sNaN"}, "bad_value"),
        (b'{"account_id": "C0000002", "type": "cash_withdrawal", "amount": 1%s}' % (b"0" * 50),
         "out_of_range"),
    ]
    for action, code in cases:
        body = action if isinstance(action, bytes) else orjson.dumps(
            {"account_id": "C0000002", **action})
        status, out = svc.http("/api/pretrade", body)
        got = orjson.loads(out)
        assert (status, got.get("code")) == (400, code), (action, got)


# ------------------------------------------------------------------ defect 2: running balances


def test_ten_maximal_deposits_cannot_overflow_the_account():
    """The tester: ten maximal deposits to one account overflowed assets × 10 000 and it was
    published as FORCED_LIQUIDATION at a ratio of 39 million."""
    e = engine_of(synth_book())
    a = e.state.book.account_index["C0000002"]
    ev = {"type": "deposit", "account_id": "C0000002", "amount": str(MAXY)}
    events, reasons = [], []
    for _ in range(10):
        try:
            events += e.apply_account_event(dict(ev), NOW)
        except AccountEventError as err:
            reasons.append(err.reason)
    assert reasons == ["overflow"] * 10  # the account already holds something: none fits
    # the largest deposit that fits is taken, once; the next one li is refused
    room = u.MAX_ACCOUNT_MONEY - e.account_events.gross(a)
    events += e.apply_account_event({**ev, "amount": str(D(room).scaleb(-3))}, NOW)
    assert e.account_events.gross(a) == u.MAX_ACCOUNT_MONEY
    refused(e, {**ev, "amount": "0.001"}, "overflow")
    A, L = e.state.values(np.array([a]))
    assert 0 <= A[0] <= u.MAX_ACCOUNT_MONEY and 0 <= L[0] <= u.MAX_ACCOUNT_MONEY
    assert not any(x.get("tier") == "FORCED_LIQUIDATION" for x in events)
    f = e.state.figures(a)
    assert f["tier"] in ("NO_DEBT", "WITHDRAWABLE") and (f["ratio"] is None or f["ratio"] > 1)


def test_a_billion_financed_buy_and_a_366_day_accrual_at_10_percent_is_exact():
    """The tester: interest came out as -82,795,640.72 (int64 overflow in the accrual)."""
    e = engine_of(synth_book())
    b = e.state.book
    a = b.account_index["C0000002"]
    sym = b.symbols[0]
    e.apply_account_event({"type": "fill", "account_id": "C0000002", "symbol": sym,
                           "side": "financed_buy", "qty": 100_000_000, "price": "10"}, NOW)
    before = int(b.accrued[a])
    rows = [j for j in e.account_events.ledger.rows(a) if b.pos_kind[j] == u.FINANCED]
    want = sum((D(int(b.pos_cost[j])) * D("0.1") * 366 / 360).quantize(1, ROUND_HALF_UP)
               for j in rows)
    e.apply_account_event({"type": "interest_accrual", "account_id": "C0000002", "days": 366,
                           "financing_rate": "0.1", "short_fee_rate": "0.1"}, NOW)
    assert int(b.accrued[a]) - before == want
    assert want >= 10**12 * D("0.1") * 366 / 360  # 1e9 yuan principal: > 101.67M yuan of it
    # and the whole book at once agrees with the one account
    e2 = engine_of(synth_book())
    e2.apply_account_event({"type": "fill", "account_id": "C0000002", "symbol": sym,
                            "side": "financed_buy", "qty": 100_000_000, "price": "10"}, NOW)
    e2.apply_account_event({"type": "interest_accrual", "days": 366, "financing_rate": "0.1",
                            "short_fee_rate": "0.1"}, NOW)
    assert int(e2.state.book.accrued[a]) == int(b.accrued[a])


def test_a_book_wide_accrual_skips_only_the_account_it_would_overflow():
    e = engine_of(synth_book())
    b = e.state.book
    a = b.account_index["C0000002"]
    # principal of 9 billion yuan at 1000% for a year: the accrual alone passes the bound
    e.apply_account_event({"type": "fill", "account_id": "C0000002", "symbol": cheapest(b),
                           "side": "financed_buy", "qty": 10**9, "price": "9"}, NOW)
    acc = b.accrued.copy()
    ev = {"type": "interest_accrual", "days": 366, "financing_rate": "10",
          "short_fee_rate": "0"}
    touched = e.account_events.apply(dict(ev), NOW)
    assert [x[:2] for x in e.account_events.skipped] == [(a, "overflow")]
    assert b.accrued[a] == acc[a] and a not in touched
    assert (b.accrued[touched] > acc[touched]).all() and touched
    refused(e, {**ev, "account_id": "C0000002"}, "overflow")  # alone: refused whole


# ------------------------------------------------------------------ defect 4: ts


@pytest.mark.parametrize("raw", [
    b'18446744073709551616', b'1e30', b'"yesterday"', b'-1.5', b'[1]',
    b'9223372036854775807', b'-1', b'0', b'946684799999999999', b'true', b'{"ns": 1}',
])
def test_the_testers_timestamps_are_refused_as_bad_ts(raw):
    e = engine_of(synth_book())
    ev = orjson.loads(b'{"type": "deposit", "account_id": "C0000002", "amount": "1", "ts": '
                      + raw + b"}")
    refused(e, ev, "bad_ts")


def test_ts_window_and_absent_ts():
    e = engine_of(synth_book())
    dep = {"type": "deposit", "account_id": "C0000002", "amount": "1"}
    for ts in (2**64, 10**30, NOW + 5 * 10**9 + 1, NOW + 365 * 86_400 * 10**9):
        refused(e, {**dep, "ts": ts}, "bad_ts")
    e.apply_account_event({**dep, "ts": NOW + 5 * 10**9}, NOW)  # within the skew
    e.apply_account_event({**dep, "ts": u.MIN_EVENT_TS_NS}, NOW)  # 2000-01-01
    e.apply_account_event(dict(dep), NOW)  # absent: receive time
    e.apply_account_event({**dep, "ts": None}, NOW)
    assert e.account_events.applied == 4


# ------------------------------------------------------------------ unexpected exceptions


def test_an_unexpected_exception_mid_event_leaves_derived_state_consistent(monkeypatch):
    e = engine_of(synth_book())
    a = e.state.book.account_index["C0000002"]

    def broken(self, ev):
        self.state.book.cash[a] += 5_000  # half a change, then a bug
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(AccountEvents, "_deposit", broken)
    with pytest.raises(ZeroDivisionError):
        e.apply_account_event({"type": "deposit", "account_id": "C0000002", "amount": "1"}, NOW)
    monkeypatch.undo()
    fresh = MarginState(copy.deepcopy(e.state.book))
    fresh.price[:] = e.state.price
    fresh.sweep()
    np.testing.assert_array_equal(fresh.assets(), e.state.assets())
    np.testing.assert_array_equal(fresh.liabilities(), e.state.liabilities())


# ------------------------------------------------------------------ the properties

BIG = [str(MAXY), str((MAXY / 2).quantize(D("0.001"))), str((MAXY / 10).quantize(D("0.001"))),
       "1", "0.001", "123456789.123", "5000000000"]
# (qty, price): near the largest fills that fit (value up to 9e10 yuan), a few beyond
FILLS = [(1, "10"), (100, "10"), (10**12, "0.001"), (10**9, "10"), (10**8, "900"),
         (100, "10000000"), (10**4, "9000000"), (10**6, "1000"), (10**12, "10000000")]

EVENTS = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["deposit", "withdrawal"]),
                           "amount": st.sampled_from(BIG)}),
    st.fixed_dictionaries({"type": st.just("repayment"), "amount": st.sampled_from(BIG),
                           "source": st.sampled_from(["cash", "external"])}),
    st.builds(lambda side, qp, fee: {"type": "fill", "side": side, "qty": qp[0],
                                     "price": qp[1], **fee},
              st.sampled_from(["collateral_buy", "collateral_sell", "financed_buy",
                               "sell_to_repay", "short_sell", "buy_to_cover"]),
              st.sampled_from(FILLS),
              st.sampled_from([{}, {"fee": "0"}, {"fee": "5"}, {"fee": "1000000"},
                               {"fee": str(MAXY)}])),
    st.fixed_dictionaries({"type": st.just("interest_accrual"),
                           "days": st.sampled_from([1, 30, 366]),
                           "day_count": st.sampled_from([360, 365]),
                           "financing_rate": st.sampled_from(["0", "0.0835", "0.1", "10",
                                                              "0.123456789"]),
                           "short_fee_rate": st.sampled_from(["0", "0.1", "10"])},
                          optional={"account_id": st.just(None)}),
)


def ref_check(e: Engine, doc: dict) -> None:
    """Every account: within the bounds, and A, L, tier and ratio equal the exact Decimal
    reference (tests/reference.py) on the live book's own numbers."""
    b, s = e.state.book, e.state
    rb = ref.RefBook(doc)
    price = {sym: D(int(p)).scaleb(-3) for sym, p in zip(b.symbols, s.price.tolist(),
                                                         strict=True)}
    idx = np.arange(b.n_accounts)
    A, L = s.values(idx)
    figs = s.figures_many(idx)
    for a in range(b.n_accounts):
        assert e.account_events.gross(a) <= u.MAX_ACCOUNT_MONEY
        assert 0 <= A[a] <= u.MAX_ACCOUNT_MONEY and 0 <= L[a] <= u.MAX_ACCOUNT_MONEY
        rows = [j for j in e.account_events.ledger.rows(a)]
        acct = {"account_id": b.account_ids[a], "cash": D(int(b.cash[a])).scaleb(-3),
                "accrued_interest_fees": D(int(b.accrued[a])).scaleb(-3),
                "other_debt": D(int(b.other_debt[a])).scaleb(-3),
                "other_collateral": D(int(b.other_collateral[a])).scaleb(-3),
                "positions": [{"symbol": b.symbols[b.pos_sec[j]],
                               "kind": u.KIND_NAMES[b.pos_kind[j]], "qty": int(b.pos_qty[j]),
                               "financed_cost": D(int(b.pos_cost[j])).scaleb(-3),
                               "short_sell_amount": D(int(b.pos_cost[j])).scaleb(-3),
                               "fin_margin_ratio": "1", "short_margin_ratio": "1"}
                              for j in rows]}
        m = ref.amounts(rb, acct, price)
        assert m["assets"] == D(int(A[a])).scaleb(-3)
        assert m["liabilities"] == D(int(L[a])).scaleb(-3)
        lines = {k: D(int(v)).scaleb(-4) for k, v in zip(
            ref.LINE_NAMES, b.profile_lines[b.profile_of[a]].tolist(), strict=True)}
        assert figs[a]["tier"] == ref.tier(m["assets"], m["liabilities"], lines)
        if m["liabilities"] > 0:
            r = ref.div(m["assets"], m["liabilities"])
            assert abs(D(repr(figs[a]["ratio"])) - r) <= D("0.0000006")
        lines_bp = b.profile_lines[b.profile_of[a]]
        plain = tier_of(A[a], L[a], lines_bp, 0)
        banded = u.NO_DEBT if L[a] <= 0 else tier_of(A[a], L[a], lines_bp,
                                                     e.config.hysteresis_bp)
        assert banded <= e.reported[a] <= plain


def expected_accrual(e: Engine, ev: dict, a_one: int | None) -> np.ndarray:
    """Per account: Σ round_half_up(cost × rate(8 decimals) × days / day_count), in Decimal."""
    b = e.state.book
    q8 = D("0.00000001")
    fr = D(ev["financing_rate"]).quantize(q8, ROUND_HALF_UP)
    sr = D(ev["short_fee_rate"]).quantize(q8, ROUND_HALF_UP)
    out = np.zeros(b.n_accounts, dtype=object)
    for a in range(b.n_accounts):
        if a_one is not None and a != a_one:
            continue
        for j in e.account_events.ledger.rows(a):
            rate = {u.FINANCED: fr, u.SHORT: sr}.get(int(b.pos_kind[j]), D(0))
            x = D(int(b.pos_cost[j])) * rate * ev["days"] / ev["day_count"]
            out[a] += int(x.quantize(1, ROUND_HALF_UP))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16),
       steps=st.lists(st.tuples(EVENTS, st.integers(0, 10**6), st.integers(0, 10**6),
                                st.integers(0, 2**32)), min_size=1, max_size=20))
def test_maximal_event_sequences_stay_in_bounds_and_exact(seed, steps):
    doc = make_book(seed, n_accounts=12, n_securities=6)
    e = engine_of(book_from_dict(doc))
    b = e.state.book
    down, up = b.limit_prices()
    for ev, ai, si, tick in steps:
        ev = dict(ev)
        aid = b.account_ids[ai % b.n_accounts]
        if ev["type"] == "interest_accrual":
            if "account_id" in ev:
                ev["account_id"] = aid
        else:
            ev["account_id"] = aid
        if ev["type"] == "fill":
            ev["symbol"] = b.symbols[si % b.n_securities]
        before = arrays(e)
        want = None
        if ev["type"] == "interest_accrual":
            want = expected_accrual(e, ev, b.account_index.get(ev.get("account_id")))
        acc0 = b.accrued.copy()
        try:
            e.apply_account_event(ev, NOW)
        except AccountEventError as err:
            assert err.reason in REASONS
            assert_unchanged(before, e)
        else:
            if want is not None:
                skipped = {x[0] for x in e.account_events.skipped}
                for a in range(b.n_accounts):
                    got = int(b.accrued[a]) - int(acc0[a])
                    assert got == (0 if a in skipped else want[a])
        ref_check(e, doc)
        s = tick % b.n_securities  # a price anywhere in the band, even at limit-up
        p = int(down[s]) + (tick >> 8) % (int(up[s]) - int(down[s]) + 1)
        e.add_ticks(np.array([s]), np.array([p]), np.array([NOW]))
        e.cycle(NOW)
        ref_check(e, doc)
