"""Benchmarks, each run as ``python -m bench.<name> --help``: convert, loaders, train, demo, all, gpu_check."""
