"""What the three parts of a liquidation worker share: the entry being handled (:class:`Job`)
and the worker's identity, Redis client, counters and clock (:class:`WorkerContext`).

The worker is split the way taskiq-redis and arq split theirs: intake.py reads and reclaims
stream entries, policy.py decides what an entry means and drives its delivery, commit.py records
each outcome in one MULTI/EXEC with the XACK. Each takes this context; none imports another's
internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from feeds.net import Backoff, redact
from monitor.liquidator.config import LiquidatorConfig
from monitor.liquidator.orders import Keys


@dataclass(slots=True)
class Job:
    """One stream entry that is an actionable event (or an approved plan)."""

    stream: str
    entry_id: bytes
    fields: dict
    event: dict
    reason: str
    source: str = "auto"  # "auto" | "approved"
    approval: dict | None = None
    force_reprice: bool = False

    @property
    def event_id(self) -> str:
        return self.event["event_id"]

    @property
    def account_id(self) -> str:
        return self.event["account_id"]


@dataclass(slots=True)
class WorkerContext:
    """One worker's identity and shared handles. ``client`` is set when the worker connects."""

    cfg: LiquidatorConfig
    keys: Keys
    group: str
    consumer: str
    alerts: str
    approved: str
    clock: Callable[[], int]
    secrets: list[str] = field(default_factory=list)
    hook_name: str = "-"
    client: Any = None
    stats: Counter = field(default_factory=Counter)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def lock_ms(self) -> int:
        return max(1, int(self.cfg.lock_ttl * 1000))

    @property
    def claim_ms(self) -> int:
        return max(1, int(self.cfg.claim_idle * 1000))

    @property
    def done_ex(self) -> int:
        return max(1, int(self.cfg.done_ttl))

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def backoff(self, attempt: int = 0) -> Backoff:
        """The retry delays of the config: doubled per attempt up to the cap, jittered."""
        b = Backoff(self.cfg.backoff_initial, self.cfg.backoff_max, jitter=0.3)
        b.attempt = attempt
        return b

    async def sleep(self, seconds: float) -> None:
        """Sleep, cut short by the worker's stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(),
                                   max(0.0, seconds) * random.uniform(0.8, 1.0))

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)
