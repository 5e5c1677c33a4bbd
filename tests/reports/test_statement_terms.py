"""Client statements a broker can hand out (issue 16): Chinese terms with the English beside
them, the ratio against each line, what the client must do and by when, the shortfall of an
underwater account, and the liquidations executed (from the fills), checked in Chromium."""

from __future__ import annotations

import os

import orjson
import pytest

from monitor.adapters.audit import AuditLog
from monitor.book.load import book_from_dict
from monitor.core.engine import Engine, EngineConfig
from monitor.core.state import MarginState
from monitor.reports.html import account_html
from monitor.reports.statements import Reporter, read_audit_dir, what_to_do

T0 = 1_772_415_000_000_000_000  # 2026-03-02, a Monday
S = 1_000_000_000
CHROMIUM = "/usr/bin/chromium"

BOOK = {"securities": [{"symbol": "600000.SH", "price": "10.00", "haircut": "0.5"}],
        "accounts": [
            # R = 200000 / 180000 = 1.11: forced liquidation, 14,000 shares to reach 1.50
            {"account_id": "F1", "cash": "0", "positions": [
                {"symbol": "600000.SH", "kind": "financed", "qty": 20000,
                 "financed_cost": "180000", "fin_margin_ratio": "1.0"}]},
            # R = 100000 / 120000 = 0.83: underwater by 20,000
            {"account_id": "U1", "cash": "0", "positions": [
                {"symbol": "600000.SH", "kind": "financed", "qty": 10000,
                 "financed_cost": "120000", "fin_margin_ratio": "1.0"}]},
            # R = 250000 / 200000 = 1.25: a margin call
            {"account_id": "M1", "cash": "0", "positions": [
                {"symbol": "600000.SH", "kind": "financed", "qty": 25000,
                 "financed_cost": "200000", "fin_margin_ratio": "1.0"}]}]}


def _day(tmp_path):
    eng = Engine(MarginState(book_from_dict(BOOK), live=True), EngineConfig(run_id="st"))
    audit = AuditLog(eng, tmp_path / "audit", sample_s=0.0)
    evs = eng.start(T0)
    audit.record(evs, [orjson.dumps(e) for e in evs])
    trig = next(e for e in evs if e.get("account_id") == "F1")
    order = trig["plan"]["orders"][0]
    # the liquidator's order <event_id>-0 fills in two parts; an unrelated fill is no liquidation
    for k, (qty, oid) in enumerate([(8000, f"{trig['event_id']}-0"),
                                    (6000, f"{trig['event_id']}-0"), (100, "manual-1")]):
        ev = {"type": "fill", "account_id": "F1", "symbol": order["symbol"],
              "side": "sell_to_repay", "qty": qty, "price": "10.00", "order_id": oid,
              "event_id": f"f{k}", "ts": T0 + (k + 1) * S}
        out = eng.apply_account_event(ev, T0 + (k + 1) * S)
        audit.record(out, [orjson.dumps(e) for e in out])
        audit.record_fill(ev, T0 + (k + 1) * S)
    audit.close()
    return Reporter(read_audit_dir(tmp_path / "audit"))


def test_statements_say_what_to_do_and_show_executed_liquidations(tmp_path):
    rep = _day(tmp_path)
    idx = rep.book.account_index
    f1 = rep.statement(idx["F1"])
    ex = f1["executed_liquidations"]
    assert [(x["qty"], x["value"]) for x in ex] == [(8000, 80000.0), (6000, 60000.0)]
    assert {x["trigger"] for x in ex} == {f1["liquidations"][0]["event_id"]}
    assert all(e["kind"] != "FILL" for e in f1["events"])
    u1 = rep.statement(idx["U1"])
    assert u1["shortfall"] == 20000.0
    todo = {x["code"]: x for x in u1["what_to_do"]}
    assert "SHORTFALL" in todo and "穿仓" in todo["SHORTFALL"]["zh"] \
        and "20,000.00" in todo["SHORTFALL"]["en"]
    m1 = rep.statement(idx["M1"])
    todo = {x["code"]: x for x in m1["what_to_do"]}["MARGIN_CALL"]
    call = m1["margin_calls"][0]
    assert todo["deadline"] == call["deadline"] and f'{call["deadline"]} 15:00' in todo["en"]
    assert todo["deposit"] == 50000.0 and "追加担保物" in todo["zh"]  # 1.5·200000 − 250000
    rows = {r["line"]: r for r in m1["lines_against_ratio"]}
    assert rows["warning"]["below"] and not rows["margin_call"]["below"]
    assert rows["warning"]["zh"] == "警戒线" and rows["margin_call"]["zh"] == "平仓线"


def test_nothing_to_do_is_said_too():
    fig = {"ratio": 2.0, "shortfall": 0.0, "cure": {}}
    lines = {"withdrawable": 3.0, "normal": 1.5, "warning": 1.3, "margin_call": 1.15,
             "target": 1.5}
    assert [x["code"] for x in what_to_do(fig, "NORMAL", lines, [])] == ["NONE"]


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed")
def test_the_statement_renders_in_chromium_with_both_languages(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    rep = _day(tmp_path)
    for aid in ("F1", "M1"):
        (tmp_path / f"{aid}.html").write_text(account_html(rep.statement(
            rep.book.account_index[aid])))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            page.goto((tmp_path / "M1.html").as_uri())
            text = page.inner_text("body")
            for term in ("维持担保比例", "警戒线", "平仓线", "追加担保物", "What you must do",
                         "The ratio against each line"):
                assert term in text, term
            box = page.locator(".todo.margin_call")
            assert box.count() == 1 and box.bounding_box()["height"] > 20
            page.screenshot(path=str(tmp_path / "M1.png"), full_page=True)
            page.goto((tmp_path / "F1.html").as_uri())
            rows = page.locator("h2:has-text('Executed liquidations') + table tbody tr")
            assert rows.count() == 2
            if os.environ.get("MM_STATEMENT_SCREENSHOT"):  # docs/img/statement.png
                page.goto((tmp_path / "M1.html").as_uri())
                page.screenshot(path=os.environ["MM_STATEMENT_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "M1.png").stat().st_size > 10_000
