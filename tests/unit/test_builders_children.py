"""Builders: each child manifest compared with its golden YAML (SLIPWAY_UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway.api.modeldeployment import ModelDeployment
from slipway.builders.hpa import build_hpa
from slipway.builders.httproute import build_http_route
from slipway.builders.inferenceservice import build_inference_service
from slipway.builders.knative import build_knative_inference_service
from slipway.builders.names import sanitise_model_name

GOLDEN = Path(__file__).parent / "golden"


def md(**spec: Any) -> ModelDeployment:
    base: dict[str, Any] = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "0b1c2d3e-0000-4000-8000-000000000001"},
        "spec": {
            "model": {"name": "Digits_CNN", "track": {"alias": "champion"}},
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 5,
                "metrics": [
                    {"type": "cpu", "targetUtilization": 70},
                    {"type": "pods", "metricName": "slipway_requests_per_second", "targetAverageValue": "100"},
                ],
            },
            "gateway": {
                "parentRefs": [{"name": "ml-gateway", "namespace": "gateways"}],
                "hostnames": ["digits.example.com"],
            },
            **spec,
        },
    }
    return ModelDeployment.model_validate(base)


def check_golden(name: str, manifest: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(manifest, sort_keys=False)
    if os.environ.get("SLIPWAY_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden {path.name}: run with SLIPWAY_UPDATE_GOLDEN=1"
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == manifest, f"{path.name} differs"


def test_inference_service_slipway_runtime():
    serving = {"runtime": "slipway", "batching": {"maxBatchSize": 16, "maxLatencyMs": 4}}
    obj = md(serving={**serving, "feedbackTokenSecret": "digits-feedback"})
    check_golden("isvc-slipway", build_inference_service(obj, "7", "s3://models/digits/7"))


def test_inference_service_named_runtime():
    obj = md(serving={"runtime": "kserve-mlserver", "modelFormat": "mlflow", "resources": {"limits": {"cpu": "1"}}})
    check_golden("isvc-named-runtime", build_inference_service(obj, "7", "s3://models/digits/7"))


def test_hpa():
    check_golden("hpa", build_hpa(md(), "7"))


def test_http_route_weights():
    check_golden("httproute", build_http_route(md(), {"7": 90, "8": 10}))


def test_http_route_mirror():
    check_golden("httproute-mirror", build_http_route(md(), {"7": 100, "8": 0}, mirror=("8", 20)))


def forwards(route: dict[str, Any], path: str) -> bool:
    """Whether any rule of the route matches ``path`` (Gateway API: no matches is PathPrefix /)."""
    for rule in route["spec"]["rules"]:
        for match in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
            p = match.get("path") or {"type": "PathPrefix", "value": "/"}
            prefix = p["value"].rstrip("/")
            if path == p["value"] or (p["type"] == "PathPrefix" and (path == prefix or path.startswith(prefix + "/"))):
                return True
    return False


@pytest.mark.parametrize("runtime", ["slipway", "kserve-mlserver"])
def test_the_route_forwards_inference_readiness_and_metadata_only(runtime: str):
    """Not the feedback endpoint (only the labeller, in-cluster, with the token), not /metrics."""
    ab = {"abTest": {"duration": "1h", "match": [{"header": {"name": "x-variant", "value": "b"}}]}}
    obj = md(serving={"runtime": runtime}, strategy=ab)
    test = obj.spec.strategy.ab_test
    assert test is not None and test.match is not None
    route = build_http_route(obj, {"7": 90, "8": 10}, None, ("8", test.match))
    assert forwards({"spec": {"rules": route["spec"]["rules"][1:]}}, "/v2/health/ready"), "the A/B rule too"
    model = "digits" if runtime == "slipway" else "digits-v7"
    for path in (f"/v2/models/{model}/infer", f"/v2/models/{model}/ready", f"/v2/models/{model}", "/v2/health/ready"):
        assert forwards(route, path), path
    if runtime == "slipway":
        assert forwards(route, "/v1/models/digits:predict")
        assert not forwards(route, "/v2/models/digits/feedback")
        assert not forwards(route, "/v2/models/other/infer")
    for path in ("/metrics", "/", "/docs", "/v2/repository/index"):
        assert not forwards(route, path), path


@pytest.mark.parametrize("serving", [{"runtime": "slipway"}, {"runtime": "kserve-mlserver", "modelFormat": "mlflow"}])
def test_predictor_pods_get_the_restricted_profile_and_no_token(serving: dict[str, Any]):
    predictor = build_inference_service(md(serving=serving), "7", "s3://models/digits/7")["spec"]["predictor"]
    assert predictor["automountServiceAccountToken"] is False
    assert predictor["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    container = predictor["containers"][0] if "containers" in predictor else predictor["model"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_pickle_is_refused_unless_the_deployment_opts_in():
    args = build_inference_service(md(), "7", "s3://m/7")["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--pickle") + 1] == "refuse"
    opted = md(serving={"allowPickle": True})
    args = build_inference_service(opted, "7", "s3://m/7")["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--pickle") + 1] == "allow"


def test_knative_canary():
    obj = md(router="kserve-knative", gateway=None)
    check_golden("isvc-knative", build_knative_inference_service(obj, "8", "s3://models/digits/8", 25))


def test_knative_promoted_has_no_canary_percent():
    obj = md(router="kserve-knative", gateway=None)
    spec = build_knative_inference_service(obj, "8", "s3://m/8", None)["spec"]["predictor"]
    assert "canaryTrafficPercent" not in spec


def test_route_orders_versions_numerically_and_keeps_zero_weights():
    route = build_http_route(md(), {"10": 0, "9": 100})
    assert [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]] == [
        ("digits-v9-predictor", 100),
        ("digits-v10-predictor", 0),
    ]


@pytest.mark.parametrize(
    ("raw", "want"), [("Digits_CNN", "digits-cnn"), ("a.b", "a.b"), ("--X--", "x"), ("my model!", "my-model")]
)
def test_sanitise_model_name(raw, want):
    assert sanitise_model_name(raw) == want


def test_every_child_is_owned_and_labelled():
    obj = md()
    for child in (build_inference_service(obj, "7", "s3://x"), build_hpa(obj, "7"), build_http_route(obj, {"7": 100})):
        owner = child["metadata"]["ownerReferences"][0]
        assert owner["uid"] == obj.metadata.uid and owner["controller"] is True
        assert child["metadata"]["labels"]["ml.slipway.dev/deployment"] == "digits"


def test_inference_service_names_the_service_account_kserve_takes_storage_credentials_from():
    isvc = build_inference_service(md(serving={"serviceAccountName": "models"}), "7", "s3://mlflow/artifacts/7")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "models"
    assert "serviceAccountName" not in build_inference_service(md(), "7", "s3://m/7")["spec"]["predictor"]
