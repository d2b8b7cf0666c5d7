"""Gateway API HTTPRoute ``<md>`` whose backend weights carry the traffic split between versions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from slipway.api.modeldeployment import AbMatch, ModelDeployment

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


def exposed_paths(model: str, slipway_runtime: bool = True) -> list[dict[str, str]]:
    """The only paths the route forwards: inference, readiness and metadata (V2 and V1).

    Not ``/v2/models/NAME/feedback`` (ground truth is for the labeller, in-cluster, with the
    feedback token) and not ``/metrics`` (Prometheus scrapes the pods directly). The Slipway
    runtime serves the model under the deployment's name, so its paths are exact; a named
    KServe runtime names it after each InferenceService, so there the model paths are prefixes.
    """
    health = [{"type": "Exact", "value": "/v2/health/ready"}, {"type": "Exact", "value": "/v2/health/live"}]
    if not slipway_runtime:
        return [{"type": "PathPrefix", "value": "/v2/models/"}, {"type": "PathPrefix", "value": "/v1/models/"}, *health]
    exact = [
        f"/v2/models/{model}/infer",
        f"/v2/models/{model}/ready",
        f"/v2/models/{model}",
        f"/v1/models/{model}:predict",
        f"/v1/models/{model}",
    ]
    return [*({"type": "Exact", "value": path} for path in exact), *health]


def cookie_pattern(name: str, value: str) -> str:
    """The regular expression matching a Cookie header that carries ``name=value`` (RE2 syntax).

    Gateway API leaves the semantics of a ``RegularExpression`` header match to the
    implementation: Traefik finds the pattern anywhere in the value (RE2 search), Envoy-based
    gateways (Envoy Gateway, Istio) must match the whole value. The pattern is anchored at both
    ends and spells out what may stand around the cookie (earlier cookies up to a ``;``, later
    ones after one), so both semantics give the same verdict. No lookarounds or back-references:
    RE2 has none.
    """
    return f"^(?:.*;)?\\s*{re.escape(name)}={re.escape(value)}\\s*(?:;.*)?$"


def http_match(match: AbMatch, path: dict[str, str]) -> dict[str, Any]:
    """One HTTPRouteMatch on ``path``: a header (Exact or RegularExpression), or a cookie as a regex on Cookie."""
    if match.header is not None:
        header = {"type": match.header.type, "name": match.header.name, "value": match.header.value}
    else:
        assert match.cookie is not None
        header = {
            "type": "RegularExpression",
            "name": "Cookie",
            "value": cookie_pattern(match.cookie.name, match.cookie.value),
        }
    return {"path": path, "headers": [header]}


def build_http_route(
    md: ModelDeployment,
    weights: dict[str, int],
    mirror: tuple[str, int] | None = None,
    matches: tuple[str, Sequence[AbMatch]] | None = None,
) -> dict[str, Any]:
    """The route: one rule with a weighted backend per version; optionally mirror a percent to a version,
    and (A/B tests) a second rule sending requests with matching headers or cookies to one version.

    Every rule matches only :func:`exposed_paths`. Versions with weight 0 stay listed, so a shift
    is one patch of the route and rolling back is one write of the weights. The weighted rule
    comes first; a rule with header matches takes precedence over it whatever the order (Gateway
    API: more header matches win).
    """
    name = md.metadata.name or ""
    paths = exposed_paths(name, md.spec.serving.runtime == "slipway")
    rule: dict[str, Any] = {
        "matches": [{"path": p} for p in paths],
        "backendRefs": [_backend(name, v, w) for v, w in sorted(weights.items(), key=lambda kv: int(kv[0]))],
    }
    if mirror is not None and mirror[1] > 0:
        version, percent = mirror
        rule["filters"] = [
            {"type": "RequestMirror", "requestMirror": {"backendRef": _backend(name, version), "percent": percent}}
        ]
    rules = [rule]
    if matches is not None and matches[1]:
        version, conditions = matches
        matched = [http_match(m, p) for m in conditions for p in paths]
        rules.append({"matches": matched, "backendRefs": [_backend(name, version, 1)]})
    spec: dict[str, Any] = {"rules": rules}
    gateway = md.spec.gateway
    if gateway is not None:
        spec["parentRefs"] = [p.to_dict() for p in gateway.parent_refs]
        if gateway.hostnames:
            spec["hostnames"] = list(gateway.hostnames)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": child_metadata(md, name), "spec": spec}
