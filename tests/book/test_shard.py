"""Shards of a book (interfaces.md, "Shards"): ownership by crc32(account_id) mod N, a
partition of the accounts, `split-book` folders that load as their shard, and the union of the
shards' events equal to the whole book's, account by account and event for event."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.book import synthetic as synthbook
from monitor.book.data import SAMPLE_BOOK
from monitor.book.load import book_from_dict, build_book, load_book
from monitor.book.shard import Shard, filter_tables, shard_of, split_tables
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState
from monitor.errors import BookError, ConfigError

T0 = 1_795_000_000_000_000_000  # 2026-11-19 (a Thursday), 02:53 UTC: in the morning session


@given(st.text(min_size=1, max_size=30), st.integers(1, 64))
def test_the_owner_is_crc32_of_the_utf8_id_mod_n(account_id, n):
    assert shard_of(account_id, n) == zlib.crc32(account_id.encode("utf-8")) % n
    assert sum(Shard(i, n).owns(account_id) for i in range(n)) == 1


def test_shard_specs_parse_and_bad_ones_are_refused():
    assert Shard.parse("2/3") == Shard(2, 3) and str(Shard.parse(" 0 / 1 ")) == "0/1"
    assert Shard(1, 3).stream("margin:alerts") == "margin:alerts:{1}"
    for bad in ("3/3", "1", "-1/3", "a/b", "0/0", "1/5000", ""):
        with pytest.raises(ConfigError):
            Shard.parse(bad)


def test_the_shards_partition_the_book_and_keep_the_securities_whole():
    tables = synthbook.generate(500, 40, seed=3)
    whole = build_book(tables, {k: k for k in tables})
    parts = [build_book(t, {k: k for k in t}) for t in split_tables(tables, 3)]
    ids = [set(p.account_ids) for p in parts]
    assert set().union(*ids) == set(whole.account_ids)
    assert sum(map(len, ids)) == whole.n_accounts
    assert all(all(Shard(i, 3).owns(a) for a in ids[i]) for i in range(3))
    assert all(p.n_securities == whole.n_securities for p in parts)
    assert sum(p.n_positions for p in parts) == whole.n_positions


def test_a_position_of_an_unknown_account_is_refused_in_every_shard():
    tables = synthbook.generate(50, 10, seed=4)
    pos = tables["positions"]
    bad = pos.slice(0, 1).set_column(pos.column_names.index("account_id"), "account_id",
                                     [["NOBODY"]])
    import pyarrow as pa

    tables["positions"] = pa.concat_tables([pos, bad])
    for i in range(3):
        with pytest.raises(BookError, match="unknown account"):
            build_book(filter_tables(tables, Shard(i, 3)), {k: k for k in tables})


def test_split_book_writes_folders_that_load_as_their_shard(tmp_path):
    out = tmp_path / "split"
    r = subprocess.run([sys.executable, "-m", "monitor", "split-book", str(SAMPLE_BOOK),
                        "--shards", "3", "--out", str(out)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    whole = load_book(SAMPLE_BOOK)
    seen = []
    for i in range(3):
        folder = out / f"shard-{i}-of-3"
        part = load_book(folder)
        assert list(part.account_ids) == list(load_book(SAMPLE_BOOK, Shard(i, 3)).account_ids)
        assert list(load_book(folder, Shard(i, 3)).account_ids) == list(part.account_ids)
        seen += list(part.account_ids)
    assert sorted(seen) == sorted(whole.account_ids)
    bad = subprocess.run([sys.executable, "-m", "monitor", "split-book", str(SAMPLE_BOOK),
                          "--shards", "0", "--out", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "--shards" in bad.stderr


def _per_account(events):
    out = defaultdict(list)
    for e in events:
        if "account_id" in e:
            out[e["account_id"]].append({k: v for k, v in e.items() if k not in (
                "event_id", "seq", "ts_published", "shard", "restored_event_id")})
    return dict(out)


def test_the_union_of_the_shards_events_equals_the_whole_books():
    doc = synthbook.generate_json_book(1500, 60, seed=21)
    whole = Engine(MarginState(book_from_dict(doc), live=True), EngineConfig())
    shards = [Engine(MarginState(book_from_dict(doc, shard=Shard(i, 3)), live=True),
                     EngineConfig(shard=i)) for i in range(3)]
    book = whole.state.book
    down, up = book.limit_prices()
    rng = np.random.default_rng(5)
    got_whole, got_shards = [], [[] for _ in shards]
    deposit_to = list(book.account_ids[:40])
    for c in range(25):
        n = 200
        sec = rng.integers(0, book.n_securities, n).astype(np.int64)
        lo = np.maximum(down[sec], 10) // 10
        price = (rng.integers(lo, up[sec] // 10 + 1) * 10).astype(np.int64)
        ts = np.arange(n, dtype=np.int64) * 1000 + T0 + c * 1_000_000_000
        now = int(ts[-1]) + 1
        ev = {"type": "deposit", "account_id": deposit_to[c], "amount": "5000",
              "event_id": f"d{c}", "ts": now}
        for eng, out in [(whole, got_whole)] + list(zip(shards, got_shards, strict=True)):
            eng.add_ticks(sec, price, ts)
            out += eng.cycle(now)
            if eng is whole or eng.config.shard == shard_of(ev["account_id"], 3):
                out += eng.apply_account_event(ev, now)
    assert len(_per_account(got_whole)) >= 20, "the tape must move accounts to prove anything"
    union = [e for evs in got_shards for e in evs]
    assert _per_account(union) == _per_account(got_whole)
    for i, evs in enumerate(got_shards):
        assert all(e["shard"] == i for e in evs)
        assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))  # gap-free per shard
    ids = [e["event_id"] for evs in got_shards for e in evs]
    assert len(set(ids)) == len(ids)  # unique across shards
    assert all("shard" not in e for e in got_whole)
