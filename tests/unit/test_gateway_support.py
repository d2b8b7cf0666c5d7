"""A spec that mirrors traffic is refused on a Gateway whose class does not publish request mirroring."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.api.modeldeployment import ModelDeployment
from slipway.reconcilers.gateway_support import MIRROR_FEATURE, mirror_refusal, supported_features


class Gateways:
    """Only what mirror_refusal reads: Gateways and GatewayClasses by name."""

    def __init__(self, features: list[Any] | None) -> None:
        gateway_class: dict[str, Any] = {"metadata": {"name": "traefik"}, "status": {}}
        if features is not None:
            gateway_class["status"]["supportedFeatures"] = features
        self.objects = {
            ("Gateway", "edge", "infra"): {"spec": {"gatewayClassName": "traefik"}},
            ("GatewayClass", "traefik", None): gateway_class,
        }

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.objects.get((kind, name, namespace))


def md(strategy: dict[str, Any], gateway: bool = True) -> ModelDeployment:
    spec: dict[str, Any] = {"model": {"name": "digits", "track": {"alias": "champion"}}, "strategy": strategy}
    if gateway:
        spec["gateway"] = {"parentRefs": [{"name": "edge", "namespace": "infra"}]}
    body = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "d", "namespace": "t"},
    }
    return ModelDeployment.model_validate({**body, "spec": spec})


SHADOW = {"blueGreen": {"shadow": {"percent": 50}}}
MIRROR_STEP = {"canary": {"steps": [{"mirror": {"percent": 10}}, {"setWeight": 50}]}}
CORE = ["HTTPRoute", "HTTPRouteHeaderMatching", "Gateway"]


@pytest.mark.parametrize("strategy", [SHADOW, MIRROR_STEP])
def test_mirroring_on_a_class_without_the_feature_is_refused_naming_field_and_class(strategy: dict[str, Any]) -> None:
    why = mirror_refusal(Gateways(CORE), md(strategy))  # type: ignore[arg-type]
    assert why is not None
    assert "GatewayClass traefik" in why and "infra/edge" in why and MIRROR_FEATURE in why
    assert ("blueGreen.shadow" in why) == (strategy is SHADOW)


@pytest.mark.parametrize(
    "features",
    [[*CORE, MIRROR_FEATURE], [{"name": n} for n in (*CORE, MIRROR_FEATURE)], None, []],
    ids=["strings", "objects", "unpublished", "empty"],
)
def test_mirroring_is_allowed_where_the_class_supports_it_or_says_nothing(features: list[Any] | None) -> None:
    assert mirror_refusal(Gateways(features), md(SHADOW)) is None  # type: ignore[arg-type]


def test_specs_without_mirroring_or_without_a_gateway_are_not_checked() -> None:
    assert mirror_refusal(Gateways(CORE), md({"canary": {"steps": [{"setWeight": 50}]}})) is None  # type: ignore[arg-type]
    assert mirror_refusal(Gateways(CORE), md(SHADOW, gateway=False)) is None  # type: ignore[arg-type]


def test_feature_objects_and_strings_read_alike() -> None:
    assert supported_features({"status": {"supportedFeatures": [{"name": "A"}, "B"]}}) == {"A", "B"}
    assert supported_features({"status": {}}) is None
