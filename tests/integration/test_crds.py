"""The CRDs in the real kube-apiserver: examples accepted, invalid objects refused with a message
naming the field, printer columns, kubectl explain, immutability, round-trip through pydantic.

The table of invalid objects is also checked against the pydantic models (without a server),
so the models' Python twins of the CEL rules refuse the same objects the API server does.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from slipway.api import ModelDeployment, ModelVersion, TrainingRun
from slipway.api.common import API_VERSION, GROUP, VERSION, ApiModel

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
PLURALS = {
    "TrainingRun": "trainingruns",
    "ModelVersion": "modelversions",
    "ModelDeployment": "modeldeployments",
}
MODELS: dict[str, type[ApiModel]] = {
    "TrainingRun": TrainingRun,
    "ModelVersion": ModelVersion,
    "ModelDeployment": ModelDeployment,
}
DELETE = object()


@dataclass(frozen=True)
class Replace:
    """In a patch: put this value as it is instead of merging it."""

    value: Any


TR: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "TrainingRun",
    "metadata": {"name": "bad-run"},
    "spec": {
        "entrypoint": "digits_cnn",
        "params": {"epochs": "2"},
        "register": {"model": "digits-cnn", "gates": [{"metric": "accuracy", "min": 0.9}]},
    },
}
MV: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "ModelVersion",
    "metadata": {"name": "bad-version"},
    "spec": {"model": "digits-cnn", "version": "7"},
}
MD: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "ModelDeployment",
    "metadata": {"name": "bad-deploy"},
    "spec": {
        "model": {"name": "digits-cnn", "track": {"alias": "champion"}},
        "strategy": {
            "canary": {
                "steps": [{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 100}],
                "analysis": {"metrics": [{"name": "error-rate", "query": "up", "max": 0.01}]},
            }
        },
    },
}


def merge(base: Any, patch: Any) -> Any:
    """Deep-merge ``patch`` into a copy of ``base``: dicts merge, DELETE removes, rest replaces."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, Replace):
            out[key] = copy.deepcopy(value.value)
        else:
            out[key] = merge(out.get(key), value) if isinstance(value, dict) else value
    return out


@dataclass(frozen=True)
class Bad:
    """An invalid object and the substrings the API server's error must contain."""

    id: str
    base: dict[str, Any]
    patch: dict[str, Any]
    expect: tuple[str, ...]

    @property
    def body(self) -> dict[str, Any]:
        result: dict[str, Any] = merge(self.base, self.patch)
        return result


def canary(**fields: Any) -> dict[str, Any]:
    return {"spec": {"strategy": {"canary": fields}}}


def md_spec(**fields: Any) -> dict[str, Any]:
    """Set whole fields of the ModelDeployment spec (replaced, not merged)."""
    return {"spec": {k: Replace(v) for k, v in fields.items()}}


