"""Alert outbox: delivers alert events to a Redis stream without ever stalling the tick path.

The engine calls :meth:`RedisOutbox.publish` (plain, non-async, never blocks on I/O) once per cycle
with that cycle's events; each event is encoded once with orjson and appended to an in-memory
queue. A single asyncio task, :meth:`RedisOutbox.run`, drains the queue to Redis with one
non-transactional pipeline per batch::

    XADD <stream> MAXLEN ~ <maxlen> * data <event json> [sig <hmac> kid <key id>]

With ``signer`` (the keys of ``alert_key_file``, monitor/adapters/signing.py) every entry also
carries ``sig``, the HMAC-SHA256 of the exact ``data`` bytes, and ``kid``, the key's id; the
signature is made when the entry is sent (also for events replayed from the spill file, which
holds only ``data``). Without a signer the entries are unsigned, as before.

Delivery guarantees (while the spill directory is writable)
------------------------------------------------------------
"Acknowledged" means Redis replied OK to the XADD. What Redis itself loses afterwards (a restart
without AOF/RDB, failover to a lagging replica) and what ``MAXLEN ~`` trims (a consumer more than
``maxlen`` entries behind sees a ``seq`` gap) is outside these guarantees.

* **Order.** The first occurrence of each event in the stream follows ``publish()`` order
  (one exception: per-command errors, below). Exactly one batch is in flight at a time, and it
  is only replaced by the next one once Redis has acknowledged all of it.
* **Nothing is lost while the process lives.** During an outage (connection refused/reset,
  timeouts, Redis paused or loading, or any command error such as OOM/READONLY) events stay in
  memory up to ``max_memory_events``; beyond that the *oldest* in-memory events are moved to an
  append-only JSON Lines file in ``spill_dir`` (one event per line, the exact bytes that go into
  the ``data`` field, ``fsync`` per spilled chunk). The task reconnects with capped, jittered
  exponential backoff and then delivers, in original order: the batch that was in flight, the
  spilled events, then the in-memory events. ``publish()`` itself never touches Redis or the
  disk; ``max_memory_events`` is enforced by the background spill task, so memory may overshoot
  it briefly by what is published during one spill write. If a spill write fails (disk full),
  the events are put back in memory (never dropped), the error is logged and counted, and the
  spill is retried.
* **Duplicates only on retried batches whose outcome is unknown.** When a pipeline fails with a
  connection error or a timeout, Redis may have appended some or all of its entries before the
  failure; the whole batch is re-sent after reconnecting, so those entries appear twice in the
  stream with the same ``event_id``/``seq`` (consumers dedupe on ``event_id``). When Redis
  answers with per-command errors (``raise_on_error=False`` is used), the prefix of entries that
  succeeded is acknowledged and the batch is retried from the first failed entry; an entry
  *after* the first failure that did succeed is then appended a second time, after the gap
  entry (its first copy precedes the gap entry: a consumer sees ``seq`` jump, then go back,
  and dedupes). No other path re-sends an event while the process lives.
* **Across restarts.** :meth:`aclose` moves everything not yet acknowledged (in-flight batch and
  in-memory queue) to the spill file, and the next :meth:`run` on the same ``spill_dir`` and
  ``stream`` delivers the spill file first. The read position in the spill file is persisted
  (``<file>.offset``, written and fsync'd after each acknowledged batch), so after a crash only
  the batch in flight at the crash can be sent twice; events that were only in memory at a
  crash (not yet spilled) are lost with the process. One outbox per (spill_dir, stream) is
  enforced with an exclusive ``flock``.

Summary (heartbeat)
-------------------
:meth:`publish_summary` keeps only the latest summary (a single slot, latest wins, never a queue)
and the task writes it with ``SET <summary_key> <json>`` (with ``PX`` when ``summary_ttl`` is set,
so a dead monitor's summary expires; the monitor always sets it) in the same pipeline after the
pending events. ``summary_key`` defaults to ``<stream>:summary`` (``margin:alerts:summary``), so
monitors publishing to different streams of one Redis keep apart; readers ``GET`` it. Only the
newest summary is ever written; none are replayed after an outage.

Secrets: the Redis URL may carry a password (``redis://user:pass@host:port/db``,
``rediss://`` for TLS, or ``?password=``); it is masked in ``repr``, logs and ``stats()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from feeds.net import Backoff, mask_url, redact, redis_client, url_secrets

log = logging.getLogger("monitor.adapters.outbox")

_ENCODE_OPTS = orjson.OPT_SERIALIZE_NUMPY
_SPILL_CHUNK = 10_000  # events per spill write (one fsync each)


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The one JSON encoding of an event, shared by the Redis stream and the websocket.

    Right-sized by a copy (~0.2 us): orjson leaves its output buffer over-allocated (about 8 KB
    held for a 500-byte event), and these payloads are kept a while (outbox backlog, websocket
    queues, the desk's event memory)."""
    return bytes(memoryview(orjson.dumps(event, option=_ENCODE_OPTS)))


