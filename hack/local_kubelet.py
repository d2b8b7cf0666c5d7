"""A stand-in kubelet for the test bed: runs training pods and KServe predictor pods as local processes.

The test bed has no container runtime, and kwok only pretends that pods run. This process
takes over two kinds of pods once the scheduler has bound them to a node, and kwok is started
so that it leaves exactly these alone (``--disregard-status-with-label-selector`` and
``--disregard-status-with-annotation-selector``, which kwok ORs; see ``start_kwok`` in ``bed/controlplane.py``):

- **training pods**, labelled ``ml.slipway.dev/trainingrun`` (``restartPolicy: Never``): run to
  completion and reported ``Succeeded``/``Failed`` with the exit code in
  ``containerStatuses[].state.terminated``, which the real Job controller reads to complete or
  fail the Job and to apply its ``podFailurePolicy``. Their pod IP is 127.0.0.1 (see below);
- **predictor pods**, the pods of the Deployments KServe creates, which carry KServe's annotation
  ``internal.serving.kserve.io/storage-initializer-sourceuri`` (set on every predictor with a
  ``storageUri``; KServe's pod webhook injects the ``storage-initializer`` init container for
  it). Their init containers run one after the other to completion (a failed one is retried
  with back-off), then the containers run for good: a container that exits is restarted with
  the kubelet's back-off (10 s doubling to 5 min, ``CrashLoopBackOff`` meanwhile,
  ``restartCount`` counted).

How a container runs: its ``command`` + ``args``, ``python`` being the interpreter this script
runs with (the project's virtualenv), with the environment a kubelet would build: literal
values with ``$(VAR)`` expansion of earlier variables, and ``fieldRef`` values
(``metadata.name``/``namespace``/``uid``, ``metadata.annotations['…']`` and
``metadata.labels['…']``, ``spec.nodeName``, ``status.podIP``); ``$(VAR)`` in the command and
args is expanded too. Images are ignored — the code must be importable by this interpreter —
except that a container without a ``command`` runs its image's entry point when the image is one
this kubelet knows (``IMAGE_ENTRYPOINTS``: KServe's storage initializer image runs
``kserve_storage.Storage.download(<uri>, <dir>)`` from the ``kserve-storage`` package, which is
what that image's entry point does). Output goes to ``<dir>/<namespace>_<pod>.log``.

**Pod network.** Each predictor pod gets its own address from the kubelet's pod range 10.246.0.0/16,
added as a /32 to the loopback interface (``ip addr add … dev lo``; we run as root) while the pod
runs, reported as ``status.podIP``/``podIPs``: the real EndpointSlice controller publishes distinct
endpoints, and two pods can both listen on 8080. Not 127.x.y.z: the API server refuses loopback
addresses in EndpointSlices ("may not be in the loopback range"). ``ip addr add`` fails on an
address already assigned, so test beds running side by side never hand out the same address.
Without network namespaces a process cannot learn its address from the interface it sees, so
the kubelet injects it into every container's environment as ``POD_IP`` and as ``SLIPWAY_HOST``,
the serving runtime's bind-address variable (``python -m slipway_serving --host`` defaults to
it); a container's own ``env`` wins. Training pods keep 127.0.0.1: torchrun's rendezvous between
local processes relies on it (the DNS shim below).

**Volumes.** Every pod gets its own directory per volume under ``<dir>/<namespace>_<pod>/volumes``
(``emptyDir``; ``configMap`` and ``secret`` filled with their keys; other kinds empty, except
``hostPath``, which is the host's path). Each container runs in a private mount namespace
(``unshare --mount --propagation private``; we run as root) where those directories are bind-
mounted onto the container's ``mountPath``s (read-only when asked): two predictor pods both see
their own ``/mnt/models``, filled by their own storage initializer, as in a cluster. Paths are
not rewritten.

**Readiness.** A container's ``readinessProbe`` (``httpGet`` against podIP:port, port by number or
name; ``tcpSocket``; ``exec``) is run as the kubelet does (``initialDelaySeconds``,
``periodSeconds``, ``timeoutSeconds``, ``successThreshold``, ``failureThreshold``); the pod's
``Ready``/``ContainersReady`` conditions and ``containerStatuses[].ready`` follow it. A
container without one is ready once started.

When a pod it runs is deleted, it sends SIGTERM to the containers' process groups (SIGKILL
after the grace period, at most ``--max-grace`` seconds), reports the exit codes and removes the
pod, as a kubelet would. Pods it was running when it stopped are reported Failed (exit code
137) when it starts again (the ReplicaSet controller replaces failed predictor pods).

A DNS shim for distributed runs: in a pod with ``spec.subdomain`` (an Indexed Job behind a
headless Service), peer names ``<host>.<subdomain>[.<namespace>[.svc[.cluster.local]]]`` in the
env and args are replaced with 127.0.0.1, so torchrun's rendezvous on pod 0 works between
local processes. Training pods share the host's ports: two distributed runs at the same time, or
TensorFlow workers (each one listens on the same port), collide. Single-pod Jobs are the
supported case; multi-worker torchrun works when it is the only one.

Run with the project's virtualenv (it needs the ``kubernetes`` client):
``.venv/bin/python hack/local_kubelet.py --kubeconfig .testbed/kubeconfig --dir .testbed/pods``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("local-kubelet")

LABEL = "ml.slipway.dev/trainingrun"
"""Training pods (Jobs of TrainingRuns) carry this label."""
SERVING_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
"""KServe's predictor pods with a storageUri carry this annotation (its pod webhook reads it)."""
POD_IP = "127.0.0.1"
POD_NETWORK = ipaddress.ip_network("10.246.0.0/16")
"""Addresses of long-running pods (not loopback: EndpointSlices refuse 127.0.0.0/8)."""
LOST_EXIT_CODE = 137
BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET = 10.0, 300.0, 600.0
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_MAP_FIELD = re.compile(r"metadata\.(annotations|labels)\['([^']+)'\]")

