"""State snapshots: a killed monitor comes back with its book, tiers, margin calls and `seq`.

Why: the live book drifts from the loaded one (fills, deposits, interest), and tiers, open calls
and the event sequence live only in memory. A restart from the book alone would forget all of
it and re-announce everything as new.

What (`--state-dir DIR`, `state_dir` in the config; off when not given): every
`snapshot_interval_s` the runtime copies the engine's state between two cycles, when nothing is
queued (`Engine.export_state`, with the credit controls' crossed state: `credit_*` arrays,
`credit_version` 1; a snapshot without them still loads), plus where it stood in its input
streams, and a thread writes:

    DIR/state-<run>-<seq>-<ns>.npz   the arrays (NumPy, uncompressed, no pickles)
    DIR/snapshot.json                the manifest: format, version, book fingerprint, run_id,
                                     seq, stream positions, the .npz name, size and SHA-256

each as temp file + fsync + rename (+ fsync of the folder); the manifest's rename is the commit
point, older .npz files are removed after it. On start with a manifest, the runtime restores
instead of calling `Engine.start` (`Engine.restore_state`), resumes the Redis tick and account-
event streams right after the recorded ids (a JSONL event file: after the recorded line count),
and continues `seq` after the highest one this run published (from the snapshot, the alert
stream's tail and the outbox spill file). A snapshot that is corrupt, of another version or of
another book is refused with a clear error and the monitor starts from the book.
docs/reliability.md states the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

from kernels.units import TIER_CODES
from monitor.errors import SnapshotError

log = logging.getLogger("monitor.adapters.snapshot")

FORMAT = "margin-monitor-snapshot"
VERSION = 2  # 2: the contract columns (monitor/book/contracts.py); 1 still loads
READS = (1, 2)  # versions this monitor restores (a version-1 snapshot numbers the contracts)
MANIFEST = "snapshot.json"


def book_fingerprint(book) -> str:
    """Identity of a book's accounts, securities and line profiles: a snapshot only fits the
    book it was taken on."""
    h = hashlib.sha256()
    for names in (book.account_ids, book.symbols, book.profile_names):
        h.update(orjson.dumps(list(names)))
    h.update(np.ascontiguousarray(book.profile_lines, dtype=np.int64).tobytes())
    return h.hexdigest()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(state_dir: str | os.PathLike, meta: dict, arrays: dict) -> dict:
    """Write one snapshot atomically (blocking: run it in a thread). Returns the manifest."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = f"state-{meta['run_id']}-{meta['seq']}-{meta['taken_ns']}.npz"
    tmp = d / (name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    with open(tmp, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    size = tmp.stat().st_size
    os.replace(tmp, d / name)
    manifest = {"format": FORMAT, "version": VERSION, **meta, "arrays": name,
                "bytes": size, "sha256": digest}
    mtmp = d / (MANIFEST + ".tmp")
    with open(mtmp, "wb") as f:
        f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(mtmp, d / MANIFEST)
    _fsync_dir(d)
    for old in d.glob("state-*.npz*"):
        if old.name != name:
            with contextlib.suppress(OSError):
                old.unlink()
    return manifest


def read_snapshot(state_dir: str | os.PathLike, fingerprint: str) -> tuple[dict, dict] | None:
    """(manifest, arrays) of the committed snapshot; None when there is none; SnapshotError
    when there is one that must not be used."""
    d = Path(state_dir)
    mpath = d / MANIFEST
    if not mpath.exists():
        return None
    try:
        m = orjson.loads(mpath.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise SnapshotError(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise SnapshotError(f"{mpath}: not a margin-monitor snapshot manifest")
    if m.get("version") not in READS:
        raise SnapshotError(f"{mpath}: snapshot format version {m.get('version')!r}; this "
                            f"monitor reads versions {', '.join(map(str, READS))}")
    if m.get("book") != fingerprint:
        raise SnapshotError(f"{mpath}: taken on another book (accounts, securities or line "
                            "profiles differ)")
    for k, t in (("run_id", str), ("seq", int), ("arrays", str), ("sha256", str)):
        if not isinstance(m.get(k), t):
            raise SnapshotError(f"{mpath}: field {k!r} missing or malformed")
    apath = d / Path(m["arrays"]).name
    try:
        with open(apath, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise SnapshotError(f"{apath}: cannot read the arrays ({e.strerror})") from None
    if digest != m["sha256"]:
        raise SnapshotError(f"{apath}: checksum mismatch (corrupt or truncated)")
    try:
        with np.load(apath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise SnapshotError(f"{apath}: unreadable arrays ({e})") from None
    return m, arrays


class Snapshots:
    """The runtime's side: capture between cycles, write in a thread, restore at start."""

    def __init__(self, mon, state_dir: str, interval_s: float = 30.0):
        self.mon = mon
        self.dir = Path(state_dir)
        self.interval_s = float(interval_s)
        self.fingerprint = book_fingerprint(mon.book)
        self._last = time.monotonic()
        self._writing: asyncio.Task | None = None
        self.written = 0
        self.failures = 0
        self.last_bytes = 0
        self.last_capture_ms = 0.0
        self.last_write_ms = 0.0
        self.last_seq: int | None = None
        self.restored_from: str | None = None
        self.active = False  # the engine was started or restored: snapshots mean something

    # ------------------------------------------------------------------ capture / write
    def capture(self) -> tuple[dict, dict]:
        """Meta and array copies; only call it when no tick or account event is queued."""
        mon = self.mon
        t0 = time.perf_counter()
        meta, arrays = mon.engine.export_state()
        parser = getattr(mon.feed, "parser", None)
        if parser is not None:
            arrays["parser_last_ts"] = parser.last_ts.copy()
            arrays["parser_last_price"] = parser.last_price.copy()
        meta.update(taken_ns=time.time_ns(), book=self.fingerprint,
                    feed=_position(mon.feed), events=_position(mon.event_source))
        self.last_capture_ms = (time.perf_counter() - t0) * 1e3
        return meta, arrays

    def due(self) -> bool:
        return (time.monotonic() - self._last >= self.interval_s
                and (self._writing is None or self._writing.done()))

    def take(self) -> None:
        """Capture now and write in a thread (the cycle loop calls it between cycles)."""
        self._last = time.monotonic()
        meta, arrays = self.capture()
        self._writing = asyncio.create_task(self._write(meta, arrays), name="snapshot")

    async def _write(self, meta: dict, arrays: dict) -> None:
        t0 = time.perf_counter()
        try:
            m = await asyncio.to_thread(write_snapshot, self.dir, meta, arrays)
        except Exception as e:  # noqa: BLE001 - a failed snapshot must never stop the monitor
            self.failures += 1
            log.error("snapshot to %s failed: %s", self.dir, e)
            return
        self.written += 1
        self.last_bytes = m["bytes"]
        self.last_seq = m["seq"]
        self.last_write_ms = (time.perf_counter() - t0) * 1e3
        log.debug("snapshot seq %d: %d bytes, capture %.0f ms, write %.0f ms", m["seq"],
                  m["bytes"], self.last_capture_ms, self.last_write_ms)

    async def final(self) -> None:
        """On clean shutdown: apply what is still queued, then one last snapshot."""
        mon = self.mon
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        try:
            mon.apply_account_events()
            if mon.engine.pending:
                mon.publish(mon.engine.cycle(time.time_ns()))
            self._last = time.monotonic()
            await self._write(*self.capture())
        except Exception:  # noqa: BLE001 - shutdown goes on (the outbox still drains)
            self.failures += 1
            log.exception("final snapshot failed; the previous one stays")

    def stats(self) -> dict:
        return {"dir": str(self.dir), "written": self.written, "failures": self.failures,
                "bytes": self.last_bytes, "seq": self.last_seq,
                "capture_ms": round(self.last_capture_ms, 1),
                "write_ms": round(self.last_write_ms, 1), "restored_from": self.restored_from}

    # ------------------------------------------------------------------ restore
    async def restore(self) -> list[dict] | None:
        """Restore from the committed snapshot: the re-announcement events, or None (no
        usable snapshot: the caller runs `Engine.start`)."""
        mon = self.mon
        self.active = True  # from here on the caller has started or restored the engine
        try:
            got = await asyncio.to_thread(read_snapshot, self.dir, self.fingerprint)
        except SnapshotError as e:
            log.error("state dir: %s; starting from the book instead", e)
            return None
        except Exception as e:  # noqa: BLE001 - an unreadable state dir never blocks a start
            log.error("state dir %s unreadable (%s: %s); starting from the book instead",
                      self.dir, type(e).__name__, e)
            return None
        if got is None:
            log.info("state dir %s: no snapshot yet; starting from the book", self.dir)
            return None
        m, arrays = got
        got = await self._published(m["run_id"], m["seq"])
        if got is None:  # what this run published cannot be known: a new run
            run_id, seq, tiers = uuid.uuid4().hex[:12], 0, {}
            log.warning("restore: cannot read what run %s published (no Redis or it is "
                        "unreachable); continuing as run %s", m["run_id"], run_id)
        else:
            run_id, seq, tiers = m["run_id"], max(m["seq"], got[0]), got[1]
        now = time.time_ns()
        try:
            events = mon.engine.restore_state(m, arrays, now, seq=seq, run_id=run_id,
                                              published=tiers)
        except (ValueError, KeyError, TypeError, IndexError, OverflowError) as e:
            log.error("state dir: %s: %s; starting from the book instead", m["arrays"], e)
            return None  # restore_state checks everything before changing anything
        parser = getattr(mon.feed, "parser", None)
        if parser is not None and "parser_last_ts" in arrays and "parser_last_price" in arrays \
                and arrays["parser_last_ts"].shape == parser.last_ts.shape \
                and arrays["parser_last_price"].shape == parser.last_price.shape:
            # never a last ts beyond the clock + skew: one bad tick must not freeze a symbol
            # across the restart (a snapshot of a version without the future_ts guard)
            parser.last_ts[:] = np.minimum(arrays["parser_last_ts"], now + parser.max_skew_ns)
            parser.last_price[:] = arrays["parser_last_price"]
        _resume(mon.feed, m.get("feed"))
        _resume(mon.event_source, m.get("events"))
        self.restored_from = m["arrays"]
        log.info("restored %s (run %s, seq %d -> %d, %d accounts "
                 "re-announced)", m["arrays"], m["run_id"], m["seq"], seq,
                 sum(e["kind"] == "TIER_CHANGE" for e in events))
        return events

    async def _published(self, run_id: str, since: int) -> tuple[int, dict] | None:
        """What `run_id` handed to consumers after seq `since` (alert stream, spill file):
        (highest seq, account -> last published tier), so no event_id is reused and the
        re-announcement starts from what consumers last saw; None when it cannot be known."""
        mon = self.mon
        if not mon.redis_url:
            return None
        stream = mon.cfg.alerts_stream_resolved
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stream)
        found = _events_of(_spill_tail(Path(mon.cfg.spill_dir) / f"{safe}.spill.jsonl"),
                           run_id, since)
        from feeds.net import redis_client

        client = redis_client(mon.redis_url, cluster=mon.cfg.redis_cluster,
                              socket_connect_timeout=2, socket_timeout=5)
        try:
            top = "+"
            while True:  # newest first, back to the snapshot's seq
                page = await asyncio.wait_for(client.xrevrange(stream, top, "-", count=1000),
                                              10)
                mine = _events_of((f.get(b"data") for _, f in page), run_id, since)
                found += mine
                if len(page) < 1000 or not mine:
                    break
                top = "(" + page[-1][0].decode()
        except Exception as e:  # noqa: BLE001 - any failure means "unknown"
            log.warning("restore: alert stream unreadable: %s", type(e).__name__)
            return None
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
        tiers: dict[int, int] = {}
        index = mon.book.account_index
        for e in sorted(found, key=lambda e: e["seq"]):
            a = index.get(e.get("account_id"))
            if e.get("kind") == "TIER_CHANGE" and a is not None and e.get("tier") in TIER_CODES:
                tiers[a] = TIER_CODES[e["tier"]]
        return max((e["seq"] for e in found), default=0), tiers


def _events_of(payloads, run_id: str, since: int) -> list[dict]:
    """Decoded events of `run_id` with seq > `since`."""
    out = []
    prefix = run_id + "-"
    for raw in payloads:
        try:
            e = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError):
            continue
        if isinstance(e, dict) and str(e.get("event_id", "")).startswith(prefix) \
                and isinstance(e.get("seq"), int) and e["seq"] > since:
            out.append(e)
    return out


def _spill_tail(path: Path, limit: int = 64 << 20) -> list[bytes]:
    """Complete lines of the last `limit` bytes of the outbox spill file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            lines = f.read().split(b"\n")
    except OSError:
        return []
    return lines[1:] if size > limit else lines


def _position(source) -> dict | None:
    """Where an input stood: a Redis stream's last id, or a JSONL file's line count."""
    if source is None:
        return None
    reader = getattr(source, "reader", None)
    if reader is not None:
        last = reader.last_id
        return {"name": source.name, "stream_id": last.decode() if last else None}
    if hasattr(source, "skip"):  # feeds.account_events.FileEvents
        return {"name": source.name, "lines": source.received}
    return {"name": getattr(source, "name", "")}


def _resume(source, pos: dict | None) -> None:
    if source is None or not pos or pos.get("name") != source.name:
        return
    reader = getattr(source, "reader", None)
    if reader is not None and pos.get("stream_id"):
        reader.last_id = pos["stream_id"].encode()
        log.info("%s: resuming after %s", source.name, pos["stream_id"])
    elif hasattr(source, "skip") and isinstance(pos.get("lines"), int):
        source.skip = pos["lines"]
        log.info("%s: resuming after line %d", source.name, pos["lines"])
