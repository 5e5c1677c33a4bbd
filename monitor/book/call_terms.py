"""The margin-call terms of a book's line profiles (margin-rules.md §6, interfaces.md): the
optional profile fields `cure_line`, `call_basis`, `call_days` and `use_free_cash`, read and
validated with the rest of the book (`monitor/book/load.py` calls `read_call_terms`).

Absent fields keep the behaviour of a book without them: calls open intraday on entering
MARGIN_CALL, are cured at the target, fall due `call_days` trading days later (the monitor's
setting, default 2), and free cash repays debt first. Per-account derived profiles (an account
that overrides a line) inherit the terms of the profile they derive from.
"""

from __future__ import annotations

import numpy as np

from kernels import units as u
from monitor.book.columns import column, fixed, strings
from monitor.book.model import CALL_BASES, CallTerms

PROFILE_FIELDS = ("cure_line", "call_basis", "call_days", "use_free_cash")
MAX_CALL_DAYS = 30


def read_call_terms(chk, table, profiles: dict) -> CallTerms | None:
    """None when no profile has any of the fields; problems go to `chk` (the book's
    checker), naming the profile and the field."""
    if table is None or table.num_rows == 0 or not set(table.column_names) & set(PROFILE_FIELDS):
        return None
    n = table.num_rows
    names = strings(table, "name", n)
    where = lambda i: f"profile {names[i]!r}"  # noqa: E731
    terms = CallTerms.default(len(profiles["names"]))
    pindex = {nm: i for i, nm in enumerate(profiles["names"])}
    cure, ok_c, miss_c = fixed(chk, table, "cure_line", n, u.RATIO_SCALE, where, required=False)
    basis = strings(table, "call_basis", n)
    days_txt = strings(table, "call_days", n)
    free = strings(table, "use_free_cash", n)
    rows = {}
    for i in range(n):
        p = pindex.get(names[i])
        if p is None:
            continue  # a row without a name: the loader has said so
        rows[p] = i
        if column(table, "cure_line") is not None and ok_c[i] and not miss_c[i]:
            terms.cure_bp[p] = int(cure[i])
        if basis[i] is not None and str(basis[i]).strip():
            b = str(basis[i]).strip()
            if b in CALL_BASES:
                terms.basis[p] = CALL_BASES.index(b)
            else:
                chk.add(where(i), "call_basis", f"{b!r} is not one of {', '.join(CALL_BASES)}")
        if days_txt[i] is not None and str(days_txt[i]).strip():
            d = str(days_txt[i]).strip()
            if d.isdigit() and 1 <= int(d) <= MAX_CALL_DAYS:
                terms.days[p] = int(d)
            else:
                chk.add(where(i), "call_days", f"{d!r} is not a whole number of trading days "
                        f"from 1 to {MAX_CALL_DAYS}")
        if free[i] is not None and str(free[i]).strip():
            f = str(free[i]).strip().lower()
            if f in ("true", "1", "yes", "false", "0", "no"):
                terms.use_free_cash[p] = f in ("true", "1", "yes")
            else:
                chk.add(where(i), "use_free_cash", f"{free[i]!r} is not a boolean")
    # per-account derived profiles ("name+lines") take the terms of the profile they extend
    for p, nm in enumerate(profiles["names"]):
        base = pindex.get(nm.rsplit("+", 1)[0]) if "+" in nm and p not in rows else None
        if base is not None:
            for arr in (terms.cure_bp, terms.basis, terms.days, terms.use_free_cash):
                arr[p] = arr[base]
    lines = np.asarray(profiles["lines"], dtype=np.int64).reshape(-1, u.N_LINES)
    for p, c in enumerate(terms.cure_bp.tolist()):
        if c < 0:
            continue
        w = f"profile {profiles['names'][p]!r}"
        if c < lines[p, u.LINE_WARNING]:
            chk.add(w, "cure_line", f"{c / 1e4} is below the warning line "
                    f"{lines[p, u.LINE_WARNING] / 1e4}: a cured account would still be in "
                    f"MARGIN_CALL")
        elif c >= lines[p, u.LINE_WITHDRAWABLE]:
            chk.add(w, "cure_line", f"{c / 1e4} must be below the withdrawable line "
                    f"{lines[p, u.LINE_WITHDRAWABLE] / 1e4}")
    return terms
