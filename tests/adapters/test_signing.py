"""Signed alerts (monitor/adapters/signing.py): the key file's format, permissions and errors
(never quoting a secret), HMAC-SHA256 of the exact `data` bytes with key rotation, and the
outbox signing every entry it writes to a real Redis, also events replayed from its spill
file after an outage."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os

import pytest
import redis
from test_outbox import make_events, outbox_for, wait_for

from monitor.adapters.signing import load_keys, parse_keys, write_key_file
from monitor.errors import ConfigError

K1 = "a" * 40
K2 = "b" * 48


def key_file(tmp_path, text: str, mode: int = 0o600, name: str = "alert.key") -> str:
    p = tmp_path / name
    p.write_text(text)
    os.chmod(p, mode)
    return str(p)


def test_key_file_format_and_errors_never_quote_a_secret(tmp_path):
    keys = parse_keys(f"# keys\n\nk2 {K2}\nk1 {K1}\n")
    assert keys.signing == "k2" and set(keys.keys) == {"k1", "k2"}
    assert K1 not in repr(keys) and K2 not in repr(keys)
    assert parse_keys(K1).signing == "default"  # one bare secret
    for text, msg in ((f"k1 {'x' * 31}", "at least 32"), (f"k1 {K1}\nk1 {K2}", "twice"),
                      (f"bad/id {K1}", "key id"), ("# nothing\n", "no key"),
                      (f"k1 {K1} extra", "KEY_ID SECRET"), (f"{K1}\n{K2}", "KEY_ID SECRET")):
        with pytest.raises(ConfigError, match=msg) as e:
            parse_keys(text)
        assert "x" * 31 not in str(e.value) and K1 not in str(e.value) \
            and K2 not in str(e.value)
    assert load_keys(key_file(tmp_path, f"k1 {K1}\n")).keys["k1"] == K1.encode()
    assert load_keys(key_file(tmp_path, f"k1 {K1}\n", 0o640, "g.key")).signing == "k1"
    for mode in (0o644, 0o604, 0o660, 0o602):
        with pytest.raises(ConfigError, match="permissions"):
            load_keys(key_file(tmp_path, f"k1 {K1}\n", mode, f"m{mode:o}.key"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(str(tmp_path / "missing.key"))
    fresh = tmp_path / "fresh.key"
    write_key_file(fresh)
    assert os.stat(fresh).st_mode & 0o777 == 0o600 and load_keys(str(fresh)).signing == "k1"


def test_sign_and_verify_with_rotation():
    data = b'{"event_id":"r-1","seq":1}'
    old = parse_keys(f"k1 {K1}")
    sig, kid = old.sign(data)
    assert kid == b"k1"
    assert sig == hmac.new(K1.encode(), data, hashlib.sha256).hexdigest().encode()
    assert old.verify(data, sig, kid) is None
    assert old.verify(data + b" ", sig, kid) == "bad_signature"  # the exact bytes
    assert old.verify(data, sig[:-1] + b"0" if sig[-1:] != b"0" else sig[:-1] + b"1",
                      kid) == "bad_signature"
    assert old.verify(data, sig, b"k9") == "bad_signature"
    assert old.verify(data, None, None) == old.verify(data, sig, None) == "unsigned"
    assert parse_keys(f"k1 {K2}").verify(data, sig, kid) == "bad_signature"  # another key
    # rotation: the verifier knows both keys; the monitor signs with the first of its file
    both = parse_keys(f"k2 {K2}\nk1 {K1}")
    assert both.verify(data, sig, kid) is None
    assert both.verify(data, *both.sign(data)) is None and both.sign(data)[1] == b"k2"
    assert old.verify(data, *both.sign(data)) == "bad_signature"


async def test_the_outbox_signs_every_entry_also_after_a_spill(redis_fresh, tmp_path):
    keys = parse_keys(f"k1 {K1}")
    url = redis_fresh.url
    ob = outbox_for(url, tmp_path, "t:signed", signer=keys, max_memory_events=20, batch=10)
    ob.start()
    sent = ob.publish(make_events(0, 50))
    assert await ob.drain(timeout=10)
    redis_fresh.stop()  # an outage (no persistence): the rest goes through the spill file
    for k in range(50, 250, 20):
        sent += ob.publish(make_events(k, 20))
        await asyncio.sleep(0.002)
    await wait_for(lambda: ob.stats()["spilled"] > 0, 5, "spilled")
    redis_fresh.start()
    assert await ob.drain(timeout=15)
    await ob.aclose()
    r = redis.Redis.from_url(url)
    entries = [f for _, f in r.xrange("t:signed")]
    r.close()
    assert [f[b"data"] for f in entries] == sent[50:]  # Redis restarted empty
    assert all(f[b"kid"] == b"k1" and keys.verify(f[b"data"], f[b"sig"], f[b"kid"]) is None
               for f in entries)
    # without a signer: unsigned, as before
    ob = outbox_for(url, tmp_path, "t:plain")
    ob.start()
    ob.publish(make_events(0, 3))
    assert await ob.drain(timeout=10)
    await ob.aclose()
    r = redis.Redis.from_url(url)
    assert all(set(f) == {b"data"} for _, f in r.xrange("t:plain"))
    r.close()
