"""Bad books: every kind of invalid input is rejected as a whole with a BookError whose problems
name where each one is (file or table, row or account, field) and what is wrong; several
problems are all listed at once. JSON dicts, JSON files, CSV folders and Parquet folders."""

from __future__ import annotations

import copy
import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitor.book.load import MAX_LISTED_PER_CHECK, BookError, book_from_dict, load_book


def good() -> dict:
    return {
        "securities": [
            {"symbol": "600000.SH", "price": "10.20", "haircut": "0.65", "board": "main",
             "lot": 100, "suspended": False, "prev_close": "10.00"},
            {"symbol": "688981.SH", "price": "50.00", "haircut": "0.5"},
        ],
        "profiles": {"tight": {"withdrawable": "2.80", "normal": "1.60", "warning": "1.40",
                               "margin_call": "1.20", "target": "1.60"}},
        "accounts": [
            {"account_id": "C1", "cash": "20000", "accrued_interest_fees": "2000",
             "profile": "tight",
             "positions": [
                 {"symbol": "600000.SH", "kind": "collateral", "qty": 20000},
                 {"symbol": "600000.SH", "kind": "financed", "qty": 30000,
                  "financed_cost": "300000", "fin_margin_ratio": "1.0"},
             ]},
            {"account_id": "C2", "cash": "-500.5",
             "positions": [
                 {"symbol": "688981.SH", "kind": "short", "qty": 1000,
                  "short_sell_amount": "50000", "short_margin_ratio": "1.0"},
             ]},
        ],
    }


def problems_of(doc) -> list:
    with pytest.raises(BookError) as ei:
        book_from_dict(doc)
    err = ei.value
    assert err.problems, "a BookError lists its problems"
    text = str(err)
    for p in err.problems:  # every problem is in the message, one per line
        assert str(p) in text
    return err.problems


def find(problems, field, where, message=None):
    """The problem about `field` whose place mentions `where` (and whose text has `message`)."""
    hits = [p for p in problems if p.field == field and where in p.where
            and (message is None or message in p.message)]
    assert hits, f"no problem {field!r} at {where!r} ({message!r}) in: " + "; ".join(
        str(p) for p in problems)
    return hits[0]


def mutate(fn) -> dict:
    doc = good()
    fn(doc)
    return doc


def pos(doc, acct, i):
    return doc["accounts"][acct]["positions"][i]


def test_the_good_book_loads():
    book = book_from_dict(good())
    assert book.n_accounts == 2 and book.n_positions == 3


# ------------------------------------------------------------------ positions

def test_unknown_symbol():
    ps = problems_of(mutate(lambda d: pos(d, 1, 0).update(symbol="000999.SZ")))
    p = find(ps, "symbol", "C2", "unknown symbol")
    assert "000999.SZ" in p.message
    assert len(ps) == 1


@pytest.mark.parametrize("qty", [-100, 0, "-5", "0"])
def test_negative_or_zero_qty(qty):
    ps = problems_of(mutate(lambda d: pos(d, 0, 1).update(qty=qty)))
    find(ps, "qty", "C1", "positive")
    assert "row 2" in find(ps, "qty", "C1").where  # the second position row


@pytest.mark.parametrize("qty", [100.5, "100.5", "1e2.5", "ten"])
def test_fractional_or_non_numeric_qty(qty):
    ps = problems_of(mutate(lambda d: pos(d, 1, 0).update(qty=qty)))
    p = find(ps, "qty", "C2")
    assert any(m in p.message for m in ("whole number", "finite number"))


def test_missing_qty():
    ps = problems_of(mutate(lambda d: pos(d, 1, 0).pop("qty")))
    find(ps, "qty", "C2")


def test_missing_financed_cost():
    ps = problems_of(mutate(lambda d: pos(d, 0, 1).pop("financed_cost")))
    find(ps, "financed_cost", "C1", "missing on a financed position")


def test_missing_fin_margin_ratio():
    ps = problems_of(mutate(lambda d: pos(d, 0, 1).pop("fin_margin_ratio")))
    find(ps, "fin_margin_ratio", "C1", "missing")


def test_missing_short_sell_amount():
    ps = problems_of(mutate(lambda d: pos(d, 1, 0).pop("short_sell_amount")))
    find(ps, "short_sell_amount", "C2", "missing on a short position")


