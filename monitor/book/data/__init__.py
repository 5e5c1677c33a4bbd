"""Data shipped with the package: the sample book (the spec's first worked vectors as accounts)."""

from pathlib import Path

SAMPLE_BOOK = Path(__file__).resolve().parent / "sample_book.json"
