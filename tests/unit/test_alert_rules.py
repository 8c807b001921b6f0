"""The ready Prometheus alert rules (docs/deploy.md, linked from README Monitoring) parse as
YAML and name only metrics the code registers: a renamed metric cannot leave an alert that
silently never fires."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def registered_metric_names() -> set[str]:
    names = set()
    for source in (ROOT / "superimap").rglob("*.py"):
        names |= set(re.findall(r'"(superimap_[a-z0-9_]+)"', source.read_text()))
    return names


def alert_rules() -> list[dict]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text[text.index("## Alert rules") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    [group] = yaml.safe_load(block)["groups"]
    return group["rules"]


def base_name(metric: str, known: set[str]) -> str:
    if metric in known:
        return metric
    for suffix in SUFFIXES:
        if metric.endswith(suffix) and metric.removesuffix(suffix) in known:
            return metric.removesuffix(suffix)
    return metric


def test_every_alert_rule_names_only_registered_metrics():
    known = registered_metric_names()
    rules = alert_rules()
    assert len(rules) >= 9
    unknown = {}
    for rule in rules:
        assert rule["alert"].startswith("SuperIMAP") and rule["expr"]
        for metric in re.findall(r"superimap_[a-z0-9_]+", rule["expr"]):
            if base_name(metric, known) not in known:
                unknown.setdefault(rule["alert"], []).append(metric)
    assert unknown == {}


def test_the_rules_cover_a_dead_engine_a_dead_worker_a_backlog_and_failing_endpoints():
    expressions = " ".join(rule["expr"] for rule in alert_rules())
    for metric in (
        "superimap_mailboxes_unwatched",
        "superimap_worker_heartbeat_age_seconds",
        "superimap_oldest_due_delivery_seconds",
        "superimap_webhook_endpoint_failing",
        "superimap_push_to_commit_seconds_bucket",
    ):
        assert metric in expressions