def test_missing_short_margin_ratio():
    ps = problems_of(mutate(lambda d: pos(d, 1, 0).pop("short_margin_ratio")))
    find(ps, "short_margin_ratio", "C2", "missing")


@pytest.mark.parametrize("field,value", [("financed_cost", "-1"), ("fin_margin_ratio", "0")])
def test_bad_financed_amounts(field, value):
    ps = problems_of(mutate(lambda d: pos(d, 0, 1).update({field: value})))
    find(ps, field, "C1", "must be")


def test_negative_short_sell_amount():
    ps = problems_of(mutate(lambda d: pos(d, 1, 0).update(short_sell_amount="-10")))
    find(ps, "short_sell_amount", "C2", ">= 0")


def test_unknown_kind():
    ps = problems_of(mutate(lambda d: pos(d, 1, 0).update(kind="long")))
    find(ps, "kind", "C2", "'long'")


def test_position_for_an_unknown_account_in_tables(tmp_path):
    folder = write_csv_folder(tmp_path, good())
    with open(folder / "positions.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["C9", "600000.SH", "collateral", "100", "", "", "", ""])
    with pytest.raises(BookError) as ei:
        load_book(folder)
    find(ei.value.problems, "account_id", "positions.csv row 4", "unknown account 'C9'")


# ------------------------------------------------------------------ securities

@pytest.mark.parametrize("price", [float("nan"), "NaN", float("inf"), "Infinity", "-inf",
                                   "abc", ""])
def test_non_finite_or_non_numeric_price(price):
    ps = problems_of(mutate(lambda d: d["securities"][1].update(price=price)))
    p = find(ps, "price", "securities row 2")
    assert "finite" in p.message or "missing" in p.message
    assert len([q for q in ps if q.field == "price"]) == 1  # said once, not also "> 0"


@pytest.mark.parametrize("price", ["0", "-1.5", 0, -3])
def test_zero_or_negative_price(price):
    ps = problems_of(mutate(lambda d: d["securities"][1].update(price=price)))
    find(ps, "price", "securities row 2", "must be > 0")


def test_missing_price():
    ps = problems_of(mutate(lambda d: d["securities"][0].pop("price")))
    find(ps, "price", "securities row 1", "missing")


def test_zero_prev_close():
    ps = problems_of(mutate(lambda d: d["securities"][0].update(prev_close="0")))
    find(ps, "prev_close", "securities row 1", "> 0")


@pytest.mark.parametrize("haircut", ["1.01", "2", "-0.1"])
def test_haircut_out_of_range(haircut):
    ps = problems_of(mutate(lambda d: d["securities"][0].update(haircut=haircut)))
    find(ps, "haircut", "securities row 1", "between 0 and 1")


def test_duplicate_symbol():
    ps = problems_of(mutate(lambda d: d["securities"].append(dict(d["securities"][0]))))
    p = find(ps, "symbol", "securities row 3", "duplicate symbol '600000.SH'")
    assert "row 1" in p.message


def test_bad_board_lot_and_suspended():
    def m(d):
        d["securities"][0]["board"] = "nasdaq"
        d["securities"][1]["lot"] = 0
        d["securities"][1]["suspended"] = "maybe"
    ps = problems_of(mutate(m))
    find(ps, "board", "securities row 1", "'nasdaq'")
    find(ps, "lot", "securities row 2", "positive")
    find(ps, "suspended", "securities row 2", "boolean")


def test_no_securities():
    ps = problems_of(mutate(lambda d: d.update(securities=[])))
    assert any("no securities" in p.message for p in ps)


# ------------------------------------------------------------------ accounts and profiles

def test_duplicate_account():
    ps = problems_of(mutate(lambda d: d["accounts"].append(copy.deepcopy(d["accounts"][0]))))
    p = find(ps, "account_id", "C1", "duplicate account")
    assert "row 1" in p.message


def test_missing_account_id_and_cash():
    def m(d):
        d["accounts"][1].pop("account_id")
        d["accounts"][0].pop("cash")
    ps = problems_of(mutate(m))
    find(ps, "account_id", "accounts row 2", "missing")
    find(ps, "cash", "C1", "missing")


@pytest.mark.parametrize("field", ["accrued_interest_fees", "other_debt", "other_collateral"])
def test_negative_account_amounts(field):
    ps = problems_of(mutate(lambda d: d["accounts"][1].update({field: "-1"})))
    find(ps, field, "C2", ">= 0")


def test_unknown_profile():
    ps = problems_of(mutate(lambda d: d["accounts"][1].update(profile="vip")))
    find(ps, "profile", "C2", "unknown profile 'vip'")


@pytest.mark.parametrize("lines", [
    {"warning": "1.60"},  # above the normal line
    {"normal": "1.30"},  # equal to the warning line
    {"withdrawable": "1.40", "normal": "1.50"},
    {"margin_call": "0"},
])
def test_profile_lines_out_of_order(lines):
    ps = problems_of(mutate(lambda d: d["profiles"].update(bad=lines)))
    p = find(ps, "lines", "profile 'bad'", "withdrawable > normal > warning > margin_call")
    assert "got" in p.message


@pytest.mark.parametrize("target", ["1.00", "0.9", "1"])
def test_target_not_above_one(target):
    ps = problems_of(mutate(lambda d: d["profiles"]["tight"].update(target=target)))
    find(ps, "target", "profile 'tight'", "above 1.00")


def test_bad_per_account_line_override():
    ps = problems_of(mutate(lambda d: d["accounts"][0].update(warning="1.70")))
    find(ps, "lines", "C1", "withdrawable > normal")
    ps = problems_of(mutate(lambda d: d["accounts"][1].update(target="0.95")))
    find(ps, "target", "C2", "above 1.00")


def test_profiles_must_be_objects():
    ps = problems_of(mutate(lambda d: d.update(profiles=["default"])))
    find(ps, "profiles", "book")
    ps = problems_of(mutate(lambda d: d["profiles"].update(bad="1.50")))
    find(ps, "-", "profiles.bad", "object")


# ------------------------------------------------------------------ numbers

@pytest.mark.parametrize("where,field,value", [
    ("security", "price", "10.0001"),  # prices in li: at most 3 decimals
    ("security", "haircut", "0.65001"),  # ratios in bp: at most 4 decimals
    ("account", "cash", "1.0001"),
    ("account", "accrued_interest_fees", "0.0005"),
    ("position", "financed_cost", "300000.0001"),
    ("position", "fin_margin_ratio", "1.00001"),
    ("profile", "warning", "1.30001"),
])
def test_too_many_decimals(where, field, value):
    def m(d):
        if where == "security":
            d["securities"][0][field] = value
        elif where == "account":
            d["accounts"][0][field] = value
        elif where == "position":
            d["accounts"][0]["positions"][1][field] = value
        else:
            d["profiles"]["tight"][field] = value
    ps = problems_of(mutate(m))
    p = next(p for p in ps if p.field == field)
    assert "decimal places" in p.message
    assert {"security": "securities row 1", "account": "C1", "position": "C1",
            "profile": "tight"}[where] in p.where


@pytest.mark.parametrize("qty", [2**63 + 5, 10**25, -(2**64)])
def test_integers_beyond_64_bits_are_a_problem_not_a_crash(qty):
    ps = problems_of(mutate(lambda d: pos(d, 0, 0).update(qty=qty)))
    find(ps, "qty", "C1")


def test_amounts_beyond_the_exact_range():
    ps = problems_of(mutate(lambda d: pos(d, 0, 0).update(qty=10**15)))
    find(ps, "-", "C1", "exact range")


def test_booleans_are_not_numbers():
    ps = problems_of(mutate(lambda d: d["securities"][0].update(price=True)))
    find(ps, "price", "securities row 1")


# ------------------------------------------------------------------ many problems at once

def test_every_problem_is_listed_at_once():
    def m(d):
        d["securities"][0]["haircut"] = "1.5"
        d["securities"][1]["price"] = "NaN"
        d["accounts"][0]["positions"][0]["symbol"] = "000999.SZ"
        d["accounts"][0]["positions"][1].pop("financed_cost")
        d["accounts"][1]["positions"][0]["qty"] = -1
        d["accounts"][1]["profile"] = "vip"
        d["accounts"].append({"account_id": "C1", "cash": "1"})
    ps = problems_of(mutate(m))
    find(ps, "haircut", "securities row 1")
    find(ps, "price", "securities row 2")
    find(ps, "symbol", "C1", "000999.SZ")
    find(ps, "financed_cost", "C1")
    find(ps, "qty", "C2")
    find(ps, "profile", "C2")
    find(ps, "account_id", "C1", "duplicate")
    assert len(ps) >= 7


def test_a_check_failing_on_many_rows_lists_the_first_and_counts_the_rest():
    doc = good()
    doc["accounts"] = [{"account_id": f"X{i}", "cash": "-1x"} for i in range(120)]
    ps = problems_of(doc)
    cash = [p for p in ps if p.field == "cash"]
    assert len(cash) == MAX_LISTED_PER_CHECK + 1
    assert "(and 69 more rows like it)" in cash[-1].message
    assert cash[0].where == "account 'X0'"


# ------------------------------------------------------------------ valid edges

def test_a_book_without_any_position_loads():
    doc = good()
    for a in doc["accounts"]:
        a["positions"] = []
    book = book_from_dict(doc)
    assert book.n_positions == 0 and book.n_accounts == 2


def test_numbers_may_be_json_numbers_or_decimal_strings():
    doc = good()
    doc["securities"][0]["price"] = 10.2
    doc["accounts"][0]["cash"] = 20000
    doc["accounts"][1]["positions"][0]["qty"] = "1000"
    a, b = book_from_dict(doc), book_from_dict(good())
    assert (a.price == b.price).all() and (a.cash == b.cash).all()
    assert (a.pos_qty == b.pos_qty).all()


# ------------------------------------------------------------------ files and folders

def test_not_json(tmp_path):
    f = tmp_path / "book.json"
    f.write_text('{"securities": [}')
    with pytest.raises(BookError) as ei:
        load_book(f)
    p = find(ei.value.problems, "-", "book.json", "not valid JSON")
    assert p


@pytest.mark.parametrize("text,field,message", [
    ("[1, 2]", "-", "JSON object"),
    ('{"accounts": []}', "securities", "missing"),
    ('{"securities": [], "accounts": {}}', "accounts", "not a list"),
])
def test_json_of_the_wrong_shape(tmp_path, text, field, message):
    f = tmp_path / "book.json"
    f.write_text(text)
    with pytest.raises(BookError) as ei:
        load_book(f)
    find(ei.value.problems, field, "book.json", message)


def test_json_file_problems_name_the_file(tmp_path):
    doc = mutate(lambda d: pos(d, 1, 0).update(symbol="000999.SZ"))
    f = tmp_path / "mybook.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(BookError) as ei:
        load_book(f)
    p = find(ei.value.problems, "symbol", "C2")
    assert "mybook.json" in p.where


def test_no_such_path(tmp_path):
    with pytest.raises(BookError) as ei:
        load_book(tmp_path / "nope")
    assert "no such file" in ei.value.problems[0].message


def _tables(doc):
    secs = doc["securities"]
    accts = [{k: v for k, v in a.items() if k != "positions"} for a in doc["accounts"]]
    poss = [{"account_id": a["account_id"], **p} for a in doc["accounts"] for p in a["positions"]]
    profs = [{"name": n, **lines} for n, lines in doc.get("profiles", {}).items()]
    return {
        "securities": (secs, ["symbol", "price", "haircut", "board", "lot", "suspended",
                              "prev_close"]),
        "accounts": (accts, ["account_id", "cash", "accrued_interest_fees", "profile"]),
        "positions": (poss, ["account_id", "symbol", "kind", "qty", "financed_cost",
                             "fin_margin_ratio", "short_sell_amount", "short_margin_ratio"]),
        "profiles": (profs, ["name", "withdrawable", "normal", "warning", "margin_call",
                             "target"]),
    }


def write_csv_folder(tmp_path, doc, skip=()):
    folder = tmp_path / "csvbook"
    folder.mkdir()
    for name, (rows, cols) in _tables(doc).items():
        if name in skip:
            continue
        with open(folder / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in rows:
                w.writerow(["" if r.get(c) is None else str(r.get(c)).lower()
                            if isinstance(r.get(c), bool) else str(r.get(c)) for c in cols])
    return folder


def write_parquet_folder(tmp_path, doc, skip=(), types=None):
    folder = tmp_path / "pqbook"
    folder.mkdir()
    types = types or {}
    for name, (rows, cols) in _tables(doc).items():
        if name in skip:
            continue
        data = {}
        for c in cols:
            vals = [r.get(c) for r in rows]
            t = types.get(c)
            if t is None:
                t = pa.int64() if c in ("lot", "qty") else pa.bool_() if c == "suspended" \
                    else pa.string()
                if t == pa.string():
                    vals = [None if v is None else str(v) for v in vals]
            data[c] = pa.array(vals, type=t)
        pq.write_table(pa.table(data), folder / f"{name}.parquet")
    return folder


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_folder_forms_load(tmp_path, form):
    write = write_csv_folder if form == "csv" else write_parquet_folder
    book = load_book(write(tmp_path, good()))
    want = book_from_dict(good())
    assert book.account_ids == want.account_ids and (book.pos_qty == want.pos_qty).all()
    assert (book.price == want.price).all() and (book.profile_lines == want.profile_lines).all()


@pytest.mark.parametrize("form", ["csv", "parquet"])
@pytest.mark.parametrize("missing", ["securities", "accounts", "positions"])
def test_missing_tables_in_a_folder(tmp_path, form, missing):
    write = write_csv_folder if form == "csv" else write_parquet_folder
    folder = write(tmp_path, good(), skip=(missing,))
    with pytest.raises(BookError) as ei:
        load_book(folder)
    p = find(ei.value.problems, missing, folder.name)
    assert f"{missing}.parquet or {missing}.csv" in p.message


def test_a_folder_without_profiles_is_fine(tmp_path):
    doc = good()
    doc.pop("profiles")
    doc["accounts"][0].pop("profile")
    book = load_book(write_csv_folder(tmp_path, doc, skip=("profiles",)))
    assert book.profile_names == ["default"]


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_folder_problems_name_file_row_account_and_field(tmp_path, form):
    def m(d):
        d["securities"][1]["price"] = "-2"
        d["accounts"][1]["positions"][0]["symbol"] = "000999.SZ"
        d["accounts"][0]["positions"][0]["qty"] = 0
        d["accounts"][1]["cash"] = "12.3456"
    doc = mutate(m)
    write = write_csv_folder if form == "csv" else write_parquet_folder
    with pytest.raises(BookError) as ei:
        load_book(write(tmp_path, doc))
    ps = ei.value.problems
    ext = form
    find(ps, "price", f"securities.{ext} row 2", "> 0")
    p = find(ps, "symbol", f"positions.{ext} row 3", "000999.SZ")
    assert "C2" in p.where
    find(ps, "qty", f"positions.{ext} row 1 (account 'C1')", "positive")
    find(ps, "cash", "C2", "decimal places")


def test_csv_with_a_non_numeric_cell(tmp_path):
    folder = write_csv_folder(tmp_path, good())
    text = (folder / "positions.csv").read_text().replace(",20000,", ",lots,")
    (folder / "positions.csv").write_text(text)
    with pytest.raises(BookError) as ei:
        load_book(folder)
    find(ei.value.problems, "qty", "positions.csv row 1")


def test_unreadable_table(tmp_path):
    folder = write_csv_folder(tmp_path, good())
    (folder / "accounts.csv").unlink()
    (folder / "accounts.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(BookError) as ei:
        load_book(folder)
    find(ei.value.problems, "-", "accounts.parquet", "cannot read")


def test_parquet_float_columns(tmp_path):
    """Float columns are accepted when they hold what a decimal would; anything finer, or not
    finite, is a problem (large amounts included: float rounding is not a licence)."""
    doc = good()
    doc["securities"][0]["price"] = 10.2
    doc["securities"][1]["price"] = 50.0
    doc["accounts"][0]["cash"] = 123456789.5
    doc["accounts"][1]["cash"] = -500.5
    types = {"price": pa.float64(), "cash": pa.float64()}
    (tmp_path / "ok").mkdir()
    book = load_book(write_parquet_folder(tmp_path / "ok", doc, types=types))
    assert book.price.tolist() == [10_200, 50_000]
    assert book.cash.tolist() == [123_456_789_500, -500_500]

    doc["securities"][1]["price"] = float("nan")
    doc["accounts"][0]["cash"] = 123456789.0001
    doc["securities"][0]["price"] = 10.0001
    (tmp_path / "bad").mkdir()
    with pytest.raises(BookError) as ei:
        load_book(write_parquet_folder(tmp_path / "bad", doc, types=types))
    ps = ei.value.problems
    find(ps, "price", "securities.parquet row 1", "decimal places")
    find(ps, "price", "securities.parquet row 2", "finite")
    assert len([p for p in ps if p.field == "price"]) == 2
    find(ps, "cash", "C1", "decimal places")
