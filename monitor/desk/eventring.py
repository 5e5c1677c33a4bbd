"""The risk desk's memory of published events, bounded by bytes (docs/risk-desk.md).

One ring of event records, oldest evicted first once the records' bytes pass the budget; the
per-account lists and the event-id index hold positions in the ring, never copies, and forget an
event when the ring evicts it. So the desk's memory stays under ``max_bytes`` however many events
the book produces, and what it answers (an account's recent events, an acknowledgement's event) is
always the newest events that fit.

A record is the tuple the desk builds: ``(event_id, account_id, kind, tier, previous_tier,
trigger symbol, ts_published, payload)``, where the payload is the event's published JSON
(``outbox.encode_event``, right-sized). Its cost is the payload's length plus ``ENTRY_BYTES``, a
measured allowance for the tuple, the id string, the index entries and the per-account slots
(tests/desk/test_desk.py checks the real allocation with tracemalloc).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping

ENTRY_BYTES = 512  # per record beyond its payload: tuple, id, dict/list slots, per-account list
_COMPACT = 4096  # evicted slots are dropped from the ring list in blocks of at least this


class EventRing:
    def __init__(self, max_bytes: int, account_index: Mapping[str, int],
                 per_account: int = 50):
        if max_bytes < 0 or per_account < 1:
            raise ValueError("EventRing: max_bytes must be >= 0 and per_account >= 1")
        self.max_bytes = int(max_bytes)
        self.per_account = int(per_account)
        self._index = account_index
        self._ring: list[tuple | None] = []  # records, oldest first; None once evicted
        self._head = 0  # first live slot of _ring
        self._base = 0  # position (a running count of records) of _ring[0]
        self._by_id: dict[str, int] = {}  # event_id -> position
        self._by_account: dict[int, array] = {}  # account index -> positions, oldest first
        self.nbytes = 0
        self.added = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._ring) - self._head

    def add(self, rec: tuple) -> None:
        """Keep `rec` (the newest), then evict the oldest until the ring fits its budget."""
        pos = self._base + len(self._ring)
        self._ring.append(rec)
        self.added += 1
        self.nbytes += len(rec[7]) + ENTRY_BYTES
        if rec[0] is not None:
            self._by_id[rec[0]] = pos
        a = self._index.get(rec[1])
        if a is not None:
            lst = self._by_account.get(a)
            if lst is None:
                self._by_account[a] = array("q", (pos,))
            else:
                lst.append(pos)
                if len(lst) > 2 * self.per_account:  # trimmed in steps: amortised O(1)
                    del lst[:-self.per_account]
        while self.nbytes > self.max_bytes and self._head < len(self._ring):
            self._evict()

    def _evict(self) -> None:
        ring, h = self._ring, self._head
        rec = ring[h]
        ring[h] = None
        pos = self._base + h
        self._head = h + 1
        self.nbytes -= len(rec[7]) + ENTRY_BYTES
        self.evicted += 1
        if rec[0] is not None and self._by_id.get(rec[0]) == pos:
            del self._by_id[rec[0]]
        a = self._index.get(rec[1])
        if a is not None:
            lst = self._by_account.get(a)
            if lst is not None and lst[-1] <= pos:  # that was the account's newest: forget it
                del self._by_account[a]
        if self._head >= _COMPACT and 2 * self._head >= len(ring):
            del ring[:self._head]
            self._base += self._head
            self._head = 0

    def _at(self, pos: int) -> tuple | None:
        i = pos - self._base
        return self._ring[i] if i >= self._head else None

    def get(self, event_id: str) -> tuple | None:
        """The record of a held event, or None (never seen, or evicted)."""
        pos = self._by_id.get(event_id)
        return None if pos is None else self._at(pos)

    def of_account(self, a: int, n: int) -> list[tuple]:
        """The account's last `n` held records, oldest first."""
        lst = self._by_account.get(a)
        if lst is None:
            return []
        first = self._base + self._head
        out = []
        for pos in reversed(lst):
            if pos < first or len(out) >= n:
                break
            out.append(self._ring[pos - self._base])
        out.reverse()
        return out

    def newest(self, n: int | None = None) -> Iterator[tuple]:
        """Held records, newest first (at most `n`)."""
        ring, stop = self._ring, self._head
        lo = stop if n is None else max(stop, len(ring) - n)
        for i in range(len(ring) - 1, lo - 1, -1):
            yield ring[i]

    def stats(self) -> dict:
        return {"held": len(self), "bytes": self.nbytes, "max_bytes": self.max_bytes,
                "accounts": len(self._by_account), "added": self.added,
                "evicted": self.evicted}
