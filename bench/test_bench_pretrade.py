"""Pre-trade check and credit controls (docs/credit-controls.md): cost per call on a synthetic
book with credit terms. The HTTP path is measured by bench/pretrade_load.py."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from _credit import credit_book, random_actions

from monitor.core.engine import Engine
from monitor.core.pretrade import PretradeService, check
from monitor.core.state import MarginState

SIZES = [int(x) for x in os.environ.get("MM_BENCH_SIZES", "100000,1000000").split(",") if x]
N_SECURITIES = int(os.environ.get("MM_BENCH_SECURITIES", "5000"))


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n // 1000}k")
def live(request):
    book = credit_book(request.param, N_SECURITIES)
    st = MarginState(book, live=True)
    eng = Engine(st)
    eng.start(0)
    eng.credit  # built once, as the running monitor does on its first cycle  # noqa: B018
    # the first rotation announces every account already over a cap or a line threshold
    # (slices cut short at max_changes); what follows is the steady state
    while True:
        eng.credit.check_slice(0)
        if eng.credit.cursor == 0:
            break
    return st, eng, random_actions(st.book, 5000)


@pytest.mark.benchmark(group="pretrade")
def test_check_python_api(benchmark, live):
    st, eng, actions = live
    it = itertools.cycle(actions)

    def one():
        aid, act = next(it)
        return check(st, aid, act, eng.credit)

    benchmark.pedantic(one, rounds=5000, iterations=1, warmup_rounds=200)


@pytest.mark.benchmark(group="pretrade")
def test_http_handler_without_network(benchmark, live):
    """The handler behind POST /api/pretrade: JSON parse, check, JSON encode."""
    import orjson

    st, eng, actions = live
    svc = PretradeService(eng)
    bodies = itertools.cycle([orjson.dumps({"account_id": a, **act}) for a, act in actions])
    benchmark.pedantic(lambda: svc.http("/api/pretrade", next(bodies)), rounds=5000,
                       iterations=1, warmup_rounds=200)


@pytest.mark.benchmark(group="credit-controls")
def test_check_slice(benchmark, live):
    """One rotation step in the steady state: 16384 accounts' concentration and line use at
    the current prices."""
    st, eng, _ = live
    benchmark.pedantic(lambda: eng.credit.check_slice(1), rounds=50, iterations=1,
                       warmup_rounds=3)


@pytest.mark.benchmark(group="credit-controls")
def test_check_after_one_account_event(benchmark, live):
    st, eng, _ = live
    rng = np.random.default_rng(3)
    accts = itertools.cycle(rng.integers(0, st.book.n_accounts, 2000).tolist())
    benchmark.pedantic(lambda: eng.credit.check([next(accts)], 1), rounds=2000, iterations=1,
                       warmup_rounds=50)
