"""Where the spec's worked vectors are: the shared spec beside the checkout when present (it is
authoritative), else the copy shipped in tests/data (so a lone clone still runs the tests)."""

import json
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_SHARED = _HERE.parents[1] / "shared" / "spec" / "vectors.json"
VECTORS_PATH = _SHARED if _SHARED.exists() else _HERE / "data" / "vectors.json"


def load_vectors() -> list[dict]:
    return json.loads(VECTORS_PATH.read_text())["vectors"]
