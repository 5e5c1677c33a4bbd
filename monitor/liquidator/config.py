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
webhook_timeout = 5.0                 # seconds per POST
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
repricer_timeout = 5.0
key_prefix = "margin:liq"             # every key the liquidator writes starts with this
done_ttl = 604800.0                   # how long completed event ids are remembered (7 days)
concurrency = 4                       # entries one worker handles at once
block = 1.0                           # XREADGROUP BLOCK, seconds
log_level = "info"

[modes]                               # per line profile (the event's `profile`)
default = "auto"
conservative = "approve"
retail = "notify"
```
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

from monitor.errors import ConfigError
from monitor.settings import read_toml

MODES = ("auto", "approve", "notify")


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
    key_prefix: str = "margin:liq"
    done_ttl: float = 7 * 86400.0
    concurrency: int = 4
    block: float = 1.0
    log_level: str = "info"

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
        if self.group_start not in ("0", "$"):
            raise ConfigError("group_start: must be \"0\" or \"$\"")
        for name, m in [("mode", self.mode)] + [(f"modes.{p}", v) for p, v in self.modes.items()]:
            if m not in MODES:
                raise ConfigError(f"{name}: {m!r} is not one of {', '.join(MODES)}")
        for k in ("webhook_timeout", "backoff_initial", "backoff_max", "claim_idle", "lock_ttl",
                  "repricer_timeout", "done_ttl", "block"):
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
        if not isinstance(self.hold_outside_sessions, bool):
            raise ConfigError("hold_outside_sessions: must be true or false")
        if not self.consumer:
            self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        return self

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


def _read_secret(path: str, key: str) -> str:
    try:
        s = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read it: {e.strerror}") from None
    if len(s) < 16:
        raise ConfigError(f"{key}: the secret must be at least 16 characters")
    return s


_SECRET_FIELDS = {"webhook_secret", "repricer_token"}


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
