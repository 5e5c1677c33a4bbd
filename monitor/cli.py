"""`margin-monitor` command line. Subcommands are a contract for scripts: flags only grow."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2

SAMPLE_BOOK = Path(__file__).parent / "data" / "sample_book.json"


def _evaluate(args) -> int:
    import numpy as np
    import orjson

    from kernels import units as u

    from .bookio import BookError, load_book
    from .state import MarginState, PlanCosts

    try:
        book = load_book(args.book)
    except BookError as e:
        print(f"margin-monitor evaluate: {e}", file=sys.stderr)
        return EXIT_INVALID
    state = MarginState(book, costs=PlanCosts(sell=args.sell_cost, buy=args.buy_cost))
    out = sys.stdout.buffer
    chunk = 20_000
    for lo in range(0, book.n_accounts, chunk):
        idx = np.arange(lo, min(lo + chunk, book.n_accounts), dtype=np.int64)
        recs = state.figures_many(idx)
        if args.stress:
            for r, s in zip(recs, state.stress_many(idx), strict=True):
                r.update(s)
        if args.plan:
            for a, r in zip(idx.tolist(), recs, strict=True):
                if r["liquidation_status"] == u.STATUS_NAMES[u.NOT_REQUIRED]:
                    r["plan"], r["ratio_after"] = [], r["ratio"]
                else:
                    orders, ratio_after, residual = state.plan(a)
                    r["plan"] = orders
                    r["ratio_after"] = ratio_after
                    r["residual"] = residual
        out.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in recs))
    out.flush()
    return EXIT_OK


def _make_book(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from . import synthbook

    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                  disable=args.quiet) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        tables = synthbook.generate(args.accounts, args.securities, seed=args.seed,
                                    progress=progress)
        progress("write", 0, 1)
        synthbook.write_book(tables, args.out, fmt=args.format)
        progress("write", 1, 1)
    n_pos = tables["positions"].num_rows
    print(f"wrote {args.accounts} accounts, {args.securities} securities, {n_pos} positions "
          f"to {args.out} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="margin-monitor",
                                description="Real-time maintenance-margin monitor for a book "
                                            "of credit accounts.")
    sub = p.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="evaluate every account once at the book's prices "
                                         "(JSON Lines on stdout)")
    ev.add_argument("book", nargs="?", default=str(SAMPLE_BOOK),
                    help="book JSON file or folder of tables (default: the bundled sample)")
    ev.add_argument("--plan", action="store_true", help="add the lot-rounded liquidation plan")
    ev.add_argument("--stress", action="store_true",
                    help="add the one-day limit-move stress ratio and distances to the lines")
    ev.add_argument("--sell-cost", type=float, default=0.0,
                    help="sell-side cost rate used by --plan (fraction, e.g. 0.001)")
    ev.add_argument("--buy-cost", type=float, default=0.0,
                    help="buy-side cost rate used by --plan when covering shorts")
    ev.set_defaults(func=_evaluate)

    mb = sub.add_parser("make-book", help="write a seeded synthetic book (Parquet tables)")
    mb.add_argument("--accounts", type=int, default=100_000)
    mb.add_argument("--securities", type=int, default=5_000)
    mb.add_argument("--seed", type=int, default=7)
    mb.add_argument("--out", required=True, help="output folder")
    mb.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    mb.add_argument("--quiet", action="store_true", help="no progress bar")
    mb.set_defaults(func=_make_book)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `evaluate | head` is fine
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
