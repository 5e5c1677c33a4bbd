"""The optional profile fields of the margin-call lifecycle (interfaces.md): read in both book
forms, inherited by per-account derived profiles, rejected with the profile and field named."""

from __future__ import annotations

import copy

import pytest

from monitor.book.load import book_from_dict, load_book
from monitor.book.model import CALL_CLOSE, CALL_INTRADAY
from monitor.errors import BookError

DOC = {
    "securities": [{"symbol": "600000.SH", "price": "10.00", "haircut": "0.7"}],
    "profiles": {"default": {},
                 "close": {"target": "1.45", "cure_line": "1.30", "call_basis": "close",
                           "call_days": 1, "use_free_cash": False}},
    "accounts": [
        {"account_id": "A", "cash": "0", "profile": "close", "positions": []},
        {"account_id": "B", "cash": "0", "profile": "close", "target": "1.60",
         "positions": []},
        {"account_id": "C", "cash": "0", "positions": []}],
}


def test_fields_are_read_and_absent_ones_keep_the_defaults():
    b = book_from_dict(copy.deepcopy(DOC))
    t = b.calls()
    p = b.profile_names.index("close")
    assert (int(t.cure_bp[p]), int(t.basis[p]), int(t.days[p]), bool(t.use_free_cash[p])) == (
        13_000, CALL_CLOSE, 1, False)
    d = b.profile_names.index("default")
    assert (int(t.cure_bp[d]), int(t.basis[d]), int(t.days[d]), bool(t.use_free_cash[d])) == (
        -1, CALL_INTRADAY, -1, True)
    # the default cure line is the profile's target
    assert t.cure_lines(b.profile_lines, [d, p]).tolist() == [15_000, 13_000]
    # B overrides its target: a derived profile, with the terms of "close"
    pb = int(b.profile_of[b.account_index["B"]])
    assert b.profile_names[pb].startswith("close+")
    assert (int(t.basis[pb]), int(t.days[pb]), int(t.cure_bp[pb])) == (CALL_CLOSE, 1, 13_000)


def test_a_book_without_the_fields_has_no_terms_and_defaults_everywhere():
    doc = copy.deepcopy(DOC)
    doc["profiles"] = {"default": {"target": "1.50"}}
    doc["accounts"] = [dict(a, profile="default") for a in doc["accounts"]]
    b = book_from_dict(doc)
    assert b.call_terms is None
    assert int(b.calls().basis[0]) == CALL_INTRADAY


@pytest.mark.parametrize(("field", "value", "message"), [
    ("call_basis", "weekly", "is not one of intraday, close"),
    ("call_days", 0, "from 1 to 30"),
    ("call_days", "2.5", "whole number"),
    ("cure_line", "1.20", "below the warning line"),
    ("cure_line", "3.50", "below the withdrawable line"),
    ("cure_line", "abc", "cure_line"),
    ("use_free_cash", "maybe", "not a boolean"),
])
def test_bad_fields_are_named(field, value, message):
    doc = copy.deepcopy(DOC)
    doc["profiles"]["close"][field] = value
    with pytest.raises(BookError) as e:
        book_from_dict(doc)
    text = str(e.value)
    assert "profile 'close'" in text and field in text and message in text


def test_the_table_form_reads_them_too(tmp_path):
    (tmp_path / "securities.csv").write_text("symbol,price,haircut\n600000.SH,10.00,0.7\n")
    (tmp_path / "accounts.csv").write_text("account_id,cash,profile\nA,0,close\n")
    (tmp_path / "positions.csv").write_text("account_id,symbol,kind,qty\n")
    (tmp_path / "profiles.csv").write_text(
        "name,target,cure_line,call_basis,call_days,use_free_cash\n"
        "close,1.45,1.40,close,3,false\n")
    b = load_book(tmp_path)
    p = b.profile_names.index("close")
    t = b.calls()
    assert (int(t.cure_bp[p]), int(t.basis[p]), int(t.days[p]), bool(t.use_free_cash[p])) == (
        14_000, CALL_CLOSE, 3, False)
