"""Load and validate a book: one JSON file, or a folder of securities / accounts / positions
(and optional profiles) tables in Parquet or CSV.

Everything goes through pyarrow tables and one vectorised validation path, so a JSON book and a
1M-account Parquet book are checked by the same rules. A book with any problem is rejected as a
whole: `BookError` lists every problem (where, field, what is wrong); nothing is half-loaded.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from feeds.universe import board_of_symbol
from kernels import bands as kb
from kernels import units as u
from monitor.book.call_terms import read_call_terms  # cure_line, call_basis, ... (§6)
from monitor.book.columns import (
    MAX_LISTED_PER_CHECK,
    Checker,
    Problem,
    bools,
    column,
    fixed,
    ints,
    strings,
)
from monitor.book.contracts import (  # contract fields (§6)
    default_margin_ratio_bp,
    number_contracts,
    read_contract_terms,
    read_position_contracts,
)
from monitor.book.credit_terms import read_credit_terms  # credit fields (docs/credit-controls.md)
from monitor.book.model import Book
from monitor.book.shard import Shard, filter_tables
from monitor.errors import BookError


def load_book(path: str | Path, shard: Shard | None = None) -> Book:
    """The book at `path` (a JSON file or a folder of tables); with `shard`, only that shard's
    accounts (monitor/book/shard.py)."""
    tables, names = read_tables(path)
    return build_book(filter_tables(tables, shard), names, source=str(Path(path).name))


def read_tables(path: str | Path) -> tuple[dict, dict]:
    """The book's tables as read, before any check: (tables by name, file names)."""
    path = Path(path)
    if not path.exists():
        raise BookError([Problem(str(path), "-", "no such file or folder")], str(path))
    if path.is_dir():
        return _read_folder(path)
    return _read_json(path)


def book_from_dict(doc: dict, source: str = "book", shard: Shard | None = None) -> Book:
    tables, names = _tables_from_doc(doc, source)
    return build_book(filter_tables(tables, shard), names, source=source)


# ---------------------------------------------------------------- reading


def _read_json(path: Path):
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise BookError([Problem(path.name, "-", f"not valid JSON: {e}")], path.name) from None
    return _tables_from_doc(doc, path.name)


