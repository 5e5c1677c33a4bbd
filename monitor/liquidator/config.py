"""Liquidator configuration: a TOML file (`liquidator.toml`), overridden by CLI flags.

Its own file, not a table in `monitor.toml` (the monitor rejects settings it does not know).
Every key, with its default:

```toml
redis = "redis://127.0.0.1:6379/0"    # required (flag --redis); passwords and rediss:// fine
alerts_stream = "margin:alerts"       # the monitor's alert stream
group = "liquidator"                  # consumer group shared by every worker
consumer = ""                         # this worker's name; default "<hostname>-<pid>"
group_start = "0"                     # where a new group starts: "0" (whole stream) or "$"
hook = "redis:margin:orders"          # redis:STREAM | http(s)://URL | python:pkg.mod:function
mode = "auto"                         # auto | approve | notify, for profiles not in [modes]
dry_run = false                       # log the orders, never send them (own group and keys)
webhook_secret_file = ""              # HMAC key (>= 16 chars); else MARGIN_LIQ_WEBHOOK_SECRET
webhook_timeout = 5.0                 # read timeout: seconds to wait for the receiver's answer
webhook_connect_timeout = 5.0         # TCP connect + TLS handshake
webhook_write_timeout = 5.0           # sending the request
webhook_pool_timeout = 5.0            # waiting for a free pooled connection
webhook_ca_file = ""                  # PEM CA bundle for https:// (default: the system's)
webhook_client_cert = ""              # PEM client certificate (mutual TLS); "" = none
webhook_client_key = ""               # its key, when not in the certificate file
max_attempts = 5                      # hook attempts before the dead-letter stream
backoff_initial = 0.5                 # seconds; doubled per attempt, jittered
backoff_max = 30.0
claim_idle = 60.0                     # reclaim another worker's entry idle this long (XAUTOCLAIM)
lock_ttl = 30.0                       # in-progress marker; refreshed while the hook runs
max_deliveries = 20                   # an entry delivered more often goes to dead letters
cooldown = 60.0                       # per account, after its orders were sent
max_orders_per_second = 20            # all workers together (0 = unlimited)
max_plan_age = 5.0                    # seconds; an older plan is re-priced before it is sent
hold_outside_sessions = true          # a plan made outside a session waits for its release_at
repricer = ""                         # http(s)://MONITOR:PORT | python:pkg.mod:function | ""
repricer_token_file = ""              # the monitor's token; else MARGIN_MONITOR_TOKEN
repricer_timeout = 5.0                # read timeout, as webhook_timeout
repricer_connect_timeout = 5.0
repricer_write_timeout = 5.0
repricer_pool_timeout = 5.0
repricer_ca_file = ""                 # e.g. the certificate (or CA) of the monitor's tls_cert
http_keepalive_expiry = 5.0           # an idle pooled connection is closed after this long
key_prefix = "margin:liq"             # every key the liquidator writes starts with this
done_ttl = 604800.0                   # how long completed event ids are remembered (7 days)
concurrency = 4                       # entries one worker handles at once
block = 1.0                           # XREADGROUP BLOCK, seconds
log_level = "info"
metrics_listen = ""                   # HOST:PORT of /metrics, loopback only (port 0: any); off
alert_key_file = ""                   # the monitor's alert signing keys (docs/security.md): every
                                      # unsigned or badly signed alert is dead-lettered
insecure_unsigned_alerts = false      # `liquidator` refuses to start without alert_key_file
                                      # unless this is true (then nothing is verified)
confirm_plans = "auto"                # re-check each plan with the monitor before sending:
                                      # true | false | "auto" (on with an http(s) repricer)

[modes]                               # per line profile (the event's `profile`)
default = "auto"
conservative = "approve"
retail = "notify"
```
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.errors import ConfigError
from monitor.settings import read_toml

if TYPE_CHECKING:
    from monitor.liquidator.outbound import HttpSettings

MODES = ("auto", "approve", "notify")
_HTTP_TIMEOUTS = tuple(f"{t}_{k}_timeout" for t in ("webhook", "repricer")
                       for k in ("connect", "write", "pool")) + ("http_keepalive_expiry",)


@dataclass(slots=True)
class LiquidatorConfig:
    redis: str = ""
    alerts_stream: str = "margin:alerts"
    group: str = "liquidator"
    consumer: str = ""
    group_start: str = "0"
    hook: str = "redis:margin:orders"
    mode: str = "auto"
    modes: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    webhook_secret_file: str = ""
    webhook_secret: str = field(default="", repr=False)
    webhook_timeout: float = 5.0
    webhook_connect_timeout: float = 5.0
    webhook_write_timeout: float = 5.0
    webhook_pool_timeout: float = 5.0
    webhook_ca_file: str = ""
    webhook_client_cert: str = ""
    webhook_client_key: str = ""
    max_attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    claim_idle: float = 60.0
    lock_ttl: float = 30.0
    max_deliveries: int = 20
    cooldown: float = 60.0
    max_orders_per_second: int = 20
    max_plan_age: float = 5.0
    hold_outside_sessions: bool = True  # orders wait for the event's release_at (sessions)
    repricer: str = ""
    repricer_token_file: str = ""
    repricer_token: str = field(default="", repr=False)
    repricer_timeout: float = 5.0
    repricer_connect_timeout: float = 5.0
    repricer_write_timeout: float = 5.0
    repricer_pool_timeout: float = 5.0
    repricer_ca_file: str = ""
    http_keepalive_expiry: float = 5.0
    key_prefix: str = "margin:liq"
    redis_cluster: bool = False  # `redis` is a node of a Redis Cluster (see check())
    done_ttl: float = 7 * 86400.0
    concurrency: int = 4
    block: float = 1.0
    log_level: str = "info"
    metrics_listen: str = ""  # /metrics (monitor/liquidator/metrics.py); off when empty
    # signed alerts (monitor/adapters/signing.py, docs/security.md)
    alert_key_file: str = ""
    alert_keys: Any = field(default=None, repr=False)  # AlertKeys, read by resolve_secrets
    insecure_unsigned_alerts: bool = False
    # the plan re-check against the monitor before sending (docs/liquidation.md)
    confirm_plans: bool | str = "auto"

    @property
    def confirming(self) -> bool:
        """Whether plans are re-checked with the monitor (`confirm_plans`, resolved)."""
        if self.confirm_plans == "auto":
            return self.repricer.startswith(("http://", "https://"))
        return bool(self.confirm_plans)

    def mode_for(self, profile: str | None) -> str:
        """The mode of a profile; an account with its own line overrides has a derived
        profile `<base>+<lines>`, which takes the mode of `<base>`."""
        if profile is not None:
            if profile in self.modes:
                return self.modes[profile]
            base = profile.split("+", 1)[0]
            if base in self.modes:
                return self.modes[base]
        return self.mode

    def check(self) -> LiquidatorConfig:
        """Validate; raises ConfigError naming the setting. Returns self."""
        if not self.redis:
            raise ConfigError("no Redis: give --redis URL or `redis` in the config file")
        if not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("redis: expected a redis://, rediss:// or unix:// URL")
        for k in ("alerts_stream", "group", "key_prefix", "hook"):
            if not str(getattr(self, k)).strip():
                raise ConfigError(f"{k}: must not be empty")
        if self.redis_cluster:
            # one MULTI/EXEC commits an outcome: every key it touches must be in one slot
            tags = {"alerts_stream": hash_tag(self.alerts_stream),
                    "key_prefix": hash_tag(self.key_prefix + ":x")}
            if self.hook.startswith("redis:") and not self.hook.startswith("redis://"):
                tags["hook"] = hash_tag(self.hook[len("redis:"):])
            if None in tags.values() or len(set(tags.values())) > 1:
                raise ConfigError(
                    "redis_cluster: the alert stream, key_prefix and a redis: hook stream must "
                    "carry the same hash tag (one slot for each commit), e.g. margin:alerts:{0}"
                    ", margin:liq:{0}, redis:margin:orders:{0}; got " + ", ".join(
                        f"{k} {v or '(none)'}" for k, v in tags.items()))
        if self.group_start not in ("0", "$"):
            raise ConfigError("group_start: must be \"0\" or \"$\"")
        for name, m in [("mode", self.mode)] + [(f"modes.{p}", v) for p, v in self.modes.items()]:
            if m not in MODES:
                raise ConfigError(f"{name}: {m!r} is not one of {', '.join(MODES)}")
        for k in ("webhook_timeout", "backoff_initial", "backoff_max", "claim_idle", "lock_ttl",
                  "repricer_timeout", "done_ttl", "block", *_HTTP_TIMEOUTS):
            if not float(getattr(self, k)) > 0:
                raise ConfigError(f"{k}: must be > 0")
        for k in ("cooldown", "max_plan_age"):
            if float(getattr(self, k)) < 0:
                raise ConfigError(f"{k}: must be >= 0")
        v = self.max_orders_per_second
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError("max_orders_per_second: must be a whole number >= 0 (0: no limit)")
        for k in ("max_attempts", "max_deliveries", "concurrency"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{k}: must be a whole number >= 1")
        if self.metrics_listen:
            parse_listen(self.metrics_listen)
        if self.confirm_plans not in (True, False, "auto"):
            raise ConfigError("confirm_plans: must be true, false or \"auto\"")
        if self.confirm_plans is True and not self.repricer.startswith(("http://", "https://")):
            raise ConfigError("confirm_plans: needs the monitor's URL (repricer = "
                              "\"http(s)://MONITOR:PORT\") to re-check plans against")
        if not isinstance(self.insecure_unsigned_alerts, bool):
            raise ConfigError("insecure_unsigned_alerts: must be true or false")
        if not isinstance(self.hold_outside_sessions, bool):
            raise ConfigError("hold_outside_sessions: must be true or false")
        if not self.consumer:
            self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        return self

    def http_settings(self, target: str) -> HttpSettings:
        """The outbound HTTP settings of ``webhook`` or ``repricer`` (monitor/liquidator/
        outbound.py); the pool holds up to ``concurrency`` connections."""
        from monitor.liquidator.outbound import HttpSettings  # httpx only when needed

        if target not in ("webhook", "repricer"):
            raise ValueError(f"http_settings: no target {target!r}")
        p = f"{target}_"
        return HttpSettings(
            connect_timeout=getattr(self, p + "connect_timeout"),
            read_timeout=getattr(self, p + "timeout"),
            write_timeout=getattr(self, p + "write_timeout"),
            pool_timeout=getattr(self, p + "pool_timeout"),
            ca_file=getattr(self, p + "ca_file"),
            client_cert=getattr(self, p + "client_cert", ""),  # the webhook only
            client_key=getattr(self, p + "client_key", ""),
            max_connections=self.concurrency, keepalive_expiry=self.http_keepalive_expiry)

    def resolve_secrets(self) -> None:
        """Read the webhook secret and the repricer token (files, else the environment)."""
        if self.webhook_secret_file:
            self.webhook_secret = _read_secret(self.webhook_secret_file, "webhook_secret_file")
        elif not self.webhook_secret:
            self.webhook_secret = os.environ.get("MARGIN_LIQ_WEBHOOK_SECRET", "")
        if self.repricer_token_file:
            self.repricer_token = _read_secret(self.repricer_token_file, "repricer_token_file")
        elif not self.repricer_token:
            self.repricer_token = os.environ.get("MARGIN_MONITOR_TOKEN", "")
        if self.alert_key_file and self.alert_keys is None:
            from monitor.adapters.signing import load_keys

            self.alert_keys = load_keys(self.alert_key_file, "alert_key_file")

    def check_signing(self) -> None:
        """What `liquidator` checks before it starts: a key to verify the alerts with, or the
        explicit `insecure_unsigned_alerts`."""
        if not self.alert_key_file and not self.insecure_unsigned_alerts:
            raise ConfigError("no alert_key_file: the liquidator verifies the monitor's "
                              "signature on every alert (--alert-key-file, the monitor's "
                              "alert_key_file); to act on unsigned alerts anyway give "
                              "--insecure-unsigned-alerts (docs/security.md)")


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` on a loopback address (the endpoint has no token) -> (host, port)."""
    host, _, port = str(listen).rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not 0 <= p <= 65535:
        raise ConfigError(f"metrics_listen: expected HOST:PORT, got {listen!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"metrics_listen: {host!r} is not a loopback address; the "
                          "liquidator's /metrics has no token, so it binds 127.0.0.1 or ::1 only "
                          "(scrape it through a local agent)")
    return host, p


