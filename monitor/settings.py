"""Reading settings files: every process of the project (monitor, liquidator) reads TOML the
same way, and an unknown or misspelt setting is an error, never ignored."""

from __future__ import annotations

import tomllib
from pathlib import Path

from monitor.errors import ConfigError


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
