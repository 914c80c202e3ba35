"""Benchmarks of the frontend language: `python -m loomlm.bench programs` (see `programs.py`)."""
