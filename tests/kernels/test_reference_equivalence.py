"""The kernels equal the slow Decimal reference on seeded random books: every account, every
figure (assets, liabilities, ratio, tier, AMB, withdrawable, liquidation, cure, stress, distance)
and the lot-rounded plans, through MarginState and through the bulk kernels. Also: the same book
given as JSON, a CSV folder or a Parquet folder loads to the same arrays."""

from __future__ import annotations

import csv
import json
from decimal import ROUND_FLOOR
from decimal import Decimal as D

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reference as ref
from bookgen import make_book

from kernels import units as u
from kernels.margin import available_margin_balance, free_cash, withdrawable
from kernels.ratios import collect_changes, plain_tiers, sweep, sweep_tiers
from kernels.stress import distances, stress_ratio
from monitor.book.load import book_from_dict, load_book
from monitor.book.model import Book, Holdings
from monitor.core.state import MarginState, PlanCosts

SEEDS = (11, 23, 37, 41)
N_ACCOUNTS = 250
FEN = D("0.01")
RATIO_TOL = D("0.0000005") + D("1e-12")  # reported ratios are rounded to 6 decimals


def dec(x) -> D | None:
    return None if x is None else D(repr(float(x)))


def li(x: D) -> D:
    """Yuan -> money units (li), exact."""
    return x * u.MONEY_SCALE


def bulk_figures(book: Book) -> dict:
    """Every account at once through the bulk kernels (what a whole-book sweep runs)."""
    h = Holdings.from_book(book)
    n = book.n_accounts
    long_mv = np.zeros(n, dtype=np.int64)
    short_mv = np.zeros(n, dtype=np.int64)
    sweep(book.price, book.price, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr, h.short_sec,
          h.short_qty, long_mv, short_mv)
    assets = h.base_assets + long_mv
    liabilities = h.base_liabilities + short_mv
    tier = np.zeros(n, dtype=np.int8)
    plain_tiers(assets, liabilities, book.profile_of, book.profile_lines, tier)
    # the fused sweep from an unset state reports the plain tier of every account
    reported = np.full(n, u.UNSET_TIER, dtype=np.int8)
    candidate = np.zeros(n, dtype=np.int8)
    lm2, sm2 = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    sweep_tiers(book.price, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr, h.short_sec,
                h.short_qty, h.base_assets, h.base_liabilities, book.profile_of,
                book.profile_lines, u.DEFAULT_HYSTERESIS_BP, lm2, sm2, reported, candidate)
    changed = np.zeros(n, dtype=np.int64)
    previous = np.zeros(n, dtype=np.int8)
    k = collect_changes(candidate, reported, previous, changed)
    amb = np.zeros(n, dtype=np.float64)
    available_margin_balance(np.arange(n, dtype=np.int64), book.cash, book.accrued,
                             book.other_debt, book.other_collateral, book.pos_ptr, book.pos_sec,
                             book.pos_kind, book.pos_qty, book.pos_cost, book.pos_margin_ratio,
                             book.price, book.haircut, amb)
    free = np.zeros(n, dtype=np.int64)
    free_cash(np.arange(n, dtype=np.int64), book.cash, book.pos_ptr, book.pos_kind,
              book.pos_qty, book.pos_cost, free)
    wd = np.zeros(n, dtype=np.int64)
    withdrawable(free, amb, assets, liabilities,
                 np.ascontiguousarray(book.profile_lines[book.profile_of, u.LINE_WITHDRAWABLE]),
                 wd)
    down, up = book.limit_prices()
    lmv_down = np.zeros(n, dtype=np.int64)
    smv_up = np.zeros(n, dtype=np.int64)
    sweep(down, up, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr, h.short_sec, h.short_qty,
          lmv_down, smv_up)
    sr = np.zeros(n, dtype=np.float64)
    stress_ratio(h.base_assets, h.base_liabilities, lmv_down, smv_up, sr)
    dist = np.zeros((n, 3), dtype=np.float64)
    distances(h.base_assets, assets, liabilities, long_mv, book.profile_of, book.profile_lines,
              dist)
    return {"long_mv": long_mv, "short_mv": short_mv, "assets": assets,
            "liabilities": liabilities, "tier": tier, "fused_mv": (lm2, sm2),
            "reported": reported, "n_changed": k, "changed": changed[:k],
            "previous": previous[:k], "amb": amb, "withdrawable": wd, "stress_ratio": sr,
            "distance": dist, "limit_down": down, "limit_up": up}


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def case(request):
    doc = make_book(request.param, n_accounts=N_ACCOUNTS)
    book = book_from_dict(doc)
    state = MarginState(book)
    rb = ref.RefBook(doc)
    refs = [rb.evaluate(a) for a in doc["accounts"]]
    return doc, book, state, refs


