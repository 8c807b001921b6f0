"""The bottom layer: configuration, database pool and outages, encrypted fields and keys,
the network guard, the metrics registry, logs, security headers and input rules.

Everything else may import these; they import nothing of the product above them (the
import-linter contracts in pyproject.toml hold that)."""
