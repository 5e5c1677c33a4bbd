"""Writing benchmark reports: a report never fails on a value JSON has no type for.

Reports carry numpy scalars and arrays, tuples, paths and, from diagnostics, labels of live
objects. `json_safe` turns every one into plain JSON (dict keys into strings, anything unknown
into its `str`), so the writer cannot crash at the end of a long run and lose its figures."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def json_safe(o: Any) -> Any:
    """`o` as plain JSON values: dicts with string keys, lists, str, int, float, bool, None."""
    if o is None or isinstance(o, (bool, str, int)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, np.generic):
        return json_safe(o.item())
    return str(o)


def dumps_report(report: dict, indent: int = 2) -> str:
    return json.dumps(json_safe(report), indent=indent, allow_nan=False)
