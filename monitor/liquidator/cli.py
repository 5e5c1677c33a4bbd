"""The `liquidator`, `kill-switch` and `approvals` subcommands (parsers in monitor/cli.py)."""

from __future__ import annotations

import asyncio
import getpass
import sys
from datetime import UTC, datetime

import orjson

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _config(args, **extra):
    from monitor.errors import ConfigError
    from monitor.liquidator.config import load_liquidator_config

    over = {"redis": getattr(args, "redis", None), "key_prefix": getattr(args, "key_prefix", None),
            "redis_cluster": True if getattr(args, "redis_cluster", False) else None}
    over.update(extra)
    try:
        cfg = load_liquidator_config(getattr(args, "config", None), over)
        return cfg.check()
    except ConfigError as e:
        print(f"margin-monitor {args.command}: {e}", file=sys.stderr)
        return None


def liquidator(args) -> int:
    import signal

    from monitor.errors import ConfigError
    from monitor.liquidator.worker import Liquidator

    cfg = _config(args, alerts_stream=args.alerts_stream, group=args.group,
                  consumer=args.consumer, hook=args.hook, mode=args.mode,
                  dry_run=True if args.dry_run else None,
                  webhook_secret_file=args.webhook_secret_file, repricer=args.repricer,
                  repricer_token_file=args.repricer_token_file, log_level=args.log_level,
                  metrics_listen=getattr(args, "metrics_listen", None),
                  alert_key_file=getattr(args, "alert_key_file", None),
                  insecure_unsigned_alerts=True if getattr(args, "insecure_unsigned_alerts",
                                                           False) else None)
    if cfg is None:
        return EXIT_INVALID
    if args.until_idle is not None and args.until_idle < 0:
        print("margin-monitor liquidator: --until-idle must be >= 0", file=sys.stderr)
        return EXIT_INVALID
    _setup_logging(cfg.log_level)
    try:
        cfg.check_signing()
        cfg.resolve_secrets()
        worker = Liquidator(cfg)
    except (ConfigError, ValueError) as e:
        print(f"margin-monitor liquidator: {e}", file=sys.stderr)
        return EXIT_INVALID

    metrics = None
    if cfg.metrics_listen:
        from monitor.liquidator.metrics import MetricsServer

        metrics = MetricsServer(worker, cfg.metrics_listen)
        try:
            host, port = metrics.start()
        except OSError as e:
            print(f"margin-monitor liquidator: metrics_listen {cfg.metrics_listen}: "
                  f"{e.strerror or e}", file=sys.stderr)
            return EXIT_INVALID
        print(f"margin-monitor liquidator: metrics on http://{host}:{port}/metrics",
              file=sys.stderr, flush=True)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        return await worker.run(until_idle=args.until_idle)

    try:
        return asyncio.run(main())
    finally:
        if metrics is not None:
            metrics.close()


def _who(args) -> str:
    if getattr(args, "by", None):
        return args.by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _when(ns) -> str:
    if not isinstance(ns, int):
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def kill_switch(args) -> int:
    from monitor.liquidator.control import LiquidationControl

    cfg = _config(args)
    if cfg is None:
        return EXIT_INVALID

    async def main() -> int:
        ctl = LiquidationControl(cfg.redis, key_prefix=cfg.key_prefix, done_ttl=cfg.done_ttl,
                                 cluster=cfg.redis_cluster)
        try:
            if args.action == "on":
                rec = await ctl.engage_kill_switch(_who(args), args.reason or "")
                print(f"kill switch ON (by {rec['by']}): no liquidation order will be sent; "
                      "plans wait in the approvals list")
            elif args.action == "off":
                prev = await ctl.release_kill_switch(_who(args))
                print("kill switch OFF" + ("" if prev else " (it was not on)") +
                      "; held plans stay in the approvals list until approved or rejected")
            else:
                rec = await ctl.kill_switch()
                if args.json:
                    print(orjson.dumps({"on": rec is not None, **(rec or {})}).decode())
                elif rec is None:
                    print("kill switch off")
                else:
                    print(f"kill switch ON since {_when(rec.get('ts'))} by {rec.get('by')}: "
                          f"{rec.get('reason') or '(no reason given)'}")
            return EXIT_OK
        finally:
            await ctl.aclose()

    return _run_control(main, "kill-switch", cfg)


def approvals(args) -> int:
    from monitor.liquidator.control import ControlError, LiquidationControl

    cfg = _config(args)
    if cfg is None:
        return EXIT_INVALID
    if args.action in ("approve", "reject") and not (args.event_ids or args.all):
        print(f"margin-monitor approvals {args.action}: give EVENT_ID(s) or --all",
              file=sys.stderr)
        return EXIT_INVALID

    async def main() -> int:
        ctl = LiquidationControl(cfg.redis, key_prefix=cfg.key_prefix, done_ttl=cfg.done_ttl,
                                 cluster=cfg.redis_cluster)
        try:
            recs = await ctl.pending()
            if args.action == "list":
                if args.json:
                    for r in recs:
                        print(orjson.dumps(r).decode())
                    return EXIT_OK
                if not recs:
                    print("no plan waits for approval")
                for r in recs:
                    orders = "; ".join(f"{o['side']} {o['qty']} {o['symbol']} @ {o['price']}"
                                       for o in r.get("orders", [])) or "(no orders)"
                    print(f"{r['event_id']}  {r['account_id']}  {r['state']}  held: {r['held']}"
                          f"  {r['reason']}  since {_when(r.get('created_ns'))}"
                          f"{'  frozen' if r.get('frozen') else ''}\n    {orders}")
                return EXIT_OK
            ids = ([r["event_id"] for r in recs if r.get("state") == "pending"] if args.all
                   else args.event_ids)
            fn = ctl.approve if args.action == "approve" else ctl.reject
            failed = 0
            for eid in ids:
                try:
                    await fn(eid, _who(args), args.note or "")
                    print(f"{args.action}d {eid}")
                except ControlError as e:
                    failed += 1
                    print(f"margin-monitor approvals {args.action}: {e}", file=sys.stderr)
            return EXIT_FAILURE if failed else EXIT_OK
        finally:
            await ctl.aclose()

    return _run_control(main, "approvals", cfg)


def _run_control(main, name: str, cfg) -> int:
    from redis.exceptions import RedisError

    from feeds.net import mask_url, redact, url_secrets

    try:
        return asyncio.run(main())
    except (RedisError, OSError) as e:
        msg = redact(f"{type(e).__name__}: {e}", url_secrets(cfg.redis))
        print(f"margin-monitor {name}: Redis {mask_url(cfg.redis)} failed: {msg}",
              file=sys.stderr)
        return EXIT_FAILURE
