"""Reach mode (kernels/reach.py): what one reach cycle costs next to a full sweep, by how far
prices have moved since the last refresh (delta).

- scan: every account's reach compared with delta, the ones within reach evaluated exactly from
  their positions (random access: the headline unit is the account evaluated);
- refresh: one chunk of 65,536 accounts re-based (market values, tier, reach);
- rebase_all: every account's bound at once (2 threads; the cost of switching into reach
  mode after full sweeps).

extra_info: `share_evaluated` per delta, so a reader can set the scan's cost beside the sweep's
(test_bench_sweep.py) at the share a market produces (all price classes at `delta`).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BAND_BP, record

from kernels.reach import (
    N_CLASSES,
    price_classes,
    rebase_all,
    refresh_range,
    scan_range,
    scan_scratch,
)

DELTAS = (0.0, 0.001, 0.005, 0.02)
CHUNK = 16_384  # the engine's reach_chunk


class Reach:
    def __init__(self, b, state):
        n = b.n_accounts
        self.b = b
        self.long_mv = state.long_mv.copy()
        self.short_mv = state.short_mv.copy()
        self.reported = state.reported.copy()
        self.reach = np.zeros(n, dtype=np.float32)
        self.share = np.zeros((n, N_CLASSES), dtype=np.uint8)
        self.previous = np.empty(n, dtype=np.int8)
        self.changed = np.empty(n, dtype=np.int64)
        self.cls = price_classes(b.price)
        self.cand, self.stage = scan_scratch(n)

    def all(self):
        b = self.b
        rebase_all(-(-b.n_accounts // CHUNK), CHUNK, b.price, self.cls, b.long_ptr, b.long_sec,
                   b.long_qty, b.short_ptr, b.short_sec, b.short_qty, b.base_assets,
                   b.base_liabilities, b.profile_of, b.profile_lines, BAND_BP, self.reported,
                   self.reach, self.share)

    def scan(self, delta):
        b = self.b
        deltas = np.full(N_CLASSES, delta)
        return scan_range(0, b.n_accounts, deltas, self.reach, self.share, b.price, b.long_ptr,
                          b.long_sec,
                          b.long_qty, b.short_ptr, b.short_sec, b.short_qty, b.base_assets,
                          b.base_liabilities, b.profile_of, b.profile_lines, BAND_BP,
                          self.reported, self.previous, self.changed, 0, self.cand,
                          self.stage)

    def refresh(self, lo, hi):
        b = self.b
        return refresh_range(lo, hi, b.price, self.cls, b.long_ptr, b.long_sec, b.long_qty,
                             b.short_ptr, b.short_sec, b.short_qty, b.base_assets,
                             b.base_liabilities, b.profile_of, b.profile_lines, BAND_BP,
                             self.long_mv, self.short_mv, self.reported, self.reach,
                             self.share, self.previous, self.changed, 0)


@pytest.mark.parametrize("delta", DELTAS)
def test_reach_scan(benchmark, book, state, delta):
    benchmark.group = f"reach-scan-{book.label()}"
    r = Reach(book, state)
    r.all()
    changes, evaluated = r.scan(delta)
    assert changes == 0  # prices have not moved: nothing within reach may change tier
    benchmark(r.scan, delta)
    record(benchmark, {"account": book.n_accounts, "evaluated": max(evaluated, 1)},
           impl="numba", kernel="scan_range", layout=book.layout, delta=delta,
           share_evaluated=round(evaluated / book.n_accounts, 5), threads=1,
           n_accounts=book.n_accounts)


def test_reach_refresh_chunk(benchmark, book, state):
    benchmark.group = f"reach-refresh-{book.label()}"
    r = Reach(book, state)
    hi = min(CHUNK, book.n_accounts)
    assert r.refresh(0, hi) == 0
    np.testing.assert_array_equal(r.long_mv[:hi], state.long_mv[:hi])
    benchmark(r.refresh, 0, hi)
    rows = int(book.long_ptr[hi] + book.short_ptr[hi])
    record(benchmark, {"account": hi, "position": rows}, impl="numba",
           kernel="refresh_range", layout=book.layout, threads=1, n_accounts=book.n_accounts)


def test_rebase_all(benchmark, book, state):
    benchmark.group = f"reach-rebase-{book.label()}"
    r = Reach(book, state)
    benchmark(r.all)
    assert np.isfinite(r.reach).sum() + np.isinf(r.reach).sum() == book.n_accounts
    record(benchmark, {"account": book.n_accounts}, impl="numba", kernel="rebase_all",
           layout=book.layout, n_accounts=book.n_accounts)
