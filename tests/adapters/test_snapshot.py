"""State snapshots (monitor/snapshot.py, Engine.export_state / restore_state): a restored engine
continues exactly as the one it was taken from; a corrupt, incompatible or foreign snapshot is
refused before anything changes."""

import numpy as np
import orjson
import pytest
from test_engine import T0, random_ticks, strip

from kernels import units as u
from monitor.adapters.snapshot import (
    MANIFEST,
    VERSION,
    SnapshotError,
    book_fingerprint,
    read_snapshot,
    write_snapshot,
)
from monitor.book import synthetic as synthbook
from monitor.book.load import book_from_dict
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState


@pytest.fixture(scope="module")
def book():
    return book_from_dict(synthbook.generate_json_book(2000, 80, seed=5))


def live(book, run_id="snap"):
    return Engine(MarginState(book, live=True), EngineConfig(run_id=run_id, reach_chunk=500))


def account_events(book, rng, n, tag):
    """Deposits, buys that open new positions (forcing ledger rebuilds), financed buys,
    interest on the whole book; every one with an event_id."""
    out = []
    for i in range(n):
        # buys go to a few accounts, so they run out of free position rows
        a = book.account_ids[int(rng.integers(book.n_accounts if i % 4 == 0 else 5))]
        s = book.symbols[int(rng.integers(book.n_securities))]
        k = i % 4
        if k == 0:
            ev = {"type": "deposit", "account_id": a,
                  "amount": str(int(rng.integers(1, 9)) * 1000)}
        elif k == 1:
            ev = {"type": "fill", "account_id": a, "symbol": s, "side": "collateral_buy",
                  "qty": 100, "price": "1"}
        elif k == 2:
            ev = {"type": "fill", "account_id": a, "symbol": s, "side": "financed_buy",
                  "qty": 100, "price": "1", "fee": "0.5"}
        else:
            ev = {"type": "interest_accrual", "financing_rate": "0.08", "short_fee_rate": "0.1"}
        ev["event_id"] = f"{tag}-{i}"
        out.append(ev)
    return out


def play(engine, book, rng, rounds, tag):
    events = []
    for r in range(rounds):
        for ev in account_events(book, rng, 30, f"{tag}{r}"):
            events += engine.apply_account_event(ev, T0 + r)
        engine.add_ticks(*random_ticks(book, rng, 200))
        events += engine.cycle(T0 + r)
    return events


def test_a_restored_engine_continues_exactly_like_the_original(book, tmp_path):
    a = live(book)
    a.start(T0)
    play(a, book, np.random.default_rng(1), 6, "p1-")
    assert a.account_events.ledger.rebuilds > 0  # the live book's layout really changed
    assert a.calls.accounts.shape[0] > 0  # there are open calls to carry over
    meta, arrays = a.export_state()
    meta.update(taken_ns=T0, book=book_fingerprint(book))
    write_snapshot(tmp_path, meta, arrays)
    m, arrays2 = read_snapshot(tmp_path, book_fingerprint(book))
    assert m["seq"] == a.seq and m["sha256"]

    b = live(book, run_id="other")
    again = b.restore_state(m, arrays2, T0 + 100)
    assert b.run_id == "snap" and b.seq == a.seq + len(again)
    bad = np.flatnonzero(a.reported <= u.WARNING)
    assert [e["account_id"] for e in again] == [book.account_ids[i] for i in bad]
    assert all(e["restored"] and e["previous_tier"] == e["tier"] for e in again)
    assert all(e["restored_event_id"].startswith("snap-") for e in again)
    assert any(e["call"] for e in again) and any("plan" in e for e in again)
    np.testing.assert_array_equal(a.reported, b.reported)
    assert a.calls.open_accounts() == b.calls.open_accounts()
    all_ = np.arange(book.n_accounts)
    assert a.state.figures_many(all_) == b.state.figures_many(all_)

    a.seq = b.seq  # from here both must produce the same events, state and seq
    ea = play(a, book, np.random.default_rng(2), 4, "p2-")
    eb = play(b, book, np.random.default_rng(2), 4, "p2-")
    assert ea and strip(ea) == strip(eb)
    np.testing.assert_array_equal(a.reported, b.reported)
    assert a.state.figures_many(all_) == b.state.figures_many(all_)
    with pytest.raises(ValueError, match="already applied"):  # idempotency survived
        b.apply_account_event({"type": "deposit", "account_id": book.account_ids[0],
                               "amount": "1", "event_id": "p1-0-0"}, T0)


