"""A canary inside a GPU budget on the real test bed: the operator's HPA bounds, the real HPA controller and scheduler.

A ModelDeployment serves 4 one-GPU replicas (``minReplicas = maxReplicas = 4``, ``nvidia.com/gpu:
1``) with ``strategy.canary.budget.gpus: 4``: the test bed's GPU node has exactly 4, so a canary on
top of stable could not schedule. The versions are registered in the test bed's MLflow and
followed through the alias ``champion``.

Everything is real: the operator writes the InferenceServices' and HPAs' bounds; KServe's
controller makes each InferenceService's predictor Deployment (one GPU per pod); the
kube-controller-manager's HPA controller scales the Deployments to those bounds (no metrics on the
test bed: it enforces min and max); the scheduler places the pods on the GPU node, where the local
kubelet runs them (storage initializer, then the model server); the garbage collector removes a
deleted InferenceService's Deployment.

The canary goes through 25/50/100 (pauses in between, promoted by the action annotation), then is
aborted: stable gets its bounds back. A watcher checks all along that no pod is ever unschedulable
(Pending for lack of GPUs) and that the pods never hold more than 4 GPUs.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_objects import ModelDeploymentReader, wait_for
from mlflow_models import log_iris_model, two_versions
from operator_fixture import StartOperator, start_operator

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))
from bed.addons.s3 import s3_credentials

pytestmark = pytest.mark.integration
__all__ = ["start_operator"]  # a fixture, imported for pytest

MD = "gpu"
GPUS = 4
ISVC_LABEL = "serving.kserve.io/inferenceservice"
HPA_SYNC = 90.0  # the HPA controller syncs every 15 s; a step moves stable, then the canary


@pytest.fixture(scope="module")
def logged_model(mlflow_uri: str) -> str:
    return log_iris_model(mlflow_uri, "slipway-gpu-budget", pip_requirements=None)


@pytest.fixture
def registry(mlflow_uri: str, logged_model: str) -> Iterator[tuple[Any, str]]:
    with two_versions(mlflow_uri, logged_model, "gpu") as registered:
        yield registered


class Cluster(ModelDeploymentReader):
    def __init__(self, kube_api: Any, namespace: str) -> None:
        from kubernetes import client

        super().__init__(kube_api, namespace, MD)
        self.autoscaling = client.AutoscalingV2Api(kube_api)
        self.unschedulable: list[str] = []
        self.most_gpus = 0

    def isvcs(self) -> dict[str, dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            "serving.kserve.io",
            "v1beta1",
            self.ns,
            "inferenceservices",
            label_selector=f"ml.slipway.dev/deployment={MD}",
        )["items"]
        return {i["metadata"]["labels"]["ml.slipway.dev/version"]: i for i in items}

    def hpa_bounds(self) -> dict[str, tuple[int, int]]:
        out = {}
        for h in self.autoscaling.list_namespaced_horizontal_pod_autoscaler(self.ns).items:
            version = h.metadata.labels.get("ml.slipway.dev/version")
            out[version] = (h.spec.min_replicas, h.spec.max_replicas)
        return out

    def pods(self) -> dict[str, int]:
        """Pods holding a GPU (not finished; terminating ones included) by version."""
        out: dict[str, int] = {}
        for p in self.core.list_namespaced_pod(self.ns, label_selector=ISVC_LABEL).items:
            if p.status.phase in ("Succeeded", "Failed"):
                continue
            version = p.metadata.labels["ml.slipway.dev/version"]
            out[version] = out.get(version, 0) + 1
        return out

    def watch(self, stop: threading.Event) -> None:
        """Until stopped: record any unschedulable pod and the most GPUs held at once."""
        while not stop.is_set():
            for p in self.core.list_namespaced_pod(self.ns).items:
                for c in p.status.conditions or []:
                    if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
                        self.unschedulable.append(f"{p.metadata.name}: {c.message}")
            self.most_gpus = max(self.most_gpus, sum(self.pods().values()))
            time.sleep(0.2)

    def action(self, name: str) -> None:
        self.custom.patch_namespaced_custom_object(
            "ml.slipway.dev", "v1alpha1", self.ns, "modeldeployments", MD,
            {"metadata": {"annotations": {"ml.slipway.dev/action": name}}},
        )  # fmt: skip

    def deploy(self, model: str) -> None:
        steps = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 100}, {"pause": {}}]
        self.create(
            {
                "model": {"name": model, "track": {"alias": "champion"}},
                "serving": {
                    "runtime": "slipway",
                    "allowPickle": True,  # the test's model is a scikit-learn pipeline (pickled)
                    "serviceAccountName": "models",  # KServe's storage initializer reads S3 with its Secret
                    # KServe's defaulter fills missing requests with 1 CPU / 2Gi: give both (docs/kserve.md)
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "1Gi"},
                        "limits": {"nvidia.com/gpu": 1, "cpu": "500m", "memory": "1Gi"},
                    },
                },
                "autoscaling": {"minReplicas": GPUS, "maxReplicas": GPUS},
                "strategy": {"canary": {"steps": steps, "budget": {"gpus": GPUS}, "progressDeadline": "5m"}},
                "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
            }
        )

    def settled(self, want: dict[str, int]) -> bool:
        """The HPAs, the InferenceServices and the pods all at ``want`` (version → replicas)."""
        isvcs = self.isvcs()
        bounds = self.hpa_bounds()
        return (
            self.pods() == want
            and {v: b for v, b in bounds.items() if v in isvcs} == {v: (n, n) for v, n in want.items()}
            and {v: (i["spec"]["predictor"]["minReplicas"], i["spec"]["predictor"]["maxReplicas"])
                 for v, i in isvcs.items()} == {v: (n, n) for v, n in want.items()}
        )  # fmt: skip


def test_a_canary_of_four_gpu_replicas_within_four_gpus(
    start_operator: StartOperator, testbed: Any, namespace: str, kube_api: Any, registry: tuple[Any, str]
):
    client, name = registry
    credentials = {"apiVersion": "v1", "kind": "List", "items": s3_credentials(testbed.state)}
    testbed.run_kubectl("apply", "-f", "-", input=json.dumps(credentials), namespace=namespace)
    cluster = Cluster(kube_api, namespace)
    start_operator(namespace, poll_seconds=1.0)
    stop = threading.Event()
    watcher = threading.Thread(target=cluster.watch, args=(stop,), daemon=True)
    watcher.start()
    try:
        cluster.deploy(name)
        wait_for("v1 on 4 GPUs", lambda: cluster.settled({"1": 4}), HPA_SYNC, 0.5)
        assert cluster.status()["phase"] == "Succeeded"

        client.set_registered_model_alias(name, "champion", "2")
        for weight, want in ((25, {"1": 3, "2": 1}), (50, {"1": 2, "2": 2}), (100, {"1": 1, "2": 3})):
            wait_for(
                f"paused at {weight} %",
                lambda w=weight: (s := cluster.status()).get("canaryWeight") == w and s.get("phase") == "Paused",
                HPA_SYNC,
                0.5,
            )
            wait_for(f"the split at {weight} %: {want}", lambda w=want: cluster.settled(w), HPA_SYNC, 0.5)
            if weight < 100:
                cluster.action("promote")

        cluster.action("abort")
        wait_for("rolled back", lambda: cluster.status().get("phase") == "RolledBack", HPA_SYNC, 0.5)
        wait_for("stable back on 4 GPUs", lambda: cluster.settled({"1": 4}), HPA_SYNC, 0.5)
        assert cluster.weights() == {"1": 100}
    finally:
        stop.set()
        watcher.join(timeout=10)
        cluster.delete()
    assert cluster.unschedulable == []
    assert cluster.most_gpus <= GPUS
    events = cluster.core.list_namespaced_event(namespace, field_selector="reason=FailedScheduling").items
    assert [e.message for e in events] == []