def _as_text(v):
    """JSON numbers or decimal strings: keep the decimal text so nothing is rounded by floats."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)):
        return repr(v)
    return v


MONEY_FIELDS = {
    "securities": ("price", "prev_close", "haircut", "market_financing", "limit_pct"),
    "accounts": ("cash", "accrued_interest_fees", "other_debt", "other_collateral",
                 "withdrawable", "normal", "warning", "margin_call", "target",
                 "financing_line", "short_line"),
    "positions": ("financed_cost", "fin_margin_ratio", "short_sell_amount", "short_margin_ratio"),
    "profiles": ("withdrawable", "normal", "warning", "margin_call", "target", "cure_line",
                 "fin_margin_ratio", "short_margin_ratio"),
}


def _tables_from_doc(doc, source):
    if not isinstance(doc, dict):
        raise BookError([Problem(source, "-", "the book must be a JSON object")], source)
    problems = []
    for key in ("securities", "accounts"):
        if not isinstance(doc.get(key), list):
            problems.append(Problem(source, key, "missing or not a list"))
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict):
        problems.append(Problem(source, "profiles", "must be an object of name -> lines"))
        profiles = {}
    if problems:
        raise BookError(problems, source)

    def rows(items, table, where):
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                problems.append(Problem(f"{where} {i}", "-", "must be an object"))
                continue
            r = dict(item)
            for f in MONEY_FIELDS[table]:
                if f in r:
                    r[f] = _as_text(r[f])
            if table == "securities" and "limit_pct" in r and r["limit_pct"] is None:
                r["limit_pct"] = "none"  # an explicit null: no daily limit (interfaces.md)
            out.append(r)
        return out

    secs = rows(doc["securities"], "securities", "securities[]")
    accts, poss = [], []
    for i, a in enumerate(doc["accounts"]):
        if not isinstance(a, dict):
            problems.append(Problem(f"accounts[{i}]", "-", "must be an object"))
            continue
        a = dict(a)
        plist = a.pop("positions", [])
        if not isinstance(plist, list):
            problems.append(Problem(f"accounts[{i}]", "positions", "must be a list"))
            plist = []
        accts.extend(rows([a], "accounts", f"accounts[{i}]"))
        for p in rows(plist, "positions", f"accounts[{i}].positions[]"):
            p.setdefault("account_id", a.get("account_id"))
            poss.append(p)
    profs = []
    for name, lines in profiles.items():
        if not isinstance(lines, dict):
            problems.append(Problem(f"profiles.{name}", "-", "must be an object of lines"))
            continue
        # a list or object (concentration caps, line alerts) travels as JSON text
        profs.append({"name": name, **{k: orjson.dumps(v).decode() if isinstance(v, (list, dict))
                                       else _as_text(v) for k, v in lines.items()}})
    if problems:
        raise BookError(problems, source)
    tables = {}
    names = {}
    for key, data in (("securities", secs), ("accounts", accts), ("positions", poss),
                      ("profiles", profs)):
        try:
            tables[key] = _table_from_rows(data)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise BookError([Problem(f"{source} {key}", "-", f"inconsistent types: {e}")],
                            source) from None
        names[key] = f"{source} {key}"
    return tables, names


def _table_from_rows(data):
    if not data:
        return pa.table({})
    cols = {}
    for r in data:
        for k in r:
            cols.setdefault(k, None)
    out = {}
    for k in cols:
        vals = [r.get(k) for r in data]
        kinds = {type(v) for v in vals if v is not None}
        # beyond int64 arrow cannot hold the integers: as text, the range check names the row
        huge = any(type(v) is int and not -(2**63) <= v < 2**63 for v in vals)
        # a list or object where a value belongs: as text too, so the field's check names it
        nested = bool(kinds & {list, dict})
        if len(kinds) > 1 or huge or nested:  # e.g. qty as 100 in one row, "100" in another
            vals = [None if v is None else (v if isinstance(v, str) else repr(v)) for v in vals]
        out[k] = pa.array(vals)
    return pa.table(out)


def _read_folder(path: Path):
    tables, names = {}, {}
    problems = []
    for key in ("securities", "accounts", "positions", "profiles"):
        found = [p for p in (path / f"{key}.parquet", path / f"{key}.csv") if p.exists()]
        if not found:
            if key != "profiles":
                problems.append(Problem(str(path.name), key, f"no {key}.parquet or {key}.csv"))
            continue
        f = found[0]
        try:
            if f.suffix == ".parquet":
                tables[key] = pq.read_table(f)
            else:
                tables[key] = pacsv.read_csv(
                    f, convert_options=pacsv.ConvertOptions(
                        column_types={c: pa.string() for c in _csv_text_columns(key)},
                        strings_can_be_null=True))
            tables[key].column_names  # noqa: B018 - a header that is not UTF-8 fails here
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
            problems.append(Problem(f.name, "-", f"cannot read: {e}"))
        names[key] = f.name
    if problems:
        raise BookError(problems, path.name)
    return tables, names


def _csv_text_columns(key):
    # read money as text so "10.20" stays exact; ids as text so "000001.SZ" keeps its zeros
    ids = {"securities": ("symbol", "board", "group", "type", "listing_date"),
           "accounts": ("account_id", "profile"),
           "positions": ("account_id", "symbol", "kind", "contract_id", "open_date", "term_end",
                         "repay_mode"), "profiles": ("name",)}[key]
    return ids + MONEY_FIELDS[key]


# ---------------------------------------------------------------- converting


def build_book(tables: dict[str, pa.Table], names: dict[str, str], source: str = "book") -> Book:
    chk = Checker(source)
    secs = _securities(chk, tables["securities"], names["securities"])
    profiles = _profiles(chk, tables.get("profiles"), names.get("profiles", "profiles"))
    accts = _accounts(chk, tables["accounts"], names["accounts"], profiles)
    pos = _positions(chk, tables.get("positions", pa.table({})), names.get("positions",
                     "positions"), secs["index"], accts["index"])
    credit = read_credit_terms(chk, tables, names, secs, profiles, accts)
    call_terms = read_call_terms(chk, tables.get("profiles"), profiles)
    contract_terms = read_contract_terms(chk, tables.get("profiles"), profiles)
    if chk.problems:
        raise BookError(chk.problems, source)
    book = _assemble(secs, profiles, accts, pos)
    book.credit = credit
    book.call_terms = call_terms
    book.contract_terms = contract_terms
    _check_headroom(chk, book)
    if chk.problems:
        raise BookError(chk.problems, source)
    return book


def _securities(chk, t, name):
    n = t.num_rows
    where = lambda i: f"{name} row {i + 1}"  # noqa: E731
    if n == 0:
        chk.add(name, "-", "no securities")
    symbols = strings(t, "symbol", n)
    index = {}
    for i, s in enumerate(symbols):
        if s is None or not str(s).strip():
            chk.add(where(i), "symbol", "missing")
        elif s in index:
            chk.add(where(i), "symbol", f"duplicate symbol {s!r} (first at row {index[s] + 1})")
        else:
            index[s] = i
    price, ok_p, _ = fixed(chk, t, "price", n, u.PRICE_SCALE, where, required=True)
    chk.rows(where, np.flatnonzero(ok_p & (price <= 0)), "price", "must be > 0")
    prev, ok_pc, miss_pc = fixed(chk, t, "prev_close", n, u.PRICE_SCALE, where, required=False)
    prev = np.where(miss_pc, price, prev)
    chk.rows(where, np.flatnonzero(ok_pc & ~miss_pc & (prev <= 0)), "prev_close", "must be > 0")
    hc, ok_h, _ = fixed(chk, t, "haircut", n, u.RATIO_SCALE, where, required=True)
    chk.rows(where, np.flatnonzero(ok_h & ((hc < 0) | (hc > u.RATIO_SCALE))), "haircut",
             "must be between 0 and 1")
    boards_txt = strings(t, "board", n)
    board = np.zeros(n, dtype=np.int8)
    for i in range(n):
        b = boards_txt[i]
        if b is None:
            board[i] = board_of_symbol(str(symbols[i] or ""))
        elif b in u.BOARD_CODES:
            board[i] = u.BOARD_CODES[b]
        else:
            chk.add(where(i), "board", f"{b!r} is not one of {', '.join(u.BOARD_NAMES)}")
    lot, miss_lot = ints(chk, t, "lot", n, where, required=False)
    lot = np.where(miss_lot | (column(t, "lot") is None), u.BOARD_DEFAULT_LOT[board], lot)
    chk.rows(where, np.flatnonzero(lot <= 0), "lot", "must be a positive number of shares")
    suspended = bools(chk, t, "suspended", n, where)
    return {"symbols": [str(s) for s in symbols], "index": index, "price": price,
            "prev_close": prev, "haircut": hc / u.RATIO_SCALE, "board": board,
            "lot": lot.astype(np.int64), "suspended": suspended,
            **_band_fields(chk, t, n, where, board)}


def _band_fields(chk, t, n, where, board) -> dict:
    """The optional price-band fields of securities (interfaces.md; margin-rules.md §5):
    `risk_warning`, `listing_date`, `type`, `limit_pct`. None for a field the book lacks."""
    out: dict = {"risk_warning": None, "listing_day": None, "sec_type": None,
                 "limit_override": None}
    if column(t, "risk_warning") is not None:
        out["risk_warning"] = bools(chk, t, "risk_warning", n, where) | (board == u.BOARD_ST)
    if column(t, "listing_date") is not None:
        days = np.zeros(n, dtype=np.int64)
        for i, v in enumerate(strings(t, "listing_date", n)):
            if v is None or not str(v).strip():
                continue
            try:
                days[i] = date.fromisoformat(str(v).strip()[:10]).toordinal()
            except ValueError:
                chk.add(where(i), "listing_date", f"{str(v)[:40]!r} is not an ISO date")
        out["listing_day"] = days
    if column(t, "type") is not None:
        typ = np.zeros(n, dtype=np.int8)
        for i, v in enumerate(strings(t, "type", n)):
            if v is None:
                continue
            code = kb.TYPE_CODES.get(str(v).strip().lower())
            if code is None:
                chk.add(where(i), "type", f"{str(v)[:40]!r} is not one of "
                        f"{', '.join(kb.TYPE_CODES)}")
            else:
                typ[i] = code
        out["sec_type"] = typ
    if column(t, "limit_pct") is not None:
        over = np.full(n, kb.DERIVE, dtype=np.int64)
        for i, v in enumerate(strings(t, "limit_pct", n)):
            if v is None or not str(v).strip():
                continue
            text = str(v).strip()
            if text.lower() == "none":
                over[i] = kb.NO_LIMIT
                continue
            try:
                d = Decimal(text)
                ok = d.is_finite() and 0 < d <= 1 and d == d.quantize(Decimal("0.0001"))
            except InvalidOperation:
                ok = False
            if ok:
                over[i] = int(d * u.RATIO_SCALE)
            else:
                chk.add(where(i), "limit_pct", f"{text[:40]!r} is not a band in (0, 1] with "
                        "at most 4 decimals, nor null / \"none\" (no limit)")
        out["limit_override"] = over
    return out


def _profiles(chk, t, name):
    names = ["default"]
    lines = [list(u.DEFAULT_LINES_BP)]
    if t is None or t.num_rows == 0:
        return {"names": names, "lines": lines}
    n = t.num_rows
    where = lambda i: f"profile {strings(t, 'name', n)[i]!r}"  # noqa: E731
    pnames = strings(t, "name", n)
    cols = []
    for j, ln in enumerate(u.LINE_NAMES):
        v, ok, miss = fixed(chk, t, ln, n, u.RATIO_SCALE, where, required=False)
        cols.append(np.where(miss, u.DEFAULT_LINES_BP[j], v))
    for i in range(n):
        nm = pnames[i]
        if nm is None:
            chk.add(f"{name} row {i + 1}", "name", "missing")
            continue
        row = [int(c[i]) for c in cols]
        _check_lines(chk, f"profile {nm!r}", row)
        if nm == "default":
            lines[0] = row
        elif nm in names:
            chk.add(f"profile {nm!r}", "name", "duplicate profile")
        else:
            names.append(nm)
            lines.append(row)
    return {"names": names, "lines": lines}


def _check_lines(chk, where, row):
    w, nrm, wa, mc, tgt = row
    if not (w > nrm > wa > mc > 0):
        chk.add(where, "lines", "must satisfy withdrawable > normal > warning > margin_call > 0 "
                f"(got {w / 1e4}, {nrm / 1e4}, {wa / 1e4}, {mc / 1e4})")
    if tgt <= u.RATIO_SCALE:
        chk.add(where, "target", f"must be above 1.00 (got {tgt / 1e4})")
    for name, v in (("withdrawable", w), ("target", tgt)):  # the largest line, and the target
        if v > u.MAX_LINE_BP:
            chk.add(where, name, f"must be at most {u.MAX_LINE_BP / 1e4:.2f} (got {v / 1e4}): "
                    "beyond it exact tier arithmetic could overflow")


def _accounts(chk, t, name, profiles):
    n = t.num_rows
    ids = strings(t, "account_id", n)
    where = lambda i: f"account {ids[i]!r}" if ids[i] is not None else f"{name} row {i + 1}"  # noqa: E731
    index = {}
    for i, a in enumerate(ids):
        if a is None or not str(a).strip():
            chk.add(f"{name} row {i + 1}", "account_id", "missing")
        elif a in index:
            chk.add(where(i), "account_id", f"duplicate account (first at row {index[a] + 1})")
        else:
            index[a] = i
    cash, _, _ = fixed(chk, t, "cash", n, u.MONEY_SCALE, where, required=True)
    accrued, ok_i, _ = fixed(chk, t, "accrued_interest_fees", n, u.MONEY_SCALE, where,
                              required=False, default=0)
    chk.rows(where, np.flatnonzero(ok_i & (accrued < 0)), "accrued_interest_fees",
             "must be >= 0")
    other_debt, ok_o, _ = fixed(chk, t, "other_debt", n, u.MONEY_SCALE, where, required=False,
                                 default=0)
    chk.rows(where, np.flatnonzero(ok_o & (other_debt < 0)), "other_debt", "must be >= 0")
    other_coll, ok_c, _ = fixed(chk, t, "other_collateral", n, u.MONEY_SCALE, where,
                                 required=False, default=0)
    chk.rows(where, np.flatnonzero(ok_c & (other_coll < 0)), "other_collateral", "must be >= 0")
    pnames = strings(t, "profile", n)
    pindex = {p: i for i, p in enumerate(profiles["names"])}
    profile_of = np.zeros(n, dtype=np.int32)
    overrides = []
    for ln in u.LINE_NAMES:
        v, _, miss = fixed(chk, t, ln, n, u.RATIO_SCALE, where, required=False)
        overrides.append((v, miss if column(t, ln) is not None else np.ones(n, dtype=bool)))
    any_override = np.zeros(n, dtype=bool)
    for _, miss in overrides:
        any_override |= ~miss
    for i in range(n):
        p = pnames[i]
        if p is None:
            p = "default"
        if p not in pindex:
            chk.add(where(i), "profile", f"unknown profile {p!r}")
            continue
        profile_of[i] = pindex[p]
    # per-account line overrides: a derived profile per distinct override
    for i in np.flatnonzero(any_override):
        base = list(profiles["lines"][profile_of[i]])
        for j, (v, miss) in enumerate(overrides):
            if not miss[i]:
                base[j] = int(v[i])
        key = f"{profiles['names'][profile_of[i]]}+{'/'.join(str(x) for x in base)}"
        if key not in pindex:
            _check_lines(chk, where(i), base)
            pindex[key] = len(profiles["names"])
            profiles["names"].append(key)
            profiles["lines"].append(base)
        profile_of[i] = pindex[key]
    return {"ids": [str(a) for a in ids], "index": index, "cash": cash, "accrued": accrued,
            "other_debt": other_debt, "other_collateral": other_coll, "profile_of": profile_of}


class _LazyStrings:
    """Row -> text of a column, converted only for the rows a message names."""

    def __init__(self, table, name):
        self.col = column(table, name)

    def __getitem__(self, i):
        if self.col is None:
            return None
        v = self.col[int(i)].as_py()
        return None if v is None else str(v)


def _lookup(table, name, index: dict, n):
    """Column of names -> dense indices through `index`, vectorised; (values, bad rows)."""
    col = column(table, name)
    if col is None:
        return np.zeros(n, dtype=np.int64), np.arange(n)
    keys = list(index)
    pos = pc.index_in(col.cast(pa.string()), value_set=pa.array(keys, type=pa.string()))
    found = np.asarray(pos.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    at = np.asarray(pos.fill_null(0).to_numpy(), dtype=np.int64)
    codes = np.fromiter(index.values(), dtype=np.int64, count=len(keys))
    return np.where(found, codes[at] if len(keys) else 0, 0), np.flatnonzero(~found)


def _positions(chk, t, name, sec_index, acct_index):
    n = t.num_rows
    where = lambda i: f"{name} row {i + 1} (account {acct_ids[i]!r})"  # noqa: E731
    acct_ids = _LazyStrings(t, "account_id")
    acct, bad_a = _lookup(t, "account_id", acct_index, n)
    sec, bad_s = _lookup(t, "symbol", sec_index, n)
    kind, bad_k = _lookup(t, "kind", u.KIND_CODES, n)
    symbols, kinds_txt = _LazyStrings(t, "symbol"), _LazyStrings(t, "kind")
    for i in bad_a[:MAX_LISTED_PER_CHECK]:
        chk.add(where(i), "account_id", f"unknown account {acct_ids[i]!r}")
    for i in bad_s[:MAX_LISTED_PER_CHECK]:
        chk.add(where(i), "symbol", f"unknown symbol {symbols[i]!r}")
    for i in bad_k[:MAX_LISTED_PER_CHECK]:
        chk.add(where(i), "kind", f"{kinds_txt[i]!r} is not collateral, financed or short")
    for bad, field_ in ((bad_a, "account_id"), (bad_s, "symbol"), (bad_k, "kind")):
        if bad.shape[0] > MAX_LISTED_PER_CHECK:
            chk.add(where(int(bad[MAX_LISTED_PER_CHECK])), field_,
                    f"(and {bad.shape[0] - MAX_LISTED_PER_CHECK - 1} more rows like it)")
    acct = acct.astype(np.int64)
    sec = sec.astype(np.int32)
    kind = kind.astype(np.int8)
    qty, miss_q = ints(chk, t, "qty", n, where, required=True)
    chk.rows(where, np.flatnonzero(~miss_q & (qty <= 0)), "qty", "must be a positive integer")
    fin_cost, ok_fc, miss_fc = fixed(chk, t, "financed_cost", n, u.MONEY_SCALE, where,
                                      required=False)
    fin_mr, ok_fm, miss_fm = fixed(chk, t, "fin_margin_ratio", n, u.RATIO_SCALE, where,
                                    required=False)
    sh_amt, ok_sa, miss_sa = fixed(chk, t, "short_sell_amount", n, u.MONEY_SCALE, where,
                                    required=False)
    sh_mr, ok_sm, miss_sm = fixed(chk, t, "short_margin_ratio", n, u.RATIO_SCALE, where,
                                   required=False)
    fin = kind == u.FINANCED
    short = kind == u.SHORT
    con = read_position_contracts(chk, t, n, where, kind, acct, acct_ids)
    dated = con["open_day"] > 0
    fin_mr, miss_fm, sh_mr, miss_sm = (x.copy() for x in (fin_mr, miss_fm, sh_mr, miss_sm))
    # a dated contract without a margin ratio takes the exchange minimum of its open date
    for mr, miss, k in ((fin_mr, miss_fm, u.FINANCED), (sh_mr, miss_sm, u.SHORT)):
        for i in np.flatnonzero(miss & dated & (kind == k)).tolist():
            mr[i] = default_margin_ratio_bp(k, int(con["open_day"][i]))
            miss[i] = False
    chk.rows(where, np.flatnonzero(fin & miss_fc), "financed_cost",
             "missing on a financed position")
    chk.rows(where, np.flatnonzero(fin & ~miss_fc & ok_fc & (fin_cost < 0)), "financed_cost",
             "must be >= 0")
    chk.rows(where, np.flatnonzero(fin & miss_fm), "fin_margin_ratio",
             "missing on a financed position")
    chk.rows(where, np.flatnonzero(short & miss_sa), "short_sell_amount",
             "missing on a short position")
    chk.rows(where, np.flatnonzero(short & ~miss_sa & ok_sa & (sh_amt < 0)), "short_sell_amount",
             "must be >= 0")
    chk.rows(where, np.flatnonzero(short & miss_sm), "short_margin_ratio",
             "missing on a short position")
    for mr, miss, ok, label, mask in ((fin_mr, miss_fm, ok_fm, "fin_margin_ratio", fin),
                                      (sh_mr, miss_sm, ok_sm, "short_margin_ratio", short)):
        chk.rows(where, np.flatnonzero(mask & ~miss & ok & (mr <= 0)), label, "must be > 0")
    cost = np.where(fin, fin_cost, np.where(short, sh_amt, 0)).astype(np.int64)
    mratio = np.where(fin, fin_mr, np.where(short, sh_mr, 0)) / u.RATIO_SCALE
    return {"acct": acct, "sec": sec, "kind": kind, "qty": qty, "cost": cost, "mratio": mratio,
            "cid": number_contracts(kind, con["open_day"]), "cids": con["ids"],
            "open_day": con["open_day"], "term_day": con["term_day"]}


def _assemble(secs, profiles, accts, pos):
    n_acct = len(accts["ids"])
    order = np.argsort(pos["acct"], kind="stable")
    ptr = np.zeros(n_acct + 1, dtype=np.int64)
    np.cumsum(np.bincount(pos["acct"], minlength=n_acct), out=ptr[1:])
    cid = pos["cid"]
    names = {int(cid[i]): str(nm) for i, nm in enumerate(pos["cids"]) if nm is not None}
    index = {(int(pos["acct"][i]), str(nm)): int(cid[i]) for i, nm in enumerate(pos["cids"])
             if nm is not None}
    return Book(
        pos_cid=cid[order], pos_open_day=pos["open_day"][order],
        pos_term_day=pos["term_day"][order],
        pos_notice=np.zeros(order.shape[0], dtype=np.int8), contract_names=names,
        contract_index=index, next_cid=int(cid.max(initial=0)) + 1,
        symbols=secs["symbols"], price=secs["price"], prev_close=secs["prev_close"],
        haircut=secs["haircut"].astype(np.float64), board=secs["board"], lot=secs["lot"],
        suspended=secs["suspended"], symbol_index=secs["index"],
        risk_warning=secs["risk_warning"], listing_day=secs["listing_day"],
        sec_type=secs["sec_type"], limit_override=secs["limit_override"],
        profile_names=profiles["names"],
        profile_lines=np.array(profiles["lines"], dtype=np.int64).reshape(-1, u.N_LINES),
        account_ids=accts["ids"], account_index=accts["index"], cash=accts["cash"],
        accrued=accts["accrued"], other_debt=accts["other_debt"],
        other_collateral=accts["other_collateral"], profile_of=accts["profile_of"],
        pos_ptr=ptr, pos_sec=pos["sec"][order].astype(np.int32),
        pos_kind=pos["kind"][order], pos_qty=pos["qty"][order].astype(np.int64),
        pos_cost=pos["cost"][order], pos_margin_ratio=pos["mratio"][order].astype(np.float64),
    )


def _check_headroom(chk, book: Book):
    """Reject accounts so large that exact tier arithmetic could overflow (see units)."""
    acct = np.repeat(np.arange(book.n_accounts), np.diff(book.pos_ptr))
    up = np.maximum(book.price, book.price_ceiling())
    mv = book.pos_qty.astype(np.float64) * up[book.pos_sec].astype(np.float64)
    total = np.bincount(acct, weights=mv + book.pos_cost.astype(np.float64),
                        minlength=book.n_accounts)
    total += np.abs(book.cash) + book.accrued + book.other_debt + book.other_collateral
    for a in np.flatnonzero(total > u.MAX_ACCOUNT_MONEY)[:MAX_LISTED_PER_CHECK]:
        chk.add(f"account {book.account_ids[a]!r}", "-",
                f"amounts exceed {u.MAX_ACCOUNT_MONEY // u.MONEY_SCALE} yuan, the exact range")
