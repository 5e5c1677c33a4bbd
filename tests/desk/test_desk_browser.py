"""The risk desk end to end in a real browser: Debian's `chromium` driven by Playwright.

`margin-monitor run` (a subprocess) plays a synthetic index crash on a synthetic book and
publishes to a private Redis; the page logs in with `/?token=`, alert rows appear, the tier board
matches the monitor's own summary (the `margin:alerts:summary` key in Redis), a drill-down shows
the same ratio as `margin-monitor evaluate` on the book at the crash's final prices (recomputed
here from the same seeded feed), an acknowledgement survives a reload and a monitor restart, and
a wrong token gets 401 and nothing else. A screenshot of the screen under the crash is saved to
`artifacts/desk/desk-crash.png` (or `$MM_ARTIFACTS/desk-crash.png`).

Needs `/usr/bin/chromium` (scripts/test installs Debian's package) and the `playwright` Python
package; no browser is ever downloaded.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
import redis
from conftest import free_port

CHROMIUM = "/usr/bin/chromium"
pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian chromium not installed (apt-get install chromium; scripts/test does it)",
                allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "desk-e2e-token-5b7e0c1d9a"
ACCOUNTS, SECURITIES, SEED = 4_000, 300, 11
FEED = ("synthetic:crash?drop=0.12&minutes=5&at=0.2&speed=60&duration=8&rate=4000&batch_ms=50"
        "&seed=5")
ARTIFACTS = Path(os.environ.get("MM_ARTIFACTS", ROOT / "artifacts" / "desk"))


def _get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class MonitorProc:
    def __init__(self, book: Path, redis_url: str, workdir: Path):
        self.book, self.redis_url, self.workdir = book, redis_url, workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        (workdir / "token").write_text(TOKEN)

    def start(self, feed: str) -> None:
        cmd = [sys.executable, "-m", "monitor.cli", "run", "--book", str(self.book),
               "--feed", feed, "--redis", self.redis_url, "--listen", f"127.0.0.1:{self.port}",
               "--token-file", str(self.workdir / "token"), "--log-level", "warning"]
        self.log = open(self.workdir / f"monitor-{time.monotonic_ns()}.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"monitor exited with {self.proc.returncode}: "
                            f"{Path(self.log.name).read_text()[-3000:]}")
            try:
                if _get(self.port, "/healthz", None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail("monitor did not come up")

    def health(self) -> dict:
        return orjson.loads(_get(self.port, "/healthz", None)[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self.log.close()


def final_prices(book_dir: Path) -> np.ndarray:
    """The prices the monitor ends on: the same seeded feed, replayed here as fast as possible
    (its content depends only on the seed, the universe and the parameters)."""
    from feeds.registry import open_feed
    from monitor.book.load import load_book
    from monitor.book.universe import universe_of

    book = load_book(book_dir)
    price = book.price.copy()

    async def play() -> None:
        feed = open_feed(FEED + "&pace=0", universe_of(book))
        async for batch in feed.batches():
            if len(batch):
                sec = np.asarray(batch.sec)
                last = len(sec) - 1 - np.unique(sec[::-1], return_index=True)[1]
                price[sec[last]] = np.asarray(batch.price)[last]
        await feed.aclose()

    asyncio.run(play())
    return price


def evaluate_at(tables: dict, price: np.ndarray, out: Path) -> dict[str, dict]:
    """`margin-monitor evaluate` on the book with its prices replaced: account -> record."""
    from monitor.book import synthetic as synthbook

    sec = tables["securities"]
    col = pa.array([Decimal(int(p)) / 1000 for p in price.tolist()], type=sec.schema.field(
        "price").type)
    moved = dict(tables, securities=sec.set_column(sec.schema.get_field_index("price"),
                                                   "price", col))
    synthbook.write_book(moved, out)
    res = subprocess.run([sys.executable, "-m", "monitor.cli", "evaluate", str(out), "--plan"],
                         capture_output=True, check=True, cwd=ROOT)
    return {r["account_id"]: r for r in map(orjson.loads, res.stdout.splitlines())}


@pytest.fixture(scope="module")
def desk(tmp_path_factory, redis_server):
    from monitor.book import synthetic as synthbook

    redis_server.resume()
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    work = tmp_path_factory.mktemp("desk")
    tables = synthbook.generate(ACCOUNTS, SECURITIES, seed=SEED)
    synthbook.write_book(tables, work / "book")
    mon = MonitorProc(work / "book", redis_server.url, work)
    mon.start(FEED)
    yield mon, tables, work, redis_server
    mon.stop()


def test_risk_desk_in_chromium(desk):
    mon, tables, work, rs = desk
    base = f"http://127.0.0.1:{mon.port}"
    r = redis.Redis.from_url(rs.url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # what `evaluate` says at the prices the crash ends on (before Playwright owns the loop)
    evaluated = evaluate_at(tables, final_prices(work / "book"), work / "book-final")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            ctx = browser.new_context(viewport={"width": 1600, "height": 900})
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda q: requests.append(q.url))

            # -- a wrong token: 401, a token form, no data
            resp = page.goto(f"{base}/?token=wrong-token-0000")
            assert resp.status == 401
            assert page.locator("#tiers").count() == 0 and "Wrong token" in page.content()

            # -- log in via the link; the token leaves the address bar
            resp = page.goto(f"{base}/?token={TOKEN}")
            assert resp.status == 200
            expect(page.locator("#h-conn")).to_have_class("chip ok", timeout=10_000)
            assert page.url == f"{base}/"
            rows = page.locator("#feed-t tbody tr[data-id]")
            expect(rows.first).to_be_visible(timeout=20_000)

            # -- the screen under the crash (mid-crash: the feed is still playing)
            time.sleep(1.5)
            page.screenshot(path=str(ARTIFACTS / "desk-crash.png"))

            # -- after the crash: the tier board is the monitor's own count
            deadline = time.monotonic() + 60
            while not mon.health()["feed_done"]:
                assert time.monotonic() < deadline, "feed did not end"
                time.sleep(0.2)
            time.sleep(1.5)  # one more heartbeat: the summary after the last cycle
            want = orjson.loads(r.get("margin:alerts:summary"))
            tiers = ["FORCED_LIQUIDATION", "MARGIN_CALL", "WARNING", "NORMAL", "WITHDRAWABLE",
                     "NO_DEBT"]
            for t in tiers:
                expect(page.locator(f'.tile[data-tier="{t}"] .tc')).to_have_attribute(
                    "data-count", str(want["tiers"][t]), timeout=5_000)
            assert want["tiers"]["FORCED_LIQUIDATION"] + want["tiers"]["MARGIN_CALL"] > 0
            assert sum(want["tiers"][t] for t in tiers) == ACCOUNTS

            # -- drill into the worst account: the ratio is evaluate's at the final prices
            worst = page.locator("#worst-t tbody tr[data-account]").first
            expect(worst).to_be_visible(timeout=5_000)
            account = worst.get_attribute("data-account")
            worst.locator("a.acct").click()
            expect(page.locator("#d-id")).to_have_text(account)
            ratio_el = page.locator("#d-ratio")
            expect(ratio_el).to_have_attribute("data-ratio", re.compile(r"^\d"), timeout=5_000)
            expected = evaluated[account]["ratio"]
            assert float(ratio_el.get_attribute("data-ratio")) == expected
            assert ratio_el.inner_text() == f"{expected * 100:.4f}%"
            expect(page.locator("#d-positions tbody tr").first).to_be_visible()
            # the contracts table: one row per open contract, or "No open contracts."
            expect(page.locator("#d-contracts tbody tr").first).to_be_visible()
            # the plan preview: the cash repayment first (free cash first), then the orders
            plan = evaluated[account]
            cash_row = page.locator("#d-plan tbody tr.cash-repayment")
            if plan["plan"] or plan.get("cash_repayment"):
                expect(page.locator("#d-plan tbody tr")).to_have_count(
                    len(plan["plan"]) + (1 if plan.get("cash_repayment") else 0))
                expect(cash_row).to_have_count(1 if plan.get("cash_repayment") else 0)
            page.keyboard.press("Escape")

            # -- acknowledge the newest alert; it survives a reload
            first = rows.first
            event_id = first.get_attribute("data-id")
            first.locator(".ack-btn").click()
            page.fill("#ack-by", "e2e operator")
            page.fill("#ack-note", "client called, deposit on the way")
            page.click("#ack-ok")
            acked = page.locator(f'#feed-t tbody tr[data-id="{event_id}"] .ackd')
            expect(acked).to_be_visible(timeout=5_000)
            stored = orjson.loads(r.hget("margin:acks", event_id))
            assert stored["note"] == "client called, deposit on the way"
            assert stored["by"] == "e2e operator"
            page.reload()
            expect(page.locator(f'#feed-t tbody tr[data-id="{event_id}"] .ackd')).to_be_visible(
                timeout=10_000)
            assert page.url == f"{base}/"  # the session cookie, not the token, logs in

            # -- ... and a monitor restart (the new run has new event ids)
            mon.stop()
            mon.start("synthetic:walk?duration=1&rate=100")
            page.reload()
            page.click('#w-tabs .tab[data-tab="acks"]')
            expect(page.locator("#worst-t tbody")).to_contain_text(
                "client called, deposit on the way", timeout=10_000)

            # -- what-if answers from the server
            page.fill("#w-shock", "-20")
            page.click("#w-run")
            expect(page.locator("#w-out .wi")).to_be_visible(timeout=10_000)

            assert not errors, errors
            outside = [u for u in requests if not u.startswith((base, "data:", "ws://127.0.0.1"))]
            assert not outside, f"the page fetched from elsewhere: {outside[:5]}"
        finally:
            browser.close()

    # -- a wrong token: 401 and nothing else, on every endpoint but /healthz
    for path in ("/", "/index.html", "/desk.js", "/desk.css", "/api/summary",
                 "/api/worst?n=5", f"/api/account?id={account}", "/api/crowding",
                 "/api/whatif?scope=all&shock=-0.1", "/api/events", "/api/acks", "/metrics",
                 "/logout"):
        for tok in (None, "wrong-token-0000"):
            status, body = _get(mon.port, path, tok)
            assert status == 401, (path, tok, status)
            assert account.encode() not in body and b"ratio" not in body
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as e:
        connect(f"ws://127.0.0.1:{mon.port}/ws/alerts?token=wrong-token-0000").close()
    assert e.value.response.status_code == 401
    assert _get(mon.port, "/healthz", None)[0] == 200
