"""Audit records: the account's state behind every alert event, kept off the tick path.

`AuditLog.record` runs on the tick path right after the engine produced the events, while the
state is still the state that made them: it only gathers the named accounts' numbers with a few
vectorised numpy takes (positions, prices, cash, interest, other debt / collateral, lines, assets,
liabilities) and puts them on a bounded queue. A background thread turns them into JSON Lines
(`<audit_dir>/audit-<run_id>.jsonl`, one record per event, format in
docs/reports-and-audit.md) and appends them; the alert payload itself is not enlarged.

The queue is bounded by bytes (`audit_queue_bytes`, default 256 MiB: a batch costs its payloads,
its arrays and ``RECORD_BYTES`` per record): the tick path never waits for the disk. When the
writer falls that far behind (a stalled or full disk), the **oldest** queued batches are
dropped, counted in `stats()["dropped"]` (records) and on /metrics, and the writer puts one gap
line in the file where they would have been (``{"v": 1, "gap": {"records": n, "batches": k,
"first_seq": …, "last_seq": …}}``), so the hole is visible in the audit file itself and in
`run-<run_id>.json` (`dropped`). A record is only ever dropped that way, never silently.

`Intraday` keeps each account's intraday minimum ratio: updated from every event's ratio and, on
the heartbeat, from a whole-book sample every `sample_s` seconds. At shutdown the monitor writes
the end-of-day state as a book folder (`eod-<run_id>/`, loadable by `load_book`, at the last
prices) plus `intraday.parquet`, and `run-<run_id>.json`; `margin-monitor report` reads them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from kernels import units as u
from monitor.book.synthetic import MONEY, PRICE, RATIO, decimal_text

log = logging.getLogger("monitor.adapters.audit")

AUDIT_VERSION = 1
RECORD_BYTES = 512  # per queued record beyond its payload and arrays (dict, list slots)


def account_rows(book, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Book position rows in use of `idx` (those with shares or an open cost) and, per row,
    the position of its account in `idx`."""
    lo = book.pos_ptr[idx]
    n = book.pos_used[idx] if book.pos_used is not None else book.pos_ptr[idx + 1] - lo
    owner = np.repeat(np.arange(idx.shape[0]), n)
    rows = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
    keep = (book.pos_qty[rows] > 0) | (book.pos_cost[rows] != 0)
    return rows[keep], owner[keep]


