"""KServe's own controller-manager on the test bed: its webhooks answer through the API server, and it reconciles
the InferenceServices the operator builds into the predictor Deployment and Service, whose pods get KServe's
storage initializer — which downloads the registered model from the test bed's S3 server (versitygw).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from operator_process import wait_until

from bed.addons.kserve import manager_running, module_dir
from bed.addons.s3 import s3_credentials, s3_env
from slipway.api.modeldeployment import ModelDeployment
from slipway.builders.hpa import build_hpa
from slipway.builders.inferenceservice import build_inference_service
from slipway.builders.names import predictor_name

pytestmark = pytest.mark.integration

ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    return wait_until(predicate, timeout, what, 0.25)


def get(kubectl, *args: str) -> dict[str, Any] | None:
    out = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def model_deployment(namespace: str, **serving: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "digits", "namespace": namespace, "uid": "0b1c2d3e-0000-4000-8000-000000000001"},
            "spec": {
                "model": {"name": "digits", "track": {"alias": "champion"}},
                "serving": {"runtime": "slipway", **serving},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
                "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
            },
        }
    )


def without_owner(manifest: dict[str, Any]) -> dict[str, Any]:
    """The operator's manifest, minus the owner reference to a ModelDeployment this test does not create."""
    manifest["metadata"].pop("ownerReferences", None)
    return manifest


def apply(kubectl, manifest: dict[str, Any], manager: str = "slipway") -> subprocess.CompletedProcess[str]:
    return kubectl(
        "apply", "--server-side", f"--field-manager={manager}", "-f", "-", input=json.dumps(manifest), check=False
    )


def test_the_manager_runs_and_serves_metrics(testbed):
    assert manager_running(testbed.state)
    with urllib.request.urlopen(testbed.state.urls["kserve-metrics"], timeout=5) as resp:
        body = resp.read().decode()
    assert 'controller="inferenceservice"' in body


def test_the_webhooks_are_registered_on_loopback(testbed):
    port = testbed.state.ports["kserve-webhook"]
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        out = json.loads(testbed.run_kubectl("get", kind, "-o", "json").stdout)
        urls = [h["clientConfig"]["url"] for c in out["items"] for h in c["webhooks"] if "kserve" in h["name"]]
        assert urls and all(u.startswith(f"https://127.0.0.1:{port}/") for u in urls), urls
    pods = json.loads(testbed.run_kubectl("get", "mutatingwebhookconfiguration", "-o", "json").stdout)
    paths = {h["clientConfig"]["url"].split(str(port), 1)[1] for c in pods["items"] for h in c["webhooks"]}
    assert {"/mutate-pods", "/mutate-serving-kserve-io-v1beta1-inferenceservice"} <= paths


def test_the_validator_rejects_a_bad_inferenceservice_through_the_api_server(kubectl, namespace):
    isvc = without_owner(build_inference_service(model_deployment(namespace), "1", "s3://mlflow/artifacts/1/model"))
    isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] = "bogus"
    out = apply(kubectl, isvc)
    assert out.returncode != 0
    assert "admission webhook" in out.stderr and "inferenceservice.kserve-webhook-server.validator" in out.stderr
    assert "bogus" in out.stderr
    assert get(kubectl, "inferenceservice", isvc["metadata"]["name"]) is None


def test_the_defaulter_adds_resources_and_a_second_apply_changes_nothing(kubectl, namespace):
    """KServe's defaulter fills in the container's resources (inferenceService.resource of its config); re-applying the
    operator's manifest neither fights it nor moves the generation (the applied-children cache relies on that)."""
    isvc = without_owner(build_inference_service(model_deployment(namespace), "1", "s3://mlflow/artifacts/1/model"))
    assert apply(kubectl, isvc).returncode == 0
    live = get(kubectl, "inferenceservice", isvc["metadata"]["name"])
    assert live is not None
    container = live["spec"]["predictor"]["containers"][0]
    assert container["resources"] == {
        "limits": {"cpu": "1", "memory": "2Gi"},
        "requests": {"cpu": "1", "memory": "2Gi"},
    }
    generation = live["metadata"]["generation"]
    again = apply(kubectl, isvc)
    assert again.returncode == 0, again.stderr
    assert get(kubectl, "inferenceservice", isvc["metadata"]["name"])["metadata"]["generation"] == generation


