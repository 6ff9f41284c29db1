"""Benchmarks: every speed or memory figure is a ratio measured in the same run."""
