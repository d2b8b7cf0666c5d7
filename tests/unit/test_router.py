"""Routers: the children a decision asks for, the one traffic manifest, removals, readiness and refusals per router."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.api.modeldeployment import ModelDeployment
from slipway.builders.router import GatewayApiRouter, KnativeRouter, router_for, traffic_version
from slipway.rollout.state import Decision, RolloutState

URIS = {"1": "s3://m/1", "2": "s3://m/2"}


def md(router: str = "gateway-api", **spec: Any) -> ModelDeployment:
    body: dict[str, Any] = {
        "metadata": {"name": "digits", "namespace": "ml", "uid": "u"},
        "spec": {"model": {"name": "digits", "track": {"alias": "champion"}}, "router": router, **spec},
    }
    if router == "gateway-api":
        body["spec"].setdefault("gateway", {"parentRefs": [{"name": "gw"}]})
    return ModelDeployment.model_validate(body)


def canary(weight: int, phase: str = "Progressing") -> Decision:
    state = RolloutState(phase=phase, stable_version="1", canary_version="2", canary_weight=weight)  # type: ignore[arg-type]
    return Decision(state)


def kinds(manifests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in manifests]


def test_the_router_is_chosen_from_spec_router():
    assert isinstance(router_for(md().spec), GatewayApiRouter)
    assert isinstance(router_for(md("kserve-knative").spec), KnativeRouter)


def test_gateway_api_children_end_with_the_route_that_carries_the_weights():
    m, decision = md(), canary(30)
    children = GatewayApiRouter().children(m, decision, URIS)
    assert kinds(children) == [
        ("InferenceService", "digits-v1"),
        ("HorizontalPodAutoscaler", "digits-v1"),
        ("InferenceService", "digits-v2"),
        ("HorizontalPodAutoscaler", "digits-v2"),
        ("HTTPRoute", "digits"),
    ]
    assert children[-1] == GatewayApiRouter().traffic(m, decision, {})
    weights = [b["weight"] for b in children[-1]["spec"]["rules"][0]["backendRefs"]]
    assert weights == [70, 30]


def test_knative_children_are_one_inference_service_with_the_canary_percent():
    m = md("kserve-knative")
    children = KnativeRouter().children(m, canary(30), URIS)
    assert kinds(children) == [("InferenceService", "digits")]
    predictor = children[0]["spec"]["predictor"]
    assert (
        predictor["canaryTrafficPercent"] == 30 and children[0]["metadata"]["labels"]["ml.slipway.dev/version"] == "2"
    )
    assert KnativeRouter().traffic(m, canary(30), {}) is None, "no storage URI, nothing to write"
    back = KnativeRouter().traffic(m, canary(0, "RollingBack"), URIS)
    assert back is not None and back["metadata"]["labels"]["ml.slipway.dev/version"] == "1"
    assert "canaryTrafficPercent" not in back["spec"]["predictor"]


def test_removals_are_the_live_versions_not_kept():
    rolled_back = Decision(RolloutState(phase="RolledBack", stable_version="1"))
    refs = GatewayApiRouter().removals(md(), rolled_back, frozenset({"1", "2"}))
    assert [(r.kind, r.name) for r in refs] == [
        ("HorizontalPodAutoscaler", "digits-v2"),
        ("InferenceService", "digits-v2"),
    ]
    assert KnativeRouter().removals(md("kserve-knative"), rolled_back, frozenset({"1", "2"})) == []


def test_readiness_gateway_api_counts_available_pods_knative_reads_ready():
    m = md(autoscaling={"minReplicas": 2, "maxReplicas": 3})
    gw = GatewayApiRouter()
    ref = gw.readiness_ref(m, "2")
    assert ref is not None and (ref.kind, ref.name) == ("Deployment", "digits-v2-predictor")
    isvc_ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert not gw.ready(m, isvc_ready, {"status": {"availableReplicas": 1}}), "KServe's Ready is not enough"
    assert gw.ready(m, {}, {"status": {"availableReplicas": 2}})
    kn = KnativeRouter()
    assert kn.readiness_ref(md("kserve-knative"), "2") is None
    assert kn.ready(md("kserve-knative"), isvc_ready, None)
    assert not kn.ready(md("kserve-knative"), {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}, None)


@pytest.mark.parametrize(
    ("strategy", "refused"),
    [
        ({"canary": {"steps": [{"setWeight": 50}]}}, None),
        ({"blueGreen": {}}, "strategy.blueGreen"),
    ],
)
def test_knative_refuses_what_it_cannot_carry_out(strategy: dict[str, Any], refused: str | None):
    why = KnativeRouter().refusal(md("kserve-knative", strategy=strategy))
    assert (why is None) if refused is None else (why is not None and refused in why)
    assert GatewayApiRouter().refusal(md(strategy=strategy)) is None


def test_traffic_moves_in_a_rollback_only_once_the_failed_version_may_leave():
    assert traffic_version(canary(0, "RollingBack")) == "1"
    assert traffic_version(canary(20, "RollingBack")) is None
