"""What the Gateway a route attaches to can do: a spec that mirrors traffic needs ``HTTPRouteRequestMirror``.

Gateway API leaves request mirroring to the implementation (an extended feature). An
implementation that lacks it may do worse than ignore the filter: Traefik 3.6 answers 500 to every
request of a rule that carries a ``RequestMirror`` filter, so writing a shadow stage would take the
stable version's traffic down. Implementations publish what they support in their GatewayClass's
``status.supportedFeatures`` (Gateway API 1.2+); a spec that mirrors onto a Gateway whose class
publishes a list without the feature is refused before anything is written. A class that publishes
no list, or a Gateway the operator cannot read, is given the benefit of the doubt.
"""

from __future__ import annotations

from typing import Any

from slipway.api.modeldeployment import ModelDeployment
from slipway.builders.router import router_for
from slipway.clients.kube import KUBE_ERRORS, Kube

GATEWAY_API = "gateway.networking.k8s.io/v1"
MIRROR_FEATURE = "HTTPRouteRequestMirror"


def mirroring_fields(md: ModelDeployment) -> list[str]:
    """The spec fields that ask for request mirroring."""
    strategy = md.spec.strategy
    fields = []
    if strategy.canary is not None and any(s.mirror is not None for s in strategy.canary.steps):
        fields.append("strategy.canary.steps[].mirror")
    if strategy.blue_green is not None and strategy.blue_green.shadow is not None:
        fields.append("strategy.blueGreen.shadow")
    if strategy.ab_test is not None and strategy.ab_test.shadow is not None:
        fields.append("strategy.abTest.shadow")
    return fields


def supported_features(gateway_class: dict[str, Any]) -> set[str] | None:
    """The features a GatewayClass publishes (strings before Gateway API 1.2, ``{name}`` objects since), or None."""
    listed = (gateway_class.get("status") or {}).get("supportedFeatures")
    if not listed:
        return None
    return {f if isinstance(f, str) else str((f or {}).get("name") or "") for f in listed}


def mirror_refusal(kube: Kube, md: ModelDeployment) -> str | None:
    """Why this spec's mirroring cannot be carried out on its Gateways (None: it can, or nothing mirrors)."""
    fields = mirroring_fields(md)
    if not fields or not router_for(md.spec).uses_gateway or md.spec.gateway is None:
        return None
    for ref in md.spec.gateway.parent_refs:
        namespace = ref.namespace or md.metadata.namespace
        try:
            gateway = kube.get(GATEWAY_API, "Gateway", ref.name, namespace)
            class_name = str(((gateway or {}).get("spec") or {}).get("gatewayClassName") or "")
            gateway_class = kube.get(GATEWAY_API, "GatewayClass", class_name) if class_name else None
        except KUBE_ERRORS:
            continue
        features = supported_features(gateway_class or {})
        if features is not None and MIRROR_FEATURE not in features:
            return (
                f"{', '.join(fields)} needs request mirroring, which GatewayClass {class_name} "
                f"(Gateway {namespace}/{ref.name}) does not support ({MIRROR_FEATURE} is not in its "
                "status.supportedFeatures): remove the shadow or attach the route to a Gateway that mirrors"
            )
    return None
