"""Replay a tick file: JSON Lines, CSV or Parquet.

- `.jsonl` / `.ndjson` / `.json` (optionally `.gz`): one message per line (a tick object or an
  array of ticks, as on the wire); blank lines are skipped.
- `.csv` (optionally `.gz`) and `.parquet`: columns `symbol`, `price` and optionally `ts`; other
  columns are ignored. `price` may be numeric or decimal text; `ts` integer ns (Parquet timestamp
  columns are converted to ns). Empty / null cells count as missing (a missing ts means receive
  time).

Rows are validated by the same `TickParser` as live feeds (bad rows are counted, never applied)
and delivered in file order, in blocks of `batch` rows (lines for JSONL).

Pacing: by default as fast as possible (yielding to the event loop between blocks). With
`speed=S` the ticks are paced by their exchange ts, S times real time: a tick with ts t is
delivered at about w0 + (t − t0) / S, in batches of `window_ms` of wall time. Pacing follows the
running maximum of ts, so ticks that are out of order across symbols do not make it stall, and
ticks without a ts (receive time) do not pace. File reads are blocking but short (one block).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np

from feeds.base import BaseFeed
from feeds.net import parse_params
from feeds.ticks import TickBatch

FORMATS = ("jsonl", "csv", "parquet")
PARAMS = {"speed": float, "batch": int, "window_ms": float, "format": str}


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext == ".csv":
        return "csv"
    if ext in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(
        f"replay: cannot tell the format of {path.name!r} (use ?format=jsonl|csv|parquet)"
    )


class ReplayFeed(BaseFeed):
    def __init__(self, universe, path, *, speed: float | None = None, batch: int = 1000,
                 window_ms: float = 10.0, format: str | None = None, name: str | None = None,
                 max_message_bytes: int = 1 << 20):
        self.path = Path(path)
        super().__init__(universe, name=name or f"replay:{self.path.name}",
                         max_message_bytes=max_message_bytes)
        self.format = format or detect_format(self.path)
        if self.format not in FORMATS:
            raise ValueError(f"replay: unknown format {self.format!r} (known: {FORMATS})")
        if batch <= 0:
            raise ValueError("replay: batch must be positive")
        self.speed = speed if speed and speed > 0 else None
        self.batch = int(batch)
        self.window_ms = float(window_ms)

    @classmethod
    def from_spec(cls, rest: str, universe, **kw) -> ReplayFeed:
        """`rest` is what follows "replay:": "PATH" or "PATH?speed=2&batch=500"."""
        path, query = rest, ""
        if "?" in rest:
            head, _, tail = rest.rpartition("?")
            if "=" in tail:
                path, query = head, tail
        if not path:
            raise ValueError("replay: missing file path")
        params = parse_params(query, PARAMS, "replay")
        params.update(kw)
        return cls(universe, path, **params)

    # -- reading (synchronous generators of validated batches) ------------------------------

    def blocks(self) -> Iterator[TickBatch]:
        if self.format == "jsonl":
            yield from self._jsonl()
        elif self.format == "csv":
            yield from self._csv()
        else:
            yield from self._parquet()

    def _jsonl(self) -> Iterator[TickBatch]:
        opener = gzip.open if self.path.suffix.lower() == ".gz" else open
        with opener(self.path, "rb") as f:
            while True:
                lines = list(itertools.islice(f, self.batch))
                if not lines:
                    return
                msgs = [ln for ln in (x.strip() for x in lines) if ln]
                if msgs:
                    yield self.parser.parse_many(msgs)

    def _csv(self) -> Iterator[TickBatch]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        as_text = {"symbol": pa.string(), "price": pa.string(), "ts": pa.string()}
        reader = pcsv.open_csv(
            str(self.path),
            read_options=pcsv.ReadOptions(block_size=max(1 << 16, self.batch * 64)),
            convert_options=pcsv.ConvertOptions(
                column_types=as_text, include_columns=["symbol", "price", "ts"],
                include_missing_columns=True, strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        for rb in reader:
            yield from self._record_batch(rb)

    def _parquet(self) -> Iterator[TickBatch]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        names = set(pf.schema_arrow.names)
        missing = {"symbol", "price"} - names
        if missing:
            raise ValueError(f"replay: {self.path.name} has no column(s) {sorted(missing)}")
        cols = ["symbol", "price"] + (["ts"] if "ts" in names else [])
        for rb in pf.iter_batches(batch_size=self.batch, columns=cols):
            yield from self._record_batch(rb)

    def _record_batch(self, rb) -> Iterator[TickBatch]:
        for start in range(0, rb.num_rows, self.batch):
            part = rb.slice(start, self.batch)
            names = part.schema.names
            symbols = part.column(names.index("symbol")).to_pylist()
            prices = _price_column(part.column(names.index("price")))
            ts = _ts_column(part.column(names.index("ts"))) if "ts" in names else None
            yield self.parser.parse_columns(symbols, prices, ts)

    # -- the Feed protocol -----------------------------------------------------------------

    async def batches(self) -> AsyncIterator[TickBatch]:
        window_ns = self.window_ms * 1e6
        t0 = w0 = None
        try:
            for block in self.blocks():
                if self.closed:
                    return
                if not len(block):
                    continue
                if self.speed is None:
                    await asyncio.sleep(0)
                    yield block
                    continue
                tsm = np.maximum.accumulate(block.ts)
                if t0 is None:
                    t0, w0 = int(tsm[0]), time.monotonic()
                # split where the paced wall-clock window changes
                win = ((tsm - t0) / self.speed // window_ns).astype(np.int64)
                cuts = np.flatnonzero(np.diff(win)) + 1
                bounds = [0, *cuts.tolist(), len(block)]
                for a, b in itertools.pairwise(bounds):
                    due = w0 + (int(tsm[a]) - t0) / self.speed / 1e9
                    delay = due - time.monotonic()
                    await asyncio.sleep(delay if delay > 0 else 0)
                    if self.closed:
                        return
                    yield TickBatch(block.sec[a:b], block.price[a:b], block.ts[a:b],
                                    block.recv_ns)
        finally:
            await self.aclose()


def _price_column(col):
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    numeric = pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)
    if numeric or pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            as_float = pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return col.to_pylist()  # per-element classification in the parser
        if as_float.null_count == 0:
            return as_float.to_numpy(zero_copy_only=False)
        return as_float.to_pylist()  # None -> missing_field
    return col.to_pylist()


def _ts_column(col):
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.null_count == len(col):
        return None
    t = col.type
    try:
        if pa.types.is_timestamp(t):
            col = pc.cast(pc.cast(col, pa.timestamp("ns")), pa.int64())
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            col = pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return col.to_pylist()  # text that is not an integer -> malformed
    if pa.types.is_integer(col.type) and col.null_count == 0:
        return col.to_numpy(zero_copy_only=False)
    return col.to_pylist()