def test_books_cover_the_edge_cases(case):
    """The generator does reach what these tests are meant to exercise."""
    doc, book, state, refs = case
    tiers = {r["tier"] for r in refs}
    assert tiers == set(u.TIER_NAMES)
    assert {r["liquidation_status"] for r in refs} == set(u.STATUS_NAMES)
    on_line = [r for r in refs if r["liabilities"] > 0 and any(
        r["assets"] == r["lines"][k] * r["liabilities"] for k in ref.LINE_NAMES)]
    assert on_line, "no account exactly on a line"
    assert any(D(str(a["cash"])) < 0 for a in doc["accounts"])
    assert {ref.board_of(s) for s in doc["securities"]} == set(ref.LIMIT)
    assert any(s.get("suspended") for s in doc["securities"])
    secs = rb_secs(doc)
    assert any(s.price == s.limit_down for s in secs.values())
    assert any(s.price == s.limit_up for s in secs.values())
    assert any(s.price != s.price.quantize(FEN) for s in secs.values())  # 0.001 ticks
    assert any(len(r["plan"]) > 1 for r in refs)
    assert any(o["side"] == "buy_to_cover" for r in refs for o in r["plan"])
    # free cash first leaves fewer shortages: count those with it turned off too
    rb = ref.RefBook(doc)
    off = [rb.evaluate(a, use_free_cash=False) for a in doc["accounts"]]
    assert any(r["liquidation_status"] == "REQUIRED" and r["ratio_after"] is not None
               and r["ratio_after"] < r["lines"]["target"] for r in refs + off), (
        "no capacity shortage")
    assert any(r["cash_repayment"] > 0 and r["plan"] for r in refs), "no cash repayment"


def rb_secs(doc):
    return ref.RefBook(doc).securities


def test_amounts_and_tiers_exact(case):
    doc, book, state, refs = case
    A, L = state.assets(), state.liabilities()
    for a, r in enumerate(refs):
        assert D(int(A[a])) == li(r["assets"]), r["account_id"]
        assert D(int(L[a])) == li(r["liabilities"]), r["account_id"]
        assert D(int(state.long_mv[a])) == li(r["long_mv"])
        assert D(int(state.short_mv[a])) == li(r["short_mv"])
        assert u.TIER_NAMES[state.tier(a)] == r["tier"], r["account_id"]


def _one_and_all(one, many, n):
    """Per-account calls and one whole-book call (the vectorised path evaluate runs)."""
    whole = many(np.arange(n, dtype=np.int64))
    assert len(whole) == n
    for a in range(n):
        single = one(a)
        assert single == whole[a]
        yield a, single


def test_figures_equal_the_reference(case):
    doc, book, state, refs = case
    for a, f in _one_and_all(state.figures, state.figures_many, book.n_accounts):
        r = refs[a]
        aid = r["account_id"]
        assert f["account_id"] == aid
        assert dec(f["assets"]) == ref.fen(r["assets"]), aid
        assert dec(f["liabilities"]) == ref.fen(r["liabilities"]), aid
        if r["ratio"] is None:
            assert f["ratio"] is None, aid
        else:
            assert abs(dec(f["ratio"]) - r["ratio"]) <= RATIO_TOL, aid
        assert f["tier"] == r["tier"], aid
        assert abs(dec(f["available_margin_balance"]) - r["available_margin_balance"]) <= FEN, aid
        assert dec(f["withdrawable"]) == ref.fen(r["withdrawable"]), aid
        assert f["liquidation_status"] == r["liquidation_status"], aid
        if r["liquidation_value"] is None:
            assert f["liquidation_value"] is None, aid
        else:
            assert abs(dec(f["liquidation_value"]) - r["liquidation_value"]) <= FEN, aid
        assert dec(f["shortfall"]) == ref.fen(r["shortfall"]), aid
        for k in ("deposit", "repay"):
            assert abs(dec(f["cure"][k]) - r["cure"][k]) <= FEN, (aid, k)


