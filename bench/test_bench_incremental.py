"""Incremental update through the per-security holder index: one price change of a cold (least
held), a median and the hottest security, then re-tiering the accounts it touched.

Each call moves the price by one fen and back on the next, so every call does the full work.
Figures (extra_info): ns_per_holder = median seconds per call / holders of the security (rows in
use); ns_per_row = per holder row walked (the slack layout also walks free rows).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BAND_BP, record

from kernels.incremental import apply_price_changes, retier_accounts
from kernels.units import MONEY_SCALE
from monitor.perf.baselines import pick_securities

CLASSES = ("cold", "median", "hot")
STEP = MONEY_SCALE // 100  # one fen


class Incremental:
    """Own copies of everything the kernels mutate, so the session state stays untouched."""

    def __init__(self, book, state, cls):
        self.b = book
        self.s = pick_securities(book)[cls]
        self.holders = book.holders(self.s)
        self.rows = book.holder_rows(self.s)
        n = book.n_accounts
        self.price = book.price.copy()
        self.long_mv = state.long_mv.copy()
        self.short_mv = state.short_mv.copy()
        self.reported = state.reported.copy()
        self.mark = np.zeros(n, dtype=np.uint8)
        self.touched = np.empty(n, dtype=np.int64)
        self.previous = np.empty(n, dtype=np.int8)
        self.changed = np.empty(n, dtype=np.int64)
        self.secs = np.array([self.s], dtype=np.int64)
        p = int(book.price[self.s])
        self.targets = (np.array([p + STEP], dtype=np.int64), np.array([p], dtype=np.int64))
        self.flip = 0

    def apply(self):
        b = self.b
        self.flip ^= 1
        return apply_price_changes(self.secs, self.targets[self.flip ^ 1], 1, self.price,
                                   b.long_hptr, b.long_hacct, b.long_hqty, b.short_hptr,
                                   b.short_hacct, b.short_hqty, self.long_mv, self.short_mv,
                                   self.mark, self.touched)

    def retier(self, k):
        b = self.b
        return retier_accounts(self.touched, k, b.base_assets, b.base_liabilities, self.long_mv,
                               self.short_mv, b.profile_of, b.profile_lines, BAND_BP,
                               self.reported, self.previous, self.changed)

    def cycle(self):
        return self.retier(self.apply())


@pytest.mark.parametrize("cls", CLASSES)
def test_apply_price_changes(benchmark, book, state, cls, compile_times_opt):
    """Market values of every holder of one security (`apply_price_changes`)."""
    benchmark.group = f"incremental-{book.label()}"
    inc = Incremental(book, state, cls)
    k = inc.apply()  # compiled before timing; leaves the price moved by one fen
    assert k == np.unique(np.concatenate([
        book.long_hacct[book.long_hptr[inc.s]:book.long_hptr[inc.s + 1]],
        book.short_hacct[book.short_hptr[inc.s]:book.short_hptr[inc.s + 1]]])).shape[0]
    benchmark(inc.apply)
    if inc.flip:  # back at the book's price: the values equal the sweep's
        inc.apply()
    assert np.array_equal(inc.long_mv, state.long_mv)
    assert np.array_equal(inc.short_mv, state.short_mv)
    record(benchmark, {"holder": inc.holders, "row": inc.rows}, impl="numba",
           kernel="apply_price_changes", layout=book.layout, security_class=cls,
           security=inc.s, threads=1, n_accounts=book.n_accounts, book_source=book.source,
           **compile_times_opt("apply_price_changes"))


@pytest.mark.parametrize("cls", CLASSES)
def test_incremental_cycle(benchmark, book, state, cls, compile_times_opt):
    """apply_price_changes + retier_accounts of the touched accounts (the engine's
    incremental path for one symbol)."""
    benchmark.group = f"incremental-{book.label()}"
    inc = Incremental(book, state, cls)
    inc.cycle()
    benchmark(inc.cycle)
    record(benchmark, {"holder": inc.holders, "row": inc.rows}, impl="numba",
           kernel="apply_price_changes+retier_accounts", layout=book.layout,
           security_class=cls, security=inc.s, threads=1, n_accounts=book.n_accounts,
           book_source=book.source, **compile_times_opt("retier_accounts"))