def test_a_version_1_snapshot_without_contracts_still_restores(book, tmp_path):
    """Version 2 added the contract columns; a version-1 snapshot restores with the contracts
    numbered in book order (tests/core/test_contracts.py checks the numbering)."""
    e = live(book)
    e.start(T0)
    meta, arrays = e.export_state()
    fp = book_fingerprint(book)
    meta.update(taken_ns=T0, book=fp)
    old = {k: x for k, x in arrays.items()
           if not k.startswith(("book_pos_cid", "book_pos_open_day", "book_pos_term_day",
                                "book_pos_notice", "contract_names"))}
    write_snapshot(tmp_path, meta, old)
    (tmp_path / MANIFEST).write_text(
        (tmp_path / MANIFEST).read_text().replace(f'"version": {VERSION}', '"version": 1'))
    m, got = read_snapshot(tmp_path, fp)
    assert m["version"] == 1 and "book_pos_cid" not in got
    fresh = live(book)
    fresh.restore_state(m, got, T0)
    assert (fresh.reported == e.reported).all()
    b = fresh.state.book
    led = fresh.account_events.ledger
    rows = [j for a in range(b.n_accounts) for j in led.rows(a) if b.pos_kind[j] != u.COLLATERAL]
    cids = b.pos_cid[rows]
    assert (cids > 0).all() and np.unique(cids).shape[0] == len(rows)
    assert b.next_cid > cids.max()


def test_corrupt_incompatible_and_foreign_snapshots_are_refused(book, tmp_path):
    e = live(book)
    e.start(T0)
    meta, arrays = e.export_state()
    fp = book_fingerprint(book)
    meta.update(taken_ns=T0, book=fp)
    m = write_snapshot(tmp_path, meta, arrays)
    assert read_snapshot(tmp_path / "none", fp) is None
    other = book_from_dict(synthbook.generate_json_book(2000, 80, seed=6))
    with pytest.raises(SnapshotError, match="another book"):
        read_snapshot(tmp_path, book_fingerprint(other))
    npz = tmp_path / m["arrays"]
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match="checksum"):
        read_snapshot(tmp_path, fp)
    (tmp_path / MANIFEST).write_text(
        (tmp_path / MANIFEST).read_text().replace(f'"version": {VERSION}', '"version": 99'))
    with pytest.raises(SnapshotError, match="version 99"):
        read_snapshot(tmp_path, fp)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(SnapshotError, match="unreadable manifest"):
        read_snapshot(tmp_path, fp)
    # arrays of another shape are refused before the engine changes
    fresh = live(book)
    arrays["reported"] = arrays["reported"][:-1]
    before = fresh.state.book.cash.copy()
    with pytest.raises(ValueError, match="reported"):
        fresh.restore_state(meta, arrays, T0)
    np.testing.assert_array_equal(fresh.state.book.cash, before)


def test_a_frozen_future_last_ts_is_clipped_at_restore_and_real_ticks_go_on(book, tmp_path):
    """The tester: a tick a year ahead froze its symbol (every real tick after it was
    out_of_order), and the frozen state was in the snapshot. A snapshot holding such a last_ts
    (taken by a version without the future_ts guard) is restored with it clipped to the
    restore-time clock + skew: the next real tick is accepted."""
    import asyncio
    import time
    from types import SimpleNamespace

    from feeds.ticks import TickParser
    from monitor.adapters.snapshot import Snapshots
    from monitor.book.universe import universe_of

    def monitor(engine, parser):
        return SimpleNamespace(book=book, engine=engine, event_source=None, redis_url=None,
                               feed=SimpleNamespace(parser=parser, name="feed"))

    year = 365 * 86_400 * 10**9
    s = 3
    a, pa = live(book), TickParser(universe_of(book))
    a.start(T0)
    pa.last_ts[s] = time.time_ns() + year  # what the old guard let in
    pa.last_price[s] = int(book.price[s])
    a.last_ts[s] = time.time_ns() + year
    meta, arrays = Snapshots(monitor(a, pa), str(tmp_path)).capture()
    write_snapshot(tmp_path, meta, arrays)

    b, pb = live(book), TickParser(universe_of(book))
    assert asyncio.run(Snapshots(monitor(b, pb), str(tmp_path)).restore()) is not None
    now = time.time_ns()
    assert pb.last_ts[s] <= now + pb.max_skew_ns and b.last_ts[s] <= now + pb.max_skew_ns
    assert pb.last_ts[s] > now - 60 * 10**9  # clipped, not dropped
    sym = book.symbols[s]
    price = int(book.price[s]) / 1000
    got = pb.parse(orjson.dumps({"symbol": sym, "price": price + 0.01,
                                 "ts": now + pb.max_skew_ns}))
    assert len(got) == 1 and pb.rejections.counts["out_of_order"] == 0


def test_a_failed_snapshot_write_leaves_the_previous_one_for_the_restart(book, tmp_path,
                                                                       monkeypatch):
    e = live(book)
    e.start(T0)
    fp = book_fingerprint(book)
    meta, arrays = e.export_state()
    meta.update(taken_ns=T0, book=fp)
    first = write_snapshot(tmp_path, meta, arrays)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    e.apply_account_event({"type": "deposit", "account_id": book.account_ids[0],
                           "amount": "1", "event_id": "after"}, T0)
    meta2, arrays2 = e.export_state()
    meta2.update(taken_ns=T0 + 1, book=fp)
    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError):
        write_snapshot(tmp_path, meta2, arrays2)
    monkeypatch.undo()
    m, got = read_snapshot(tmp_path, fp)  # the previous snapshot, whole
    assert m["arrays"] == first["arrays"] and m["sha256"] == first["sha256"]
    fresh = live(book)
    fresh.restore_state(m, got, T0 + 2)
    np.testing.assert_array_equal(fresh.state.book.cash, arrays["book_cash"])
