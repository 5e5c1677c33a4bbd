"""End-of-day statements per account and a desk summary (`margin-monitor report`).

Inputs, all from the monitor's `--audit-dir`:

- `audit-<run>.jsonl`: every alert event of the day with the account's state behind it;
- `run-<run>.json`: when each run started and ended (the day's span);
- `eod-<run>/`: the live book at the last prices (a book folder) and `intraday.parquet`
  (each account's intraday minimum ratio and reported tier at the close).

A `--book` replaces the end-of-day book (e.g. the core system's own end-of-day book).

Where the numbers come from (docs/reports-and-audit.md):
- close figures and positions: the end-of-day book, through `MarginState.figures`;
- time under each line: exact from the reported-tier transitions (TIER_CHANGE events), over
  the day's span; an account without a transition spent the whole span in its close tier;
- intraday minimum: the monitor's tracker (every event's ratio plus whole-book samples), else
  the minimum of the day's event ratios and the close ratio.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from kernels import units as u
from kernels.desk import N_CROSS, crowding
from monitor.book.load import load_book
from monitor.core.state import MarginState, yuan
from monitor.errors import ReportError

LINE_KEYS = ("withdrawable", "normal", "warning", "margin_call")


@dataclass
class DayLog:
    started_ns: int
    ended_ns: int
    events: dict[str, list[dict]] = field(default_factory=dict)  # by account, publish order
    runs: list[dict] = field(default_factory=list)
    eod: Path | None = None
    records: int = 0
    bad_lines: int = 0  # unreadable lines (a torn last line after a crash)
    dropped: int = 0  # records the monitor dropped from its audit queue (gap lines)


def read_audit_dir(audit_dir: str | Path) -> DayLog:
    d = Path(audit_dir)
    if not d.is_dir():
        raise ReportError(f"{d}: no such audit folder (give the monitor's --audit-dir)")
    runs = []
    for p in sorted(d.glob("run-*.json")):
        try:
            runs.append(orjson.loads(p.read_bytes()))
        except orjson.JSONDecodeError:
            raise ReportError(f"{p.name}: not valid JSON") from None
    files = sorted(d.glob("audit-*.jsonl"))
    if not files and not runs:
        raise ReportError(f"{d}: no audit-*.jsonl or run-*.json (was the monitor run with "
                          "--audit-dir?)")
    by_acct: dict[str, list[dict]] = defaultdict(list)
    n = 0
    bad = 0
    dropped = 0
    for p in files:
        with p.open("rb") as f:
            for line in f:
                try:
                    rec = orjson.loads(line)
                    if isinstance(rec, dict) and isinstance(rec.get("gap"), dict):
                        dropped += int(rec["gap"].get("records") or 0)  # audit_queue_bytes
                        continue
                    ev = rec["event"]
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    bad += 1  # a torn last line after a crash
                    continue
                ev["_state"] = rec.get("state")
                by_acct[ev.get("account_id")].append(ev)
                n += 1
    evs = [e for lst in by_acct.values() for e in lst]
    pub = [int(e.get("ts_published") or 0) for e in evs]
    started = min((r["started_ns"] for r in runs), default=min(pub) if pub else 0)
    ended = max([r.get("ended_ns") or 0 for r in runs] + ([max(pub)] if pub else []),
                default=0)
    for lst in by_acct.values():
        lst.sort(key=lambda e: (int(e.get("ts_published") or 0), int(e.get("seq") or 0)))
    eods = sorted((d / r["eod"] for r in runs if r.get("eod")), key=lambda p: p.stat().st_mtime)
    return DayLog(started, ended, dict(by_acct), runs=runs,
                  eod=eods[-1] if eods else None, records=n, bad_lines=bad, dropped=dropped)


def time_under_lines(events: list[dict], close_tier: int, t0: int, t1: int) -> dict:
    """Seconds spent under each line, from the reported-tier transitions (exact for the
    reported tier; hysteresis delays an improvement by the band, as on the desk)."""
    changes = [e for e in events if e.get("kind") == "TIER_CHANGE" and e.get("tier")]
    if changes:
        first = changes[0]
        prev = first.get("previous_tier")
        tier = u.TIER_CODES[prev] if prev else u.TIER_CODES[first["tier"]]
    else:
        tier = close_tier
    under = [0] * len(LINE_KEYS)
    t = t0
    for e in changes + [None]:
        te = t1 if e is None else min(max(int(e.get("ts_published") or t0), t0), t1)
        if tier >= 0:
            for k in range(len(LINE_KEYS)):
                if tier <= 3 - k:
                    under[k] += te - t
        if e is not None:
            tier = u.TIER_CODES[e["tier"]]
            t = te
    return {k: round(v / 1e9, 3) for k, v in zip(LINE_KEYS, under, strict=True)}


# the terms of a statement, in Chinese and English (margin-rules.md §1-§2)
TERMS = {
    "ratio": ("维持担保比例", "maintenance collateral ratio"),
    "withdrawable": ("提取线", "withdrawal line"),
    "normal": ("安全线", "normal line"),
    "warning": ("警戒线", "warning line"),
    "margin_call": ("平仓线", "liquidation line"),
    "target": ("追保目标", "cure target"),
    "deposit": ("追加担保物", "deposit collateral"),
    "repay": ("偿还负债", "repay debt"),
    "forced": ("强制平仓", "forced liquidation"),
    "shortfall": ("穿仓", "shortfall"),
}
LIQUIDATION_SIDES = ("sell_to_repay", "collateral_sell", "buy_to_cover")


def what_to_do(fig: dict, tier: str, lines: dict, calls: list[dict]) -> list[dict]:
    """What the client must do and by when, from the close figures, the reported tier and the
    open margin calls: each item a code, the amounts, a deadline, and the sentence in Chinese
    and English."""
    cure = fig.get("cure") or {}
    out: list[dict] = []
    open_calls = [c for c in calls if c.get("state", "OPEN") == "OPEN"]
    expired = any(c.get("state") == "EXPIRED" for c in calls)
    deadline = min((str(c["deadline"]) for c in open_calls if c.get("deadline")), default=None)
    target = lines.get("target") or lines.get("normal")
    liq_value = fig.get("liquidation_value") or 0.0
    if (fig.get("shortfall") or 0) > 0:
        out.append({"code": "SHORTFALL", "amount": fig["shortfall"],
                    "zh": f"账户已穿仓：全部平仓后仍欠 {fig['shortfall']:,.2f} 元，须以现金偿还。",
                    "en": f"The account is underwater: after liquidating everything "
                          f"{fig['shortfall']:,.2f} is still owed and must be repaid in cash."})
    if tier == "FORCED_LIQUIDATION" or (expired and tier == "MARGIN_CALL"):
        out.append({"code": "FORCED_LIQUIDATION", "amount": liq_value,
                    "zh": f"维持担保比例低于平仓线或追保逾期：将强制平仓约 {liq_value:,.2f} 元，"
                          f"使比例恢复至 {100 * target:.0f}%。",
                    "en": f"The ratio is below the liquidation line or a margin call expired: "
                          f"about {liq_value:,.2f} will be liquidated to bring it back to "
                          f"{100 * target:.0f}%."})
    elif tier == "MARGIN_CALL" or open_calls:
        by = f"{deadline} 15:00" if deadline else None
        out.append({"code": "MARGIN_CALL", "deposit": cure.get("deposit"),
                    "repay": cure.get("repay"), "deadline": deadline,
                    "zh": f"请在 {by or '规定期限内'} 前追加担保物至少 "
                          f"{cure.get('deposit', 0):,.2f} 元，"
                          f"或偿还负债至少 {cure.get('repay', 0):,.2f} 元，使维持担保比例达到 "
                          f"{100 * target:.0f}%；否则将被强制平仓。",
                    "en": f"By {by or 'the deadline'}, deposit at least "
                          f"{cure.get('deposit', 0):,.2f} of collateral or repay at least "
                          f"{cure.get('repay', 0):,.2f} of debt to bring the ratio to "
                          f"{100 * target:.0f}%; otherwise the positions will be liquidated."})
    elif tier == "WARNING":
        out.append({"code": "WARNING", "deposit": cure.get("deposit"),
                    "zh": f"维持担保比例低于警戒线 {100 * lines['warning']:.0f}%：建议追加担保物 "
                          f"{cure.get('deposit', 0):,.2f} 元；新增融资融券可能受限。",
                    "en": f"The ratio is below the warning line ({100 * lines['warning']:.0f}%): "
                          f"consider depositing {cure.get('deposit', 0):,.2f}; new debt may be "
                          f"blocked."})
    else:
        out.append({"code": "NONE", "zh": "无需操作。", "en": "Nothing to do."})
    return out


def lines_against(ratio: float | None, lines: dict) -> list[dict]:
    """The close ratio against each line: above, or below by how much."""
    rows = []
    for k in ("withdrawable", "normal", "warning", "margin_call"):
        lv = lines[k]
        rows.append({"line": k, "zh": TERMS[k][0], "en": TERMS[k][1], "level": lv,
                     "ratio": ratio,
                     "below": None if ratio is None else bool(ratio < lv),
                     "gap": None if ratio is None else round(ratio - lv, 6)})
    return rows


def executed_liquidations(events: list[dict]) -> list[dict]:
    """The fills that executed the account's liquidation orders (their `order_id` is
    `<trigger event_id>-<row>`, docs/liquidation.md), with the value traded."""
    triggers = {e.get("event_id") for e in events
                if (e.get("kind") == "TIER_CHANGE" and e.get("tier") == "FORCED_LIQUIDATION")
                or e.get("kind") in ("CALL_EXPIRED", "CONTRACT_EXPIRED")}
    out = []
    for e in events:
        if e.get("kind") != "FILL" or e.get("side") not in LIQUIDATION_SIDES:
            continue
        oid = e.get("order_id")
        trig = oid.rsplit("-", 1)[0] if isinstance(oid, str) and "-" in oid else None
        if trig not in triggers:
            continue
        try:
            value = round(float(e["qty"]) * float(e["price"]), 2)
        except (KeyError, TypeError, ValueError):
            value = None
        out.append({"ts": e.get("ts_published"), "order_id": oid, "trigger": trig,
                    "side": e["side"], "symbol": e.get("symbol"), "qty": e.get("qty"),
                    "price": e.get("price"), "value": value})
    return out


def _event_row(e: dict) -> dict:
    row = {k: e.get(k) for k in ("event_id", "seq", "kind", "ts_event", "ts_published",
                                 "tier", "previous_tier", "ratio", "previous_ratio")}
    trig = e.get("trigger")
    if isinstance(trig, dict):
        row["trigger"] = trig
    for k in ("rule", "symbol", "evidence", "call", "contract_id", "term_end", "plan"):
        if e.get(k) is not None:
            row[k] = e[k]
    return row


class Reporter:
    """Builds statements from a day log and the end-of-day book (loaded once)."""

    def __init__(self, log: DayLog, book_path: str | Path | None = None):
        self.log = log
        path = book_path or log.eod
        if path is None:
            raise ReportError("no end-of-day book: the audit folder has no eod-* snapshot "
                              "(the monitor writes it on shutdown); give --book")
        self.book = load_book(path)
        self.state = MarginState(self.book)
        n = self.book.n_accounts
        self.close_reported = np.full(n, u.UNSET_TIER, dtype=np.int8)
        self.min_ratio = np.full(n, np.nan)
        self.min_ns = np.zeros(n, dtype=np.int64)
        self.min_source = "events"
        intraday = Path(path) / "intraday.parquet" if Path(path).is_dir() else None
        if intraday is not None and intraday.exists():
            self._load_intraday(intraday)
        A, L = self.state.values(np.arange(n, dtype=np.int64))
        with np.errstate(divide="ignore", invalid="ignore"):
            self.close_ratio = np.where(L > 0, A / np.where(L > 0, L, 1), np.nan)
        self.assets, self.liabilities = A, L

    def _load_intraday(self, path: Path) -> None:
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        idx = self.book.account_index
        pos = np.array([idx.get(a, -1) for a in t.column("account_id").to_pylist()])
        ok = pos >= 0
        self.min_ratio[pos[ok]] = t.column("min_ratio").to_numpy(zero_copy_only=False)[ok]
        self.min_ns[pos[ok]] = t.column("min_ratio_ns").to_numpy()[ok]
        tiers = [u.TIER_CODES.get(x, u.UNSET_TIER) if x else u.UNSET_TIER
                 for x in t.column("reported_tier").to_pylist()]
        self.close_reported[pos[ok]] = np.array(tiers, dtype=np.int8)[ok]
        samples = [r.get("intraday_sample_s") for r in self.log.runs]
        self.min_source = (f"monitor: every event and a whole-book sample every "
                           f"{samples[-1] if samples else '?'} s")

    def _close_tier(self, a: int, fig: dict) -> int:
        t = int(self.close_reported[a])
        return t if t >= 0 else u.TIER_CODES[fig["tier"]]

    def statement(self, a: int, fig: dict | None = None) -> dict:
        """One account's statement; `fig` (its `figures`) when the caller batched them."""
        b, st = self.book, self.state
        aid = b.account_ids[a]
        fig = fig or st.figures(a)
        events = self.log.events.get(aid, [])
        close_tier = self._close_tier(a, fig)
        lines = b.profile_lines[b.profile_of[a]]
        positions = []
        lo, hi = int(b.pos_ptr[a]), int(b.pos_ptr[a + 1])
        for j in range(lo, hi):
            s, kind, qty = int(b.pos_sec[j]), int(b.pos_kind[j]), int(b.pos_qty[j])
            p = int(st.price[s])
            positions.append({
                "symbol": b.symbols[s], "kind": u.KIND_NAMES[kind], "qty": qty,
                "price": yuan(p), "market_value": yuan(qty * p),
                "cost": yuan(int(b.pos_cost[j])) if kind != u.COLLATERAL else None,
                "margin_ratio": (round(float(b.pos_margin_ratio[j]), 4)
                                 if kind != u.COLLATERAL else None)})
        mins = [(float(r), int(e.get("ts_event") or 0)) for e, r in
                ((e, e.get("ratio")) for e in events) if r is not None]
        close_r = fig["ratio"]
        m = self.min_ratio[a]
        if m == m:
            mn, mn_ns, src = float(m), int(self.min_ns[a]), self.min_source
        else:
            cands = mins + ([(close_r, self.log.ended_ns)] if close_r is not None else [])
            mn, mn_ns = min(cands) if cands else (None, None)
            src = "events and close"
        kinds = Counter(e.get("kind") for e in events)
        calls: dict[int, dict] = {}
        for e in events:
            c = e.get("call")
            if e.get("kind", "").startswith("CALL_") and isinstance(c, dict):
                calls[c.get("issued_ns")] = {**c, "last_event": e.get("event_id")}
        liq = [_event_row(e) for e in events
               if (e.get("kind") == "TIER_CHANGE" and e.get("tier") == "FORCED_LIQUIDATION")
               or e.get("kind") in ("CALL_EXPIRED", "CONTRACT_EXPIRED")]
        line_levels = {k: int(v) / u.RATIO_SCALE for k, v in
                       zip(u.LINE_NAMES, lines.tolist(), strict=True)}
        alerts = [e for e in events if e.get("kind") != "FILL"]
        return {
            "account_id": aid, "profile": b.profile_names[int(b.profile_of[a])],
            "lines": line_levels,
            "day": {"started_ns": self.log.started_ns, "ended_ns": self.log.ended_ns},
            "close": {**fig, "reported_tier": u.TIER_NAMES[close_tier]},
            "intraday_min_ratio": {"ratio": None if mn is None else round(mn, 6),
                                   "ts_ns": mn_ns, "source": src},
            "time_under_line_s": time_under_lines(events, close_tier, self.log.started_ns,
                                                  self.log.ended_ns),
            "positions": positions,
            "event_counts": dict(kinds),
            "events": [_event_row(e) for e in alerts],
            "margin_calls": list(calls.values()),
            "liquidations": liq,
            "executed_liquidations": executed_liquidations(events),
            "lines_against_ratio": lines_against(fig["ratio"], line_levels),
            "what_to_do": what_to_do(fig, u.TIER_NAMES[close_tier], line_levels,
                                     list(calls.values())),
            "shortfall": fig.get("shortfall") or 0.0,
            "trading_patterns": [_event_row(e) for e in events
                                 if e.get("kind") == "TRADING_PATTERN"],
        }

    # ------------------------------------------------------------------ desk summary
    def summary(self, top: int = 20) -> dict:
        b, st = self.book, self.state
        log = self.log
        n = b.n_accounts
        # close tiers (reported where the monitor recorded them), then walk back to the start
        plain = self._plain_tiers()
        cur = np.where(self.close_reported >= 0, self.close_reported, plain).astype(np.int64)
        start = cur.copy()
        changes = []
        for aid, evs in log.events.items():
            a = b.account_index.get(aid)
            tc = [e for e in evs if e.get("kind") == "TIER_CHANGE" and e.get("tier")]
            if a is None or not tc:
                continue
            prev = tc[0].get("previous_tier")
            start[a] = u.TIER_CODES[prev or tc[0]["tier"]]
            changes.extend((int(e.get("ts_published") or 0), int(e.get("seq") or 0), a,
                            u.TIER_CODES[e["tier"]]) for e in tc)
        changes.sort()
        counts = np.bincount(start, minlength=len(u.TIER_NAMES)).astype(np.int64)
        peak = counts.copy()
        tier_now = start.copy()
        series = [(log.started_ns, counts.tolist())]
        for ts, _, a, t in changes:
            counts[tier_now[a]] -= 1
            counts[t] += 1
            tier_now[a] = t
            np.maximum(peak, counts, out=peak)
            series.append((ts, counts.tolist()))
        series.append((log.ended_ns, counts.tolist()))
        kinds = Counter(e.get("kind") for evs in log.events.values() for e in evs)
        rules = Counter(e.get("rule") for evs in log.events.values() for e in evs
                        if e.get("kind") == "TRADING_PATTERN")
        L = self.liabilities
        big = np.argsort(-L, kind="stable")[:top]
        exposures = [{"account_id": b.account_ids[a], "liabilities": yuan(int(L[a])),
                      "assets": yuan(int(self.assets[a])),
                      "ratio": None if L[a] <= 0 else round(float(self.close_ratio[a]), 6),
                      "tier": u.TIER_NAMES[int(cur[a])]} for a in big.tolist() if L[a] > 0]
        h = st.h
        holders = np.zeros(b.n_securities, dtype=np.int64)
        cnt = np.zeros((b.n_securities, N_CROSS), dtype=np.int64)
        debt = np.zeros((b.n_securities, N_CROSS), dtype=np.int64)
        down = st.stress_prices()[0]  # limit-down; without a limit the stress's shock
        move = np.maximum(st.price - down, 0)
        crowding(move, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr, h.short_sec,
                 h.short_qty, self.assets, L, b.profile_of, b.profile_lines, holders, cnt,
                 debt)
        order = np.lexsort((-holders, -cnt[:, 1], -cnt[:, 2]))[:top]
        crowd = [{"symbol": b.symbols[s], "holders": int(holders[s]),
                  "price": yuan(int(st.price[s])), "limit_down": yuan(int(down[s])),
                  "to_margin_call": int(cnt[s, 1]), "to_forced_liquidation": int(cnt[s, 2]),
                  "debt_to_forced_liquidation": yuan(int(debt[s, 2]))}
                 for s in order.tolist() if holders[s] > 0]
        return {
            "accounts": n, "day": {"started_ns": log.started_ns, "ended_ns": log.ended_ns},
            "runs": [r.get("run_id") for r in log.runs],
            "tiers": {"start": dict(zip(u.TIER_NAMES, np.bincount(
                          start, minlength=len(u.TIER_NAMES)).tolist(), strict=True)),
                      "close": dict(zip(u.TIER_NAMES, counts.tolist(), strict=True)),
                      "peak": dict(zip(u.TIER_NAMES, peak.tolist(), strict=True)),
                      "series": _thin_series(series, 600)},
            "events": dict(kinds), "trading_patterns": dict(rules),
            "audit_records": log.records, "audit_dropped": log.dropped,
            "largest_exposures": exposures,
            "crowding": crowd,
        }

    def _plain_tiers(self) -> np.ndarray:
        from kernels.ratios import plain_tiers

        b = self.book
        out = np.empty(b.n_accounts, dtype=np.int8)
        plain_tiers(self.assets, self.liabilities, b.profile_of.astype(np.int32),
                    b.profile_lines, out)
        return out


