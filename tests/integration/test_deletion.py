"""Deleting without the operator (issue #16, finding 5): no finalizer of ours, children go by owner references.

The operator puts no finalizer on ModelDeployments and TrainingRuns (no kopf timer, no deletion
handler), so with the operator gone ``kubectl delete`` of a ModelDeployment, of an unfinished
TrainingRun, or of a namespace holding both completes within seconds; the test bed's
kube-controller-manager (garbage collector, namespace controller) and KServe's controller (its
own InferenceService finalizer) do the rest. Objects the previous version finalized carry kopf's
finalizer: the operator takes it off once it sees them, deleting or not.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from kubectl_scenario import MODEL, deployment, first_version_up, get, isvc_versions, model_version, predictor
from operator_fixture import StartOperator, start_operator
from operator_process import wait_until

pytestmark = pytest.mark.integration

__all__ = ["start_operator"]  # the fixture, imported for pytest

KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
RUN = "sleeper"
DELETE_SECONDS = 10
"""A ModelDeployment's or TrainingRun's delete must complete within this, with no operator running."""


def sleeping_run(kubectl, name: str = RUN, **meta: Any) -> None:
    """A TrainingRun whose Job runs for ten minutes: unfinished while the test runs."""
    body = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, **meta},
        "spec": {
            "framework": "custom",
            "command": ["python", "-c", "import time; time.sleep(600)"],
            "experiment": f"slipway-it-{uuid.uuid4().hex[:8]}",
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(body))


def run_phase(kubectl, name: str = RUN) -> str | None:
    return ((get(kubectl, "trainingrun", name) or {}).get("status") or {}).get("phase")


def job_of(kubectl, name: str = RUN) -> list[dict[str, Any]]:
    return (get(kubectl, "jobs", "-l", f"ml.slipway.dev/trainingrun={name}") or {"items": []})["items"]


def both_running(kubectl) -> None:
    """A ModelDeployment serving v1 (its InferenceService, HPA and route applied) and a TrainingRun whose Job runs."""
    model_version(kubectl, "1", ["champion"])
    predictor(kubectl, "1")
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}]}})
    sleeping_run(kubectl)
    first_version_up(kubectl)
    wait_until(lambda: run_phase(kubectl) == "Running" and job_of(kubectl), timeout=120, what="the run's Job running")
    for obj in (get(kubectl, "modeldeployment", MODEL), get(kubectl, "trainingrun", RUN)):
        assert obj is not None and not obj["metadata"].get("finalizers"), "the operator put no finalizer"


def timed_delete(kubectl, *what: str, timeout: int = DELETE_SECONDS) -> float:
    """``kubectl delete`` (waiting for the object to be gone); the seconds it took."""
    start = time.monotonic()
    out = kubectl("delete", *what, f"--timeout={timeout}s", check=False)
    took = time.monotonic() - start
    assert out.returncode == 0, f"kubectl delete {' '.join(what)} did not complete in {timeout}s: {out.stderr}"
    print(f"kubectl delete {' '.join(what)}: {took:.1f}s")
    return took


def test_delete_a_deployment_and_an_unfinished_run_without_the_operator(
    start_operator: StartOperator, namespace: str, kubectl
) -> None:
    op = start_operator(namespace)
    both_running(kubectl)
    op.kill()  # the operator is gone (no shutdown of any kind)

    timed_delete(kubectl, "modeldeployment", MODEL)
    wait_until(
        lambda: not isvc_versions(kubectl) and get(kubectl, "httproute", MODEL) is None,
        timeout=60,
        what="the InferenceService and route garbage-collected",
    )
    wait_until(lambda: get(kubectl, "hpa", f"{MODEL}-v1") is None, timeout=30, what="the HPA garbage-collected")

    assert run_phase(kubectl) == "Running", "the run is unfinished"
    timed_delete(kubectl, "trainingrun", RUN)
    wait_until(lambda: not job_of(kubectl), timeout=60, what="the Job garbage-collected")


def test_delete_a_namespace_holding_both_without_the_operator(
    start_operator: StartOperator, namespace: str, kubectl
) -> None:
    op = start_operator(namespace)
    both_running(kubectl)
    op.kill()
    timed_delete(kubectl, "namespace", namespace, timeout=90)
    assert get(kubectl, "namespace", namespace) is None


def test_the_previous_versions_finalizer_comes_off(start_operator: StartOperator, namespace: str, kubectl) -> None:
    """Objects a timer-based operator finalized (one of them already being deleted) lose kopf's finalizer."""
    model_version(kubectl, "1", ["champion"])
    predictor(kubectl, "1")
    deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}]}})
    sleeping_run(kubectl)
    sleeping_run(kubectl, "doomed")
    for kind, name in (("modeldeployment", MODEL), ("trainingrun", RUN), ("trainingrun", "doomed")):
        patch = json.dumps({"metadata": {"finalizers": [KOPF_FINALIZER]}})
        kubectl("patch", kind, name, "--type=merge", "-p", patch)
    kubectl("delete", "trainingrun", "doomed", "--wait=false")
    time.sleep(2)
    doomed = get(kubectl, "trainingrun", "doomed")
    assert doomed is not None and doomed["metadata"].get("deletionTimestamp"), "held by the old finalizer"

    start_operator(namespace)

    def finalizers(kind: str, name: str) -> list[str] | None:
        obj = get(kubectl, kind, name)
        return None if obj is None else list(obj["metadata"].get("finalizers") or [])

    wait_until(lambda: finalizers("trainingrun", "doomed") is None, timeout=30, what="the deleting run released")
    wait_until(lambda: finalizers("modeldeployment", MODEL) == [], timeout=30, what="the deployment's finalizer off")
    wait_until(lambda: finalizers("trainingrun", RUN) == [], timeout=30, what="the run's finalizer off")
    first_version_up(kubectl)  # and it is still driven
