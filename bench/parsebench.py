"""Throughput of the JSON tick path: `python -m bench.parsebench [--ticks-per-message 1000]`.

Builds a universe of `--symbols` securities, encodes array messages of Zipf-drawn ticks with
orjson, and times `TickParser.parse` (one message per call, single thread). Prints ticks/s for the
best of `--repeat` rounds and the median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import orjson

from feeds.ticks import TickParser
from feeds.universe import Universe


def make_messages(universe: Universe, n_messages: int, per_message: int, seed: int = 0,
                  start_ns: int = 1_763_688_600_000_000_000) -> list[bytes]:
    rng = np.random.default_rng(seed)
    n = universe.n
    w = 1.0 / np.arange(1, n + 1) ** 1.1
    cdf = np.cumsum(w) / w.sum()
    msgs = []
    ts = start_ns
    for _ in range(n_messages):
        sec = np.minimum(np.searchsorted(cdf, rng.random(per_message)), n - 1)
        lo, hi = universe.limit_down[sec], universe.limit_up[sec]
        price = (lo + (rng.random(per_message) * (hi - lo)).astype(np.int64)) // 10 * 10
        ticks = []
        for s, p in zip(sec.tolist(), price.tolist(), strict=True):
            ts += 1000
            ticks.append({"symbol": universe.symbols[s], "price": p / 1000, "ts": ts,
                          "volume": 100})
        msgs.append(orjson.dumps(ticks))
    return msgs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=5000)
    ap.add_argument("--ticks-per-message", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    symbols = [f"{600000 + i:06d}.SH" for i in range(args.symbols)]
    prev = np.random.default_rng(1).integers(2000, 200000, args.symbols) // 10 * 10
    universe = Universe.from_prev_close(symbols, prev)
    msgs = make_messages(universe, args.messages, args.ticks_per_message)
    total = args.messages * args.ticks_per_message
    nbytes = sum(map(len, msgs))
    TickParser(universe).parse(msgs[0])  # compile / warm up
    rates = []
    for _ in range(args.repeat):
        parser = TickParser(universe)
        t0 = time.perf_counter()
        accepted = 0
        for m in msgs:
            accepted += len(parser.parse(m))
        dt = time.perf_counter() - t0
        assert accepted == total, (accepted, parser.rejections.as_dict())
        rates.append(total / dt)
    print(f"{args.ticks_per_message} ticks/message, {nbytes / total:.0f} bytes/tick: "
          f"best {max(rates) / 1e6:.2f}M ticks/s, median {statistics.median(rates) / 1e6:.2f}M "
          f"ticks/s ({nbytes * max(rates) / total / 1e6:.0f} MB/s)")


if __name__ == "__main__":
    main()
