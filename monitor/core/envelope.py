"""The envelope of every event one monitor run publishes: its id, its place in the run and its
times. Every producer of events (tier transitions, calls, credit controls, the pattern watch)
stamps through one `EventStamps`, so `seq` is dense and gap-free across all of them."""

from __future__ import annotations


class EventStamps:
    """`run_id` and the last `seq` of one run; `envelope` takes the next one."""

    __slots__ = ("run_id", "seq")

    def __init__(self, run_id: str, seq: int = 0):
        self.run_id = run_id
        self.seq = seq

    def envelope(self, kind: str, ts_event: int, now_ns: int) -> dict:
        self.seq += 1
        return {"event_id": f"{self.run_id}-{self.seq}", "seq": self.seq, "kind": kind,
                "ts_event": int(ts_event), "ts_published": int(now_ns)}
