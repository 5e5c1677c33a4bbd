"""Run configuration: a TOML file (`monitor.toml`), overridden by CLI flags.

```toml
book = "books/1m"                # JSON file or folder of tables
feed = "synthetic:crash"         # synthetic[:scenario] | replay:PATH | ws://… | redis://…/STREAM
redis = "redis://127.0.0.1:6379/0"   # optional; passwords and rediss:// supported, never logged
alerts_stream = "margin:alerts"
alerts_maxlen = 1000000
listen = "127.0.0.1:8765"        # port 0 picks a free port
token_file = "secrets/token"     # or MARGIN_MONITOR_TOKEN in the environment
hysteresis = "0.005"             # 0.5 percentage points
sweep_share = 0.08
call_days = 2
holidays = ["2026-10-01"]
spill_dir = "spill"
```
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields
from datetime import date
from decimal import Decimal
from pathlib import Path


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


@dataclass(slots=True)
class RunConfig:
    book: str = ""
    feed: str = "synthetic"
    events: str | None = None
    redis: str | None = None
    alerts_stream: str = "margin:alerts"
    alerts_maxlen: int = 1_000_000
    summary_key: str = "margin:summary"
    listen: str = "127.0.0.1:8765"
    token_file: str | None = None
    token: str = field(default="", repr=False)
    until_feed_ends: bool = False
    hysteresis: str = "0.005"
    sweep_share: float = 0.08
    call_days: int = 2
    holidays: list[str] = field(default_factory=list)
    spill_dir: str = "spill"
    heartbeat_s: float = 1.0
    max_connections: int = 64

    @property
    def hysteresis_bp(self) -> int:
        return int(Decimal(str(self.hysteresis)) * 10_000)

    @property
    def holiday_dates(self) -> frozenset[date]:
        try:
            return frozenset(date.fromisoformat(d) for d in self.holidays)
        except ValueError as e:
            raise ConfigError(f"holidays: {e}") from None

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        try:
            return host or "127.0.0.1", int(port)
        except ValueError:
            raise ConfigError(f"listen: expected HOST:PORT, got {self.listen!r}") from None

    def resolve_token(self) -> str:
        """Token from the token file, else MARGIN_MONITOR_TOKEN, else a fresh random one."""
        if self.token:
            return self.token
        if self.token_file:
            try:
                tok = Path(self.token_file).read_text().strip()
            except OSError as e:
                raise ConfigError(f"token_file: cannot read it: {e.strerror}") from None
            if len(tok) < 16:
                raise ConfigError("token_file: the token must be at least 16 characters")
            self.token = tok
        else:
            self.token = os.environ.get("MARGIN_MONITOR_TOKEN") or secrets.token_urlsafe(24)
        return self.token


def read_toml(path: str, known: set[str]) -> dict:
    """The settings of a TOML file, `a-b` read as `a_b`; an unknown setting is an error."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    out = {}
    for k, v in data.items():
        key = k.replace("-", "_")
        if key not in known:
            raise ConfigError(f"{path}: unknown setting {k!r}")
        out[key] = v
    return out


def load_config(path: str | None, overrides: dict) -> RunConfig:
    cfg = RunConfig()
    if path:
        for key, v in read_toml(path, {f.name for f in fields(RunConfig)} - {"token"}).items():
            setattr(cfg, key, v)
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    return cfg
