"""`margin-monitor evaluate` as a user runs it: a subprocess, JSON Lines out, exit codes."""

import json
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal

import pytest
from bookgen import book_from_vector
from spec import load_vectors

from monitor.book.data import SAMPLE_BOOK

VECTORS = load_vectors()
SAMPLE = SAMPLE_BOOK


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "monitor.cli", "evaluate", *args],
                       capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def lines(out):
    return [json.loads(x) for x in out.splitlines() if x.strip()]


def check_against_vectors(recs: list[dict], vectors: list[dict], free_cash: bool = True) -> None:
    """`free_cash`: the book's profiles have free cash first (the default), so the plans are
    the vectors' `cash_first`; else `example_plan` (use_free_cash off)."""
    got = {r["account_id"]: r for r in recs}
    for v in vectors:
        r, e = got["C-" + v["id"]], v["expected"]
        assert r["assets"] == float(e["assets"])
        assert r["liabilities"] == float(e["liabilities"])
        assert r["tier"] == e["tier"]
        assert (r["ratio"] is None) == (e["ratio_pct"] is None)
        if e["ratio_pct"] is not None:
            assert Decimal(str(r["ratio"] * 100)).quantize(Decimal("0.01"), ROUND_HALF_UP) \
                == Decimal(e["ratio_pct"])
        assert r["available_margin_balance"] == float(e["available_margin_balance"])
        assert r["liquidation_status"] == e["liquidation_status"]
        lv = e["liquidation_value_to_150"]
        assert r["liquidation_value"] == (None if lv is None else float(lv))
        if "shortfall_if_fully_liquidated" in e:  # not stated by every vector
            assert r["shortfall"] == float(e["shortfall_if_fully_liquidated"])
        if "example_plan" in e and not free_cash:
            assert [(o["side"], o["qty"]) for o in r["plan"]] == \
                [(o["side"], o["qty"]) for o in e["example_plan"]]
            assert Decimal(str(r["ratio_after"] * 100)).quantize(
                Decimal("0.01"), ROUND_HALF_UP) == Decimal(e["example_plan_ratio_pct_after"])
            assert r["cash_repayment"] == 0.0
        c = v.get("cash_first") or e.get("cash_first")
        if c is not None and free_cash:
            assert [(o["side"], o["qty"]) for o in r["plan"]] == \
                [(o["side"], o["qty"]) for o in c["plan"]]
            assert Decimal(str(r["ratio_after"] * 100)).quantize(
                Decimal("0.01"), ROUND_HALF_UP) == Decimal(c["ratio_pct_after"])
            assert (r["cash_repayment"], r["interest_repaid"], r["principal_repaid"]) == (
                float(c["cash_repayment"]), float(c["interest_repaid"]),
                float(c["principal_repaid"]))


def test_sample_book_matches_the_spec_vectors():
    """The shipped sample holds the first vectors (TV1-TV8) under their own symbols."""
    sample_ids = {a["account_id"] for a in json.loads(SAMPLE.read_text())["accounts"]}
    held = [v for v in VECTORS if "C-" + v["id"] in sample_ids]
    assert {v["id"] for v in held} >= {"TV1", "TV2", "TV3", "TV5", "TV7", "TV8"}
    check_against_vectors(lines(run(str(SAMPLE), "--plan").stdout), held)


def test_sample_book_with_free_cash_off_gives_the_example_plans(tmp_path):
    doc = json.loads(SAMPLE.read_text())
    doc["profiles"] = {name: {**p, "use_free_cash": False}
                       for name, p in {"default": {}, **(doc.get("profiles") or {})}.items()}
    path = tmp_path / "sample_off.json"
    path.write_text(json.dumps(doc))
    held = [v for v in VECTORS if "C-" + v["id"] in {a["account_id"] for a in doc["accounts"]}]
    check_against_vectors(lines(run(str(path), "--plan").stdout), held, free_cash=False)


def test_every_spec_vector_evaluates_from_a_book_file(tmp_path):
    """All vectors, including those added to the spec later, as one JSON book on disk."""
    docs = [book_from_vector(v) for v in VECTORS]
    secs = {}
    accounts = []
    for v, d in zip(VECTORS, docs, strict=True):
        rename = {s["symbol"]: f"{v['id']}.{s['symbol']}" for s in d["securities"]}
        for s in d["securities"]:
            secs[rename[s["symbol"]]] = {**s, "symbol": rename[s["symbol"]]}
        acct = d["accounts"][0]
        accounts.append({**acct, "account_id": "C-" + v["id"],
                         "positions": [{**p, "symbol": rename[p["symbol"]]}
                                       for p in acct["positions"]]})
    path = tmp_path / "vectors_book.json"
    path.write_text(json.dumps({"securities": list(secs.values()), "accounts": accounts}))
    check_against_vectors(lines(run(str(path), "--plan").stdout), VECTORS)
    path.write_text(json.dumps({"securities": list(secs.values()), "accounts": accounts,
                                "profiles": {"default": {"use_free_cash": False}}}))
    check_against_vectors(lines(run(str(path), "--plan").stdout), VECTORS, free_cash=False)


def test_output_is_in_book_order_with_every_contract_field():
    recs = lines(run(str(SAMPLE), "--stress").stdout)
    book = json.loads(SAMPLE.read_text())
    assert [r["account_id"] for r in recs] == [a["account_id"] for a in book["accounts"]]
    for r in recs:
        assert set(r) >= {"account_id", "assets", "liabilities", "ratio", "tier",
                          "available_margin_balance", "withdrawable", "liquidation_value",
                          "liquidation_status", "shortfall", "cure", "stress_ratio", "distance"}
        assert set(r["distance"]) == {"warning", "margin_call", "forced_liquidation"}
        assert set(r["cure"]) == {"deposit", "repay"}
    exact = next(r for r in recs if r["account_id"] == "C-EXACT130")
    assert exact["ratio"] == 1.3 and exact["tier"] == "WARNING"


@pytest.mark.parametrize("doc, needle", [
    ({"securities": [], "accounts": []}, "no securities"),
    ({"securities": [{"symbol": "X", "price": "10", "haircut": "0.5"}],
      "accounts": [{"account_id": "A", "cash": "1",
                    "positions": [{"symbol": "Y", "kind": "collateral", "qty": 1}]}]},
     "unknown symbol 'Y'"),
])
def test_invalid_book_exits_2_with_the_problem_on_stderr(tmp_path, doc, needle):
    f = tmp_path / "book.json"
    f.write_text(json.dumps(doc))
    p = run(str(f), check=False)
    assert p.returncode == 2
    assert needle in p.stderr
    assert p.stdout == ""


def test_missing_book_exits_2(tmp_path):
    p = run(str(tmp_path / "nope.json"), check=False)
    assert p.returncode == 2 and "no such file" in p.stderr
