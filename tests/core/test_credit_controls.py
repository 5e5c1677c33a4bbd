"""Credit controls: the concentration and line kernels against the exact reference on seeded
random books, the credit fields of the book (JSON and CSV, and their validation), and the
edge-triggered CONCENTRATION / CREDIT_LINE events of CreditControls and the engine."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from bookgen import make_book
from credit_reference import CreditRef, add_credit_terms

from kernels import units as u
from kernels.concentration import ITEM_NAMES, concentration_fingerprints, line_use
from monitor.book.load import BookError, book_from_dict, load_book
from monitor.core.credit import CreditConfig, CreditControls
from monitor.core.engine import Engine
from monitor.core.state import MarginState

S = u.RATIO_SCALE


def _book(seed, n=150):
    doc = add_credit_terms(make_book(seed, n_accounts=n, n_securities=30), seed)
    return doc, CreditRef(json.loads(json.dumps(doc)))


@pytest.mark.parametrize("seed", range(5))
def test_kernels_match_the_reference(seed):
    doc, rf = _book(seed)
    st = MarginState(book_from_dict(doc), live=True)
    eng = Engine(st)
    cc = eng.credit
    b = st.book
    idx = np.arange(b.n_accounts, dtype=np.int64)
    A, L = st.values(idx)
    fin, short = np.empty_like(idx), np.empty_like(idx)
    line_use(idx, b.pos_ptr, b.pos_kind, b.pos_cost, fin, short)
    t = cc.terms
    over, near = np.zeros_like(idx), np.zeros_like(idx)
    concentration_fingerprints(idx, A, L, b.profile_of, t.band_below, t.band_single,
                               t.band_group, t.band_board, t.n_bands, st.price, st.h.long_ptr,
                               st.h.long_sec, st.h.long_qty, t.group_of,
                               b.board.astype(np.int64), 0, over, near)
    n_over = 0
    for i, acct in enumerate(doc["accounts"]):
        f, s = rf.line_use(acct)
        assert (fin[i], short[i]) == (int(f * 1000), int(s * 1000))
        want = rf.over(acct)
        items = cc.items(i, int(A[i]), int(L[i]))
        got = {(ITEM_NAMES[k], cc._item_name(k, it)["name"]) for k, it, mv, cap in items}
        assert got == want, acct["account_id"]
        assert (over[i] != 0) == bool(want) and over[i] == near[i]  # tolerance 0
        n_over += bool(want)
    assert n_over > 0


def test_credit_fields_from_json_and_csv_are_the_same(tmp_path):
    doc, _ = _book(3, n=40)
    jb = book_from_dict(doc)
    # the same book as CSV tables (list-valued profile fields as JSON text)
    folder = tmp_path / "book"
    folder.mkdir()
    secs = doc["securities"]
    _csv(folder / "securities.csv", secs)
    _csv(folder / "accounts.csv", [{k: v for k, v in a.items() if k != "positions"}
                                   for a in doc["accounts"]])
    _csv(folder / "positions.csv", [dict(p, account_id=a["account_id"])
                                    for a in doc["accounts"] for p in a["positions"]])
    _csv(folder / "profiles.csv", [{"name": n, **{k: json.dumps(v) if isinstance(v, list)
                                                  else v for k, v in p.items()}}
                                   for n, p in doc["profiles"].items()])
    cb = load_book(folder)
    for f in ("group_of", "free_float", "market_financing", "financing_eligible",
              "short_eligible", "financing_line", "short_line"):
        assert np.array_equal(getattr(jb.credit, f), getattr(cb.credit, f)), f
    order = [cb.profile_names.index(n) for n in jb.profile_names]
    for f in ("band_below", "band_single", "band_group", "band_board", "n_bands",
              "block_new_debt_at", "alert_bp", "n_alerts"):
        assert np.array_equal(getattr(jb.credit, f), getattr(cb.credit, f)[order]), f
    assert jb.credit.group_names == cb.credit.group_names


def _csv(path, rows):
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in cols})


def test_a_book_without_credit_fields_has_no_terms_and_no_events():
    doc = make_book(1, n_accounts=30)
    st = MarginState(book_from_dict(doc), live=True)
    assert st.book.credit is None
    eng = Engine(st)
    eng.start(0)
    assert eng.credit_slice(1) == []


def test_bad_credit_fields_are_listed():
    doc = {
        "securities": [{"symbol": "600000.SH", "price": "10", "haircut": "0.5",
                        "free_float": -5, "market_financing": "-1",
                        "financing_eligible": "maybe"}],
        "profiles": {"default": {"concentration_caps": [{"below": "2.0", "single": "1.5"}],
                                 "block_new_debt_at": "YELLOW"},
                     "p2": {"concentration_caps": [{"below": "2.0"}, {"below": "1.5"}],
                            "line_alerts": ["1.0", "0.9"]},
                     "p3": {"concentration_caps": "not json ["}},
        "accounts": [{"account_id": "A", "cash": "1", "financing_line": "-3",
                      "short_line": "x"}],
    }
    with pytest.raises(BookError) as e:
        book_from_dict(doc)
    text = str(e.value)
    for want in ("free_float: must be a positive number of shares",
                 "market_financing: must be >= 0", "financing_eligible: not a boolean",
                 "band 1 single: 1.5 is outside 0..1",
                 "block_new_debt_at: 'YELLOW' is not one of",
                 "band 2: 'below' must increase", "line_alerts: thresholds must increase",
                 "profile 'p3': concentration_caps", "account 'A': financing_line: must be >= 0",
                 "account 'A': short_line: not a finite number"):
        assert want in text, want
    assert len(e.value.problems) == 10


# ---------------------------------------------------------------- events


def cap_book() -> dict:
    return {
        "securities": [
            {"symbol": "600000.SH", "price": "10.00", "haircut": "0.6", "group": "bank"},
            {"symbol": "600036.SH", "price": "10.00", "haircut": "0.7", "group": "bank"},
            {"symbol": "000002.SZ", "price": "10.00", "haircut": "0.5", "group": "property"},
        ],
        "profiles": {"default": {
            "concentration_caps": [{"below": "1.80", "single": "0.30"},
                                   {"below": "2.40", "single": "0.50", "group": "0.70"}],
            "line_alerts": ["0.9", "1.0"]}},
        "accounts": [
            # A = 100000 (50000 each of two stocks), L = 50000 financed: R = 2.0,
            # single cap 50% (exactly at it: not over), bank group 100% > 70%
            {"account_id": "A", "cash": "0", "financing_line": "60000",
             "positions": [{"symbol": "600000.SH", "kind": "collateral", "qty": 5000},
                           {"symbol": "000002.SZ", "kind": "financed", "qty": 5000,
                            "financed_cost": "50000", "fin_margin_ratio": "1"}]},
            {"account_id": "B", "cash": "100000"},
        ] + [{"account_id": f"N{i}", "cash": "1000"} for i in range(10)],
    }


def _engine(doc, slice_accounts=5):
    st = MarginState(book_from_dict(doc), live=True)
    eng = Engine(st, credit=CreditConfig(slice_accounts=slice_accounts))
    eng.start(0)
    return st, eng


def _rotate(eng, now=1):
    out = []
    for _ in range(eng.credit.rotation_slices):
        out += eng.credit_slice(now)
    return out


def test_concentration_events_are_edge_triggered_with_hysteresis():
    st, eng = _engine(cap_book())
    assert eng.credit.rotation_slices == 3  # 12 accounts, 5 per slice
    assert _rotate(eng) == []  # 50% is at the cap, not over it
    # 600000.SH +1%: share 50500/100500 > 50%: over, excess = 50500 − 0.5·100500 = 250
    eng.add_ticks(*_tick(st, "600000.SH", 10_100))
    eng.cycle(2)
    evs = _rotate(eng)
    assert [(e["kind"], e["account_id"], e["status"]) for e in evs] == [
        ("CONCENTRATION", "A", "OVER_CAP")]
    item = evs[0]["items"][0]
    assert (item["type"], item["name"], item["cap"], item["excess"]) == (
        "security", "600000.SH", 0.5, 250.0)
    assert evs[0]["seq"] == eng.seq and evs[0]["tier"] == "NORMAL"
    assert _rotate(eng) == []  # no change, no event
    # back to 50.0% exactly: within the 0.5-point band under the cap, still reported over
    eng.add_ticks(*_tick(st, "600000.SH", 10_000))
    eng.cycle(3)
    assert _rotate(eng) == []
    # a deposit of 2000: 50000 / 102000 = 49.02% < 49.5%: cleared by the event itself
    evs = eng.apply_account_event({"type": "deposit", "account_id": "A", "amount": "2000"}, 4)
    assert [(e["status"], e["cleared"], e["items"]) for e in evs
            if e["kind"] == "CONCENTRATION"] == [
        ("CLEARED", [{"type": "security", "name": "600000.SH"}], [])]
    assert _rotate(eng) == []
    # 600000.SH down 10%: 000002.SZ is then 50000 / 97000 = 51.5%: over (a new item)
    eng.add_ticks(*_tick(st, "600000.SH", 9_000))
    eng.cycle(5)
    evs = _rotate(eng)
    assert [(e["status"], [i["name"] for i in e["items"]]) for e in evs] == [
        ("OVER_CAP", ["000002.SZ"])]


def test_a_fill_is_checked_at_once_and_lines_fire_at_thresholds():
    st, eng = _engine(cap_book(), slice_accounts=1)
    # A buys 400 more 000002.SZ on credit: principal 54000 of 60000 (90%): CREDIT_LINE up;
    # 000002.SZ is now 54000/104000 = 51.9% > 50%: CONCENTRATION, both from the fill itself
    evs = eng.apply_account_event({"type": "fill", "account_id": "A", "symbol": "000002.SZ",
                                   "side": "financed_buy", "qty": 400, "price": "10"}, 5)
    kinds = {e["kind"]: e for e in evs}
    line = kinds["CREDIT_LINE"]
    assert (line["line"], line["threshold"], line["previous_threshold"], line["direction"],
            line["used"], line["limit"]) == ("financing", 0.9, None, "up", 54000.0, 60000.0)
    assert kinds["CONCENTRATION"]["items"][0]["name"] == "000002.SZ"
    # to 100%
    evs = eng.apply_account_event({"type": "fill", "account_id": "A", "symbol": "000002.SZ",
                                   "side": "financed_buy", "qty": 600, "price": "10"}, 6)
    line = [e for e in evs if e["kind"] == "CREDIT_LINE"][0]
    assert (line["threshold"], line["previous_threshold"], line["utilisation"]) == (1.0, 0.9,
                                                                                    1.0)
    # a cash repayment of 20000 (deposit first): 40000 of 60000, under every threshold
    eng.apply_account_event({"type": "deposit", "account_id": "A", "amount": "20000"}, 7)
    evs = eng.apply_account_event({"type": "repayment", "account_id": "A",
                                   "amount": "20000"}, 8)
    line = [e for e in evs if e["kind"] == "CREDIT_LINE"][0]
    assert (line["threshold"], line["previous_threshold"], line["direction"]) == (None, 1.0,
                                                                                  "down")
    # nothing moved since: a whole rotation says nothing new about lines
    assert [e for e in _rotate(eng, 9) if e["kind"] == "CREDIT_LINE"] == []


def test_rotation_visits_every_account_once_per_round():
    doc, rf = _book(2, n=100)
    st = MarginState(book_from_dict(doc), live=True)
    eng = Engine(st)
    eng.start(0)
    cc = CreditControls(st, eng.stamps, eng.reported, CreditConfig(slice_accounts=7))
    evs = []
    for _ in range(cc.rotation_slices):
        evs += cc.check_slice(1)
    over = {e["account_id"] for e in evs if e["kind"] == "CONCENTRATION"}
    assert over == {a["account_id"] for a in doc["accounts"] if rf.over(a)}
    assert cc.cursor == 0 and cc.rotation_slices == 15
    assert [e for e in cc.check_slice(2) if e["kind"] == "CONCENTRATION"] == []
    # the same with at most 3 changed accounts per call: more calls, the same events
    small = CreditControls(st, eng.stamps, eng.reported,
                           CreditConfig(slice_accounts=7, max_changes=3))
    seen, calls = set(), 0
    while True:
        evs = small.check_slice(1)
        calls += 1
        accts = {e["account_id"] for e in evs}
        assert len(accts) <= 3
        seen |= {e["account_id"] for e in evs if e["kind"] == "CONCENTRATION"}
        if small.cursor == 0:
            break
    assert seen == over and calls > 15


def _tick(st, sym, price):
    s = st.book.symbol_index[sym]
    return (np.array([s], dtype=np.int64), np.array([price], dtype=np.int64),
            np.array([1], dtype=np.int64))


# ---------------------------------------------------------------- snapshot and byte cap

CREDIT_KINDS = ("CONCENTRATION", "CREDIT_LINE", "FINANCING_HALT")


def _credit(events):
    return [e for e in events if e["kind"] in CREDIT_KINDS]


def _full_rotation(eng, now):
    out = []
    for _ in range(eng.credit.rotation_slices + 1):
        out += eng.credit_slice(now)
    return out


def _moved(seed=4, n=150):
    """An engine whose credit controls have announced crossings: a full rotation, financed
    buys (lines, halts), a price move."""
    from test_engine import random_ticks

    doc, _ = _book(seed, n=n)
    book = book_from_dict(doc)
    st = MarginState(book, live=True)
    eng = Engine(st, credit=CreditConfig(slice_accounts=40))
    eng.start(0)
    rng = np.random.default_rng(seed)
    evs = _full_rotation(eng, 1)
    for i in range(40):
        a = book.account_ids[int(rng.integers(book.n_accounts))]
        s = book.symbols[int(rng.integers(book.n_securities))]
        evs += eng.apply_account_event({"type": "fill", "account_id": a, "symbol": s,
                                        "side": "financed_buy", "qty": 5000, "price": "10",
                                        "event_id": f"buy-{i}"}, 2)
    # a financed buy large enough to halt financing in a security with a free float
    cc, t = eng.credit, eng.credit.terms
    s = next(s for s in range(book.n_securities) if t.free_float[s] > 0 and not cc.halted[s])
    price = int(st.price[s])
    need = int(t.halt_bp) * int(t.free_float[s]) * price // S - cc.financing_balance(s)
    qty = (need // price // 100 + 1) * 100
    evs += eng.apply_account_event({"type": "fill", "account_id": book.account_ids[0],
                                    "symbol": book.symbols[s], "side": "financed_buy",
                                    "qty": qty, "price": f"{price / 1000:.2f}",
                                    "event_id": "halt-1"}, 2)
    eng.add_ticks(*random_ticks(book, rng, 60))
    evs += eng.cycle(3)
    evs += _full_rotation(eng, 4)
    return doc, book, eng, evs


def test_a_restart_from_the_snapshot_does_not_re_announce_credit_events(tmp_path):
    """Restored from a snapshot, a whole rotation announces no unchanged CONCENTRATION,
    CREDIT_LINE or FINANCING_HALT; a snapshot without the credit state (an older version)
    still loads, and its first rotation re-announces them (what the state prevents)."""
    from monitor.adapters.snapshot import book_fingerprint, read_snapshot, write_snapshot

    doc, book, a, evs = _moved()
    kinds = {e["kind"] for e in _credit(evs)}
    assert set(CREDIT_KINDS) <= kinds, kinds
    assert a.credit.over and (a.credit.level != 0).any()
    meta, arrays = a.export_state()
    assert int(arrays["credit_version"][0]) == 1
    meta.update(taken_ns=5, book=book_fingerprint(book))
    write_snapshot(tmp_path, meta, arrays)
    m, saved = read_snapshot(tmp_path, book_fingerprint(book))

    def restored(arrs):
        e = Engine(MarginState(book_from_dict(doc), live=True),
                   credit=CreditConfig(slice_accounts=40))
        e.restore_state(m, arrs, 6)
        return e

    b = restored(saved)
    assert b.credit.cursor == a.credit.cursor
    assert _credit(_full_rotation(b, 7)) == []
    assert b.credit.over == a.credit.over
    np.testing.assert_array_equal(b.credit.halted, a.credit.halted)
    np.testing.assert_array_equal(b.credit.book_financing, a.credit.book_financing)
    # the state goes on identically: the same changes give the same credit events
    a.seq = b.seq
    a.stamps.run_id = b.stamps.run_id
    for eng in (a, b):
        eng.credit.cursor = 0
    fill = {"type": "fill", "account_id": book.account_ids[3], "symbol": book.symbols[2],
            "side": "financed_buy", "qty": 20000, "price": "10", "event_id": "after-1"}
    ea = a.apply_account_event(dict(fill), 8) + _full_rotation(a, 9)
    eb = b.apply_account_event(dict(fill), 8) + _full_rotation(b, 9)
    from test_engine import strip

    assert strip(_credit(ea)) == strip(_credit(eb))

    old = {k: v for k, v in saved.items() if not k.startswith("credit_")}
    c = restored(old)  # a snapshot of the version before: loads, re-announces
    again = _credit(_full_rotation(c, 7))
    assert {e["account_id"] for e in again if e["kind"] == "CONCENTRATION"} == {
        book.account_ids[i] for i in a.credit.over}


def test_foreign_credit_state_is_refused_before_anything_changes(tmp_path):
    doc, book, a, _ = _moved(seed=1, n=60)
    meta, arrays = a.export_state()
    fresh = Engine(MarginState(book_from_dict(doc), live=True))
    cash = fresh.state.book.cash.copy()
    for k, bad in (("credit_level", arrays["credit_level"][:, :-1]),
                   ("credit_version", np.array([9], dtype=np.int64)),
                   ("credit_over", np.array([[10**6, 0, 0, 1]], dtype=np.int64))):
        with pytest.raises(ValueError, match="credit"):
            fresh.restore_state(meta, {**arrays, k: bad}, 6)
        np.testing.assert_array_equal(fresh.state.book.cash, cash)


def test_the_credit_state_is_capped_by_bytes_and_the_drops_are_counted():
    """Over-cap records past `state_bytes` are dropped oldest first (counted; the account is
    re-announced when still over: a duplicate, never a miss); the financing diffs are
    forgotten by a recount; the accounted bytes stay under the cap and cover what the entries
    really allocate (tracemalloc)."""
    import tracemalloc

    from monitor.core import credit as cr

    doc, _ = _book(3, n=400)
    st = MarginState(book_from_dict(doc), live=True)
    cap = 12 * (cr.OVER_ENTRY_BYTES + 2 * cr.OVER_ITEM_BYTES)
    eng = Engine(st, credit=CreditConfig(slice_accounts=400, max_changes=10**6,
                                         state_bytes=cap))
    eng.start(0)
    cc = eng.credit
    evs = _credit(_full_rotation(eng, 1))
    over = [e for e in evs if e["kind"] == "CONCENTRATION"]
    assert len(over) > 20  # many more accounts over a cap than the state may hold
    assert cc.state_bytes <= cap and cc.dropped >= len(over) - 12 and len(cc.over) <= 12
    # a dropped account is announced again by the next rotation (it is still over)
    again = [e for e in _credit(_full_rotation(eng, 2)) if e["kind"] == "CONCENTRATION"]
    assert again and cc.state_bytes <= cap
    # the financing diffs are in the budget too: touching many accounts recounts
    b = st.book
    before = cc.recounts
    for i in range(60):
        eng.apply_account_event({"type": "fill", "account_id": b.account_ids[i],
                                 "symbol": b.symbols[i % b.n_securities],
                                 "side": "financed_buy", "qty": 100, "price": "10",
                                 "event_id": f"cap-{i}"}, 3)
    if cc.any_halt:
        assert cc.recounts > before and cc.state_bytes <= cap
    stats = cc.stats()
    assert stats["dropped"] == cc.dropped and stats["max_bytes"] == cap

    # the allowances cover the real allocation of the entries
    big = CreditControls(st, eng.stamps, eng.reported, CreditConfig(state_bytes=2**40))
    tracemalloc.start()
    t0 = tracemalloc.take_snapshot()
    for a in range(300):
        big._set_over(a, {(0, a % 7): 5000, (1, a % 3): 6000})
    t1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    real = sum(x.size_diff for x in t1.compare_to(t0, "filename"))
    assert 0 < real <= big.state_bytes, (real, big.state_bytes)
