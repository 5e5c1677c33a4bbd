"""The feed's view of a book: symbols, limit prices and how popular each security is."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import numpy as np

from feeds.universe import Universe
from monitor.book.model import Bands, Book, china_today


def popularity(book: Book) -> np.ndarray:
    """Holders per security (plus one): popular stocks tick most in the synthetic feeds."""
    return np.bincount(book.pos_sec, minlength=book.n_securities).astype(np.float64) + 1.0


def universe_of(book: Book, bands_for: Callable[[date], Bands] | None = None,
                day: date | None = None) -> Universe:
    """The universe a feed validates ticks against: the limit bands of the book's securities
    on trading `day` (default today, China time). With `bands_for` (the monitor's
    `MarginState.bands_for`: listing ages on its calendar) the tick guard moves the band to
    each tick's own trading date; without, the band stays that of `day`."""
    b = bands_for(day or china_today()) if bands_for is not None else book.bands(day)
    rebands = None
    if bands_for is not None:
        def rebands(d: int) -> tuple[np.ndarray, np.ndarray]:
            x = bands_for(date.fromordinal(d))
            return x.limit_down, x.limit_up
    return Universe(list(book.symbols), book.prev_close, b.limit_down.copy(), b.limit_up.copy(),
                    book.price, popularity=popularity(book), symbol_index=dict(book.symbol_index),
                    rebands=rebands, band_day=b.day.toordinal())
