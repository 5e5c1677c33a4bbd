"""One authentication path for every HTTP request and websocket handshake of the edge, and the
roles of named tokens.

A request proves a token by an ``Authorization: Bearer <token>`` header, a ``?token=`` query
value (browsers' websockets cannot set headers) or the desk's session cookie. Every credential
a request gives must be right: a wrong header with a right ``?token=`` (or the reverse) is
refused, and so is a request whose header and query name different tokens. The cookie counts
only when the request gives neither header nor query token (so logging in again with
``/?token=`` works over a stale cookie). Every comparison is ``hmac.compare_digest`` against
every known token, with no early exit.

The session cookie holds an HMAC of the token (never the token), so changing a token ends its
sessions.

Tokens and roles (the token file, :func:`parse_tokens`)::

    # NAME        ROLE      TOKEN
    ann.li        viewer    6f1c0b9e2d7a4c58b3e1f0a9d8c7b6a5
    desk-2        operator  0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b
    risk-head     approver  9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d

``viewer`` reads everything the monitor shows (desk, ``/api/`` queries, ``/metrics``, the
alert channel, the pre-trade check, the approvals list and the kill switch's state);
``operator`` also acknowledges alerts; ``approver`` also approves and rejects liquidation plans
and turns the kill switch on and off. A file holding one bare token (the format before names) is
one unnamed ``approver``: everything works as it did, and an acknowledgement records the name the
operator typed. With named tokens every acknowledgement, decision and kill-switch change records
the token's name, whatever the client says.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

from monitor.errors import ConfigError

SESSION_SALT = b"margin-monitor desk session v1"
ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "ack"}),
    "approver": frozenset({"read", "ack", "approve"}),
}
MIN_TOKEN = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class NamedToken:
    """One token of the token file. ``named`` is False for a bare token (the old format)."""

    name: str
    role: str
    token: str = field(repr=False)
    named: bool = True


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request authenticated as, and how (``header``, ``query`` or ``cookie``)."""

    name: str
    role: str
    how: str
    named: bool = True

    def may(self, permission: str) -> bool:
        return permission in ROLES.get(self.role, frozenset())


def parse_tokens(text: str, source: str = "token_file") -> list[NamedToken]:
    """The tokens of a token file: one bare token, or ``NAME ROLE TOKEN`` lines (blank lines
    and ``#`` comments ignored). Raises ConfigError naming the line (never the token)."""
    lines = [(i, ln.split()) for i, ln in enumerate(text.splitlines(), 1)
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(f"{source}: no token in the file")
    if len(lines) == 1 and len(lines[0][1]) == 1:
        tok = lines[0][1][0]
        if len(tok) < MIN_TOKEN:
            raise ConfigError(f"{source}: the token must be at least {MIN_TOKEN} characters")
        return [NamedToken("token", "approver", tok, named=False)]
    out: list[NamedToken] = []
    names: set[str] = set()
    for i, parts in lines:
        if len(parts) != 3:
            raise ConfigError(f"{source}: line {i}: expected NAME ROLE TOKEN (or a file holding "
                              "one bare token)")
        name, role, tok = parts
        if not _NAME.match(name):
            raise ConfigError(f"{source}: line {i}: a name is 1-64 letters, digits, '.', '_', "
                              f"'@' or '-', got {name[:64]!r}")
        if role not in ROLES:
            raise ConfigError(f"{source}: line {i}: role {role[:20]!r}: expected one of "
                              f"{', '.join(ROLES)}")
        if len(tok) < MIN_TOKEN:
            raise ConfigError(f"{source}: line {i}: the token must be at least {MIN_TOKEN} "
                              "characters")
        if name in names:
            raise ConfigError(f"{source}: line {i}: name {name!r} given twice")
        names.add(name)
        for other in out:
            if hmac.compare_digest(other.token.encode(), tok.encode()):
                raise ConfigError(f"{source}: line {i}: the same token as {other.name!r}")
        out.append(NamedToken(name, role, tok))
    return out


class Credentials:
    """The tokens a listener accepts: one bare token (``token=``) or named ones (``tokens=``)."""

    def __init__(self, token: str | None = None, *,
                 tokens: list[NamedToken] | None = None) -> None:
        if tokens is None:
            if not token:
                raise ValueError("a non-empty token is needed")
            tokens = [NamedToken("token", "approver", token, named=False)]
        if not tokens:
            raise ValueError("at least one token is needed")
        self._entries = []
        for t in tokens:
            if not t.token or t.role not in ROLES:
                raise ValueError(f"token {t.name!r}: empty, or an unknown role {t.role!r}")
            secret = t.token.encode()
            self._entries.append((t, secret,
                                  hmac.new(secret, SESSION_SALT, "sha256").hexdigest().encode()))

    @property
    def named(self) -> bool:
        return any(t.named for t, _, _ in self._entries)

    def secrets(self) -> list[str]:
        """Every secret value (tokens, session values): for the log redaction."""
        out = []
        for t, _, sess in self._entries:
            out += [t.token, sess.decode()]
        return out

    def session_of(self, principal: Principal) -> str:
        """The session cookie value of ``principal``'s token."""
        for t, _, sess in self._entries:
            if t.name == principal.name:
                return sess.decode()
        raise KeyError(principal.name)

    def _match(self, given: bytes, *, session: bool = False) -> int:
        """Index of the entry ``given`` matches (compared with every entry), else -1."""
        found = -1
        for i, (_, secret, sess) in enumerate(self._entries):
            if hmac.compare_digest(given, sess if session else secret) and found < 0:
                found = i
        return found

    def _principal(self, i: int, how: str) -> Principal:
        t = self._entries[i][0]
        return Principal(t.name, t.role, how, t.named)

    def check(self, headers: list[tuple[bytes, bytes]], query_tokens: list[str],
              cookie_name: str, *, allow_query: bool = True,
              allow_cookie: bool = True) -> Principal | None:
        """The principal the request proves, or None. ``headers`` as in an ASGI scope
        (lower-case names); ``query_tokens`` every ``token`` query value."""
        found: set[int] = set()
        given = False
        wrong = False
        cookies: list[bytes] = []
        for hname, value in headers:
            if hname == b"authorization":
                given = True
                scheme, _, rest = value.strip().partition(b" ")
                i = self._match(rest.strip())
                if scheme.lower() != b"bearer" or i < 0:
                    wrong = True
                else:
                    found.add(i)
            elif hname == b"cookie":
                cookies.append(value)
        how = "header" if given else None
        if allow_query and query_tokens:
            given = True
            how = how or "query"
            for cand in query_tokens:
                i = self._match(cand.encode())
                if i < 0:
                    wrong = True
                else:
                    found.add(i)
        elif query_tokens:
            wrong = True  # given where this listener takes none
        if given:
            if wrong or len(found) != 1:
                return None
            return self._principal(found.pop(), how or "header")
        if not allow_cookie:
            return None
        want = cookie_name.encode()
        hit = -1
        for value in cookies:
            for part in value.split(b";"):
                cname, _, cval = part.strip().partition(b"=")
                if cname == want:
                    i = self._match(cval.strip(), session=True)
                    if i >= 0 and hit < 0:
                        hit = i
        return self._principal(hit, "cookie") if hit >= 0 else None