IMAGE_ENTRYPOINTS: dict[str, list[str]] = {
    # KServe's storage-initializer image: its entry point downloads argv[1] into argv[2].
    "kserve/storage-initializer": [
        "python",
        "-c",
        "import sys; from kserve_storage import Storage; Storage.download(sys.argv[1], sys.argv[2])",
    ],
}

Pod = dict[str, Any]


def is_ours(pod: Pod) -> bool:
    """Whether this kubelet runs the pod (the same rule kwok is told to disregard)."""
    meta = pod.get("metadata") or {}
    return LABEL in (meta.get("labels") or {}) or SERVING_ANNOTATION in (meta.get("annotations") or {})


def long_running(pod: Pod) -> bool:
    """Pods whose containers are restarted forever (Deployments' pods), not run to completion."""
    return bool((pod.get("spec") or {}).get("restartPolicy", "Always") == "Always")


def now() -> str:
    """An RFC 3339 timestamp as Kubernetes writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known variables are replaced, ``$$`` is a ``$``, the rest stays."""

    def one(m: re.Match[str]) -> str:
        return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))

    return _REF.sub(one, value)


def field_value(pod: Pod, path: str, pod_ip: str = POD_IP) -> str:
    """The value of a Downward API ``fieldRef`` for this pod."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    m = _MAP_FIELD.fullmatch(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    known = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": pod_ip,
        "status.hostIP": POD_IP,
    }
    if path not in known:
        raise ValueError(f"fieldRef {path} is not supported by the local kubelet")
    return str(known[path] or "")


KeyRef = tuple[str, str, str]
"""(``secretKeyRef`` or ``configMapKeyRef``, object name, key): one env value read from the API."""


def key_refs(container: Mapping[str, Any]) -> list[tuple[KeyRef, bool]]:
    """The Secret and ConfigMap keys a container's env names, each with whether it is optional."""
    out = []
    for var in container.get("env") or []:
        for kind in ("secretKeyRef", "configMapKeyRef"):
            ref = (var.get("valueFrom") or {}).get(kind)
            if ref is not None:
                out.append(((kind, str(ref["name"]), str(ref["key"])), bool(ref.get("optional"))))
    return out


def read_key_refs(api: client.CoreV1Api, pod: Pod, container: Mapping[str, Any]) -> dict[KeyRef, str]:
    """Read the keys the env names, as a kubelet does before it starts the container (a missing one stops it)."""
    ns = str(pod["metadata"]["namespace"])
    out: dict[KeyRef, str] = {}
    for (kind, name, key), optional in key_refs(container):
        try:
            if kind == "secretKeyRef":
                data = api.read_namespaced_secret(name, ns).data or {}
                value = base64.b64decode(data[key]).decode() if key in data else None
            else:
                value = (api.read_namespaced_config_map(name, ns).data or {}).get(key)
        except ApiException as exc:
            value = None
            if not optional:
                raise ValueError(f"env from {kind} {name}: {exc.reason}") from exc
        if value is None and not optional:
            raise ValueError(f"env from {kind} {name}: no key {key}")
        if value is not None:
            out[(kind, name, key)] = value
    return out


