"""Compile (or load from the on-disk cache) every kernel before the first tick, so no tick pays
for JIT compilation. Runs the real code paths on the bundled sample book."""

from __future__ import annotations

import time

import numpy as np

from feeds.ticks import TickParser
from kernels.desk import warm_up as warm_up_desk
from kernels.units import PRICE_SCALE
from monitor.book.data import SAMPLE_BOOK
from monitor.book.load import book_from_dict, load_book
from monitor.book.universe import universe_of
from monitor.core.engine import Engine, EngineConfig
from monitor.core.pretrade import check
from monitor.core.state import MarginState


def warm_up() -> float:
    """Run every kernel once on the sample book; returns the seconds it took."""
    t0 = time.perf_counter()
    book = load_book(SAMPLE_BOOK)
    for share in (0.0, 1.0):  # sweep path, then incremental path
        state = MarginState(book)
        engine = Engine(state, EngineConfig(sweep_share=share, run_id="warmup"))
        engine.start(0)
        sec = np.arange(book.n_securities, dtype=np.int64)
        engine.add_ticks(sec, state.price - 10, np.ones_like(sec))
        engine.cycle(1)
        engine.summary(1)  # the heartbeat's totals kernel
        idx = np.arange(book.n_accounts, dtype=np.int64)
        state.stress_many(idx)
        state.stress_many(np.repeat(idx, 16))  # the bulk branch
        for a in range(book.n_accounts):
            state.plan(a)
    warm_up_credit()  # concentration and credit-line kernels (the sample book has no terms)
    warm_up_desk()  # crowding and what-if
    parser = TickParser(universe_of(book))  # the feed guard's kernel
    parser.parse(b'[{"symbol": "%s", "price": %.3f, "ts": 1}]'
                 % (book.symbols[0].encode(), book.price[0] / PRICE_SCALE))
    return time.perf_counter() - t0


def warm_up_credit() -> None:
    """The credit kernels on a one-account book with every control on."""
    doc = {"securities": [{"symbol": "600000.SH", "price": "10", "haircut": "0.5",
                           "group": "g", "free_float": 100000}],
           "profiles": {"default": {"concentration_caps": [
               {"below": "9", "single": "0.1", "group": "0.1", "board": "0.1"}]}},
           "accounts": [{"account_id": "W", "cash": "100", "financing_line": "1000",
                         "short_line": "1000", "positions": [
                             {"symbol": "600000.SH", "kind": "financed", "qty": 100,
                              "financed_cost": "1000", "fin_margin_ratio": "1"}]}]}
    st = MarginState(book_from_dict(doc), live=True)
    eng = Engine(st)
    eng.start(0)
    eng.credit.check_slice(0)
    eng.credit.check([0], 0)
    check(st, "W", {"type": "financed_buy", "symbol": "600000.SH", "qty": 100}, eng.credit)
