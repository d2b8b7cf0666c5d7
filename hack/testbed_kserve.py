"""KServe's own controller-manager and an S3 server (versitygw) on the test bed, configured from KServe's module.

KServe's controller-manager (``github.com/kserve/kserve`` ``./cmd/manager``) is built from its Go
module, inside the module's own directory so its ``replace`` block applies, and cached by version
like the control plane. The test bed runs it out of cluster:

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

versitygw (``github.com/versity/versitygw``) is an S3 gateway over a local folder: MLflow's artifact
store on the test bed, so that models live where a user's do and KServe's storage initializer
downloads them over S3 (see :func:`start_s3`).

Standard library only, like ``testbed.py``, which calls it.
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

import testbed as tb

KSERVE_MODULE = "github.com/kserve/kserve"
KSERVE_MANAGER = "kserve-manager"
VERSITYGW_MODULE = "github.com/versity/versitygw"
VERSITYGW_VERSION = "v1.8.0"
NAMESPACE = "kserve"
SERVICE_ACCOUNT = "kserve-controller-manager"
CLUSTER_ROLE = "kserve-manager-role"
CONFIGMAP = "inferenceservice-config"
TOKEN_SECONDS = 10 * 365 * 24 * 3600
S3_BUCKET = "mlflow"
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "slipway-testbed"


# --------------------------------------------------------------------------- building


def build_module_command(name: str, version: str, module: str, package: str) -> Path:
    """Build ``package`` of a Go module inside the module's own directory (its replaces apply); cached by version.

    The binary is ``$SLIPWAY_CACHE_DIR/bin/<name>-<version>/<name>``; the build runs at nice 19.
    """
    out = tb.cache_dir() / "bin" / f"{name}-{version}"
    if (out / name).exists():
        return out / name
    source = tb.go_module_dir(module, version)
    tb.log(f"building {name} {version} from {module} (first use, several minutes; cached in {out})")
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = tb._go_env()
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    tb._run(
        ["nice", "-n", "19", "go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp / name), package],
        cwd=source,
        env=env,
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out / name


def build_manager() -> Path:
    """KServe's controller-manager, ``./cmd/manager`` of its module."""
    return build_module_command(KSERVE_MANAGER, tb.KSERVE_VERSION, KSERVE_MODULE, "./cmd/manager")


def build_versitygw() -> Path:
    """versitygw, the S3 gateway over a local folder."""
    return build_module_command("versitygw", VERSITYGW_VERSION, VERSITYGW_MODULE, "./cmd/versitygw")


def module_dir() -> Path:
    """KServe's Go module (its ``config/`` is read from there)."""
    return tb.go_module_dir(KSERVE_MODULE, tb.KSERVE_VERSION)


# --------------------------------------------------------------------------- manifests


def to_json(state: tb.State, *paths: Path) -> list[dict[str, Any]]:
    """The objects of YAML files, through one kubectl call (no YAML parser in the standard library)."""
    text = tb._kubectl(state, "create", "--dry-run=client", "-o", "json", *(f"-f={p}" for p in paths))
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


