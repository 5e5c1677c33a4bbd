"""`margin-monitor run --shard I/N` as processes against a real Redis: each shard publishes to
`<alerts>:{I}` with `"shard": I` and a gap-free `seq`, applies only its accounts' events (the
others are skipped and counted, never dead-lettered), and the union of the shards' events equals
the whole book's run on the same tape, account by account and event for event."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import numpy as np
import orjson
import redis

from monitor.book import synthetic as synthbook
from monitor.book.load import book_from_dict
from monitor.book.shard import shard_of

T0 = 1_795_000_000_000_000_000  # 2026-11-19 (a Thursday), 10:53 in Shanghai: a session


def _tape(tmp_path):
    doc = synthbook.generate_json_book(400, 30, seed=8)
    (tmp_path / "book.json").write_text(json.dumps(doc))
    book = book_from_dict(doc)
    down, up = book.limit_prices()
    rng = np.random.default_rng(2)
    lines = []
    for c in range(30):  # a falling market, then a rebound: accounts move both ways
        drift = -0.005 * c if c < 20 else -0.095 + 0.008 * (c - 20)
        for s in range(book.n_securities):
            base = (down[s] + up[s]) / 2 / 1000  # about the previous close, in yuan
            p = max(0.01, round(base * (1 + drift + rng.normal(0, 0.003)), 2))
            p = min(max(p, down[s] / 1000), up[s] / 1000)
            lines.append({"symbol": book.symbols[s], "price": p, "ts": T0 + c * 10**9 + s})
    (tmp_path / "ticks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in lines))
    ids = list(book.account_ids)
    events = [{"type": "deposit", "account_id": a, "amount": "20000", "event_id": f"d-{a}",
               "ts": T0 + 25 * 10**9} for a in ids[:30]]
    events.append({"type": "deposit", "account_id": "NOBODY", "amount": "1", "event_id": "x",
                   "ts": T0 + 25 * 10**9})
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return ids


def _per_account(events):
    out = defaultdict(list)
    for e in events:
        if "account_id" in e:
            out[e["account_id"]].append({k: v for k, v in e.items() if k not in (
                "event_id", "seq", "ts_published", "shard")})
    return dict(out)


def test_two_shards_publish_the_whole_books_events_between_them(redis_fresh, tmp_path):
    ids = _tape(tmp_path)
    runs = {"whole": [], "0": ["--shard", "0/2"], "1": ["--shard", "1/2"]}
    procs = {}
    for name, extra in runs.items():
        cwd = tmp_path / f"run-{name}"
        cwd.mkdir()
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--book", str(tmp_path / "book.json"),
             "--feed", f"replay:{tmp_path / 'ticks.jsonl'}",
             "--events", str(tmp_path / "events.jsonl"), "--redis", redis_fresh.url,
             "--alerts-stream", "sh:alerts", "--until-feed-ends", "--listen", "127.0.0.1:0",
             *extra], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for name, p in procs.items():
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, f"{name}: {err.decode()[-2000:]}"
    r = redis.Redis.from_url(redis_fresh.url)
    whole = [orjson.loads(f[b"data"]) for _, f in r.xrange("sh:alerts")]
    shards = [[orjson.loads(f[b"data"]) for _, f in r.xrange(f"sh:alerts:{{{i}}}")]
              for i in range(2)]
    assert len(_per_account(whole)) >= 20, "the tape must move accounts to prove anything"
    assert all(shards)
    assert _per_account(shards[0] + shards[1]) == _per_account(whole)
    for i, evs in enumerate(shards):
        assert all(e["shard"] == i for e in evs)
        assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
        assert all(shard_of(e["account_id"], 2) == i for e in evs if "account_id" in e)
    event_ids = [e["event_id"] for evs in shards for e in evs]
    assert len(set(event_ids)) == len(event_ids)
    # each deposit was applied by its owner only; the unknown account was refused by its
    # owner shard alone (the other skipped it as another shard's)
    for i in range(2):
        dead = tmp_path / f"run-{i}" / "spill" / "account-events.dead.jsonl"
        reasons = [orjson.loads(x)["reason"] for x in dead.read_bytes().splitlines()] \
            if dead.exists() else []
        assert reasons == (["unknown_account"] if shard_of("NOBODY", 2) == i else [])
    deposits = [e for e in shards[0] + shards[1]
                if (e.get("trigger") or {}).get("event") == "deposit"]
    assert {e["account_id"] for e in deposits} <= set(ids[:30])