class AuditLog:
    def __init__(self, engine, out_dir: str | Path, *, max_bytes: int = 256 * 2**20,
                 sample_s: float = 5.0):
        self.engine = engine
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id = engine.run_id
        self.path = self.dir / f"audit-{self.run_id}.jsonl"
        self.started_ns = time.time_ns()
        self.intraday = Intraday(engine, sample_s)
        self.max_bytes = int(max_bytes)
        self._q: deque = deque()  # (bytes, snap), oldest first; None: stop
        self._cv = threading.Condition()
        self.queued_bytes = 0
        self._gap: dict | None = None  # dropped since the writer last wrote (a gap line)
        self.records = 0
        self.written = 0
        self.dropped = 0  # records dropped from the queue, oldest first (byte cap)
        self.dropped_batches = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._writer, name="audit-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ tick path
    def record(self, events: list[dict], encoded: list[bytes]) -> None:
        """Capture the state behind `events` (already encoded for publishing) and queue it."""
        st = self.engine.state
        b = st.book
        get = b.account_index.get
        picked = [(i, a) for i, e in enumerate(events)
                  if (a := get(e.get("account_id"))) is not None]
        if not picked:
            return
        pos = np.fromiter((i for i, _ in picked), dtype=np.int64, count=len(picked))
        idx = np.fromiter((a for _, a in picked), dtype=np.int64, count=len(picked))
        A, L = st.values(idx)
        ts = np.fromiter((events[i].get("ts_event") or 0 for i, _ in picked), dtype=np.int64,
                         count=len(picked))
        self.intraday.observe(idx, A, L, ts)
        rows, owner = account_rows(b, idx)
        sec = b.pos_sec[rows]
        snap = {
            "raw": [encoded[i] for i in pos.tolist()],
            "acct": idx, "A": A, "L": L,
            "cash": b.cash[idx], "accrued": b.accrued[idx], "other_debt": b.other_debt[idx],
            "other_coll": b.other_collateral[idx], "profile": b.profile_of[idx].copy(),
            "reported": self.engine.reported[idx].copy(),
            "owner": owner, "sec": sec, "kind": b.pos_kind[rows], "qty": b.pos_qty[rows],
            "cost": b.pos_cost[rows], "mr": b.pos_margin_ratio[rows], "price": st.price[sec],
        }
        self.records += len(picked)
        cost = sum(len(r) for r in snap["raw"]) + RECORD_BYTES * len(picked) + sum(
            v.nbytes for v in snap.values() if isinstance(v, np.ndarray))
        seqs = [events[i].get("seq") for i, _ in picked]
        snap["seqs"] = (seqs[0], seqs[-1])
        self._enqueue(cost, snap)

    def _enqueue(self, cost: int, snap: dict) -> None:
        """Queue a batch for the writer; past `audit_queue_bytes` the oldest go (counted)."""
        with self._cv:
            self._q.append((cost, snap))
            self.queued_bytes += cost
            while self.queued_bytes > self.max_bytes and len(self._q) > 1:
                self._drop_oldest()
            self._cv.notify()

    def _drop_oldest(self) -> None:
        """The oldest queued batch is dropped (the caller holds the lock): counted, and the
        writer marks the gap in the file."""
        cost, old = self._q.popleft()
        self.queued_bytes -= cost
        n = len(old["raw"])
        self.dropped += n
        self.dropped_batches += 1
        g = self._gap
        if g is None:
            g = self._gap = {"records": 0, "batches": 0, "first_seq": old["seqs"][0]}
        g["records"] += n
        g["batches"] += 1
        if old["seqs"][1] is not None:  # a fill record has no seq
            g["first_seq"] = g["first_seq"] if g["first_seq"] is not None else old["seqs"][0]
            g["last_seq"] = old["seqs"][1]
        if self.dropped == n:
            log.error("audit: the writer is %d bytes behind (audit_queue_bytes); dropping the "
                      "oldest records (counted, marked in %s)", self.max_bytes, self.path.name)

    def record_fill(self, ev: dict, now_ns: int) -> None:
        """An applied fill (for statements: the executed liquidations), as a ``FILL`` record
        beside the alert events; its ``order_id`` ties it to the order that was sent."""
        keep = ("account_id", "symbol", "side", "qty", "price", "fee", "order_id", "event_id",
                "hold_id", "ts")
        fill = {"kind": "FILL", **{k: ev[k] for k in keep if k in ev}, "ts_published": now_ns}
        self.records += 1
        # a dropped fill counts as one record; it has no seq
        self._enqueue(RECORD_BYTES, {"fill": fill, "raw": [b""], "seqs": (None, None)})

    def sample(self, now_ns: int | None = None) -> None:
        """Heartbeat: sample the whole book's ratios into the intraday minimum when due."""
        self.intraday.sample(time.time_ns() if now_ns is None else now_ns)

    # ------------------------------------------------------------ writer thread
    def _take(self):
        """The next queued batch (blocking), with the gap dropped before it (or None)."""
        with self._cv:
            while not self._q:
                self._cv.wait()
            cost, snap = self._q.popleft()
            self.queued_bytes -= cost
            gap, self._gap = self._gap, None
            return snap, gap, not self._q

    def _writer(self) -> None:
        with self.path.open("ab") as f:
            while True:
                snap, gap, empty = self._take()
                try:
                    if gap is not None:
                        f.write(orjson.dumps({"v": AUDIT_VERSION, "gap": gap}) + b"\n")
                    if snap is None:
                        f.flush()
                        return
                    f.write(b"".join(self._lines(snap)))
                    if empty:
                        f.flush()
                except Exception:  # never let one bad record stop the log
                    self.errors += 1
                    log.exception("audit record failed")

    def _lines(self, snap: dict):
        """One JSON line per event; money as exact integers in li (1/1000 yuan), positions as
        columns (numpy slices straight into orjson: no per-position Python)."""
        if "fill" in snap:
            yield orjson.dumps({"v": AUDIT_VERSION, "money_scale": u.MONEY_SCALE,
                                "state": None, "event": snap["fill"]},
                               option=orjson.OPT_APPEND_NEWLINE)
            self.written += 1
            return
        b = self.engine.state.book
        names = b.symbols
        owner = snap["owner"]
        starts = np.searchsorted(owner, np.arange(len(snap["raw"]) + 1)).tolist()
        opt = orjson.OPT_SERIALIZE_NUMPY
        kinds = np.array(u.KIND_NAMES, dtype=object)
        for k, raw in enumerate(snap["raw"]):
            a = int(snap["acct"][k])
            p = int(snap["profile"][k])
            A, L = int(snap["A"][k]), int(snap["L"][k])
            sl = slice(starts[k], starts[k + 1])
            rep = int(snap["reported"][k])
            state = {
                "account_id": b.account_ids[a], "profile": b.profile_names[p],
                "lines_bp": dict(zip(u.LINE_NAMES, b.profile_lines[p].tolist(), strict=True)),
                "reported_tier": u.TIER_NAMES[rep] if rep >= 0 else None,
                "cash": int(snap["cash"][k]), "accrued": int(snap["accrued"][k]),
                "other_debt": int(snap["other_debt"][k]),
                "other_collateral": int(snap["other_coll"][k]),
                "positions": {
                    "symbol": [names[s] for s in snap["sec"][sl].tolist()],
                    "kind": kinds[snap["kind"][sl]].tolist(),
                    "qty": snap["qty"][sl], "price": snap["price"][sl],
                    "cost": snap["cost"][sl], "margin_ratio": snap["mr"][sl]},
                "assets": A, "liabilities": L,
                "ratio": round(A / L, 6) if L > 0 else None,
            }
            head = orjson.dumps({"v": AUDIT_VERSION, "money_scale": u.MONEY_SCALE,
                                 "state": state}, option=opt)
            yield head[:-1] + b',"event":' + raw + b"}\n"
            self.written += 1

    # ------------------------------------------------------------ end of day
    def close(self, eod: bool = True) -> None:
        """Drain the queue, stop the writer; then the end-of-day snapshot and run record."""
        with self._cv:
            self._q.append((0, None))
            self._cv.notify()
        self._thread.join()
        ended = time.time_ns()
        eod_dir = None
        if eod:
            eod_dir = self.dir / f"eod-{self.run_id}"
            write_eod(self.engine, self.intraday, eod_dir, ended)
        meta = {"run_id": self.run_id, "started_ns": self.started_ns, "ended_ns": ended,
                "accounts": self.engine.state.book.n_accounts, "audit": self.path.name,
                "records": self.written, "dropped": self.dropped,
                "eod": eod_dir.name if eod_dir else None,
                "intraday_sample_s": self.intraday.sample_s}
        (self.dir / f"run-{self.run_id}.json").write_bytes(
            orjson.dumps(meta, option=orjson.OPT_INDENT_2))

    def stats(self) -> dict:
        return {"records": self.records, "written": self.written, "queued": len(self._q),
                "queued_bytes": self.queued_bytes, "max_bytes": self.max_bytes,
                "dropped": self.dropped, "dropped_batches": self.dropped_batches,
                "errors": self.errors}


