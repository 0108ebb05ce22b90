"""Benchmarks: ``python bench/bench_lmdb.py --help``."""
