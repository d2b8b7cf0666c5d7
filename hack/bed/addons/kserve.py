"""KServe's own controller-manager on the test bed, configured from KServe's Go module as a cluster's would be.

KServe's controller-manager (``github.com/kserve/kserve`` ``./cmd/manager``, built by
:func:`bed.builds.build_kserve_manager` inside the module's own directory so its ``replace``
block applies) runs out of cluster:

- as the ServiceAccount ``kserve/kserve-controller-manager`` bound to KServe's own ClusterRole
  (``config/rbac/role.yaml``), through a kubeconfig holding that account's token, so the test
  bed finds out when KServe lacks a permission, as a cluster would;
- with the ``inferenceservice-config`` ConfigMap of ``config/configmap/inferenceservice.yaml``,
  changed only where the test bed needs it (:func:`adjust_config`): Standard is the default
  deployment mode and KServe creates no Ingress or HTTPRoute (Slipway owns the route);
- with its admission webhooks (``config/webhook/manifests.yaml``: the InferenceService
  defaulter and validator, the pod mutator that injects the storage initializer, the
  ServingRuntime, ClusterServingRuntime, TrainedModel and InferenceGraph validators) registered
  with the API server through ``clientConfig.url`` on ``https://127.0.0.1:<port>``, served with
  a certificate the test bed's CA signs for IP 127.0.0.1 from controller-runtime's default cert
  folder (``$TMPDIR/k8s-webhook-server/serving-certs``: the manager has no flag for it);
- with the ``default`` ClusterStorageContainer (``config/storagecontainers``) and the
  ClusterServingRuntimes of ``config/runtimes``, images named as upstream's kustomizations name
  them.

Its models come from the test bed's S3 (:mod:`bed.addons.s3`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from bed.base import log
from bed.builds import KSERVE_MODULE, KSERVE_VERSION, go_module_dir
from bed.controlplane import kubectl
from bed.pki import webhook_certificate, write_kubeconfig
from bed.procs import alive, free_port, http_ok, spawn, wait
from bed.state import State

NAMESPACE = "kserve"
SERVICE_ACCOUNT = "kserve-controller-manager"
CLUSTER_ROLE = "kserve-manager-role"
CONFIGMAP = "inferenceservice-config"
TOKEN_SECONDS = 10 * 365 * 24 * 3600


def module_dir() -> Path:
    """KServe's Go module (its ``config/`` is read from there)."""
    return go_module_dir(KSERVE_MODULE, KSERVE_VERSION)


# --------------------------------------------------------------------------- manifests