def _default_spill_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "margin-monitor" / "spill"


class RedisOutbox:
    """Ordered, outage-tolerant delivery of alert events to a Redis stream.

    ``publish()`` / ``publish_summary()`` are safe to call from the event loop that runs
    :meth:`run` or from another (single) producer thread. Start delivery with
    ``asyncio.create_task(outbox.run())`` (or :meth:`start`); finish with :meth:`drain` then
    :meth:`aclose`. See the module docstring for the delivery guarantees.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = "margin:alerts",
        maxlen: int | None = 1_000_000,
        summary_key: str | None = None,
        summary_ttl: float | None = None,
        max_memory_events: int = 100_000,
        spill_dir: str | os.PathLike[str] | None = None,
        batch: int = 1000,
        connect_timeout: float = 5.0,
        op_timeout: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        redis_options: Mapping[str, Any] | None = None,
        cluster: bool = False,
        signer: Any = None,
    ) -> None:
        if batch < 1 or max_memory_events < 1:
            raise ValueError("batch and max_memory_events must be >= 1")
        self._url = url
        self.cluster = cluster  # `url` is a Redis Cluster node (redis-py's cluster client)
        self._masked_url = mask_url(url)
        self._secrets = url_secrets(url)
        self.stream = stream
        self.maxlen = maxlen
        self.summary_key = summary_key or f"{stream}:summary"
        self.summary_ttl = summary_ttl
        self.max_memory_events = max_memory_events
        self.batch = batch
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._redis_options = dict(redis_options or {})
        self.signer = signer  # AlertKeys (monitor/adapters/signing.py) or None: unsigned

        self.spill_dir = Path(spill_dir) if spill_dir is not None else _default_spill_dir()
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stream)
        self._spill_path = self.spill_dir / f"{safe}.spill.jsonl"
        self._offset_path = self.spill_dir / f"{safe}.spill.jsonl.offset"
        self._lock_path = self.spill_dir / f"{safe}.spill.lock"

        # queue: (monotonic enqueue time, payload), oldest on the left
        self._mem: deque[tuple[float, bytes]] = deque()
        self._summary: bytes | None = None
        # the batch being delivered (kept until acknowledged)
        self._inflight: list[bytes] | None = None
        self._inflight_src = ""  # "mem" or "file"
        self._inflight_ts = 0.0
        self._inflight_ends: list[int] = []  # file offsets after each line (file source)
        # spill file state (only touched by the loop thread)
        self._spill_written = 0  # committed (fsync'd) bytes
        self._spill_read = 0  # bytes acknowledged by Redis
        self._spill_count = 0  # events in the file not yet acknowledged
        self._spill_marks: deque[tuple[int, float]] = deque()  # (end offset, oldest ts) per chunk
        self._spill_wfh: Any = None
        self._spill_rfh: Any = None
        self._lock_fh: Any = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._send_evt = asyncio.Event()
        self._spill_evt = asyncio.Event()
        self._stop_evt = asyncio.Event()
        self._select_lock = asyncio.Lock()
        self._run_task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._closing = False
        self._stop_spill = False
        self._recovered = False  # run() has checked the spill dir for a previous run's events
        self._n_spilling = 0  # events taken from memory by a spill write not yet fsync'd
        self._closed = False

        self._connected = False
        self._outage_since: float | None = None
        self._last_outage_log = 0.0
        self._last_error: str | None = None
        self._n_enqueued = 0
        self._n_published = 0
        self._n_failures = 0
        self._n_reconnects = 0
        self._n_resent = 0
        self._n_spilled_total = 0
        self._n_spill_errors = 0
        self._n_summaries = 0

    def __repr__(self) -> str:
        return (f"RedisOutbox(url={self._masked_url!r}, stream={self.stream!r}, "
                f"connected={self._connected})")

    # ------------------------------------------------------------------ producer side (sync)

    def publish(self, events: Iterable[Mapping[str, Any]],
                encoded: list[bytes] | None = None) -> list[bytes]:
        """Queue events for delivery; never blocks, never raises on Redis trouble.

        Returns the encoded payloads (pass them to ``AlertServer.broadcast(events, encoded)`` so
        each event is encoded once). ``encoded``, if given, must be ``encode_event`` of each
        event. Raises ``RuntimeError`` after :meth:`aclose` (a programming error, never silent).
        """
        if self._closed or self._closing:
            raise RuntimeError("RedisOutbox.publish() after aclose(); events not accepted")
        payloads = [encode_event(e) for e in events] if encoded is None else list(encoded)
        if not payloads:
            return payloads
        now = time.monotonic()
        self._mem.extend([(now, p) for p in payloads])
        self._n_enqueued += len(payloads)
        self._notify()
        return payloads

    def publish_summary(self, summary: Mapping[str, Any]) -> None:
        """Replace the pending summary (latest wins); written as ``SET summary_key``."""
        self._summary = encode_event(summary)
        self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: run() has ended
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._send_evt.set()
        if len(self._mem) > self.max_memory_events:
            self._spill_evt.set()

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        """Counters for metrics/heartbeat. ``queued``: in memory (incl. an in-flight batch taken
        from memory); ``spilled``: in the spill file, not yet acknowledged; ``backlog``: all
        events not yet acknowledged by Redis; ``oldest_queued_age_s``: age of the oldest of them.
        """
        inflight = self._inflight
        n_inf_mem = len(inflight) if inflight is not None and self._inflight_src == "mem" else 0
        queued = len(self._mem) + n_inf_mem + self._n_spilling
        oldest: float | None = None
        if inflight is not None:
            oldest = self._inflight_ts
        elif self._spill_marks:
            oldest = self._spill_marks[0][1]
        else:
            with contextlib.suppress(IndexError):
                oldest = self._mem[0][0]
        return {
            "queued": queued,
            "spilled": self._spill_count,
            "backlog": queued + self._spill_count,
            "in_flight": len(inflight) if inflight is not None else 0,
            "published": self._n_published,
            "enqueued": self._n_enqueued,
            "failures": self._n_failures,
            "reconnects": self._n_reconnects,
            "resent": self._n_resent,
            "spilled_total": self._n_spilled_total,
            "spill_errors": self._n_spill_errors,
            "summaries": self._n_summaries,
            "connected": self._connected,
            "last_error": self._last_error,
            "oldest_queued_age_s": (time.monotonic() - oldest) if oldest is not None else None,
            "url": self._masked_url,
        }

    def _backlog(self) -> int:
        return (len(self._mem) + self._spill_count + self._n_spilling
                + (len(self._inflight) if self._inflight and self._inflight_src == "mem" else 0))

    def _has_work(self) -> bool:
        return bool(self._inflight is not None or self._mem or self._spill_count
                    or self._n_spilling or self._summary is not None)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> asyncio.Task[None]:
        """Convenience: ``asyncio.create_task(self.run())``."""
        if self._run_task is None or self._run_task.done():
            self._run_task = asyncio.get_running_loop().create_task(self.run(),
                                                                    name="redis-outbox")
        return self._run_task

    async def run(self) -> None:
        """Deliver until :meth:`aclose`. Run exactly one of these per outbox."""
        if self._closed:
            raise RuntimeError("RedisOutbox is closed")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._run_task = asyncio.current_task()
        await self._io(self._open_spill)
        self._recovered = True
        self._stop_spill = False
        self._wake()
        spiller = asyncio.create_task(self._spill_loop(), name="redis-outbox-spill")
        try:
            await self._send_loop()
        finally:
            # let a spill write in progress finish and be accounted for (never cancel it)
            self._stop_spill = True
            self._spill_evt.set()
            with contextlib.suppress(Exception):
                await spiller

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every event published so far (and the latest summary), and any backlog
        recovered from a previous run's spill file, is acknowledged by Redis. Needs a running
        :meth:`run`. Returns False if ``timeout`` (seconds) elapsed first. A delivered spill
        file is removed (by the delivery task, in a thread) before it returns."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._has_work() or not self._recovered or self._spill_written:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop delivering; save anything not yet acknowledged to the spill file (delivered by
        the next ``run()`` on the same spill_dir/stream); close the Redis client."""
        if self._closed:
            return
        self._closing = True
        self._stop_evt.set()
        self._send_evt.set()
        self._spill_evt.set()
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception:  # noqa: BLE001 - run() failing must not prevent saving events
                log.exception("redis outbox: run task failed")
        # anything not acknowledged goes to disk in original order, so nothing is lost: an
        # in-flight batch taken from memory is older than anything spilled since it was taken
        head: list[bytes] = []
        if self._inflight is not None and self._inflight_src == "mem":
            head = list(self._inflight)
        tail = [p for _, p in self._mem]
        leftovers = head + tail
        if leftovers:
            try:
                if self._lock_fh is None:
                    await self._io(self._open_spill)
                if head and self._spill_count:
                    await self._io(self._spill_rewrite, head, tail, self._spill_read,
                                   self._spill_written)
                else:
                    await self._io(self._spill_write, leftovers, self._spill_written)
                self._spill_count += len(leftovers)
                self._inflight = None
                for _ in range(len(tail)):
                    self._mem.popleft()
                if self._mem:  # a producer thread raced with aclose(): save those too
                    late = [p for _, p in self._mem]
                    await self._io(self._spill_write, late, self._spill_written)
                    self._spill_count += len(late)
                    leftovers += late
                    self._mem.clear()
                log.warning("redis outbox: closed with %d undelivered events; saved to %s, "
                            "delivered on next start", len(leftovers), self._spill_path)
            except Exception as e:  # noqa: BLE001
                log.error("redis outbox: closed with %d undelivered events that could NOT be "
                          "saved (%s)", len(leftovers), self._redact(repr(e)))
        elif self._spill_count:
            log.warning("redis outbox: closed with %d spilled events pending in %s, delivered on "
                        "next start", self._spill_count, self._spill_path)
        await self._drop_client()
        for fh in (self._spill_wfh, self._spill_rfh, self._lock_fh):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        self._spill_wfh = self._spill_rfh = self._lock_fh = None
        self._closed = True

    # ------------------------------------------------------------------ delivery

    async def _send_loop(self) -> None:
        backoff = Backoff(self.backoff_initial, self.backoff_max, jitter=0.3)
        while not self._closing:
            if not self._has_work():
                self._send_evt.clear()
                if not self._has_work() and not self._closing:
                    await self._send_evt.wait()
                continue
            try:
                ok = await self._send_step()
            except Exception as e:  # noqa: BLE001 - e.g. spill file I/O; never stop delivering
                self._last_error = self._redact(f"{type(e).__name__}: {e}")
                log.exception("redis outbox: unexpected error; retrying")
                ok = False
            if ok:
                backoff.reset()
            else:
                await self._backoff(backoff.next())

    async def _send_step(self) -> bool:
        if self._client is None or not self._connected:
            if not await self._connect():
                return False
        if self._inflight is None:
            async with self._select_lock:
                await self._take_batch()
        if not await self._send_batch():
            await self._drop_client()
            return False
        if self._spill_count == 0 and self._spill_written:
            async with self._select_lock:
                if self._spill_count == 0 and self._spill_written:
                    await self._io(self._spill_remove)
                    self._spill_reset_state()
        return True

    async def _backoff(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_evt.wait(), delay)

    async def _connect(self) -> bool:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        try:
            if self._client is None:
                opts: dict[str, Any] = {
                    "socket_connect_timeout": self.connect_timeout,
                    "socket_timeout": self.op_timeout,
                    "retry": Retry(NoBackoff(), 0),  # retries are ours: ordered and counted
                    "health_check_interval": 0,
                }
                opts.update(self._redis_options)
                self._client = redis_client(self._url, cluster=self.cluster, **opts)
            async with asyncio.timeout(self.connect_timeout + self.op_timeout):
                await self._client.ping()
        except Exception as e:  # noqa: BLE001 - any failure = outage; retried with backoff
            self._fail(e)
            await self._drop_client()
            return False
        self._connected = True
        if self._outage_since is not None:
            self._n_reconnects += 1
            log.warning("redis outbox: reconnected to %s after %.1fs; delivering backlog of %d "
                        "events (%d spilled)", self._masked_url,
                        time.monotonic() - self._outage_since, self._backlog(), self._spill_count)
            self._outage_since = None
        else:
            log.info("redis outbox: connected to %s, stream %s", self._masked_url, self.stream)
        return True

    async def _take_batch(self) -> None:
        """Select the next batch: spill file first (it holds the older events), then memory.
        Called under _select_lock so the spill task cannot move events concurrently."""
        if self._spill_count:
            lines, ends = await self._io(self._spill_read_batch, self._spill_read,
                                         self._spill_written)
            if lines:
                self._inflight, self._inflight_ends, self._inflight_src = lines, ends, "file"
                self._inflight_ts = self._spill_marks[0][1] if self._spill_marks else 0.0
                return
            # counted events but nothing readable: the file is inconsistent; resync
            log.error("redis outbox: spill file %s is shorter than expected; %d events "
                      "unreadable", self._spill_path, self._spill_count)
            self._spill_count = 0
            return
        if self._mem:
            n = min(self.batch, len(self._mem))
            items = [self._mem.popleft() for _ in range(n)]
            self._inflight = [p for _, p in items]
            self._inflight_ts = items[0][0]
            self._inflight_src, self._inflight_ends = "mem", []

    async def _send_batch(self) -> bool:
        """Send the in-flight batch (if any) plus the latest summary. True on full success."""
        batch = self._inflight or []
        summary = self._summary
        if not batch and summary is None:
            return True
        pipe = self._client.pipeline(transaction=False)
        signer = self.signer
        for p in batch:
            fields = {b"data": p}
            if signer is not None:
                fields[b"sig"], fields[b"kid"] = signer.sign(p)
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        if summary is not None:
            if self.summary_ttl:
                pipe.set(self.summary_key, summary, px=max(1, int(self.summary_ttl * 1000)))
            else:
                pipe.set(self.summary_key, summary)
        try:
            # socket_timeout bounds each read; this bounds the whole exchange (Redis paused,
            # TLS stalls) so a stuck pipeline cannot hold the delivery task forever.
            async with asyncio.timeout(self.connect_timeout + 2 * self.op_timeout):
                results = await pipe.execute(raise_on_error=False)
        except Exception as e:  # noqa: BLE001 - outcome unknown: the whole batch is retried
            self._fail(e)
            if batch:
                self._n_resent += len(batch)
            return False
        ok = 0
        first_err: BaseException | None = None
        for r in results[: len(batch)]:
            if isinstance(r, BaseException):
                first_err = r
                break
            ok += 1
        if summary is not None:
            r = results[len(batch)] if len(results) > len(batch) else None
            if isinstance(r, BaseException):
                first_err = first_err or r
            elif self._summary is summary:
                self._summary = None
                self._n_summaries += 1
        await self._ack(ok)
        if first_err is not None:
            self._fail(first_err)
            if self._inflight:
                self._n_resent += sum(1 for r in results[ok + 1: len(batch)]
                                      if not isinstance(r, BaseException))
            return False
        return True

    async def _ack(self, n: int) -> None:
        """The first ``n`` in-flight entries are in the stream."""
        if not n or self._inflight is None:
            return
        self._n_published += n
        if self._inflight_src == "file":
            end = self._inflight_ends[n - 1]
            self._spill_read = end
            self._spill_count -= n
            while self._spill_marks and self._spill_marks[0][0] <= end:
                self._spill_marks.popleft()
            self._inflight_ends = self._inflight_ends[n:]
            await self._io(self._write_offset, end)
        rest = self._inflight[n:]
        self._inflight = rest or None

    def _fail(self, e: BaseException) -> None:
        self._n_failures += 1
        self._connected = False
        msg = self._redact(f"{type(e).__name__}: {e}")
        self._last_error = msg
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self._last_outage_log = now
            log.warning("redis outbox: %s unavailable (%s); buffering alerts (backlog %d)",
                        self._masked_url, msg, self._backlog())
        elif now - self._last_outage_log >= 30.0:
            self._last_outage_log = now
            log.warning("redis outbox: %s still unavailable for %.0fs (%s); backlog %d "
                        "(%d spilled)", self._masked_url, now - self._outage_since, msg,
                        self._backlog(), self._spill_count)
        else:
            log.debug("redis outbox: attempt failed (%s)", msg)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await client.aclose()

    # ------------------------------------------------------------------ spilling

    async def _spill_loop(self) -> None:
        while not self._stop_spill:
            await self._spill_evt.wait()
            self._spill_evt.clear()
            while len(self._mem) > self.max_memory_events and not self._stop_spill:
                async with self._select_lock:
                    # bring memory down to half the cap (hysteresis: few, large fsync'd writes)
                    n = min(len(self._mem) - self.max_memory_events // 2, _SPILL_CHUNK)
                    items = [self._mem.popleft() for _ in range(n)]
                    self._n_spilling = n
                    res: dict[str, int] = {}
                    err: BaseException | None = None
                    try:
                        await self._io(self._spill_write, [p for _, p in items],
                                       self._spill_written, res)
                    except BaseException as e:  # noqa: BLE001 - incl. cancel: account first
                        err = e
                    self._n_spilling = 0
                    if "n" in res:  # written and fsync'd
                        self._spill_count += n
                        self._n_spilled_total += n
                        if self._spill_count == n:
                            log.warning("redis outbox: memory queue over %d events; spilling "
                                        "to %s", self.max_memory_events, self._spill_path)
                        self._spill_marks.append((self._spill_written, items[0][0]))
                    else:  # keep the events, oldest first; retry later
                        self._mem.extendleft(reversed(items))
                        if err is not None and not isinstance(err, asyncio.CancelledError):
                            self._n_spill_errors += 1
                            self._last_error = self._redact(
                                f"spill: {type(err).__name__}: {err}")
                            log.error("redis outbox: cannot spill %d events to %s (%s); "
                                      "keeping them in memory (%d queued)", n, self._spill_path,
                                      err, len(self._mem))
                    if isinstance(err, asyncio.CancelledError):
                        raise err
                if err is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_evt.wait(), 1.0)

    async def _io(self, fn: Any, *args: Any) -> Any:
        """Blocking file I/O in a worker thread. If the caller is cancelled meanwhile, the I/O is
        still awaited to completion (no file operation outlives the task that owns the state),
        then the cancellation propagates."""
        fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            while not fut.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(fut)
            if not fut.cancelled():
                fut.exception()  # retrieved: the caller is being cancelled anyway
            raise

    # The methods below do file I/O in a worker thread (via _io), one at a time: every caller
    # holds _select_lock or runs in run()/aclose() before/after the tasks. They may update the
    # spill offsets (_spill_written/_spill_read), which only such callers read; event counters
    # are updated by the callers, on the event loop thread.

    def _open_spill(self) -> None:
        import fcntl

        self.spill_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._lock_fh is None:
            fh = open(self._lock_path, "a+b")  # noqa: SIM115 - held for the outbox lifetime
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise RuntimeError(f"spill file for stream {self.stream!r} is in use by another "
                                   f"outbox ({self._lock_path})") from None
            self._lock_fh = fh
        if not self._spill_path.exists():
            return
        size = self._spill_path.stat().st_size
        with open(self._spill_path, "r+b") as fh:
            if size:
                # drop a torn last line (crash during a write that was never fsync'd)
                fh.seek(max(0, size - 1))
                if fh.read(1) != b"\n":
                    fh.seek(0)
                    data = fh.read()
                    size = data.rfind(b"\n") + 1
                    fh.truncate(size)
        offset = 0
        with contextlib.suppress(OSError, ValueError):
            offset = int(self._offset_path.read_text().strip() or 0)
        offset = min(max(offset, 0), size)
        count = 0
        with open(self._spill_path, "rb") as fh:
            fh.seek(offset)
            # the offset is always at a line start when written by us; resync if not
            if offset:
                fh.seek(offset - 1)
                if fh.read(1) != b"\n":
                    fh.readline()
                    offset = fh.tell()
            while chunk := fh.read(1 << 20):
                count += chunk.count(b"\n")
        self._spill_written, self._spill_read, self._spill_count = size, offset, count
        if count:
            mtime = self._spill_path.stat().st_mtime
            age = max(0.0, time.time() - mtime)
            self._spill_marks = deque([(size, time.monotonic() - age)])
            log.warning("redis outbox: %d undelivered events from a previous run in %s; "
                        "delivering them first", count, self._spill_path)
        else:
            self._spill_remove()
            self._spill_reset_state()

    def _spill_write(self, payloads: list[bytes], committed: int,
                     res: dict[str, int] | None = None) -> int:
        """Append + fsync; returns the bytes written (also advances ``_spill_written`` and sets
        ``res["n"]``). On error the file is cut back to ``committed`` so a torn chunk never
        precedes later ones."""
        if self._spill_wfh is None:
            fd = os.open(self._spill_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._spill_wfh = os.fdopen(fd, "ab", buffering=0)
        fh = self._spill_wfh
        data = b"".join(p + b"\n" for p in payloads)
        try:
            view = memoryview(data)
            while view:
                n = fh.write(view)
                view = view[n:]
            os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fh.fileno(), committed)
            raise
        self._spill_written = committed + len(data)
        if res is not None:
            res["n"] = len(data)
        return len(data)

    def _spill_rewrite(self, head: list[bytes], tail: list[bytes], start: int, end: int) -> None:
        """On close: file := head + unsent part of the file + tail (head is older than the
        file's unsent events). Written to a temp file, fsync'd, renamed over the old one."""
        unsent = b""
        with open(self._spill_path, "rb") as fh:
            fh.seek(start)
            unsent = fh.read(end - start)
        for f in (self._spill_wfh, self._spill_rfh):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._spill_wfh = self._spill_rfh = None
        tmp = self._spill_path.with_name(self._spill_path.name + ".tmp")
        data = b"".join(p + b"\n" for p in head) + unsent + b"".join(p + b"\n" for p in tail)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        # offset first: a crash in between re-sends acknowledged events, never skips any
        with contextlib.suppress(FileNotFoundError):
            self._offset_path.unlink()
        os.replace(tmp, self._spill_path)
        dfd = os.open(self.spill_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self._spill_read, self._spill_written = 0, len(data)

    def _spill_read_batch(self, start: int, limit: int) -> tuple[list[bytes], list[int]]:
        if self._spill_rfh is None:
            self._spill_rfh = open(self._spill_path, "rb")  # noqa: SIM115
        fh = self._spill_rfh
        fh.seek(start)
        lines: list[bytes] = []
        ends: list[int] = []
        pos = start
        while len(lines) < self.batch and pos < limit:
            line = fh.readline()
            if not line.endswith(b"\n"):
                break
            pos += len(line)
            lines.append(line[:-1])
            ends.append(pos)
        return lines, ends

    def _write_offset(self, offset: int) -> None:
        tmp = self._offset_path.with_name(self._offset_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{offset}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._offset_path)

    def _spill_remove(self) -> None:
        """Everything spilled has been delivered: close and remove the file (worker thread)."""
        wfh, rfh = self._spill_wfh, self._spill_rfh
        self._spill_wfh = self._spill_rfh = None
        for fh in (wfh, rfh):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        for p in (self._spill_path, self._offset_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def _spill_reset_state(self) -> None:
        self._spill_written = self._spill_read = self._spill_count = 0
        self._spill_marks.clear()
