"""Contracts (负债合约, margin-rules.md §6): every financed or short position row of a book is
one contract, with its own margin ratio, open date, term end and place in the repayment order.

The contract table is the position table itself: `Book.pos_cid`, `pos_open_day`,
`pos_term_day` and `pos_notice` sit beside `pos_qty`, `pos_cost` and `pos_margin_ratio`, one
entry per row, so the per-tick kernels (the available margin balance sums each row's own margin)
walk what they always walked and a contract costs no allocation.

- `pos_cid` (int64) numbers the contracts of a book: 0 for collateral and free rows, else unique
  and ascending in the repayment order (oldest first: by open date, a contract without one
  before every dated one, then book order). A contract opened by a fill takes the next number,
  so it is repaid after every older one. A contract's id is the book's `contract_id` when given,
  else `#<number>` (`contract_name`; a given id may not start with `#`).
- `pos_open_day`, `pos_term_day` (int32 date ordinals): 0 when unknown / without a term. A
  contract without a term end never expires (a book without the fields behaves as before).
- `pos_notice` (int8 bit flags): NOTICE_DUE once CONTRACT_DUE went out, NOTICE_EXPIRED once
  CONTRACT_EXPIRED did (an extension clears them).

A contract is open while it owes something: a financed contract while its principal is > 0,
a short while shares are still owed.

Default margin ratio of a new contract (no ratio on the fill, none in its profile): the exchange
minimum in force on its open date (`default_margin_ratio`, the table below; docs/
book-and-evaluate.md, "Contracts"). It is fixed at opening: a later change of the minimum, or an
extension, leaves it alone.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date

import numpy as np

from kernels import units as u
from monitor.book.columns import fixed, strings

NOTICE_DUE = 1
NOTICE_EXPIRED = 2
TERM_MONTHS = 6  # the longest term of a contract, and of one extension
DEFAULT_DUE_DAYS = 5  # CONTRACT_DUE this many trading days before the term end
MAX_DUE_DAYS = 60
MAX_ID_CHARS = 64
REPAY_MODES = ("interest_first",)

# Exchange minimum margin ratios (bp) by the date they took effect, oldest first; a contract
# opened on or after a date (and before the next) takes its ratio.
FIN_MINIMUMS = ((date(1900, 1, 1), 5_000), (date(2015, 11, 23), 10_000),
                (date(2023, 9, 8), 8_000), (date(2026, 1, 19), 10_000))
SHORT_MINIMUMS = ((date(1900, 1, 1), 5_000), (date(2023, 10, 16), 8_000),
                  (date(2024, 1, 29), 10_000))


def default_margin_ratio_bp(kind: int, day: int) -> int:
    """The exchange minimum margin ratio (bp) of a `kind` contract opened on day ordinal
    `day` (0: unknown, the latest)."""
    table = FIN_MINIMUMS if kind == u.FINANCED else SHORT_MINIMUMS
    bp = table[-1][1]
    if day <= 0:
        return bp
    for start, ratio in table:
        if day >= start.toordinal():
            bp = ratio
    return bp


def default_margin_ratio(kind: int, day: int) -> float:
    return default_margin_ratio_bp(kind, day) / u.RATIO_SCALE


def add_months(day: int, months: int = TERM_MONTHS) -> int:
    """Day ordinal `months` calendar months after `day` (the last day of a shorter month)."""
    d = date.fromordinal(int(day))
    m = d.month - 1 + months
    y, m = d.year + m // 12, m % 12 + 1
    return date(y, m, min(d.day, calendar.monthrange(y, m)[1])).toordinal()


def parse_day(text) -> int | None:
    """ISO date text -> ordinal; None when it is not one."""
    if not isinstance(text, str) or len(text) > 32:
        return None
    try:
        return date.fromisoformat(text.strip()).toordinal()
    except ValueError:
        return None


def contract_name(book, row: int) -> str:
    """The id of the contract in position row `row`."""
    cid = int(book.pos_cid[row])
    names = book.contract_names
    return names.get(cid) if names and cid in names else f"#{cid}"


def contract_row(book, a: int, name: str) -> int:
    """The row of account `a`'s open or closed contract named `name`, -1 when it has none."""
    if not isinstance(name, str) or not name:
        return -1
    b = book
    if name.startswith("#"):
        try:
            cid = int(name[1:])
        except ValueError:
            return -1
        if b.contract_names and cid in b.contract_names:
            return -1  # a contract with a given id is known by that id only
    else:
        cid = (b.contract_index or {}).get((int(a), name), -1)
        if cid < 0:
            return -1
    lo = int(b.pos_ptr[a])
    hi = lo + (int(b.pos_used[a]) if b.pos_used is not None else int(b.pos_ptr[a + 1]) - lo)
    for j in range(lo, hi):
        if int(b.pos_cid[j]) == cid and b.pos_kind[j] != u.COLLATERAL:
            return j
    return -1


