"""Shards of a book: account `a` belongs to shard ``crc32(a UTF-8) mod N`` (interfaces.md,
"Shards"), so any process, any language, can tell the owner of an account from its id alone.

A shard monitors only its accounts; every other table (securities, profiles, credit groups)
stays whole, since prices and rules are global. Filtering works on the book's tables before they
are converted, so a shard never builds the other shards' accounts, and a book already split
(``margin-monitor split-book``) loads unchanged under its own shard.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from monitor.errors import ConfigError

MAX_SHARDS = 4096
_SPEC = re.compile(r"^\s*(\d{1,4})\s*/\s*(\d{1,4})\s*$")


def shard_of(account_id: str, count: int) -> int:
    """The shard that owns `account_id` among `count` shards."""
    return zlib.crc32(account_id.encode("utf-8")) % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (0-based)."""

    index: int
    count: int

    def __post_init__(self):
        if not (1 <= self.count <= MAX_SHARDS and 0 <= self.index < self.count):
            raise ConfigError(f"shard {self.index}/{self.count}: need 0 <= I < N <= "
                              f"{MAX_SHARDS}")

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """``"I/N"``, e.g. ``"0/3"``."""
        m = _SPEC.match(str(spec))
        if m is None:
            raise ConfigError(f"shard {str(spec)[:40]!r}: expected I/N, e.g. 0/3")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, account_id: str) -> bool:
        return shard_of(account_id, self.count) == self.index

    @property
    def tag(self) -> str:
        """The Redis Cluster hash tag of the shard's keys: ``{I}``."""
        return "{" + str(self.index) + "}"

    def stream(self, base: str) -> str:
        """The shard's stream beside `base`: ``<base>:{I}``."""
        return f"{base}:{self.tag}"


def _ids(accounts: pa.Table, shard: Shard) -> tuple[pa.Array, pa.Array]:
    """(the shard's account ids, every account id of the book)."""
    ids = [a for a in accounts.column("account_id").to_pylist() if isinstance(a, str)]
    return pa.array([a for a in ids if shard.owns(a)], pa.string()), pa.array(ids, pa.string())


def filter_tables(tables: dict[str, pa.Table], shard: Shard | None) -> dict[str, pa.Table]:
    """The tables of `shard`: every table with an ``account_id`` column keeps the rows of the
    shard's accounts, and the rows no shard owns (an id missing or not in the accounts table,
    so the book's checks still refuse them in every shard); the others are kept whole."""
    if shard is None or shard.count == 1 or "accounts" not in tables \
            or "account_id" not in tables["accounts"].column_names:
        return tables
    owned, known = _ids(tables["accounts"], shard)
    out = {}
    for name, t in tables.items():
        if "account_id" not in t.column_names:
            out[name] = t
            continue
        col = t.column("account_id")
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            out[name] = t  # not ids as text: the book's own checks refuse it
            continue
        if name == "accounts":
            keep = pc.or_(pc.is_in(col, value_set=owned), pc.is_null(col))
        else:
            keep = pc.or_(pc.is_in(col, value_set=owned), pc.invert(pc.is_in(col, value_set=known)))
        out[name] = t.filter(pc.fill_null(keep, True))
    return out


def split_tables(tables: dict[str, pa.Table], count: int) -> list[dict[str, pa.Table]]:
    """The book's tables cut into `count` shards."""
    return [filter_tables(tables, Shard(i, count)) for i in range(count)]


def write_tables(tables: dict[str, pa.Table], out_dir: str | Path, fmt: str = "parquet") -> None:
    """Every table to `out_dir/<name>.parquet` (or ``.csv``), creating the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for name, t in tables.items():
            pq.write_table(t, out / f"{name}.parquet")
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        for name, t in tables.items():
            pacsv.write_csv(t, out / f"{name}.csv")
    else:
        raise ValueError(f"unknown format {fmt!r}: use 'parquet' or 'csv'")