INVALID = [
    # --- TrainingRun -----------------------------------------------------------------------
    Bad("tr-framework-enum", TR, {"spec": {"framework": "jax"}}, ("spec.framework", "jax")),
    Bad("tr-workers-zero", TR, {"spec": {"workers": 0}}, ("spec.workers",)),
    Bad(
        "tr-entrypoint-and-command",
        TR,
        {"spec": {"command": ["python"]}},
        ("spec:", "exactly one of entrypoint or command"),
    ),
    Bad(
        "tr-neither-entrypoint-nor-command",
        TR,
        {"spec": {"entrypoint": DELETE}},
        ("spec:", "exactly one of entrypoint or command"),
    ),
    Bad(
        "tr-custom-without-command",
        TR,
        {"spec": {"framework": "custom"}},
        ("spec.command", "framework custom needs command"),
    ),
    Bad(
        "tr-gate-without-bound",
        TR,
        {"spec": {"register": {"gates": [{"metric": "accuracy"}]}}},
        ("spec.register.gates[0]", "at least one of min or max"),
    ),
    Bad(
        "tr-gate-min-above-max",
        TR,
        {"spec": {"register": {"gates": [{"metric": "accuracy", "min": 0.9, "max": 0.5}]}}},
        ("spec.register.gates[0].min", "less than or equal to max"),
    ),
    Bad(
        "tr-gate-without-metric",
        TR,
        {"spec": {"register": {"gates": [{"min": 0.5}]}}},
        ("spec.register.gates[0].metric", "Required"),
    ),
    Bad(
        "tr-gate-duplicate-metric",
        TR,
        {"spec": {"register": {"gates": [{"metric": "loss", "max": 1}, {"metric": "loss", "min": 0}]}}},
        ("spec.register.gates", "each metric at most once"),
    ),
    Bad(
        "tr-register-stage-enum",
        TR,
        {"spec": {"register": {"stage": "Prod"}}},
        ("spec.register.stage",),
    ),
    Bad(
        "tr-register-alias-reserved",
        TR,
        {"spec": {"register": {"alias": "latest"}}},
        ("spec.register.alias", "MLflow reserves"),
    ),
    Bad(
        "tr-register-without-model",
        TR,
        {"spec": {"register": {"model": DELETE}}},
        ("spec.register.model", "Required"),
    ),
    Bad(
        "tr-param-key",
        TR,
        {"spec": {"params": {"learning rate": "0.1"}}},
        ("spec.params", "params keys"),
    ),
    Bad(
        "tr-param-not-string",
        TR,
        {"spec": {"params": {"epochs": 5}}},
        ("spec.params.epochs", "string"),
    ),
    Bad(
        "tr-quantity",
        TR,
        {"spec": {"resources": {"requests": {"cpu": "lots"}}}},
        ("spec.resources.requests.cpu",),
    ),
    Bad(
        "tr-gpu-request-without-limit",
        TR,
        {"spec": {"resources": {"requests": {"nvidia.com/gpu": 1}}}},
        ("spec.resources", "nvidia.com/gpu"),
    ),
    Bad("tr-deadline-zero", TR, {"spec": {"deadlineSeconds": 0}}, ("spec.deadlineSeconds",)),
    Bad("tr-name-too-long", TR, {"metadata": {"name": "r" * 51}}, ("metadata.name", "at most 50")),
    Bad("tr-unknown-field", TR, {"spec": {"epochs": 5}}, ("spec.epochs",)),
    Bad(
        "tr-toleration-operator",
        TR,
        {"spec": {"tolerations": [{"key": "gpu", "operator": "In"}]}},
        ("spec.tolerations[0].operator",),
    ),
    # --- ModelVersion ----------------------------------------------------------------------
    Bad("mv-version-pattern", MV, {"spec": {"version": "v7"}}, ("spec.version",)),
    Bad("mv-version-zero", MV, {"spec": {"version": 0}}, ("spec.version",)),
    Bad("mv-without-model", MV, {"spec": {"model": DELETE}}, ("spec.model", "Required")),
    Bad("mv-model-name", MV, {"spec": {"model": "digits cnn"}}, ("spec.model",)),
    Bad("mv-without-spec", MV, {"spec": DELETE}, ("spec", "Required")),
    # --- ModelDeployment: model and tracking -----------------------------------------------
    Bad(
        "md-track-two",
        MD,
        {"spec": {"model": {"track": {"stage": "Production"}}}},
        ("spec.model.track", "exactly one of track.alias, track.stage or track.version"),
    ),
    Bad(
        "md-track-none",
        MD,
        {"spec": {"model": {"track": {"alias": DELETE}}}},
        ("spec.model.track", "exactly one of track.alias"),
    ),
    Bad(
        "md-track-stage-enum",
        MD,
        {"spec": {"model": {"track": {"alias": DELETE, "stage": "Archived"}}}},
        ("spec.model.track.stage",),
    ),
    Bad(
        "md-track-version-zero",
        MD,
        {"spec": {"model": {"track": {"alias": DELETE, "version": 0}}}},
        ("spec.model.track.version",),
    ),
    Bad("md-name-too-long", MD, {"metadata": {"name": "d" * 41}}, ("metadata.name", "at most 40")),
    # --- ModelDeployment: strategy ---------------------------------------------------------
    Bad(
        "md-two-strategies",
        MD,
        {"spec": {"strategy": {"blueGreen": {"autoPromotionSeconds": 60}}}},
        ("spec.strategy", "exactly one of strategy.canary, strategy.blueGreen or strategy.abTest"),
    ),
    Bad("md-empty-strategy", MD, md_spec(strategy={}), ("spec.strategy", "exactly one of")),
    Bad(
        "md-weights-decrease",
        MD,
        canary(steps=[{"setWeight": 50}, {"setWeight": 20}]),
        ("spec.strategy.canary.steps", "strictly increase"),
    ),
    Bad(
        "md-weights-repeat",
        MD,
        canary(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 20}]),
        ("spec.strategy.canary.steps", "strictly increase"),
    ),
    Bad(
        "md-weight-above-100",
        MD,
        canary(steps=[{"setWeight": 120}]),
        ("spec.strategy.canary.steps[0].setWeight",),
    ),
    Bad(
        "md-weight-negative",
        MD,
        canary(steps=[{"setWeight": -5}]),
        ("spec.strategy.canary.steps[0].setWeight",),
    ),
    Bad(
        "md-step-two-actions",
        MD,
        canary(steps=[{"setWeight": 10, "pause": {}}]),
        ("spec.strategy.canary.steps[0]", "exactly one of setWeight, pause, analysis or mirror"),
    ),
    Bad(
        "md-step-empty",
        MD,
        canary(steps=[{}]),
        ("spec.strategy.canary.steps[0]", "exactly one of setWeight"),
    ),
    Bad("md-no-steps", MD, canary(steps=[]), ("spec.strategy.canary.steps",)),
    Bad(
        "md-pause-duration",
        MD,
        canary(steps=[{"pause": {"duration": "1 minute"}}]),
        ("spec.strategy.canary.steps[0].pause.duration",),
    ),
    Bad(
        "md-pause-duration-and-approval",
        MD,
        canary(steps=[{"pause": {"duration": "1m", "untilApproved": {"tag": "approved_by"}}}]),
        ("spec.strategy.canary.steps[0].pause", "at most one of duration or untilApproved"),
    ),
    Bad(
        "md-pause-approval-empty-tag",
        MD,
        canary(steps=[{"pause": {"untilApproved": {"tag": ""}}}]),
        ("spec.strategy.canary.steps[0].pause.untilApproved.tag",),
    ),
    Bad(
        "md-pause-approval-no-tag",
        MD,
        canary(steps=[{"pause": {"untilApproved": {"value": "approved"}}}]),
        ("spec.strategy.canary.steps[0].pause.untilApproved.tag",),
    ),
    Bad(
        "md-abtest-approval-and-criterion",
        MD,
        md_spec(
            strategy={
                "abTest": {
                    "weight": 50,
                    "duration": "1h",
                    "approval": {"tag": "approved_by"},
                    "criterion": {"metric": "accuracy", "query": "q"},
                }
            }
        ),
        ("spec.strategy.abTest.approval", "approval or criterion, not both"),
    ),
    Bad(
        "md-mirror-percent",
        MD,
        canary(steps=[{"mirror": {"percent": 150}}]),
        ("spec.strategy.canary.steps[0].mirror.percent",),
    ),
    Bad(
        "md-analysis-interval",
        MD,
        canary(analysis={"interval": "30"}),
        ("spec.strategy.canary.analysis.interval",),
    ),
    Bad(
        "md-analysis-failure-limit",
        MD,
        canary(analysis={"failureLimit": -1}),
        ("spec.strategy.canary.analysis.failureLimit",),
    ),
    Bad(
        "md-analysis-metric-no-bound",
        MD,
        canary(analysis={"metrics": [{"name": "error-rate", "query": "up"}]}),
        ("spec.strategy.canary.analysis.metrics[0]", "at least one of min or max"),
    ),
    Bad(
        "md-analysis-metric-min-above-max",
        MD,
        canary(analysis={"metrics": [{"name": "x", "query": "up", "min": 2, "max": 1}]}),
        ("spec.strategy.canary.analysis.metrics[0].min", "less than or equal to max"),
    ),
    Bad(
        "md-analysis-metric-duplicate",
        MD,
        canary(
            analysis={
                "metrics": [
                    {"name": "x", "query": "up", "max": 1},
                    {"name": "x", "query": "down", "max": 1},
                ]
            }
        ),
        ("spec.strategy.canary.analysis.metrics[1]", "Duplicate"),
    ),
    Bad(
        "md-analysis-metric-no-query",
        MD,
        canary(analysis={"metrics": [{"name": "x", "max": 1}]}),
        ("spec.strategy.canary.analysis.metrics[0]", "set exactly one of query or web"),
    ),
    Bad(
        "md-analysis-step-without-template",
        MD,
        canary(analysis=DELETE, steps=[{"setWeight": 10}, {"analysis": {}}]),
        ("spec.strategy.canary.steps", "needs canary.analysis"),
    ),
    Bad(
        "md-progress-deadline",
        MD,
        canary(progressDeadline="ten minutes"),
        ("spec.strategy.canary.progressDeadline",),
    ),
    Bad(
        "md-bluegreen-scale-down-negative",
        MD,
        md_spec(strategy={"blueGreen": {"scaleDownDelaySeconds": -1}}),
        ("spec.strategy.blueGreen.scaleDownDelaySeconds",),
    ),
    Bad(
        "md-abtest-no-split",
        MD,
        md_spec(strategy={"abTest": {"duration": "24h"}}),
        ("spec.strategy.abTest", "at least one of weight or match"),
    ),
    Bad(
        "md-abtest-weight-zero",
        MD,
        md_spec(strategy={"abTest": {"duration": "1h", "weight": 0}}),
        ("spec.strategy.abTest.weight", "sends B no traffic"),
    ),
    Bad(
        "md-abtest-no-duration",
        MD,
        md_spec(strategy={"abTest": {"weight": 20}}),
        ("spec.strategy.abTest.duration", "Required"),
    ),
    Bad(
        "md-abtest-match-both",
        MD,
        md_spec(
            strategy={
                "abTest": {
                    "duration": "1h",
                    "match": [
                        {
                            "header": {"name": "x-v", "value": "b"},
                            "cookie": {"name": "v", "value": "b"},
                        }
                    ],
                }
            }
        ),
        ("spec.strategy.abTest.match[0]", "exactly one of header or cookie"),
    ),
    Bad(
        "md-abtest-goal",
        MD,
        md_spec(
            strategy={
                "abTest": {
                    "duration": "1h",
                    "weight": 5,
                    "criterion": {"metric": "c", "query": "q", "goal": "max"},
                }
            }
        ),
        ("spec.strategy.abTest.criterion.goal",),
    ),
    # --- ModelDeployment: serving, autoscaling, rollback, routing ---------------------------
    Bad("md-protocol", MD, md_spec(serving={"protocol": "v3"}), ("spec.serving.protocol",)),
    Bad(
        "md-batching-other-runtime",
        MD,
        md_spec(serving={"runtime": "kserve-mlserver", "batching": {"maxBatchSize": 8}}),
        ("spec.serving.batching", "runtime slipway"),
    ),
    Bad(
        "md-replicas-order",
        MD,
        md_spec(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
        ("spec.autoscaling.minReplicas", "less than or equal to maxReplicas"),
    ),
    Bad(
        "md-replicas-zero",
        MD,
        md_spec(autoscaling={"minReplicas": 0}),
        ("spec.autoscaling.minReplicas",),
    ),
    Bad(
        "md-scaling-metric-type",
        MD,
        md_spec(autoscaling={"metrics": [{"type": "gpu", "targetUtilization": 50}]}),
        ("spec.autoscaling.metrics[0].type",),
    ),
    Bad(
        "md-scaling-cpu-two-targets",
        MD,
        md_spec(autoscaling={"metrics": [{"type": "cpu", "targetUtilization": 50, "targetAverageValue": "500m"}]}),
        ("spec.autoscaling.metrics[0]", "exactly one of targetUtilization or targetAverageValue"),
    ),
    Bad(
        "md-scaling-pods-no-name",
        MD,
        md_spec(autoscaling={"metrics": [{"type": "pods", "targetAverageValue": "10"}]}),
        ("spec.autoscaling.metrics[0]", "metricName"),
    ),
    Bad(
        "md-scaling-cpu-twice",
        MD,
        md_spec(
            autoscaling={
                "metrics": [
                    {"type": "cpu", "targetUtilization": 50},
                    {"type": "cpu", "targetUtilization": 70},
                ]
            }
        ),
        ("spec.autoscaling.metrics", "at most once"),
    ),
    Bad("md-router", MD, md_spec(router="istio"), ("spec.router",)),
    Bad(
        "md-revert-alias-needs-alias",
        MD,
        {
            "spec": {
                "model": {"track": {"alias": DELETE, "stage": "Production"}},
                "rollback": {"registry": "revertAlias"},
            }
        },
        ("spec.rollback.registry", "needs model.track.alias"),
    ),
    Bad(
        "md-rollback-registry-enum",
        MD,
        md_spec(rollback={"registry": "delete"}),
        ("spec.rollback.registry",),
    ),
    Bad(
        "md-rollback-window",
        MD,
        md_spec(rollback={"window": "30 minutes"}),
        ("spec.rollback.window",),
    ),
    Bad(
        "md-alerts-empty",
        MD,
        md_spec(rollback={"alerts": {}}),
        ("spec.rollback.alerts", "at least one of alerts.alertNames or alerts.matchLabels"),
    ),
    Bad(
        "md-alert-names-duplicate",
        MD,
        md_spec(rollback={"alerts": {"alertNames": ["Drift", "Drift"]}}),
        ("spec.rollback.alerts.alertNames[1]", "Duplicate"),
    ),
    Bad(
        "md-knative-abtest",
        MD,
        md_spec(router="kserve-knative", strategy={"abTest": {"duration": "1h", "weight": 10}}),
        ("spec.strategy", "abTest needs router gateway-api"),
    ),
    Bad(
        "md-knative-mirror",
        MD,
        md_spec(router="kserve-knative", strategy={"canary": {"steps": [{"mirror": {}}]}}),
        ("spec.strategy", "mirror needs router gateway-api"),
    ),
    Bad(
        "md-knative-gateway",
        MD,
        md_spec(router="kserve-knative", gateway={"parentRefs": [{"name": "gw"}]}),
        ("spec.gateway", "only to router gateway-api"),
    ),
    Bad(
        "md-gateway-no-parents",
        MD,
        md_spec(gateway={"parentRefs": []}),
        ("spec.gateway.parentRefs",),
    ),
    Bad(
        "md-gateway-port",
        MD,
        md_spec(gateway={"parentRefs": [{"name": "gw", "port": 70000}]}),
        ("spec.gateway.parentRefs[0].port",),
    ),
    Bad(
        "md-model-name-missing",
        MD,
        {"spec": {"model": {"name": DELETE}}},
        ("spec.model.name", "Required"),
    ),
    Bad(
        "md-notifications-webhook-unsigned",
        MD,
        md_spec(
            notifications={"targets": [{"name": "a", "type": "webhook", "urlSecretRef": {"name": "s", "key": "u"}}]}
        ),
        ("spec.notifications.targets[0].signingSecretRef", "needs signingSecretRef"),
    ),
    Bad(
        "md-notifications-url-in-spec",
        MD,
        md_spec(notifications={"targets": [{"name": "a", "type": "slack", "url": "https://hooks.example/x"}]}),
        ("spec.notifications.targets[0]", "url"),
    ),
    Bad(
        "tr-notifications-unknown-event",
        TR,
        {"spec": {"notifications": {"events": ["Exploded"]}}},
        ("spec.notifications.events[0]", "Exploded"),
    ),
]


def test_there_are_enough_invalid_cases() -> None:
    assert len(INVALID) >= 30
    assert len({c.id for c in INVALID}) == len(INVALID)


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_models_reject_invalid(case: Bad) -> None:
    """The pydantic models refuse every object the API server refuses (no server needed)."""
    with pytest.raises(ValidationError):
        MODELS[case.body["kind"]].model_validate(case.body)


@pytest.mark.parametrize("base", [TR, MV, MD], ids=lambda b: b["kind"])
def test_bases_of_invalid_cases_are_valid(base: dict[str, Any]) -> None:
    MODELS[base["kind"]].model_validate(base)


# --- against the real API server -----------------------------------------------------------


def run(testbed: Any, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(testbed.kubectl), "--kubeconfig", str(testbed.kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def shared_namespace(testbed: Any, slipway_crds: list[str]) -> Iterator[str]:
    """One namespace for the rejection cases (nothing is ever stored in it)."""
    name = f"crds-{uuid.uuid4().hex[:8]}"
    assert run(testbed, "create", "namespace", name).returncode == 0
    yield name
    run(testbed, "delete", "namespace", name, "--wait=false")


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.mark.integration
def test_crds_are_established(testbed: Any, slipway_crds: list[str]) -> None:
    out = run(testbed, "get", "crd", *slipway_crds, "-o", "json")
    assert out.returncode == 0, out.stderr
    for item in json.loads(out.stdout)["items"]:
        conditions = {c["type"]: c["status"] for c in item["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        assert conditions.get("NonStructuralSchema", "False") != "True"


@pytest.mark.integration
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_and_round_trips(path: Path, slipway_crds: list[str], kubectl: Any) -> None:
    dry = kubectl("apply", "--server-side", "--dry-run=server", "-f", str(path), check=False)
    assert dry.returncode == 0, dry.stderr
    created = kubectl("create", "-f", str(path), "-o", "json", check=False)
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    items = body["items"] if body.get("kind") == "List" else [body]
    for item in items:
        model = MODELS[item["kind"]].model_validate(item)
        assert model.to_dict()["spec"] == item["spec"]
        back = kubectl("get", PLURALS[item["kind"]], item["metadata"]["name"], "-o", "json")
        assert json.loads(back.stdout)["spec"] == item["spec"]


@pytest.mark.integration
@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_server_rejects_invalid(case: Bad, kube_api: Any, shared_namespace: str) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi(kube_api)
    body = case.body
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_custom_object(
            GROUP,
            VERSION,
            shared_namespace,
            PLURALS[body["kind"]],
            body,
            field_validation="Strict",
        )
    assert caught.value.status in (400, 422), caught.value.body
    message = json.loads(caught.value.body)["message"]
    for needle in case.expect:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.integration
def test_cel_rules_of_valid_objects_pass(kube_api: Any, shared_namespace: str) -> None:
    """The bases of the rejection table are themselves accepted (so each case fails for its
    own reason)."""
    from kubernetes import client

    api = client.CustomObjectsApi(kube_api)
    for base in (TR, MV, MD):
        api.create_namespaced_custom_object(
            GROUP,
            VERSION,
            shared_namespace,
            PLURALS[base["kind"]],
            base,
            field_validation="Strict",
            dry_run="All",
        )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("base", "patch"),
    [(MV, {"spec": {"version": "8"}}), (TR, {"spec": {"workers": 2}})],
    ids=["modelversion", "trainingrun"],
)
def test_spec_is_immutable(base: dict[str, Any], patch: dict[str, Any], slipway_crds: list[str], kubectl: Any) -> None:
    kubectl("create", "-f", "-", input=json.dumps(base))
    out = kubectl(
        "patch",
        PLURALS[base["kind"]],
        base["metadata"]["name"],
        "--type=merge",
        "-p",
        json.dumps(patch),
        check=False,
    )
    assert out.returncode != 0
    assert "spec: Invalid value" in out.stderr and "spec is immutable" in out.stderr, out.stderr


@pytest.mark.integration
def test_deployment_spec_can_change(slipway_crds: list[str], kubectl: Any) -> None:
    kubectl("create", "-f", "-", input=json.dumps(MD))
    patch = {"spec": {"model": {"track": {"alias": "candidate"}}, "paused": True}}
    kubectl("patch", "md", "bad-deploy", "--type=merge", "-p", json.dumps(patch))
    got = json.loads(kubectl("get", "md", "bad-deploy", "-o", "json").stdout)
    assert got["spec"]["model"]["track"] == {"alias": "candidate"}
    assert got["metadata"]["generation"] == 2


@pytest.mark.integration
def test_status_is_a_subresource(slipway_crds: list[str], kubectl: Any) -> None:
    kubectl("create", "-f", "-", input=json.dumps(MV))
    # Writing status through the main resource is ignored...
    kubectl("patch", "mv", "bad-version", "--type=merge", "-p", '{"status": {"stage": "Staging"}}')
    got = json.loads(kubectl("get", "mv", "bad-version", "-o", "json").stdout)
    assert "status" not in got or "stage" not in got["status"]
    # ...and through the status subresource it sticks, validated against the status schema.
    kubectl(
        "patch",
        "mv",
        "bad-version",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"stage": "Staging"}}',
    )
    got = json.loads(kubectl("get", "mv", "bad-version", "-o", "json").stdout)
    assert got["status"]["stage"] == "Staging"
    bad = kubectl(
        "patch",
        "mv",
        "bad-version",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"stage": "Gold"}}',
        check=False,
    )
    assert bad.returncode != 0 and "status.stage" in bad.stderr


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0].split(), [ln.split() for ln in lines[1:]]


