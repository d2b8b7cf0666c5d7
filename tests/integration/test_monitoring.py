"""The shipped rules and dashboard on the real Prometheus: loaded, valid PromQL, and the drift alert fires."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from slipway.monitoring import dashboard, rules

pytestmark = pytest.mark.integration


def test_every_dashboard_query_is_valid_promql(testbed):
    for expr in dashboard.expressions():
        resp = httpx.get(f"{testbed.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        assert resp.status_code == 200 and resp.json()["status"] == "success", (expr, resp.text)


def test_shipped_drift_rule_fires_on_a_drifting_model(testbed):
    md = f"md-{uuid.uuid4().hex[:6]}"
    registry = CollectorRegistry()
    drift = Gauge("slipway_model_drift_score", "mean PSI", ["model", "version"], registry=registry)
    drift.labels("digits-cnn", "1").set(0.03)
    drift.labels("digits-cnn", "2").set(0.6)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        testbed.add_scrape_target(md, f"127.0.0.1:{server.server_port}", {"namespace": "ml", "modeldeployment": md})
        testbed.set_rules("slipway", yaml.safe_dump(rules.rule_groups(interval="1s", for_="0s")))
        deadline = time.monotonic() + 60
        firing: list[dict[str, str]] = []
        while time.monotonic() < deadline and not firing:
            alerts = httpx.get(f"{testbed.prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            firing = [
                a["labels"] for a in alerts if a["state"] == "firing" and a["labels"].get("modeldeployment") == md
            ]
            time.sleep(0.25)
        assert firing, "SlipwayModelDrift did not fire"
        assert [(a["alertname"], a["model_version"]) for a in firing] == [("SlipwayModelDrift", "2")]
        assert firing[0]["namespace"] == "ml" and firing[0]["severity"] == "critical"
    finally:
        testbed.set_rules("slipway", "groups: []\n")
        server.shutdown()
        thread.join(timeout=5)
