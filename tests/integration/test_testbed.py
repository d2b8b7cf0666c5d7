"""The test bed itself: each real component does its job (scheduling, jobs, CRD validation, GC, MLflow, alerts)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
import yaml
from operator_process import wait_until

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    return wait_until(predicate, timeout, what, 0.25)


def get_json(kubectl, *args: str) -> dict[str, Any]:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def test_deployment_pods_become_running_through_scheduler_and_kwok(kubectl, namespace):
    kubectl("create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=3")

    def running() -> bool:
        pods = get_json(kubectl, "pods", "-l", "app=web")["items"]
        return len(pods) == 3 and all(p["status"].get("phase") == "Running" and p["spec"].get("nodeName") for p in pods)

    wait_for(running, what="3 Running pods")
    dep = wait_for(
        lambda: (d := get_json(kubectl, "deployment", "web"))["status"].get("readyReplicas") == 3 and d,
        what="deployment ready",
    )
    assert dep["status"]["availableReplicas"] == 3


def test_fake_nodes_heartbeat_through_leases_kwok_keeps_renewing(kubectl):
    """The node-lifecycle controller sees the fake nodes alive: every node's Lease is renewed, as a kubelet's is.

    Without leases the nodes' only heartbeat was a status write every 600-1210 s, and ten minutes
    after start-up every pod on the test bed was marked NotReady for good.
    """
    nodes = {n["metadata"]["name"] for n in get_json(kubectl, "nodes", "-l", "type=kwok")["items"]}

    def renewals() -> dict[str, str]:
        leases = get_json(kubectl, "leases", "-n", "kube-node-lease")["items"]
        return {x["metadata"]["name"]: x["spec"].get("renewTime", "") for x in leases}

    first = wait_for(lambda: (r := renewals()) and nodes <= set(r) and r, what="a Lease per fake node")
    wait_for(lambda: all(renewals()[n] > first[n] for n in nodes), timeout=60, what="every Lease renewed")
    lease = get_json(kubectl, "lease", "-n", "kube-node-lease", sorted(nodes)[0])
    assert lease["spec"]["leaseDurationSeconds"] == 40


def test_job_completes_through_the_real_job_controller(kubectl, namespace):
    kubectl("create", "job", "train", "--image=registry.invalid/train:1")
    job = wait_for(
        lambda: (j := get_json(kubectl, "job", "train"))["status"].get("succeeded") == 1 and j,
        what="job succeeded",
    )
    conditions = {c["type"]: c["status"] for c in job["status"]["conditions"]}
    assert conditions.get("Complete") == "True"
    pods = get_json(kubectl, "pods", "-l", "job-name=train")["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]


def test_gpu_pod_lands_on_the_gpu_node(kubectl, namespace):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "registry.invalid/cuda:1",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ]
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    got = wait_for(
        lambda: (p := get_json(kubectl, "pod", "gpu"))["status"].get("phase") == "Running" and p,
        what="GPU pod running",
    )
    node = get_json(kubectl, "node", got["spec"]["nodeName"], "-n", "default")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"


def test_rbac_is_enforced(kubectl, namespace):
    kubectl("create", "serviceaccount", "nobody")
    who = f"--as=system:serviceaccount:{namespace}:nobody"
    assert kubectl("auth", "can-i", "list", "pods", who, check=False).stdout.strip() == "no"
    kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods")
    kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
    )
    assert kubectl("auth", "can-i", "list", "pods", who).stdout.strip() == "yes"


def _isvc(name: str) -> dict[str, Any]:
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
    )
    from kubernetes.client import ApiClient, V1ObjectMeta

    isvc = V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1",
        kind="InferenceService",
        metadata=V1ObjectMeta(
            name=name,
            annotations={
                "serving.kserve.io/deploymentMode": "Standard",
                "serving.kserve.io/autoscalerClass": "external",
            },
        ),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                min_replicas=1,
                model=V1beta1ModelSpec(
                    model_format=V1beta1ModelFormat(name="mlflow"),
                    storage_uri="s3://models/digits/1",
                ),
            )
        ),
    )
    return ApiClient().sanitize_for_serialization(isvc)  # type: ignore[no-any-return]


def test_inferenceservice_is_validated_by_the_real_kserve_crd(kubectl, namespace):
    good = _isvc("digits-v1")
    kubectl("create", "-f", "-", input=json.dumps(good))
    stored = get_json(kubectl, "inferenceservice", "digits-v1")
    assert stored["spec"]["predictor"]["model"]["storageUri"] == "s3://models/digits/1"

    bad = _isvc("digits-v2")
    bad["spec"]["predictor"]["minReplicas"] = "two"
    proc = kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0
    # KServe's mutating webhook runs before the schema check and refuses the type first, naming the field.
    assert "inferenceservice.kserve-webhook-server.defaulter" in proc.stderr
    assert "spec.predictor.ComponentExtensionSpec.minReplicas of type int32" in proc.stderr


def test_httproute_is_validated_by_the_real_gateway_api_crd(kubectl, namespace):
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "digits"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "digits-v1", "port": 80, "weight": 90},
                        {"name": "digits-v2", "port": 80, "weight": 10},
                    ]
                }
            ],
        },
    }
    kubectl("create", "-f", "-", input=json.dumps(route))
    route["metadata"]["name"] = "bad"
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = -5
    proc = kubectl("create", "-f", "-", input=json.dumps(route), check=False)
    assert proc.returncode != 0 and "weight" in proc.stderr


def test_deleting_an_owner_garbage_collects_its_children(kubectl, namespace):
    owner = json.loads(kubectl("create", "configmap", "owner", "-o", "json").stdout)
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    kubectl("create", "-f", "-", input=json.dumps(child))
    kubectl("delete", "configmap", "owner")
    wait_for(
        lambda: kubectl("get", "configmap", "child", check=False).returncode != 0,
        what="child garbage-collected",
    )


def test_mlflow_answers_and_registers_a_model(mlflow_uri, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(mlflow_uri)
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=200).fit(x, y)
    mlflow.set_experiment("testbed")
    with mlflow.start_run() as run:
        mlflow.log_metric("accuracy", float(model.score(x, y)))
        mlflow.sklearn.log_model(model, name="model", input_example=x[:2])
    client = MlflowClient(mlflow_uri)
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "testbed-iris")
    client.set_registered_model_alias("testbed-iris", "champion", version.version)
    got = client.get_model_version_by_alias("testbed-iris", "champion")
    assert got.version == version.version and got.run_id == run.info.run_id
    assert client.get_run(run.info.run_id).data.metrics["accuracy"] > 0.9


class _Receiver(BaseHTTPRequestHandler):
    payloads: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).payloads.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        text = b"# TYPE testbed_probe_value gauge\ntestbed_probe_value 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Receiver.payloads = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", _Receiver.payloads
    server.shutdown()


def test_prometheus_scrapes_evaluates_and_alertmanager_delivers(testbed, receiver):
    import urllib.request

    address, payloads = receiver
    testbed.set_alert_webhooks([f"http://{address}/alerts"])
    testbed.add_scrape_target("testbed-probe", address, {"namespace": "ns1", "modeldeployment": "digits"})
    rules = {
        "groups": [
            {
                "name": "testbed",
                "rules": [
                    {
                        "alert": "TestbedProbeHigh",
                        "expr": 'testbed_probe_value{job="testbed-probe"} > 0',
                        "for": "0s",
                        "labels": {"severity": "critical"},
                        "annotations": {"summary": "probe is high"},
                    }
                ],
            }
        ]
    }
    testbed.set_rules("testbed-probe", yaml.safe_dump(rules))

    def scraped() -> bool:
        url = f"{testbed.prometheus_url}/api/v1/query?query=testbed_probe_value"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(json.load(resp)["data"]["result"])

    wait_for(scraped, what="the target scraped")

    def delivered() -> dict[str, Any] | None:
        for p in payloads:
            for alert in p["alerts"]:
                if alert["labels"].get("alertname") == "TestbedProbeHigh" and alert["status"] == "firing":
                    return p
        return None

    payload = wait_for(delivered, timeout=90, what="the alert delivered to the webhook")
    assert payload["version"] == "4"
    alert = payload["alerts"][0]
    assert alert["labels"]["modeldeployment"] == "digits" and alert["labels"]["namespace"] == "ns1"
    testbed.set_rules("testbed-probe", "groups: []\n")