def container_env(
    pod: Pod, container: Mapping[str, Any], pod_ip: str = POD_IP, refs: Mapping[KeyRef, str] | None = None
) -> dict[str, str]:
    """The container's env as a kubelet builds it: literals with expansion, fieldRefs, Secret/ConfigMap keys."""
    out: dict[str, str] = {}
    for var in container.get("env") or []:
        name = str(var["name"])
        source = var.get("valueFrom")
        if source is None:
            out[name] = expand(str(var.get("value") or ""), out)
        elif "fieldRef" in source:
            out[name] = field_value(pod, str(source["fieldRef"]["fieldPath"]), pod_ip)
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secretKeyRef" if "secretKeyRef" in source else "configMapKeyRef"
            key: KeyRef = (kind, str(source[kind]["name"]), str(source[kind]["key"]))
            if key in (refs or {}):
                out[name] = (refs or {})[key]
            elif not source[kind].get("optional"):
                raise ValueError(f"env {name}: {kind} {key[1]}/{key[2]} was not read")
        else:
            raise ValueError(f"env {name}: {sorted(source)} is not supported by the local kubelet")
    return out


def peer_pattern(pod: Pod) -> re.Pattern[str] | None:
    """Names of the pod's peers behind its headless Service (``spec.subdomain``), which all live on 127.0.0.1."""
    sub = (pod.get("spec") or {}).get("subdomain")
    if not sub:
        return None
    ns = re.escape(str(pod["metadata"].get("namespace") or ""))
    return re.compile(
        rf"(?<![\w.-])[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\.{re.escape(sub)}(?:\.{ns}(?:\.svc(?:\.cluster\.local)?)?)?(?![\w-])"
    )


def image_repository(image: str) -> str:
    """``registry/org/name:tag@digest`` → ``org/name`` (what ``IMAGE_ENTRYPOINTS`` is keyed by)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts[-2:])


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded and ``python`` mapped to this interpreter."""
    command = list(container.get("command") or [])
    if not command:
        command = list(IMAGE_ENTRYPOINTS.get(image_repository(str(container.get("image") or "")), []))
    if not command:
        raise ValueError("the container has no command: the local kubelet cannot run an image's ENTRYPOINT")
    argv = [expand(str(a), env) for a in [*command, *(container.get("args") or [])]]
    if re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", argv[0]):
        argv[0] = sys.executable
    return argv


# --------------------------------------------------------------------------- volumes


def prepare_volumes(api: client.CoreV1Api, pod: Pod, root: Path) -> dict[str, Path]:
    """One host directory per volume of the pod: emptyDir empty, configMap/secret filled, hostPath as is."""
    ns = str(pod["metadata"]["namespace"])
    out: dict[str, Path] = {}
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = str(vol["name"])
        if "hostPath" in vol:
            out[name] = Path(vol["hostPath"]["path"])
            continue
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        out[name] = path
        data: dict[str, bytes] = {}
        try:
            if "configMap" in vol:
                cm = api.read_namespaced_config_map(vol["configMap"]["name"], ns)
                data = {k: v.encode() for k, v in (cm.data or {}).items()}
            elif "secret" in vol:
                sec = api.read_namespaced_secret(vol["secret"]["secretName"], ns)
                data = {k: base64.b64decode(v) for k, v in (sec.data or {}).items()}
        except ApiException as exc:
            if not (vol.get("configMap") or vol.get("secret") or {}).get("optional"):
                raise ValueError(f"volume {name}: {exc.reason}") from exc
        for key, value in data.items():
            (path / key).write_bytes(value)
    return out


def mount_wrapper(container: Mapping[str, Any], volumes: Mapping[str, Path], argv: list[str]) -> list[str]:
    """Run ``argv`` in a private mount namespace with the pod's volume directories bound on the mountPaths."""
    mounts = container.get("volumeMounts") or []
    if not mounts:
        return argv
    steps = ["set -e"]
    for m in mounts:
        source = volumes.get(str(m["name"]))
        if source is None:
            raise ValueError(f"volumeMount {m['name']}: no such volume in the pod")
        if m.get("subPath"):
            source = source / str(m["subPath"])
            source.mkdir(parents=True, exist_ok=True)
        target = shlex.quote(str(m["mountPath"]))
        steps.append(f"mkdir -p {target}")
        steps.append(f"mount --bind {shlex.quote(str(source))} {target}")
        if m.get("readOnly"):
            steps.append(f"mount -o remount,bind,ro {target}")
    steps.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "; ".join(steps), "sh", *argv]


