"""Safe on a shared cluster, on the real test bed: foreign children are never adopted, tenancy is enforced.

Each test sets up what another team (or a user by hand) could have in the namespace, runs the
real operator as a subprocess against the real API server, and checks that the operator leaves
what is not its own alone and says so in a condition.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from kubectl_scenario import (
    MODEL,
    deployment,
    get,
    isvc_versions,
    md_status,
    model_version,
    operator,
    predictor,
    wait_route,
)
from operator_fixture import StartOperator, start_operator
from operator_process import wait_until

pytestmark = pytest.mark.integration

__all__ = ["StartOperator", "operator", "start_operator"]  # the fixtures, imported for pytest


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return {c["type"]: c for c in status.get("conditions") or []}.get(type_)


FOREIGN_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": MODEL, "labels": {"team": "web"}},
    "spec": {
        "parentRefs": [{"name": "web-gateway"}],
        "rules": [{"backendRefs": [{"name": "web-frontend", "port": 80}]}],
    },
}


def test_an_httproute_of_the_same_name_made_by_someone_else_is_never_adopted(kubectl, operator):
    """Another team's HTTPRoute named like the deployment: nothing applied, a condition names it; gone, we proceed."""
    kubectl("apply", "-f", "-", input=json.dumps(FOREIGN_ROUTE))
    model_version(kubectl, "1", ["champion"])
    predictor(kubectl, "1")
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}]}})

    error = wait_until(
        lambda: (c := condition(md_status(kubectl), "ReconcileError")) and c["status"] == "True" and c,
        what="ReconcileError True",
    )
    assert error["reason"] == "ChildNotOwned", error
    assert f"HTTPRoute {MODEL}" in error["message"], error["message"]
    time.sleep(3)  # retries after 1 s and 2 s: still nothing touched
    route = get(kubectl, "httproute", MODEL)
    assert route is not None
    assert not route["metadata"].get("ownerReferences"), "the foreign route was adopted"
    backends = [(b["name"], b["port"]) for r in route["spec"]["rules"] for b in r["backendRefs"]]
    assert backends == [("web-frontend", 80)], "the foreign route was rewritten"
    assert route["spec"]["parentRefs"][0]["name"] == "web-gateway"
    managers = {m.get("manager") for m in route["metadata"].get("managedFields") or []}
    assert "slipway" not in managers, managers
    assert isvc_versions(kubectl) == set(), "nothing applied while a child is someone else's"
    assert get(kubectl, "hpa", f"{MODEL}-v1") is None

    def events() -> list[str]:
        out = kubectl("get", "events", "--field-selector", f"involvedObject.name={MODEL}", "-o", "json").stdout
        return [e["reason"] for e in json.loads(out)["items"]]

    wait_until(lambda: "ChildNotOwned" in events(), what="a ChildNotOwned event")  # posted after the status write

    kubectl("delete", "httproute", MODEL)
    wait_until(lambda: md_status(kubectl).get("phase") == "Succeeded", timeout=30, what="Succeeded once it is gone")
    wait_route(kubectl, {"1": 100})
    mine = get(kubectl, "httproute", MODEL)
    assert mine is not None and mine["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    error = condition(md_status(kubectl), "ReconcileError")
    assert error is not None and error["status"] == "False"


def test_an_inferenceservice_of_another_owner_is_left_alone_and_named(kubectl, operator):
    """An InferenceService ``digits-v1`` made by hand: not adopted, not garbage-collected with the deployment."""
    foreign = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": f"{MODEL}-v1"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://other/team"}}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(foreign))
    model_version(kubectl, "1", ["champion"])
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}]}})
    error = wait_until(
        lambda: (c := condition(md_status(kubectl), "ReconcileError")) and c["status"] == "True" and c,
        what="ReconcileError True",
    )
    assert error["reason"] == "ChildNotOwned" and f"InferenceService {MODEL}-v1" in error["message"], error
    assert get(kubectl, "httproute", MODEL) is None, "nothing applied: not even the route"
    kubectl("delete", "modeldeployment", MODEL, "--timeout=30s")
    time.sleep(3)
    isvc = get(kubectl, "inferenceservice", f"{MODEL}-v1")
    assert isvc is not None, "someone else's InferenceService was deleted with the deployment"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://other/team"
    assert not isvc["metadata"].get("ownerReferences")


def tenancy_env(namespace: str) -> dict[str, str]:
    """A policy letting the test's namespace use models ``team-a.*`` and experiments ``team-a/*`` only."""
    rules = [
        {"namespaces": [namespace], "models": ["team-a.*"], "experiments": ["team-a/*"]},
        {"namespaces": ["someone-else"], "models": ["*"], "experiments": ["*"]},
    ]
    return {"SLIPWAY_TENANCY": json.dumps(rules)}


def test_a_modeldeployment_outside_the_tenancy_policy_is_forbidden_and_touches_nothing(
    start_operator, namespace, kubectl
):
    """The policy allows ``team-a.*``: a deployment of ``digits`` is InvalidSpec/Forbidden, no child, no mirror."""
    op = start_operator(namespace, env=tenancy_env(namespace))
    model_version(kubectl, "1", ["champion"])
    predictor(kubectl, "1")
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}]}})
    invalid = wait_until(
        lambda: (c := condition(md_status(kubectl), "InvalidSpec")) and c["status"] == "True" and c,
        what="InvalidSpec True",
    )
    assert invalid["reason"] == "Forbidden", invalid
    assert "spec.model.name" in invalid["message"] and "'digits'" in invalid["message"], invalid["message"]
    time.sleep(2)
    assert isvc_versions(kubectl) == set() and get(kubectl, "httproute", MODEL) is None
    assert get(kubectl, "hpa", f"{MODEL}-v1") is None
    kubectl("delete", "modeldeployments", "--all", "--timeout=30s")
    op.stop()


def test_a_trainingrun_outside_the_tenancy_policy_is_forbidden_before_mlflow_is_touched(
    start_operator, namespace, kubectl, mlflow_uri
):
    """Registering into another team's model, or logging to its experiment: Failed/Forbidden, no run, no Job."""
    from mlflow import MlflowClient

    op = start_operator(namespace, env=tenancy_env(namespace))
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    tag = uuid.uuid4().hex[:8]
    runs = {
        "steal-model": {"experiment": f"team-a/{tag}", "register": {"model": f"team-b.digits-{tag}", "alias": "x"}},
        "steal-experiment": {"experiment": f"team-b/{tag}"},
    }
    for name, spec in runs.items():
        body = {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": name},
            "spec": {"framework": "pytorch", "entrypoint": "digits_cnn", **spec},
        }
        kubectl("apply", "-f", "-", input=json.dumps(body))
    for name, field in (("steal-model", "spec.register.model"), ("steal-experiment", "spec.experiment")):
        status = wait_until(
            lambda n=name: (s := (get(kubectl, "trainingrun", n) or {}).get("status") or {}).get("phase") and s,
            what=f"{name} decided",
        )
        assert status["phase"] == "Failed", status
        invalid = condition(status, "InvalidSpec")
        assert invalid is not None and invalid["reason"] == "Forbidden" and field in invalid["message"], status
        assert not status.get("mlflowRunId"), "an MLflow run was created"
        assert get(kubectl, "job", name) is None
    assert client.get_experiment_by_name(f"team-b/{tag}") is None
    assert client.get_experiment_by_name(f"team-a/{tag}") is None, "nothing touched, not even the allowed experiment"
    kubectl("delete", "trainingruns", "--all", "--timeout=60s")
    op.stop()
