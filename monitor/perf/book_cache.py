"""Benchmark books: the arrays the ratio kernels walk, built once and cached on disk.

A book is built through the project's own path (`monitor.book.synthetic.generate` ->
`monitor.book.load.build_book` -> `Holdings.from_book`), so the benchmark measures the layout the
monitor really uses. Building a 1M-account book that way takes about a minute (the loader
validates every row), so the resulting arrays are saved as one `.npz` under `bench/.cache/`
(gitignored), keyed by size, seed and a hash of the generator / loader sources: editing any of
them rebuilds the book.

Two layouts of the same book: "packed" (`Holdings.from_book(book)`, rows in use only) and
"slack" (`Holdings.from_book(book, slack=True)`, what a live monitor walks: free rows with qty 0
after every account's and every security's rows, so fills can open positions in place).

If `monitor.book.synthetic` cannot be imported, a small NumPy generator below builds a book of the
same shape (Zipf-skewed holdings, about 8 positions per account, the most popular stock held by
about 30% of accounts) directly as kernel arrays (packed layout only). `BenchBook.source` says
which one was used.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import units as u

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the package root (kernels/, monitor/) in a checkout and when installed
CACHE_DIR = Path(os.environ.get("MM_BENCH_CACHE", Path.cwd() / ".mm-bench-cache"))

HOLDINGS = (
    "long_ptr", "long_sec", "long_qty", "short_ptr", "short_sec", "short_qty",
    "long_hptr", "long_hacct", "long_hqty", "short_hptr", "short_hacct", "short_hqty",
)
ARRAYS = ("price", "profile_of", "profile_lines", *HOLDINGS, "base_assets", "base_liabilities")
LAYOUTS = ("packed", "slack")


@dataclass
class BenchBook:
    n_accounts: int
    n_securities: int
    seed: int
    source: str  # "synthbook" or "bench-fallback"
    layout: str  # "packed" or "slack"
    n_used: int  # rows in use (positions); the slack layout walks more rows than this
    used_holders: np.ndarray  # holder rows in use per security (long + short)
    price: np.ndarray
    profile_of: np.ndarray
    profile_lines: np.ndarray
    long_ptr: np.ndarray
    long_sec: np.ndarray
    long_qty: np.ndarray
    short_ptr: np.ndarray
    short_sec: np.ndarray
    short_qty: np.ndarray
    long_hptr: np.ndarray
    long_hacct: np.ndarray
    long_hqty: np.ndarray
    short_hptr: np.ndarray
    short_hacct: np.ndarray
    short_hqty: np.ndarray
    base_assets: np.ndarray
    base_liabilities: np.ndarray

    @property
    def n_positions(self) -> int:
        """Positions: rows in use (longs merged per account and security, plus shorts)."""
        return self.n_used

    @property
    def n_rows(self) -> int:
        """Rows the sweep walks (positions plus, in the slack layout, free rows)."""
        return int(self.long_sec.shape[0] + self.short_sec.shape[0])

    def holders(self, s: int) -> int:
        """Holders of security s (rows in use)."""
        return int(self.used_holders[s])

    def holder_rows(self, s: int) -> int:
        """Holder rows an update of security s walks (in the slack layout, free rows too)."""
        return int(self.long_hptr[s + 1] - self.long_hptr[s]
                   + self.short_hptr[s + 1] - self.short_hptr[s])

    def label(self) -> str:
        n = self.n_accounts
        size = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" \
            if n % 1000 == 0 else str(n)
        return size if self.layout == "packed" else f"{size}-{self.layout}"


def source_hash() -> str:
    h = hashlib.sha256()
    for rel in ("monitor/book/synthetic.py", "monitor/book/load.py", "monitor/book/model.py",
                "monitor/perf/book_cache.py"):
        p = ROOT / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()[:12]


def load(n_accounts: int, n_securities: int = 5000, seed: int = 7, layout: str = "packed",
         log=print) -> BenchBook | None:
    """The benchmark book of that size and layout, from the disk cache or built (and cached)
    now; None when that layout cannot be built (slack with the fallback generator)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"book-{n_accounts}-{n_securities}-{seed}-{source_hash()}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        try:
            arrays = _from_synthbook(n_accounts, n_securities, seed, log)
            arrays["source"] = np.array("synthbook")
        except ImportError:
            log("monitor.book.synthetic unavailable: using the bench fallback generator")
            arrays = _fallback(n_accounts, n_securities, seed)
            arrays["source"] = np.array("bench-fallback")
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        for stale in CACHE_DIR.glob(f"book-{n_accounts}-{n_securities}-{seed}-*.npz"):
            if stale != path and ".tmp." not in stale.name:
                stale.unlink(missing_ok=True)  # built by an older generator
    source = str(arrays["source"])
    n_used = int(arrays["long_sec"].shape[0] + arrays["short_sec"].shape[0])
    used_holders = np.diff(arrays["long_hptr"]) + np.diff(arrays["short_hptr"])
    picked = {k: arrays[k] for k in ARRAYS}
    if layout == "slack":
        if "slack_long_ptr" not in arrays:
            return None
        picked.update({k: arrays[f"slack_{k}"] for k in HOLDINGS})
    return BenchBook(n_accounts, n_securities, seed, source, layout, n_used, used_holders,
                     **picked)


