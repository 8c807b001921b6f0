"""Read a /metrics scrape in tests: one sample's value by name and labels."""

from __future__ import annotations

from django.db import close_old_connections
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    close_old_connections()
    response = Client().get("/metrics")
    assert response.status_code == 200, response.content[:200]
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0.0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
