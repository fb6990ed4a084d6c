"""Benchmarks: scripts that print tables (``python -m bench.<name>``), not timed assertions."""