def _thin_series(series: list, points: int) -> list:
    """At most `points` steps of the tier-count series (every step kept when it fits; else
    the last state in each time bucket, so the curve keeps its shape)."""
    if len(series) <= points:
        return [[t, c] for t, c in series]
    t0, t1 = series[0][0], series[-1][0]
    width = max((t1 - t0) / points, 1)
    out = {}
    for t, c in series:
        out[int((t - t0) / width)] = [t, c]
    return list(out.values())


# ---------------------------------------------------------------------- command line
def run(args) -> int:
    """`margin-monitor report`: files in --out; exit 2 on missing or bad inputs."""
    import sys

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from monitor.book.load import BookError
    from monitor.reports.html import account_html, summary_html

    try:
        log = read_audit_dir(args.audit_dir)
        rep = Reporter(log, args.book)
    except (ReportError, BookError) as e:
        print(f"margin-monitor report: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    if args.account:
        a = rep.book.account_index.get(args.account)
        if a is None:
            print(f"margin-monitor report: unknown account {args.account!r}", file=sys.stderr)
            return 2
        st = rep.statement(a)
        safe = _safe(args.account)
        (out / f"account-{safe}.json").write_bytes(orjson.dumps(st, option=opts))
        if args.html != "none":
            (out / f"account-{safe}.html").write_text(account_html(st))
        print(f"wrote {out / f'account-{safe}.json'}", file=sys.stderr)
        return 0
    summary = rep.summary()
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=opts))
    (out / "summary.html").write_text(summary_html(summary))
    html_dir = out / "accounts"
    if args.html != "none":
        html_dir.mkdir(exist_ok=True)
    n = rep.book.n_accounts
    with Progress(TextColumn("statements"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=args.quiet) as bar, \
            (out / "statements.jsonl").open("wb") as f:
        task = bar.add_task("statements", total=n)
        for lo in range(0, n, 10_000):  # figures vectorised per chunk
            idx = np.arange(lo, min(lo + 10_000, n), dtype=np.int64)
            for a, fig in zip(idx.tolist(), rep.state.figures_many(idx), strict=True):
                st = rep.statement(a, fig)
                f.write(orjson.dumps(st, option=orjson.OPT_APPEND_NEWLINE
                                     | orjson.OPT_SERIALIZE_NUMPY))
                if args.html == "all" or (args.html == "events" and st["events"]):
                    (html_dir / f"{_safe(st['account_id'])}.html").write_text(account_html(st))
                if a % 1000 == 999:
                    bar.update(task, completed=a + 1)
        bar.update(task, completed=n)
    print(f"wrote {out}/summary.json, summary.html, statements.jsonl ({n} accounts)"
          + ("" if args.html == "none" else f" and HTML statements in {html_dir}"),
          file=sys.stderr)
    return 0


def _safe(name: str) -> str:
    """An account id as a file name (ids are free text in the book)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
