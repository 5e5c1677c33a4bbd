"""The live monitor wires the dated price bands (kernels/bands.py) into its tick guard: the
feed's parser checks each tick against the band of its own trading date, and the engine's
state is configured with the run's stress shock (`no_limit_shock`)."""

from __future__ import annotations

import json
from datetime import date

import orjson
import pytest

from monitor.app.config import RunConfig
from monitor.app.runtime import Monitor
from monitor.book.load import load_book
from monitor.core.calendar import at_china
from monitor.errors import ConfigError


def _book(tmp_path):
    path = tmp_path / "book.json"
    path.write_text(json.dumps({
        "securities": [{"symbol": "600001.SH", "price": "10.00", "haircut": "0",
                        "risk_warning": True}],
        "accounts": [{"account_id": "A", "cash": "100", "positions": [
            {"symbol": "600001.SH", "kind": "collateral", "qty": 100}]}]}))
    return path


def test_the_monitor_guard_uses_the_band_of_each_tick_date(tmp_path):
    book = _book(tmp_path)
    ticks = tmp_path / "ticks.jsonl"
    ticks.write_text("")
    mon = Monitor(RunConfig(book=str(book), feed=f"replay:{ticks}", no_limit_shock="0.45"),
                  load_book(book))
    assert mon.state.unlimited_shock_bp == 4_500
    parser = mon.feed.parser
    assert parser.universe is mon.universe and mon.universe.rebands is not None

    def one(day: date) -> int:
        t = at_china(day.toordinal(), 10 * 3600)
        return len(parser.parse(orjson.dumps({"symbol": "600001.SH", "price": 10.70, "ts": t})))

    assert one(date(2026, 7, 3)) == 0  # ST ±5% before 2026-07-06: 7% is out of band
    assert one(date(2026, 7, 6)) == 1  # ±10% since
    assert parser.rejections.counts["out_of_band"] == 1


def test_no_limit_shock_is_validated():
    with pytest.raises(ConfigError, match="no_limit_shock"):
        _ = RunConfig(no_limit_shock="1.5").no_limit_shock_bp
