"""Audit records reproduce their events exactly (against the Decimal reference), and the
end-of-day report of the spec vector accounts matches the vectors."""

from decimal import Decimal

import numpy as np
import orjson
import pytest
from reference import RefBook, amounts, fen, pct
from spec import load_vectors

from monitor.adapters.audit import AuditLog
from monitor.app.warmup import SAMPLE_BOOK
from monitor.book.load import load_book
from monitor.cli import main
from monitor.core.engine import Engine, EngineConfig
from monitor.core.patterns import PatternConfig
from monitor.core.state import MarginState
from monitor.reports.statements import Reporter, read_audit_dir, time_under_lines

T0 = 1_772_415_000_000_000_000
S = 1_000_000_000


def publish(audit, events):
    audit.record(events, [orjson.dumps(e) for e in events])
    return events


def day(tmp_path, *, busy: bool):
    """A day on the sample book: start-up, then (busy) fills, a short sale, a price drop and a
    recovery, so the log holds tier changes, calls, a liquidation plan and a pattern hit."""
    eng = Engine(MarginState(load_book(SAMPLE_BOOK), live=True), EngineConfig(run_id="day"),
                 patterns=PatternConfig.from_dict({"round_trips": {"count": 1}}))
    audit = AuditLog(eng, tmp_path / "audit", sample_s=0.0)
    evs = publish(audit, eng.start(T0))
    if busy:
        b = eng.state.book
        for k, (side, sym, qty, price) in enumerate([
                ("collateral_buy", "600000.SH", 1000, "12.10"),
                ("collateral_sell", "600000.SH", 1000, "12.05"),
                ("short_sell", "601318.SH", 500, "15.00"),
                ("financed_buy", "600519.SH", 300, "20.00"),
                ("collateral_buy", "601318.SH", 100, "15.10")]):  # a round trip on the short
            ev = {"type": "fill", "account_id": "C-TV3", "symbol": sym, "side": side,
                  "qty": qty, "price": price, "ts": T0 + (k + 1) * S, "event_id": f"x{k}"}
            evs += publish(audit, eng.apply_account_event(ev, T0 + (k + 1) * S))
        for t, price in ((10, "5.10"), (20, "6.00")):  # 600036.SH down 15%, then back
            s = b.symbol_index["600036.SH"]
            eng.add_ticks(np.array([s]), np.array([int(Decimal(price) * 1000)]),
                          np.array([T0 + t * S]))
            evs += publish(audit, eng.cycle(T0 + t * S))
            audit.sample(T0 + t * S)
    audit.close()
    return eng, evs, tmp_path / "audit"


def yuan_text(li: int) -> str:
    return str(Decimal(li) / 1000)


