"""`margin-monitor` command line. Subcommands are a contract for scripts: flags only grow."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from monitor.book.data import SAMPLE_BOOK

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2



def _evaluate(args) -> int:
    import numpy as np
    import orjson

    from kernels import units as u
    from monitor.book.load import BookError, load_book
    from monitor.core.state import MarginState, PlanCosts

    try:
        book = load_book(args.book)
    except BookError as e:
        print(f"margin-monitor evaluate: {e}", file=sys.stderr)
        return EXIT_INVALID
    from datetime import date

    try:
        day = date.fromisoformat(args.date) if args.date else None
        shock = round(float(args.no_limit_shock) * u.RATIO_SCALE)
        if not 0 <= shock < u.RATIO_SCALE:
            raise ValueError("--no-limit-shock must be in [0, 1)")
    except ValueError as e:
        print(f"margin-monitor evaluate: {e}", file=sys.stderr)
        return EXIT_INVALID
    state = MarginState(book, costs=PlanCosts(sell=args.sell_cost, buy=args.buy_cost),
                        band_day=day, unlimited_shock_bp=shock)
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
                    r["cash_repayment"] = 0.0
                else:
                    d = state.plan_detail(a)
                    r["plan"] = d["orders"]
                    r["ratio_after"] = d["ratio_after"]
                    r["residual"] = d["residual"]
                    r["cash_repayment"] = d["cash_repayment"]
                    r["interest_repaid"] = d["interest_repaid"]
                    r["principal_repaid"] = d["principal_repaid"]
        out.write(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in recs))
    out.flush()
    return EXIT_OK


def _make_book(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from monitor.book import synthetic as synthbook

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


def _split_book(args) -> int:
    from monitor.book.load import BookError, build_book, read_tables
    from monitor.book.shard import MAX_SHARDS, Shard, split_tables, write_tables

    if not 1 <= args.shards <= MAX_SHARDS:
        print(f"margin-monitor split-book: --shards must be in [1, {MAX_SHARDS}]",
              file=sys.stderr)
        return EXIT_INVALID
    out = Path(args.out)
    try:
        tables, names = read_tables(args.book)
        build_book(tables, names, source=Path(args.book).name)  # the whole book must load
    except BookError as e:
        print(f"margin-monitor split-book: {e}", file=sys.stderr)
        return EXIT_INVALID
    for i, part in enumerate(split_tables(tables, args.shards)):
        folder = out / f"shard-{i}-of-{args.shards}"
        write_tables(part, folder, fmt=args.format)
        print(f"{folder}: shard {Shard(i, args.shards)}, {part['accounts'].num_rows} accounts",
              file=sys.stderr)
    return EXIT_OK


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _serve(cfg, book, redis_url, banner) -> int:
    import asyncio
    import signal

    from monitor.app.runtime import Monitor

    async def main() -> int:
        mon = Monitor(cfg, book, redis_url=redis_url)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, mon.stop)
        task = asyncio.create_task(mon.run())
        while mon.bound is None and not task.done():
            await asyncio.sleep(0.05)
        if mon.bound is not None:
            banner(mon)
        return await task

    return asyncio.run(main())


def _check_credit_settings(cfg) -> None:
    from monitor.core.credit import CreditConfig
    from monitor.web.pretrade import check_config

    CreditConfig.from_dict(cfg.credit)
    check_config(cfg)


def _run(args) -> int:
    from monitor.app.config import ConfigError, load_config
    from monitor.book.load import BookError, load_book
    from monitor.core.patterns import PatternConfig

    _setup_logging(args.log_level)
    try:
        cfg = load_config(args.config, {
            "book": args.book, "feed": args.feed, "events": args.events, "redis": args.redis,
            "alerts_stream": args.alerts_stream, "listen": args.listen,
            "token_file": args.token_file, "state_dir": args.state_dir,
            "snapshot_interval_s": args.snapshot_interval, "audit_dir": args.audit_dir,
            "tls_cert": args.tls_cert, "tls_key": args.tls_key,
            "pretrade_listen": args.pretrade_listen, "shard": args.shard,
            "redis_cluster": True if args.redis_cluster else None,
            "alert_key_file": args.alert_key_file,
            "until_feed_ends": True if args.until_feed_ends else None})
        if not cfg.book:
            raise ConfigError("no book: give --book PATH or `book` in the config file")
        if not cfg.feed:
            raise ConfigError("no feed: give --feed SPEC or `feed` in the config file: "
                              "replay:PATH, ws://…, wss://…, redis://…/STREAM, or "
                              "synthetic[:scenario] for simulated prices (there is no default)")
        PatternConfig.from_dict(cfg.patterns)  # a bad [patterns] table stops here
        _check_credit_settings(cfg)  # a bad [credit] table or pretrade_* setting stops here
        cfg.desk_event_budget  # noqa: B018 - a bad desk_event_bytes stops here
        for cap in ("pattern_state_bytes", "credit_state_bytes", "audit_queue_bytes"):
            cfg.byte_cap(cap)
        cfg.alert_keys()  # a bad alert_key_file (format, permissions) stops here
        cfg.resolve_token()
        tls = cfg.ssl_context() is not None  # bad certificate files stop here
        book = load_book(cfg.book, shard=cfg.shard_spec)
    except (ConfigError, BookError) as e:
        print(f"margin-monitor run: {e}", file=sys.stderr)
        return EXIT_INVALID

    def banner(mon):
        host, port = mon.bound
        s = "s" if tls else ""
        print(f"margin-monitor: alerts on ws{s}://{host}:{port}/ws/alerts, risk desk on "
              f"http{s}://{host}:{port}/", file=sys.stderr)
        if mon.feed_kind == "synthetic":
            print(f"margin-monitor: feed {mon.feed.name}: SIMULATED prices, not market data",
                  file=sys.stderr)
        if mon.pretrade_listener is not None:
            ph, pp = mon.pretrade_listener.bound
            print(f"margin-monitor: pre-trade checks (keep-alive) on http{s}://{ph}:{pp}"
                  "/api/pretrade", file=sys.stderr)

    return _serve(cfg, book, cfg.redis, banner)


def _demo(args) -> int:
    from pathlib import Path

    from monitor.adapters.signing import write_key_file
    from monitor.app.config import RunConfig
    from monitor.app.demo import private_redis
    from monitor.book import synthetic as synthbook
    from monitor.book.load import build_book

    _setup_logging(args.log_level)
    print(f"margin-monitor demo: building a synthetic book of {args.accounts} accounts ...",
          file=sys.stderr)
    tables = synthbook.generate(args.accounts, args.securities, seed=args.seed)
    book = build_book(tables, {k: f"synthetic {k}" for k in tables}, source="synthetic")
    keydir = Path(args.spill_dir)
    keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file = keydir / "demo-alert.key"  # a fresh signing key per demo, for the liquidator too
    write_key_file(key_file)
    cfg = RunConfig(book="(synthetic)", feed=args.feed, listen=args.listen,
                    until_feed_ends=args.until_feed_ends, spill_dir=args.spill_dir,
                    alert_key_file=str(key_file))
    cfg.resolve_token()

    def banner(mon):
        host, port = mon.bound
        redis_line = (f"Redis stream {cfg.alerts_stream_resolved} at {mon.outbox.stats()['url']}"
                      if mon.outbox is not None else
                      "Redis: not used (no redis-server on PATH and no --redis given); "
                      "alerts go to the websocket only")
        print("\n".join([
            "",
            "margin-monitor demo is running",
            f"  risk desk:          http://{host}:{port}/?token={cfg.token}",
            f"  alerts (websocket): ws://{host}:{port}/ws/alerts?token={cfg.token}",
            f"  health:             http://{host}:{port}/healthz",
            f"  metrics:            http://{host}:{port}/metrics  (Bearer {cfg.token})",
            f"  token:              {cfg.token}",
            f"  feed:               {cfg.feed} (SIMULATED prices, not market data)",
            f"  {redis_line}",
            f"  alert signing key:  {key_file} (a liquidator on this stream: "
            f"--alert-key-file {key_file})",
            "  Ctrl-C stops it.",
            ""]), file=sys.stderr, flush=True)

    if args.redis:
        return _serve(cfg, book, args.redis, banner)
    with private_redis() as url:
        return _serve(cfg, book, url, banner)


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
    ev.add_argument("--date", default=None,
                    help="trading date (YYYY-MM-DD) whose daily price limits apply "
                         "(default: today, China time; docs/book-and-evaluate.md)")
    ev.add_argument("--no-limit-shock", default="0.30",
                    help="--stress move of a security without a daily limit (fraction, "
                         "default 0.30)")
    ev.set_defaults(func=_evaluate)

    mb = sub.add_parser("make-book", help="write a seeded synthetic book (Parquet tables)")
    mb.add_argument("--accounts", type=int, default=100_000)
    mb.add_argument("--securities", type=int, default=5_000)
    mb.add_argument("--seed", type=int, default=7)
    mb.add_argument("--out", required=True, help="output folder")
    mb.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    mb.add_argument("--quiet", action="store_true", help="no progress bar")
    mb.set_defaults(func=_make_book)

    sb = sub.add_parser("split-book", help="cut a book into N shards (crc32(account_id) mod N), "
                                           "one folder each: OUT/shard-I-of-N")
    sb.add_argument("book", help="book JSON file or folder of tables")
    sb.add_argument("--shards", type=int, required=True, help="N")
    sb.add_argument("--out", required=True, help="output folder")
    sb.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    sb.set_defaults(func=_split_book)

    run = sub.add_parser("run", help="run the monitor: feed in, alerts out (Redis + websocket)")
    run.add_argument("--config", help="monitor.toml; flags below override it")
    run.add_argument("--book", help="book JSON file or folder of tables")
    run.add_argument("--feed", help="required (here or `feed` in the config): replay:PATH | "
                                    "ws://… | redis://…/STREAM | synthetic[:scenario] "
                                    "(simulated prices)")
    run.add_argument("--events", help="account events: JSONL file or redis://…/STREAM")
    run.add_argument("--redis", help="Redis URL for the alert stream (redis:// or rediss://)")
    run.add_argument("--alerts-stream", help="alert stream key (default margin:alerts)")
    run.add_argument("--listen", help="HOST:PORT for /ws/alerts, /healthz, /metrics "
                                      "(default 127.0.0.1:8765; port 0 = any free port)")
    run.add_argument("--token-file", help="file holding the access token "
                                          "(else MARGIN_MONITOR_TOKEN, else a random one)")
    run.add_argument("--tls-cert", help="PEM certificate (chain): serve https:// and wss:// "
                                        "(with --tls-key)")
    run.add_argument("--tls-key", help="PEM private key of --tls-cert")
    run.add_argument("--alert-key-file", help="sign every alert on the Redis stream with this "
                                              "HMAC key file (KEY_ID SECRET lines; chmod 600); "
                                              "unsigned without it")
    run.add_argument("--pretrade-listen", metavar="HOST:PORT",
                     help="also serve POST /api/pretrade with keep-alive connections here "
                          "(off by default; port 0 = any free port; same token)")
    run.add_argument("--redis-cluster", action="store_true",
                     help="every Redis URL (--redis, redis:// feeds and events) is a node of "
                          "a Redis Cluster")
    run.add_argument("--shard", metavar="I/N",
                     help="monitor only shard I of N (accounts with crc32(id) mod N == I), "
                          "from the whole book or its split-book folder; alerts go to "
                          "<alerts stream>:{I}")
    run.add_argument("--until-feed-ends", action="store_true",
                     help="exit 0 once a finite feed is drained and every event published")
    run.add_argument("--audit-dir", help="write audit records (the state behind every alert) "
                                         "and the end-of-day snapshot here")
    run.add_argument("--state-dir", help="snapshot folder: periodic state snapshots, and a "
                                         "restart resumes from the last one (off if not given)")
    run.add_argument("--snapshot-interval", type=float, metavar="SECONDS",
                     help="seconds between snapshots (default 30)")
    run.add_argument("--log-level", default="info")
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="the monitor on a synthetic book and a crash scenario")
    demo.add_argument("--accounts", type=int, default=100_000)
    demo.add_argument("--securities", type=int, default=2_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--feed", default="synthetic:crash?drop=0.08&minutes=5&at=0.5&speed=20",
                      help="feed spec (default: an 8%% index crash over 5 simulated minutes, "
                           "played 20x faster)")
    demo.add_argument("--listen", default="127.0.0.1:8765")
    demo.add_argument("--redis", help="use this Redis instead of a private redis-server")
    demo.add_argument("--spill-dir", default="spill")
    demo.add_argument("--until-feed-ends", action="store_true")
    demo.add_argument("--log-level", default="info")
    demo.set_defaults(func=_demo)

    # automated forced liquidation (docs/liquidation.md); handlers in monitor/liquidator/cli.py
    liq = sub.add_parser("liquidator", help="turn FORCED_LIQUIDATION / CALL_EXPIRED / "
                                            "CONTRACT_EXPIRED alerts into orders (Redis "
                                            "Streams consumer-group worker)")
    liq.add_argument("--config", help="liquidator.toml; flags below override it")
    liq.add_argument("--redis", help="Redis URL of the alert stream (redis:// or rediss://)")
    liq.add_argument("--alerts-stream", help="alert stream key (default margin:alerts)")
    liq.add_argument("--redis-cluster", action="store_true",
                     help="--redis is a node of a Redis Cluster (the alert stream, key prefix "
                          "and a redis: hook need one hash tag, e.g. margin:alerts:{0})")
    liq.add_argument("--group", help="consumer group shared by the workers (default liquidator)")
    liq.add_argument("--consumer", help="this worker's name in the group (default HOST-PID)")
    liq.add_argument("--hook", help="redis:STREAM | http(s)://URL | python:package.module:function"
                                    " (default redis:margin:orders)")
    liq.add_argument("--mode", choices=("auto", "approve", "notify"),
                     help="for every profile (overrides mode and [modes] in the config)")
    liq.add_argument("--until-idle", type=float, metavar="SECONDS",
                     help="exit 0 after SECONDS with nothing to do")
    liq.add_argument("--dry-run", action="store_true",
                     help="log the orders, never send them (own group and keys)")
    liq.add_argument("--webhook-secret-file",
                     help="HMAC key for http(s) hooks (else MARGIN_LIQ_WEBHOOK_SECRET)")
    liq.add_argument("--repricer", help="http(s)://MONITOR:PORT | python:package.module:function "
                                        "| none: where stale plans are re-priced")
    liq.add_argument("--repricer-token-file",
                     help="the monitor's access token (else MARGIN_MONITOR_TOKEN)")
    liq.add_argument("--metrics-listen", metavar="HOST:PORT",
                     help="serve Prometheus /metrics here (loopback only, no token; port 0 = "
                          "any free port, printed; off by default)")
    liq.add_argument("--alert-key-file",
                     help="the monitor's alert signing keys (its alert_key_file): unsigned or "
                          "badly signed alerts are dead-lettered, never acted on")
    liq.add_argument("--insecure-unsigned-alerts", action="store_true",
                     help="start without --alert-key-file and act on unsigned alerts")
    liq.add_argument("--log-level")
    liq.set_defaults(func=_liquidation("liquidator"))

    ks = sub.add_parser("kill-switch", help="stop (on) or allow (off) every automatic "
                                            "liquidation order at once; status")
    ks.add_argument("action", choices=("on", "off", "status"))
    ks.add_argument("--reason", help="why (stored with the switch)")
    ks.add_argument("--json", action="store_true", help="status as JSON")
    ap = sub.add_parser("approvals", help="liquidation plans waiting for a decision: list, "
                                          "approve, reject")
    ap.add_argument("action", choices=("list", "approve", "reject"))
    ap.add_argument("event_ids", nargs="*", metavar="EVENT_ID")
    ap.add_argument("--all", action="store_true", help="every pending plan")
    ap.add_argument("--note", help="stored with the decision")
    ap.add_argument("--json", action="store_true", help="list as JSON Lines")
    for q, name in ((ks, "kill_switch"), (ap, "approvals")):
        q.add_argument("--config", help="liquidator.toml (for redis and key_prefix)")
        q.add_argument("--redis", help="Redis URL (overrides the config)")
        q.add_argument("--key-prefix", help="the liquidator's key prefix (default margin:liq)")
        q.add_argument("--by", help="who decides (default: the login name)")
        q.set_defaults(func=_liquidation(name))

    # end-of-day statements and desk summary (docs/reports-and-audit.md); monitor/report.py
    rp = sub.add_parser("report", help="end-of-day statements (JSON and printable HTML) and a "
                                       "desk summary from an audit folder")
    rp.add_argument("--audit-dir", required=True, help="the monitor's --audit-dir")
    rp.add_argument("--book", help="end-of-day book (default: the monitor's eod-* snapshot)")
    rp.add_argument("--account", help="one account's statement only")
    rp.add_argument("--out", default="report", help="output folder (default report)")
    rp.add_argument("--html", choices=("all", "events", "none"), default="all",
                    help="HTML statements for every account, only those with events, or none")
    rp.add_argument("--quiet", action="store_true", help="no progress bar")
    rp.set_defaults(func=_report)

    # sustained load, per-minute RSS / latency / queue depths (docs/reliability.md); monitor/soak.py
    sk = sub.add_parser("soak", help="sustained synthetic load through the real runtime: RSS, "
                                     "latency percentiles and queue depths per interval")
    sk.add_argument("--minutes", type=float, default=30.0)
    sk.add_argument("--seconds", type=float, help="run length in seconds (overrides --minutes)")
    sk.add_argument("--accounts", type=int, default=1_000_000)
    sk.add_argument("--securities", type=int, default=5000)
    sk.add_argument("--rate", type=float, default=50_000, help="ticks per second")
    sk.add_argument("--interval", type=float, default=60.0, help="seconds per report line")
    sk.add_argument("--ticks-per-message", type=int, default=500)
    sk.add_argument("--alerts-maxlen", type=int, default=100_000,
                    help="MAXLEN of the alert stream (bounds Redis memory)")
    sk.add_argument("--desk-event-bytes", type=int, default=256 * 2**20,
                    help="the risk desk's event memory budget (desk_event_bytes)")
    sk.add_argument("--redis", help="use this Redis instead of a private redis-server")
    sk.add_argument("--seed", type=int, default=7)
    sk.add_argument("--output", default="soak-results", help="output folder (soak.json)")
    sk.set_defaults(func=_soak)

    # capacity benchmark (docs/capacity.md); runner in monitor/benchcmd.py
    bn = sub.add_parser("bench", help="capacity benchmark: sweep vs NumPy and Python, "
                                      "incremental, end to end, ingest, memory, cold start")
    bn.add_argument("--quick", action="store_true",
                    help="CI size: 10k and 50k accounts, short end-to-end runs (under a minute)")
    bn.add_argument("--accounts", help="book sizes, e.g. 10k,100k,1M (default 10k,100k,1M)")
    bn.add_argument("--threads", help="sweep thread counts, e.g. 1,2 (default 1 and every core; "
                                      "--quick: 1)")
    bn.add_argument("--rates", help="input ticks/s of the latency runs (default "
                                    "20000,100000,200000; --quick: 20000,100000)")
    bn.add_argument("--saturation-rates", help="ramp rates of the ingest saturation probe "
                                               "(default 500000,1000000,2000000)")
    bn.add_argument("--e2e-seconds", type=float,
                    help="seconds per end-to-end phase (default 5; --quick: 1)")
    bn.add_argument("--repeats", type=int, help="repetitions per kernel figure (default 25; "
                                                "--quick: 7)")
    bn.add_argument("--securities", type=int, default=5000)
    bn.add_argument("--seed", type=int, default=7)
    bn.add_argument("--p99-ms", type=float, default=10.0,
                    help="tick -> event p99 limit of the capacity line (ms)")
    bn.add_argument("--cores", type=int, default=8, help="core count of the projected capacity")
    bn.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs")
    bn.add_argument("--output", default="bench-results", help="output folder")
    bn.set_defaults(func=_bench)
    return p


def _report(args) -> int:
    from monitor.reports.statements import run

    return run(args)


def _soak(args) -> int:
    from monitor.perf.soak import run

    return run(args)


def _bench(args) -> int:
    from monitor.perf.bench import run

    return run(args)


def _liquidation(name: str):
    def run(args) -> int:
        from monitor.liquidator import cli

        return getattr(cli, name)(args)
    return run


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
