"""The feed's view of a book: symbols, limit prices and how popular each security is."""

from __future__ import annotations

import numpy as np

from feeds.universe import Universe
from monitor.book.model import Book


def popularity(book: Book) -> np.ndarray:
    """Holders per security (plus one): popular stocks tick most in the synthetic feeds."""
    return np.bincount(book.pos_sec, minlength=book.n_securities).astype(np.float64) + 1.0


def universe_of(book: Book) -> Universe:
    """The universe a feed validates ticks against (limit bands from the book's securities)."""
    down, up = book.limit_prices()
    return Universe(list(book.symbols), book.prev_close, down, up, book.price,
                    popularity=popularity(book), symbol_index=dict(book.symbol_index))