def ref_amounts(state: dict):
    """§1 of the reference on the account exactly as the audit record states it (money in
    integer li, positions as columns)."""
    cols = state["positions"]
    rows = [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
    secs = {p["symbol"]: {"symbol": p["symbol"], "price": yuan_text(p["price"]),
                          "haircut": "0.5"} for p in rows}
    pos = []
    for p in rows:
        q = {"symbol": p["symbol"], "kind": p["kind"], "qty": p["qty"]}
        if p["kind"] == "financed":
            q.update(financed_cost=yuan_text(p["cost"]), fin_margin_ratio=str(p["margin_ratio"]))
        elif p["kind"] == "short":
            q.update(short_sell_amount=yuan_text(p["cost"]),
                     short_margin_ratio=str(p["margin_ratio"]))
        pos.append(q)
    acct = {"account_id": state["account_id"], "cash": yuan_text(state["cash"]),
            "accrued_interest_fees": yuan_text(state["accrued"]),
            "other_debt": yuan_text(state["other_debt"]),
            "other_collateral": yuan_text(state["other_collateral"]), "positions": pos}
    book = RefBook({"securities": list(secs.values()), "accounts": [acct]})
    return amounts(book, acct, {s: Decimal(v["price"]) for s, v in secs.items()})


def test_every_audit_record_reproduces_its_events_ratio_exactly(tmp_path):
    eng, evs, d = day(tmp_path, busy=True)
    lines = (d / "audit-day.jsonl").read_bytes().splitlines()
    assert len(lines) == len(evs)
    kinds = set()
    for line, ev in zip(lines, evs, strict=True):
        rec = orjson.loads(line)
        assert rec["v"] == 1 and rec["event"]["event_id"] == ev["event_id"]
        st = rec["state"]
        m = ref_amounts(st)
        assert rec["money_scale"] == 1000
        assert Decimal(st["assets"]) / 1000 == m["assets"]
        assert Decimal(st["liabilities"]) / 1000 == m["liabilities"]
        expect = round(float(m["assets"] / m["liabilities"]), 6) if m["liabilities"] else None
        assert rec["event"]["ratio"] == expect, (ev["kind"], ev["account_id"])
        if "assets" in ev:
            assert Decimal(str(ev["assets"])) == fen(m["assets"])
            assert Decimal(str(ev["liabilities"])) == fen(m["liabilities"])
        assert st["lines_bp"]["warning"] == 13000 or st["profile"] != "default"
        kinds.add(ev["kind"])
    assert {"TIER_CHANGE", "CALL_ISSUED", "TRADING_PATTERN"} <= kinds


def test_an_audit_record_holds_the_state_not_the_later_one(tmp_path):
    """C-TV3's short sale changes its positions: the record of the event before it does not
    show the short, the ones after do."""
    _, evs, d = day(tmp_path, busy=True)
    recs = [orjson.loads(x) for x in (d / "audit-day.jsonl").read_bytes().splitlines()]
    tv3 = [r for r in recs if r["state"]["account_id"] == "C-TV3"]
    shorts = [("short", "601318.SH") in zip(r["state"]["positions"]["kind"],
                                            r["state"]["positions"]["symbol"], strict=True)
              for r in tv3]
    assert shorts[0] is False and shorts[-1] is True
    assert tv3[-1]["event"]["kind"] == "TRADING_PATTERN"


@pytest.mark.parametrize("vec", [v for v in load_vectors()
                                 if v["id"] in ("TV1", "TV2", "TV3", "TV5", "TV7", "TV8")],
                         ids=lambda v: v["id"])
def test_the_report_of_a_spec_vector_account_matches_the_vector(tmp_path, vec):
    _, _, d = day(tmp_path, busy=False)
    rep = Reporter(read_audit_dir(d))
    a = rep.book.account_index["C-" + vec["id"]]
    st = rep.statement(a)
    x = vec["expected"]
    c = st["close"]
    assert Decimal(str(c["assets"])) == Decimal(x["assets"])
    assert Decimal(str(c["liabilities"])) == Decimal(x["liabilities"])
    got_pct = pct(Decimal(str(c["assets"])), Decimal(str(c["liabilities"])))
    assert (None if x["ratio_pct"] is None else Decimal(x["ratio_pct"])) == got_pct
    assert c["tier"] == x["tier"] and c["reported_tier"] == x["tier"]
    assert Decimal(str(c["available_margin_balance"])) == Decimal(x["available_margin_balance"])
    assert c["liquidation_status"] == x["liquidation_status"]
    if x["liquidation_value_to_150"] is not None:
        assert Decimal(str(c["liquidation_value"])) == Decimal(x["liquidation_value_to_150"])
    want = sorted((p["kind"], p["qty"], Decimal(p["price"])) for p in vec["positions"])
    got = sorted((p["kind"], p["qty"], Decimal(str(p["price"]))) for p in st["positions"])
    assert got == want
    # nothing moved all day: the minimum is the close, and the whole day sits in its tier
    if c["ratio"] is not None:
        assert st["intraday_min_ratio"]["ratio"] == c["ratio"]
    span = (st["day"]["ended_ns"] - st["day"]["started_ns"]) / 1e9
    code = {"FORCED_LIQUIDATION": 0, "MARGIN_CALL": 1, "WARNING": 2, "NORMAL": 3,
            "WITHDRAWABLE": 4, "NO_DEBT": 5}[x["tier"]]
    for k, line in enumerate(("withdrawable", "normal", "warning", "margin_call")):
        want_s = round(span, 3) if code <= 3 - k and code != 5 else 0
        assert st["time_under_line_s"][line] == pytest.approx(want_s, abs=0.002)
    if x["tier"] == "MARGIN_CALL":
        assert [m["state"] for m in st["margin_calls"]] == ["OPEN"]
    if x["tier"] == "FORCED_LIQUIDATION":
        assert st["liquidations"] and st["liquidations"][0]["plan"]["orders"]


def test_time_under_lines_is_exact_from_transitions():
    evs = [{"kind": "TIER_CHANGE", "tier": "WARNING", "previous_tier": "NORMAL",
            "ts_published": 100 * S},
           {"kind": "TIER_CHANGE", "tier": "FORCED_LIQUIDATION", "previous_tier": "WARNING",
            "ts_published": 130 * S},
           {"kind": "CALL_ISSUED", "tier": "FORCED_LIQUIDATION", "ts_published": 131 * S},
           {"kind": "TIER_CHANGE", "tier": "NORMAL", "previous_tier": "FORCED_LIQUIDATION",
            "ts_published": 170 * S}]
    got = time_under_lines(evs, close_tier=3, t0=0, t1=1000 * S)
    assert got == {"withdrawable": 1000.0, "normal": 70.0, "warning": 40.0,
                   "margin_call": 40.0}
    assert time_under_lines([], close_tier=4, t0=0, t1=10 * S)["withdrawable"] == 0


def test_intraday_minimum_catches_the_dip_and_the_summary_counts_it(tmp_path):
    eng, evs, d = day(tmp_path, busy=True)
    rep = Reporter(read_audit_dir(d))
    a = rep.book.account_index["C-TV1"]
    st = rep.statement(a)
    # 600036.SH at 5.10: A = 20,000 + 20,000 x 12 + 30,000 x 5.10, L = 302,000; still WARNING,
    # so no event carries it: the heartbeat sample does
    assert not [e for e in evs if e["account_id"] == "C-TV1" and e["ts_event"] > T0]
    assert st["intraday_min_ratio"]["ratio"] == round(413_000 / 302_000, 6)
    assert st["intraday_min_ratio"]["ts_ns"] == T0 + 10 * S
    assert st["intraday_min_ratio"]["ratio"] < st["close"]["ratio"]
    s = rep.summary()
    assert s["tiers"]["peak"]["FORCED_LIQUIDATION"] >= s["tiers"]["close"]["FORCED_LIQUIDATION"]
    assert sum(s["tiers"]["close"].values()) == rep.book.n_accounts
    assert s["trading_patterns"] == {"round_trips": 2}
    assert s["largest_exposures"][0]["liabilities"] >= s["largest_exposures"][-1]["liabilities"]
    assert s["crowding"] and "to_margin_call" in s["crowding"][0]


def test_report_command_writes_json_and_self_contained_html(tmp_path, capsys):
    _, _, d = day(tmp_path, busy=True)
    out = tmp_path / "rep"
    assert main(["report", "--audit-dir", str(d), "--out", str(out), "--quiet"]) == 0
    stmts = [orjson.loads(x) for x in (out / "statements.jsonl").read_bytes().splitlines()]
    assert len(stmts) == 8 and {s["account_id"] for s in stmts} >= {"C-TV1", "C-TV8"}
    html = (out / "accounts" / "C-TV1.html").read_text()
    assert "Account statement C-TV1" in html and "<link" not in html and "src=" not in html
    assert "@media print" in html
    assert "Desk summary" in (out / "summary.html").read_text()
    assert main(["report", "--audit-dir", str(d), "--out", str(out), "--account", "C-TV3"]) == 0
    one = orjson.loads((out / "account-C-TV3.json").read_bytes())
    assert one["trading_patterns"][0]["rule"] == "round_trips"
    assert main(["report", "--audit-dir", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert main(["report", "--audit-dir", str(d), "--account", "NOPE", "--out", str(out)]) == 2
    assert "unknown account" in capsys.readouterr().err


def test_an_expired_contract_is_among_the_day_s_liquidations(tmp_path):
    """CONTRACT_EXPIRED (TV14) is in the statement's liquidations, with its contract."""
    from monitor.book.load import book_from_dict

    doc = {"securities": [{"symbol": "600008.SH", "price": "30.00", "haircut": "0.6"},
                          {"symbol": "600009.SH", "price": "10.00", "haircut": "0.6"}],
           "accounts": [{"account_id": "TV14", "cash": "0", "positions": [
               {"symbol": "600008.SH", "kind": "collateral", "qty": 5000},
               {"symbol": "600009.SH", "kind": "financed", "qty": 10000,
                "financed_cost": "100000", "fin_margin_ratio": "1.0", "contract_id": "FX",
                "open_date": "2026-06-04", "term_end": "2026-12-04"}]}]}
    eng = Engine(MarginState(book_from_dict(doc), live=True),
                 EngineConfig(run_id="ct", clock="tape"))
    audit = AuditLog(eng, tmp_path / "audit", sample_s=0.0)
    publish(audit, eng.start(T0))
    fri = 1_796_349_600_000_000_000  # 2026-12-04 10:00 China time
    for t in (fri, fri + 71 * 3600 * S):  # to Monday 09:00
        eng.add_ticks(np.array([1]), np.array([10_000]), np.array([t]))
        publish(audit, eng.cycle(T0))
    audit.close()
    rep = Reporter(read_audit_dir(tmp_path / "audit"))
    st = rep.statement(rep.book.account_index["TV14"])
    (liq,) = st["liquidations"]
    assert liq["kind"] == "CONTRACT_EXPIRED" and liq["contract_id"] == "FX"
    assert liq["term_end"] == "2026-12-04" and liq["plan"]["orders"][0]["qty"] == 10000
