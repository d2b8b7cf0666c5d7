"""autoscaling/v2 HorizontalPodAutoscaler of one version's predictor Deployment (stable and canary both scale)."""

from __future__ import annotations

from typing import Any

from slipway.api.modeldeployment import ModelDeployment, ScalingMetric

from .names import child_metadata, isvc_name, predictor_name


def _target(metric: ScalingMetric) -> dict[str, Any]:
    if metric.target_utilization is not None:
        return {"type": "Utilization", "averageUtilization": metric.target_utilization}
    return {"type": "AverageValue", "averageValue": str(metric.target_average_value)}


def hpa_metric(metric: ScalingMetric) -> dict[str, Any]:
    """One HPA metric: a resource (cpu, memory) or a per-pod custom metric."""
    if metric.type == "pods":
        return {
            "type": "Pods",
            "pods": {
                "metric": {"name": metric.metric_name},
                "target": {"type": "AverageValue", "averageValue": str(metric.target_average_value)},
            },
        }
    return {"type": "Resource", "resource": {"name": metric.type, "target": _target(metric)}}


def build_hpa(md: ModelDeployment, version: str, replicas: tuple[int, int] | None = None) -> dict[str, Any]:
    """The HPA ``<md>-v<version>`` targeting the Deployment ``<md>-v<version>-predictor`` KServe creates.

    ``replicas`` (min, max) overrides autoscaling's bounds: the version's share of a canary budget.
    """
    name = md.metadata.name or ""
    scaling = md.spec.autoscaling
    low, high = replicas if replicas is not None else (scaling.min_replicas, scaling.max_replicas)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(md, isvc_name(name, version), version),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": predictor_name(name, version)},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [hpa_metric(m) for m in scaling.metrics],
        },
    }
