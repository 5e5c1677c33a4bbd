"""Credit terms of a book (docs/credit-controls.md): the optional fields behind concentration
caps, credit lines, eligibility and the security-level financing halt, read and validated with
the rest of the book (`monitor/book/load.py` calls `read_credit_terms`).

Every field is optional, so books without them stay valid and carry no `CreditTerms` at all.
Caps and alert thresholds are integer basis points, lines and balances money units, like the
rest of the book (kernels/units.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np
import orjson

from kernels import units as u
from monitor.book.columns import column, fixed, strings

MAX_BANDS = 8
MAX_ALERTS = 8
DEFAULT_LINE_ALERTS_BP = (9_000, 10_000)  # 90% and 100% of a line
HALT_BP = 2_500  # financing halted when the financing balance reaches 25% of free-float value
RESUME_BP = 2_000  # ... and resumed once it is back under 20%
BLOCK_TIERS = ("NORMAL", "WARNING", "MARGIN_CALL", "FORCED_LIQUIDATION")

SECURITY_FIELDS = ("group", "free_float", "market_financing", "financing_eligible",
                   "short_eligible")
ACCOUNT_FIELDS = ("financing_line", "short_line")
PROFILE_FIELDS = ("concentration_caps", "block_new_debt_at", "line_alerts")


@dataclass(slots=True)
class CreditTerms:
    # securities
    group_of: np.ndarray  # int64 group index per security, -1 none
    group_names: list[str]
    free_float: np.ndarray  # int64 shares; 0: unknown, no halt rule for it
    market_financing: np.ndarray  # int64 money: financing balance outside this book
    financing_eligible: np.ndarray  # bool: may be bought on credit (融资标的)
    short_eligible: np.ndarray  # bool: may be sold short (融券标的)
    # accounts
    financing_line: np.ndarray  # int64 money; -1: no line
    short_line: np.ndarray  # int64 money; -1: no line
    # profiles (index as Book.profile_names, derived per-account profiles included)
    band_below: np.ndarray  # int64 [n_profiles, MAX_BANDS] bp, ascending
    band_single: np.ndarray  # int64 [n_profiles, MAX_BANDS] bp; -1: no cap
    band_group: np.ndarray
    band_board: np.ndarray
    n_bands: np.ndarray  # int64 [n_profiles]
    block_new_debt_at: np.ndarray  # int64 [n_profiles] tier code; -1: never
    alert_bp: np.ndarray  # int64 [n_profiles, MAX_ALERTS] ascending
    n_alerts: np.ndarray  # int64 [n_profiles]
    halt_bp: int = HALT_BP
    resume_bp: int = RESUME_BP

    @classmethod
    def empty(cls, n_securities: int, n_accounts: int, n_profiles: int) -> CreditTerms:
        """No caps, no lines, everything eligible: what a book without credit fields means."""
        z = np.zeros((n_profiles, MAX_BANDS), dtype=np.int64)
        alerts = np.zeros((n_profiles, MAX_ALERTS), dtype=np.int64)
        alerts[:, :len(DEFAULT_LINE_ALERTS_BP)] = DEFAULT_LINE_ALERTS_BP
        return cls(np.full(n_securities, -1, dtype=np.int64), [],
                   np.zeros(n_securities, dtype=np.int64), np.zeros(n_securities, dtype=np.int64),
                   np.ones(n_securities, dtype=bool), np.ones(n_securities, dtype=bool),
                   np.full(n_accounts, -1, dtype=np.int64), np.full(n_accounts, -1, np.int64),
                   z, z - 1, z - 1, z - 1, np.zeros(n_profiles, dtype=np.int64),
                   np.full(n_profiles, -1, dtype=np.int64), alerts,
                   np.full(n_profiles, len(DEFAULT_LINE_ALERTS_BP), dtype=np.int64))

    def with_profiles(self, n_profiles: int) -> CreditTerms:
        """Profile tables grown to `n_profiles` rows (defaults for new ones)."""
        have = self.n_bands.shape[0]
        if n_profiles <= have:
            return self
        e = CreditTerms.empty(0, 0, n_profiles - have)
        cat = np.concatenate
        self.band_below = cat([self.band_below, e.band_below])
        self.band_single = cat([self.band_single, e.band_single])
        self.band_group = cat([self.band_group, e.band_group])
        self.band_board = cat([self.band_board, e.band_board])
        self.n_bands = cat([self.n_bands, e.n_bands])
        self.block_new_debt_at = cat([self.block_new_debt_at, e.block_new_debt_at])
        self.alert_bp = cat([self.alert_bp, e.alert_bp])
        self.n_alerts = cat([self.n_alerts, e.n_alerts])
        return self


def terms_of(book) -> CreditTerms:
    """The book's credit terms, or the neutral ones when it has none."""
    t = getattr(book, "credit", None)
    if t is None:
        t = CreditTerms.empty(book.n_securities, book.n_accounts, len(book.profile_names))
        book.credit = t
    return t.with_profiles(len(book.profile_names))


