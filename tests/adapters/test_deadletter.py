"""Dead letters of refused account events (monitor/adapters/deadletter.py): counted, sampled in
the log, written to Redis or, when there is none or it fails, to the spill dir's JSONL file."""

import asyncio
import logging

import orjson

from monitor.adapters.deadletter import FILE_NAME, DeadLetters


def lines(path):
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_counted_sampled_and_written_to_the_file(tmp_path, caplog):
    seen = []
    dl = DeadLetters(spill_dir=tmp_path, log_interval_s=3600, on_count=seen.append)
    with caplog.at_level(logging.WARNING, logger="monitor.account_events"):
        for i in range(50):
            dl.reject("out_of_range", "'amount' is out of range", {"amount": 1e30, "i": i})
        dl.reject("bad_ts", "'ts' ...", {"ts": 2**70})  # beyond what orjson can encode
        dl.reject("malformed", "not valid JSON", b'{"type": ')
        asyncio.run(dl.aclose())
    assert dl.counts == {"out_of_range": 50, "bad_ts": 1, "malformed": 1}
    assert seen == ["out_of_range"] * 50 + ["bad_ts", "malformed"]
    msgs = [r.getMessage() for r in caplog.records]
    # one line per reason while sampling, and the rest counted on close
    assert sum("(out_of_range)" in m for m in msgs) == 2
    assert any("49 since the last line, 50 in all" in m for m in msgs)
    got = lines(tmp_path / FILE_NAME)
    assert [d["reason"] for d in got] == ["out_of_range"] * 50 + ["bad_ts", "malformed"]
    assert orjson.loads(got[0]["event"]) == {"amount": 1e30, "i": 0}
    assert str(2**70) in got[50]["event"] and got[51]["raw"] == '{"type": '
    assert dl.stats()["dead_letters"] == {"redis": 0, "file": 52}


def test_an_unreachable_redis_falls_back_to_the_file(tmp_path):
    dl = DeadLetters(redis_url="redis://127.0.0.1:1/0", stream="acct:dead", spill_dir=tmp_path)

    async def go():
        task = asyncio.create_task(dl.run())
        dl.reject("overflow", "beyond the bound", {"type": "deposit"})
        await dl.aclose()
        task.cancel()

    asyncio.run(go())
    assert [d["reason"] for d in lines(tmp_path / FILE_NAME)] == ["overflow"]
    assert dl.written == {"redis": 0, "file": 1}


def test_the_file_is_capped_and_an_internal_error_is_traced_once(tmp_path, caplog):
    dl = DeadLetters(spill_dir=tmp_path, max_file_bytes=1000)
    with caplog.at_level(logging.ERROR, logger="monitor.account_events"):
        for _ in range(3):
            try:
                {}["missing"]
            except KeyError as e:
                dl.internal(e, {"type": "profile"})
        for _ in range(20):
            dl.reject("bad_value", "x" * 100, {"pad": "y" * 100})
        asyncio.run(dl.aclose())
    assert sum(r.exc_info is not None for r in caplog.records) == 1
    assert dl.counts["internal_error"] == 3
    assert (tmp_path / FILE_NAME).stat().st_size <= 1000 and dl.dropped > 0
    assert dl.written["file"] + dl.dropped == 23