def test_kserve_reconciles_the_operators_inferenceservice_into_deployment_and_service(kubectl, namespace):
    md = model_deployment(namespace)
    isvc = without_owner(build_inference_service(md, "3", "s3://mlflow/artifacts/1/abc/artifacts/model"))
    assert apply(kubectl, isvc).returncode == 0
    name = predictor_name("digits", "3")
    dep = wait_for(lambda: get(kubectl, "deployment", name), 60, "the predictor Deployment")
    svc = wait_for(lambda: get(kubectl, "service", name), 60, "the predictor Service")
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner.get("controller")) == ("InferenceService", "digits-v3", True)
    assert svc["metadata"]["ownerReferences"][0]["name"] == "digits-v3"
    assert dep["spec"]["replicas"] == 1
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["serving.kserve.io/inferenceservice"] == "digits-v3"
    assert labels["app"] == "isvc.digits-v3-predictor"
    assert labels["component"] == "predictor"
    assert labels["ml.slipway.dev/version"] == "3"
    assert labels["ml.slipway.dev/deployment"] == "digits"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["internal.serving.kserve.io/storage-initializer-sourceuri"] == (
        "s3://mlflow/artifacts/1/abc/artifacts/model"
    )
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "slipway_serving"]
    assert container["args"][:2] == ["--model-uri", "/mnt/models"]
    assert svc["spec"]["selector"] == {"app": "isvc.digits-v3-predictor"}
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(80, 8080)]
    # autoscalerClass external: KServe leaves scaling to the operator's HPA, which names the same Deployment.
    assert get(kubectl, "hpa", name) is None
    assert build_hpa(md, "3")["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]

    # The pod KServe's pod mutator admitted: storage initializer injected, scrape annotations kept on 8080.
    pod = wait_for(lambda: (p := get(kubectl, "pods", "-l", "serving.kserve.io/inferenceservice=digits-v3")) and
                   p["items"] and p["items"][0], 60, "the predictor pod")  # fmt: skip
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    (init,) = pod["spec"]["initContainers"]
    assert (init["name"], init["args"]) == (
        "storage-initializer",
        ["s3://mlflow/artifacts/1/abc/artifacts/model", "/mnt/models"],
    )
    assert init["image"] == "kserve/storage-initializer:latest"
    (main,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["STORAGE_URI"] == "/mnt/models"  # rewritten: the model is local by the time the server starts
    assert env["INFERENCE_SERVICE_NAME"] == "digits-v3"
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/mnt/models"]["name"] == "kserve-provision-location" and mounts["/mnt/models"]["readOnly"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["kserve-provision-location"] == {"name": "kserve-provision-location", "emptyDir": {}}


def test_kserve_conditions_follow_the_predictor_deployment(kubectl, namespace):
    isvc = without_owner(build_inference_service(model_deployment(namespace), "4", "s3://mlflow/artifacts/4/model"))
    assert apply(kubectl, isvc).returncode == 0

    def conditions() -> dict[str, str]:
        live = get(kubectl, "inferenceservice", "digits-v4") or {}
        return {c["type"]: c["status"] for c in (live.get("status") or {}).get("conditions") or []}

    seen = wait_for(lambda: (c := conditions()) and "PredictorReady" in c and c, 60, "KServe's conditions")
    assert {"IngressReady", "PredictorReady", "Ready", "Stopped"} <= set(seen)
    live = get(kubectl, "inferenceservice", "digits-v4")
    assert live["metadata"]["finalizers"] == ["inferenceservice.finalizers"]
    assert live["status"]["address"]["url"] == f"http://digits-v4-predictor.{namespace}.svc.cluster.local"
    assert (get(kubectl, "ingress", "digits-v4") or {}).get("kind") is None  # no Ingress: Slipway owns the route
    assert get(kubectl, "httproute", "digits-v4") is None


def _s3_credentials(kubectl, testbed) -> str:
    """The test bed's Secret and ServiceAccount KServe takes S3 credentials from; returns the ServiceAccount."""
    objects = s3_credentials(testbed.state, "models")
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    return "models"


def _resolve_env(kubectl, env: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as a kubelet resolves it (values, and secretKeyRef from the Secret)."""
    import base64

    out = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            secret = get(kubectl, "secret", ref["name"])
            assert secret is not None
            out[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return out


def test_the_injected_storage_initializer_downloads_the_registered_model_from_s3(
    kubectl, namespace, testbed, mlflow_uri, tmp_path
):
    """A model logged through MLflow lands in versitygw; the operator resolves it to s3://; KServe injects its storage
    initializer into the predictor pod; run as that container's command line (the image's entrypoint is KServe's
    ``initializer-entrypoint``, from the same module), it downloads the model."""
    import mlflow

    from slipway.clients.mlflow import MlflowRegistry

    model = f"kserve-s3-{namespace}"
    mlflow.set_tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient()
    with mlflow.start_run():
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
        (tmp_path / "model" / "weights.bin").write_bytes(os.urandom(4096))
        mlflow.log_artifacts(str(tmp_path / "model"), artifact_path="model")
        run_id = mlflow.active_run().info.run_id
    client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id).version

    registry = MlflowRegistry(mlflow_uri, artifacts_destination=testbed.state.urls["mlflow-artifacts"])
    try:
        import asyncio

        record = asyncio.run(registry.version(model, str(version)))
    finally:
        registry.close()
    assert record.storage_uri is not None and record.storage_uri.startswith("s3://mlflow/artifacts/"), record

    sa = _s3_credentials(kubectl, testbed)
    md = model_deployment(namespace, serviceAccountName=sa)
    isvc = without_owner(build_inference_service(md, str(version), record.storage_uri))
    assert isvc["spec"]["predictor"]["serviceAccountName"] == sa
    assert apply(kubectl, isvc).returncode == 0

    def pod() -> dict[str, Any] | None:
        pods = get(kubectl, "pods", "-l", f"serving.kserve.io/inferenceservice={isvc['metadata']['name']}")
        return (pods or {}).get("items", [None])[0] if (pods or {}).get("items") else None

    p = wait_for(pod, 90, "the predictor pod")
    (init,) = p["spec"]["initContainers"]
    assert init["name"] == "storage-initializer"
    assert init["args"] == [record.storage_uri, "/mnt/models"]
    env = _resolve_env(kubectl, init.get("env") or [])
    assert env["S3_ENDPOINT"] == s3_env(testbed.state)["MLFLOW_S3_ENDPOINT_URL"].removeprefix("http://")
    assert env["S3_USE_HTTPS"] == "0"
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    (main,) = p["spec"]["containers"]
    assert {m["mountPath"]: m["name"] for m in main["volumeMounts"]}["/mnt/models"] == mounts["/mnt/models"]

    # Run it as the local kubelet would: the image's entrypoint with the container's args, /mnt/models a local folder.
    entrypoint = module_dir() / "python/storage-initializer/scripts/initializer-entrypoint"
    dest = tmp_path / "mnt-models"
    args = [a.replace("/mnt/models", str(dest)) for a in init["args"]]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    proc = subprocess.run(
        [sys.executable, str(entrypoint), *args], env={**run_env, **env}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (dest / "MLmodel").read_text() == "flavors: {}\n"
    assert (dest / "weights.bin").read_bytes() == (tmp_path / "model" / "weights.bin").read_bytes()
