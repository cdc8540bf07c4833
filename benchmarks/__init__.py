"""Benchmark scripts (run as modules, e.g. ``python -m benchmarks.snapshot_vs_vivit``)."""