# ---------------------------------------------------------------- loading


def read_credit_terms(chk, tables, names, secs, profiles, accts) -> CreditTerms | None:
    """Read the optional credit fields, adding problems to `chk` (bookio's checker)."""

    st, at = tables["securities"], tables["accounts"]
    pt = tables.get("profiles")
    cols = set(st.column_names) | set(at.column_names) | set(
        pt.column_names if pt is not None else ())
    if not cols & set(SECURITY_FIELDS + ACCOUNT_FIELDS + PROFILE_FIELDS):
        return None
    n_sec, n_acct = len(secs["symbols"]), len(accts["ids"])
    n_prof = len(profiles["names"])
    t = CreditTerms.empty(n_sec, n_acct, n_prof)

    # securities
    sname = names["securities"]
    swhere = lambda i: f"{sname} row {i + 1}"  # noqa: E731
    groups = strings(st, "group", n_sec)
    gindex: dict[str, int] = {}
    for i, g in enumerate(groups):
        if g is not None and str(g).strip():
            t.group_of[i] = gindex.setdefault(str(g).strip(), len(gindex))
    t.group_names = list(gindex)
    if column(st, "free_float") is not None:
        ff, ok, miss = fixed(chk, st, "free_float", n_sec, 1, swhere, required=False, digits=0)
        chk.rows(swhere, np.flatnonzero(ok & ~miss & (ff <= 0)), "free_float",
                 "must be a positive number of shares")
        t.free_float = np.where(miss, 0, ff).astype(np.int64)
    if column(st, "market_financing") is not None:
        mf, ok, miss = fixed(chk, st, "market_financing", n_sec, u.MONEY_SCALE, swhere,
                              required=False, default=0)
        chk.rows(swhere, np.flatnonzero(ok & ~miss & (mf < 0)), "market_financing",
                 "must be >= 0")
        t.market_financing = mf
    t.financing_eligible = _flags(chk, st, "financing_eligible", n_sec, swhere, strings)
    t.short_eligible = _flags(chk, st, "short_eligible", n_sec, swhere, strings)

    # accounts
    ids = accts["ids"]
    awhere = lambda i: f"account {ids[i]!r}"  # noqa: E731
    for fld, out in (("financing_line", t.financing_line), ("short_line", t.short_line)):
        if column(at, fld) is None:
            continue
        v, ok, miss = fixed(chk, at, fld, n_acct, u.MONEY_SCALE, awhere, required=False)
        chk.rows(awhere, np.flatnonzero(ok & ~miss & (v < 0)), fld, "must be >= 0")
        out[:] = np.where(miss, -1, v)

    # profiles: read per named row, then copied to the per-account derived profiles
    if pt is not None and pt.num_rows:
        pnames = strings(pt, "name", pt.num_rows)
        where_of = {nm: f"profile {nm!r}" for nm in pnames if nm is not None}
        pindex = {nm: i for i, nm in enumerate(profiles["names"])}
        caps = _raw(pt, "concentration_caps")
        block = strings(pt, "block_new_debt_at", pt.num_rows)
        alerts = _raw(pt, "line_alerts")
        for r, nm in enumerate(pnames):
            p = pindex.get(nm)
            if p is None:
                continue
            if caps[r] is not None:
                _set_bands(chk, where_of[nm], caps[r], t, p)
            if block[r] is not None and str(block[r]).strip().lower() not in ("", "none"):
                b = str(block[r]).strip().upper()
                if b in BLOCK_TIERS:
                    t.block_new_debt_at[p] = u.TIER_CODES[b]
                else:
                    chk.add(where_of[nm], "block_new_debt_at",
                            f"{block[r]!r} is not one of {', '.join(BLOCK_TIERS)} or none")
            if alerts[r] is not None:
                _set_alerts(chk, where_of[nm], alerts[r], t, p)
        for p, nm in enumerate(profiles["names"]):
            base = pindex.get(nm.rsplit("+", 1)[0]) if "+" in nm and nm not in where_of else None
            if base is not None and base != p:
                for arr in (t.band_below, t.band_single, t.band_group, t.band_board, t.n_bands,
                            t.block_new_debt_at, t.alert_bp, t.n_alerts):
                    arr[p] = arr[base]
    return t


