"""Every generated monitoring file, by path relative to the repository (the generator and its drift test use this)."""

from __future__ import annotations

from slipway.monitoring import dashboard, rules

RULE_FILE = "deploy/prometheus/slipway-rules.yml"
PROMETHEUS_RULE = "charts/slipway/templates/prometheusrule.yaml"
DASHBOARD = "deploy/grafana/slipway-rollouts.json"
DASHBOARD_CONFIGMAP = "charts/slipway/templates/dashboard.yaml"


def files() -> dict[str, str]:
    """Path → content of each generated file."""
    return {
        RULE_FILE: rules.rule_file(),
        PROMETHEUS_RULE: rules.prometheus_rule_template(),
        DASHBOARD: dashboard.dashboard_json(),
        DASHBOARD_CONFIGMAP: dashboard.configmap_template(),
    }
