"""The example alert rules and Grafana dashboard parse and name only metrics txmq defines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # no stubs installed

from txmq.telemetry import METRICS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC_NAME = re.compile(r"\btxmq_[a-z][a-z0-9_]*")
#: What Prometheus exposes of each kind of metric, by suffix.
SUFFIXES = {"Counter": ("_total",), "Histogram": ("_bucket", "_sum", "_count"), "Gauge": ("",)}


def exposed() -> set[str]:
    return {name + suffix for name, (kind, _) in METRICS.items() for suffix in SUFFIXES[kind]}


def test_every_exposed_name_comes_from_a_known_kind() -> None:
    assert {kind for kind, _ in METRICS.values()} <= set(SUFFIXES)
    assert "txmq_relay_published_total" in exposed()
    assert "txmq_outbox_records" in exposed()


def test_alert_rules_parse_and_name_existing_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len({rule["alert"] for rule in alerts}) == len(alerts) >= 5
    named: set[str] = set()
    for rule in alerts:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        named.update(METRIC_NAME.findall(rule["expr"]))
    assert named, "the rules name no txmq metric"
    assert named <= exposed(), sorted(named - exposed())
    for metric in ("txmq_outbox_oldest_age_seconds", "txmq_dlq_depth", "txmq_ready"):
        assert metric in named


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found.extend(target["expr"] for target in inner.get("targets", []))
    found.extend(
        variable["definition"]
        for variable in dashboard["templating"]["list"]
        if "definition" in variable
    )
    return found


def test_grafana_dashboard_parses_and_names_existing_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "txmq.json").read_text())
    assert dashboard["uid"] == "txmq"
    assert dashboard["panels"]
    exprs = expressions(dashboard)
    named = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert named <= exposed(), sorted(named - exposed())
    # Every metric txmq defines is on the dashboard.
    base = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in named}
    assert set(METRICS) <= base, sorted(set(METRICS) - base)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
