"""Run configuration: a TOML file (`monitor.toml`), overridden by CLI flags.

```toml
book = "books/1m"                # JSON file or folder of tables
feed = "redis://md:6379/0/ticks" # required: synthetic[:scenario] (simulated prices) |
                                 # replay:PATH | ws://… | redis://…/STREAM/STREAM
redis = "redis://127.0.0.1:6379/0"   # optional; passwords and rediss:// supported, never logged
alerts_stream = "margin:alerts"
alerts_maxlen = 1000000
summary_key = "margin:alerts:summary"  # default "<alerts_stream>:summary"
summary_ttl_s = 5.0              # the summary key expires (default 5 heartbeats, >= 2 s)
source_grace_s = 10.0            # /healthz 503: feed or account events not live this long
stale_feed_unhealthy = true      # ... counting a stale (idle) tick feed as not live
cycle_stall_s = 10.0             # /healthz 503: ticks waiting this long for a cycle
listen = "127.0.0.1:8765"        # port 0 picks a free port
token_file = "secrets/token"     # or MARGIN_MONITOR_TOKEN; one token, or NAME ROLE TOKEN lines
alert_key_file = "secrets/alert.key"  # optional: sign every alert (HMAC-SHA256; see
                                 # docs/security.md): KEY_ID SECRET lines, the first signs,
                                 # chmod 600. Unsigned when not given
tls_cert = "secrets/cert.pem"    # optional: serve https:// and wss:// (with tls_key)
tls_key = "secrets/key.pem"
hysteresis = "0.005"             # 0.5 percentage points
sweep_share = 0.08
reach = "off"                    # off | auto | always: see docs/capacity.md
call_days = 2                    # T+N of profiles without call_days
no_limit_shock = "0.30"          # stress move of a security without a daily limit (§5)
contract_due_days = 5            # CONTRACT_DUE notice (trading days) of profiles without one
closures = ["2027-01-01"]        # weekday closures beyond exchange_calendars' XSHG (or extra
closures_file = "calendar/closures.txt"  # ones); re-read when it changes: docs/running.md
calendar_through = "2027-12-31"  # optional: the last day the closures cover
close_settle_s = 60              # ticks stamped up to 15:00 + this count for the close
spill_dir = "spill"
state_dir = "state"              # optional: periodic snapshots; a restart resumes from them
audit_dir = "audit"              # optional: audit records and the end-of-day snapshot
pretrade_listen = "127.0.0.1:8766"   # optional: POST /api/pretrade on a port of its own too
max_tcp_connections = 512        # the edge's limits (docs/security.md); these are the defaults
max_connections_per_client = 64
head_timeout_s = 5.0             # a whole request within this, else closed (slowloris)
keep_alive_s = 5.0               # an idle kept-alive connection is closed after this
max_body_bytes = 16384           # POST bodies over this: 413
desk_event_bytes = 268435456     # the risk desk's memory of recent events (256 MiB)
pattern_state_bytes = 67108864   # trading-pattern evidence held (64 MiB; docs/reliability.md)
credit_state_bytes = 67108864    # credit controls' per-account state (64 MiB)
audit_queue_bytes = 268435456    # audit records waiting for the disk (256 MiB)
max_tick_skew_s = 5.0            # ticks / account events timed further ahead of now are refused
redis_cluster = false            # true: every Redis URL is a node of a Redis Cluster
shard = "0/3"                    # optional: monitor only shard I of N (docs/scale-out.md);
                                 # alerts go to "<alerts_stream>:{I}", and "{shard}" in `events`
                                 # becomes "{I}" (a per-shard event stream)

[patterns.round_trips]           # trading-pattern rules, see docs/reports-and-audit.md
count = 3
window_s = 1800

[credit]                         # credit controls' rotation, see docs/credit-controls.md
slice_accounts = 16384
```
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path

from kernels.units import MAX_HYSTERESIS_BP
from monitor.book.shard import Shard
from monitor.errors import ConfigError
from monitor.settings import read_toml
from monitor.web.auth import NamedToken, parse_tokens


@dataclass(slots=True)
class RunConfig:
    book: str = ""
    feed: str = ""  # required: no default, a synthetic feed only when named
    events: str | None = None
    redis: str | None = None
    alerts_stream: str = "margin:alerts"
    alerts_maxlen: int = 1_000_000
    summary_key: str = ""  # default: "<alerts_stream>:summary"
    summary_ttl_s: float = 0.0  # the summary key expires after this; 0: 5 heartbeats (>= 2 s)
    listen: str = "127.0.0.1:8765"
    token_file: str | None = None
    token: str = field(default="", repr=False)
    tokens: list = field(default_factory=list, repr=False)  # resolve_tokens(): NamedToken list
    until_feed_ends: bool = False
    hysteresis: str = "0.005"
    sweep_share: float = 0.08
    reach: str = "off"  # reach mode of the engine: off | auto | always (docs/capacity.md)
    call_days: int = 2
    no_limit_shock: str = "0.30"  # the stress's move of a security without a daily limit
    contract_due_days: int = 5  # CONTRACT_DUE this many trading days before a term end
    holidays: list[str] = field(default_factory=list)  # the older name of `closures`
    closures: list[str] = field(default_factory=list)  # weekday closures (ISO dates)
    closures_file: str | None = None  # one ISO date a line (monitor/app/closures.py)
    calendar_through: str | None = None  # the last day the closures cover
    close_settle_s: float = 60.0
    spill_dir: str = "spill"
    heartbeat_s: float = 1.0
    state_dir: str | None = None  # snapshots for restart (monitor/snapshot.py); off if unset
    snapshot_interval_s: float = 30.0
    stale_feed_s: float = 5.0  # no tick for this long: the summary says the feed is stale
    # a tick or account event timed more than this ahead of the monitor's clock is refused
    # (future_ts / bad_ts): one bad clock cannot freeze a symbol's ordering (reliability.md)
    max_tick_skew_s: float = 5.0
    # /healthz 503 when the feed or the account-event source is not live for longer than this
    source_grace_s: float = 10.0
    stale_feed_unhealthy: bool = True  # a stale (idle) tick feed counts as not live
    cycle_stall_s: float = 10.0  # /healthz 503 when ticks wait longer than this for a cycle
    max_connections: int = 64
    ws_client_queue: int = 10_000  # frames queued per websocket client before it is dropped
    # the HTTP edge's limits (monitor/web/limits.py, docs/security.md)
    max_tcp_connections: int = 512
    max_connections_per_client: int = 64
    head_timeout_s: float = 5.0
    keep_alive_s: float = 5.0
    max_body_bytes: int = 16 * 1024
    tls_cert: str | None = None
    tls_key: str | None = None
    # HMAC keys of the alert stream (monitor/adapters/signing.py, docs/security.md); unsigned
    # alerts when unset
    alert_key_file: str | None = None
    # trading-pattern watch rules ([patterns] table; monitor/patterns.py, reports-and-audit.md)
    patterns: dict = field(default_factory=dict)
    audit_dir: str | None = None  # audit records, intraday minimum, end-of-day snapshot
    # the pre-trade listener alias (monitor/web/pretrade.py, credit-controls.md); off if unset
    pretrade_listen: str | None = None
    pretrade_max_connections: int = 256
    pretrade_idle_timeout_s: float = 30.0
    pretrade_hold_s: float = 30.0  # a check's "reserve": true hold lapses after this
    # the liquidator's approvals and kill switch, over HTTP (docs/liquidation.md): its Redis
    # (default: `redis`) and key prefix
    liquidator_redis: str | None = None
    liquidator_key_prefix: str = "margin:liq"
    credit: dict = field(default_factory=dict)  # [credit] table: monitor/credit.py CreditConfig
    desk_event_bytes: int = 256 * 2**20  # the risk desk's event memory (docs/risk-desk.md)
    # byte caps of the in-memory state that grows with the input (docs/reliability.md):
    # the oldest is dropped first, counted on /metrics
    pattern_state_bytes: int = 64 * 2**20
    credit_state_bytes: int = 64 * 2**20
    audit_queue_bytes: int = 256 * 2**20
    shard: str = ""  # "I/N": monitor only shard I of N (monitor/book/shard.py); "" all
    redis_cluster: bool = False  # every Redis URL is a node of a Redis Cluster

    @property
    def shard_spec(self) -> Shard | None:
        """The shard this monitor runs (ConfigError when `shard` is not I/N)."""
        return Shard.parse(self.shard) if str(self.shard or "").strip() else None

    @property
    def alerts_stream_resolved(self) -> str:
        """The stream alerts go to: `alerts_stream`, or a shard's ``<alerts_stream>:{I}``."""
        sh = self.shard_spec
        return sh.stream(self.alerts_stream) if sh is not None else self.alerts_stream

    @property
    def events_resolved(self) -> str | None:
        """The account-event source, ``{shard}`` replaced by the shard's hash tag ``{I}``."""
        sh = self.shard_spec
        if self.events and sh is not None:
            return self.events.replace("{shard}", sh.tag)
        return self.events

    @property
    def summary_key_resolved(self) -> str:
        """The summary key: `summary_key`, else derived from the alert stream, so two monitors
        on one Redis never overwrite each other's summary."""
        return self.summary_key or f"{self.alerts_stream_resolved}:summary"

    @property
    def summary_ttl_resolved(self) -> float:
        """Seconds the summary key lives after each write (a dead monitor's summary expires)."""
        return float(self.summary_ttl_s) if self.summary_ttl_s > 0 else max(
            5 * float(self.heartbeat_s), 2.0)

    @property
    def hysteresis_bp(self) -> int:
        try:
            bp = Decimal(str(self.hysteresis)) * 10_000
        except ArithmeticError:
            bp = Decimal(-1)
        if not bp.is_finite() or not 0 <= bp <= MAX_HYSTERESIS_BP or bp != int(bp):
            raise ConfigError(f"hysteresis: expected a ratio from 0 to "
                              f"{MAX_HYSTERESIS_BP / 10_000:.2f} in whole basis points, got "
                              f"{self.hysteresis!r}")
        return int(bp)

    @property
    def no_limit_shock_bp(self) -> int:
        try:
            bp = Decimal(str(self.no_limit_shock)) * 10_000
        except ArithmeticError:
            bp = Decimal(-1)
        if not bp.is_finite() or not 0 <= bp < 10_000 or bp != int(bp):
            raise ConfigError(f"no_limit_shock: expected a fraction in [0, 1) in whole basis "
                              f"points, got {self.no_limit_shock!r}")
        return int(bp)

    @property
    def max_tick_skew_ns(self) -> int:
        v = self.max_tick_skew_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 86_400:
            raise ConfigError(f"max_tick_skew_s: expected seconds from 0 to 86400, got {v!r}")
        return int(v * 1e9)

    @property
    def contract_due(self) -> int:
        v = self.contract_due_days
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 60:
            raise ConfigError(f"contract_due_days: expected trading days from 1 to 60, got {v!r}")
        return v

    @property
    def reach_mode(self) -> str:
        if self.reach not in ("auto", "always", "off"):
            raise ConfigError(f"reach: expected auto, always or off, got {self.reach!r}")
        return self.reach

    @property
    def desk_event_budget(self) -> int:
        v = self.desk_event_bytes
        if not isinstance(v, int) or isinstance(v, bool) or v < 2**20:
            raise ConfigError(f"desk_event_bytes: expected an integer number of bytes >= 1048576 "
                              f"(1 MiB), got {v!r}")
        return v

    def byte_cap(self, name: str) -> int:
        """`pattern_state_bytes`, `credit_state_bytes` or `audit_queue_bytes`, checked."""
        v = getattr(self, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 2**16:
            raise ConfigError(f"{name}: expected an integer number of bytes >= 65536, got "
                              f"{v!r}")
        return v

    def alert_keys(self):
        """The signing keys of `alert_key_file` (monitor/adapters/signing.py), or None (the
        alerts go out unsigned). ConfigError for a bad file or permissions."""
        if not self.alert_key_file:
            return None
        from monitor.adapters.signing import load_keys

        return load_keys(self.alert_key_file, "alert_key_file")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        try:
            return host or "127.0.0.1", int(port)
        except ValueError:
            raise ConfigError(f"listen: expected HOST:PORT, got {self.listen!r}") from None

    @property
    def pretrade_host_port(self) -> tuple[str, int]:
        host, _, port = str(self.pretrade_listen).rpartition(":")
        try:
            p = int(port)
        except ValueError:
            p = -1
        if not 0 <= p <= 65535:
            raise ConfigError(f"pretrade_listen: expected HOST:PORT, got {self.pretrade_listen!r}")
        return host.strip("[]") or "127.0.0.1", p

    def resolve_token(self) -> str:
        """Token from the token file, else MARGIN_MONITOR_TOKEN, else a fresh random one (a
        file of named tokens: its first)."""
        if self.token:
            return self.token
        return self.resolve_tokens()[0].token

    def resolve_tokens(self) -> list:
        """The accepted tokens (monitor/web/auth.py ``NamedToken``): the token file's (one bare
        token, or ``NAME ROLE TOKEN`` lines, docs/security.md), else the one token of
        ``token``, MARGIN_MONITOR_TOKEN or a fresh random one (an unnamed approver)."""
        if self.tokens:
            return self.tokens
        if self.token_file and not self.token:
            try:
                text = Path(self.token_file).read_text()
            except OSError as e:
                raise ConfigError(f"token_file: cannot read it: {e.strerror}") from None
            self.tokens = parse_tokens(text, "token_file")
        else:
            tok = (self.token or os.environ.get("MARGIN_MONITOR_TOKEN")
                   or secrets.token_urlsafe(24))
            self.tokens = [NamedToken("token", "approver", tok, named=False)]
        self.token = self.tokens[0].token
        return self.tokens

    def ssl_context(self):
        """The server-side TLS context of ``tls_cert`` / ``tls_key`` (PEM), or None without
        them; TLS 1.2 or newer."""
        if not self.tls_cert and not self.tls_key:
            return None
        if not (self.tls_cert and self.tls_key):
            raise ConfigError("tls_cert and tls_key: give both (PEM files) or neither")
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except OSError as e:
            raise ConfigError(f"tls_cert / tls_key: cannot read: {e.strerror or e}") from None
        except ssl.SSLError as e:
            raise ConfigError(f"tls_cert / tls_key: not a usable PEM certificate and key: "
                              f"{e.reason or e}") from None
        return ctx


def load_config(path: str | None, overrides: dict) -> RunConfig:
    cfg = RunConfig()
    if path:
        known = {f.name for f in fields(RunConfig)} - {"token", "tokens"}
        for key, v in read_toml(path, known).items():
            setattr(cfg, key, v)
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg
