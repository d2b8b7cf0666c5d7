"""`slipway plan` lists the children the pass's router applies first: for kserve-knative, one InferenceService."""

from __future__ import annotations

from slipway.api.modeldeployment import ModelDeployment
from slipway.cli.plan import plan


def knative() -> ModelDeployment:
    return ModelDeployment.model_validate({
        "metadata": {"name": "digits", "namespace": "ml", "uid": "u"},
        "spec": {"model": {"name": "digits", "track": {"alias": "champion"}}, "router": "kserve-knative",
                 "strategy": {"canary": {"steps": [{"setWeight": 20}]}}},
    })  # fmt: skip


def names(result_children: list[dict]) -> list[tuple[str, str]]:
    return [(c["kind"], c["metadata"]["name"]) for c in result_children]


def test_knative_first_version_is_one_knative_inference_service():
    result = plan(knative(), None, None, "1", "", {"1": "s3://m/1"})
    assert names(result.children) == [("InferenceService", "digits")]
    isvc = result.children[0]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]


def test_knative_rollout_starts_the_new_revision_at_zero_percent():
    result = plan(knative(), None, "1", "2", "", {"1": "s3://m/1", "2": "s3://m/2"})
    assert names(result.children) == [("InferenceService", "digits")]
    isvc = result.children[0]
    assert isvc["metadata"]["labels"]["ml.slipway.dev/version"] == "2"
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_gateway_api_rollout_lists_both_backends_and_the_route_at_zero():
    body = knative().model_dump(by_alias=True, exclude_none=True)
    body["spec"]["router"] = "gateway-api"
    body["spec"]["gateway"] = {"parentRefs": [{"name": "gw"}]}
    result = plan(ModelDeployment.model_validate(body), None, "1", "2", "", {"1": "s3://m/1"})
    assert names(result.children) == [
        ("InferenceService", "digits-v1"),
        ("HorizontalPodAutoscaler", "digits-v1"),
        ("InferenceService", "digits-v2"),
        ("HorizontalPodAutoscaler", "digits-v2"),
        ("HTTPRoute", "digits"),
    ]
    weights = {b["name"]: b["weight"] for b in result.children[-1]["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"digits-v1-predictor": 100, "digits-v2-predictor": 0}
