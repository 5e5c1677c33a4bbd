"""JIT compile time of each kernel: first call in a fresh interpreter with an empty Numba cache
(uncached: compiles) and with the cache that run wrote (cached: `cache=True` loads it).

The timed figure is one fresh-interpreter run with a warm cache (process start, imports, cache
load, first call); the first-call times themselves are in extra_info (uncached_s, cached_s).
"""

from __future__ import annotations

import tempfile

import pytest
from conftest import compile_probe_run

from monitor.perf.compile_probe import KERNELS


@pytest.mark.parametrize("kernel", KERNELS)
def test_compile_time(benchmark, kernel, compile_times):
    benchmark.group = "compile"
    times = compile_times(kernel)
    with tempfile.TemporaryDirectory(prefix="mm-numba-cache-") as d:
        compile_probe_run(kernel, d)  # fill this cache
        benchmark.pedantic(compile_probe_run, args=(kernel, d), rounds=1, iterations=1)
    benchmark.extra_info.update(kernel=kernel, **times)
