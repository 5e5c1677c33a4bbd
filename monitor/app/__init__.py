"""Composition: the run configuration (`config`), the live node that wires feed, engine,
outbox, edge and desk together (`runtime`), kernel warm-up (`warmup`), Prometheus metrics
(`metrics`) and the demo's private Redis (`demo`)."""
