"""What `pip install .` installs: every package of the tree, the desk's files, the sample book
and the perf commands (margin-monitor bench/soak run from any folder without the checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_what_the_commands_need(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=240)
    wheel = next(tmp_path.glob("margin_monitor-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for need in ("monitor/cli.py", "monitor/perf/bench.py", "monitor/perf/e2e.py",
                 "monitor/perf/e2e_load.py", "monitor/perf/soak.py", "monitor/perf/book_cache.py",
                 "monitor/perf/compile_probe.py", "monitor/book/data/sample_book.json",
                 "monitor/web/static/index.html", "monitor/web/static/desk.js",
                 "kernels/ratios.py", "feeds/registry.py"):
        assert need in names, need
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    for d in (ROOT / "monitor").rglob("__init__.py"):
        assert d.parent.relative_to(ROOT).as_posix() in packages
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "margin-monitor = monitor.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
