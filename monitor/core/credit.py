"""Live credit controls: concentration caps, credit-line use and the security financing halt,
as edge-triggered events on the engine's channels (docs/credit-controls.md).

Not a whole-book pass per cycle: `check(accounts)` evaluates the accounts an account event
moved (the engine calls it after every applied event), and `check_slice()` walks the book in
rotating slices of `slice_accounts` (the engine calls it once per `credit_interval_ns`), so every
account is re-evaluated at the current prices at least once every ceil(N / slice_accounts) calls.
Per account the crossed state is kept (breached items, line levels), so an event fires when it
changes, not on every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import units as u
from kernels.concentration import (
    ITEM_BOARD,
    ITEM_GROUP,
    ITEM_NAMES,
    MAX_ITEMS,
    account_items,
    band_caps,
    concentration_fingerprints,
    line_levels_many,
    line_use,
    set_fingerprint,
)
from monitor.book.credit_terms import CreditTerms, terms_of
from monitor.core.state import yuan

LINE_NAMES = ("financing", "short")
BULK_ACCOUNTS = 4096  # an event touching more accounts re-counts the financing balances
STATE_VERSION = 1  # of the credit arrays in a snapshot (`credit_version`)
# the bytes one entry of the per-account state costs (measured: tests/core/
# test_credit_controls.py checks them against tracemalloc): an account's over-cap items
# (dict, tuple keys, ints) and an account's counted financed rows (two arrays in a tuple)
OVER_ENTRY_BYTES = 512
OVER_ITEM_BYTES = 192
COUNTED_ENTRY_BYTES = 512
COUNTED_ROW_BYTES = 16


@dataclass(slots=True)
class CreditConfig:
    slice_accounts: int = 16_384  # accounts per check_slice call
    max_changes: int = 256  # accounts with a change per check_slice call (bounds its cost)
    # an item over its cap stays reported until its share is back under cap − this (bp)
    hysteresis_bp: int = 50
    # byte cap of the per-account state (`credit_state_bytes` of the run config, not of the
    # [credit] table): past it the oldest over-cap record is dropped (counted)
    state_bytes: int = 64 * 2**20

    @classmethod
    def from_dict(cls, d: dict | None) -> CreditConfig:
        """From the run config's `[credit]` table (monitor.toml); unknown keys and values out
        of range raise ConfigError."""
        from monitor.errors import ConfigError

        limits = {"slice_accounts": (1, 10**8), "max_changes": (1, 10**7),
                  "hysteresis_bp": (0, 10_000)}
        cfg = cls()
        for k, v in (d or {}).items():
            key = k.replace("-", "_")
            if key not in limits:
                raise ConfigError(f"credit: unknown setting {k!r} (known: "
                                  f"{', '.join(limits)})")
            lo, hi = limits[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"credit.{key}: expected a whole number from {lo} to {hi}, "
                                  f"got {v!r}")
            setattr(cfg, key, v)
        return cfg


def halt_flags(balance, free_float, price, was_halted, halt_bp, resume_bp) -> np.ndarray:
    """Financing halt per security, exact: halted when balance >= halt_bp of the free-float
    value, resumed when < resume_bp (between the two it keeps its state). No free float: never."""
    ffmv = free_float * price  # fits int64: shares below 1e11, prices below 1e6 units
    q, r = np.divmod(ffmv, u.RATIO_SCALE)
    # balance·S >= bp·ffmv  <=>  balance >= ceil(bp·ffmv / S), with no overflow
    at_halt = balance >= q * halt_bp + -(-r * halt_bp // u.RATIO_SCALE)
    at_resume = balance >= q * resume_bp + -(-r * resume_bp // u.RATIO_SCALE)
    return (free_float > 0) & (at_halt | (was_halted & at_resume))


class CreditControls:
    """Credit events on the live `state`, stamped by the run's `stamps`; `reported` is the
    engine's reported tier per account (read only)."""

    def __init__(self, state, stamps, reported: np.ndarray, config: CreditConfig | None = None):
        self.state = state
        self.stamps = stamps
        self.reported = reported
        self.config = config or CreditConfig()
        b = self.state.book
        self.terms: CreditTerms = terms_of(b)
        n = b.n_accounts
        self.level = np.zeros((2, n), dtype=np.int8)  # alert thresholds reached per line
        self.over: dict[int, dict[tuple[int, int], int]] = {}  # account -> {(kind, item): cap}
        self.fingerprint = np.zeros(n, dtype=np.int64)  # of each account's reported set
        self.cursor = 0
        self.slices = 0
        t = self.terms
        self.any_caps = bool((t.n_bands > 0).any())
        self.any_lines = bool(((t.financing_line >= 0) | (t.short_line >= 0)).any())
        self.any_halt = bool((t.free_float > 0).any())
        self._buf = [np.empty(MAX_ITEMS, dtype=np.int64) for _ in range(4)]
        # the book's financed principal per security, kept live by diffing each touched
        # account's financed rows against what was counted for it
        self.halted = np.zeros(b.n_securities, dtype=bool)
        self.book_financing = np.zeros(b.n_securities, dtype=np.int64)
        self._counted: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # bytes of `over` and `_counted` (their entries' costs above), and what the cap did
        self.state_bytes = 0
        self.dropped = 0  # over-cap records dropped, oldest first (re-announced when still over)
        self.recounts = 0  # financing counted afresh to forget the per-account diffs
        if self.any_halt:
            self._count_financing()
            self.halted = self._halt_flags(np.zeros(b.n_securities, dtype=bool))

    # ------------------------------------------------------------------ entry points
    def check(self, accounts, now_ns: int) -> list[dict]:
        """Re-evaluate `accounts` (just moved by an account event); events for what changed."""
        idx = np.unique(np.asarray(accounts, dtype=np.int64))
        if idx.shape[0] == 0:
            return []
        events = self._halt_after(idx, now_ns) if self.any_halt else []
        events.extend(self._evaluate(idx, now_ns)[0])
        return events

    def check_slice(self, now_ns: int) -> list[dict]:
        """The next `slice_accounts` accounts in rotation, plus the financing halt of every
        security at the current prices. Bounded cost per call: when more than
        `max_changes` of the slice's accounts changed (the first rotation announces every
        account already over), the slice stops after them and the next call goes on from
        there."""
        n = self.state.book.n_accounts
        if n == 0 or not (self.any_caps or self.any_lines or self.any_halt):
            return []
        events = []
        if self.any_halt:
            events.extend(self._halt_events(np.arange(self.halted.shape[0]), now_ns))
        lo = self.cursor
        hi = min(lo + max(int(self.config.slice_accounts), 1), n)
        self.slices += 1
        evs, done = self._evaluate(np.arange(lo, hi, dtype=np.int64), now_ns,
                                   max(int(self.config.max_changes), 1))
        events.extend(evs)
        self.cursor = 0 if lo + done >= n else lo + done
        return events

    @property
    def rotation_slices(self) -> int:
        """check_slice calls for every account to be re-evaluated once (the latency bound in
        cycles for a crossing caused by prices alone, when no slice is cut short)."""
        n, k = self.state.book.n_accounts, max(int(self.config.slice_accounts), 1)
        return -(-n // k)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, idx: np.ndarray, now_ns: int,
                  limit: int | None = None) -> tuple[list[dict], int]:
        """Events of `idx` (in order); with `limit`, only up to the account before the
        (limit + 1)-th that changed. Returns (events, accounts evaluated)."""
        events: list[dict] = []
        m = idx.shape[0]
        if not (self.any_caps or self.any_lines):
            return events, m
        st, b, t = self.state, self.state.book, self.terms
        A, L = st.values(idx)
        todo = np.zeros(m, dtype=bool)
        if self.any_lines:
            used = (np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64))
            line_use(idx, b.pos_ptr, b.pos_kind, b.pos_cost, *used)
            lvl = (np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64))
            line_levels_many(idx, used[0], used[1], t.financing_line, t.short_line,
                             b.profile_of, t.alert_bp, t.n_alerts, *lvl)
            line_moved = (lvl[0] != self.level[0, idx]) | (lvl[1] != self.level[1, idx])
            todo |= line_moved
        if self.any_caps:
            fo = np.empty(m, dtype=np.int64)
            fn = np.empty(m, dtype=np.int64)
            h = st.h
            concentration_fingerprints(idx, A, L, b.profile_of, t.band_below, t.band_single,
                                       t.band_group, t.band_board, t.n_bands, st.price,
                                       h.long_ptr, h.long_sec, h.long_qty, t.group_of,
                                       self._boards(), int(self.config.hysteresis_bp), fo, fn)
            prev = self.fingerprint[idx]
            conc = (fo != prev) & (fn != prev)
            todo |= conc
        rows = np.flatnonzero(todo)
        if limit is not None and rows.shape[0] > limit:
            m = int(rows[limit])
            rows = rows[:limit]
        for i in rows.tolist():
            a, Ai, Li = int(idx[i]), int(A[i]), int(L[i])
            if self.any_lines and line_moved[i]:
                events.extend(self._line_events(a, Ai, Li, int(used[0][i]), int(used[1][i]),
                                                int(lvl[0][i]), int(lvl[1][i]), now_ns))
            if self.any_caps and conc[i]:
                ev = self._concentration(a, Ai, Li, now_ns)
                if ev is not None:
                    events.append(ev)
        return events, m

    def _line_events(self, a, A, L, used_fin, used_short, lvl_fin, lvl_short,
                     now_ns) -> list[dict]:
        b, t = self.state.book, self.terms
        p = int(b.profile_of[a])
        events = []
        for w, limits, used, new in ((0, t.financing_line, used_fin, lvl_fin),
                                     (1, t.short_line, used_short, lvl_short)):
            was = int(self.level[w, a])
            if new == was:
                continue
            self.level[w, a] = new
            ev = self._account_envelope("CREDIT_LINE", a, A, L, now_ns)
            limit = int(limits[a])
            ev.update({
                "line": LINE_NAMES[w], "limit": yuan(limit), "used": yuan(used),
                "utilisation": round(used / limit, 6) if limit > 0 else None,
                "threshold": int(t.alert_bp[p, new - 1]) / u.RATIO_SCALE if new else None,
                "previous_threshold": (int(t.alert_bp[p, was - 1]) / u.RATIO_SCALE
                                       if was else None),
                "direction": "up" if new > was else "down",
            })
            events.append(ev)
        return events

    def _boards(self) -> np.ndarray:
        b = self.state.book.board
        if getattr(self, "_board64", None) is None or self._board64.shape != b.shape:
            self._board64 = b.astype(np.int64)
        return self._board64

    def items(self, a: int, A: int, L: int, tol_bp: int = 0) -> list[tuple]:
        """(kind, item, market value, cap bp) of account `a`'s holdings, groups and boards
        whose share is above cap − tol_bp, at the current prices."""
        st, b, t = self.state, self.state.book, self.terms
        p = int(b.profile_of[a])
        cs, cg, cb = band_caps(np.int64(A), np.int64(L), t.band_below[p], t.band_single[p],
                               t.band_group[p], t.band_board[p], t.n_bands[p])
        if cs < 0 and cg < 0 and cb < 0:
            return []
        kind, item, mv, cap = self._buf
        h = st.h
        k = max(int(h.long_ptr[a + 1] - h.long_ptr[a]), 1)
        n = account_items(a, np.int64(A), st.price, h.long_ptr, h.long_sec, h.long_qty,
                          t.group_of, self._boards(), cs, cg, cb, tol_bp, kind, item,
                          mv, cap, np.empty(k, np.int64), np.empty(k, np.int64),
                          np.empty(8, np.int64))
        return list(zip(kind[:n].tolist(), item[:n].tolist(), mv[:n].tolist(),
                        cap[:n].tolist(), strict=True))

    def _concentration(self, a: int, A: int, L: int, now_ns: int) -> dict | None:
        S = u.RATIO_SCALE
        prev = self.over.get(a, {})
        now: dict[tuple[int, int], tuple[int, int]] = {}
        for kind, item, mv, cap in self.items(a, A, L, int(self.config.hysteresis_bp)):
            if mv * S > cap * A or (kind, item) in prev:
                now[(kind, item)] = (mv, cap)
        keys = np.array(sorted(now), dtype=np.int64).reshape(-1, 2)
        self.fingerprint[a] = set_fingerprint(keys[:, 0].copy(), keys[:, 1].copy())
        self._set_over(a, {k: v[1] for k, v in now.items()})
        if now.keys() == prev.keys():
            return None
        ev = self._account_envelope("CONCENTRATION", a, A, L, now_ns)
        ev["status"] = "OVER_CAP" if now else "CLEARED"
        ev["items"] = [self._item(k, mv, cap, A) for k, (mv, cap) in sorted(now.items())]
        ev["cleared"] = [self._item_name(*k) for k in sorted(prev.keys() - now.keys())]
        ev["excess"] = yuan(sum(max(0, (mv * S - cap * A) // S) for mv, cap in now.values()))
        return ev

    # ------------------------------------------------------------------ bounded state
    def _set_over(self, a: int, items: dict) -> None:
        """Record account `a`'s over-cap items (none: forget it), newest last."""
        old = self.over.pop(a, None)
        if old is not None:
            self.state_bytes -= OVER_ENTRY_BYTES + OVER_ITEM_BYTES * len(old)
        if items:
            self.over[a] = items
            self.state_bytes += OVER_ENTRY_BYTES + OVER_ITEM_BYTES * len(items)
            self._fit()

    def _fit(self) -> None:
        """Keep the per-account state under `state_bytes`: first forget the financing diffs
        (a recount from the live book, nothing lost), then drop the oldest over-cap records.
        A dropped account's fingerprint is cleared, so the rotation re-evaluates it and, when
        it is still over, announces it again: a duplicate, never a miss."""
        cap = int(self.config.state_bytes)
        if self.state_bytes <= cap:
            return
        if self._counted:
            self._count_financing()
            self.recounts += 1
        while self.state_bytes > cap and self.over:
            a = next(iter(self.over))
            items = self.over.pop(a)
            self.state_bytes -= OVER_ENTRY_BYTES + OVER_ITEM_BYTES * len(items)
            self.fingerprint[a] = 0
            self.dropped += 1

    def stats(self) -> dict:
        return {"state_bytes": self.state_bytes, "max_bytes": int(self.config.state_bytes),
                "over_accounts": len(self.over), "counted_accounts": len(self._counted),
                "dropped": self.dropped, "recounts": self.recounts,
                "halted": int(self.halted.sum()), "slices": self.slices}

    # ------------------------------------------------------------------ snapshot
    def export_state(self) -> dict[str, np.ndarray]:
        """Copies of the crossed state (line levels, over-cap items and their fingerprints,
        halted securities, the rotation's cursor) for the snapshot (monitor/adapters/
        snapshot.py): restored, an unchanged crossing is not announced again."""
        rows = [(a, k, i, cap) for a, items in self.over.items()
                for (k, i), cap in items.items()]
        over = np.array(rows, dtype=np.int64).reshape(-1, 4)
        return {"credit_version": np.array([STATE_VERSION], dtype=np.int64),
                "credit_level": self.level.copy(), "credit_fingerprint": self.fingerprint.copy(),
                "credit_halted": self.halted.copy(),
                "credit_cursor": np.array([self.cursor], dtype=np.int64),
                "credit_over": over}

    def check_restore(self, arrays: dict) -> None:
        """ValueError when the snapshot's credit arrays do not fit this book (nothing
        changed); a snapshot without them (an older version) fits."""
        if "credit_version" not in arrays:
            return
        b = self.state.book
        n, ns = b.n_accounts, b.n_securities
        v = arrays["credit_version"]
        if v.shape != (1,) or int(v[0]) != STATE_VERSION:
            raise ValueError(f"snapshot credit state of version {v.tolist()}; this monitor "
                             f"reads version {STATE_VERSION}")
        want = {"credit_level": (2, n), "credit_fingerprint": (n,), "credit_halted": (ns,),
                "credit_cursor": (1,)}
        for k, shape in want.items():
            if k not in arrays or arrays[k].shape != shape:
                raise ValueError(f"snapshot array {k!r} is missing or has the wrong shape for "
                                 f"this book")
        over = arrays.get("credit_over")
        if over is None or over.ndim != 2 or over.shape[1] != 4:
            raise ValueError("snapshot array 'credit_over' is missing or malformed")
        if over.shape[0] and (over[:, 0].min() < 0 or over[:, 0].max() >= n
                              or over[:, 1].min() < 0 or over[:, 2].min() < 0):
            raise ValueError("snapshot credit state names accounts this book does not have")
        if not 0 <= int(arrays["credit_cursor"][0]) <= max(n - 1, 0):
            raise ValueError("snapshot credit cursor is out of range")

    def restore(self, arrays: dict) -> bool:
        """After the engine restored the live book: count the financing of the restored
        positions and, when the snapshot has them, put the crossed state back. False for a
        snapshot without credit state (the first rotation announces what is crossed)."""
        if self.any_halt:
            self._count_financing()
        if "credit_version" not in arrays:
            return False
        self.level[:] = arrays["credit_level"]
        self.fingerprint[:] = arrays["credit_fingerprint"]
        self.halted[:] = arrays["credit_halted"].astype(bool)
        self.cursor = int(arrays["credit_cursor"][0])
        self.over = {}
        self.state_bytes = 0
        rows: dict[int, dict] = {}
        for a, k, i, cap in arrays["credit_over"].tolist():
            rows.setdefault(a, {})[(k, i)] = cap
        for a, items in rows.items():
            self._set_over(a, items)
        return True

    def _item_name(self, kind: int, item: int) -> dict:
        b, t = self.state.book, self.terms
        name = (b.symbols[item] if kind not in (ITEM_GROUP, ITEM_BOARD) else
                t.group_names[item] if kind == ITEM_GROUP else u.BOARD_NAMES[item])
        return {"type": ITEM_NAMES[kind], "name": name}

    def _item(self, key, mv: int, cap: int, A: int) -> dict:
        S = u.RATIO_SCALE
        out = self._item_name(*key)
        out.update({"share": round(mv / A, 6) if A > 0 else None, "cap": cap / S,
                    "market_value": yuan(mv),
                    "excess": yuan(max(0, (mv * S - cap * A) // S)),
                    "over": mv * S > cap * A})
        return out

    # ------------------------------------------------------------------ financing halt
    def _halt_flags(self, was: np.ndarray) -> np.ndarray:
        t = self.terms
        return halt_flags(self.book_financing + t.market_financing, t.free_float,
                          self.state.price, was, t.halt_bp, t.resume_bp)

    def financing_balance(self, s: int) -> int:
        """Financing balance of security `s` (money units): outside the book + the book's."""
        return int(self.book_financing[s] + self.terms.market_financing[s])

    def _count_financing(self) -> None:
        """The book's financed principal per security, from scratch (and the snapshot the
        per-account diffs start from)."""
        b, n = self.state.book, self.state.book.n_accounts
        fin = (b.pos_kind == u.FINANCED) & (b.pos_cost > 0)
        acct = np.repeat(np.arange(n, dtype=np.int64), np.diff(b.pos_ptr))[fin]
        self._snap_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(acct, minlength=n), out=self._snap_ptr[1:])
        self._snap_sec = b.pos_sec[fin].astype(np.int64)
        self._snap_cost = b.pos_cost[fin].copy()
        for sec, _ in self._counted.values():
            self.state_bytes -= COUNTED_ENTRY_BYTES + COUNTED_ROW_BYTES * sec.shape[0]
        self._counted = {}
        self.book_financing[:] = 0
        np.add.at(self.book_financing, self._snap_sec, self._snap_cost)

    def _halt_after(self, idx: np.ndarray, now_ns: int) -> list[dict]:
        b = self.state.book
        if idx.shape[0] > BULK_ACCOUNTS:  # e.g. interest on the whole book: count afresh
            self._count_financing()
            return self._halt_events(np.arange(self.halted.shape[0]), now_ns)
        touched = []
        for a in idx.tolist():
            lo, hi = int(b.pos_ptr[a]), int(b.pos_ptr[a + 1])
            fin = (b.pos_kind[lo:hi] == u.FINANCED) & (b.pos_cost[lo:hi] > 0)
            new = (b.pos_sec[lo:hi][fin].astype(np.int64), b.pos_cost[lo:hi][fin].copy())
            old = self._counted.get(a)
            if old is None:
                s0, s1 = self._snap_ptr[a], self._snap_ptr[a + 1]
                old = (self._snap_sec[s0:s1], self._snap_cost[s0:s1])
            if np.array_equal(old[0], new[0]) and np.array_equal(old[1], new[1]):
                continue
            np.subtract.at(self.book_financing, old[0], old[1])
            np.add.at(self.book_financing, new[0], new[1])
            was = self._counted.pop(a, None)
            if was is not None:
                self.state_bytes -= COUNTED_ENTRY_BYTES + COUNTED_ROW_BYTES * was[0].shape[0]
            self._counted[a] = new
            self.state_bytes += COUNTED_ENTRY_BYTES + COUNTED_ROW_BYTES * new[0].shape[0]
            touched.append(old[0])
            touched.append(new[0])
        if not touched:
            return []
        self._fit()
        return self._halt_events(np.unique(np.concatenate(touched)), now_ns)

    def _halt_events(self, secs: np.ndarray, now_ns: int) -> list[dict]:
        flags = self._halt_flags(self.halted)
        changed = secs[flags[secs] != self.halted[secs]]
        events = []
        t, b = self.terms, self.state.book
        for s in changed.tolist():
            self.halted[s] = flags[s]
            ev = self.stamps.envelope("FINANCING_HALT", now_ns, now_ns)
            bal = self.financing_balance(s)
            ffmv = int(t.free_float[s]) * int(self.state.price[s])
            ev.update({"symbol": b.symbols[s], "halted": bool(flags[s]),
                       "financing_balance": yuan(bal), "free_float_value": yuan(ffmv),
                       "share": round(bal / ffmv, 6) if ffmv else None,
                       "halt_at": t.halt_bp / u.RATIO_SCALE,
                       "resume_below": t.resume_bp / u.RATIO_SCALE})
            events.append(ev)
        return events

    # ------------------------------------------------------------------ helpers
    def _account_envelope(self, kind: str, a: int, A: int, L: int, now_ns: int) -> dict:
        b = self.state.book
        ev = self.stamps.envelope(kind, now_ns, now_ns)
        rep = int(self.reported[a])
        tier = None if rep == u.UNSET_TIER else u.TIER_NAMES[rep]
        ev.update({"account_id": b.account_ids[a], "tier": tier, "previous_tier": tier,
                   "profile": b.profile_names[int(b.profile_of[a])],
                   "ratio": round(A / L, 6) if L > 0 else None, "assets": yuan(A),
                   "liabilities": yuan(L)})
        return ev