def _from_synthbook(n_accounts, n_securities, seed, log):
    from monitor.book.load import build_book
    from monitor.book.model import Holdings
    from monitor.book.synthetic import generate

    log(f"building a {n_accounts}-account benchmark book (cached afterwards) ...")
    tables = generate(n_accounts, n_securities, seed)
    book = build_book(tables, {k: f"{k}.parquet" for k in tables}, source="bench")
    del tables
    h = Holdings.from_book(book)
    out = {k: getattr(h, k) for k in (*HOLDINGS, "base_assets", "base_liabilities")}
    out["price"] = book.price.astype(np.int64)
    out["profile_of"] = book.profile_of.astype(np.int32)
    out["profile_lines"] = np.ascontiguousarray(book.profile_lines, dtype=np.int64)
    try:
        hs = Holdings.from_book(book, slack=True)
    except TypeError:  # a Holdings without free slots
        return out
    for k in HOLDINGS:
        out[f"slack_{k}"] = getattr(hs, k)
    return out


def _fallback(n_accounts, n_securities, seed):
    """Zipf-skewed book as kernel arrays (no loader, no ids): a stand-in with the right shape."""
    rng = np.random.default_rng([seed, 99])
    rank = rng.permutation(n_securities) + 1
    weight = 1.0 / (rank + 1.8)
    cdf = np.cumsum(weight) / weight.sum()
    price = (np.clip(np.round(12 * np.exp(0.75 * rng.standard_normal(n_securities)) * 100),
                     200, 20_000) * 10).astype(np.int64)
    n_pos = rng.integers(5, 13, n_accounts)
    # draw with replacement then merge duplicates: mean distinct positions stays close to 8
    acct = np.repeat(np.arange(n_accounts, dtype=np.int64), n_pos)
    sec = np.minimum(np.searchsorted(cdf, rng.random(acct.size)), n_securities - 1)
    short = rng.random(acct.size) < 0.12 * 0.3
    qty = rng.integers(1, 50, acct.size) * 100
    from monitor.book.model import merge_rows, transpose_rows

    lp, ls, lq = merge_rows(acct[~short], sec[~short], qty[~short], n_accounts, n_securities)
    sp, ss, sq = merge_rows(acct[short], sec[short], qty[short], n_accounts, n_securities)
    lhp, lha, lhq = transpose_rows(lp, ls, lq, n_securities)
    shp, sha, shq = transpose_rows(sp, ss, sq, n_securities)
    long_mv = np.add.reduceat(np.append(lq * price[ls], 0), np.minimum(lp[:-1], ls.size))
    long_mv[np.diff(lp) == 0] = 0
    ratio = 1.5 + 1.3 * np.exp(0.32 * rng.standard_normal(n_accounts))
    near = rng.random(n_accounts) < 0.05  # a few accounts near the lines
    ratio[near] = rng.uniform(0.9, 1.6, int(near.sum()))
    cash = rng.integers(0, 100_000, n_accounts) * u.MONEY_SCALE
    base_assets = cash.astype(np.int64)
    base_liab = np.round((base_assets + long_mv) / ratio).astype(np.int64)
    base_liab[rng.random(n_accounts) < 0.15] = 0
    lines = np.array([u.DEFAULT_LINES_BP, (30_000, 16_000, 14_000, 12_000, 16_000)],
                     dtype=np.int64)
    return {
        "price": price, "profile_of": (rng.random(n_accounts) < 0.1).astype(np.int32),
        "profile_lines": lines,
        "long_ptr": lp, "long_sec": ls, "long_qty": lq,
        "short_ptr": sp, "short_sec": ss, "short_qty": sq,
        "long_hptr": lhp, "long_hacct": lha, "long_hqty": lhq,
        "short_hptr": shp, "short_hacct": sha, "short_hqty": shq,
        "base_assets": base_assets, "base_liabilities": base_liab,
    }
