"""Development tools kept out of the shipped package: test servers and fixtures
(devtools.testing), the IMAP test server and mail store (devtools.imap) and the benchmarks
(devtools.bench). Run them from a checkout: ``python -m devtools.bench.engine ...``."""
