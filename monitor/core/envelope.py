"""The envelope of every event one monitor run publishes: its id, its place in the run and its
times. Every producer of events (tier transitions, calls, credit controls, the pattern watch)
stamps through one `EventStamps`, so `seq` is dense and gap-free across all of them. A shard's
events also carry ``"shard": I`` (interfaces.md, "Shards"); its run id names the shard, so
`event_id` is unique across shards."""

from __future__ import annotations


class EventStamps:
    """`run_id` and the last `seq` of one run; `envelope` takes the next one."""

    __slots__ = ("run_id", "seq", "shard")

    def __init__(self, run_id: str, seq: int = 0, shard: int | None = None):
        self.run_id = run_id
        self.seq = seq
        self.shard = shard

    def envelope(self, kind: str, ts_event: int, now_ns: int) -> dict:
        self.seq += 1
        env = {"event_id": f"{self.run_id}-{self.seq}", "seq": self.seq, "kind": kind,
               "ts_event": int(ts_event), "ts_published": int(now_ns)}
        if self.shard is not None:
            env["shard"] = self.shard
        return env
