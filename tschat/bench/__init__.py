"""Benchmarking: the load generator and serving experiments (data, not figures)."""