def hash_tag(key: str) -> str | None:
    """The Redis Cluster hash tag of `key` (what is between its first ``{`` and the next
    ``}``, when not empty), or None: keys with one tag share a slot."""
    i = key.find("{")
    j = key.find("}", i + 1) if i >= 0 else -1
    return key[i + 1:j] if i >= 0 and j > i + 1 else None


def _read_secret(path: str, key: str) -> str:
    try:
        s = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read it: {e.strerror}") from None
    if len(s) < 16:
        raise ConfigError(f"{key}: the secret must be at least 16 characters")
    return s


_SECRET_FIELDS = {"webhook_secret", "repricer_token", "alert_keys"}


def load_liquidator_config(path: str | None, overrides: dict) -> LiquidatorConfig:
    """Defaults, then the TOML file, then the flags (`None` = not given)."""
    cfg = LiquidatorConfig()
    known = {f.name for f in fields(LiquidatorConfig)} - _SECRET_FIELDS
    if path:
        for key, v in read_toml(path, known).items():
            if key == "modes":
                if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                    raise ConfigError(f"{path}: modes must be a table of profile = \"mode\"")
                v = dict(v)
            elif key == "confirm_plans":
                if v not in (True, False, "auto"):
                    raise ConfigError(f"{path}: confirm_plans must be true, false or \"auto\"")
            else:
                want = type(getattr(cfg, key))
                if want is float and isinstance(v, int) and not isinstance(v, bool):
                    v = float(v)
                if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                    raise ConfigError(f"{path}: {key} must be a {want.__name__}")
            setattr(cfg, key, v)
    for k, v in overrides.items():
        if v is None:
            continue
        if k == "mode":  # the flag decides for every profile
            cfg.modes = {}
        setattr(cfg, k, v)
    return cfg
