"""Fixtures of the benchmark suite (see bench/README.md).

Environment:
- MM_BENCH_SIZES: comma-separated account counts (default "100000,1000000"); CI smoke:
  MM_BENCH_SIZES=100000.
- MM_BENCH_LAYOUTS: holdings layouts (default "packed,slack"): packed = rows in use only,
  slack = the live monitor's layout with free rows (`Holdings.from_book(book, slack=True)`).
- MM_BENCH_SECURITIES: securities per book (default 5000).
- MM_BENCH_PY_ACCOUNTS: accounts in the pure-Python subsample (default 20000).
- MM_BENCH_COMPILE: 0 skips the compile-time probes (fresh interpreters, about a minute).
- MM_BENCH_CACHE: folder of the cached books (default bench/.cache, gitignored).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numba as nb
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from kernels import units as u  # noqa: E402
from kernels.ratios import collect_changes, sweep_tiers  # noqa: E402
from monitor.perf import book_cache as _book  # noqa: E402

SIZES = [int(x) for x in os.environ.get("MM_BENCH_SIZES", "100000,1000000").split(",") if x]
LAYOUTS = [x for x in os.environ.get("MM_BENCH_LAYOUTS", "packed,slack").split(",") if x]
N_SECURITIES = int(os.environ.get("MM_BENCH_SECURITIES", "5000"))
PY_ACCOUNTS = int(os.environ.get("MM_BENCH_PY_ACCOUNTS", "20000"))
COMPILE = os.environ.get("MM_BENCH_COMPILE", "1") != "0"
BAND_BP = u.DEFAULT_HYSTERESIS_BP
MAX_THREADS = nb.config.NUMBA_NUM_THREADS


def size_label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


BOOKS = [(n, layout) for n in SIZES for layout in LAYOUTS]


@pytest.fixture(scope="session", params=BOOKS,
                ids=[size_label(n) if lay == "packed" else f"{size_label(n)}-{lay}"
                     for n, lay in BOOKS])
def book(request):
    """A benchmark book (arrays the kernels walk), built once and cached on disk."""
    n, layout = request.param
    b = _book.load(n, N_SECURITIES, layout=layout, log=lambda m: print(f"\n[bench] {m}"))
    if b is None:
        pytest.skip(f"no {layout} layout for this book")
    return b


@pytest.fixture
def packed_only(book):
    """Skip on layouts other than packed (baselines run on the rows in use only)."""
    if book.layout != "packed":
        pytest.skip("baselines run on the packed layout only")


class SweepState:
    """Per-account outputs of a sweep, with `reported` at the steady state (the tiers of the
    book's own prices committed once), as in a running engine."""

    def __init__(self, b):
        n = b.n_accounts
        self.long_mv = np.zeros(n, dtype=np.int64)
        self.short_mv = np.zeros(n, dtype=np.int64)
        self.reported = np.full(n, u.UNSET_TIER, dtype=np.int8)
        self.candidate = np.zeros(n, dtype=np.int8)
        self.previous = np.zeros(n, dtype=np.int8)
        self.changed = np.zeros(n, dtype=np.int64)
        self.sweep_args = (b.price, b.long_ptr, b.long_sec, b.long_qty, b.short_ptr, b.short_sec,
                           b.short_qty, b.base_assets, b.base_liabilities, b.profile_of,
                           b.profile_lines, BAND_BP, self.long_mv, self.short_mv, self.reported,
                           self.candidate)
        sweep_tiers(*self.sweep_args)
        collect_changes(self.candidate, self.reported, self.previous, self.changed)


@pytest.fixture(scope="session")
def state(book):
    return SweepState(book)


@nb.njit(parallel=True)
def _spin(n, out):
    for t in nb.prange(out.shape[0]):
        s = 0.0
        for i in range(n):
            s += np.sqrt(i + t)
        out[t] = s


def parallel_probe(n_threads: int = 2, work: int = 5_000_000) -> float:
    """Speed-up of n threads over one on pure compute, measured now: about n when the cores
    are free, about 1 when other processes hold them (then 2-thread figures mean little)."""
    import time

    before = nb.get_num_threads()
    out = np.zeros(n_threads)
    try:
        times = []
        for t in (1, n_threads):
            nb.set_num_threads(t)
            _spin(10, out)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                _spin(work, out)
                best = min(best, time.perf_counter() - t0)
            times.append(best)
    finally:
        nb.set_num_threads(before)
    return round(times[0] / times[1], 3)


@pytest.fixture
def threads():
    """Set Numba's thread count for one test and restore it afterwards."""
    before = nb.get_num_threads()

    def use(n: int) -> int:
        if n > MAX_THREADS:
            pytest.skip(f"needs {n} threads, NUMBA_NUM_THREADS is {MAX_THREADS}")
        nb.set_num_threads(n)
        return n

    yield use
    nb.set_num_threads(before)


def record(benchmark, per: dict[str, int], **info):
    """Store the figures of a finished benchmark in extra_info (machine-readable in
    --benchmark-json): median / min time per call, and ns per unit for each of `per`
    ({"position": rows, ...}; the first is the headline unit)."""
    benchmark.extra_info.update(info)
    benchmark.extra_info["unit"] = next(iter(per))
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    st = stats.stats
    benchmark.extra_info["median_ms"] = round(st.median * 1e3, 4)
    benchmark.extra_info["min_ms"] = round(st.min * 1e3, 4)
    for unit, count in per.items():
        benchmark.extra_info[f"{unit}s"] = int(count)
        if count > 0:
            benchmark.extra_info[f"ns_per_{unit}"] = round(st.median * 1e9 / count, 4)
            benchmark.extra_info[f"ns_per_{unit}_min"] = round(st.min * 1e9 / count, 4)


# ------------------------------------------------------------------ compile times


def compile_probe_run(kernel: str, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-m", "monitor.perf.compile_probe", kernel], env=env,
                         capture_output=True, text=True, check=True, cwd=str(HERE.parent))
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def compile_times():
    """kernel -> {"uncached_s", "cached_s", "import_s"}: first call in a fresh interpreter with
    an empty Numba cache (compile) and again with the cache that run wrote (load)."""
    if not COMPILE:
        pytest.skip("MM_BENCH_COMPILE=0")
    cache: dict[str, dict] = {}

    def get(kernel: str) -> dict:
        if kernel not in cache:
            with tempfile.TemporaryDirectory(prefix="mm-numba-cache-") as d:
                cold = compile_probe_run(kernel, d)
                warm = compile_probe_run(kernel, d)
            cache[kernel] = {"uncached_s": round(cold["first_call_s"], 4),
                             "cached_s": round(warm["first_call_s"], 4),
                             "import_s": round(warm["import_s"], 4)}
        return cache[kernel]

    return get


@pytest.fixture(scope="session")
def compile_times_opt(request):
    """kernel -> {"compile_uncached_s", ...} for extra_info, or {} with MM_BENCH_COMPILE=0."""
    if not COMPILE:
        return lambda kernel: {}
    get = request.getfixturevalue("compile_times")
    return lambda kernel: {f"compile_{k}": v for k, v in get(kernel).items()}


# ------------------------------------------------------------------ summary table


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    rows = []
    for bench in getattr(session, "benchmarks", None) or []:
        info = getattr(bench, "extra_info", None) or {}
        unit = info.get("unit")
        if unit and f"ns_per_{unit}" in info:
            rows.append((bench.group or "", bench.name, f"{info[f'ns_per_{unit}']:.3f}",
                         f"{info[f'ns_per_{unit}_min']:.3f}", f"ns/{unit}"))
        elif "uncached_s" in info:
            rows.append((bench.group or "", bench.name, f"{info['uncached_s']:.3f}",
                         f"{info['cached_s']:.3f}", "s first call: uncached, cached"))
    if not rows:
        return
    tr = terminalreporter
    tr.section("margin-monitor figures (median, min)")
    w = max(len(r[1]) for r in rows)
    g = max(len(r[0]) for r in rows)
    for group, name, med, mn, unit in sorted(rows):
        tr.write_line(f"{group:{g}s}  {name:{w}s} {med:>10s} {mn:>10s}  {unit}")
