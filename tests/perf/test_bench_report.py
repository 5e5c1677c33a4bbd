"""Benchmark reports are written whatever the run's diagnostics picked up (issue: a sampled dict
keyed by classes crashed `bench --quick` at random when the report was written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monitor.perf.e2e import object_holders
from monitor.perf.jsonreport import dumps_report, json_safe

ROOT = Path(__file__).resolve().parents[2]


class _Key:
    pass


def test_json_safe_turns_any_value_into_json():
    rep = {"by_class": {_Key: 1, int: np.int64(2)}, "keys": [_Key, object()],
           "arr": np.arange(3), "f": np.float32(0.5), "nan": float("nan"), 3: (1, 2),
           "path": ROOT}
    back = json.loads(dumps_report(rep))
    assert back["by_class"] == {str(_Key): 1, str(int): 2}
    assert back["arr"] == [0, 1, 2] and back["f"] == 0.5 and back["nan"] is None
    assert back["3"] == [1, 2] and back["path"] == str(ROOT)
    assert isinstance(back["keys"][0], str) and isinstance(back["keys"][1], str)
    assert json_safe({"a": [True, None, "x"]}) == {"a": [True, None, "x"]}


def test_holders_reports_only_names_and_sizes():
    keyed_by_class = [{_Key: i, int: 0} for i in range(8)]
    out = object_holders(keyed_by_class, ["dict"])
    rows = out["dict"]
    assert rows and all(set(r["keys"]) == {"_Key", "int"} for r in rows)
    json.dumps(out)  # plain JSON without any help


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not on PATH")
def test_e2e_report_with_gc_diagnostics_round_trips(tmp_path):
    out = tmp_path / "e2e"
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.perf.e2e", "--accounts", "5000", "--securities", "500",
         "--rate", "5000", "--seconds", "1", "--ramp", "", "--gc-diagnostics", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rep = json.loads((out / "report.json").read_text())
    diag = rep["phases"]["main"]["gc_objects_after"]
    assert diag["tracked"] > 0 and diag["who_holds"]
    for rows in diag["who_holds"].values():
        for row in rows:
            assert all(isinstance(k, str) for k in row.get("keys", []))
            assert all(isinstance(t, str) for t in row["referrers"])
