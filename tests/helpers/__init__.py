"""Reusable test helpers (importable as ``tests.helpers``; ``pythonpath = ["."]`` in pytest)."""
