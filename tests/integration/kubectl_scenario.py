"""The digits ModelDeployment scenario driven through kubectl, shared by the integration tests.

ModelVersions as the registry sync writes them (status through the subresource), the predictor
Deployments KServe's controller would create (kwok runs their pods), the ModelDeployment, and
readers of its status and route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from kube_objects import weights_of
from operator_process import OperatorProcess, wait_until

MODEL = "digits"


def label(model: str) -> str:
    """The object-name form of an MLflow model name, as the operator labels its ModelVersions."""
    return re.sub(r"[^a-z0-9.-]+", "-", model.lower()).strip("-.")


@pytest.fixture
def operator(testbed, namespace, slipway_crds, tmp_path, kubectl) -> Iterator[OperatorProcess]:
    """The operator on the test's namespace (with the test bed's Prometheus); afterwards the ModelDeployment's
    status and the operator's log are printed and the ModelDeployments deleted while it runs."""
    proc = OperatorProcess(testbed.kubeconfig, namespace, tmp_path, testbed.prometheus_url).start()
    yield proc
    print(json.dumps(md_status(kubectl), indent=1))
    stop_after_deleting_deployments(kubectl, proc)
    print(proc.log_tail(120))


def stop_after_deleting_deployments(kubectl, proc: OperatorProcess) -> None:
    """Delete the ModelDeployments (so that the operator sees them go), then stop the operator."""
    if not proc.alive():
        proc.start()
    kubectl("delete", "modeldeployments", "--all", "--timeout=30s", check=False)
    proc.stop()


def get(kubectl, *args: str) -> dict[str, Any] | None:
    out = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def forbid(kubectl, name: str, resource: str) -> None:
    """A ResourceQuota allowing none of ``resource`` (``count/jobs.batch``…), once the quota controller counted it."""
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": {resource: "0"}}}
    kubectl("apply", "-f", "-", input=json.dumps(quota))
    wait_until(lambda: ((get(kubectl, "resourcequota", name) or {}).get("status") or {}).get("hard"), what="quota")


def md_status(kubectl, name: str = MODEL) -> dict[str, Any]:
    return (get(kubectl, "modeldeployment", name) or {}).get("status") or {}


def route_weights(kubectl, name: str = MODEL) -> dict[str, int]:
    return weights_of(get(kubectl, "httproute", name), name)


def wait_route(kubectl, weights: dict[str, int], name: str = MODEL, timeout: float = 15) -> None:
    """Until the route carries these weights: a pass writes its status first, then the route (ms later)."""
    wait_until(lambda: route_weights(kubectl, name) == weights, timeout=timeout, what=f"route weights {weights}")


def isvc_versions(kubectl, name: str = MODEL) -> set[str]:
    items = get(kubectl, "inferenceservices", "-l", f"ml.slipway.dev/deployment={name}") or {"items": []}
    return {i["metadata"]["labels"]["ml.slipway.dev/version"] for i in items["items"]}


def model_version(kubectl, version: str, aliases: list[str], *, storage: bool = True, model: str = MODEL) -> None:
    """A ModelVersion as the registry sync creates it; its status set through the status subresource."""
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
    set_aliases(kubectl, version, aliases, storage=storage, model=model)


def set_aliases(kubectl, version: str, aliases: list[str], *, storage: bool = True, model: str = MODEL) -> None:
    status: dict[str, Any] = {"aliases": aliases, "stage": "None"}
    if storage:
        status["storageUri"] = f"s3://models/{label(model)}/{version}"
    patch = json.dumps({"status": status})
    name = f"{label(model)}-v{version}"
    kubectl("patch", "modelversion", name, "--subresource=status", "--type=merge", "-p", patch)


def move_alias(kubectl, old: str, new: str, *, model: str = MODEL) -> None:
    set_aliases(kubectl, old, [], model=model)
    set_aliases(kubectl, new, ["champion"], model=model)


def predictor(kubectl, version: str, replicas: int = 1, name: str = MODEL) -> None:
    """A predictor Deployment with ``replicas`` pods (kwok runs them): KServe's own once its controller has created it
    from the InferenceService (scaled here), else one made here ahead of it (KServe then reports the selector clash
    in a Warning event; the operator reads only the Deployment's available replicas)."""
    deployment = f"{name}-v{version}-predictor"
    if kubectl("get", "deployment", deployment, "-o", "name", check=False).returncode == 0:
        kubectl("scale", "deployment", deployment, f"--replicas={replicas}")
        return
    made = kubectl("create", "deployment", deployment, "--image=registry.invalid/serving:1", f"--replicas={replicas}",
                   check=False)  # fmt: skip
    if made.returncode != 0:  # KServe created it meanwhile
        kubectl("scale", "deployment", deployment, f"--replicas={replicas}")


def deployment(kubectl, strategy: dict[str, Any], **spec: Any) -> None:
    obj = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": {"name": MODEL, "track": {"alias": "champion"}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
            "strategy": strategy,
            "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
            **spec,
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(obj))


def action(kubectl, what: str) -> None:
    kubectl("annotate", "--overwrite", "modeldeployment", MODEL, f"ml.slipway.dev/action={what}")


def first_version_up(kubectl) -> None:
    wait_until(lambda: md_status(kubectl).get("phase") == "Succeeded", what="v1 Succeeded")
    assert md_status(kubectl)["stableVersion"] == "1"
    wait_route(kubectl, {"1": 100})
