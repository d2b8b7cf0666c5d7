"""The local test bed: a real Kubernetes control plane, kwok nodes, MLflow, Prometheus and Alertmanager on loopback.

Usage: ``hack/testbed up [--with mlflow,prometheus]``, ``hack/testbed down``,
``hack/testbed status``, ``hack/testbed build``, ``hack/testbed env``.

Everything it starts runs as a local process on 127.0.0.1 and is recorded, with its pid and
ports, in ``$SLIPWAY_TESTBED_DIR/state.json`` (default ``.testbed/`` in the repository), so
``down`` stops exactly what ``up`` started. The Kubernetes binaries are built from the Go
module proxy on first use (wrapper modules in ``hack/kube`` and ``hack/etcd``) and cached by
version under ``$SLIPWAY_CACHE_DIR`` (default ``~/.cache/slipway``); the real KServe and
Gateway API CRDs and kwok's stages are read out of their Go modules.

This module uses only the standard library, so it runs before any virtualenv exists; the
pytest fixtures in ``tests/conftest.py`` import it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.21.4"
KSERVE_VERSION = "v0.20.0"
GATEWAY_API_VERSION = "v1.6.3"

SERVICE_CIDR = "10.0.0.0/24"
ADMIN_TOKEN_USER = "slipway-admin"
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
EXTRAS = ("mlflow", "prometheus")


class TestbedError(RuntimeError):
    """The test bed could not be built, started or reached; the message says which part."""


def log(msg: str) -> None:
    """Print a progress line to stderr (stdout is kept for `export` lines)."""
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where built binaries live, outside the repository, keyed by version."""
    base = os.environ.get("SLIPWAY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "slipway"
    )
    return Path(base)


def testbed_dir() -> Path:
    """The folder holding state, logs, certificates and data of the running test bed."""
    return Path(os.environ.get("SLIPWAY_TESTBED_DIR") or REPO / ".testbed").resolve()


# --------------------------------------------------------------------------- binaries


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["CGO_ENABLED"] = "0"
    return env


def _tree_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    log(f"  {' '.join(cmd[:3])} … done in {time.monotonic() - started:.0f}s")