def _status(kubectl: Any, plural: str, name: str, status: dict[str, Any]) -> None:
    kubectl(
        "patch",
        plural,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


@pytest.mark.integration
def test_kubectl_get_prints_the_columns(slipway_crds: list[str], kubectl: Any) -> None:
    for path in ("modelversion.yaml", "modeldeployment-canary.yaml", "trainingrun-pytorch.yaml"):
        kubectl("create", "-f", str(REPO / "examples" / path))
    _status(
        kubectl,
        "modelversions",
        "digits-cnn-7",
        {
            "stage": "Production",
            "aliases": ["champion"],
            "metrics": {"accuracy": 0.9731},
            "runId": "5f2c",
            "storageUri": "s3://mlflow/1/5f2c/artifacts/model",
        },
    )
    _status(
        kubectl,
        "modeldeployments",
        "digits",
        {
            "phase": "Progressing",
            "stableVersion": "6",
            "canaryVersion": "7",
            "canaryWeight": 25,
        },
    )
    _status(
        kubectl,
        "trainingruns",
        "digits-cnn-lr-001",
        {
            "phase": "Succeeded",
            "mlflowRunId": "5f2c",
            "headlineMetric": "accuracy=0.9731",
            "modelVersion": "7",
        },
    )

    header, rows = _table(kubectl("get", "modelversions").stdout)
    assert header == ["NAME", "MODEL", "VERSION", "STAGE", "ALIASES", "ACCURACY", "AGE"]
    assert rows[0][:6] == [
        "digits-cnn-7",
        "digits-cnn",
        "7",
        "Production",
        '["champion"]',
        "0.9731",
    ]

    header, rows = _table(kubectl("get", "md").stdout)
    assert header == ["NAME", "MODEL", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE"]
    assert rows[0][:6] == ["digits", "digits-cnn", "6", "7", "25", "Progressing"]

    header, rows = _table(kubectl("get", "tr").stdout)
    assert header == ["NAME", "MODEL", "PHASE", "RUN", "METRIC", "AGE"]
    assert rows[0][:5] == [
        "digits-cnn-lr-001",
        "digits-cnn",
        "Succeeded",
        "5f2c",
        "accuracy=0.9731",
    ]

    everything = kubectl("get", "slipway").stdout
    for name in (
        "trainingrun.ml.slipway.dev/digits-cnn-lr-001",
        "modelversion.ml.slipway.dev/digits-cnn-7",
        "modeldeployment.ml.slipway.dev/digits",
    ):
        assert name in everything, everything
    for column in ("ACCURACY", "CANARY", "WEIGHT", "METRIC"):
        assert column in everything

    wide = kubectl("get", "mv", "-o", "wide").stdout
    assert "s3://mlflow/1/5f2c/artifacts/model" in wide


@pytest.mark.integration
def test_kubectl_explain_shows_descriptions(slipway_crds: list[str], kubectl: Any) -> None:
    def explained() -> str | None:
        out = kubectl("explain", "modeldeployment.spec.strategy.canary", check=False)
        return out.stdout if out.returncode == 0 and "steps" in out.stdout else None

    text = wait_for(explained, what="kubectl explain to know the CRD")
    assert "Canary: shift traffic to the new version step by step" in " ".join(text.split())
    assert "progressDeadline" in text and "analysis" in text
    steps = kubectl("explain", "md.spec.strategy.canary.steps.setWeight").stdout
    assert "percent of traffic to the canary" in steps
    gates = kubectl("explain", "trainingrun.spec.register.gates").stdout
    assert "metric gate" in gates.lower()


def test_examples_parse_as_yaml() -> None:
    for path in EXAMPLES:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert docs, path
