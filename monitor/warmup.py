"""Compile (or load from the on-disk cache) every kernel before the first tick, so no tick pays
for JIT compilation. Runs the real code paths on the bundled sample book."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kernels.units import PRICE_SCALE

SAMPLE_BOOK = Path(__file__).parent / "data" / "sample_book.json"


def warm_up() -> float:
    """Run every kernel once on the sample book; returns the seconds it took."""
    from feeds.ticks import TickParser

    from .bookio import load_book
    from .engine import Engine, EngineConfig
    from .runtime import universe_of
    from .state import MarginState

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
    from .credit import warm_up as warm_up_credit

    warm_up_credit()  # concentration and credit-line kernels (the sample book has no terms)
    parser = TickParser(universe_of(book))  # the feed guard's kernel
    parser.parse(b'[{"symbol": "%s", "price": %.3f, "ts": 1}]'
                 % (book.symbols[0].encode(), book.price[0] / PRICE_SCALE))
    return time.perf_counter() - t0