def _kube_ldflags(version: str) -> str:
    """Stamp the Kubernetes version into the binaries, as upstream's build does (helm checks it)."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _build_wrapper(name: str, version: str, module_dir: Path, target: str, ldflags: str = "-s -w") -> Path:
    out = cache_dir() / "bin" / f"{name}-{version}-{_tree_hash(module_dir)}"
    binary = out / name
    if binary.exists():
        return out
    log(f"building {name} {version} from the Go module proxy (first use; cached in {out})")
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(
        ["go", "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(tmp / name), target],
        cwd=module_dir,
        env=_go_env(),
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _go_install(name: str, package: str, version: str) -> Path:
    out = cache_dir() / "bin" / f"{name}-{version}"
    if (out / name).exists():
        return out
    log(f"building {name} {version} from the Go module proxy (first use; cached in {out})")
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = _go_env()
    env["GOBIN"] = str(tmp)
    _run(["go", "install", "-trimpath", "-ldflags=-s -w", f"{package}@{version}"], env=env)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@dataclass
class Binaries:
    """Paths of the built binaries the test bed runs."""

    kube_apiserver: str
    kube_controller_manager: str
    kube_scheduler: str
    kubectl: str
    etcd: str
    kwok: str
    helm: str
    traefik: str
    kserve_manager: str
    versitygw: str


def build() -> Binaries:
    """Build (or find in the cache) every binary the test bed needs."""
    kube = _build_wrapper("kube", KUBERNETES_VERSION, HACK / "kube", "./cmd/kube", _kube_ldflags(KUBERNETES_VERSION))
    for alias in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"):
        link = kube / alias
        if not link.exists():
            link.symlink_to("kube")
    etcd = _build_wrapper("etcd", ETCD_VERSION, HACK / "etcd", ".")
    kwok = _go_install("kwok", "sigs.k8s.io/kwok/cmd/kwok", KWOK_VERSION)
    helm = _go_install("helm", "helm.sh/helm/v3/cmd/helm", HELM_VERSION)
    import testbed_gateway

    traefik = testbed_gateway.build_traefik()
    testbed_gateway.build_prometheus()
    import testbed_kserve  # KServe's controller-manager and versitygw, built from their Go modules

    kserve_manager, versitygw = testbed_kserve.build_manager(), testbed_kserve.build_versitygw()
    return Binaries(
        kube_apiserver=str(kube / "kube-apiserver"),
        kube_controller_manager=str(kube / "kube-controller-manager"),
        kube_scheduler=str(kube / "kube-scheduler"),
        kubectl=str(kube / "kubectl"),
        etcd=str(etcd / "etcd"),
        kwok=str(kwok / "kwok"),
        helm=str(helm / "helm"),
        traefik=str(traefik),
        kserve_manager=str(kserve_manager),
        versitygw=str(versitygw),
    )


def go_module_dir(module: str, version: str) -> Path:
    """Download a Go module (cached by Go) and return its directory."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        env=_go_env(),
        cwd=HACK / "kube",
    )
    if proc.returncode != 0:
        raise TestbedError(f"go mod download {module}@{version} failed: {proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def upstream_crd_files() -> list[Path]:
    """The real KServe and Gateway API CRD files, read out of their Go modules."""
    kserve = go_module_dir("github.com/kserve/kserve", KSERVE_VERSION)
    gateway = go_module_dir("sigs.k8s.io/gateway-api", GATEWAY_API_VERSION)
    files = [kserve / rel for rel in (*KSERVE_CRDS, *KSERVE_MANAGER_CRDS)]
    files += [gateway / "config/crd/standard" / f"gateway.networking.k8s.io_{n}.yaml" for n in GATEWAY_CRDS]
    return files


# --------------------------------------------------------------------------- state


@dataclass
class State:
    """What the running test bed is made of: pids, ports and URLs. Saved as state.json."""

    dir: str
    pids: dict[str, int] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    kubeconfig: str = ""
    kubectl: str = ""
    helm: str = ""
    token: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0

    @classmethod
    def load(cls, directory: Path) -> State | None:
        path = directory / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self) -> None:
        path = Path(self.dir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


def _start_time(pid: int) -> str:
    """The kernel's start time of a process (clock ticks since boot): with the pid, a unique identity."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, identity: str) -> bool:
    """Whether the process we started (pid and start time) still runs: pid reuse can't fool it."""
    return bool(identity) and _start_time(pid) == identity


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(state: State, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    logs = Path(state.dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=state.dir,
        )
    state.pids[name] = proc.pid
    state.identities[name] = _start_time(proc.pid)
    state.save()


def _log_tail(state: State, name: str, lines: int = 30) -> str:
    path = Path(state.dir) / "logs" / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait(state: State, name: str, check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        pid = state.pids.get(name)
        if pid is not None and not _alive(pid, state.identities[name]):
            raise TestbedError(f"{name} exited during start-up:\n{_log_tail(state, name)}")
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise TestbedError(f"{name}: {what} not ready after {timeout:.0f}s ({last})\n{_log_tail(state, name)}")


def _http_ok(url: str, token: str = "", ctx: ssl.SSLContext | None = None) -> bool:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
        return 200 <= int(resp.status) < 300


# --------------------------------------------------------------------------- pki


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "apiserver.crt").exists():
        return
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=slipway-testbed-ca",
        "-keyout",
        str(pki / "ca.key"),
        "-out",
        str(pki / "ca.crt"),
    )
    ext = pki / "apiserver.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=kube-apiserver",
        "-keyout",
        str(pki / "apiserver.key"),
        "-out",
        str(pki / "apiserver.csr"),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(pki / "apiserver.csr"),
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        str(ext),
        "-out",
        str(pki / "apiserver.crt"),
    )
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    """A kubeconfig for the admin user (group system:masters), JSON being valid YAML."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "slipway-testbed",
        "clusters": [
            {
                "name": "slipway-testbed",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()},
            }
        ],
        "users": [{"name": ADMIN_TOKEN_USER, "user": {"token": token}}],
        "contexts": [
            {
                "name": "slipway-testbed",
                "context": {"cluster": "slipway-testbed", "user": ADMIN_TOKEN_USER, "namespace": "default"},
            }
        ],
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


# --------------------------------------------------------------------------- components


def _kubectl(state: State, *args: str, input: str | None = None) -> str:
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
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with fake nodes."""
    tb = Path(state.dir)
    pki = tb / "pki"
    make_pki(pki)
    token = state.token = hashlib.sha256(os.urandom(32)).hexdigest()[:32]
    (pki / "tokens.csv").write_text(f'{token},{ADMIN_TOKEN_USER},1,"system:masters"\n')

    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    state.ports.update(etcd=etcd_port, apiserver=api_port)
    shutil.rmtree(tb / "etcd", ignore_errors=True)
    _spawn(
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
    _wait(state, "etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), 30, "/health")

    server = f"https://127.0.0.1:{api_port}"
    state.urls["apiserver"] = server
    _spawn(
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
    _wait(state, "kube-apiserver", lambda: _http_ok(f"{server}/readyz", token, ctx), 90, "/readyz")

    kubeconfig = tb / "kubeconfig"
    write_kubeconfig(kubeconfig, server, pki / "ca.crt", token)
    state.kubeconfig, state.kubectl, state.helm = str(kubeconfig), bins.kubectl, bins.helm
    state.save()

    common = [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--v=1"]
    _spawn(
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
    _spawn(
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
    _wait(
        state,
        "kube-controller-manager",
        lambda: "default" in _kubectl(state, "get", "serviceaccount", "default", "-n", "default", "-o", "name"),
        60,
        "the default ServiceAccount",
    )
    _wait(state, "kwok", lambda: _nodes_ready(state), 60, "fake nodes Ready")
    _spawn(  # runs the training pods (labelled ml.slipway.dev/trainingrun) as local processes: see its docstring
        state,
        "local-kubelet",
        [sys.executable, str(HACK / "local_kubelet.py"), f"--kubeconfig={kubeconfig}", f"--dir={tb / 'pods'}"],
    )
    import testbed_kserve  # KServe's own controller-manager, its config and webhooks: see its docstring

    testbed_kserve.start_kserve(state, bins.kserve_manager)


def start_kwok(state: State, bins: Binaries) -> None:
    """kwok, managing the fake nodes by annotation, with upstream's fast node and pod stages."""
    tb = Path(state.dir)
    module = go_module_dir("sigs.k8s.io/kwok", KWOK_VERSION)
    stages = "\n---\n".join((module / "kustomize/stage" / rel).read_text() for rel in KWOK_STAGES)
    (tb / "kwok-stages.yaml").write_text(stages)
    port = free_port()
    state.ports["kwok"] = port
    _spawn(
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
    _kubectl(state, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def _nodes_ready(state: State) -> bool:
    out = json.loads(_kubectl(state, "get", "nodes", "-o", "json"))
    ready = [
        n
        for n in out["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
    ]
    return len(ready) == len(KWOK_NODES)


def install_crds(state: State) -> None:
    """The real KServe and Gateway API CRDs, server-side applied, then waited for."""
    files = upstream_crd_files()
    args = ["apply", "--server-side", "--force-conflicts"]
    for f in files:
        args += ["-f", str(f)]
    _kubectl(state, *args)
    names = (
        "inferenceservices.serving.kserve.io",
        "httproutes.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
    )
    # `kubectl wait` fails outright on a CRD with no conditions yet, so poll the condition instead.
    _wait(state, "kube-apiserver", lambda: all(_crd_established(state, n) for n in names), 60, "upstream CRDs")


def _crd_established(state: State, name: str) -> bool:
    crd = json.loads(_kubectl(state, "get", "crd", name, "-o", "json"))
    conditions = crd.get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise TestbedError(f"{name} not found next to {sys.executable} or on PATH (run hack/setup)")
    return found


def start_mlflow(state: State, versitygw: str) -> None:
    """`mlflow server` with a SQLite backend, its artifacts in an S3 bucket of versitygw (started first)."""
    import testbed_kserve

    testbed_kserve.start_s3(state, versitygw)
    tb = Path(state.dir) / "mlflow"
    shutil.rmtree(tb, ignore_errors=True)
    tb.mkdir(parents=True)
    artifacts = state.urls["mlflow-artifacts"] = f"s3://{testbed_kserve.S3_BUCKET}/artifacts"
    port = free_port()
    state.ports["mlflow"] = port
    url = f"http://127.0.0.1:{port}"
    state.urls["mlflow"] = url
    env = dict(os.environ)
    env.update(
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
        MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
        MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        MLFLOW_WEBHOOK_CACHE_TTL="1",
        **testbed_kserve.s3_env(state),
    )
    _spawn(
        state,
        "mlflow",
        [
            _venv_bin("mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tb / 'mlflow.db'}",
            "--artifacts-destination",
            artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
    )
    _wait(state, "mlflow", lambda: _http_ok(f"{url}/health"), 120, "/health")


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {dir}/rules/*.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
  - job_name: testbed-targets
    file_sd_configs:
      - files: ["{dir}/targets/*.json"]
        refresh_interval: 1s
{pods}"""

ALERTMANAGER_CONFIG = """\
route:
  receiver: slipway
  group_by: [alertname, namespace, modeldeployment]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: slipway
    webhook_configs:
{webhooks}
"""


def alertmanager_config(webhook_urls: list[str], token: str = "") -> str:
    """Alertmanager's config, sending every alert to each webhook URL (payload version 4)."""
    auth = f"        http_config:\n          authorization: {{type: Bearer, credentials: {json.dumps(token)}}}\n"
    hooks = "".join(
        f"      - url: {json.dumps(url)}\n        send_resolved: true\n" + (auth if token else "")
        for url in webhook_urls
    )
    return ALERTMANAGER_CONFIG.format(webhooks=hooks or "      []\n")


def start_prometheus(state: State) -> None:
    """Debian's Alertmanager and Prometheus (built with Kubernetes SD), wired together, with targets and rules."""
    import testbed_gateway

    if not shutil.which("prometheus-alertmanager"):
        raise TestbedError("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    prometheus = testbed_gateway.prometheus_binary()
    if not prometheus.exists():
        raise TestbedError(f"{prometheus} is not built (hack/testbed build)")
    tb = Path(state.dir)
    am_dir, prom_dir = tb / "alertmanager", tb / "prometheus"
    for d in (am_dir, prom_dir):
        shutil.rmtree(d, ignore_errors=True)
    for d in (am_dir / "data", prom_dir / "data", prom_dir / "rules", prom_dir / "targets"):
        d.mkdir(parents=True)
    am_port, prom_port = free_port(), free_port()
    state.ports.update(alertmanager=am_port, prometheus=prom_port)
    state.urls.update(alertmanager=f"http://127.0.0.1:{am_port}", prometheus=f"http://127.0.0.1:{prom_port}")
    webhook = os.environ.get("SLIPWAY_ALERT_WEBHOOK_URL", "")
    (am_dir / "alertmanager.yml").write_text(alertmanager_config([webhook] if webhook else []))
    _spawn(
        state,
        "alertmanager",
        [
            shutil.which("prometheus-alertmanager") or "",
            f"--config.file={am_dir / 'alertmanager.yml'}",
            f"--storage.path={am_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
    )
    pods = testbed_gateway.prometheus_pod_scrape_config(state)  # the predictor pods, found through the API server
    (prom_dir / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(dir=prom_dir, am_port=am_port, pods=pods))
    _spawn(
        state,
        "prometheus",
        [
            str(prometheus),
            f"--config.file={prom_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
    )
    _wait(state, "alertmanager", lambda: _http_ok(f"{state.urls['alertmanager']}/-/ready"), 30, "/-/ready")
    _wait(state, "prometheus", lambda: _http_ok(f"{state.urls['prometheus']}/-/ready"), 30, "/-/ready")


def _post(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=10) as resp:
        if resp.status >= 300:
            raise TestbedError(f"POST {url}: HTTP {resp.status}")


def add_scrape_target(state: State, name: str, address: str, labels: dict[str, str] | None = None) -> None:
    """Have Prometheus scrape `address` (host:port, /metrics) as job `name`; file SD picks it up in ~1s."""
    targets = Path(state.dir) / "prometheus" / "targets"
    body = [{"targets": [address], "labels": {"job": name, **(labels or {})}}]
    (targets / f"{name}.json.tmp").write_text(json.dumps(body))
    (targets / f"{name}.json.tmp").replace(targets / f"{name}.json")


def remove_scrape_target(state: State, name: str) -> None:
    """Stop scraping the target `name` added by add_scrape_target."""
    (Path(state.dir) / "prometheus" / "targets" / f"{name}.json").unlink(missing_ok=True)


def set_rules(state: State, name: str, text: str) -> None:
    """Install a Prometheus rule file (YAML text) and reload Prometheus."""
    (Path(state.dir) / "prometheus" / "rules" / f"{name}.yml").write_text(text)
    _post(f"{state.urls['prometheus']}/-/reload")


def set_alert_webhooks(state: State, urls: list[str], token: str = "") -> None:
    """Point Alertmanager at these webhook receivers (with a bearer token, if given) and reload it."""
    (Path(state.dir) / "alertmanager" / "alertmanager.yml").write_text(alertmanager_config(urls, token))
    _post(f"{state.urls['alertmanager']}/-/reload")


# --------------------------------------------------------------------------- commands


def is_up(state: State | None) -> bool:
    """Whether every process the state names is still running."""
    return bool(state and state.pids and all(_alive(pid, state.identities[n]) for n, pid in state.pids.items()))


def up(with_extras: tuple[str, ...] = ()) -> State:
    """Start the test bed (reusing a running one that has every part asked for)."""
    tb = testbed_dir()
    existing = State.load(tb)
    wanted = {
        "kube-apiserver",
        "kserve-manager",
        *(("mlflow", "s3") if "mlflow" in with_extras else ()),
        *(("prometheus", "alertmanager") if "prometheus" in with_extras else ()),
    }
    if existing and is_up(existing) and wanted <= set(existing.pids):
        log(f"already up ({', '.join(existing.pids)})")
        return existing
    if existing:
        down()
    bins = build()
    started = time.monotonic()
    tb.mkdir(parents=True, exist_ok=True)
    state = State(
        dir=str(tb),
        started_at=time.time(),
        versions={
            "kubernetes": KUBERNETES_VERSION,
            "etcd": ETCD_VERSION,
            "kwok": KWOK_VERSION,
            "kserve": KSERVE_VERSION,
            "gateway-api-crds": GATEWAY_API_VERSION,
        },
    )
    state.save()
    try:
        start_control_plane(state, bins)
        import testbed_gateway

        testbed_gateway.start_gateway(state, Path(bins.traefik))
        if "mlflow" in with_extras:
            start_mlflow(state, bins.versitygw)
        if "prometheus" in with_extras:
            start_prometheus(state)
    except BaseException:
        down()
        raise
    state.save()
    log(f"up in {time.monotonic() - started:.1f}s: {', '.join(state.pids)}")
    return state


def down() -> None:
    """Stop every process the state file names, by pid, newest first."""
    tb = testbed_dir()
    state = State.load(tb)
    if state is None:
        log("nothing to stop")
        return
    for name, pid in reversed(list(state.pids.items())):
        if _alive(pid, state.identities.get(name, "")):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for name, pid in reversed(list(state.pids.items())):
        while _alive(pid, state.identities.get(name, "")) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid, state.identities.get(name, "")):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    (tb / "state.json").unlink(missing_ok=True)
    log(f"stopped {', '.join(state.pids) or 'nothing'}")


def restart(name: str, sig: int = signal.SIGKILL, state: State | None = None) -> State:
    """Kill one recorded process (SIGKILL by default) and start it again with the same command line and environment.

    For resilience tests, e.g. ``restart("kube-apiserver")`` (etcd and its data are kept). It does
    not wait for the new process to be ready; the caller checks what it needs.
    """
    state = state or State.load(testbed_dir())
    if state is None or not _alive(state.pids.get(name, 0), state.identities.get(name, "")):
        raise TestbedError(f"{name} is not running in the test bed")
    pid = state.pids[name]
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    env = dict(e.decode().split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
    os.killpg(pid, sig)
    deadline = time.monotonic() + 30
    while not _exited(pid, state.identities[name]):
        if time.monotonic() > deadline:
            raise TestbedError(f"{name} (pid {pid}) did not exit after signal {sig}")
        time.sleep(0.05)
    _spawn(state, name, argv, env)
    return state


def _exited(pid: int, identity: str) -> bool:
    """Whether all of a process's threads are gone (its leader turns zombie first, while the others still hold
    its sockets: a restart before then cannot bind the same port)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return not _alive(pid, identity) and len(threads) <= 1


def env_lines(state: State) -> Iterator[str]:
    """Shell `export` lines for the running test bed."""
    yield f"export KUBECONFIG={state.kubeconfig}"
    if "mlflow" in state.urls:
        yield f"export MLFLOW_TRACKING_URI={state.urls['mlflow']}"
    if "prometheus" in state.urls:
        yield f"export SLIPWAY_PROMETHEUS_URL={state.urls['prometheus']}"
        yield f"export SLIPWAY_ALERTMANAGER_URL={state.urls['alertmanager']}"
    import testbed_gateway

    for key, value in testbed_gateway.gateway_env(state).items():
        yield f"export {key}={value}"


def status() -> int:
    """Print what runs; exit 0 when everything recorded is alive."""
    state = State.load(testbed_dir())
    if state is None:
        print("test bed: down")
        return 1
    ok = True
    for name, pid in state.pids.items():
        alive = _alive(pid, state.identities[name])
        ok &= alive
        port = state.ports.get(name) or state.ports.get(name.replace("kube-", ""))
        print(f"{name:<24} pid {pid:<8} {'running' if alive else 'DEAD':<8} {f'127.0.0.1:{port}' if port else ''}")
    for line in env_lines(state):
        print(line)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/testbed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="start the test bed")
    up_p.add_argument(
        "--with", dest="extras", default="", help=f"comma-separated extras to start too: {', '.join(EXTRAS)}"
    )
    sub.add_parser("down", help="stop everything it started")
    sub.add_parser("status", help="say what runs")
    sub.add_parser("build", help="build the binaries (cached by version)")
    sub.add_parser("env", help="print export lines for the running test bed")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            extras = tuple(e for e in args.extras.split(",") if e)
            unknown = set(extras) - set(EXTRAS)
            if unknown:
                parser.error(f"--with: unknown extra(s) {', '.join(sorted(unknown))}; choose from {', '.join(EXTRAS)}")
            for line in env_lines(up(extras)):
                print(line)
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        elif args.command == "build":
            bins = build()
            for name, path in asdict(bins).items():
                print(f"{name}: {path}")
        elif args.command == "env":
            state = State.load(testbed_dir())
            if not is_up(state) or state is None:
                print("test bed is not up", file=sys.stderr)
                return 1
            for line in env_lines(state):
                print(line)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.modules.setdefault("testbed", sys.modules[__name__])  # one module for testbed_kserve's `import testbed`
    sys.exit(main())