def test_stress_and_distance_equal_the_reference(case):
    doc, book, state, refs = case
    for a, s in _one_and_all(state.stress, state.stress_many, book.n_accounts):
        r = refs[a]
        aid = r["account_id"]
        if r["stress_ratio"] is None:
            assert s["stress_ratio"] is None, aid
        else:
            assert abs(dec(s["stress_ratio"]) - r["stress_ratio"]) <= RATIO_TOL, aid
        for k, d in r["distance"].items():
            if d is None:
                assert s["distance"][k] is None, (aid, k)
            else:
                assert abs(dec(s["distance"][k]) - d) <= RATIO_TOL, (aid, k)


def test_bulk_kernels_equal_the_reference(case):
    doc, book, state, refs = case
    bulk = bulk_figures(book)
    rb = ref.RefBook(doc)
    for i, s in enumerate(book.symbols):
        sec = rb.securities[s]
        assert D(int(bulk["limit_down"][i])) == li(sec.limit_down), s
        assert D(int(bulk["limit_up"][i])) == li(sec.limit_up), s
    assert np.array_equal(bulk["fused_mv"][0], bulk["long_mv"])
    assert np.array_equal(bulk["fused_mv"][1], bulk["short_mv"])
    assert np.array_equal(bulk["reported"], bulk["tier"])
    assert bulk["n_changed"] == book.n_accounts  # every account leaves the unset tier
    for a, r in enumerate(refs):
        aid = r["account_id"]
        assert D(int(bulk["long_mv"][a])) == li(r["long_mv"]), aid
        assert D(int(bulk["short_mv"][a])) == li(r["short_mv"]), aid
        assert u.TIER_NAMES[bulk["tier"][a]] == r["tier"], aid
        assert abs(D(repr(float(bulk["amb"][a]))) - li(r["available_margin_balance"])) <= 1, aid
        assert D(int(bulk["withdrawable"][a])) == li(r["withdrawable"]).to_integral_value(
            rounding=ROUND_FLOOR), aid
        sr = float(bulk["stress_ratio"][a])
        if r["stress_ratio"] is None:
            assert sr == np.inf, aid
        else:
            assert abs(D(repr(sr)) - r["stress_ratio"]) <= D("1e-12") * r["stress_ratio"], aid
        for k, name in enumerate(("warning", "margin_call", "forced_liquidation")):
            d, rd = float(bulk["distance"][a, k]), r["distance"][name]
            if rd is None:
                assert np.isnan(d), (aid, name)
            else:
                assert abs(D(repr(d)) - rd) <= D("1e-9"), (aid, name)


def _orders(orders):
    return [(o["symbol"], o["side"], o["qty"], dec(o["value"])) for o in orders]


def _ref_orders(orders):
    return [(o["symbol"], o["side"], o["qty"], ref.fen(o["value"])) for o in orders]


def test_plans_equal_the_reference(case):
    doc, book, state, refs = case
    for a, r in enumerate(refs):
        orders, ratio_after, residual = state.plan(a)
        aid = r["account_id"]
        assert _orders(orders) == _ref_orders(r["plan"]), aid
        if r["ratio_after"] is None:
            assert ratio_after is None, aid
        else:
            assert abs(dec(ratio_after) - r["ratio_after"]) <= RATIO_TOL, aid
        assert abs(dec(residual) - r["residual"]) <= FEN, aid


@pytest.mark.parametrize("sell,buy", [(0.001, 0.0015), (0.003, 0.0)])
def test_plans_with_costs_equal_the_reference(sell, buy):
    doc = make_book(SEEDS[0], n_accounts=N_ACCOUNTS)
    state = MarginState(book_from_dict(doc), costs=PlanCosts(sell=sell, buy=buy))
    rb = ref.RefBook(doc)
    for a, acct in enumerate(doc["accounts"]):
        r = rb.evaluate(acct, sell_cost=repr(sell), buy_cost=repr(buy))
        orders, ratio_after, _ = state.plan(a)
        assert _orders(orders) == _ref_orders(r["plan"]), acct["account_id"]
        if r["ratio_after"] is not None:
            assert abs(dec(ratio_after) - r["ratio_after"]) <= RATIO_TOL, acct["account_id"]