# --------------------------------------------------------------------------- processes


@dataclass
class Running:
    """One container of a pod, running as a local process group."""

    name: str
    proc: subprocess.Popen[bytes]
    started: str
    exit_code: int | None = None
    finished: str = ""


@dataclass
class PodRun:
    """The processes of one pod."""

    namespace: str
    name: str
    uid: str
    containers: list[Running] = field(default_factory=list)
    deleting: bool = False
    grace: float = 30.0


def spawn(
    pod: Pod,
    container: Mapping[str, Any],
    directory: Path,
    pod_ip: str,
    volumes: Mapping[str, Path],
    shared_ip: bool,
    refs: Mapping[KeyRef, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start one container as a process group, with the kubelet's environment and the pod's mounts."""
    ns, name = _ns_name(pod)
    workdir = directory / f"{ns}_{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    peers = peer_pattern(pod)
    env = container_env(pod, container, pod_ip, refs)
    if peers is not None:
        env = {k: peers.sub(POD_IP, v) for k, v in env.items()}
    argv = command_line(container, env)
    if peers is not None:
        argv = [peers.sub(POD_IP, a) for a in argv]
    argv = mount_wrapper(container, volumes, argv)
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR")}
    network = {} if shared_ip else {"POD_IP": pod_ip, "SLIPWAY_HOST": pod_ip}
    full_env = {
        **base,
        "HOME": str(workdir),
        "HOSTNAME": (pod.get("spec") or {}).get("hostname") or name,
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        **network,
        **env,
    }
    with (directory / f"{ns}_{name}.log").open("ab") as logfile:
        logfile.write(f"# {now()} {container['name']}: {' '.join(argv)}\n".encode())
        logfile.flush()
        proc = subprocess.Popen(
            argv,
            env=full_env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    log.info("pod %s/%s container %s: pid %d: %s", ns, name, container["name"], proc.pid, " ".join(argv))
    return proc


# --------------------------------------------------------------------------- probes


@dataclass
class Prober:
    """The kubelet's readiness prober for one container: thresholds over periodic checks."""

    probe: Mapping[str, Any]
    container: Mapping[str, Any]
    pod_ip: str
    ready: bool = False
    successes: int = 0
    failures: int = 0

    def port(self, value: Any) -> int:
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        for p in self.container.get("ports") or []:
            if p.get("name") == value:
                return int(p["containerPort"])
        raise ValueError(f"probe port {value!r} names no container port")

    def check(self) -> bool:
        timeout = float(self.probe.get("timeoutSeconds") or 1)
        try:
            if "httpGet" in self.probe:
                get = self.probe["httpGet"]
                host = get.get("host") or self.pod_ip
                scheme = str(get.get("scheme") or "HTTP").lower()
                url = f"{scheme}://{host}:{self.port(get['port'])}{get.get('path') or '/'}"
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                    return 200 <= int(resp.status) < 400
            if "tcpSocket" in self.probe:
                sock = self.probe["tcpSocket"]
                with socket.create_connection((self.pod_ip, self.port(sock["port"])), timeout=timeout):
                    return True
            if "exec" in self.probe:
                return subprocess.run(self.probe["exec"]["command"], timeout=timeout, check=False).returncode == 0
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired, ValueError):
            return False
        return True

    def step(self) -> bool:
        """Probe once; return whether the container's readiness changed."""
        ok = self.check()
        self.successes, self.failures = (self.successes + 1, 0) if ok else (0, self.failures + 1)
        before = self.ready
        if ok and self.successes >= int(self.probe.get("successThreshold") or 1):
            self.ready = True
        elif not ok and (not self.ready or self.failures >= int(self.probe.get("failureThreshold") or 3)):
            self.ready = False
        return before != self.ready


# --------------------------------------------------------------------------- long-running pods


@dataclass
class ContainerState:
    """What the kubelet knows of one container of a long-running pod."""

    spec: Mapping[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    started: str = ""
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    last: dict[str, Any] | None = None
    waiting: str = "ContainerCreating"
    terminated: dict[str, Any] | None = None
    prober: Prober | None = None


class ServicePod:
    """One long-running pod: init containers in order, then the containers, restarted on exit, probed."""

    def __init__(self, kubelet: LocalKubelet, pod: Pod, pod_ip: str) -> None:
        self.kubelet, self.pod, self.ip = kubelet, pod, pod_ip
        self.namespace, self.name = _ns_name(pod)
        self.uid = str(pod["metadata"]["uid"])
        spec = pod.get("spec") or {}
        self.inits = [ContainerState(c) for c in spec.get("initContainers") or []]
        self.mains = [ContainerState(c) for c in spec.get("containers") or []]
        self.initialized = not self.inits
        self.started = now()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.volumes: dict[str, Path] = {}

    # status

    def _status_of(self, c: ContainerState, ready: bool) -> dict[str, Any]:
        if c.terminated is not None:
            state: dict[str, Any] = {"terminated": c.terminated}
        elif c.proc is not None and c.proc.poll() is None:
            state = {"running": {"startedAt": c.started}}
        else:
            state = {"waiting": {"reason": c.waiting}}
        out = _container_status(c.spec, state, ready, c.proc.pid if c.proc else None)
        out["restartCount"] = c.restarts
        out["started"] = "running" in state
        if c.last is not None:
            out["lastState"] = {"terminated": c.last}
        return out

    def status(self) -> dict[str, Any]:
        with self.lock:
            ready_each = [
                (c.proc is not None and c.proc.poll() is None and (c.prober is None or c.prober.ready))
                for c in self.mains
            ]
            ready = self.initialized and all(ready_each)
            t = now()
            conditions = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                {"type": "Initialized", "status": str(self.initialized), "lastTransitionTime": t},
                {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": t},
                {"type": "Ready", "status": str(ready), "lastTransitionTime": t},
            ]
            status: dict[str, Any] = {
                "phase": "Running" if self.initialized else "Pending",
                "hostIP": POD_IP,
                "hostIPs": [{"ip": POD_IP}],
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "startTime": self.started,
                "conditions": conditions,
                "containerStatuses": [self._status_of(c, r) for c, r in zip(self.mains, ready_each, strict=True)],
            }
            if self.inits:
                status["initContainerStatuses"] = [self._status_of(c, c.terminated is not None) for c in self.inits]
            return status

    def report(self) -> None:
        if not self.stopping.is_set():
            self.kubelet.patch_status(self.pod, self.status())

    # lifecycle

    def _start(self, c: ContainerState) -> bool:
        try:
            refs = read_key_refs(self.kubelet.api, self.pod, c.spec)
            proc = spawn(self.pod, c.spec, self.kubelet.dir, self.ip, self.volumes, shared_ip=False, refs=refs)
        except (ValueError, OSError, ApiException) as exc:
            log.error("pod %s/%s container %s cannot run here: %s", self.namespace, self.name, c.spec["name"], exc)
            c.waiting = "CreateContainerError"
            return False
        with self.lock:
            c.proc, c.started, c.started_at, c.terminated = proc, now(), time.monotonic(), None
            probe = c.spec.get("readinessProbe")
            c.prober = Prober(probe, c.spec, self.ip) if probe else None
        return True

    def _exited(self, c: ContainerState, code: int) -> dict[str, Any]:
        if code < 0:  # killed by a signal: a container runtime reports 128 + signal
            code = 128 - code
        assert c.proc is not None
        return {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": c.started,
            "finishedAt": now(),
            "containerID": f"local://{c.proc.pid}",
        }

    def _backoff(self, c: ContainerState) -> float:
        if c.started_at and time.monotonic() - c.started_at > BACKOFF_RESET:
            c.backoff = 0.0
        c.backoff = min(BACKOFF_MAX, c.backoff * 2 if c.backoff else self.kubelet.backoff_start)
        return c.backoff

    def run(self) -> None:
        """The pod's life: inits in order (retried), then the containers, restarted and probed until stopped."""
        try:
            self.volumes = prepare_volumes(
                self.kubelet.api, self.pod, self.kubelet.dir / f"{self.namespace}_{self.name}" / "volumes"
            )
        except (ValueError, OSError) as exc:
            log.error("pod %s/%s: volumes: %s", self.namespace, self.name, exc)
        self.report()
        for c in self.inits:
            while not self.stopping.is_set():
                if not self._start(c):
                    self.report()
                    self.stopping.wait(self._backoff(c))
                    continue
                self.report()
                assert c.proc is not None
                code = c.proc.wait()
                result = self._exited(c, code)
                if self.stopping.is_set():
                    return
                if result["exitCode"] == 0:
                    c.terminated = result
                    break
                c.restarts, c.last, c.waiting, c.proc = c.restarts + 1, result, "CrashLoopBackOff", None
                self.report()
                self.stopping.wait(self._backoff(c))
        if self.stopping.is_set():
            return
        self.initialized = True
        for c in self.mains:
            self._start(c)
        self.report()
        delays = {
            id(c): float((c.spec.get("readinessProbe") or {}).get("initialDelaySeconds") or 0) for c in self.mains
        }
        next_probe = {id(c): time.monotonic() + delays[id(c)] for c in self.mains}
        restart_at: dict[int, float] = {}
        while not self.stopping.wait(0.2):
            changed = False
            for c in self.mains:
                key = id(c)
                if c.proc is not None and c.proc.poll() is not None:
                    result = self._exited(c, int(c.proc.returncode))
                    log.warning(
                        "pod %s/%s container %s exited %d",
                        self.namespace,
                        self.name,
                        c.spec["name"],
                        result["exitCode"],
                    )
                    with self.lock:
                        c.restarts, c.last, c.waiting, c.proc = c.restarts + 1, result, "CrashLoopBackOff", None
                        c.prober = None
                    restart_at[key] = time.monotonic() + self._backoff(c)
                    changed = True
                elif c.proc is None and time.monotonic() >= restart_at.get(key, 0.0):
                    restart_at.pop(key, None)
                    if self._start(c):
                        next_probe[key] = time.monotonic() + delays[key]
                    else:
                        restart_at[key] = time.monotonic() + self._backoff(c)
                    changed = True
                elif c.prober is not None and time.monotonic() >= next_probe[key]:
                    next_probe[key] = time.monotonic() + float(c.prober.probe.get("periodSeconds") or 10)
                    changed |= c.prober.step()
            if changed:
                self.report()

    def stop(self, grace: float) -> None:
        """SIGTERM every process group, SIGKILL after the grace period; then the pod is removed."""
        self.stopping.set()
        procs = [c.proc for c in [*self.inits, *self.mains] if c.proc is not None and c.proc.poll() is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def kill(self) -> None:
        self.stopping.set()
        for c in [*self.inits, *self.mains]:
            if c.proc is not None and c.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)


class AddressPool:
    """Pod addresses from ``POD_NETWORK``, each on ``lo`` while its pod runs (``ip addr add`` refuses a taken one)."""

    def __init__(self) -> None:
        self.hosts = [str(ip) for ip in POD_NETWORK.hosts()]
        self.next = 0
        self.owned: set[str] = set()
        self.lock = threading.Lock()

    def take(self) -> str:
        with self.lock:
            for _ in range(len(self.hosts)):
                ip, self.next = self.hosts[self.next], (self.next + 1) % len(self.hosts)
                added = subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], capture_output=True, check=False)
                if added.returncode == 0:
                    self.owned.add(ip)
                    return ip
        raise RuntimeError(f"no free pod address in {POD_NETWORK}")

    def give(self, ip: str) -> None:
        with self.lock:
            if ip in self.owned:
                self.owned.discard(ip)
                subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True, check=False)

    def release_all(self) -> None:
        for ip in list(self.owned):
            self.give(ip)


