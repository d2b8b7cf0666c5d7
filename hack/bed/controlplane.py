"""The test bed's Kubernetes: etcd, kube-apiserver, controller-manager, scheduler, kwok's nodes, the local kubelet."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

from bed.base import HACK, TestbedError
from bed.builds import GATEWAY_API_VERSION, KSERVE_MODULE, KSERVE_VERSION, KWOK_VERSION, Binaries, go_module_dir
from bed.pki import ADMIN_TOKEN_USER, make_pki, write_kubeconfig
from bed.procs import free_port, http_ok, spawn, wait
from bed.state import State

SERVICE_CIDR = "10.0.0.0/24"
KWOK_NODES: tuple[tuple[str, dict[str, str]], ...] = (
    ("kwok-node-0", {"cpu": "32", "memory": "128Gi", "pods": "110"}),
    ("kwok-node-1", {"cpu": "32", "memory": "128Gi", "pods": "110"}),
    ("kwok-gpu-0", {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "4"}),
)
NODE_LEASE_SECONDS = 40  # as a kubelet's default; kwok renews well within it
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
KSERVE_CRDS = (
    "config/crd/full/serving.kserve.io_inferenceservices.yaml",
    "config/crd/full/serving.kserve.io_servingruntimes.yaml",
    "config/crd/full/serving.kserve.io_clusterservingruntimes.yaml",
)
KSERVE_MANAGER_CRDS = (  # watched by KServe's controller-manager, which exits without them
    "config/crd/full/serving.kserve.io_inferencegraphs.yaml",
    "config/crd/full/serving.kserve.io_trainedmodels.yaml",
    "config/crd/full/clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers.yaml",
)
GATEWAY_CRDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants", "grpcroutes", "backendtlspolicies")


def kubectl(state: State, *args: str, input: str | None = None) -> str:
    """Run kubectl as the test bed's admin; its stdout, or an error with its stderr."""
    proc = subprocess.run(
        [state.kubectl, "--kubeconfig", state.kubeconfig, *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise TestbedError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def start_control_plane(state: State, bins: Binaries) -> None:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok with fake nodes, the local kubelet."""
    tb = Path(state.dir)
    pki = tb / "pki"
    make_pki(pki)
    token = state.token = hashlib.sha256(os.urandom(32)).hexdigest()[:32]
    (pki / "tokens.csv").write_text(f'{token},{ADMIN_TOKEN_USER},1,"system:masters"\n')

    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    state.ports.update(etcd=etcd_port, apiserver=api_port)
    shutil.rmtree(tb / "etcd", ignore_errors=True)
    spawn(
        state,
        "etcd",
        [
            bins.etcd,
            "--name=testbed",
            f"--data-dir={tb / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=testbed=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync",
            "--max-request-bytes=33554432",
            "--quota-backend-bytes=8589934592",
            "--log-level=warn",
        ],
    )
    wait(state, "etcd", lambda: http_ok(f"http://127.0.0.1:{etcd_port}/health"), 30, "/health")

    server = f"https://127.0.0.1:{api_port}"
    state.urls["apiserver"] = server
    spawn(
        state,
        "kube-apiserver",
        [
            bins.kube_apiserver,
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            f"--cert-dir={pki}",
        ],
    )
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    wait(state, "kube-apiserver", lambda: http_ok(f"{server}/readyz", token, ctx), 90, "/readyz")

    kubeconfig = tb / "kubeconfig"
    write_kubeconfig(kubeconfig, server, pki / "ca.crt", token)
    state.kubeconfig, state.kubectl, state.helm = str(kubeconfig), bins.kubectl, bins.helm
    state.save()

    common = [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--v=1"]
    spawn(
        state,
        "kube-controller-manager",
        [
            bins.kube_controller_manager,
            *common,
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--secure-port=0",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-node-ipam-controller,-cloud-node-lifecycle-controller,-node-route-controller,-service-lb-controller",
            "--concurrent-gc-syncs=10",
            # A loaded 2-core machine can delay kwok's heartbeats; never mark fake nodes NotReady for that.
            "--node-monitor-grace-period=10m",
        ],
    )
    spawn(
        state,
        "kube-scheduler",
        [
            bins.kube_scheduler,
            *common,
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--secure-port=0",
        ],
    )
    start_kwok(state, bins)
    create_nodes(state)
    install_crds(state)
    wait(
        state,
        "kube-controller-manager",
        lambda: "default" in kubectl(state, "get", "serviceaccount", "default", "-n", "default", "-o", "name"),
        60,
        "the default ServiceAccount",
    )
    wait(state, "kwok", lambda: _nodes_ready(state), 60, "fake nodes Ready")
    spawn(  # runs the training pods (labelled ml.slipway.dev/trainingrun) as local processes: see its docstring
        state,
        "local-kubelet",
        [sys.executable, str(HACK / "local_kubelet.py"), f"--kubeconfig={kubeconfig}", f"--dir={tb / 'pods'}"],
    )


def start_kwok(state: State, bins: Binaries) -> None:
    """kwok, managing the fake nodes by annotation, with upstream's fast node and pod stages."""
    tb = Path(state.dir)
    module = go_module_dir("sigs.k8s.io/kwok", KWOK_VERSION)
    stages = "\n---\n".join((module / "kustomize/stage" / rel).read_text() for rel in KWOK_STAGES)
    (tb / "kwok-stages.yaml").write_text(stages)
    port = free_port()
    state.ports["kwok"] = port
    spawn(
        state,
        "kwok",
        [
            bins.kwok,
            f"--kubeconfig={state.kubeconfig}",
            f"--config={tb / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            # hack/local_kubelet.py runs training pods and KServe's predictor pods (kwok skips a pod matching either)
            "--disregard-status-with-label-selector=ml.slipway.dev/trainingrun",
            "--disregard-status-with-annotation-selector=internal.serving.kserve.io/storage-initializer-sourceuri",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{port}",
            "--cidr=10.244.0.0/16",
            # Renew each fake node's Lease as a kubelet does. Without leases the only heartbeat is the
            # node-heartbeat stage's status write, every 600-1210 s: ten minutes after start-up the
            # node-lifecycle controller took every node for dead and marked its pods NotReady for good
            # (kwok's pod stages never make a Running pod ready again), so a rollout then waited forever.
            f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        ],
    )


def create_nodes(state: State) -> None:
    """A few fake nodes for kwok; one has GPUs."""
    items = []
    for name, capacity in KWOK_NODES:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        **({"nvidia.com/gpu.present": "true"} if "nvidia.com/gpu" in capacity else {}),
                    },
                },
                "status": {"capacity": capacity, "allocatable": capacity},
            }
        )
    kubectl(state, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def _nodes_ready(state: State) -> bool:
    out = json.loads(kubectl(state, "get", "nodes", "-o", "json"))
    ready = [
        n
        for n in out["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
    ]
    return len(ready) == len(KWOK_NODES)


def upstream_crd_files() -> list[Path]:
    """The real KServe and Gateway API CRD files, read out of their Go modules."""
    kserve = go_module_dir(KSERVE_MODULE, KSERVE_VERSION)
    gateway = go_module_dir("sigs.k8s.io/gateway-api", GATEWAY_API_VERSION)
    files = [kserve / rel for rel in (*KSERVE_CRDS, *KSERVE_MANAGER_CRDS)]
    files += [gateway / "config/crd/standard" / f"gateway.networking.k8s.io_{n}.yaml" for n in GATEWAY_CRDS]
    return files


def install_crds(state: State) -> None:
    """The real KServe and Gateway API CRDs, server-side applied, then waited for."""
    files = upstream_crd_files()
    args = ["apply", "--server-side", "--force-conflicts"]
    for f in files:
        args += ["-f", str(f)]
    kubectl(state, *args)
    names = (
        "inferenceservices.serving.kserve.io",
        "httproutes.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
    )
    # `kubectl wait` fails outright on a CRD with no conditions yet, so poll the condition instead.
    wait(state, "kube-apiserver", lambda: all(_crd_established(state, n) for n in names), 60, "upstream CRDs")


def _crd_established(state: State, name: str) -> bool:
    crd = json.loads(kubectl(state, "get", "crd", name, "-o", "json"))
    conditions = crd.get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
