"""The risk desk follows the token's role, in a real browser (Debian's `chromium` driven by
Playwright): `margin-monitor run` with a named token file and a private Redis plays a synthetic
crash; a viewer sees the alerts but no Ack button and no approvals; an operator acknowledges
under the token's name; an approver approves a waiting liquidation plan and turns the kill
switch on from the page, both recorded in the liquidator's Redis under the token's name.

Needs `/usr/bin/chromium` and the `playwright` package, like tests/desk/test_desk_browser.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest
import redis
from conftest import free_port

CHROMIUM = "/usr/bin/chromium"
pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian chromium not installed (apt-get install chromium; scripts/test does it)",
                allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

VIEWER = "viewer-desk-token-0b3d6f9a1c4e"
OPERATOR = "operator-desk-token-7e2c5a8d0f3b"
APPROVER = "approver-desk-token-4a9f1d6b3e8c"
FEED = ("synthetic:crash?drop=0.12&minutes=5&at=0.2&speed=60&duration=6&rate=3000&batch_ms=50"
        "&seed=5")


@pytest.fixture(scope="module")
def monitor(tmp_path_factory, redis_server):
    from monitor.book import synthetic as synthbook

    redis_server.resume()
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    work = tmp_path_factory.mktemp("desk-roles")
    synthbook.write_book(synthbook.generate(2_000, 200, seed=11), work / "book")
    (work / "tokens").write_text(f"ann.li viewer {VIEWER}\ndesk-2 operator {OPERATOR}\n"
                                 f"risk-head approver {APPROVER}\n")
    r = redis.Redis.from_url(redis_server.url)
    r.hset("margin:liq:approvals", "plan-1", orjson.dumps({
        "event_id": "plan-1", "account_id": "C000042", "state": "pending",
        "held": "approval_required", "reason": "forced_liquidation",
        "created_ns": time.time_ns(),
        "orders": [{"side": "sell", "qty": 1000, "symbol": "600000.SH", "price": 9.5}]}))
    port = free_port()
    log = open(work / "monitor.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--book", str(work / "book"), "--feed", FEED,
         "--redis", redis_server.url, "--listen", f"127.0.0.1:{port}", "--token-file",
         str(work / "tokens"), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=work, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("monitor did not come up: " + (work / "monitor.log").read_text()[-3000:])
        time.sleep(0.1)
    yield port, r
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    r.close()


def test_the_desk_follows_the_role(monitor):
    port, r = monitor
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            errors: list[str] = []

            def page_as(token: str):
                page = browser.new_context(viewport={"width": 1600, "height": 900}).new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                assert page.goto(f"{base}/?token={token}").status == 200
                expect(page.locator("#h-conn")).to_have_class("chip ok", timeout=10_000)
                expect(page.locator("#feed-t tbody tr[data-id]").first).to_be_visible(
                    timeout=20_000)
                return page

            # -- a viewer: alerts, no Ack buttons, no approvals, the switch only shown
            viewer = page_as(VIEWER)
            expect(viewer.locator("#me")).to_have_text("ann.li · viewer")
            assert viewer.locator("#feed-t .ack-btn").count() == 0
            expect(viewer.locator("#tab-approvals")).to_be_hidden()
            expect(viewer.locator("#kill")).to_have_text("Kill switch off", timeout=10_000)
            expect(viewer.locator("#kill")).to_be_disabled()

            # -- an operator: acknowledges, recorded under the token's name (no name asked)
            deadline = time.monotonic() + 60  # the crash has played: the rows stand still
            while not orjson.loads(urllib.request.urlopen(f"{base}/healthz").read())["feed_done"]:
                assert time.monotonic() < deadline, "feed did not end"
                time.sleep(0.2)
            op = page_as(OPERATOR)
            first = op.locator("#feed-t tbody tr[data-id]").first
            event_id = first.get_attribute("data-id")
            first.locator(".ack-btn").click()
            expect(op.locator("#ack-by-row")).to_be_hidden()
            op.fill("#ack-note", "called the client")
            op.click("#ack-ok")
            expect(op.locator("#ack-err")).to_have_text("")
            expect(op.locator(f'#feed-t tbody tr[data-id="{event_id}"] .ackd')).to_be_visible(
                timeout=5_000)
            assert orjson.loads(r.hget("margin:acks", event_id))["by"] == "desk-2"
            expect(op.locator("#tab-approvals")).to_be_hidden()

            # -- an approver: approves the waiting plan and turns the kill switch on
            ap = page_as(APPROVER)
            ap.on("dialog", lambda d: d.accept("from the desk") if d.type == "prompt"
                  else d.accept())
            ap.click("#tab-approvals")
            row = ap.locator('#worst-t tbody tr[data-id="plan-1"]')
            expect(row).to_contain_text("sell 1000 600000.SH", timeout=5_000)
            row.locator(".approve-btn").click()
            expect(row).to_contain_text("approved, queued", timeout=5_000)
            rec = orjson.loads(r.hget("margin:liq:approvals", "plan-1"))
            assert (rec["state"], rec["decided_by"], rec["note"]) == (
                "approved", "risk-head", "from the desk")
            expect(ap.locator("#kill")).to_be_enabled(timeout=10_000)
            ap.click("#kill")
            expect(ap.locator("#kill")).to_have_text("Kill switch ON", timeout=5_000)
            kill = orjson.loads(r.get("margin:liq:kill"))
            assert (kill["by"], kill["reason"]) == ("risk-head", "from the desk")
            expect(viewer.locator("#kill")).to_have_text("Kill switch ON", timeout=10_000)
            assert not errors, errors
        finally:
            browser.close()