# --------------------------------------------------------------------------- the kubelet


class LocalKubelet:
    """Watches the pods it runs (see ``is_ours``) and runs them; one thread per pod."""

    def __init__(
        self, api: client.CoreV1Api, directory: Path, max_grace: float, backoff_start: float = BACKOFF_START
    ) -> None:
        self.api = api
        self.dir = directory
        self.max_grace = max_grace
        self.backoff_start = backoff_start
        self.pods: dict[str, PodRun] = {}
        self.services: dict[str, ServicePod] = {}
        self.addresses = AddressPool()
        self.finished: set[str] = set()
        self.lock = threading.Lock()
        self.serialize = client.ApiClient().sanitize_for_serialization

    # --- API writes ---------------------------------------------------------------------------

    def patch_status(self, pod: PodRun | Pod, status: dict[str, Any]) -> None:
        ns, name = (pod.namespace, pod.name) if isinstance(pod, PodRun) else _ns_name(pod)
        try:
            self.api.patch_namespaced_pod_status(name, ns, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s", ns, name, exc.reason)

    def remove(self, ns: str, name: str) -> None:
        try:
            self.api.delete_namespaced_pod(name, ns, grace_period_seconds=0)
            log.info("removed pod %s/%s", ns, name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("delete %s/%s: %s", ns, name, exc.reason)

    # --- events -------------------------------------------------------------------------------

    def handle(self, pod: Pod) -> None:
        """React to the pod's current state: start it, stop it, or remove it."""
        if not is_ours(pod):
            return
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        uid, ns, name = str(meta["uid"]), *_ns_name(pod)
        with self.lock:
            run = self.pods.get(uid)
            service = self.services.get(uid)
        if meta.get("deletionTimestamp"):
            grace = min(float(meta.get("deletionGracePeriodSeconds") or 30), self.max_grace)
            if run is not None:
                self.stop(run, grace)
            elif service is not None:
                self.stop_service(service, grace)
            else:
                self.remove(ns, name)
            return
        if run is not None or service is not None or uid in self.finished or not spec.get("nodeName"):
            return
        if status.get("phase") in ("Succeeded", "Failed"):
            self.finished.add(uid)
            return
        if status.get("phase") == "Running" or status.get("podIP"):
            self.finished.add(uid)  # ours from before a restart: its process is gone
            log.warning("pod %s/%s was running when the local kubelet stopped: failing it", ns, name)
            self.patch_status(pod, _terminal(pod, LOST_EXIT_CODE, "the local kubelet restarted", now()))
            return
        if long_running(pod):
            self.start_service(pod)
        else:
            self.start(pod)

    def start_service(self, pod: Pod) -> None:
        service = ServicePod(self, pod, self.addresses.take())
        with self.lock:
            self.services[service.uid] = service
        log.info("pod %s/%s: long-running, pod IP %s", service.namespace, service.name, service.ip)
        threading.Thread(target=service.run, name=f"pod-{service.name}", daemon=True).start()

    def stop_service(self, service: ServicePod, grace: float) -> None:
        if service.stopping.is_set():
            return
        log.info("pod %s/%s deleted: stopping it (grace %.0fs)", service.namespace, service.name, grace)

        def stop() -> None:
            service.stop(grace)
            with self.lock:
                self.services.pop(service.uid, None)
                self.finished.add(service.uid)
            self.addresses.give(service.ip)
            self.remove(service.namespace, service.name)

        service.stopping.set()
        threading.Thread(target=stop, daemon=True).start()

    def start(self, pod: Pod) -> None:
        ns, name = _ns_name(pod)
        run = PodRun(ns, name, str(pod["metadata"]["uid"]))
        started = now()
        try:
            volumes = prepare_volumes(self.api, pod, self.dir / f"{ns}_{name}" / "volumes")
            for c in pod["spec"]["containers"]:
                refs = read_key_refs(self.api, pod, c)
                proc = spawn(pod, c, self.dir, POD_IP, volumes, shared_ip=True, refs=refs)
                run.containers.append(Running(str(c["name"]), proc, started))
        except (ValueError, OSError) as exc:
            log.error("pod %s/%s cannot run here: %s", ns, name, exc)
            for r in run.containers:
                _signal(r, signal.SIGKILL)
            self.finished.add(run.uid)
            self.patch_status(pod, _terminal(pod, 127, str(exc), started))
            return
        with self.lock:
            self.pods[run.uid] = run
        self.patch_status(pod, _running(pod, run))
        threading.Thread(target=self.wait, args=(run, pod), name=f"pod-{name}", daemon=True).start()

    def wait(self, run: PodRun, pod: Pod) -> None:
        """Wait for every container; report the pod terminal; remove it if it was being deleted."""
        for r in run.containers:
            r.exit_code = r.proc.wait()
            r.finished = now()
        codes = {r.name: int(r.exit_code or 0) for r in run.containers}
        log.info("pod %s/%s finished: %s", run.namespace, run.name, codes)
        self.patch_status(run, _finished(pod, run))
        with self.lock:
            self.pods.pop(run.uid, None)
            self.finished.add(run.uid)
        if run.deleting:
            self.remove(run.namespace, run.name)

    def stop(self, run: PodRun, grace: float) -> None:
        """The pod is being deleted: SIGTERM now, SIGKILL after the grace period."""
        if run.deleting:
            return
        run.deleting = True
        log.info("pod %s/%s deleted: stopping it (grace %.0fs)", run.namespace, run.name, grace)
        for r in run.containers:
            _signal(r, signal.SIGTERM)

        def kill_later() -> None:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(r.proc.poll() is None for r in run.containers):
                time.sleep(0.2)
            for r in run.containers:
                _signal(r, signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()

    def shutdown(self) -> None:
        """Kill every pod's processes (their pods are failed on the next start)."""
        with self.lock:
            runs = list(self.pods.values())
            services = list(self.services.values())
        for run in runs:
            for r in run.containers:
                _signal(r, signal.SIGKILL)
        for service in services:
            service.kill()
        self.addresses.release_all()

    # --- the loop -----------------------------------------------------------------------------

    def run_forever(self) -> None:
        """List, then watch from the list's resourceVersion; relist when the watch expires or breaks."""
        while True:
            try:
                listed = self.api.list_pod_for_all_namespaces()
                for item in listed.items:
                    self.handle(self.serialize(item))
                version = listed.metadata.resource_version
                stream = watch.Watch().stream(
                    self.api.list_pod_for_all_namespaces,
                    resource_version=version,
                    timeout_seconds=60,
                    allow_watch_bookmarks=False,
                )
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.handle(self.serialize(event["object"]))
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("watch failed: %s; relisting", exc.reason)
                    time.sleep(1)
            except Exception as exc:  # a broken connection: relist
                log.warning("watch failed: %s; relisting", exc)
                time.sleep(1)


def _ns_name(pod: Pod) -> tuple[str, str]:
    return str(pod["metadata"]["namespace"]), str(pod["metadata"]["name"])


def _signal(r: Running, sig: signal.Signals) -> None:
    if r.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(r.proc.pid, sig)


def _conditions(ready: bool, reason: str = "") -> list[dict[str, Any]]:
    t = now()
    out = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t}]
    out.append({"type": "Initialized", "status": "True", "lastTransitionTime": t})
    for type_ in ("ContainersReady", "Ready"):
        cond = {"type": type_, "status": "True" if ready else "False", "lastTransitionTime": t}
        if reason:
            cond["reason"] = reason
        out.append(cond)
    return out


def _container_status(c: Mapping[str, Any], state: dict[str, Any], ready: bool, pid: int | None) -> dict[str, Any]:
    return {
        "name": c["name"],
        "image": c.get("image", ""),
        "imageID": "",
        "containerID": f"local://{pid}" if pid else "",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
    }


def _running(pod: Pod, run: PodRun) -> dict[str, Any]:
    pids = {r.name: r.proc.pid for r in run.containers}
    started = run.containers[0].started if run.containers else now()
    return {
        "phase": "Running",
        "hostIP": POD_IP,
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
        "startTime": started,
        "conditions": _conditions(True),
        "containerStatuses": [
            _container_status(c, {"running": {"startedAt": started}}, True, pids.get(c["name"]))
            for c in pod["spec"]["containers"]
        ],
    }


def _finished(pod: Pod, run: PodRun) -> dict[str, Any]:
    by_name = {r.name: r for r in run.containers}
    statuses = []
    for c in pod["spec"]["containers"]:
        r = by_name[c["name"]]
        code = int(r.exit_code or 0)
        if code < 0:  # killed by a signal: a container runtime reports 128 + signal
            code = 128 - code
        term = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": r.started,
            "finishedAt": r.finished,
            "containerID": f"local://{r.proc.pid}",
        }
        statuses.append(_container_status(c, {"terminated": term}, False, r.proc.pid))
    ok = all(s["state"]["terminated"]["exitCode"] == 0 for s in statuses)
    return {
        "phase": "Succeeded" if ok else "Failed",
        "conditions": _conditions(False, "PodCompleted" if ok else "PodFailed"),
        "containerStatuses": statuses,
    }


def _terminal(pod: Pod, code: int, message: str, started: str) -> dict[str, Any]:
    term = {"exitCode": code, "reason": "Error", "message": message[:1000], "startedAt": started, "finishedAt": now()}
    return {
        "phase": "Failed",
        "hostIP": POD_IP,
        "podIP": (pod.get("status") or {}).get("podIP") or POD_IP,
        "startTime": started,
        "message": message[:1000],
        "conditions": _conditions(False, "PodFailed"),
        "containerStatuses": [
            _container_status(c, {"terminated": term}, False, None) for c in pod["spec"]["containers"]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_kubelet", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--dir", required=True, type=Path, help="pod logs and working directories")
    parser.add_argument("--max-grace", type=float, default=10.0, help="longest wait between SIGTERM and SIGKILL")
    parser.add_argument(
        "--backoff", type=float, default=BACKOFF_START, help="first restart delay of a crashed container (doubles)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    api = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    kubelet = LocalKubelet(api, args.dir, args.max_grace, args.backoff)

    def on_term(signum: int, _frame: object) -> None:
        kubelet.shutdown()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info(
        "local kubelet: running pods labelled %s or annotated %s with %s", LABEL, SERVING_ANNOTATION, sys.executable
    )
    kubelet.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
