"""Numba kernels over flat arrays (numpy + numba only; no I/O, no Python objects inside)."""

import os

# Numba's OpenMP workers otherwise spin between parallel kernels and take the CPU that Redis, the
# feed and the websocket clients need (measured: a monitor at 128-151% of a core while its main
# thread was 41-93% busy). Set before the threading layer starts; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
