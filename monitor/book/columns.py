"""Reading book tables column by column into exact fixed point, collecting every problem.

Shared by the book loader (`load.py`) and the credit terms (`credit_terms.py`): one set of
rules for JSON, CSV and Parquet books alike."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_LISTED_PER_CHECK = 50  # a check failing on 1M rows lists the first ones and counts the rest


@dataclass(frozen=True, slots=True)
class Problem:
    where: str  # "securities.parquet row 12", "account C000001", ...
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}"


class Checker:
    def __init__(self, source):
        self.source = source
        self.problems: list[Problem] = []

    def rows(self, where_fn, idx, field, message):
        idx = np.asarray(idx)
        for i in idx[:MAX_LISTED_PER_CHECK]:
            self.problems.append(Problem(where_fn(int(i)), field, message))
        if idx.shape[0] > MAX_LISTED_PER_CHECK:
            self.problems.append(Problem(
                where_fn(int(idx[MAX_LISTED_PER_CHECK])), field,
                f"{message} (and {idx.shape[0] - MAX_LISTED_PER_CHECK - 1} more rows like it)"))

    def add(self, where, field, message):
        self.problems.append(Problem(where, field, message))


def column(table, name):
    return table.column(name) if name in table.column_names else None


def strings(table, name, n):
    col = column(table, name)
    if col is None:
        return np.full(n, None, dtype=object)
    return np.asarray(col.cast(pa.string()).to_pylist(), dtype=object)


def fixed(chk, table, name, n, scale, where_fn, *, required, default=None, digits=None):
    """Column -> int64 fixed point at `scale` (exact). Returns (values, valid mask)."""
    col = column(table, name)
    vals = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    if col is None:
        if required and n:
            chk.add(where_fn(0), name, "column missing")
            ok[:] = False
        elif default is not None:
            vals[:] = default
        return vals, ok, np.ones(n, dtype=bool)
    missing = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    t = col.type
    digits = digits if digits is not None else len(str(scale)) - 1
    if pa.types.is_integer(t):
        raw = np.asarray(col.fill_null(0).to_numpy(), dtype=np.int64)
        big = np.abs(raw) > np.iinfo(np.int64).max // scale
        vals = np.where(big, 0, raw) * scale
        chk.rows(where_fn, np.flatnonzero(big & ~missing), name, "out of range")
        ok &= ~(big & ~missing)
        bad = np.zeros(n, dtype=bool)
    elif pa.types.is_floating(t):
        raw = np.asarray(col.fill_null(0).to_numpy(), dtype=np.float64)
        finite = np.isfinite(raw)
        scaled = np.where(finite, raw, 0.0) * scale
        rounded = np.round(scaled)
        inexact = np.abs(scaled - rounded) > np.maximum(1e-6, 8 * np.spacing(np.abs(scaled)))
        too_big = np.abs(rounded) > 2.0**62
        vals = np.where(finite & ~too_big, rounded, 0).astype(np.int64)
        nonfinite = ~finite & ~missing
        chk.rows(where_fn, np.flatnonzero(nonfinite), name, "not a finite number")
        chk.rows(where_fn, np.flatnonzero(too_big & finite & ~missing), name, "out of range")
        ok &= ~nonfinite & ~(too_big & finite & ~missing)
        bad = inexact & ~too_big & finite
    elif pa.types.is_decimal(t) and (fast := decimal_unscaled(col, digits)) is not None:
        raw, fits = fast
        vals = np.where(fits & ~missing, raw, 0)
        bad = np.zeros(n, dtype=bool)
        chk.rows(where_fn, np.flatnonzero(~fits & ~missing), name, "out of range")
        ok &= fits | missing
    elif pa.types.is_decimal(t):  # more decimals than allowed somewhere: find the rows
        return fixed_from_text(chk, np.asarray(col.cast(pa.string()).to_pylist(), dtype=object),
                                missing, name, scale, digits, where_fn, required, default)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return fixed_from_text(chk, np.asarray(col.to_pylist(), dtype=object), missing, name,
                                scale, digits, where_fn, required, default)
    else:
        chk.add(where_fn(0) if n else "table", name, f"unsupported column type {t}")
        ok[:] = False
        return vals, ok, missing
    chk.rows(where_fn, np.flatnonzero(bad & ~missing), name, precision_message(digits))
    ok &= ~(bad & ~missing)
    if required:
        chk.rows(where_fn, np.flatnonzero(missing), name, "missing")
        ok &= ~missing
    elif default is not None:
        vals[missing] = default
    return vals, ok, missing


def decimal_unscaled(col, digits):
    """Decimal column -> (int64 unscaled values at `digits` decimals, fits-in-int64 mask), read
    straight from the 128-bit buffers; None when a value has more decimals (the caller then
    finds and reports the rows)."""
    try:
        arr = pc.cast(col, pa.decimal128(38, digits)).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if isinstance(arr, pa.ChunkedArray):  # pragma: no cover - older pyarrow
        arr = pa.concat_arrays(arr.chunks)
    words = np.frombuffer(arr.buffers()[1], dtype=np.int64)
    words = words[2 * arr.offset: 2 * (arr.offset + len(arr))]
    lo, hi = words[0::2], words[1::2]
    fits = hi == (lo >> 63)  # the high word only extends the sign
    return lo.copy(), fits


def precision_message(digits):
    if digits == 0:
        return "not a whole number"
    return f"not a number with at most {digits} decimal places"


def fixed_from_text(chk, texts, missing, name, scale, digits, where_fn, required, default):
    n = texts.shape[0]
    vals = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    cache: dict = {}
    bad_fmt, bad_prec, bad_range = [], [], []
    q = Decimal(1) / scale
    for i, s in enumerate(texts):
        if s is None:
            continue
        r = cache.get(s)
        if r is None:
            try:
                d = Decimal(str(s).strip())
                if not d.is_finite():
                    r = "nonfinite"
                elif d != d.quantize(q):
                    r = "precision"
                elif abs(d) > Decimal(2) ** 62 / scale:
                    r = "range"
                else:
                    r = int(d * scale)
            except InvalidOperation:
                r = "format"
            cache[s] = r
        if isinstance(r, int):
            vals[i] = r
        elif r == "precision":
            bad_prec.append(i)
        elif r == "range":
            bad_range.append(i)
        else:
            bad_fmt.append(i)
    chk.rows(where_fn, np.array(bad_fmt, dtype=np.int64), name, "not a finite number")
    chk.rows(where_fn, np.array(bad_prec, dtype=np.int64), name, precision_message(digits))
    chk.rows(where_fn, np.array(bad_range, dtype=np.int64), name, "out of range")
    ok[bad_fmt] = False
    ok[bad_prec] = False
    ok[bad_range] = False
    if required:
        chk.rows(where_fn, np.flatnonzero(missing), name, "missing")
        ok &= ~missing
    elif default is not None:
        vals[missing] = default
    return vals, ok, missing


def ints(chk, table, name, n, where_fn, *, required, default=0):
    col = column(table, name)
    if col is None:
        if required and n:
            chk.add(where_fn(0), name, "column missing")
        return np.full(n, default, dtype=np.int64), np.zeros(n, dtype=bool)
    vals, ok, missing = fixed(chk, table, name, n, 1, where_fn, required=required,
                               default=default, digits=0)
    return vals, missing


def bools(chk, table, name, n, where_fn):
    col = column(table, name)
    if col is None:
        return np.zeros(n, dtype=bool)
    if pa.types.is_boolean(col.type):
        return np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    out = np.zeros(n, dtype=bool)
    bad = []
    for i, v in enumerate(col.cast(pa.string()).to_pylist()):
        if v is None:
            continue
        s = str(v).strip().lower()
        if s in ("true", "1", "yes"):
            out[i] = True
        elif s not in ("false", "0", "no", ""):
            bad.append(i)
    chk.rows(where_fn, np.array(bad, dtype=np.int64), name, "not a boolean")
    return out