def to_json(state: State, *paths: Path) -> list[dict[str, Any]]:
    """The objects of YAML files, through one kubectl call (no YAML parser in the standard library)."""
    text = kubectl(state, "create", "--dry-run=client", "-o", "json", *(f"-f={p}" for p in paths))
    decoder, pos = json.JSONDecoder(), 0
    items: list[dict[str, Any]] = []
    while text[pos:].strip():  # one JSON document per YAML document
        obj, end = decoder.raw_decode(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
        items += obj["items"] if obj.get("kind") == "List" else [obj]
        pos = end
    for item in items:
        item.get("metadata", {}).pop("creationTimestamp", None)
    return list(items)


def kustomize_images(kustomization: Path) -> dict[str, str]:
    """The ``images:`` of a kustomization (name → newName:newTag), read line by line."""
    images: dict[str, str] = {}
    current: dict[str, str] = {}
    for line in kustomization.read_text().splitlines():
        m = re.match(r"^\s*-?\s*(name|newName|newTag):\s*(\S+)\s*$", line)
        if not m:
            continue
        key, value = m.groups()
        if key == "name":
            current = {"name": value}
        else:
            current[key] = value
        if "name" in current and "newName" in current and "newTag" in current:
            images[current["name"]] = f"{current['newName']}:{current['newTag']}"
    return images


def with_images(obj: Any, images: dict[str, str]) -> Any:
    """``obj`` with every ``image`` value renamed as ``images`` says (name without tag → full image)."""
    if isinstance(obj, dict):
        return {k: (_image(v, images) if k == "image" else with_images(v, images)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [with_images(v, images) for v in obj]
    return obj


def _image(value: Any, images: dict[str, str]) -> Any:
    if not isinstance(value, str):
        return value
    return images.get(value.split(":", 1)[0], value)


def adjust_config(data: dict[str, str]) -> dict[str, str]:
    """The test bed's changes to KServe's ``inferenceservice-config`` data (each value is a JSON document).

    - ``deploy.defaultDeploymentMode``: Standard (upstream's file says Serverless: no Knative here);
    - ``ingress.disableIngressCreation``: true — Slipway owns the HTTPRoute, KServe must create no
      Ingress or route of its own (``enableGatewayApi`` stays false);
    - ``ingress.disableIstioVirtualHost``: true — there is no Istio (else a Warning event on every
      InferenceService says its VirtualService CRD is missing).
    """
    out = dict(data)
    deploy = json.loads(out.get("deploy") or "{}")
    deploy["defaultDeploymentMode"] = "Standard"
    out["deploy"] = json.dumps(deploy, indent=2)
    ingress = json.loads(out["ingress"])
    ingress["disableIngressCreation"] = True
    ingress["enableGatewayApi"] = False
    ingress["disableIstioVirtualHost"] = True
    out["ingress"] = json.dumps(ingress, indent=2)
    return out


def config_map(state: State) -> dict[str, Any]:
    """KServe's ``inferenceservice-config`` as upstream ships it, with :func:`adjust_config` applied."""
    (cm,) = to_json(state, module_dir() / "config/configmap/inferenceservice.yaml")
    cm["data"] = adjust_config({k: v for k, v in cm["data"].items() if k != "_example"})
    cm["metadata"]["namespace"] = NAMESPACE
    return cm


def rbac(state: State) -> list[dict[str, Any]]:
    """KServe's namespace, ServiceAccount, ClusterRole and ClusterRoleBinding (as its kustomization names them)."""
    rbac_dir = module_dir() / "config/rbac"
    (sa,) = to_json(state, rbac_dir / "service_account.yaml")
    sa["metadata"]["namespace"] = NAMESPACE
    (role,) = to_json(state, rbac_dir / "role.yaml")
    (binding,) = to_json(state, rbac_dir / "role_binding.yaml")
    for subject in binding["subjects"]:
        subject["namespace"] = NAMESPACE
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    return [namespace, sa, role, binding]


def storage_containers(state: State) -> list[dict[str, Any]]:
    """The ``default`` ClusterStorageContainer: KServe's storage initializer for s3://, gs://, hf://, http(s)://…"""
    folder = module_dir() / "config/storagecontainers"
    images = kustomize_images(folder / "kustomization.yaml")
    return [with_images(o, images) for o in to_json(state, folder / "default.yaml")]


def serving_runtimes(state: State) -> list[dict[str, Any]]:
    """KServe's ClusterServingRuntimes (sklearn, xgboost, mlserver, …), images as its kustomization names them."""
    folder = module_dir() / "config/runtimes"
    images = kustomize_images(folder / "kustomization.yaml")
    names = re.findall(r"^- (kserve-\S+\.yaml)\s*$", (folder / "kustomization.yaml").read_text(), re.M)
    return [with_images(o, images) for o in to_json(state, *(folder / name for name in names))]


def webhook_configurations(state: State, port: int, ca: bytes) -> list[dict[str, Any]]:
    """KServe's webhook configurations, each service reference turned into ``https://127.0.0.1:<port><path>``."""
    out = []
    for config in to_json(state, module_dir() / "config/webhook/manifests.yaml"):
        for hook in config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": base64.b64encode(ca).decode()}
            hook.setdefault("timeoutSeconds", 10)
        out.append(config)
    return out


def _apply(state: State, objects: list[dict[str, Any]]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    kubectl(
        state, "apply", "--server-side", "--force-conflicts", "--field-manager=slipway-testbed", "-f", "-", input=body
    )


def _applied(state: State, objects: list[dict[str, Any]]) -> bool:
    _apply(state, objects)
    return True


def service_account_kubeconfig(state: State, path: Path) -> None:
    """A kubeconfig for KServe's ServiceAccount (a bound token from the TokenRequest API)."""
    token = kubectl(state, "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, f"--duration={TOKEN_SECONDS}s").strip()
    write_kubeconfig(path, state.urls["apiserver"], Path(state.dir) / "pki" / "ca.crt", token)


# --------------------------------------------------------------------------- start


def start_kserve(state: State, manager: str) -> None:
    """Install KServe's config, RBAC and webhooks and run its controller-manager (see the module doc)."""
    started = time.monotonic()
    tbdir = Path(state.dir)
    home = tbdir / "kserve"
    shutil.rmtree(home, ignore_errors=True)
    tmpdir = home / "tmp"
    webhook_certificate(tbdir / "pki", tmpdir / "k8s-webhook-server" / "serving-certs")
    _apply(state, rbac(state))
    _apply(state, [config_map(state), *storage_containers(state)])
    kubeconfig = home / "kubeconfig"
    service_account_kubeconfig(state, kubeconfig)

    webhook, metrics, probe = free_port(), free_port(), free_port()
    state.ports.update({"kserve-webhook": webhook, "kserve-metrics": metrics, "kserve-probe": probe})
    state.urls["kserve-metrics"] = f"http://127.0.0.1:{metrics}/metrics"
    env = dict(os.environ, TMPDIR=str(tmpdir), POD_NAMESPACE=NAMESPACE)
    env.pop("KUBECONFIG", None)
    spawn(
        state,
        "kserve-manager",
        [
            manager,
            f"-kubeconfig={kubeconfig}",
            f"-webhook-port={webhook}",
            f"-metrics-addr=127.0.0.1:{metrics}",
            f"-health-probe-addr=127.0.0.1:{probe}",
            "-leader-elect=false",
        ],
        env=env,
    )
    wait(state, "kserve-manager", lambda: http_ok(f"http://127.0.0.1:{probe}/readyz"), 120, "/readyz")
    ca = (tbdir / "pki" / "ca.crt").read_bytes()
    _apply(state, webhook_configurations(state, webhook, ca))
    # Created through the ClusterServingRuntime validator: proves the API server reaches the webhooks.
    runtimes = serving_runtimes(state)
    wait(state, "kserve-manager", lambda: _applied(state, runtimes), 60, "its webhooks")
    state.save()
    log(f"  KServe {KSERVE_VERSION} controller-manager up in {time.monotonic() - started:.1f}s")


def manager_running(state: State) -> bool:
    """Whether the manager recorded in the state still runs."""
    pid = state.pids.get("kserve-manager")
    return pid is not None and alive(pid, state.identities.get("kserve-manager", ""))
