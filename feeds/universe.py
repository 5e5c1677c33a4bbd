"""The set of securities a feed may quote: plain data, built by the monitor from its book.

Everything is indexed by the dense security index (`sec`) the monitor uses, so a parsed tick is
just `(sec, price, ts)`. Prices are int64 li (thousandths of a yuan, `kernels.units`). The
monitor computes the daily limit band (margin-rules.md §5); `Universe.from_prev_close` applies the
same rule for callers without a book (tests, the synthetic feed, tools).

The tick parser reads `limit_down` / `limit_up` live (it keeps references, not copies), so a
monitor that updates the band in place (a new trading day, a board change) is honoured at once.
With `rebands` the universe moves its band itself to each tick's trading date (China time):
the parser calls `set_day` before it checks the ticks of a day (kernels/bands.py: the bands
change by date, e.g. a listing's first days or a rule taking effect).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np

from kernels import bands as kb
from kernels import units as u

_NS_PER_DAY = 86_400 * 10**9
_CHINA_OFFSET_NS = 8 * 3600 * 10**9
_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()


@dataclass(slots=True)
class Universe:
    symbols: list[str]
    prev_close: np.ndarray  # int64 li
    limit_down: np.ndarray  # int64 li, inclusive
    limit_up: np.ndarray  # int64 li, inclusive
    price: np.ndarray  # int64 li, starting (last known) prices
    popularity: np.ndarray | None = None  # float64 activity weights (any scale), optional
    symbol_index: dict[str, int] = field(default_factory=dict)
    # the bands of another trading day (China-time day ordinal -> (limit_down, limit_up)):
    # the tick guard checks each tick against the band of its own trading date. None: the
    # band is fixed (callers without a book)
    rebands: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None
    band_day: int = 0  # the day ordinal limit_down / limit_up hold (0: not dated)

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

    def band_window(self) -> tuple[int, int]:
        """[from, to) in ns of the trading date whose band limit_down / limit_up hold
        (China-time midnight to midnight); everything when the band is not dated."""
        if not self.band_day or self.rebands is None:
            return -(2**63), 2**63 - 1
        start = (self.band_day - _EPOCH_ORDINAL) * _NS_PER_DAY - _CHINA_OFFSET_NS
        return start, start + _NS_PER_DAY

    def set_day(self, day: int) -> None:
        """Hold the band of trading day `day` (ordinal) in limit_down / limit_up, in place."""
        if self.rebands is None or int(day) == self.band_day:
            return
        down, up = self.rebands(int(day))
        self.limit_down[:] = down
        self.limit_up[:] = up
        self.band_day = int(day)

    @classmethod
    def from_prev_close(
        cls,
        symbols: Sequence[str],
        prev_close,
        board=None,
        price=None,
        popularity=None,
        day: date | None = None,
    ) -> Universe:
        """A universe whose band is the board limit around `prev_close` (int64 li).

        `board` holds `kernels.units` board codes (default: derived from the symbol, as the book
        loader does); `price` defaults to `prev_close`; `day` is the trading date of the band
        (default today, China time)."""
        symbols = list(symbols)
        prev_close = np.asarray(prev_close, dtype=np.int64)
        if board is None:
            board = np.array([board_of_symbol(s) for s in symbols], dtype=np.int8)
        down, up = limit_band(prev_close, np.asarray(board), day)
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


def limit_band(prev_close: np.ndarray, board: np.ndarray,
               day: date | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Limit-down / limit-up (int64 li) per stock on trading `day` (default: today, China
    time): prev_close × (1 ∓ the band of kernels/bands.py for its board), rounded half up to the
    0.01 tick, in exact integers (margin-rules.md §5). For callers without a book (no risk
    flags but board `st`, no listing dates, stocks only); a book's bands: `Book.bands`."""
    band = board_band_bp(board, day)
    n = band.shape[0]
    down = np.empty(n, dtype=np.int64)
    up = np.empty(n, dtype=np.int64)
    kb.limit_prices(np.ascontiguousarray(prev_close, dtype=np.int64), band,
                    np.full(n, kb.TICK[kb.TYPE_STOCK], dtype=np.int64), down, up)
    return down, up


def board_band_bp(board: np.ndarray, day: date | None = None) -> np.ndarray:
    """The ordinary band (bp) of each stock's board on trading `day` (default today, China
    time; board `st`: the main board's risk-warning band), from kernels/bands.py."""
    board = np.asarray(board).astype(np.int8)
    n = board.shape[0]
    day = day or datetime.now(timezone(timedelta(hours=8))).date()
    return kb.band_bps(day, board, np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int8),
                       np.zeros(n, dtype=bool), np.full(n, kb.DERIVE, dtype=np.int64),
                       np.zeros(n, dtype=np.int64))
