"""Security controls of docs/security.md, against real processes: TLS on the monitor's port
(https and wss clients), a Redis ACL user with a password, rediss:// to a TLS redis-server,
secrets never in the logs, loopback by default, constant-time token checks, refusals counted."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis
from conftest import free_port
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from monitor.app.config import ConfigError, RunConfig
from monitor.book.data import SAMPLE_BOOK

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = SAMPLE_BOOK
TOKEN = "sec-test-token-7d1e0b55c2a94f3e"
REDIS_USER = "mmuser"
REDIS_PASSWORD = "redis-pw-91c4e7a2b6d04f18"


def make_cert(d: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 / localhost (openssl binary)."""
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl binary not found (needed to make a test certificate)")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def client_ctx(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    return ctx


def https_get(port: int, path: str, ctx, headers=None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def acl_user(redis_fresh):
    """A Redis ACL user with a password on the private server (removed afterwards)."""
    r = redis.Redis(port=redis_fresh.port)
    r.execute_command("ACL", "SETUSER", REDIS_USER, "reset", "on", f">{REDIS_PASSWORD}",
                      "~*", "&*", "+@all")
    yield f"redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{redis_fresh.port}/0"
    r.execute_command("ACL", "DELUSER", REDIS_USER)
    r.close()


def test_tls_acl_redis_and_no_secret_in_the_logs(acl_user, redis_fresh, tmp_path):
    """`run` with --tls-cert/--tls-key, a token file and an ACL Redis URL, logging at DEBUG:
    https and wss work with the token, cleartext does not, the alerts reach Redis through the
    ACL user, a wrong token is refused and counted, and neither secret is in the log."""
    cert, key = make_cert(tmp_path)
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    port = free_port()
    feed = acl_user.replace("/0", "/0/ticks") + "?block_ms=100&start=0"
    log_path = tmp_path / "monitor.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--book", str(SAMPLE), "--feed", feed,
             "--redis", acl_user, "--alerts-stream", "sec:alerts", "--token-file", str(tok),
             "--tls-cert", str(cert), "--tls-key", str(key), "--listen", f"127.0.0.1:{port}",
             "--log-level", "debug"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ctx = client_ctx(cert)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if https_get(port, "/healthz", ctx)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        # https: the token is needed, and works
        assert https_get(port, "/metrics", ctx)[0] == 401
        st, body = https_get(port, "/metrics", ctx, {"Authorization": f"Bearer {TOKEN}"})
        assert st == 200 and b'mm_server_refused_total{reason="auth"} 1.0' in body
        # cleartext HTTP on the TLS port gets no answer
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3).read()

        async def wss() -> list[dict]:
            url = f"wss://127.0.0.1:{port}/ws/alerts"
            with pytest.raises(InvalidStatus) as ei:
                async with connect(url, ssl=ctx, additional_headers={
                        "Authorization": "Bearer wrong-token-0000000000"}):
                    pass
            assert ei.value.response.status_code == 401
            got = []
            async with connect(url, ssl=ctx,
                               additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                while not got or got[-1]["kind"] != "HEARTBEAT":
                    got.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
            return got

        frames = asyncio.run(wss())
        snap = {f["account_id"] for f in frames if f["kind"] == "SNAPSHOT"}
        assert snap, "the sample book has open breaches: the snapshot lists them"
        # the start-up announcements reached Redis through the ACL user
        r = redis.Redis.from_url(acl_user)
        deadline = time.monotonic() + 20
        while r.xlen("sec:alerts") < len(snap) and time.monotonic() < deadline:
            time.sleep(0.1)
        announced = {orjson.loads(f[b"data"])["account_id"]
                     for _, f in r.xrange("sec:alerts")}
        assert snap <= announced
        r.close()
        st, body = https_get(port, "/metrics", ctx, {"Authorization": f"Bearer {TOKEN}"})
        assert b'mm_server_refused_total{reason="auth"} 2.0' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert " DEBUG " in text  # debug logging was on: the library logs were in play
    assert TOKEN not in text
    assert REDIS_PASSWORD not in text
    assert "wrong-token-0000000000" not in text


class TlsRedis:
    """A private redis-server that only speaks TLS, on a free loopback port."""

    def __init__(self, workdir: Path, cert: Path, key: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", "0", "--tls-port", str(self.port),
             "--bind", "127.0.0.1", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
             "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--requirepass", REDIS_PASSWORD],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_rediss_to_a_tls_redis_server(tmp_path, caplog):
    """The outbox delivers over rediss:// (CA from the URL) with a password; the password is
    masked in its stats and never logged."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found")
    from monitor.adapters.outbox import RedisOutbox

    cert, key = make_cert(tmp_path)
    srv = TlsRedis(tmp_path, cert, key)
    url = (f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{srv.port}/0?ssl_ca_certs={cert}"
           "&ssl_cert_reqs=required")
    try:
        r = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if srv.proc.poll() is not None:
                    pytest.skip("this redis-server build does not support TLS: "
                                + srv.proc.stdout.read().decode(errors="replace")[-300:])
                assert time.monotonic() < deadline
                time.sleep(0.05)

        async def deliver() -> dict:
            ob = RedisOutbox(url, stream="tls:alerts", spill_dir=str(tmp_path / "spill"))
            task = asyncio.create_task(ob.run())
            ob.publish([{"event_id": f"e{i}", "seq": i, "kind": "TIER_CHANGE"}
                        for i in range(1, 101)])
            assert await ob.drain(timeout=20)
            stats = ob.stats()
            await ob.aclose()
            task.cancel()
            return stats

        caplog.set_level("DEBUG")
        stats = asyncio.run(deliver())
        assert stats["connected"] and REDIS_PASSWORD not in json.dumps(stats, default=str)
        assert [orjson.loads(f[b"data"])["seq"] for _, f in r.xrange("tls:alerts")] == \
            list(range(1, 101))
        # a cleartext client cannot talk to the TLS port
        plain = redis.Redis(port=srv.port, password=REDIS_PASSWORD, socket_timeout=2)
        with pytest.raises(redis.RedisError):
            plain.ping()
        r.close()
    finally:
        srv.stop()
    assert not [rec for rec in caplog.records if REDIS_PASSWORD in rec.getMessage()]


def test_tls_config_errors_are_typed(tmp_path):
    assert RunConfig().ssl_context() is None
    with pytest.raises(ConfigError, match="both"):
        RunConfig(tls_cert="x.pem").ssl_context()
    with pytest.raises(ConfigError, match="cannot read"):
        RunConfig(tls_cert=str(tmp_path / "no.pem"), tls_key=str(tmp_path / "no.key")
                  ).ssl_context()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError):
        RunConfig(tls_cert=str(junk), tls_key=str(junk)).ssl_context()


def test_loopback_by_default_and_token_rules(monkeypatch, tmp_path):
    from monitor.web.server import AlertServer

    assert RunConfig().host_port[0] == "127.0.0.1"
    import inspect

    assert inspect.signature(AlertServer).parameters["host"].default == "127.0.0.1"
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="at least 16"):
        RunConfig(token_file=str(short)).resolve_token()
    monkeypatch.setenv("MARGIN_MONITOR_TOKEN", TOKEN)
    assert RunConfig().resolve_token() == TOKEN
    monkeypatch.delenv("MARGIN_MONITOR_TOKEN")
    a, b = RunConfig().resolve_token(), RunConfig().resolve_token()
    assert a != b and len(a) >= 32  # random per run when none is configured
    assert TOKEN not in repr(RunConfig(token=TOKEN))


def test_secret_comparisons_are_constant_time():
    """Every comparison against the token, the desk session, a webhook signature or an alert
    signature goes through hmac.compare_digest: no `==` / `!=` / `in` on those names in the
    sources."""
    secret_names = {"_token", "token", "_session", "session", "signature", "cred", "cand",
                    "secret", "webhook_secret", "sig", "mac"}
    files = [*sorted((ROOT / "monitor" / "web").rglob("*.py")),
             *sorted((ROOT / "monitor" / "desk").rglob("*.py")),
             ROOT / "monitor" / "liquidator" / "hooks.py",
             ROOT / "monitor" / "adapters" / "signing.py"]
    bad = []
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                    isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", None)
                         for n in ast.walk(node)}
                if names & secret_names:
                    bad.append(f"{f.name}:{node.lineno}")
    assert not bad, f"non-constant-time secret comparison at {bad}"
    assert any("hmac.compare_digest" in f.read_text() for f in files if "web" in f.parts)