class Intraday:
    """Per-account intraday minimum ratio (float; +inf = never indebted when observed)."""

    def __init__(self, engine, sample_s: float = 5.0):
        self.engine = engine
        self.sample_s = sample_s
        n = engine.state.book.n_accounts
        self.min_ratio = np.full(n, np.inf)
        self.min_ns = np.zeros(n, dtype=np.int64)
        self._next = 0
        self.samples = 0

    def observe(self, idx: np.ndarray, A: np.ndarray, L: np.ndarray, ts: np.ndarray) -> None:
        """The exact ratios of the accounts of a batch of events, at the events' time."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(L > 0, A / np.where(L > 0, L, 1), np.inf)
        for a, x, t in zip(idx.tolist(), r.tolist(), ts.tolist(), strict=True):
            if x < self.min_ratio[a]:
                self.min_ratio[a] = x
                self.min_ns[a] = t

    def sample(self, now_ns: int, force: bool = False) -> None:
        if not force and now_ns < self._next:
            return
        self._next = now_ns + int(self.sample_s * 1e9)
        st = self.engine.state
        A, L = st.values(np.arange(st.book.n_accounts, dtype=np.int64))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(L > 0, A / np.where(L > 0, L, 1), np.inf)
        lower = r < self.min_ratio
        self.min_ratio[lower] = r[lower]
        self.min_ns[lower] = now_ns
        self.samples += 1


def write_eod(engine, intraday: Intraday | None, out: Path, now_ns: int) -> None:
    """The live book at its last prices as a book folder, plus the intraday table."""
    st = engine.state
    b = st.book
    out.mkdir(parents=True, exist_ok=True)
    if intraday is not None:
        intraday.sample(now_ns, force=True)
    idx = np.arange(b.n_accounts, dtype=np.int64)
    rows, owner = account_rows(b, idx)
    kind = b.pos_kind[rows]
    qty = b.pos_qty[rows]
    cost = b.pos_cost[rows]
    held = qty > 0
    # principal left on a sold-out financed row is debt without a position: other debt
    orphan = np.zeros(b.n_accounts, dtype=np.int64)
    np.add.at(orphan, owner[~held], np.where(kind[~held] == u.FINANCED, cost[~held], 0))
    rows, owner, kind, qty, cost = rows[held], owner[held], kind[held], qty[held], cost[held]
    symbols = pa.array(b.symbols, pa.string())
    ids = pa.array(b.account_ids, pa.string())
    fin, short = kind == u.FINANCED, kind == u.SHORT
    mr = np.round(b.pos_margin_ratio[rows] * u.RATIO_SCALE).astype(np.int64)
    tables = {
        "securities": pa.table({
            "symbol": symbols, "price": decimal_text(st.price, PRICE),
            "prev_close": decimal_text(b.prev_close, PRICE),
            "haircut": decimal_text(np.round(b.haircut * u.RATIO_SCALE).astype(np.int64), RATIO),
            "board": pa.array(u.BOARD_NAMES).take(pa.array(b.board.astype(np.int32))),
            "lot": pa.array(b.lot, pa.int64()), "suspended": pa.array(b.suspended)}),
        "profiles": pa.table({"name": pa.array(b.profile_names, pa.string()), **{
            ln: decimal_text(b.profile_lines[:, k], RATIO) for k, ln in enumerate(u.LINE_NAMES)}}),
        "accounts": pa.table({
            "account_id": ids, "cash": decimal_text(b.cash, MONEY),
            "accrued_interest_fees": decimal_text(b.accrued, MONEY),
            "other_debt": decimal_text(b.other_debt + orphan, MONEY),
            "other_collateral": decimal_text(b.other_collateral, MONEY),
            "profile": pa.array(b.profile_names).take(pa.array(b.profile_of.astype(np.int32)))}),
        "positions": pa.table({
            "account_id": ids.take(pa.array(owner)), "symbol": symbols.take(
                pa.array(b.pos_sec[rows].astype(np.int64))),
            "kind": pa.array(u.KIND_NAMES).take(pa.array(kind.astype(np.int32))),
            "qty": pa.array(qty, pa.int64()),
            "financed_cost": decimal_text(np.where(fin, cost, 0), MONEY, fin),
            "fin_margin_ratio": decimal_text(np.where(fin, mr, 0), RATIO, fin),
            "short_sell_amount": decimal_text(np.where(short, cost, 0), MONEY, short),
            "short_margin_ratio": decimal_text(np.where(short, mr, 0), RATIO, short)}),
    }
    for name, t in tables.items():
        pq.write_table(t, out / f"{name}.parquet")
    if intraday is not None:
        rep = engine.reported
        pq.write_table(pa.table({
            "account_id": ids,
            "min_ratio": pa.array(np.where(np.isfinite(intraday.min_ratio),
                                           intraday.min_ratio, np.nan), from_pandas=True),
            "min_ratio_ns": pa.array(intraday.min_ns),
            "reported_tier": pa.array([u.TIER_NAMES[t] if t >= 0 else None
                                       for t in rep.tolist()], pa.string()),
        }), out / "intraday.parquet")