def contract_dict(book, row: int, price: int | None = None) -> dict:
    """One contract as the desk and the events show it."""
    b = book
    k = int(b.pos_kind[row])
    out = {"contract_id": contract_name(b, row), "symbol": b.symbols[int(b.pos_sec[row])],
           "kind": u.KIND_NAMES[k], "qty": int(b.pos_qty[row]),
           ("principal" if k == u.FINANCED else "short_sell_amount"):
               round(int(b.pos_cost[row]) / u.MONEY_SCALE, 2),
           "margin_ratio": round(float(b.pos_margin_ratio[row]), 4),
           "open_date": _iso(int(b.pos_open_day[row])),
           "term_end": _iso(int(b.pos_term_day[row])),
           "repayment_order": int(b.pos_cid[row])}
    if price is not None:
        out["market_value"] = round(int(b.pos_qty[row]) * int(price) / u.MONEY_SCALE, 2)
    return out


def _iso(day: int) -> str | None:
    return date.fromordinal(day).isoformat() if day > 0 else None


def is_open(kind: np.ndarray, qty: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Contracts that still owe something (vectorised over rows)."""
    return ((kind == u.FINANCED) & (cost > 0)) | ((kind == u.SHORT) & (qty > 0))


# ---------------------------------------------------------------- the book's fields


@dataclass(slots=True)
class ContractTerms:
    """Per line profile (indexed like `Book.profile_names`): the margin ratio (bp) of new
    contracts opened by fills (-1: the exchange minimum of the open date) and the trading days
    of CONTRACT_DUE notice (-1: the monitor's `contract_due_days`). Optional profile fields
    `fin_margin_ratio`, `short_margin_ratio`, `contract_due_days`."""

    fin_bp: np.ndarray
    short_bp: np.ndarray
    due_days: np.ndarray

    @classmethod
    def default(cls, n_profiles: int) -> ContractTerms:
        return cls(np.full(n_profiles, -1, dtype=np.int64),
                   np.full(n_profiles, -1, dtype=np.int64),
                   np.full(n_profiles, -1, dtype=np.int64))

    def margin_ratio(self, profile: int, kind: int, day: int) -> float:
        bp = int((self.fin_bp if kind == u.FINANCED else self.short_bp)[profile])
        if bp < 0:
            bp = default_margin_ratio_bp(kind, day)
        return bp / u.RATIO_SCALE


PROFILE_FIELDS = ("fin_margin_ratio", "short_margin_ratio", "contract_due_days")


def read_contract_terms(chk, table, profiles: dict) -> ContractTerms | None:
    """The profiles' contract fields; None when no profile has any."""
    if table is None or table.num_rows == 0 or not set(table.column_names) & set(PROFILE_FIELDS):
        return None
    n = table.num_rows
    names = strings(table, "name", n)
    where = lambda i: f"profile {names[i]!r}"  # noqa: E731
    terms = ContractTerms.default(len(profiles["names"]))
    pindex = {nm: i for i, nm in enumerate(profiles["names"])}
    cols = {}
    for f in ("fin_margin_ratio", "short_margin_ratio"):
        v, ok, miss = fixed(chk, table, f, n, u.RATIO_SCALE, where, required=False)
        cols[f] = (v, ok & ~miss)
        bad = np.flatnonzero(ok & ~miss & ((v <= 0) | (v > u.MAX_RATE_BP)))
        chk.rows(where, bad, f, f"must be above 0 and at most {u.MAX_RATE_BP / 1e4:.2f}")
    days = strings(table, "contract_due_days", n)
    rows = set()
    for i in range(n):
        p = pindex.get(names[i])
        if p is None:
            continue
        rows.add(p)
        for f, arr in (("fin_margin_ratio", terms.fin_bp), ("short_margin_ratio", terms.short_bp)):
            v, given = cols[f]
            if given[i] and 0 < v[i] <= u.MAX_RATE_BP:
                arr[p] = int(v[i])
        d = days[i]
        if d is not None and str(d).strip():
            d = str(d).strip()
            if d.isdigit() and 1 <= int(d) <= MAX_DUE_DAYS:
                terms.due_days[p] = int(d)
            else:
                chk.add(where(i), "contract_due_days", f"{d!r} is not a whole number of "
                        f"trading days from 1 to {MAX_DUE_DAYS}")
    for p, nm in enumerate(profiles["names"]):  # derived per-account profiles inherit
        base = pindex.get(nm.rsplit("+", 1)[0]) if "+" in nm and p not in rows else None
        if base is not None:
            for arr in (terms.fin_bp, terms.short_bp, terms.due_days):
                arr[p] = arr[base]
    return terms


def read_position_contracts(chk, t, n, where, kind, acct, acct_ids) -> dict:
    """The optional contract fields of the position rows (`contract_id`, `open_date`,
    `term_end`, `repay_mode`): (given ids, open and term day ordinals) per input row. Problems
    go to `chk`."""
    ids = strings(t, "contract_id", n)
    opens = strings(t, "open_date", n)
    terms = strings(t, "term_end", n)
    modes = strings(t, "repay_mode", n)
    open_day = np.zeros(n, dtype=np.int32)
    term_day = np.zeros(n, dtype=np.int32)
    contract = (kind == u.FINANCED) | (kind == u.SHORT)
    seen: dict[tuple[int, str], int] = {}
    for col_, name in ((ids, "contract_id"), (opens, "open_date"), (terms, "term_end"),
                       (modes, "repay_mode")):
        given = np.array([v is not None and str(v).strip() != "" for v in col_], dtype=bool) \
            if n else np.zeros(0, dtype=bool)
        chk.rows(where, np.flatnonzero(given & ~contract), name,
                 "only a financed or short position is a contract")
    for i in np.flatnonzero(contract).tolist():
        cid = ids[i]
        if cid is not None and str(cid).strip():
            c = str(cid).strip()
            if c.startswith("#") or len(c) > MAX_ID_CHARS:
                chk.add(where(i), "contract_id", f"{c[:80]!r}: an id may not start with '#' "
                        f"(the monitor numbers the contracts without one) and has at most "
                        f"{MAX_ID_CHARS} characters")
            key = (int(acct[i]), c)
            if key in seen:
                chk.add(where(i), "contract_id", f"duplicate contract {c!r} in account "
                        f"{acct_ids[i]!r} (first at row {seen[key] + 1})")
            else:
                seen[key] = i
            ids[i] = c
        else:
            ids[i] = None
        for col_, arr, name in ((opens, open_day, "open_date"), (terms, term_day, "term_end")):
            v = col_[i]
            if v is None or not str(v).strip():
                continue
            d = parse_day(str(v))
            if d is None:
                chk.add(where(i), name, f"{str(v)[:40]!r} is not an ISO date (YYYY-MM-DD)")
            else:
                arr[i] = d
        if open_day[i] and term_day[i] and term_day[i] < open_day[i]:
            chk.add(where(i), "term_end", "is before open_date")
        m = modes[i]
        if m is not None and str(m).strip() and str(m).strip() not in REPAY_MODES:
            chk.add(where(i), "repay_mode", f"{str(m)[:40]!r} is not one of "
                    f"{', '.join(REPAY_MODES)}")
    return {"ids": ids, "open_day": open_day, "term_day": term_day}


def number_contracts(kind: np.ndarray, open_day: np.ndarray) -> np.ndarray:
    """Contract numbers of input rows (0 for collateral): ascending by open date (unknown
    first), then row."""
    n = kind.shape[0]
    cid = np.zeros(n, dtype=np.int64)
    rows = np.flatnonzero((kind == u.FINANCED) | (kind == u.SHORT))
    order = rows[np.lexsort((rows, open_day[rows]))]
    cid[order] = np.arange(1, order.shape[0] + 1, dtype=np.int64)
    return cid