def _flags(chk, table, name, n, where_fn, strings) -> np.ndarray:
    """Boolean column defaulting to True (missing column or empty cell)."""
    out = np.ones(n, dtype=bool)
    if name not in table.column_names:
        return out
    for i, v in enumerate(strings(table, name, n)):
        if v is None:
            continue
        s = str(v).strip().lower()
        if s in ("false", "0", "no"):
            out[i] = False
        elif s not in ("true", "1", "yes", ""):
            chk.add(where_fn(i), name, "not a boolean")
    return out


def _raw(table, name):
    """Cells of a column as Python values (lists stay lists, JSON text stays text)."""
    if name not in table.column_names:
        return [None] * table.num_rows
    return table.column(name).to_pylist()


def _parse(v):
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("[") or s.startswith("{"):
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError as e:
                raise ValueError(f"not valid JSON: {e}") from None
        return [x.strip() for x in s.split(",") if x.strip()]
    return v


def _bp(v, what, lo=0, hi=10 * u.RATIO_SCALE) -> int:
    if isinstance(v, bool) or v is None:
        raise ValueError(f"{what}: a decimal fraction is required")
    try:
        d = Decimal(v if isinstance(v, str) else repr(v))
    except InvalidOperation:
        raise ValueError(f"{what}: {v!r} is not a number") from None
    if not d.is_finite() or d != d.quantize(Decimal("0.0001")):
        raise ValueError(f"{what}: {v!r} is not a number with at most 4 decimal places")
    bp = int(d * u.RATIO_SCALE)
    if not lo <= bp <= hi:
        raise ValueError(f"{what}: {v} is outside {lo / 1e4:g}..{hi / 1e4:g}")
    return bp


def _set_bands(chk, where, cell, t: CreditTerms, p: int) -> None:
    try:
        bands = _parse(cell)
        if not isinstance(bands, list) or not all(isinstance(b, dict) for b in bands):
            raise ValueError('must be a list of {"below": ratio, "single"|"group"|"board": '
                             'share} objects')
        if len(bands) > MAX_BANDS:
            raise ValueError(f"at most {MAX_BANDS} bands")
        last = 0
        for k, b in enumerate(bands):
            extra = set(b) - {"below", "single", "group", "board"}
            if extra:
                raise ValueError(f"band {k + 1}: unknown field(s) {sorted(extra)}")
            below = _bp(b.get("below"), f"band {k + 1} below", 1)
            if below <= last:
                raise ValueError(f"band {k + 1}: 'below' must increase from band to band")
            last = below
            t.band_below[p, k] = below
            for key, arr in (("single", t.band_single), ("group", t.band_group),
                             ("board", t.band_board)):
                v = b.get(key)
                arr[p, k] = -1 if v is None else _bp(v, f"band {k + 1} {key}", 0, u.RATIO_SCALE)
        t.n_bands[p] = len(bands)
    except ValueError as e:
        chk.add(where, "concentration_caps", str(e))


def _set_alerts(chk, where, cell, t: CreditTerms, p: int) -> None:
    try:
        vals = _parse(cell)
        if not isinstance(vals, list) or not vals or len(vals) > MAX_ALERTS:
            raise ValueError(f"must be a list of 1 to {MAX_ALERTS} fractions of the line")
        bps = [_bp(v, "threshold", 1) for v in vals]
        if any(b <= a for a, b in zip(bps, bps[1:], strict=False)):
            raise ValueError("thresholds must increase")
        t.alert_bp[p, :] = 0
        t.alert_bp[p, :len(bps)] = bps
        t.n_alerts[p] = len(bps)
    except ValueError as e:
        chk.add(where, "line_alerts", str(e))
