"""The Grafana dashboard: traffic split, error rate, latency, drift per feature, rollout phase, rollbacks."""

from __future__ import annotations

import json
from typing import Any

SELECTOR = 'namespace=~"$namespace", modeldeployment=~"$deployment"'
MD = 'namespace=~"$namespace", name=~"$deployment"'
LATENCY = f"sum by (le, version) (rate(slipway_request_duration_seconds_bucket{{{SELECTOR}}}[1m]))"

# (title, unit, [(expr, legend)], panel type)
PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    (
        "Traffic split (canary weight %)",
        "percent",
        [
            (
                f"max by (namespace, name) (slipway_canary_weight{{{MD}}})",
                "{{namespace}}/{{name}}",
            )
        ],
        "timeseries",
    ),
    (
        "Requests per second by version",
        "reqps",
        [
            (
                f"sum by (modeldeployment, version) (rate(slipway_requests_total{{{SELECTOR}}}[1m]))",
                "{{modeldeployment}} v{{version}}",
            )
        ],
        "timeseries",
    ),
    (
        "Error rate (5xx ratio) by version",
        "percentunit",
        [
            (
                f'sum by (modeldeployment, version) (rate(slipway_requests_total{{{SELECTOR}, code=~"5.."}}[1m]))'
                f" / sum by (modeldeployment, version) (rate(slipway_requests_total{{{SELECTOR}}}[1m]))",
                "{{modeldeployment}} v{{version}}",
            )
        ],
        "timeseries",
    ),
    (
        "Latency p50 / p99 by version",
        "s",
        [
            (
                f"histogram_quantile(0.5, {LATENCY})",
                "p50 v{{version}}",
            ),
            (
                f"histogram_quantile(0.99, {LATENCY})",
                "p99 v{{version}}",
            ),
        ],
        "timeseries",
    ),
    (
        "Drift score (mean PSI) by version",
        "none",
        [
            (
                f"max by (modeldeployment, version) (slipway_model_drift_score{{{SELECTOR}}})",
                "{{modeldeployment}} v{{version}}",
            )
        ],
        "timeseries",
    ),
    (
        "Drift per feature (PSI, top 10)",
        "none",
        [
            (
                f"topk(10, max by (version, feature) (slipway_feature_drift_psi{{{SELECTOR}}}))",
                "v{{version}} {{feature}}",
            )
        ],
        "timeseries",
    ),
    (
        "Predictions by class",
        "reqps",
        [(f"sum by (class) (rate(slipway_predictions_total{{{SELECTOR}}}[5m]))", "class {{class}}")],
        "timeseries",
    ),
    (
        "Rollout phase",
        "none",
        [
            (
                'max by (namespace, name, phase) (slipway_rollout_phase{namespace=~"$namespace", name=~"$deployment"})'
                " == 1",
                "{{name}}: {{phase}}",
            )
        ],
        "state-timeline",
    ),
    (
        "Rollouts and rollbacks",
        "none",
        [
            (
                'sum by (name) (increase(slipway_rollouts_total{namespace=~"$namespace", name=~"$deployment"}[1h]))',
                "rollouts {{name}}",
            ),
            (
                f"sum by (name, reason) (increase(slipway_rollbacks_total{{{MD}}}[1h]))",
                "rollbacks {{name}} ({{reason}})",
            ),
        ],
        "timeseries",
    ),
]


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard, with the template variables set to match all."""
    return [
        expr.replace("$namespace", ".*").replace("$deployment", ".*")
        for _, _, targets, _ in PANELS
        for expr, _ in targets
    ]


def dashboard() -> dict[str, Any]:
    """The dashboard model (Grafana JSON)."""
    panels = []
    for i, (title, unit, targets, kind) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": kind,
                "title": title,
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(65 + j), "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(targets)
                ],
            }
        )
    variables = [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {
            "name": "namespace",
            "type": "query",
            "label": "Namespace",
            "includeAll": True,
            "multi": True,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": "label_values(slipway_requests_total, namespace)",
            "refresh": 2,
        },
        {
            "name": "deployment",
            "type": "query",
            "label": "ModelDeployment",
            "includeAll": True,
            "multi": True,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": 'label_values(slipway_requests_total{namespace=~"$namespace"}, modeldeployment)',
            "refresh": 2,
        },
    ]
    return {
        "uid": "slipway-rollouts",
        "title": "Slipway — model rollouts",
        "tags": ["slipway", "mlops"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "panels": panels,
    }


def dashboard_json() -> str:
    """The dashboard as the JSON file Grafana imports."""
    return json.dumps(dashboard(), indent=2) + "\n"


def configmap_template() -> str:
    """The chart's dashboard ConfigMap (picked up by Grafana's sidecar through its label)."""
    body = "\n".join("    " + line for line in dashboard_json().replace("{{", '{{ "{{" }}').splitlines())
    return (
        "# Generated by hack/gen-monitoring from operator/slipway/monitoring/dashboard.py. Do not edit.\n"
        "{{- if .Values.dashboard.enabled }}\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        '  name: {{ include "slipway.fullname" . }}-dashboard\n'
        "  namespace: {{ .Release.Namespace }}\n"
        "  labels:\n"
        '    grafana_dashboard: "1"\n'
        '    {{- include "slipway.labels" . | nindent 4 }}\n'
        "data:\n"
        "  slipway-rollouts.json: |\n"
        f"{body}\n"
        "{{- end }}\n"
    )