def test_reference_at_moved_prices():
    """The reference and the state agree after prices move (incrementally applied)."""
    from kernels.incremental import apply_price_changes

    doc = make_book(SEEDS[1], n_accounts=120)
    book = book_from_dict(doc)
    st = MarginState(book)
    rng = np.random.default_rng(5)
    down, up = book.limit_prices()
    secs = rng.choice(book.n_securities, size=book.n_securities // 2, replace=False)
    new = np.array([rng.integers(down[s] // 10, up[s] // 10 + 1) * 10 for s in secs],
                   dtype=np.int64)
    mark = np.zeros(book.n_accounts, dtype=np.uint8)
    touched = np.zeros(book.n_accounts, dtype=np.int64)
    h = st.h
    apply_price_changes(secs.astype(np.int64), new, len(secs), st.price, h.long_hptr,
                        h.long_hacct, h.long_hqty, h.short_hptr, h.short_hacct, h.short_hqty,
                        st.long_mv, st.short_mv, mark, touched)
    prices = {book.symbols[s]: D(int(p)) / u.MONEY_SCALE for s, p in zip(secs, new, strict=True)}
    rb = ref.RefBook(doc)
    for a, acct in enumerate(doc["accounts"]):
        r = rb.evaluate(acct, prices)
        f = st.figures(a)
        assert dec(f["assets"]) == ref.fen(r["assets"])
        assert dec(f["liabilities"]) == ref.fen(r["liabilities"])
        assert f["tier"] == r["tier"]
        assert abs(dec(f["available_margin_balance"]) - r["available_margin_balance"]) <= FEN
        assert _orders(st.plan(a)[0]) == _ref_orders(r["plan"])


# ---------------------------------------------------------------------------- book forms

SEC_COLS = ("symbol", "price", "prev_close", "haircut", "board", "lot", "suspended")
ACCT_COLS = ("account_id", "cash", "accrued_interest_fees", "profile", "other_debt",
             "other_collateral", "withdrawable", "normal", "warning", "margin_call", "target")
POS_COLS = ("account_id", "symbol", "kind", "qty", "financed_cost", "fin_margin_ratio",
            "short_sell_amount", "short_margin_ratio")
PROF_COLS = ("name",) + ref.LINE_NAMES
INT_COLS = {"lot", "qty"}
BOOL_COLS = {"suspended"}


def _rows(doc):
    secs = doc["securities"]
    accts = [{k: v for k, v in a.items() if k != "positions"} for a in doc["accounts"]]
    poss = [{"account_id": a["account_id"], **p} for a in doc["accounts"] for p in a["positions"]]
    profs = [{"name": n, **lines} for n, lines in doc.get("profiles", {}).items()]
    return {"securities": (secs, SEC_COLS), "accounts": (accts, ACCT_COLS),
            "positions": (poss, POS_COLS), "profiles": (profs, PROF_COLS)}


def _text(v):
    return v if isinstance(v, str) else repr(v)


def write_csv_folder(doc, folder):
    folder.mkdir()
    for name, (rows, cols) in _rows(doc).items():
        with open(folder / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in rows:
                out = []
                for c in cols:
                    v = r.get(c)
                    if v is None:
                        out.append("")
                    elif isinstance(v, bool):
                        out.append("true" if v else "false")
                    else:
                        out.append(_text(v) if not isinstance(v, int) else str(v))
                w.writerow(out)


def write_parquet_folder(doc, folder):
    folder.mkdir()
    for name, (rows, cols) in _rows(doc).items():
        data = {}
        for c in cols:
            vals = [r.get(c) for r in rows]
            if c in INT_COLS:
                data[c] = pa.array(vals, type=pa.int64())
            elif c in BOOL_COLS:
                data[c] = pa.array(vals, type=pa.bool_())
            else:
                data[c] = pa.array([None if v is None else _text(v) for v in vals],
                                   type=pa.string())
        pq.write_table(pa.table(data), folder / f"{name}.parquet")


def assert_same_book(a: Book, b: Book):
    for name in Book.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype or x.dtype.kind == y.dtype.kind, name
            assert np.array_equal(x, y), name
        else:
            assert x == y, name


@pytest.mark.parametrize("form", ["json", "csv", "parquet"])
def test_book_forms_load_identically(tmp_path, form):
    doc = make_book(SEEDS[2], n_accounts=150)
    want = book_from_dict(doc)
    if form == "json":
        path = tmp_path / "book.json"
        path.write_text(json.dumps(doc))
    elif form == "csv":
        path = tmp_path / "book"
        write_csv_folder(doc, path)
    else:
        path = tmp_path / "book"
        write_parquet_folder(doc, path)
    assert_same_book(load_book(path), want)
