"""Numba kernels over flat arrays (numpy + numba only; no I/O, no Python objects inside)."""
