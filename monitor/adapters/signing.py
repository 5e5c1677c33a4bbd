"""Signed alerts: an HMAC-SHA256 of each alert's published bytes, so a consumer that acts on
alerts (the liquidator) can tell the monitor's events from anything else written to the stream.

The key file (`alert_key_file`, shared by the monitor and the liquidator) holds one key per
line, ``KEY_ID SECRET``, with blank lines and ``#`` comments ignored; one bare ``SECRET`` line
is the key ``default``. Key ids are 1-32 letters, digits, ``.``, ``_`` or ``-``; secrets at
least 32 characters (the bytes of the text are the key). The file must not be writable by its
group or readable or writable by others (``chmod 600``, or ``640`` for a group shared by two
service users), else it is refused.

The monitor signs with the file's **first** key; a verifier accepts every key in its file
(rotation: docs/security.md). Each alert stream entry then carries, next to ``data``:

    sig   lowercase hex of HMAC-SHA256(key, data)   (the exact bytes of ``data``)
    kid   the key id

Secrets never appear in ``repr``, errors or logs; comparisons use ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from monitor.errors import ConfigError

SIG_FIELD = b"sig"
KID_FIELD = b"kid"
MIN_SECRET = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


@dataclass(frozen=True, slots=True)
class AlertKeys:
    """The keys of one key file: `signing` (first) signs, every key verifies."""

    keys: dict[str, bytes] = field(repr=False)
    signing: str
    source: str = ""
    # per key, an HMAC with the key already absorbed, copied per message (cheaper than
    # hmac.new per message: 3.7-4.4 against 5.1-5.5 us for a 476-byte alert, 2-core machine)
    _base: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kid, key in self.keys.items():
            self._base[kid] = hmac.new(key, digestmod=hashlib.sha256)

    def _mac(self, kid: str, data: bytes) -> bytes:
        h = self._base[kid].copy()
        h.update(data)
        return h.hexdigest().encode()

    def sign(self, data: bytes) -> tuple[bytes, bytes]:
        """(sig, kid) fields for the stream entry of `data`."""
        return self._mac(self.signing, data), self.signing.encode()

    def verify(self, data: bytes | None, sig: bytes | None, kid: bytes | None) -> str | None:
        """None when `sig` is a valid signature of `data` by the key `kid`; else the reason:
        ``unsigned`` (no sig or kid) or ``bad_signature`` (unknown key, wrong signature)."""
        if sig is None or kid is None:
            return "unsigned"
        try:
            name = kid.decode("ascii")
        except UnicodeDecodeError:
            name = None
        if name not in self.keys or data is None:
            return "bad_signature"
        return None if hmac.compare_digest(self._mac(name, data), bytes(sig)) \
            else "bad_signature"


def check_private(path: str, setting: str) -> None:
    """ConfigError when `path` is group-writable or accessible by others."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read it: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{setting}: not a regular file")
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise ConfigError(f"{setting}: permissions {stat.S_IMODE(mode):o} let others read or "
                          "change the key; chmod 600 (or 640 for a shared group)")


def parse_keys(text: str, setting: str = "alert_key_file") -> AlertKeys:
    """The keys of a key file's text; ConfigError naming the line (never quoting a secret)."""
    keys: dict[str, bytes] = {}
    first = None
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    for n, ln in lines:
        parts = ln.split()
        if len(parts) == 1 and len(lines) == 1:
            kid, secret = "default", parts[0]
        elif len(parts) == 2:
            kid, secret = parts
        else:
            raise ConfigError(f"{setting}: line {n}: expected KEY_ID SECRET")
        if not _KID.match(kid):
            raise ConfigError(f"{setting}: line {n}: a key id is 1-32 letters, digits, '.', "
                              "'_' or '-'")
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"{setting}: line {n}: the secret must be at least {MIN_SECRET} "
                              "characters")
        if kid in keys:
            raise ConfigError(f"{setting}: line {n}: key id {kid!r} given twice")
        keys[kid] = secret.encode()
        first = first or kid
    if first is None:
        raise ConfigError(f"{setting}: no key in the file")
    return AlertKeys(keys, first)


def load_keys(path: str, setting: str = "alert_key_file") -> AlertKeys:
    """Read and check a key file (permissions, format)."""
    check_private(path, setting)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{setting}: cannot read it: "
                          f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
    k = parse_keys(text, setting)
    return AlertKeys(k.keys, k.signing, source=str(path))


def write_key_file(path: str | os.PathLike, key_id: str = "k1") -> None:
    """A fresh random key file (mode 600), e.g. for the demo."""
    import secrets

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# margin-monitor alert signing keys: KEY_ID SECRET (the first signs)\n"
                f"{key_id} {secrets.token_hex(32)}\n")
