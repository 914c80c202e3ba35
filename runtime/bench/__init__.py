"""Benchmarks run as `python -m loomlm.bench <name>`."""
