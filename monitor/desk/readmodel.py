"""The risk desk's server side: the queries behind the desk screen (monitor/static/) and the
operator's acknowledgements.

Everything here runs on the monitor's event loop, between engine cycles (the engine and its
state are owned by that one thread): HTTP GETs under ``/api/`` are answered synchronously from
``AlertServer``'s ``process_request``, acknowledgements arrive as websocket request messages.
Each query is a few vectorised passes or one Numba kernel over the book (see docs/risk-desk.md
for the measured costs at 1M accounts); the crowding table, the only whole-book query that
touches every holding, is cached for ``crowding_ttl`` seconds.

The browser never receives the book: lists are ranked and paged here (``limit`` <= 500), and a
drill-down is one account.

Bounded memory kept for the desk:

- the published events themselves in one ring bounded by bytes (``event_bytes``, the
  ``desk_event_bytes`` setting; monitor/eventring.py), oldest evicted first; the alert feed's
  back-fill (the ``recent`` newest), each account's last ``events_per_account`` (drill-down)
  and the event-id index (what an acknowledgement may refer to) are views of that ring;
- a ratio history (time, ratio) for at most ``history_accounts`` accounts that had an event or
  were drilled into, sampled every heartbeat when the ratio moved, ``history_points`` points per
  account (halved in resolution when full, so it always spans the whole run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from feeds.net import mask_url
from kernels import units as u
from kernels.desk import (
    N_CROSS,
    account_shift,
    crowding,
    plain_tiers_of,
    shift_all,
    shift_holders,
    tally,
)
from kernels.stress import distances
from monitor.adapters.outbox import encode_event
from monitor.book.contracts import NOTICE_DUE, NOTICE_EXPIRED, contract_dict, contract_row
from monitor.core.engine import Engine
from monitor.core.state import yuan
from monitor.desk.eventring import EventRing
from monitor.errors import QueryError

log = logging.getLogger("monitor.desk.readmodel")

JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
CROSS_KEYS = ("warning", "margin_call", "forced_liquidation")  # the tier each line leads into
ACK_KEY = "margin:acks"
MAX_LIMIT = 500
MAX_NOTE = 500
MAX_BY = 64


# ------------------------------------------------------------------------------ ack stores

class FileAckStore:
    """Acknowledgements in one JSON file (the embedded store, used when no Redis is
    configured); rewritten atomically (temp file, fsync, rename) on every acknowledgement."""

    kind = "file"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._data: dict[str, dict] = {}
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return f"file {self.path}"

    async def load(self) -> dict[str, dict]:
        def read() -> dict[str, dict]:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return {}
            data = orjson.loads(raw) if raw.strip() else {}
            if not isinstance(data, dict):
                raise ValueError(f"{self.path}: expected a JSON object")
            return {str(k): v for k, v in data.items() if isinstance(v, dict)}

        self._data = await asyncio.to_thread(read)
        return dict(self._data)

    async def put(self, event_id: str, rec: dict) -> None:
        async with self._lock:
            self._data[event_id] = rec
            payload = orjson.dumps(self._data)  # bytes made on the loop; the thread only writes
            await asyncio.to_thread(self._write, payload)

    def _write(self, payload: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    async def aclose(self) -> None:
        pass


class RedisAckStore:
    """Acknowledgements in the Redis hash ``margin:acks`` (field event_id -> JSON record)."""

    kind = "redis"

    def __init__(self, url: str, key: str = ACK_KEY, timeout: float = 2.0,
                 cluster: bool = False):
        from feeds.net import redis_client

        self.key = key
        self._masked = mask_url(url)
        self._client = redis_client(url, cluster=cluster, socket_timeout=timeout,
                                    socket_connect_timeout=timeout)

    def describe(self) -> str:
        return f"redis {self._masked} hash {self.key}"

    async def load(self) -> dict[str, dict]:
        raw = await self._client.hgetall(self.key)
        out = {}
        for k, v in raw.items():
            with contextlib.suppress(orjson.JSONDecodeError):
                rec = orjson.loads(v)
                if isinstance(rec, dict):
                    out[k.decode() if isinstance(k, bytes) else str(k)] = rec
        return out

    async def put(self, event_id: str, rec: dict) -> None:
        await self._client.hset(self.key, event_id, orjson.dumps(rec))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


# ------------------------------------------------------------------------------ the desk

class _Series:
    __slots__ = ("t", "r")

    def __init__(self) -> None:
        self.t = array("q")
        self.r = array("d")


class Desk:
    def __init__(self, engine: Engine, *, summary: Callable[[], dict] | None = None,
                 acks: FileAckStore | RedisAckStore | None = None,
                 recent: int = 5_000, events_per_account: int = 50,
                 event_bytes: int = 256 * 2**20,
                 history_accounts: int = 2_000, history_points: int = 1_000,
                 crowding_ttl: float = 5.0, clock: Callable[[], int] = time.time_ns):
        self.engine = engine
        self.state = engine.state
        self.book = engine.state.book
        self._summary = summary or (lambda: engine.summary(clock()))
        self.store = acks
        self.acks: dict[str, dict] = {}
        self.acks_loaded = acks is None
        self.notify: Callable[[Mapping[str, Any]], None] | None = None  # ACK frames out
        self.clock = clock
        self.crowding_ttl = crowding_ttl
        self._n_recent = recent
        self._per_account = events_per_account
        self.events = EventRing(event_bytes, self.book.account_index, events_per_account)
        self._max_hist = history_accounts
        self._hist_points = history_points
        self._hist: OrderedDict[int, _Series] = OrderedDict()
        self._ratio_cache: tuple[Any, float, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._crowd: dict | None = None
        self._scratch: tuple[np.ndarray, ...] | None = None
        self._pre_price: np.ndarray | None = None  # prices before the running cycle
        self._pre_account: tuple[int, float | None] | None = None  # before an account event
        self._unindexed: deque[tuple[list[dict], list[bytes] | None]] = deque()
        self._n_unindexed = 0
        self.timings: dict[str, float] = {}  # ms of the last run of each query

    # -------------------------------------------------------------- fed by the runtime
    def before_cycle(self) -> None:
        """Called just before a price cycle: keeps the prices (one small copy per cycle) so
        the cycle's events can carry the ratio before it."""
        self._pre_price = self.state.price.copy()
        self._pre_account = None

    def before_account_event(self, ev: Mapping[str, Any]) -> None:
        """Called just before an account event is applied: the named account's ratio."""
        self._pre_price = None
        aid = ev.get("account_id") if isinstance(ev, Mapping) else None
        a = self.book.account_index.get(aid) if isinstance(aid, str) else None
        if a is None:
            self._pre_account = None
        else:
            r = self._ratio_of(np.array([a], dtype=np.int64))[0]
            self._pre_account = (a, None if r != r else float(r))

    def enrich(self, events: list[dict]) -> None:
        """Add ``previous_ratio`` to each TIER_CHANGE event: the account's ratio before the
        cycle or account event that moved it (null when unknown: at start-up, or for an
        account event that named no account)."""
        pre_price, pre_acct = self._pre_price, self._pre_account
        self._pre_price = self._pre_account = None
        changes = [e for e in events if e.get("kind") == "TIER_CHANGE"]
        if not changes:
            return
        index = self.book.account_index
        if pre_price is not None:
            st, h = self.state, self.state.h
            get = index.get
            idx = np.fromiter((get(e["account_id"], 0) for e in changes), dtype=np.int64,
                              count=len(changes))
            delta = st.price - pre_price
            da = np.zeros(idx.shape[0], dtype=np.int64)
            dl = np.zeros(idx.shape[0], dtype=np.int64)
            account_shift(idx, delta, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr,
                          h.short_sec, h.short_qty, da, dl)
            A, L = st.values(idx)
            A, L = A - da, L - dl
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.where(L > 0, A / np.where(L > 0, L, 1), np.nan).tolist()
            for e, x in zip(changes, r, strict=True):
                e["previous_ratio"] = None if x != x else round(x, 6)
            return
        for e in changes:
            e["previous_ratio"] = (pre_acct[1] if pre_acct is not None
                                   and index.get(e["account_id"]) == pre_acct[0] else None)

    def record(self, events: list[dict], encoded: list[bytes] | None = None) -> None:
        """Take published events (called on the tick path: O(1), the indexing waits for the
        next query or heartbeat)."""
        if events:
            self._unindexed.append((events, encoded))
            self._n_unindexed += len(events)
            if self._n_unindexed > 200_000:
                self.flush()

    def flush(self) -> None:
        """Index the events taken since the last flush."""
        while self._unindexed:
            events, encoded = self._unindexed.popleft()
            self._n_unindexed -= len(events)
            self._index(events, encoded)

    def _index(self, events: list[dict], encoded: list[bytes] | None) -> None:
        if encoded is None:
            encoded = [encode_event(e) for e in events]
        get_index = self.book.account_index.get
        add = self.events.add
        metas = []
        for e, raw in zip(events, encoded, strict=True):
            trig = e.get("trigger")
            meta = (e.get("event_id"), e.get("account_id"), e.get("kind"), e.get("tier"),
                    e.get("previous_tier"), trig.get("symbol") if trig.__class__ is dict else None,
                    e.get("ts_published") or 0, raw)
            metas.append(meta)
            add(meta)
        # ratio histories: only the last `history_accounts` changes of a burst can keep one
        tail = [(e, m) for e, m in zip(events[-4 * self._max_hist:], metas[-4 * self._max_hist:],
                                       strict=True) if m[2] == "TIER_CHANGE"]
        for e, m in tail[-self._max_hist:]:
            a = get_index(m[1])
            if a is not None:
                self._point(a, m[6], e.get("ratio"))

    def sample(self, now_ns: int | None = None) -> None:
        """Append the current ratio of every tracked account whose ratio moved (heartbeat)."""
        self.flush()
        if not self._hist:
            return
        now = self.clock() if now_ns is None else now_ns
        idx = np.fromiter(self._hist.keys(), dtype=np.int64, count=len(self._hist))
        ratio = self._ratio_of(idx)
        for a, r in zip(idx.tolist(), ratio.tolist(), strict=True):
            s = self._hist[a]
            if len(s.r) and _same(s.r[-1], r):
                continue
            self._append(s, now, r)

    def _point(self, a: int, ts: int, r: float | None) -> None:
        s = self._hist.get(a)
        if s is None:
            s = self._hist[a] = _Series()
            if len(self._hist) > self._max_hist:
                self._hist.popitem(last=False)
        else:
            self._hist.move_to_end(a)
        self._append(s, ts, float("nan") if r is None else float(r))

    def _append(self, s: _Series, ts: int, r: float) -> None:
        if len(s.t) >= self._hist_points:  # halve the resolution, keep the whole span
            last_t, last_r = s.t[-1], s.r[-1]
            s.t, s.r = s.t[::2], s.r[::2]
            if s.t[-1] != last_t:
                s.t.append(last_t)
                s.r.append(last_r)
        s.t.append(int(ts))
        s.r.append(r)

    # -------------------------------------------------------------- acknowledgements
    async def load_acks(self, timeout: float = 5.0) -> bool:
        """Load stored acknowledgements (merged under any made since start). False on failure
        (the runtime retries)."""
        if self.store is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                stored = await self.store.load()
        except Exception as e:  # noqa: BLE001 - an unreachable store is retried
            log.warning("desk: acknowledgements not loaded from %s: %s", self.store.describe(),
                        e)
            return False
        self.acks = {**stored, **self.acks}
        self.acks_loaded = True
        log.info("desk: %d acknowledgement(s) loaded from %s", len(stored),
                 self.store.describe())
        return True

    async def rpc(self, msg: Mapping[str, Any]) -> dict:
        """A websocket request message ``{"op": ..., "req": id, ...}``; returns the reply body
        (the server adds ``kind: REPLY`` and ``req``)."""
        self.flush()
        op = msg.get("op")
        if op == "ack":
            return await self._ack(msg)
        return {"ok": False, "error": f"unknown op {str(op)[:40]!r}; expected 'ack'"}

    async def _ack(self, msg: Mapping[str, Any]) -> dict:
        eid, note, by = msg.get("event_id"), msg.get("note", ""), msg.get("by", "")
        if not isinstance(eid, str) or not eid or len(eid) > 100:
            return {"ok": False, "error": "event_id must be a non-empty string"}
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            return {"ok": False, "error": f"note must be a string of at most {MAX_NOTE} chars"}
        if not isinstance(by, str) or len(by) > MAX_BY:
            return {"ok": False, "error": f"by must be a string of at most {MAX_BY} chars"}
        meta = self.events.get(eid)
        if meta is None:
            return {"ok": False, "error": f"unknown event {eid!r} (not among the events this "
                                          "monitor holds: never seen, or older than its "
                                          "desk_event_bytes memory)"}
        rec = {"event_id": eid, "note": note.strip(), "by": by.strip() or "operator",
               "ts": self.clock(), "account_id": meta[1], "event_kind": meta[2], "tier": meta[3],
               "previous_tier": meta[4], "event_ts": meta[6]}
        if self.store is not None:
            try:
                async with asyncio.timeout(5.0):
                    await self.store.put(eid, rec)
            except Exception as e:  # noqa: BLE001 - the operator must know it is not stored
                log.error("desk: acknowledgement of %s not stored in %s: %s", eid,
                          self.store.describe(), e)
                return {"ok": False, "error": f"not stored ({self.store.kind} unavailable); "
                                              "try again"}
        self.acks[eid] = rec
        if self.notify is not None:
            self.notify({**rec, "kind": "ACK"})
        return {"ok": True, "ack": rec}

    # -------------------------------------------------------------- HTTP API
    def api(self, path: str, query: Mapping[str, list[str]]) -> tuple[int, bytes]:
        """Answer ``GET /api/<name>``: (status, JSON body)."""
        self.flush()
        name = path[len("/api/"):] if path.startswith("/api/") else ""
        fn = self._routes().get(name)
        if fn is None:
            return 404, orjson.dumps({"error": f"no such endpoint {path!r}",
                                      "endpoints": sorted(self._routes())})
        q = {k: v[-1] for k, v in query.items() if v and k != "token"}
        t0 = time.perf_counter()
        try:
            body = fn(q)
        except QueryError as e:
            return 400, orjson.dumps({"error": str(e)})
        ms = (time.perf_counter() - t0) * 1e3
        self.timings[name] = ms
        if isinstance(body, bytes):
            return 200, body
        body.setdefault("ms", round(ms, 3))
        return 200, orjson.dumps(body, option=JSON_OPTS)

    def _routes(self) -> dict[str, Callable[[dict], Any]]:
        return {"summary": self.q_summary, "worst": self.q_worst, "accounts": self.q_accounts,
                "account": self.q_account, "events": self.q_events, "calls": self.q_calls,
                "crowding": self.q_crowding, "whatif": self.q_whatif, "acks": self.q_acks,
                "symbols": self.q_symbols, "event": self.q_event}

    # ---- summary
    def q_summary(self, q: dict) -> dict:
        s = dict(self._summary())
        s["server_ns"] = self.clock()
        s["acks"] = {"count": len(self.acks), "loaded": self.acks_loaded,
                     "store": self.store.kind if self.store is not None else None}
        s["desk_events"] = self.events.stats()  # the bounded event memory: held, bytes, evicted
        s["lines_bp"] = dict(zip(u.LINE_NAMES, self.book.profile_lines[0].tolist(),
                                 strict=True))
        return s

    # ---- ranked account lists
    def q_worst(self, q: dict) -> dict:
        q.setdefault("limit", q.get("n", "20"))
        return self.q_accounts(q)

    def q_accounts(self, q: dict) -> dict:
        """Accounts with debt, lowest ratio first; filters `tier` (reported, comma-separated)
        and `symbol` (holders); paged by `offset` and `limit`."""
        limit = _int(q, "limit", 50, 1, MAX_LIMIT)
        offset = _int(q, "offset", 0, 0, 10_000_000)
        ratio, _, _ = self._ratios()
        cand: np.ndarray | None = None
        if q.get("symbol"):
            cand = self._holders(self._symbol(q["symbol"]))
        tiers = _tiers(q.get("tier"))
        if tiers is not None:
            want = np.array(tiers, dtype=np.int8)
            rep = self.engine.reported
            cand = (np.flatnonzero(np.isin(rep, want)) if cand is None
                    else cand[np.isin(rep[cand], want)])
        r = ratio if cand is None else ratio[cand]
        total = int(np.count_nonzero(np.isfinite(r)))
        k = min(offset + limit, total)
        if k <= offset:
            top = np.empty(0, dtype=np.int64)
        else:
            if k < r.shape[0]:
                part = np.argpartition(r, k - 1)[:k]
            else:
                part = np.arange(r.shape[0])
            part = part[np.isfinite(r[part])]
            part = part[np.lexsort((part, r[part]))][offset:k]
            top = part if cand is None else cand[part]
        return {"total": total, "offset": offset, "limit": limit,
                "rows": self._rows(top.astype(np.int64))}

    def _rows(self, idx: np.ndarray) -> list[dict]:
        if idx.shape[0] == 0:
            return []
        st, h, b = self.state, self.state.h, self.book
        A, L = st.values(idx)
        lines = b.profile_lines[b.profile_of[idx]]
        dist = np.empty((idx.shape[0], 3), dtype=np.float64)
        distances(h.base_assets[idx], A, L, A - h.base_assets[idx], b.profile_of[idx],
                  b.profile_lines, dist)
        S = u.RATIO_SCALE
        rows = []
        for i, a in enumerate(idx.tolist()):
            Ai, Li = int(A[i]), int(L[i])
            ratio = round(Ai / Li, 6) if Li > 0 else None
            nxt = None
            for k in range(3):  # the first line (from the top) the account is still above
                bp = int(lines[i, u.LINE_NORMAL + k])
                if Li > 0 and Ai * S >= bp * Li:
                    d = dist[i, k]
                    nxt = {"tier": CROSS_KEYS[k], "line": bp / S,
                           "gap": round(Ai / Li - bp / S, 6),
                           "fall": None if d != d else round(float(d), 6)}
                    break
            call = self.engine.calls.get(a)
            rows.append({"account_id": b.account_ids[a],
                         "tier": u.TIER_NAMES[int(self.engine.reported[a])],
                         "ratio": ratio, "assets": yuan(Ai), "liabilities": yuan(Li),
                         "next": nxt,
                         "call": call.as_dict() if call is not None else None})
        return rows

    def _ratios(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ratio (+inf without debt), assets and liabilities of every account; reused while
        the book has not moved (and for at most 0.25 s)."""
        eng = self.engine
        ae = eng.account_events.applied if eng.account_events is not None else 0
        key = (eng.cycles, eng.sweeps, ae, eng.seq)
        now = time.monotonic()
        c = self._ratio_cache
        if c is not None and c[0] == key and now - c[1] < 0.25:
            return c[2], c[3], c[4]
        A = self.state.assets()
        L = self.state.liabilities()
        ratio = np.full(A.shape[0], np.inf)
        np.divide(A, L, out=ratio, where=L > 0)
        self._ratio_cache = (key, now, ratio, A, L)
        return ratio, A, L

    def _ratio_of(self, idx: np.ndarray) -> np.ndarray:
        A, L = self.state.values(idx)
        out = np.full(idx.shape[0], np.nan)
        np.divide(A, L, out=out, where=L > 0)
        return np.round(out, 6)

    def _symbol(self, sym: str) -> int:
        s = self.book.symbol_index.get(sym.strip().upper())
        if s is None:
            raise QueryError(f"unknown symbol {sym[:32]!r}")
        return s

    def _holders(self, s: int) -> np.ndarray:
        h = self.state.h
        mask = np.zeros(self.book.n_accounts, dtype=bool)
        for hptr, hacct, hqty in ((h.long_hptr, h.long_hacct, h.long_hqty),
                                  (h.short_hptr, h.short_hacct, h.short_hqty)):
            lo, hi = int(hptr[s]), int(hptr[s + 1])
            mask[hacct[lo:hi][hqty[lo:hi] > 0]] = True
        return np.flatnonzero(mask)

    # ---- one account
    def q_account(self, q: dict) -> dict:
        aid = q.get("id") or q.get("account_id")
        if not aid:
            raise QueryError("give ?id=ACCOUNT_ID")
        a = self.book.account_index.get(aid.strip())
        if a is None:
            raise QueryError(f"unknown account {aid[:40]!r}")
        return self.account(a)

    def account(self, a: int) -> dict:
        st, b, eng = self.state, self.book, self.engine
        fig = st.figures(a)
        stress = st.stress(a)
        lines = b.profile_lines[b.profile_of[a]]
        out: dict[str, Any] = dict(fig)
        out["plain_tier"] = out["tier"]
        out["tier"] = u.TIER_NAMES[int(eng.reported[a])]
        out["profile"] = b.profile_names[int(b.profile_of[a])]
        out["lines"] = {name: int(bp) / u.RATIO_SCALE
                        for name, bp in zip(u.LINE_NAMES, lines.tolist(), strict=True)}
        out.update(stress)
        # assets and liabilities, itemised
        lo = int(b.pos_ptr[a])
        used = int(b.pos_used[a]) if b.pos_used is not None else int(b.pos_ptr[a + 1]) - lo
        positions = []
        financed = short_mv = long_mv = 0
        for j in range(lo, lo + used):
            qty = int(b.pos_qty[j])
            if qty <= 0:
                continue
            s = int(b.pos_sec[j])
            kind = int(b.pos_kind[j])
            p = int(st.price[s])
            mv = qty * p
            cost = int(b.pos_cost[j])
            if kind == u.FINANCED:
                pnl, financed = mv - cost, financed + cost
            elif kind == u.SHORT:
                pnl = cost - mv
            else:
                pnl = None
            if kind == u.SHORT:
                short_mv += mv
            else:
                long_mv += mv
            prev = int(b.prev_close[s])
            positions.append({
                "symbol": b.symbols[s], "kind": u.KIND_NAMES[kind], "qty": qty,
                "price": yuan(p), "change": round(p / prev - 1, 6) if prev > 0 else None,
                "market_value": yuan(mv), "haircut": round(float(b.haircut[s]), 4),
                "cost": yuan(cost) if kind != u.COLLATERAL else None,
                "pnl": yuan(pnl) if pnl is not None else None,
                "margin_ratio": (round(float(b.pos_margin_ratio[j]), 4)
                                 if kind != u.COLLATERAL else None),
                "board": u.BOARD_NAMES[int(b.board[s])], "suspended": bool(b.suspended[s]),
                "at_limit_down": bool(st.has_limit[s] and p <= st.limit_down[s]),
            })
        positions.sort(key=lambda r: -abs(r["market_value"]))
        cash = int(b.cash[a])
        out["breakdown"] = {
            "cash": yuan(cash), "long_market_value": yuan(long_mv),
            "other_collateral": yuan(int(b.other_collateral[a])),
            "financed_principal": yuan(financed), "short_market_value": yuan(short_mv),
            "interest_fees": yuan(int(b.accrued[a])),
            "negative_cash": yuan(max(-cash, 0)), "other_debt": yuan(int(b.other_debt[a])),
        }
        out["positions"] = positions
        out["contracts"] = _contracts(b, st, a, lo, used)
        # the plan that closes each expired contract still open, at the current prices (the
        # liquidator's re-pricing of a CONTRACT_EXPIRED, monitor/liquidator/repricer.py)
        t = eng.now(time.time_ns())
        out["contract_plans"] = {
            c["contract_id"]: eng.contracts.plan(a, j, t) for c, j in
            ((c, contract_row(b, a, c["contract_id"])) for c in out["contracts"]
             if c["notice"] == "EXPIRED") if j >= 0}
        if fig["liquidation_status"] != u.STATUS_NAMES[u.NOT_REQUIRED]:
            out["plan"] = st.plan_detail(a)
        else:
            out["plan"] = {"orders": [], "ratio_after": fig["ratio"], "residual": 0.0,
                           "cash_repayment": 0.0, "interest_repaid": 0.0,
                           "principal_repaid": 0.0}
        call = eng.calls.get(a)
        out["call"] = call.as_dict() if call is not None else None
        # history: start tracking on the first drill-down, then add the current point
        now = self.clock()
        r = fig["ratio"]
        s = self._hist.get(a)
        if s is None or not len(s.r) or not _same(s.r[-1], float("nan") if r is None else r):
            self._point(a, now, r)
        else:
            self._hist.move_to_end(a)
        s = self._hist[a]
        out["history"] = [[t, None if v != v else v] for t, v in zip(s.t, s.r, strict=True)]
        evs = self.events.of_account(a, self._per_account)  # evicted events are not shown
        out["events"] = [m for m in reversed(evs)]  # raw event bytes: re-encoded below
        out["acks"] = {m[0]: self.acks[m[0]] for m in evs if m[0] in self.acks}
        for rec in self.acks.values():  # acknowledgements made in an earlier run
            if rec.get("account_id") == b.account_ids[a]:
                out["acks"].setdefault(rec["event_id"], rec)
        out["server_ns"] = now
        return self._with_raw_events(out)

    def _with_raw_events(self, out: dict) -> dict:
        out["events"] = [orjson.Fragment(m[7]) for m in out["events"]]
        return out

    # ---- events
    def q_event(self, q: dict) -> bytes:
        """One published event by id, as it was published (`event`: the exact JSON of the
        stream's `data`), or `held: false` when the desk's memory does not hold it (never
        published by this monitor, or evicted). The liquidator's plan re-check asks it."""
        eid = (q.get("id") or q.get("event_id") or "").strip()
        if not eid:
            raise QueryError("give ?id=EVENT_ID")
        rec = self.events.get(eid)
        if rec is None:
            return orjson.dumps({"event_id": eid, "held": False, "event": None})
        return (b'{"event_id":' + orjson.dumps(eid) + b',"held":true,"event":' + rec[7]
                + b"}")

    def q_events(self, q: dict) -> bytes:
        """Recent events, newest first; filters tier (event's tier or previous tier), account,
        symbol (trigger), kind; `before_seq` pages back."""
        limit = _int(q, "limit", 200, 1, 2_000)
        tiers = set(t.strip().upper() for t in q["tier"].split(",")) if q.get("tier") else None
        acct = q.get("account", "").strip() or None
        sym = q.get("symbol", "").strip().upper() or None
        kinds = set(k.strip().upper() for k in q["kind"].split(",")) if q.get("kind") else None
        out = []
        for m in self.events.newest(self._n_recent):
            if tiers is not None and m[3] not in tiers and m[4] not in tiers:
                continue
            if acct is not None and m[1] != acct:
                continue
            if sym is not None and m[5] != sym:
                continue
            if kinds is not None and m[2] not in kinds:
                continue
            out.append(m[7])
            if len(out) >= limit:
                break
        return (b'{"events":[' + b",".join(out) + b'],"held":'
                + str(min(len(self.events), self._n_recent)).encode() + b"}")

    def q_acks(self, q: dict) -> dict:
        limit = _int(q, "limit", 200, 1, 5_000)
        recs = sorted(self.acks.values(), key=lambda r: -int(r.get("ts") or 0))[:limit]
        return {"total": len(self.acks), "loaded": self.acks_loaded,
                "store": self.store.kind if self.store is not None else None, "acks": recs}

    def q_calls(self, q: dict) -> dict:
        """Open margin calls, nearest deadline first."""
        limit = _int(q, "limit", 50, 1, MAX_LIMIT)
        calls = self.engine.calls
        accts = list(calls.open_accounts())
        accts.sort(key=lambda a: (calls.get(a).deadline_ns, calls.get(a).issued_ns))
        rows = self._rows(np.array(accts[:limit], dtype=np.int64))
        return {"total": len(accts), "now_ns": self.clock(), "rows": rows}

    def q_symbols(self, q: dict) -> dict:
        """Symbols starting with `prefix` (for the what-if and filter inputs)."""
        prefix = q.get("prefix", "").strip().upper()
        limit = _int(q, "limit", 20, 1, 200)
        out = [s for s in self.book.symbols if s.startswith(prefix)][:limit]
        return {"symbols": out, "boards": list(u.BOARD_NAMES)}

    # ---- crowding and what-if
    def crowding_table(self, force: bool = False) -> dict:
        """Per security alone at limit-down: holders, accounts and debt crossing each line.
        Cached for `crowding_ttl` seconds."""
        now = time.monotonic()
        c = self._crowd
        if c is not None and not force and now - c["at"] < self.crowding_ttl:
            return c
        st, h, b = self.state, self.state.h, self.book
        t0 = time.perf_counter()
        n = b.n_securities
        holders = np.zeros(n, dtype=np.int64)
        count = np.zeros((n, N_CROSS), dtype=np.int64)
        debt = np.zeros((n, N_CROSS), dtype=np.int64)
        # each security alone at limit-down (one without a limit: the stress's shock)
        move = np.maximum(st.price - st.stress_prices()[0], 0)
        _, A, L = self._ratios()
        crowding(move, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr, h.short_sec,
                 h.short_qty, A, L, b.profile_of, b.profile_lines, holders, count, debt)
        ms = (time.perf_counter() - t0) * 1e3
        self._crowd = {"at": now, "ns": self.clock(), "ms": ms, "holders": holders,
                       "count": count, "debt": debt}
        self.timings["crowding_refresh"] = ms
        return self._crowd

    def q_crowding(self, q: dict) -> dict:
        limit = _int(q, "limit", 30, 1, MAX_LIMIT)
        offset = _int(q, "offset", 0, 0, 1_000_000)
        sort = q.get("sort", "margin_call")
        by = q.get("by", "accounts")
        if sort not in (*CROSS_KEYS, "holders"):
            raise QueryError("sort must be one of warning, margin_call, forced_liquidation, "
                             "holders")
        if by not in ("accounts", "debt"):
            raise QueryError("by must be accounts or debt")
        c = self.crowding_table()
        b, st = self.book, self.state
        if sort == "holders":
            key = c["holders"]
            tie = c["count"][:, 1]
        else:
            k = CROSS_KEYS.index(sort)
            key = c["count"][:, k] if by == "accounts" else c["debt"][:, k]
            tie = c["debt"][:, k] if by == "accounts" else c["count"][:, k]
        if q.get("board"):
            code = u.BOARD_CODES.get(q["board"].strip().lower())
            if code is None:
                raise QueryError(f"unknown board {q['board'][:20]!r}")
            sel = np.flatnonzero(b.board == code)
        else:
            sel = np.arange(b.n_securities)
        order = sel[np.lexsort((sel, -tie[sel], -key[sel]))][offset:offset + limit]
        rows = []
        down = st.stress_prices()[0]
        for s in order.tolist():
            p, ld = int(st.price[s]), int(down[s])
            rows.append({
                "symbol": b.symbols[s], "board": u.BOARD_NAMES[int(b.board[s])],
                "price": yuan(p), "limit_down": yuan(ld), "has_limit": bool(st.has_limit[s]),
                "move": round(ld / p - 1, 6) if p > 0 else None,
                "holders": int(c["holders"][s]),
                "cross": {name: {"accounts": int(c["count"][s, k]),
                                 "debt": yuan(int(c["debt"][s, k]))}
                          for k, name in enumerate(CROSS_KEYS)},
            })
        tot = c["count"].sum(axis=0)
        return {"computed_ns": c["ns"], "refresh_ms": round(c["ms"], 3),
                "ttl_s": self.crowding_ttl, "securities": int(sel.shape[0]),
                "offset": offset, "limit": limit, "sort": sort, "by": by, "rows": rows,
                "any_security": {name: int(tot[k]) for k, name in enumerate(CROSS_KEYS)}}

    def q_whatif(self, q: dict) -> dict:
        """Shock a symbol, a board or everything by `shock` (fraction, -0.99 .. 1.0): every
        account re-tiered at the shocked prices (longs and shorts), counts and debt per tier
        now and after, the transitions, and the accounts hit hardest."""
        scope = q.get("scope", "all").strip()
        try:
            shock = float(q.get("shock", "-0.1"))
        except ValueError:
            raise QueryError("shock must be a number, e.g. -0.1") from None
        if not (-0.99 <= shock <= 1.0) or shock != shock:
            raise QueryError("shock must be between -0.99 and 1.0")
        top = _int(q, "top", 20, 0, 200)
        clamp = q.get("limit_band", "0") in ("1", "true", "yes")
        b, st, h = self.book, self.state, self.state.h
        if scope == "all":
            mask = np.ones(b.n_securities, dtype=bool)
        elif scope.startswith("symbol:"):
            mask = np.zeros(b.n_securities, dtype=bool)
            for sym in scope[len("symbol:"):].split(","):
                if sym.strip():
                    mask[self._symbol(sym)] = True
        elif scope.startswith("board:"):
            code = u.BOARD_CODES.get(scope[len("board:"):].strip().lower())
            if code is None:
                raise QueryError(f"unknown board in {scope[:30]!r}; boards: "
                                 f"{', '.join(u.BOARD_NAMES)}")
            mask = b.board == code
        else:
            raise QueryError("scope must be all, symbol:SYM[,SYM...] or board:NAME")
        t0 = time.perf_counter()
        tick = u.LIMIT_TICK
        after = st.price.copy()
        shocked = np.floor(st.price[mask] * (1.0 + shock) / tick + 0.5).astype(np.int64) * tick
        after[mask] = np.maximum(shocked, tick)
        if clamp:
            after = np.clip(after, st.limit_down, st.limit_up)
        delta = after - st.price
        secs = np.flatnonzero(delta).astype(np.int64)
        n, nt = b.n_accounts, len(u.TIER_NAMES)
        if self._scratch is None or self._scratch[0].shape[0] != n:
            self._scratch = (np.empty(n, dtype=np.int8), np.empty(n, dtype=np.int8),
                             np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64))
        t_now, t_after, A1, L1 = self._scratch
        _, A0, L0 = self._ratios()
        rows = int(np.sum(h.long_hptr[secs + 1] - h.long_hptr[secs])
                   + np.sum(h.short_hptr[secs + 1] - h.short_hptr[secs]))
        if rows < 0.15 * max(h.n_rows, 1):  # few holders: walk them (security-major)
            A1[:] = A0
            L1[:] = L0
            shift_holders(secs, delta, h.long_hptr, h.long_hacct, h.long_hqty, h.short_hptr,
                          h.short_hacct, h.short_hqty, A1, L1)
            plain_tiers_of(A0, L0, b.profile_of, b.profile_lines, t_now)
            plain_tiers_of(A1, L1, b.profile_of, b.profile_lines, t_after)
            path = "holders"
        else:
            shift_all(delta, h.long_ptr, h.long_sec, h.long_qty, h.short_ptr, h.short_sec,
                      h.short_qty, A0, L0, b.profile_of, b.profile_lines, A1, L1, t_now,
                      t_after)
            path = "sweep"
        trans = np.zeros((nt, nt), dtype=np.int64)
        trans_debt = np.zeros((nt, nt), dtype=np.int64)
        debt_after = np.zeros(nt, dtype=np.int64)
        tally(t_now, t_after, L0, L1, trans, trans_debt, debt_after)
        t_kernel = time.perf_counter()
        cnt_now, cnt_after = trans.sum(axis=1), trans.sum(axis=0)
        debt_now = trans_debt.sum(axis=1)
        transitions = []
        for i in range(nt):
            for j in range(nt):
                if i != j and trans[i, j]:
                    transitions.append({"from": u.TIER_NAMES[i], "to": u.TIER_NAMES[j],
                                        "accounts": int(trans[i, j]),
                                        "debt": yuan(int(trans_debt[i, j]))})
        transitions.sort(key=lambda r: (u.TIER_CODES[r["to"]], -r["accounts"]))
        worse_n = int(np.tril(trans, -1).sum())  # i > j: a worse tier after
        worse_debt = int(np.tril(trans_debt, -1).sum())
        hardest = []
        if top and worse_n:
            worse = np.flatnonzero(t_after < t_now)
            r_after = A1[worse] / L1[worse]
            k = min(top, worse.shape[0])
            pick = (np.argpartition(r_after, k - 1)[:k] if k < worse.shape[0]
                    else np.arange(worse.shape[0]))
            pick = pick[np.argsort(r_after[pick], kind="stable")]
            for i in pick.tolist():
                a = int(worse[i])
                hardest.append({"account_id": b.account_ids[a],
                                "tier_now": u.TIER_NAMES[int(t_now[a])],
                                "tier_after": u.TIER_NAMES[int(t_after[a])],
                                "ratio_now": round(int(A0[a]) / int(L0[a]), 6),
                                "ratio_after": round(float(r_after[i]), 6),
                                "liabilities": yuan(int(L0[a]))})
        ms = (time.perf_counter() - t0) * 1e3

        def per_tier(cnt, debt):
            return {name: {"accounts": int(cnt[i]), "debt": yuan(int(debt[i]))}
                    for i, name in enumerate(u.TIER_NAMES)}

        return {"scope": scope, "shock": shock, "limit_band": clamp,
                "securities": int(mask.sum()), "now": per_tier(cnt_now, debt_now),
                "after": per_tier(cnt_after, debt_after), "transitions": transitions,
                "worse": {"accounts": worse_n, "debt": yuan(worse_debt)}, "path": path,
                "hardest": hardest, "kernel_ms": round((t_kernel - t0) * 1e3, 3),
                "ms": round(ms, 3)}


# ------------------------------------------------------------------------------ helpers

def _int(q: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    v = q.get(name)
    if v is None or v == "":
        return default
    try:
        x = int(v)
    except ValueError:
        raise QueryError(f"{name} must be an integer") from None
    if not lo <= x <= hi:
        raise QueryError(f"{name} must be between {lo} and {hi}")
    return x


def _tiers(v: str | None) -> list[int] | None:
    if not v:
        return None
    out = []
    for t in v.split(","):
        t = t.strip().upper()
        if not t:
            continue
        if t not in u.TIER_CODES:
            raise QueryError(f"unknown tier {t[:30]!r}; tiers: {', '.join(u.TIER_NAMES)}")
        out.append(u.TIER_CODES[t])
    return out or None


def _same(x: float, y: float) -> bool:
    return (x != x and y != y) or abs(x - y) < 1e-7


def _contracts(b, st, a: int, lo: int, used: int) -> list[dict]:
    """The account's open contracts (负债合约), in repayment order (oldest first)."""
    if b.pos_cid is None:
        return []
    rows = [j for j in range(lo, lo + used) if b.pos_kind[j] != u.COLLATERAL
            and (b.pos_cost[j] > 0 if b.pos_kind[j] == u.FINANCED else b.pos_qty[j] > 0)]
    rows.sort(key=lambda j: int(b.pos_cid[j]))
    out = []
    for j in rows:
        c = contract_dict(b, j, int(st.price[b.pos_sec[j]]))
        c["notice"] = ("EXPIRED" if b.pos_notice[j] & NOTICE_EXPIRED else
                       "DUE" if b.pos_notice[j] & NOTICE_DUE else None)
        out.append(c)
    return out

