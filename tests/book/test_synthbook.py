"""The synthetic book generator: determinism, schema, realism (boards, limits, popularity, ratio
distribution) and the written files."""

import json
import re
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from monitor.book import synthetic as sb

N_ACCOUNTS = 20_000
N_SECURITIES = 1_000

SHAPES = {
    "main": r"(60[0135]\d{3}\.SH|00[012]\d{3}\.SZ)",
    "st": r"(60[0135]\d{3}\.SH|00[012]\d{3}\.SZ)",
    "chinext": r"30[01]\d{3}\.SZ",
    "star": r"688\d{3}\.SH",
    "bse": r"(8\d{5}|4\d{5}|92\d{4})\.BJ",
}
LIMIT_BP = {"main": 1000, "chinext": 2000, "star": 2000, "bse": 3000, "st": 500}


@pytest.fixture(scope="module")
def book():
    return sb.generate(N_ACCOUNTS, N_SECURITIES, seed=11)


def unscaled(col) -> np.ndarray:
    """Unscaled int64 values of a decimal128 column (0 where null)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    words = np.frombuffer(arr.buffers()[1], dtype=np.int64).reshape(-1, 2)
    words = words[arr.offset: arr.offset + len(arr)]
    assert np.array_equal(words[:, 1], words[:, 0] >> 63)  # fits in 64 bits
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return np.where(valid, words[:, 0], 0)


def strings(col) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def position_index(book):
    """Account and security index of each position row."""
    pos = book["positions"]
    acct = pc.index_in(pos["account_id"], value_set=book["accounts"]["account_id"]).to_numpy()
    sec = pc.index_in(pos["symbol"], value_set=book["securities"]["symbol"]).to_numpy()
    return acct, sec


def ratios(book) -> np.ndarray:
    """Maintenance ratio per account in plain numpy (inf when there is no debt)."""
    sec, acc, pos = book["securities"], book["accounts"], book["positions"]
    n = acc.num_rows
    ai, si = position_index(book)
    price = unscaled(sec["price"])
    kind = strings(pos["kind"])
    mv = pos["qty"].to_numpy() * price[si]  # thousandths of a yuan, exact in int64
    long_mv = np.bincount(ai, np.where(kind != "short", mv, 0), n)
    short_mv = np.bincount(ai, np.where(kind == "short", mv, 0), n)
    financed = np.bincount(ai, unscaled(pos["financed_cost"]), n)
    cash = unscaled(acc["cash"])
    accrued = unscaled(acc["accrued_interest_fees"])
    assets = np.maximum(cash, 0) + long_mv
    liabilities = financed + short_mv + accrued + np.maximum(-cash, 0)
    safe = np.where(liabilities > 0, liabilities, 1)
    return np.where(liabilities > 0, assets / safe, np.inf)


def test_deterministic_for_a_seed(monkeypatch):
    a = sb.generate(3_000, 300, seed=3)
    b = sb.generate(3_000, 300, seed=3)
    c = sb.generate(3_000, 300, seed=4)
    assert set(a) == set(sb.TABLES)
    assert all(a[k].equals(b[k]) for k in sb.TABLES)
    assert not a["positions"].equals(c["positions"])
    assert not a["securities"].equals(c["securities"])
    # several account blocks
    monkeypatch.setattr(sb, "_BLOCK", 700)
    d = sb.generate(3_000, 300, seed=3)
    e = sb.generate(3_000, 300, seed=3)
    assert all(d[k].equals(e[k]) for k in sb.TABLES)
    assert d["accounts"].num_rows == 3_000
    ids = strings(d["positions"]["account_id"])
    assert np.all(ids[1:] >= ids[:-1])


def test_schema(book):
    for name in sb.TABLES:
        assert book[name].schema == sb.SCHEMAS[name], name
    s = book["securities"].schema
    assert s.field("price").type == pa.decimal128(12, 3)
    assert s.field("prev_close").type == pa.decimal128(12, 3)
    assert s.field("haircut").type == pa.decimal128(6, 4)
    assert s.field("lot").type == pa.int64()
    assert s.field("suspended").type == pa.bool_()
    a = book["accounts"].schema
    assert a.field("cash").type == pa.decimal128(18, 3)
    assert a.field("accrued_interest_fees").type == pa.decimal128(18, 3)
    p = book["positions"].schema
    assert p.field("qty").type == pa.int64()
    assert p.field("financed_cost").type == pa.decimal128(18, 3)
    assert p.field("short_margin_ratio").type == pa.decimal128(6, 4)
    for t in book.values():
        t.validate(full=True)


def test_profiles(book):
    rows = {r["name"]: r for r in book["profiles"].to_pylist()}
    assert {k: v for k, v in rows["default"].items() if k != "name"} == {
        "withdrawable": Decimal("3.00"), "normal": Decimal("1.50"), "warning": Decimal("1.30"),
        "margin_call": Decimal("1.15"), "target": Decimal("1.50")}
    assert len(rows) >= 2
    profile = strings(book["accounts"]["profile"])
    assert set(profile) <= set(rows)
    assert np.mean(profile == "default") > 0.7


def test_account_ids(book):
    ids = strings(book["accounts"]["account_id"])
    assert len(set(ids)) == len(ids)
    assert ids[0] == "C0000001" and ids[-1] == f"C{N_ACCOUNTS:07d}"
    assert all(len(i) == 8 for i in ids[:: 997])
    assert np.all(ids[1:] > ids[:-1])


def test_symbols_and_boards():
    sec = sb.generate(10, 5_000, seed=2)["securities"]
    sym = strings(sec["symbol"])
    board = strings(sec["board"])
    assert len(set(sym)) == len(sym)
    for b, shape in SHAPES.items():
        pattern = re.compile(shape + r"\Z")
        assert all(pattern.match(s) for s in sym[board == b]), b
    share = {b: np.mean(board == b) for b in SHAPES}
    assert 0.55 <= share["main"] + share["st"] <= 0.65
    assert 0.20 <= share["chinext"] <= 0.30
    assert 0.09 <= share["star"] <= 0.15
    assert 0.01 <= share["bse"] <= 0.05
    assert 0.01 <= share["st"] / (share["main"] + share["st"]) <= 0.08
    lot = sec["lot"].to_numpy()
    assert np.all(lot == np.where(board == "star", 200, 100))
    suspended = sec["suspended"].to_numpy(zero_copy_only=False)
    assert 0 < suspended.sum() < 0.02 * len(sym)


def test_prices_inside_limit_band(book):
    sec = book["securities"]
    board = strings(sec["board"])
    price = unscaled(sec["price"])
    prev = unscaled(sec["prev_close"])
    assert np.all(price % 10 == 0) and np.all(prev % 10 == 0)  # 0.01 yuan
    assert np.all((price >= 2_000) & (price <= 200_000))
    assert 8_000 <= np.median(price) <= 18_000
    for b, bp in LIMIT_BP.items():
        m = board == b
        p, c = price[m], prev[m]
        # limit prices rounded half up to 0.01 yuan, in exact integers (thousandths)
        down = (c * (10_000 - bp) + 50_000) // 100_000 * 10
        up = (c * (10_000 + bp) + 50_000) // 100_000 * 10
        assert np.all((p >= down) & (p <= up)), b
    haircut = unscaled(sec["haircut"])
    assert np.all((haircut >= 0) & (haircut <= 7_000))
    assert np.all(haircut[board == "st"] == 0)
    assert np.mean(haircut > 0) > 0.8


def test_positions(book):
    pos = book["positions"]
    sec = book["securities"]
    ai, si = position_index(book)
    assert np.all(ai >= 0) and np.all(si >= 0)
    assert np.all(np.diff(ai) >= 0)  # sorted by account
    count = np.bincount(ai, minlength=book["accounts"].num_rows)
    assert count.min() >= 5 and count.max() <= 12
    assert 7.5 <= count.mean() <= 8.5
    kind = strings(pos["kind"])
    code = np.select([kind == "collateral", kind == "financed", kind == "short"], [0, 1, 2], -1)
    assert np.all(code >= 0)
    key = (ai.astype(np.int64) * N_SECURITIES + si) * 3 + code
    assert np.unique(key).size == key.size  # one position per (account, symbol, kind)
    qty = pos["qty"].to_numpy()
    assert np.all(qty > 0)
    lot = sec["lot"].to_numpy()[si]
    assert np.mean(qty % lot == 0) > 0.9
    fin, short = kind == "financed", kind == "short"
    for col, where in (("financed_cost", fin), ("fin_margin_ratio", fin),
                       ("short_sell_amount", short), ("short_margin_ratio", short)):
        valid = ~pos[col].is_null().to_numpy(zero_copy_only=False)
        assert np.array_equal(valid, where), col
    assert np.all(unscaled(pos["financed_cost"])[fin] > 0)
    assert np.all(unscaled(pos["short_sell_amount"])[short] > 0)
    assert set(unscaled(pos["fin_margin_ratio"])[fin]) == {10_000, 8_000}
    assert set(unscaled(pos["short_margin_ratio"])[short]) <= {5_000, 8_000, 10_000, 12_000}
    # shorts only on securities with a haircut that are not ST
    haircut = unscaled(sec["haircut"])[si]
    board = strings(sec["board"])[si]
    assert np.all(haircut[short] > 0) and not np.any(board[short] == "st")
    n = book["accounts"].num_rows
    has_short = np.bincount(ai, short, n) > 0
    has_fin = np.bincount(ai, fin, n) > 0
    assert 0.08 <= has_short.mean() <= 0.18
    assert has_fin.mean() > 0.6


def test_zipf_popularity(book):
    ai, si = position_index(book)
    holders = np.bincount(np.unique(ai.astype(np.int64) * N_SECURITIES + si) % N_SECURITIES,
                          minlength=N_SECURITIES)
    n = book["accounts"].num_rows
    top = np.sort(holders)[::-1]
    assert top[0] > 0.10 * n
    assert top[3] > 0.10 * n  # a few stocks are held by 10%+ of accounts
    assert np.median(holders) < 0.01 * n  # long tail


def test_ratio_distribution(book):
    r = ratios(book)
    no_debt = np.isinf(r)
    assert 0.10 <= no_debt.mean() <= 0.20
    d = r[~no_debt]
    assert np.mean((d >= 2.0) & (d < 4.0)) > 0.75
    assert 0.01 <= np.mean(d < 1.5) <= 0.08
    assert 0.0005 <= np.mean(d < 1.15) <= 0.01
    assert 0 < np.sum(d < 1.0) <= 0.005 * d.size
    assert 2.3 <= np.median(d) <= 3.2
    cash = unscaled(book["accounts"]["cash"])
    assert 0.01 <= np.mean(cash < 0) <= 0.06
    accrued = unscaled(book["accounts"]["accrued_interest_fees"])
    assert np.all(accrued >= 0)
    assert np.all(accrued[no_debt] == 0)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_write_book_roundtrip(tmp_path, fmt):
    tables = sb.generate(2_000, 200, seed=5)
    sb.write_book(tables, tmp_path / "book", fmt=fmt)
    for name in sb.TABLES:
        path = tmp_path / "book" / f"{name}.{fmt}"
        assert path.exists()
        if fmt == "parquet":
            back = pq.read_table(path)
        else:
            opts = pacsv.ConvertOptions(column_types=sb.SCHEMAS[name])
            back = pacsv.read_csv(path, convert_options=opts)
        assert back.schema == sb.SCHEMAS[name], name
        assert back.equals(tables[name]), name


def test_write_book_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError):
        sb.write_book(sb.generate(10, 20), tmp_path, fmt="xlsx")


def test_json_book_matches_tables():
    j = sb.generate_json_book(50, 40, seed=9)
    t = sb.generate(50, 40, seed=9)
    json.dumps(j)
    assert set(j) == {"securities", "profiles", "accounts"}
    assert j["profiles"]["default"] == {"withdrawable": "3.00", "normal": "1.50",
                                        "warning": "1.30", "margin_call": "1.15",
                                        "target": "1.50"}
    secs = t["securities"].to_pylist()
    assert [s["symbol"] for s in j["securities"]] == [s["symbol"] for s in secs]
    for js, ts in zip(j["securities"], secs, strict=True):
        assert isinstance(js["price"], str) and Decimal(js["price"]) == ts["price"]
        assert Decimal(js["prev_close"]) == ts["prev_close"]
        assert Decimal(js["haircut"]) == ts["haircut"]
        assert js["lot"] == ts["lot"] and js["board"] == ts["board"]
    accts = t["accounts"].to_pylist()
    assert len(j["accounts"]) == len(accts)
    for ja, ta in zip(j["accounts"], accts, strict=True):
        assert ja["account_id"] == ta["account_id"]
        assert Decimal(ja["cash"]) == ta["cash"]
        assert Decimal(ja["accrued_interest_fees"]) == ta["accrued_interest_fees"]
    rows = [dict(p, account_id=a["account_id"]) for a in j["accounts"] for p in a["positions"]]
    tpos = t["positions"].to_pylist()
    assert len(rows) == len(tpos)
    for jp, tp in zip(rows, tpos, strict=True):
        assert (jp["account_id"], jp["symbol"], jp["kind"], jp["qty"]) == (
            tp["account_id"], tp["symbol"], tp["kind"], tp["qty"])
        for f in ("financed_cost", "fin_margin_ratio", "short_sell_amount", "short_margin_ratio"):
            if tp[f] is None:
                assert f not in jp
            else:
                assert Decimal(jp[f]) == tp[f]


def test_progress_is_reported():
    seen = []
    sb.generate(1_000, 50, seed=1, progress=lambda stage, done, total: seen.append(
        (stage, done, total)))
    stages = {s for s, _, _ in seen}
    assert {"securities", "accounts", "tables"} <= stages
    for stage in stages:
        last = [x for x in seen if x[0] == stage][-1]
        assert last[1] == last[2]
