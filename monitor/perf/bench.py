"""`margin-monitor bench`: the capacity figures of docs/capacity.md in one command.

For each book size (synthetic books from `monitor/perf/book_cache.py`, cached under
`.mm-bench-cache/` in the working folder, or `$MM_BENCH_CACHE`):

- full sweep (`kernels.ratios.sweep_tiers`) per thread count, and on the same book a NumPy full
  recompute and a pure-Python per-account loop (`monitor/perf/baselines.py`, checked against the
  kernel before timing);
- incremental update (`apply_price_changes` + `retier_accounts`) of the coldest, the median and
  the hottest security;
- end to end through `monitor/perf/e2e.py` (a subprocess per size: real runtime, private
  `redis-server`, one websocket client): tick -> websocket frame p50 / p99 / max at each input
  rate (the main phase and the ramp steps), and the saturation ingest rate (the ramp);
- cold start in a fresh interpreter: Parquet book load, holder indices, first sweep, and
  resident memory per account;
- JIT compile time per kernel, uncached and cached (`monitor/perf/compile_probe.py`, once per run).

Writes report.json, report.md and PNG plots to --output. Installed with the package: runs from
any folder.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from monitor.perf import baselines as perf_baselines
from monitor.perf import book_cache
from monitor.perf.jsonreport import dumps_report

ROOT = Path(__file__).resolve().parents[2]  # for `git rev-parse` only (absent when installed)
QUICK_ACCOUNTS = "10k,50k"
FULL_ACCOUNTS = "10k,100k,1M"
QUICK_RATES = "20000,100000"
FULL_RATES = "20000,100000,200000"
QUICK_SAT = "500000,2000000"
FULL_SAT = "500000,1000000,2000000"
ALL_KERNELS = ("sweep_tiers", "sweep", "collect_changes", "apply_price_changes",
               "retier_accounts")


# ------------------------------------------------------------------------------ helpers

def parse_count(s: str) -> int:
    s = s.strip().lower().replace("_", "")
    mult = 1
    if s.endswith("k"):
        mult, s = 1000, s[:-1]
    elif s.endswith("m"):
        mult, s = 1_000_000, s[:-1]
    return int(float(s) * mult)


def parse_list(s: str, conv=float) -> list:
    return [conv(x) for x in s.split(",") if x.strip()]


def label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def spread(samples_s: list[float], per: float = 1.0, scale: float = 1e9) -> dict:
    """Repetition spread of timings (seconds) as `scale`-units per `per` items."""
    x = np.asarray(samples_s, dtype=np.float64) * scale / max(per, 1)
    return {"median": float(np.median(x)), "min": float(x.min()), "max": float(x.max()),
            "p25": float(np.percentile(x, 25)), "p75": float(np.percentile(x, 75)),
            "n": int(x.size)}


def timed(fn, reps: int, warm: int = 1) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def machine() -> dict:
    import numba

    info = {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "numpy": np.__version__, "numba": numba.__version__, "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "numba_threads_max": numba.config.NUMBA_NUM_THREADS}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_bytes"] = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    for mod in ("pyarrow", "redis", "rich", "matplotlib"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional, version only
            info[mod] = None
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             timeout=5).stdout.split()
        info["redis_server"] = next((w[2:] for w in out if w.startswith("v=")), None)
    except (OSError, subprocess.SubprocessError):
        info["redis_server"] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                            capture_output=True, text=True,
                                            timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    info["loadavg_1_5_15"] = list(os.getloadavg())
    return info


# ------------------------------------------------------------------------------ kernels

def measure_kernels(b, baselines, threads: list[int], reps: int, py_accounts: int) -> dict:
    """Sweep per thread count, NumPy and pure-Python baselines, incremental updates."""
    import numba

    from kernels import units as u
    from kernels.incremental import apply_price_changes, retier_accounts
    from kernels.ratios import collect_changes, sweep_tiers

    band = u.DEFAULT_HYSTERESIS_BP
    n = b.n_accounts
    lm = np.zeros(n, dtype=np.int64)
    sm = np.zeros(n, dtype=np.int64)
    reported = np.full(n, u.UNSET_TIER, dtype=np.int8)
    cand = np.zeros(n, dtype=np.int8)
    args = (b.price, b.long_ptr, b.long_sec, b.long_qty, b.short_ptr, b.short_sec, b.short_qty,
            b.base_assets, b.base_liabilities, b.profile_of, b.profile_lines, band, lm, sm,
            reported, cand)
    sweep_tiers(*args)
    collect_changes(cand, reported, np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int64))
    sweep_tiers(*args)  # steady state: reported committed, as in a running engine
    pos = b.n_positions
    out: dict = {"sweep": {}}
    before = numba.get_num_threads()
    try:
        for t in threads:
            numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
            out["sweep"][str(t)] = {"threads": numba.get_num_threads(),
                                    "ns_per_position": spread(timed(lambda: sweep_tiers(*args),
                                                                    reps), pos),
                                    "ms_per_sweep": spread(timed(lambda: sweep_tiers(*args),
                                                                 reps), 1, 1e3)}
    finally:
        numba.set_num_threads(before)
    # NumPy full recompute: checked, then timed
    nl, ns_, nc = baselines.numpy_sweep_tiers(b, band, reported)
    np_bad = int(((nl != lm) | (ns_ != sm) | (nc != cand)).sum())
    if np_bad:  # a baseline that computes something else would make every ratio meaningless
        raise RuntimeError(f"NumPy baseline differs from the kernel on {np_bad} accounts")
    np_s = timed(lambda: baselines.numpy_sweep_tiers(b, band, reported), max(3, reps // 3))
    out["numpy"] = {"ns_per_position": spread(np_s, pos), "ms_per_sweep": spread(np_s, 1, 1e3),
                    "accounts_differing_from_kernel": np_bad}
    # pure Python on a subsample
    s = baselines.python_sample(b, py_accounts, reported)
    pl, ps, pc = baselines.python_sweep_tiers(s, band)
    py_bad = int(((np.array(pl) != lm[s.accounts]) | (np.array(ps) != sm[s.accounts])
                  | (np.array(pc) != cand[s.accounts])).sum())
    if py_bad:
        raise RuntimeError(f"pure-Python baseline differs from the kernel on {py_bad} accounts")
    py_s = timed(lambda: baselines.python_sweep_tiers(s, band), 3, warm=0)
    out["python"] = {"ns_per_position": spread(py_s, s.n_positions),
                     "accounts_differing_from_kernel": py_bad,
                     "subsample_accounts": int(s.accounts.shape[0]),
                     "subsample_positions": int(s.n_positions)}
    # incremental: one-fen price change of one security, then re-tier what it touched
    step = u.MONEY_SCALE // 100
    out["incremental"] = {}
    for cls, sec in baselines.pick_securities(b).items():
        price = b.price.copy()
        lmv, smv, rep = lm.copy(), sm.copy(), reported.copy()
        mark = np.zeros(n, dtype=np.uint8)
        touched = np.empty(n, dtype=np.int64)
        prev = np.empty(n, dtype=np.int8)
        chg = np.empty(n, dtype=np.int64)
        secs = np.array([sec], dtype=np.int64)
        p = int(b.price[sec])
        targets = [np.array([p + step], dtype=np.int64), np.array([p], dtype=np.int64)]
        flip = [0]

        def cycle(secs=secs, targets=targets, flip=flip, price=price, lmv=lmv, smv=smv,
                  rep=rep, mark=mark, touched=touched, prev=prev, chg=chg):
            flip[0] ^= 1
            k = apply_price_changes(secs, targets[flip[0] ^ 1], 1, price, b.long_hptr,
                                    b.long_hacct, b.long_hqty, b.short_hptr, b.short_hacct,
                                    b.short_hqty, lmv, smv, mark, touched)
            return retier_accounts(touched, k, b.base_assets, b.base_liabilities, lmv, smv,
                                   b.profile_of, b.profile_lines, band, rep, prev, chg)

        holders = b.holders(sec)
        samples = timed(cycle, reps * 4 if holders < 10_000 else reps)
        out["incremental"][cls] = {"security": sec, "holders": holders,
                                   "us_per_update": spread(samples, 1, 1e6),
                                   "ns_per_holder": spread(samples, holders)}
    return out


# ------------------------------------------------------------------------------ cold start

def ensure_parquet(_book, n: int, n_sec: int, seed: int) -> Path:
    """A Parquet copy of the benchmark book (same generator, seed and size), cached."""
    from monitor.book import synthetic as synthbook

    d = _book.CACHE_DIR / f"parquet-{n}-{n_sec}-{seed}-{_book.source_hash()}"
    if not (d / "positions.parquet").exists():
        tmp = d.with_name(d.name + f".{os.getpid()}.tmp")
        synthbook.write_book(synthbook.generate(n, n_sec, seed), tmp)
        tmp.replace(d)
    return d


def coldstart_child(path: str) -> dict:
    """Run in a fresh interpreter: load the book, build holdings, first and second sweep."""
    t0 = time.perf_counter()
    from kernels import units as u
    from kernels.ratios import sweep_tiers
    from monitor.book.load import load_book
    from monitor.book.model import Holdings

    t_import = time.perf_counter() - t0
    rss0 = rss_bytes()
    t1 = time.perf_counter()
    book = load_book(path)
    t_load = time.perf_counter() - t1
    rss_loaded = rss_bytes()
    t2 = time.perf_counter()
    h = Holdings.from_book(book)
    t_hold = time.perf_counter() - t2
    n = book.n_accounts
    lm, sm = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    rep = np.full(n, u.UNSET_TIER, dtype=np.int8)
    cand = np.zeros(n, dtype=np.int8)
    args = (book.price.astype(np.int64), h.long_ptr, h.long_sec, h.long_qty, h.short_ptr,
            h.short_sec, h.short_qty, h.base_assets, h.base_liabilities,
            book.profile_of.astype(np.int32),
            np.ascontiguousarray(book.profile_lines, dtype=np.int64),
            u.DEFAULT_HYSTERESIS_BP, lm, sm, rep, cand)
    t3 = time.perf_counter()
    sweep_tiers(*args)
    t_first = time.perf_counter() - t3
    t4 = time.perf_counter()
    sweep_tiers(*args)
    t_second = time.perf_counter() - t4
    return {"accounts": n, "import_s": t_import, "book_load_s": t_load,
            "holdings_s": t_hold, "first_sweep_s": t_first, "second_sweep_s": t_second,
            "rss_after_imports_bytes": rss0, "rss_after_load_bytes": rss_loaded,
            "rss_after_first_sweep_bytes": rss_bytes()}


def run_coldstart(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "monitor.perf.bench", "coldstart", str(path)],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_probe(kernels: tuple[str, ...]) -> dict:
    """First call of each kernel in a fresh interpreter: empty Numba cache, then that cache."""
    res = {}
    for k in kernels:
        with tempfile.TemporaryDirectory(prefix="mm-numba-cache-") as d:
            env = dict(os.environ, NUMBA_CACHE_DIR=d)
            r = []
            for _ in range(2):
                p = subprocess.run([sys.executable, "-m", "monitor.perf.compile_probe", k],
                                   env=env, capture_output=True, text=True,
                                   timeout=300, check=True)
                r.append(json.loads(p.stdout.strip().splitlines()[-1]))
        res[k] = {"uncached_s": r[0]["first_call_s"], "cached_s": r[1]["first_call_s"],
                  "import_s": r[1]["import_s"]}
    return res


# ------------------------------------------------------------------------------ end to end

def run_e2e(n: int, n_sec: int, seed: int, rates: list[float], sat: list[float],
            seconds: float, out: Path) -> dict:
    """One bench/e2e.py run: main phase at rates[0], ramp over the other rates then the
    saturation probe; every phase reports tick -> websocket latency at its input rate."""
    ramp = sorted({*rates[1:], *sat})
    budget = 60 + len(ramp) * (seconds + 25) + 3 * seconds
    cmd = [sys.executable, "-m", "monitor.perf.e2e", "--accounts", str(n),
           "--securities", str(n_sec),
           "--seed", str(seed), "--rate", str(rates[0]), "--seconds", str(seconds),
           "--ramp", ",".join(str(r) for r in ramp), "--ramp-seconds", str(seconds),
           "--budget", str(budget), "--out", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "e2e.log", "w") as logf:
        subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT,
                       timeout=budget + 120, check=True)
    rep = json.loads((out / "report.json").read_text())
    phases = []
    for name, ph in rep["phases"].items():
        if name == "warmup":
            continue
        ing, lat = ph["ingest"], ph["latency"]
        phases.append({"phase": name, "rate": ing["rate"],
                       "generator_rate": ing["generator_rate"],
                       "monitor_rate": ing["monitor_rate"], "sustained": ing["sustained"],
                       "contended": ph.get("contended"),
                       "tick_to_ws_ms": lat["tick_to_ws"],
                       "tick_to_xadd_ms": lat["tick_to_xadd"],
                       "cycle_ms": lat["cycle"], "events_per_s": lat["events_per_s"]})
    return {"phases": phases, "ingest_ticks_per_s": rep.get("ingest_ticks_per_s"),
            "saturated_at_ticks_per_s": rep.get("saturated_at_ticks_per_s"),
            "max_measured_ingest_ticks_per_s": rep.get("max_measured_ingest_ticks_per_s"),
            "total_wall_s": rep.get("total_wall_s"), "command": rep.get("command")}


def latency_by_rate(e2e: dict, rates: list[float]) -> dict[str, dict]:
    """tick -> ws latency per requested input rate (first phase at that rate)."""
    out = {}
    for r in rates:
        ph = next((p for p in e2e["phases"] if abs(p["rate"] - r) < 0.5), None)
        if ph is not None:
            out[f"{r:.0f}"] = {**ph["tick_to_ws_ms"], "sustained": ph["sustained"],
                               "contended": ph["contended"]}
    return out


# ------------------------------------------------------------------------------ the run

def size_record(n, b, k, cold, e2e, rates, compile_s) -> dict:
    t1 = k["sweep"][min(k["sweep"], key=int)]
    ours = t1["ns_per_position"]["median"]
    npy = k["numpy"]["ns_per_position"]["median"]
    py = k["python"]["ns_per_position"]["median"]
    lat = latency_by_rate(e2e, rates) if e2e else {}
    top = lat.get(f"{max(rates):.0f}") if lat else None
    p99 = top["p99_ms"] if top else None
    sweep_ms = t1["ms_per_sweep"]["median"]
    np_ms = k["numpy"]["ms_per_sweep"]["median"]
    py_ms = py * b.n_positions / 1e6
    rss = cold["rss_after_first_sweep_bytes"] - cold["rss_after_imports_bytes"]
    pos_per_acct = b.n_positions / n
    inc = {}
    for cls, v in k["incremental"].items():
        us = v["us_per_update"]["median"]
        py_us = py * v["holders"] * pos_per_acct / 1e3  # Python re-valuing the holders' books
        inc[cls] = {**v, "numpy_full_recompute_ratio": _ratio(np_ms * 1e3, us),
                    "python_holders_loop_ratio": _ratio(py_us, us)}
    return {
        "accounts": n, "positions": b.n_positions, "securities": b.n_securities,
        "book_source": b.source,
        "sweep_ns_per_position": ours,
        "sweep_ms": sweep_ms,
        "sweep_by_threads": k["sweep"],
        "numpy_sweep_ns_per_position": npy,
        "numpy_sweep": k["numpy"],
        "python_loop_ns_per_position": py,
        "python_loop": k["python"],
        "sweep_vs_numpy": _ratio(npy, ours), "sweep_vs_python": _ratio(py, ours),
        "incremental": inc,
        "tick_to_event_p99_ms": p99,
        "tick_to_event_rate": max(rates) if top else None,
        "tick_to_event_by_rate": lat,
        "tick_to_event_p99_ms_if_numpy_sweep": None if p99 is None else p99 + np_ms - sweep_ms,
        "tick_to_event_p99_ms_if_python_sweep": None if p99 is None else p99 + py_ms - sweep_ms,
        "ingest_ticks_per_s": e2e.get("ingest_ticks_per_s") if e2e else None,
        "saturated_at_ticks_per_s": e2e.get("saturated_at_ticks_per_s") if e2e else None,
        "throughput": [{k2: p[k2] for k2 in ("rate", "generator_rate", "monitor_rate",
                                             "sustained", "contended")}
                       for p in e2e["phases"]] if e2e else [],
        "rss_bytes_per_account": rss / n,
        "rss_marginal_bytes_per_account": None,
        "cold_start": {**cold, "jit_uncached_s": compile_s.get("uncached_s"),
                       "jit_cached_s": compile_s.get("cached_s"),
                       "first_sweep_vs_numpy": _ratio(np_ms / 1e3, cold["second_sweep_s"]),
                       "first_sweep_vs_python": _ratio(py_ms / 1e3, cold["second_sweep_s"])},
        "e2e": e2e,
        "units": {"sweep_ns_per_position": "ns per position (median of repetitions; spread "
                  "in sweep_by_threads)", "sweep_ms": "ms per full sweep",
                  "tick_to_event_p99_ms": "ms, tick received -> websocket frame received, at "
                  "tick_to_event_rate ticks/s", "ingest_ticks_per_s": "JSON ticks/s sustained",
                  "rss_bytes_per_account": "bytes resident per account after load, holder "
                  "indices and one sweep over RSS after imports (fresh interpreter; includes "
                  "pyarrow's fixed cost, which dominates small books)",
                  "rss_marginal_bytes_per_account": "bytes, RSS growth from the previous size "
                  "per added account"},
    }


def capacity(sizes: list[dict], p99_ms: float, cores: int, machine_cpus: int) -> dict:
    """Largest measured book under the p99 limit, and a linear model projected to N cores."""
    ok = [s for s in sizes if s["tick_to_event_p99_ms"] is not None
          and s["tick_to_event_p99_ms"] <= p99_ms]
    meas = max(ok, key=lambda s: s["accounts"]) if ok else None
    out = {"p99_ms_limit": p99_ms, "largest_measured_accounts": meas["accounts"] if meas else None,
           "cores": cores, "machine_cpus": machine_cpus}
    pts = [s for s in sizes if s["tick_to_event_p99_ms"] is not None]
    if len(pts) >= 2:
        P = np.array([s["positions"] for s in pts], dtype=np.float64)
        y = np.array([s["tick_to_event_p99_ms"] for s in pts])
        slope, icpt = np.polyfit(P, y, 1)
        slope, icpt = max(float(slope), 1e-12), max(float(icpt), 0.0)
        big = max(pts, key=lambda s: s["positions"])
        sweep_per_pos = big["sweep_ns_per_position"] / 1e6  # ms per position, one thread
        rest = max(slope - sweep_per_pos, 0.0)
        ppa = big["positions"] / big["accounts"]

        def accounts_for(n_cores):
            per = sweep_per_pos / n_cores + rest
            return max(0.0, (p99_ms - icpt) / per / ppa) if p99_ms > icpt else 0.0

        out.update({
            "model": "p99(P) = a + b*P over positions P, fitted to the measured sizes at the "
                     "highest latency rate; the sweep's share of b (its one-thread ns/position)"
                     " divides by the core count, the rest (parse, publish, Redis, websocket) "
                     "does not; the fixed part a is unchanged",
            "fit_a_ms": icpt, "fit_b_ms_per_position": slope,
            "sweep_ms_per_position": sweep_per_pos,
            "estimated_accounts_this_machine": accounts_for(1),
            "projected_accounts_n_cores": accounts_for(cores),
        })
    return out


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    _book, baselines = book_cache, perf_baselines
    t_start = time.perf_counter()
    quick = args.quick
    sizes = [parse_count(x) for x in (args.accounts or
                                      (QUICK_ACCOUNTS if quick else FULL_ACCOUNTS)).split(",")
             if x.strip()]
    threads = parse_list(args.threads or ("1" if quick else f"1,{os.cpu_count() or 1}"), int)
    threads = sorted(set(threads))
    rates = parse_list(args.rates or (QUICK_RATES if quick else FULL_RATES))
    sat = parse_list(args.saturation_rates or (QUICK_SAT if quick else FULL_SAT))
    seconds = args.e2e_seconds or (1.0 if quick else 5.0)
    reps = args.repeats or (7 if quick else 25)
    py_accounts = 3000 if quick else 20000
    kernels = ("sweep_tiers",) if quick else ALL_KERNELS
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    con = Console(stderr=True)
    steps = 1 + len(sizes) * (2 + (0 if args.no_e2e else 1) + 1) + 1
    records = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeElapsedColumn(), console=con) as bar:
        task = bar.add_task("JIT compile probes", total=steps)
        compile_times = compile_probe(kernels)
        bar.advance(task)
        for n in sizes:
            bar.update(task, description=f"{label(n)}: book")
            b = _book.load(n, args.securities, args.seed, log=lambda m: None)
            parquet = ensure_parquet(_book, n, args.securities, args.seed)
            bar.advance(task)
            bar.update(task, description=f"{label(n)}: sweep, baselines, incremental")
            k = measure_kernels(b, baselines, threads, reps, py_accounts)
            bar.advance(task)
            e2e = None
            if not args.no_e2e:
                bar.update(task, description=f"{label(n)}: end to end (redis, websocket)")
                e2e = run_e2e(n, args.securities, args.seed, rates, sat, seconds,
                              out / "e2e" / label(n))
                bar.advance(task)
            bar.update(task, description=f"{label(n)}: cold start")
            cold = run_coldstart(parquet)
            bar.advance(task)
            records.append(size_record(n, b, k, cold, e2e, rates,
                                       compile_times.get("sweep_tiers", {})))
            del b
        for prev, cur in zip(records, records[1:], strict=False):
            d_rss = (cur["cold_start"]["rss_after_first_sweep_bytes"]
                     - prev["cold_start"]["rss_after_first_sweep_bytes"])
            cur["rss_marginal_bytes_per_account"] = d_rss / (cur["accounts"] - prev["accounts"])
        bar.update(task, description="report and plots")
        mach = machine()
        cap = capacity(records, args.p99_ms, args.cores, mach["cpus"] or 1)
        report = {
            "command": " ".join(["margin-monitor", "bench", *sys.argv[2:]])
            if len(sys.argv) > 1 and sys.argv[1] == "bench" else "margin-monitor bench",
            "quick": quick, "machine": mach, "threads": threads, "latency_rates": rates,
            "saturation_rates": sat, "e2e_seconds": seconds, "repeats": reps,
            "jit_compile": compile_times, "sizes": records, "capacity": cap,
        }
        report["plots"] = plots(report, out)
        report["wall_s"] = time.perf_counter() - t_start
        (out / "report.json").write_text(dumps_report(report))
        (out / "report.md").write_text(markdown(report))
        bar.advance(task)
    con.print(capacity_line(cap))
    con.print(f"report: {out / 'report.json'}, {out / 'report.md'} "
              f"({report['wall_s']:.0f} s)")
    return 0


# ------------------------------------------------------------------------------ output

def capacity_line(cap: dict) -> str:
    lim = cap["p99_ms_limit"]
    m = cap.get("largest_measured_accounts")
    s = (f"capacity: largest measured book with tick -> websocket p99 <= {lim:g} ms: "
         f"{m:,} accounts" if m else
         f"capacity: no measured book kept tick -> websocket p99 <= {lim:g} ms")
    if "projected_accounts_n_cores" in cap:
        est = cap["estimated_accounts_this_machine"]
        s += (f"; model estimate on this machine {est:,.0f}, "
              f"projected on {cap['cores']} cores {cap['projected_accounts_n_cores']:,.0f} "
              "(assumes only the sweep scales with cores)")
        if m and est > 2 * m:  # a straight line through small books misses what grows faster
            s += (f"; the estimates extrapolate beyond the largest size measured ({m:,}): "
                  "measure up to the target size before sizing a box")
    return s


def _f(x, d=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{d}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# margin-monitor bench", "",
             f"{m.get('cpu_model', m['machine'])}, {m['cpus']} CPUs; Python {m['python']}, "
             f"NumPy {m['numpy']}, Numba {m['numba']}, redis-server {m.get('redis_server')}; "
             f"{'quick' if r['quick'] else 'full'} run, {r['repeats']} repetitions, "
             f"{r['wall_s']:.0f} s. Medians, with (min-max) over repetitions.", "",
             "## Full sweep (ns per position)", "",
             "| accounts | positions | ours, by threads | NumPy | pure Python | vs NumPy | "
             "vs Python |", "|---|---|---|---|---|---|---|"]
    for s in r["sizes"]:
        ours = ", ".join(f"{t}t {v['ns_per_position']['median']:.2f} "
                         f"({v['ns_per_position']['min']:.2f}-{v['ns_per_position']['max']:.2f})"
                         for t, v in s["sweep_by_threads"].items())
        npy = s["numpy_sweep"]["ns_per_position"]
        lines.append(f"| {s['accounts']:,} | {s['positions']:,} | {ours} | "
                     f"{npy['median']:.2f} ({npy['min']:.2f}-{npy['max']:.2f}) | "
                     f"{s['python_loop_ns_per_position']:.1f} | {_f(s['sweep_vs_numpy'], 1)}x | "
                     f"{_f(s['sweep_vs_python'], 0)}x |")
    lines += ["", "## Incremental update (apply_price_changes + retier_accounts)", "",
              "| accounts | security | holders | µs per update | ns per holder | NumPy full "
              "recompute / this | Python holders loop / this |", "|---|---|---|---|---|---|---|"]
    for s in r["sizes"]:
        for cls, v in s["incremental"].items():
            lines.append(f"| {s['accounts']:,} | {cls} | {v['holders']:,} | "
                         f"{v['us_per_update']['median']:.1f} | "
                         f"{v['ns_per_holder']['median']:.1f} | "
                         f"{_f(v['numpy_full_recompute_ratio'], 0)}x | "
                         f"{_f(v['python_holders_loop_ratio'], 0)}x |")
    lines += ["", "## End to end: tick received -> websocket frame (ms)", "",
              "| accounts | input ticks/s | p50 | p99 | max | events | sustained |",
              "|---|---|---|---|---|---|---|"]
    for s in r["sizes"]:
        for rate, v in s["tick_to_event_by_rate"].items():
            lines.append(f"| {s['accounts']:,} | {int(rate):,} | {_f(v['p50_ms'])} | "
                         f"{_f(v['p99_ms'])} | {_f(v['max_ms'])} | {v['n']} | "
                         f"{'yes' if v['sustained'] else 'no'}"
                         f"{' (contended)' if v['contended'] else ''} |")
    lines += ["", "p99 if the sweep were replaced (measured p99 + baseline sweep - our sweep): "
              + "; ".join(f"{s['accounts']:,}: NumPy {_f(s['tick_to_event_p99_ms_if_numpy_sweep'])}"
                          f" ms, Python {_f(s['tick_to_event_p99_ms_if_python_sweep'], 0)} ms"
                          for s in r["sizes"]), "",
              "## Ingest, memory, cold start", "",
              "| accounts | sustained ingest ticks/s | saturated at | RSS bytes/account "
              "(marginal) | book load s | holder indices s | first sweep ms (incl. JIT cache "
              "load) |",
              "|---|---|---|---|---|---|---|"]
    for s in r["sizes"]:
        c = s["cold_start"]
        lines.append(f"| {s['accounts']:,} | {_f(s['ingest_ticks_per_s'], 0)} | "
                     f"{_f(s['saturated_at_ticks_per_s'], 0)} | "
                     f"{s['rss_bytes_per_account']:,.0f} "
                     f"({_f(s['rss_marginal_bytes_per_account'], 0)}) | {c['book_load_s']:.2f} | "
                     f"{c['holdings_s']:.2f} | {c['first_sweep_s'] * 1e3:.1f} |")
    lines += ["", "JIT, first call in a fresh interpreter (s): " + "; ".join(
        f"{k} {v['uncached_s']:.2f} uncached, {v['cached_s']:.2f} cached"
        for k, v in r["jit_compile"].items()), "", "## Capacity", "",
        capacity_line(r["capacity"]) + ".", ""]
    if "model" in r["capacity"]:
        lines += [f"Model: {r['capacity']['model']}.", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]] + [""]
    return "\n".join(lines)


def plots(r: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sizes = r["sizes"]
    names = []
    # 1. cost against book size, log-log with fitted slopes
    fig, ax = plt.subplots(figsize=(7, 5))
    P = np.array([s["positions"] for s in sizes], dtype=np.float64)
    series = {f"ours, {t} thread(s)": [s["sweep_by_threads"][t]["ms_per_sweep"]["median"]
                                       for s in sizes] for t in sizes[0]["sweep_by_threads"]}
    series["NumPy full recompute"] = [s["numpy_sweep"]["ms_per_sweep"]["median"] for s in sizes]
    series["pure Python (subsample, scaled)"] = [s["python_loop_ns_per_position"] *
                                                 s["positions"] / 1e6 for s in sizes]
    for name, y in series.items():
        y = np.asarray(y)
        lab = name
        if len(P) >= 2:
            slope = np.polyfit(np.log(P), np.log(y), 1)[0]
            lab += f" (slope {slope:.2f})"
        ax.loglog(P, y, "o-", label=lab)
    ax.set_xlabel("positions in the book")
    ax.set_ylabel("full sweep time (ms)")
    ax.set_title("Full sweep cost against book size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cost_vs_size.png", dpi=110)
    plt.close(fig)
    names.append("cost_vs_size.png")
    # 2. latency CDF per input rate, from the percentiles bench/e2e reports
    with_lat = [s for s in sizes if s["tick_to_event_by_rate"]]
    if with_lat:
        fig, axes = plt.subplots(1, len(with_lat), figsize=(5 * len(with_lat), 4.5),
                                 squeeze=False)
        for ax, s in zip(axes[0], with_lat, strict=True):
            for rate, v in s["tick_to_event_by_rate"].items():
                qs = [(v["p50_ms"], 0.5), (v["p90_ms"], 0.9), (v["p99_ms"], 0.99),
                      (v["max_ms"], 1.0)]
                qs = [(x, q) for x, q in qs if x is not None]
                if qs:
                    ax.plot([x for x, _ in qs], [q for _, q in qs], "o-",
                            label=f"{int(rate):,} ticks/s (n={v['n']})")
            ax.axvline(r["capacity"]["p99_ms_limit"], color="grey", ls="--", lw=1,
                       label="p99 limit")
            ax.axhline(0.99, color="grey", ls=":", lw=1)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.set_ylim(0.45, 1.02)
            ax.set_xlabel("tick received -> websocket frame (ms)")
            ax.set_ylabel("fraction of events (p50, p90, p99, max)")
            ax.set_title(f"{s['accounts']:,} accounts")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Latency CDF per input rate (from bench/e2e percentiles)")
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=110)
        plt.close(fig)
        names.append("latency_cdf.png")
    # 3. throughput against input rate
    with_tp = [s for s in sizes if s["throughput"]]
    if with_tp:
        fig, ax = plt.subplots(figsize=(7, 5))
        hi = 1.0
        for s in with_tp:
            tp = sorted(s["throughput"], key=lambda p: p["generator_rate"] or 0)
            x = [p["generator_rate"] for p in tp]
            y = [p["monitor_rate"] for p in tp]
            hi = max(hi, *x, *y)
            line, = ax.plot(x, y, "o-", label=f"{s['accounts']:,} accounts")
            bad = [(a, c) for a, c, p in zip(x, y, tp, strict=True) if not p["sustained"]]
            if bad:
                ax.plot(*zip(*bad, strict=True), "x", color=line.get_color(), ms=10)
        lo = min(p["generator_rate"] or hi for s in with_tp for p in s["throughput"]) / 2
        ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1, label="input = output")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input rate (JSON ticks/s sent)")
        ax.set_ylabel("ticks/s consumed by the monitor")
        ax.set_title("Throughput against input rate (x: not sustained)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        names.append("throughput.png")
    return names


# ------------------------------------------------------------------------------ CLI

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "coldstart":
        print(json.dumps(coldstart_child(sys.argv[2])))
    else:
        raise SystemExit("usage: python -m monitor.perf.bench coldstart BOOK_DIR")
