"""Benchmarks (``python -m devtools.bench.<name> --out FILE``); see the Makefile."""
