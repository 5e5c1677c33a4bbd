"""One authentication path for every HTTP request and websocket handshake of the edge.

A request proves the token by an ``Authorization: Bearer <token>`` header, a ``?token=`` query
value (browsers' websockets cannot set headers) or the desk's session cookie. Every credential
a request gives must be right: a wrong header with a right ``?token=`` (or the reverse) is
refused, and so is a request whose header and query name different tokens. The cookie counts
only when the request gives neither header nor query token (so logging in again with
``/?token=`` works over a stale cookie). Every comparison is ``hmac.compare_digest`` against
every known token, with no early exit.

The session cookie holds an HMAC of the token (never the token), so changing the token ends
every session.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

SESSION_SALT = b"margin-monitor desk session v1"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request authenticated as, and how (``header``, ``query`` or ``cookie``)."""

    name: str
    role: str
    how: str


class Credentials:
    """The tokens a listener accepts (one today: ``token``, role ``approver``)."""

    def __init__(self, token: str, *, name: str = "token", role: str = "approver") -> None:
        if not token:
            raise ValueError("a non-empty token is needed")
        secret = token.encode()
        self._entries = [(name, role, secret,
                          hmac.new(secret, SESSION_SALT, "sha256").hexdigest().encode())]

    def secrets(self) -> list[str]:
        """Every secret value (tokens, session values): for the log redaction."""
        out = []
        for _, _, secret, sess in self._entries:
            out += [secret.decode(errors="replace"), sess.decode()]
        return out

    def session_of(self, principal: Principal) -> str:
        """The session cookie value of ``principal``'s token."""
        for name, _, _, sess in self._entries:
            if name == principal.name:
                return sess.decode()
        raise KeyError(principal.name)

    def _match(self, given: bytes, *, session: bool = False) -> int:
        """Index of the entry ``given`` matches (compared with every entry), else -1."""
        found = -1
        for i, (_, _, secret, sess) in enumerate(self._entries):
            if hmac.compare_digest(given, sess if session else secret) and found < 0:
                found = i
        return found

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
            name, role, _, _ = self._entries[found.pop()]
            return Principal(name, role, how or "header")
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
        if hit < 0:
            return None
        name, role, _, _ = self._entries[hit]
        return Principal(name, role, "cookie")
