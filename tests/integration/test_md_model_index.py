"""ModelVersion changes reach ModelDeployments through the operator's in-memory index by model, on the real test bed.

A ModelVersion event looks its model's ModelDeployments up in a kopf index (no list of every
ModelDeployment per event). These tests check the lookup's key (namespace and the sanitised model
name the ModelVersion is labelled with), that only that model's deployments get a pass, and that
the index follows a ModelDeployment switching models. A Succeeded ModelDeployment is otherwise
looked at again only every 30 s, so a rollout starting within a few seconds of an alias move was
started by the ModelVersion event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from operator_process import OperatorProcess, wait_until

pytestmark = pytest.mark.integration

FRAUD = "Fraud_Detector"  # MLflow name; its ModelVersions are named and labelled "fraud-detector"
CHURN = "churn"
PROMPT = 12.0  # well under the 30 s resync of a Succeeded ModelDeployment


def label(model: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", model.lower()).strip("-.")


@pytest.fixture
def operator(testbed, namespace, slipway_crds, tmp_path, kubectl) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(testbed.kubeconfig, namespace, tmp_path).start()
    yield proc
    if not proc.alive():
        proc.start()
    kubectl("delete", "modeldeployments", "--all", "--timeout=30s", check=False)
    proc.stop()
    print(proc.log_tail(80))


def get(kubectl, *args: str) -> dict[str, Any] | None:
    out = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def status(kubectl, name: str) -> dict[str, Any]:
    return (get(kubectl, "modeldeployment", name) or {}).get("status") or {}


def model_version(kubectl, model: str, version: str, aliases: list[str]) -> None:
    obj = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {
            "name": f"{label(model)}-v{version}",
            "labels": {"ml.slipway.dev/model": label(model), "ml.slipway.dev/version": version},
        },
        "spec": {"model": model, "version": version},
    }
    kubectl("apply", "-f", "-", input=json.dumps(obj))
    set_aliases(kubectl, model, version, aliases)


def set_aliases(kubectl, model: str, version: str, aliases: list[str]) -> None:
    st = {"aliases": aliases, "stage": "None", "storageUri": f"s3://models/{label(model)}/{version}"}
    name = f"{label(model)}-v{version}"
    kubectl("patch", "modelversion", name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": st}))


def move_alias(kubectl, model: str, old: str, new: str) -> None:
    set_aliases(kubectl, model, old, [])
    set_aliases(kubectl, model, new, ["champion"])


def deployment(kubectl, name: str, model: str) -> None:
    obj = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": model, "track": {"alias": "champion"}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            "strategy": {"canary": {"steps": [{"setWeight": 50}]}},
            "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(obj))
    for version in ("1", "2"):
        kubectl("create", "deployment", f"{name}-v{version}-predictor", "--image=registry.invalid/serving:1")


def settled(kubectl, name: str, version: str) -> bool:
    st = status(kubectl, name)
    return st.get("phase") == "Succeeded" and st.get("stableVersion") == version


def passes_logged(op: OperatorProcess, since: int) -> list[str]:
    """The ModelDeployments the operator ran a pass on because a ModelVersion changed (log lines after ``since``)."""
    text = op.log_path.read_text(errors="replace")[since:]
    return re.findall(r"changed: a pass on ModelDeployment (\S+)", text)


def test_alias_move_drives_only_the_deployments_of_that_model_and_follows_a_switch(kubectl, operator):
    for model in (FRAUD, CHURN):
        model_version(kubectl, model, "1", ["champion"])
        model_version(kubectl, model, "2", [])
    deployment(kubectl, "fraud-a", FRAUD)
    deployment(kubectl, "fraud-b", FRAUD)
    deployment(kubectl, "churn", CHURN)
    for name in ("fraud-a", "fraud-b", "churn"):
        wait_until(lambda name=name: settled(kubectl, name, "1"), what=f"{name} Succeeded on v1")

    mark = operator.log_path.stat().st_size
    move_alias(kubectl, FRAUD, "1", "2")
    for name in ("fraud-a", "fraud-b"):
        wait_until(lambda name=name: status(kubectl, name).get("trackedVersion") == "2", PROMPT, f"{name} on v2")
    for name in ("fraud-a", "fraud-b"):
        wait_until(lambda name=name: settled(kubectl, name, "2"), what=f"{name} Succeeded on v2")
    driven = passes_logged(operator, mark)
    assert {"fraud-a", "fraud-b"} <= set(driven), driven
    assert "churn" not in driven, driven
    assert status(kubectl, "churn")["trackedVersion"] == "1"

    # "churn" now tracks the fraud model: the index moves it to that model's key and out of its old one.
    patch = {"spec": {"model": {"name": FRAUD}}}
    kubectl("patch", "modeldeployment", "churn", "--type=merge", "-p", json.dumps(patch))
    wait_until(lambda: settled(kubectl, "churn", "2"), what="churn Succeeded on the fraud model's v2")

    mark = operator.log_path.stat().st_size
    move_alias(kubectl, CHURN, "1", "2")
    move_alias(kubectl, FRAUD, "2", "1")
    for name in ("fraud-a", "fraud-b", "churn"):
        wait_until(lambda name=name: status(kubectl, name).get("trackedVersion") == "1", PROMPT, f"{name} back on v1")
    driven = passes_logged(operator, mark)
    assert set(driven) == {"fraud-a", "fraud-b", "churn"}, driven
    # the churn model's own moves drove nothing: the only passes logged came from the fraud model's ModelVersions
    fraud_lines = re.findall(r"model (\S+) changed: a pass", operator.log_path.read_text(errors="replace")[mark:])
    assert set(fraud_lines) == {label(FRAUD)}, fraud_lines
