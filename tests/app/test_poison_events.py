"""Poison input against a real `margin-monitor run` process (issue 14): the tester's account
events through the Redis and the JSONL event sources, a tick a year ahead, the same numbers on
POST /api/pretrade. The monitor stays up, counts every refusal per reason on /metrics,
dead-letters each with its reason and raw event, and a restart — after SIGKILL, replaying all
of it, or after SIGTERM, from its snapshot — comes back healthy."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import orjson
import redis
from conftest import start_monitor
from prometheus_client import generate_latest
from test_event_bounds import NOW, cheapest, synth_book

from monitor.app.config import RunConfig
from monitor.app.runtime import Monitor
from monitor.book.data import SAMPLE_BOOK
from monitor.book.load import load_book
from monitor.core.account_events import REASONS, AccountEvents

TOKEN = "poison-test-token-0123456789abcdef"
YEAR = 365 * 86_400 * 10**9

# the tester's inputs, as raw JSON text; (raw, reason it is refused for)
POISON = [
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": 1e30}', "out_of_range"),
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": 1e30}', "out_of_range"),
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": "1e28"}', "out_of_range"),
    (b'{"type": "fill", "account_id": "C-TV1", "symbol": "600000.SH", "side": "collateral_buy",'
     b' "qty": 100, "price": 1e30}', "out_of_range"),
    (b'{"type": "fill", "account_id": "C-TV1", "symbol": "600000.SH", "side": "financed_buy",'
     b' "qty": 100, "price": "10", "fee": "1e28"}', "out_of_range"),
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": "1", "ts": 18446744073709551616}',
     "bad_ts"),
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": "1", "ts": 1e30}', "bad_ts"),
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": "1", "ts": "yesterday"}', "bad_ts"),
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": "1", "ts": -1.5}', "bad_ts"),
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": "1", "ts": [1]}', "bad_ts"),
    (b'{"type": "deposit", "account_id": "C-TV1", "amount": "92233720368.547"}', "overflow"),
    (b'{"type": "deposit", "account_id": ', "malformed"),
]
GOOD = b'{"type": "deposit", "account_id": "C-TV1", "amount": "100", "event_id": "good-1"}'


def get(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(text, name, reason):
    line = f'{name}{{reason="{reason}"}} '
    for x in text.splitlines():
        if x.startswith(line):
            return float(x[len(line):])
    return None


def wait_for(pred, proc, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"monitor exited ({proc.returncode}) while waiting for {what}:"
                                 f"\n{proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def want_counts():
    out: dict[str, int] = {}
    for _, reason in POISON:
        out[reason] = out.get(reason, 0) + 1
    return out


def rejected_as_wanted(port):
    text = get(port, "/metrics")
    return all(metric(text, "mm_account_events_rejected_total", r) == n
               for r, n in want_counts().items()) and text


def applied(r):
    return orjson.loads(r.get("margin:alerts:summary") or b"{}").get("account_events", {}).get(
        "applied")


def healthy(port):
    try:
        return json.loads(get(port, "/healthz"))["ok"]
    except OSError:
        return False


def stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    return proc.wait(60)


def test_poison_through_the_redis_event_stream_sigkill_and_replay(redis_fresh, tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    r = redis.Redis.from_url(redis_fresh.url)
    now = time.time_ns()
    # a tick a year ahead, then real ticks of the same symbol: the real ones are taken
    r.xadd("ticks", {"data": orjson.dumps({"symbol": "600000.SH", "price": 12.0,
                                           "ts": now + YEAR})})
    r.xadd("ticks", {"data": orjson.dumps([{"symbol": "600000.SH", "price": 12.1, "ts": now},
                                           {"symbol": "600000.SH", "price": 12.2,
                                            "ts": now + 1}])})
    for raw, _ in POISON:
        r.xadd("acct", {"data": raw})
    r.xadd("acct", {"nodata": b"x"})  # an entry without the data field
    r.xadd("acct", {"data": GOOD})
    args = ["--book", str(SAMPLE_BOOK), "--feed", f"{redis_fresh.url}/ticks?block_ms=100&start=0",
            "--events", f"{redis_fresh.url}/acct?block_ms=100&start=0",
            "--redis", redis_fresh.url, "--token-file", str(tmp_path / "token"),
            "--state-dir", str(tmp_path / "state"), "--snapshot-interval", "3600"]
    proc, port = start_monitor(args, tmp_path)
    try:
        wanted = dict(want_counts(), malformed=want_counts()["malformed"] + 1)
        text = wait_for(lambda: all(
            metric(get(port, "/metrics"), "mm_account_events_rejected_total", k) == v
            for k, v in wanted.items()) and get(port, "/metrics"), proc, "the rejections")
        assert metric(text, "mm_account_events_rejected_total", "internal_error") == 0
        wait_for(lambda: metric(get(port, "/metrics"), "mm_ticks_rejected_total", "future_ts") == 1,
                 proc, "the future tick's rejection")
        assert "mm_ticks_accepted_total 2.0" in get(port, "/metrics")
        # the dead-letter stream beside the event stream: reason and raw event of each
        dead = wait_for(lambda: (lambda x: len(x) == len(POISON) + 1 and x)(
            r.xrange("acct:dead")), proc, "the dead letters")
        got = [(f[b"reason"].decode(), orjson.loads(f[b"data"])) for _, f in dead]
        # (what the source cannot decode is refused as it is read, before the batch applies)
        applied_ones = [g for g in got if g[0] != "malformed"]
        assert [g[0] for g in applied_ones] == [p[1] for p in POISON[:-1]]
        assert orjson.loads(applied_ones[0][1]["event"]) == orjson.loads(POISON[0][0])
        assert sorted(g[1]["raw"] for g in got if g[0] == "malformed") == [
            "", POISON[-1][0].decode()]
        assert all(g[1]["source"].startswith("events:") and g[1]["error"] for g in got)
        # the good event after them was applied
        wait_for(lambda: applied(r) == 1, proc, "the good event")
        # the same numbers on the pre-trade endpoint: 400 with a reason, never 500
        for action in ({"type": "cash_withdrawal", "amount": 1e30},
                       {"type": "financed_buy", "symbol": "600000.SH", "qty": 100,
                        "price": "1e28"}):
            st, out = post(port, "/api/pretrade", orjson.dumps({"account_id": "C-TV1",
                                                                **action}))
            assert (st, orjson.loads(out)["code"]) == (400, "out_of_range")
        # SIGKILL: no snapshot was taken, so the restart replays every poison event
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
        proc, port = start_monitor(args, tmp_path)
        wait_for(lambda: all(
            metric(get(port, "/metrics"), "mm_account_events_rejected_total", k) == v
            for k, v in wanted.items()), proc, "the replayed rejections")
        assert healthy(port)
        assert len(r.xrange("acct:dead")) == 2 * (len(POISON) + 1)
        assert stop(proc) == 0  # a clean stop, final snapshot included
        proc, port = start_monitor(args, tmp_path)  # from the snapshot: nothing replayed
        r.xadd("acct", {"data": GOOD.replace(b"good-1", b"good-2")})
        wait_for(lambda: applied(r) == 2, proc, "a new event after the restart")
        assert healthy(port)
        text = get(port, "/metrics")
        assert all(metric(text, "mm_account_events_rejected_total", k) == 0 for k in wanted)
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_poison_through_a_jsonl_event_file_dead_letters_to_the_spill_dir(tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    now = time.time_ns()
    ticks = tmp_path / "ticks.jsonl"
    ticks.write_bytes(b"\n".join(orjson.dumps(t) for t in (
        {"symbol": "600000.SH", "price": 12.0, "ts": now + YEAR},
        {"symbol": "600000.SH", "price": 12.1, "ts": now})) + b"\n")
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join([raw for raw, _ in POISON] + [GOOD]) + b"\n")
    args = ["--book", str(SAMPLE_BOOK), "--feed", f"replay:{ticks}", "--events", str(events),
            "--token-file", str(tmp_path / "token"), "--state-dir", str(tmp_path / "state")]
    proc, port = start_monitor(args, tmp_path)
    try:
        text = wait_for(lambda: rejected_as_wanted(port), proc, "the rejections")
        assert metric(text, "mm_account_events_rejected_total", "internal_error") == 0
        wait_for(lambda: metric(get(port, "/metrics"), "mm_ticks_rejected_total", "future_ts") == 1,
                 proc, "the future tick's rejection")
        assert "mm_ticks_accepted_total 1.0" in get(port, "/metrics")
        assert stop(proc) == 0
        dead = [orjson.loads(x) for x in
                (tmp_path / "spill" / "account-events.dead.jsonl").read_bytes().splitlines()]
        assert sorted(d["reason"] for d in dead) == sorted(p[1] for p in POISON)
        assert [d["reason"] for d in dead if d["reason"] != "malformed"] == [
            p[1] for p in POISON if p[1] != "malformed"]
        assert orjson.loads(next(d for d in dead if "event" in d)["event"])["amount"] == 1e30
        assert [d["raw"] for d in dead if d["reason"] == "malformed"] == [
            POISON[-1][0].decode()]
        # a restart from the snapshot the clean stop took: the events file is read on after
        # the lines already applied, so only a line added since is refused
        with events.open("ab") as f:
            f.write(POISON[0][0] + b"\n")
        proc, port = start_monitor(args, tmp_path)
        wait_for(lambda: metric(get(port, "/metrics"), "mm_account_events_rejected_total",
                                "out_of_range") == 1, proc, "the new line's rejection")
        assert healthy(port)
        assert metric(get(port, "/metrics"), "mm_account_events_rejected_total", "bad_ts") == 0
        assert stop(proc) == 0
        # a restart without a usable snapshot (the state dir unreadable) replays every poison
        # event into the same refusals, never a crash
        (tmp_path / "state" / "snapshot.json").write_text("{not json")
        proc, port = start_monitor(args, tmp_path)
        want = dict(want_counts())
        want["out_of_range"] += 1
        wait_for(lambda: all(
            metric(get(port, "/metrics"), "mm_account_events_rejected_total", k) == v
            for k, v in want.items()), proc, "the replayed rejections")
        assert healthy(port)
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_runtime_dead_letters_every_refusal_and_goes_on(tmp_path, monkeypatch):
    """Monitor.apply_account_events never raises: the tester's events (two huge deposits in
    one batch, a bad ts), an unexpected exception and an accrual that skips an account are
    counted per reason (/metrics from 0), dead-lettered with the raw event, and the next valid
    event is applied."""
    book = synth_book()
    events = tmp_path / "events.jsonl"
    events.write_text("")
    cfg = RunConfig(feed="synthetic", events=str(events), spill_dir=str(tmp_path / "spill"))
    mon = Monitor(cfg, book, redis_url="")
    mon.publish(mon.engine.start(NOW))
    text = generate_latest(mon.metrics.registry).decode()
    for r in REASONS:
        assert f'mm_account_events_rejected_total{{reason="{r}"}} 0.0' in text
    huge = orjson.loads(b'{"type": "deposit", "account_id": "C0000002", "amount": 1e30}')
    mon._account_events.extend([huge, dict(huge), {"type": "deposit", "account_id": "C0000002",
                                                   "amount": "1", "ts": "yesterday"}])
    boom = {"type": "profile", "account_id": "C0000002", "profile": "default"}
    monkeypatch.setattr(AccountEvents, "_profile",
                        lambda self, ev: (_ for _ in ()).throw(KeyError("a bug")))
    mon._account_events.append(boom)
    mon.apply_account_events()
    monkeypatch.undo()
    b = mon.engine.state.book
    b2 = b.account_index["C0000003"]
    mon._account_events.extend([
        {"type": "fill", "account_id": "C0000003", "symbol": cheapest(b),
         "side": "financed_buy", "qty": 10**9, "price": "9"},
        {"type": "interest_accrual", "days": 366, "financing_rate": "10", "short_fee_rate": "0"},
        {"type": "deposit", "account_id": "C0000002", "amount": "100", "event_id": "ok-1"}])
    cash = int(b.cash[b.account_index["C0000002"]])
    mon.apply_account_events()
    assert int(b.cash[b.account_index["C0000002"]]) == cash + 100_000  # the valid one applied
    assert dict(mon.event_rejects) == {"out_of_range": 2, "bad_ts": 1, "internal_error": 1,
                                       "overflow": 1}
    text = generate_latest(mon.metrics.registry).decode()
    assert 'mm_account_events_rejected_total{reason="out_of_range"} 2.0' in text
    assert 'mm_account_events_rejected_total{reason="internal_error"} 1.0' in text
    assert 'mm_account_events_rejected_total{reason="unknown_account"} 0.0' in text
    # a line the source cannot decode is dead-lettered too
    mon.event_source._decode(b'{"type": "deposit", ')
    asyncio.run(mon.dead_letters.aclose())
    dead = [orjson.loads(x) for x in (tmp_path / "spill" / "account-events.dead.jsonl")
            .read_bytes().splitlines()]
    assert [d["reason"] for d in dead] == ["out_of_range", "out_of_range", "bad_ts",
                                           "internal_error", "overflow", "malformed"]
    assert orjson.loads(dead[0]["event"]) == {"type": "deposit", "account_id": "C0000002",
                                              "amount": 1e30}
    assert "KeyError" in dead[3]["error"]
    assert orjson.loads(dead[4]["event"])["account_id"] == "C0000003"
    assert dead[5]["raw"] == '{"type": "deposit", '
    assert mon.summary()["account_events"]["rejected"]["malformed"] == 1
    assert b2 >= 0


def test_a_fill_naming_a_hold_releases_it(tmp_path):
    """A pre-trade check with "reserve": true holds the margin; the fill that comes back as an
    account event with its `hold_id` releases it (also when the fill itself is refused)."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    mon = Monitor(RunConfig(book=str(SAMPLE_BOOK), feed="synthetic", events=str(events),
                            spill_dir=str(tmp_path / "spill")),
                  load_book(SAMPLE_BOOK), redis_url="")
    mon.publish(mon.engine.start(NOW))
    status, body = mon.pretrade.http("/api/pretrade", orjson.dumps({
        "account_id": "C-TV1", "reserve": True,
        "action": {"type": "collateral_buy", "symbol": "600000.SH", "qty": 100}}))
    out = orjson.loads(body)
    assert status == 200 and out["allowed"], out
    hold = out["hold"]["hold_id"]
    assert len(mon.pretrade.holds) == 1
    mon._account_events.append({"type": "fill", "account_id": "C-TV1", "symbol": "600000.SH",
                                "side": "collateral_buy", "qty": 100, "price": "10",
                                "event_id": "f1", "hold_id": hold})
    mon.apply_account_events()
    assert len(mon.pretrade.holds) == 0 and mon.pretrade.holds.released == 1
    assert mon.summary()["pretrade_holds"]["released"] == 1
