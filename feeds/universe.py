"""The set of securities a feed may quote: plain data, built by the monitor from its book.

Everything is indexed by the dense security index (`sec`) the monitor uses, so a parsed tick is
just `(sec, price, ts)`. Prices are int64 li (thousandths of a yuan, `kernels.units`). The
monitor computes the daily limit band (margin-rules.md §5); `Universe.from_prev_close` applies the
same rule for callers without a book (tests, the synthetic feed, tools).

The tick parser reads `limit_down` / `limit_up` live (it keeps references, not copies), so a
monitor that updates the band in place (a new trading day, a board change) is honoured at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kernels import units as u


@dataclass(slots=True)
class Universe:
    symbols: list[str]
    prev_close: np.ndarray  # int64 li
    limit_down: np.ndarray  # int64 li, inclusive
    limit_up: np.ndarray  # int64 li, inclusive
    price: np.ndarray  # int64 li, starting (last known) prices
    popularity: np.ndarray | None = None  # float64 activity weights (any scale), optional
    symbol_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.symbols)
        self.prev_close = np.ascontiguousarray(self.prev_close, dtype=np.int64)
        self.limit_down = np.ascontiguousarray(self.limit_down, dtype=np.int64)
        self.limit_up = np.ascontiguousarray(self.limit_up, dtype=np.int64)
        self.price = np.ascontiguousarray(self.price, dtype=np.int64)
        for name in ("prev_close", "limit_down", "limit_up", "price"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Universe.{name} must have shape ({n},)")
        if self.popularity is not None:
            self.popularity = np.ascontiguousarray(self.popularity, dtype=np.float64)
            if self.popularity.shape != (n,):
                raise ValueError(f"Universe.popularity must have shape ({n},)")
        if not self.symbol_index:
            self.symbol_index = {s: i for i, s in enumerate(self.symbols)}
        if len(self.symbol_index) != n:
            raise ValueError("Universe.symbols must be unique")

    @property
    def n(self) -> int:
        return len(self.symbols)

    @classmethod
    def from_prev_close(
        cls,
        symbols: Sequence[str],
        prev_close,
        board=None,
        price=None,
        popularity=None,
    ) -> Universe:
        """A universe whose band is the board limit around `prev_close` (int64 li).

        `board` holds `kernels.units` board codes (default: derived from the symbol, as the book
        loader does); `price` defaults to `prev_close`."""
        symbols = list(symbols)
        prev_close = np.asarray(prev_close, dtype=np.int64)
        if board is None:
            board = np.array([board_of_symbol(s) for s in symbols], dtype=np.int8)
        down, up = limit_band(prev_close, np.asarray(board))
        price = prev_close.copy() if price is None else np.asarray(price, dtype=np.int64)
        return cls(symbols, prev_close, down, up, price, popularity)


def board_of_symbol(symbol: str) -> int:
    """Board code derived from the symbol (interfaces.md): 688/689 STAR, 300/301 ChiNext,
    `.BJ` or 8xxxxx/4xxxxx/92xxxx Beijing, else main. ST status is not visible in a symbol."""
    code, _, market = symbol.upper().partition(".")
    if code.startswith(("688", "689")):
        return u.BOARD_STAR
    if code.startswith(("300", "301")):
        return u.BOARD_CHINEXT
    if market == "BJ" or (market not in ("SH", "SZ") and code.startswith(("8", "4", "92"))):
        return u.BOARD_BSE
    return u.BOARD_MAIN


def limit_band(prev_close: np.ndarray, board: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Limit-down / limit-up (int64 li) per security: prev_close × (1 ∓ board limit), rounded half
    up to the 0.01 tick, in exact integers (margin-rules.md §5). The one definition: the book,
    the planner and the tick guard all use it."""
    limit_bp = u.BOARD_LIMIT_BP[np.asarray(board).astype(np.int64)]
    prev_close = np.asarray(prev_close, dtype=np.int64)
    scale = u.RATIO_SCALE * u.LIMIT_TICK
    down = (prev_close * (u.RATIO_SCALE - limit_bp) + scale // 2) // scale * u.LIMIT_TICK
    up = (prev_close * (u.RATIO_SCALE + limit_bp) + scale // 2) // scale * u.LIMIT_TICK
    return down.astype(np.int64), up.astype(np.int64)
