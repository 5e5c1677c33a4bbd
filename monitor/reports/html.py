"""Printable HTML for `margin-monitor report`: one self-contained page per statement and one for
the desk summary. No external assets (inline CSS and SVG), A4-friendly print styles."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from html import escape

from kernels import units as u

CHINA = timezone(timedelta(hours=8))
TIER_COLOURS = {"FORCED_LIQUIDATION": "#b00020", "MARGIN_CALL": "#e65100",
                "WARNING": "#c9a100", "NORMAL": "#2e7d32", "WITHDRAWABLE": "#1565c0",
                "NO_DEBT": "#777"}

CSS = """
body{font:13px/1.4 -apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC",sans-serif;color:#111;
margin:24px;max-width:1000px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px;border-bottom:1px solid #ccc}
.sub{color:#555;margin-bottom:12px}table{border-collapse:collapse;width:100%;margin:4px 0 8px}
th,td{padding:3px 6px;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(4,1fr);gap:8px}
.box{border:1px solid #ddd;border-radius:4px;padding:6px 8px}.box b{display:block;font-size:16px}
.tier{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-size:11px}
.ev{font-size:12px}.muted{color:#777}pre{white-space:pre-wrap;margin:0;font-size:11px}
.en{color:#555;font-weight:400;font-size:.9em}.todo{border-left:4px solid #2e7d32;
padding:6px 10px;margin:6px 0;background:#f6faf6}.todo b{display:block;font-size:14px}
.todo.warning{border-color:#c9a100;background:#fffbea}.todo.margin_call{border-color:#e65100;
background:#fff4ec}.todo.forced_liquidation,.todo.shortfall{border-color:#b00020;
background:#fdeff1}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}tr{break-inside:avoid}
.box{break-inside:avoid}a{color:inherit;text-decoration:none}}
@page{size:A4;margin:14mm}
"""


def _t(ns) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(int(ns) / 1e9, CHINA).strftime("%Y-%m-%d %H:%M:%S")


def _pct(r) -> str:
    return "-" if r is None else f"{100 * r:.2f}%"


def _y(x) -> str:
    return "-" if x is None else f"{x:,.2f}"


def _tier(name) -> str:
    if not name:
        return "-"
    return (f'<span class="tier" style="background:{TIER_COLOURS.get(name, "#555")}">'
            f"{escape(name)}</span>")


def _dur(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s else "0"


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{escape(title)}'
            f'</title><style>{CSS}</style></head><body>{body}</body></html>')


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    th = "".join(f'<th class="{"n" if i in numeric else ""}">{escape(h)}</th>'
                 for i, h in enumerate(head))
    trs = "".join("<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{c}</td>'
                                   for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _bi(zh: str, en: str) -> str:
    """A label in Chinese with the English beside it."""
    return f'{escape(zh)} <span class="en">{escape(en)}</span>'


def account_html(st: dict) -> str:
    c = st["close"]
    mn = st["intraday_min_ratio"]
    lines = st["lines"]
    boxes = [(_bi("维持担保比例", "Close ratio"), _pct(c["ratio"])),
             (_bi("风险等级", "Reported tier"), _tier(c["reported_tier"])),
             (_bi("日内最低", "Intraday minimum"), f'{_pct(mn["ratio"])}<span class="muted"> at '
                                                  f'{_t(mn["ts_ns"])}</span>'),
             (_bi("资产 / 负债", "Assets / liabilities"),
              f'{_y(c["assets"])} / {_y(c["liabilities"])}'),
             (_bi("保证金可用余额", "Available margin"), _y(c["available_margin_balance"])),
             (_bi("可提取", "Withdrawable"), _y(c["withdrawable"])),
             (_bi("需平仓金额", "Liquidation to target"), _y(c["liquidation_value"])),
             (_bi("穿仓金额", "Shortfall"), _y(st.get("shortfall", 0.0)))]
    grid = "".join(f'<div class="box">{k}<b>{v}</b></div>' for k, v in boxes)
    todo = "".join(f'<div class="todo {escape(x["code"].lower())}"><b>{escape(x["zh"])}</b>'
                   f'<div>{escape(x["en"])}</div></div>' for x in st.get("what_to_do", []))
    against = _table(["线 line", "水平 level", "收盘比例 close ratio", "状态 status"],
                     [[_bi(r["zh"], r["en"]), _pct(r["level"]), _pct(r["ratio"]),
                       "-" if r["below"] is None else
                       (f'<b>低于 below</b> ({100 * r["gap"]:+.2f} pp)' if r["below"]
                        else f'高于 above ({100 * r["gap"]:+.2f} pp)')]
                      for r in st.get("lines_against_ratio", [])], {1, 2})
    executed = _table(["时间 time", "指令 order", "方向 side", "证券 symbol", "数量 qty",
                       "价格 price", "金额 value"],
                      [[_t(x["ts"]), escape(str(x["order_id"])), escape(x["side"]),
                        escape(str(x["symbol"])), escape(str(x["qty"])), escape(str(x["price"])),
                        _y(x["value"])] for x in st.get("executed_liquidations", [])],
                      {4, 5, 6})
    under = _table(["line", "level", "time under it"],
                   [[escape(k), _pct(lines[k]), _dur(v)]
                    for k, v in st["time_under_line_s"].items()], {1, 2})
    pos = _table(["symbol", "kind", "qty", "price", "market value", "cost", "margin ratio"],
                 [[escape(p["symbol"]), escape(p["kind"]), f'{p["qty"]:,}', _y(p["price"]),
                   _y(p["market_value"]), _y(p["cost"]),
                   "-" if p["margin_ratio"] is None else f'{p["margin_ratio"]:.2f}']
                  for p in st["positions"]], {2, 3, 4, 5, 6})
    evs = _table(["time", "kind", "tier", "ratio", "detail"],
                 [[_t(e.get("ts_published")), escape(e["kind"] or ""),
                   f'{_tier(e.get("previous_tier"))} &rarr; {_tier(e.get("tier"))}'
                   if e.get("kind") == "TIER_CHANGE" else _tier(e.get("tier")),
                   _pct(e.get("ratio")), _detail(e)] for e in st["events"]], {3})
    calls = _table(["issued", "deadline", "amount", "state", "closed"],
                   [[_t(x.get("issued_ns")), escape(str(x.get("deadline"))),
                     _y(x.get("amount")), escape(str(x.get("state"))), _t(x.get("closed_ns"))]
                    for x in st["margin_calls"]], {2})
    liq = _table(["time", "event", "orders", "ratio after"],
                 [[_t(e.get("ts_published")), escape(e["kind"]), _orders(e.get("plan")),
                   _pct((e.get("plan") or {}).get("ratio_after"))] for e in st["liquidations"]],
                 {3})
    day = st["day"]
    body = (f'<h1>信用账户对账单 Account statement {escape(st["account_id"])}</h1>'
            f'<div class="sub">profile {escape(st["profile"])} &middot; lines '
            + " / ".join(f"{escape(k)} {_pct(v)}" for k, v in lines.items())
            + f' &middot; day {_t(day["started_ns"])} &ndash; {_t(day["ended_ns"])} (UTC+8)</div>'
            f'<h2>{_bi("您需要做什么", "What you must do")}</h2>{todo}'
            f'<div class="grid">{grid}</div>'
            f'<h2>{_bi("维持担保比例与各线", "The ratio against each line")}</h2>{against}'
            f'<h2>{_bi("收盘持仓", "Positions at the close")}</h2>{pos}'
            f'<h2>{_bi("低于各线的时间", "Time under each line")}</h2>{under}'
            f'<h2>{_bi("追加担保物通知", "Margin calls")}</h2>'
            f'{calls if st["margin_calls"] else _none()}'
            f'<h2>{_bi("已执行的强制平仓", "Executed liquidations (from the fills)")}</h2>'
            f'{executed if st.get("executed_liquidations") else _none()}'
            f'<h2>{_bi("强制平仓触发与计划", "Liquidation triggers and plans")}</h2>'
            f'{liq if st["liquidations"] else _none()}'
            f'<h2>{_bi("事件", "Events")}</h2>{evs if st["events"] else _none()}'
            f'<p class="muted">Intraday minimum: {escape(mn["source"])}.</p>')
    return _page(f'Statement {st["account_id"]}', body)


def _orders(plan: dict | None) -> str:
    return "<br>".join(f'{escape(o["side"])} {o["qty"]:,} {escape(o["symbol"])} @ '
                       f'{_y(o["price"])}' for o in (plan or {}).get("orders", []))


def _none() -> str:
    return '<p class="muted">None.</p>'


def _detail(e: dict) -> str:
    if e.get("kind") == "TRADING_PATTERN":
        ev = e.get("evidence") or {}
        return (f'<span class="ev">{escape(str(e.get("rule")))} in {escape(str(e.get("symbol")))}'
                f': {ev.get("count")} fills, first {_t(ev.get("first_ns"))}</span>')
    trig = e.get("trigger") or {}
    if "symbol" in trig:
        return f'<span class="ev">{escape(str(trig["symbol"]))} @ {_y(trig.get("price"))}</span>'
    if "event" in trig:
        return f'<span class="ev">account event {escape(str(trig["event"]))}</span>'
    if e.get("call"):
        return f'<span class="ev">call {escape(str(e["call"].get("state")))}</span>'
    return ""


def _svg_series(series: list, tiers: tuple[str, ...], w: int = 940, h: int = 180) -> str:
    if len(series) < 2:
        return ""
    t0, t1 = series[0][0], series[-1][0]
    span = max(t1 - t0, 1)
    top = max(max(c[u.TIER_CODES[t]] for _, c in series) for t in tiers) or 1
    paths = []
    for t in tiers:
        k = u.TIER_CODES[t]
        pts = []
        prev_y = None
        for ts, c in series:
            x = 40 + (ts - t0) / span * (w - 50)
            y = h - 20 - c[k] / top * (h - 30)
            if prev_y is not None:
                pts.append(f"{x:.1f},{prev_y:.1f}")
            pts.append(f"{x:.1f},{y:.1f}")
            prev_y = y
        paths.append(f'<polyline fill="none" stroke="{TIER_COLOURS[t]}" stroke-width="1.5" '
                     f'points="{" ".join(pts)}"/>')
    legend = "".join(f'<tspan fill="{TIER_COLOURS[t]}" dx="10">&#9632; {t}</tspan>'
                     for t in tiers)
    return (f'<svg width="100%" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg" '
            f'font-size="11"><line x1="40" y1="{h - 20}" x2="{w - 10}" y2="{h - 20}" '
            f'stroke="#999"/><text x="2" y="14">{top:,}</text><text x="2" y="{h - 22}">0</text>'
            f'<text x="40" y="{h - 4}">{_t(t0)}</text><text x="{w - 130}" y="{h - 4}">{_t(t1)}'
            f'</text><text x="300" y="12">{legend}</text>{"".join(paths)}</svg>')


def summary_html(s: dict) -> str:
    tiers = s["tiers"]
    tier_rows = [[_tier(t), f'{tiers["start"][t]:,}', f'{tiers["peak"][t]:,}',
                  f'{tiers["close"][t]:,}'] for t in u.TIER_NAMES]
    ev_rows = [[escape(k), f"{v:,}"] for k, v in sorted(s["events"].items())]
    pat_rows = [[escape(k), f"{v:,}"] for k, v in sorted(s["trading_patterns"].items())]
    exp_rows = [[escape(r["account_id"]), _y(r["liabilities"]), _y(r["assets"]), _pct(r["ratio"]),
                 _tier(r["tier"])] for r in s["largest_exposures"]]
    crowd_rows = [[escape(r["symbol"]), f'{r["holders"]:,}', _y(r["price"]), _y(r["limit_down"]),
                   f'{r["to_margin_call"]:,}', f'{r["to_forced_liquidation"]:,}',
                   _y(r["debt_to_forced_liquidation"])] for r in s["crowding"]]
    body = (f'<h1>Desk summary</h1><div class="sub">{s["accounts"]:,} accounts &middot; '
            f'{_t(s["day"]["started_ns"])} &ndash; {_t(s["day"]["ended_ns"])} (UTC+8) &middot; '
            f'runs {escape(", ".join(map(str, s["runs"])) or "-")}</div>'
            f"<h2>Tier counts over the day</h2>"
            + _svg_series(tiers["series"], ("WARNING", "MARGIN_CALL", "FORCED_LIQUIDATION"))
            + _table(["tier", "start", "peak", "close"], tier_rows, {1, 2, 3})
            + "<h2>Events</h2>" + (_table(["kind", "count"], ev_rows, {1}) if ev_rows else _none())
            + "<h2>Trading patterns</h2>"
            + (_table(["rule", "hits"], pat_rows, {1}) if pat_rows else _none())
            + "<h2>Largest exposures at the close</h2>"
            + _table(["account", "liabilities", "assets", "ratio", "tier"], exp_rows, {1, 2, 3})
            + "<h2>Crowding: each security alone at limit-down</h2>"
            + _table(["symbol", "holders", "close", "limit-down", "to margin call",
                      "to forced liq.", "their debt"], crowd_rows, {1, 2, 3, 4, 5, 6}))
    return _page("Desk summary", body)
