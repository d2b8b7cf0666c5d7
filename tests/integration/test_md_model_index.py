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

import pytest
from kubectl_scenario import label, md_status, model_version, move_alias
from operator_process import OperatorProcess, wait_until

pytestmark = pytest.mark.integration

FRAUD = "Fraud_Detector"  # MLflow name; its ModelVersions are named and labelled "fraud-detector"
CHURN = "churn"
PROMPT = 12.0  # well under the 30 s resync of a Succeeded ModelDeployment


@pytest.fixture
def operator(testbed, namespace, slipway_crds, tmp_path, kubectl) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(testbed.kubeconfig, namespace, tmp_path).start()
    yield proc
    if not proc.alive():
        proc.start()
    kubectl("delete", "modeldeployments", "--all", "--timeout=30s", check=False)
    proc.stop()
    print(proc.log_tail(80))


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
    st = md_status(kubectl, name)
    return st.get("phase") == "Succeeded" and st.get("stableVersion") == version


def passes_logged(op: OperatorProcess, since: int) -> list[str]:
    """The ModelDeployments the operator ran a pass on because a ModelVersion changed (log lines after ``since``)."""
    text = op.log_path.read_text(errors="replace")[since:]
    return re.findall(r"changed: a pass on ModelDeployment (\S+)", text)


def test_alias_move_drives_only_the_deployments_of_that_model_and_follows_a_switch(kubectl, operator):
    for model in (FRAUD, CHURN):
        model_version(kubectl, "1", model=model, aliases=["champion"])
        model_version(kubectl, "2", model=model, aliases=[])
    deployment(kubectl, "fraud-a", FRAUD)
    deployment(kubectl, "fraud-b", FRAUD)
    deployment(kubectl, "churn", CHURN)
    for name in ("fraud-a", "fraud-b", "churn"):
        wait_until(lambda name=name: settled(kubectl, name, "1"), what=f"{name} Succeeded on v1")

    mark = operator.log_path.stat().st_size
    move_alias(kubectl, "1", "2", model=FRAUD)
    for name in ("fraud-a", "fraud-b"):
        wait_until(lambda name=name: md_status(kubectl, name).get("trackedVersion") == "2", PROMPT, f"{name} on v2")
    for name in ("fraud-a", "fraud-b"):
        wait_until(lambda name=name: settled(kubectl, name, "2"), what=f"{name} Succeeded on v2")
    driven = passes_logged(operator, mark)
    assert {"fraud-a", "fraud-b"} <= set(driven), driven
    assert "churn" not in driven, driven
    assert md_status(kubectl, "churn")["trackedVersion"] == "1"

    # "churn" now tracks the fraud model: the index moves it to that model's key and out of its old one.
    patch = {"spec": {"model": {"name": FRAUD}}}
    kubectl("patch", "modeldeployment", "churn", "--type=merge", "-p", json.dumps(patch))
    wait_until(lambda: settled(kubectl, "churn", "2"), what="churn Succeeded on the fraud model's v2")

    mark = operator.log_path.stat().st_size
    move_alias(kubectl, "1", "2", model=CHURN)
    move_alias(kubectl, "2", "1", model=FRAUD)
    for name in ("fraud-a", "fraud-b", "churn"):
        back = f"{name} back on v1"
        wait_until(lambda name=name: md_status(kubectl, name).get("trackedVersion") == "1", PROMPT, back)
    driven = passes_logged(operator, mark)
    assert set(driven) == {"fraud-a", "fraud-b", "churn"}, driven
    # the churn model's own moves drove nothing: the only passes logged came from the fraud model's ModelVersions
    fraud_lines = re.findall(r"model (\S+) changed: a pass", operator.log_path.read_text(errors="replace")[mark:])
    assert set(fraud_lines) == {label(FRAUD)}, fraud_lines
