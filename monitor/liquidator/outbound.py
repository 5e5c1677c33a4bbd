"""Outbound HTTP of the liquidator (the webhook hook and the HTTP repricer) on ``httpx``.

One :class:`OutboundClient` per target, created with the hook or repricer and closed with the
worker (``aclose``): one ``httpx.AsyncClient`` whose pool keeps connections alive between calls
(no new TCP + TLS handshake per delivery, no thread per call). The pool is bounded
(``max_connections``: the worker's ``concurrency``, as no more calls run at once), and each
phase has its own timeout: connect (TCP and the TLS handshake), write, read (each wait for the
answer), pool (waiting for a free connection).

TLS is verified against the system's CA store, or a PEM bundle (``ca_file``); an optional client
certificate (``client_cert``, ``client_key``) gives mutual TLS. There is no switch to turn
verification off. ``user:password@`` in a URL is taken out of the URL and sent as HTTP Basic
authentication, so no URL this module hands to httpx (whose request log prints URLs) carries a
password; httpx's log lines are masked as well (``password=`` in a query).

Environment proxies and ``.netrc`` are not used (``trust_env=False``) and redirects are not
followed (a 3xx is an answer like any other).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from feeds.net import mask_url
from monitor.errors import OutboundError


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Timeouts in seconds; the defaults are the liquidator config's (docs/liquidation.md)."""

    connect_timeout: float = 5.0
    read_timeout: float = 5.0
    write_timeout: float = 5.0
    pool_timeout: float = 5.0
    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""
    max_connections: int = 4
    keepalive_expiry: float = 5.0

    @classmethod
    def uniform(cls, timeout: float) -> HttpSettings:
        """Every timeout the same (the single ``timeout`` of the older constructors)."""
        t = float(timeout)
        return cls(connect_timeout=t, read_timeout=t, write_timeout=t, pool_timeout=t)

    @property
    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_timeout, read=self.read_timeout,
                             write=self.write_timeout, pool=self.pool_timeout)

    @property
    def limits(self) -> httpx.Limits:
        n = max(1, int(self.max_connections))
        return httpx.Limits(max_connections=n, max_keepalive_connections=n,
                            keepalive_expiry=self.keepalive_expiry)


def ssl_context(settings: HttpSettings, what: str) -> ssl.SSLContext:
    """A verifying client context: the system's CA store or ``ca_file``; the client certificate
    when one is configured. ValueError (naming ``what``) for a file that cannot be used."""
    try:
        ctx = ssl.create_default_context(cafile=settings.ca_file or None)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"{what}: cannot use the CA file {settings.ca_file!r}: {e}") from None
    ctx.minimum_version = max(ctx.minimum_version, ssl.TLSVersion.TLSv1_2)
    if settings.client_key and not settings.client_cert:
        raise ValueError(f"{what}: a client key without a client certificate")
    if settings.client_cert:
        try:
            ctx.load_cert_chain(settings.client_cert, settings.client_key or None)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"{what}: cannot use the client certificate "
                             f"{settings.client_cert!r}: {e}") from None
    return ctx


def split_userinfo(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """``url`` without ``user:password@``, and the Basic credentials it carried (or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))


class OutboundClient:
    """A lazily created, pooled ``httpx.AsyncClient`` for one target; :meth:`aclose` closes it
    (a later call creates a new one, e.g. when the worker runs again on another loop)."""

    def __init__(self, settings: HttpSettings, *, what: str,
                 auth: httpx.BasicAuth | None = None,
                 verify: ssl.SSLContext | None = None):
        self.settings = settings
        self._auth = auth
        # built now, also for an http:// URL, so a bad CA or certificate file stops the start
        self._verify = verify if verify is not None else ssl_context(settings, what)
        self._client: httpx.AsyncClient | None = None

    def _get(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.settings
            self._client = httpx.AsyncClient(
                auth=self._auth, verify=self._verify, timeout=s.timeout, limits=s.limits,
                follow_redirects=False, trust_env=False)
        return self._client

    async def request(self, method: str, url: str, *, headers: dict[str, str],
                      content: bytes | None = None, limit: int) -> tuple[int, bytes]:
        """One request; the status and at most ``limit`` bytes of the answer's body. A body
        read to its end leaves the connection in the pool; a longer one closes it."""
        client = self._get()
        try:
            req = client.build_request(method, url, headers=headers, content=content)
            resp = await client.send(req, stream=True)
            try:
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        break
                return resp.status_code, bytes(body[:limit])
            finally:
                await resp.aclose()
        except (httpx.HTTPError, OSError) as e:
            detail = str(e).strip()
            raise OutboundError(type(e).__name__ + (f": {detail}" if detail else "")) from None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class _MaskUrls(logging.Filter):
    """httpx logs every request with its URL: mask what :func:`mask_url` masks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(mask_url(str(a)) if isinstance(a, httpx.URL) else a
                                for a in record.args)
        return True


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _MaskUrls) for f in _httpx_log.filters):
    _httpx_log.addFilter(_MaskUrls())
