"""The heartbeat outlives a bug in anything it drives: a failing step is logged and counted, and
the next beat still runs (a dead heartbeat silently stops summaries and call deadlines)."""

from __future__ import annotations

import asyncio

from monitor.app.config import RunConfig
from monitor.app.runtime import Monitor
from monitor.book.data import SAMPLE_BOOK
from monitor.book.load import load_book


async def test_a_failing_heartbeat_step_is_counted_and_the_beat_goes_on(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = RunConfig(feed=f"replay:{empty}", listen="127.0.0.1:0", token="t" * 32,
                    heartbeat_s=0.05, spill_dir=str(tmp_path / "spill"))
    mon = Monitor(cfg, load_book(SAMPLE_BOOK))
    beats = []

    def broken_sample():
        beats.append(1)
        raise RuntimeError("a bug in the desk's sampling")

    mon.desk.sample = broken_sample
    run = asyncio.create_task(mon.run())
    for _ in range(400):
        if len(beats) >= 4:
            break
        await asyncio.sleep(0.05)
    mon.stop()
    assert await asyncio.wait_for(run, 30) == 0
    assert len(beats) >= 4 and mon.heartbeat_errors >= 4