def _with_images(obj: Any, images: dict[str, str]) -> Any:
    if isinstance(obj, dict):
        return {k: (_image(v, images) if k == "image" else _with_images(v, images)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_with_images(v, images) for v in obj]
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


def config_map(state: tb.State) -> dict[str, Any]:
    """KServe's ``inferenceservice-config`` as upstream ships it, with :func:`adjust_config` applied."""
    (cm,) = to_json(state, module_dir() / "config/configmap/inferenceservice.yaml")
    cm["data"] = adjust_config({k: v for k, v in cm["data"].items() if k != "_example"})
    cm["metadata"]["namespace"] = NAMESPACE
    return cm


def rbac(state: tb.State) -> list[dict[str, Any]]:
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


def storage_containers(state: tb.State) -> list[dict[str, Any]]:
    """The ``default`` ClusterStorageContainer: KServe's storage initializer for s3://, gs://, hf://, http(s)://…"""
    folder = module_dir() / "config/storagecontainers"
    images = kustomize_images(folder / "kustomization.yaml")
    return [_with_images(o, images) for o in to_json(state, folder / "default.yaml")]


def serving_runtimes(state: tb.State) -> list[dict[str, Any]]:
    """KServe's ClusterServingRuntimes (sklearn, xgboost, mlserver, …), images as its kustomization names them."""
    folder = module_dir() / "config/runtimes"
    images = kustomize_images(folder / "kustomization.yaml")
    names = re.findall(r"^- (kserve-\S+\.yaml)\s*$", (folder / "kustomization.yaml").read_text(), re.M)
    return [_with_images(o, images) for o in to_json(state, *(folder / name for name in names))]


def webhook_configurations(state: tb.State, port: int, ca: bytes) -> list[dict[str, Any]]:
    """KServe's webhook configurations, each service reference turned into ``https://127.0.0.1:<port><path>``."""
    out = []
    for config in to_json(state, module_dir() / "config/webhook/manifests.yaml"):
        for hook in config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": base64.b64encode(ca).decode()}
            hook.setdefault("timeoutSeconds", 10)
        out.append(config)
    return out


def _apply(state: tb.State, objects: list[dict[str, Any]]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    tb._kubectl(
        state, "apply", "--server-side", "--force-conflicts", "--field-manager=slipway-testbed", "-f", "-", input=body
    )


def _applied(state: tb.State, objects: list[dict[str, Any]]) -> bool:
    _apply(state, objects)
    return True


# --------------------------------------------------------------------------- pki


def webhook_certificate(pki: Path, cert_dir: Path) -> None:
    """``tls.crt``/``tls.key`` for the webhook server, signed by the test bed's CA, for IP 127.0.0.1."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    if (cert_dir / "tls.crt").exists():
        return
    ext = cert_dir / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    key, csr, crt = cert_dir / "tls.key", cert_dir / "tls.csr", cert_dir / "tls.crt"
    tb._openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kserve-webhook", "-keyout", str(key), "-out", str(csr)
    )
    tb._openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
        "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip


def service_account_kubeconfig(state: tb.State, path: Path) -> None:
    """A kubeconfig for KServe's ServiceAccount (a bound token from the TokenRequest API)."""
    token = tb._kubectl(
        state, "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, f"--duration={TOKEN_SECONDS}s"
    ).strip()
    tb.write_kubeconfig(path, state.urls["apiserver"], Path(state.dir) / "pki" / "ca.crt", token)


# --------------------------------------------------------------------------- start


def start_kserve(state: tb.State, manager: str) -> None:
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

    webhook, metrics, probe = tb.free_port(), tb.free_port(), tb.free_port()
    state.ports.update({"kserve-webhook": webhook, "kserve-metrics": metrics, "kserve-probe": probe})
    state.urls["kserve-metrics"] = f"http://127.0.0.1:{metrics}/metrics"
    env = dict(os.environ, TMPDIR=str(tmpdir), POD_NAMESPACE=NAMESPACE)
    env.pop("KUBECONFIG", None)
    tb._spawn(
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
    tb._wait(state, "kserve-manager", lambda: tb._http_ok(f"http://127.0.0.1:{probe}/readyz"), 120, "/readyz")
    ca = (tbdir / "pki" / "ca.crt").read_bytes()
    _apply(state, webhook_configurations(state, webhook, ca))
    # Created through the ClusterServingRuntime validator: proves the API server reaches the webhooks.
    runtimes = serving_runtimes(state)
    tb._wait(state, "kserve-manager", lambda: _applied(state, runtimes), 60, "its webhooks")
    state.save()
    tb.log(f"  KServe {tb.KSERVE_VERSION} controller-manager up in {time.monotonic() - started:.1f}s")


# --------------------------------------------------------------------------- S3 storage


def s3_secret_key(state: tb.State) -> str:
    """The test bed's S3 secret key (derived from its admin token: new with each test bed)."""
    return f"{state.token}-s3"


def start_s3(state: tb.State, versitygw: str) -> None:
    """versitygw on loopback over ``<testbed>/s3``, with the bucket MLflow's artifacts go to."""
    root = Path(state.dir) / "s3"
    shutil.rmtree(root, ignore_errors=True)
    (root / S3_BUCKET).mkdir(parents=True)  # the posix backend serves each top-level folder as a bucket
    port = tb.free_port()
    state.ports["s3"] = port
    state.urls["s3"] = f"http://127.0.0.1:{port}"
    env = dict(os.environ, ROOT_ACCESS_KEY=S3_ACCESS_KEY, ROOT_SECRET_KEY=s3_secret_key(state))
    tb._spawn(state, "s3", [versitygw, "--port", f"127.0.0.1:{port}", "posix", str(root)], env=env)
    tb._wait(state, "s3", lambda: _port_open(port), 30, "its port")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def s3_credentials(state: tb.State, service_account: str = "models") -> list[dict[str, Any]]:
    """A Secret and ServiceAccount as KServe takes S3 credentials (its ``s3-*`` annotations) for the storage
    initializer; name the ServiceAccount in a ModelDeployment's ``spec.serving.serviceAccountName``."""
    env = s3_env(state)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{service_account}-s3",
            "annotations": {
                "serving.kserve.io/s3-endpoint": env["MLFLOW_S3_ENDPOINT_URL"].removeprefix("http://"),
                "serving.kserve.io/s3-usehttps": "0",
                "serving.kserve.io/s3-region": env["AWS_DEFAULT_REGION"],
            },
        },
        "stringData": {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": service_account},
        "secrets": [{"name": f"{service_account}-s3"}],
    }
    return [secret, account]


def s3_env(state: tb.State) -> dict[str, str]:
    """What an S3 client (MLflow, boto3) needs to reach the test bed's versitygw."""
    return {
        "MLFLOW_S3_ENDPOINT_URL": state.urls["s3"],
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": s3_secret_key(state),
        "AWS_DEFAULT_REGION": S3_REGION,
    }


def manager_running(state: tb.State) -> bool:
    """Whether the manager recorded in the state still runs."""
    pid = state.pids.get("kserve-manager")
    return pid is not None and tb._alive(pid, state.identities.get("kserve-manager", ""))
