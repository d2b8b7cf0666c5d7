"""Gateway API HTTPRoute ``<md>`` whose backend weights carry the traffic split between versions."""

from __future__ import annotations

from typing import Any

from slipway.api.modeldeployment import ModelDeployment

from .names import child_metadata, predictor_name

API_VERSION = "gateway.networking.k8s.io/v1"
KIND = "HTTPRoute"
SERVICE_PORT = 80
"""Port of the predictor Service KServe creates in Standard mode."""


def _backend(md: str, version: str, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "Service", "name": predictor_name(md, version), "port": SERVICE_PORT}
    if weight is not None:
        ref["weight"] = weight
    return ref


def build_http_route(
    md: ModelDeployment, weights: dict[str, int], mirror: tuple[str, int] | None = None
) -> dict[str, Any]:
    """The route: one rule with a weighted backend per version; optionally mirror a percent to a version.

    Versions with weight 0 stay listed, so a shift is one patch of the route and rolling back is
    one write of the weights.
    """
    name = md.metadata.name or ""
    rule: dict[str, Any] = {
        "backendRefs": [_backend(name, v, w) for v, w in sorted(weights.items(), key=lambda kv: int(kv[0]))]
    }
    if mirror is not None and mirror[1] > 0:
        version, percent = mirror
        rule["filters"] = [
            {"type": "RequestMirror", "requestMirror": {"backendRef": _backend(name, version), "percent": percent}}
        ]
    spec: dict[str, Any] = {"rules": [rule]}
    gateway = md.spec.gateway
    if gateway is not None:
        spec["parentRefs"] = [p.to_dict() for p in gateway.parent_refs]
        if gateway.hostnames:
            spec["hostnames"] = list(gateway.hostnames)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": child_metadata(md, name), "spec": spec}
