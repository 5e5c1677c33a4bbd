"""Time the first call of one kernel in a fresh interpreter (run by bench/conftest.py).

    python -m monitor.perf.compile_probe KERNEL

With an empty NUMBA_CACHE_DIR the kernel compiles (uncached); run again with the same folder
and it loads the machine code that run cached (`cache=True`). Prints one JSON line:
{"kernel", "import_s", "first_call_s"}. The kernels have explicit signatures, so they compile
(or load) when their module is imported: `first_call_s` is the import of the kernel's module
(every signed kernel in it, and those of kernels/common.py it uses) plus the first call;
`import_s` is NumPy, Numba and kernels/units.py. The arguments are tiny but have the declared
dtypes (anything else raises TypeError).
"""

from __future__ import annotations

import json
import sys
import time

KERNELS = ("sweep_tiers", "sweep", "collect_changes", "apply_price_changes", "retier_accounts")


def _args(name, np, u):
    n = 4
    i64 = np.int64
    price = np.array([10_000, 20_000, 30_000], dtype=i64)
    ptr = np.array([0, 2, 3, 3, 4], dtype=i64)
    sec = np.array([0, 1, 2, 0], dtype=np.int32)
    qty = np.array([100, 200, 300, 400], dtype=i64)
    hptr = np.array([0, 2, 3, 4], dtype=i64)
    hacct = np.array([0, 3, 0, 1], dtype=np.int32)
    hqty = np.array([100, 400, 200, 300], dtype=i64)
    base_a = np.full(n, 1_000_000, dtype=i64)
    base_l = np.full(n, 500_000, dtype=i64)
    prof = np.zeros(n, dtype=np.int32)
    lines = np.array([u.DEFAULT_LINES_BP], dtype=i64)
    mv = [np.zeros(n, dtype=i64) for _ in range(2)]
    reported = np.full(n, u.UNSET_TIER, dtype=np.int8)
    cand = np.zeros(n, dtype=np.int8)
    if name == "sweep_tiers":
        return (price, ptr, sec, qty, ptr, sec, qty, base_a, base_l, prof, lines,
                u.DEFAULT_HYSTERESIS_BP, mv[0], mv[1], reported, cand)
    if name == "sweep":
        return (price, price, ptr, sec, qty, ptr, sec, qty, mv[0], mv[1])
    if name == "collect_changes":
        return (cand, reported, np.zeros(n, dtype=np.int8), np.zeros(n, dtype=i64))
    if name == "apply_price_changes":
        return (np.array([0, 2], dtype=i64), np.array([11_000, 31_000], dtype=i64), 2,
                price.copy(), hptr, hacct, hqty, hptr, hacct, hqty, mv[0], mv[1],
                np.zeros(n, dtype=np.uint8), np.zeros(n, dtype=i64))
    if name == "retier_accounts":
        return (np.arange(n, dtype=i64), n, base_a, base_l, mv[0], mv[1], prof, lines,
                u.DEFAULT_HYSTERESIS_BP, reported, np.zeros(n, dtype=np.int8),
                np.zeros(n, dtype=i64))
    raise SystemExit(f"unknown kernel {name!r}; one of {', '.join(KERNELS)}")


def main() -> None:
    name = sys.argv[1]
    t0 = time.perf_counter()
    import importlib

    import numba  # noqa: F401
    import numpy as np

    from kernels import units as u

    t_import = time.perf_counter() - t0
    args = _args(name, np, u)
    module = "kernels.incremental" if name in ("apply_price_changes", "retier_accounts") else (
        "kernels.ratios")
    t1 = time.perf_counter()
    fn = getattr(importlib.import_module(module), name)  # compiles or loads: signatures
    fn(*args)
    first = time.perf_counter() - t1
    print(json.dumps({"kernel": name, "import_s": t_import, "first_call_s": first}))


if __name__ == "__main__":
    main()
