"""Installed benchmarks: `margin-monitor bench` (`bench`), `margin-monitor soak` (`soak`), the
end-to-end run they drive (`e2e`, `e2e_load`), cached benchmark books (`book_cache`), NumPy and
plain-Python baselines (`baselines`), JIT compile probes and a synthetic trading day of fills
(`synthfills`). The pytest-benchmark suite in bench/ uses them too."""
