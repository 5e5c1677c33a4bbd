"""Full sweep: our Numba kernels (1 and 2 threads), a NumPy recompute and a pure-Python loop, on
the same book, each checked against the kernel's result before it is timed.

Figures (extra_info): ns_per_position = median seconds per sweep / positions (rows in use:
longs merged per account and security, plus shorts); ns_per_row = per row walked (the slack
layout also walks free rows); the Python loop is timed on a subsample and reported per position
of that subsample. Baselines run on the packed layout only.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BAND_BP, PY_ACCOUNTS, parallel_probe, record

from kernels.ratios import collect_changes, sweep, sweep_tiers
from monitor.perf.baselines import numpy_sweep_tiers, python_sample, python_sweep_tiers

THREADS = pytest.mark.parametrize("n_threads", [1, 2], ids=["1thread", "2threads"])


def _group(book):
    return f"sweep-{book.label()}"


def _per(book):
    return {"position": book.n_positions, "row": book.n_rows, "account": book.n_accounts}


@THREADS
def test_sweep_tiers(benchmark, book, state, threads, n_threads, compile_times_opt):
    """Market values and hysteresis tiers of every account (the engine's sweep path)."""
    threads(n_threads)
    benchmark.group = _group(book)
    probe = parallel_probe(n_threads) if n_threads > 1 else 1.0
    sweep_tiers(*state.sweep_args)  # compiled (or loaded) before timing
    expect = (state.long_mv.copy(), state.short_mv.copy(), state.candidate.copy())
    benchmark(sweep_tiers, *state.sweep_args)
    assert np.array_equal(state.long_mv, expect[0])
    assert np.array_equal(state.candidate, expect[2])
    record(benchmark, _per(book), impl="numba", kernel="sweep_tiers", layout=book.layout,
           threads=n_threads, book_source=book.source, compute_speedup_probe=probe,
           **compile_times_opt("sweep_tiers"))


@THREADS
def test_sweep_market_values(benchmark, book, state, threads, n_threads, compile_times_opt):
    """Market values only (`sweep`: evaluate, stress with limit prices)."""
    threads(n_threads)
    benchmark.group = _group(book)
    probe = parallel_probe(n_threads) if n_threads > 1 else 1.0
    lm = np.zeros(book.n_accounts, dtype=np.int64)
    sm = np.zeros(book.n_accounts, dtype=np.int64)
    args = (book.price, book.price, book.long_ptr, book.long_sec, book.long_qty, book.short_ptr,
            book.short_sec, book.short_qty, lm, sm)
    sweep(*args)
    benchmark(sweep, *args)
    assert np.array_equal(lm, state.long_mv) and np.array_equal(sm, state.short_mv)
    record(benchmark, _per(book), impl="numba", kernel="sweep", layout=book.layout,
           threads=n_threads, book_source=book.source, compute_speedup_probe=probe,
           **compile_times_opt("sweep"))


def test_collect_changes(benchmark, book, state, packed_only, compile_times_opt):
    """Compacting tier changes after a sweep (steady state: nothing changed)."""
    benchmark.group = _group(book)
    args = (state.candidate, state.reported, state.previous, state.changed)
    assert collect_changes(*args) == 0
    benchmark(collect_changes, *args)
    record(benchmark, {"account": book.n_accounts}, impl="numba", kernel="collect_changes",
           threads=1, book_source=book.source, **compile_times_opt("collect_changes"))


def test_numpy_full_recompute(benchmark, book, state, packed_only):
    """Vectorised NumPy: gather price[sec] * qty, np.add.reduceat per account, tiers."""
    benchmark.group = _group(book)
    lm, sm, cand = numpy_sweep_tiers(book, BAND_BP, state.reported)
    assert np.array_equal(lm, state.long_mv) and np.array_equal(sm, state.short_mv)
    assert np.array_equal(cand, state.candidate)
    benchmark(numpy_sweep_tiers, book, BAND_BP, state.reported)
    record(benchmark, _per(book), impl="numpy", kernel="sweep_tiers", threads=1,
           book_source=book.source)


def test_python_loop(benchmark, book, state, packed_only):
    """Pure-Python per-account loop over plain lists, on a subsample of accounts."""
    benchmark.group = _group(book)
    s = python_sample(book, PY_ACCOUNTS, state.reported)
    lm, sm, cand = python_sweep_tiers(s, BAND_BP)
    assert lm == state.long_mv[s.accounts].tolist()
    assert sm == state.short_mv[s.accounts].tolist()
    assert cand == state.candidate[s.accounts].tolist()
    benchmark.pedantic(python_sweep_tiers, args=(s, BAND_BP), rounds=5, iterations=1,
                       warmup_rounds=1)
    record(benchmark, {"position": s.n_positions, "account": int(s.accounts.shape[0])},
           impl="python", kernel="sweep_tiers", threads=1, subsample_of=book.n_accounts,
           book_source=book.source)
