"""Benchmarks (``python -m superimap.bench.<name> --out FILE``); see the Makefile."""
