"""Every kernel of kernels/catalog.py on its sample inputs (kernels/samples.py), one benchmark
per row and account count (MM_BENCH_SIZES): a row added to the catalog is benchmarked here, as
it is tested in tests/kernels/test_kernel_catalog.py.

The samples are small synthetic books (about n/4 securities, 0-8 positions per account), not the
benchmark books of the other files, so these figures compare kernels with each other and runs
with runs; the capacity figures are the other files'. Kernels that change what a second call
reads (`stateful` rows) get fresh copies of their inputs before each round (not timed).
"""

from __future__ import annotations

import copy
import os

import pytest
from conftest import SIZES, record, size_label

from kernels.catalog import KERNELS

SEED = 7
ROUNDS = int(os.environ.get("MM_BENCH_CATALOG_ROUNDS", "20"))  # rounds of the stateful rows


@pytest.mark.parametrize("size", SIZES, ids=size_label)
@pytest.mark.parametrize("entry", KERNELS, ids=lambda k: k.name)
def test_kernel(benchmark, entry, size):
    benchmark.group = f"catalog-{size_label(size)}"
    args = copy.deepcopy(entry.make(SEED, size))
    entry.kernel(*copy.deepcopy(args))  # signed kernels are compiled; inline ones compile here
    if entry.stateful:
        benchmark.pedantic(entry.kernel, setup=lambda: (copy.deepcopy(args), {}), rounds=ROUNDS)
    else:
        benchmark(entry.kernel, *args)
    record(benchmark, {"call": 1}, impl="numba", kernel=entry.name, accounts=size,
           signed=entry.signed)
