"""Plays KServe's controller on the test bed (Standard mode): predictor Deployment and Service, a real model server.

The test bed has the real InferenceService CRD but no KServe controller and no container
runtime. This process plays the controller's part for InferenceServices whose predictor is the
Slipway runtime (a custom container running ``python -m slipway_serving``) and whose
``STORAGE_URI`` is a local path (``file://…`` or absolute, what the operator resolves MLflow's
artifacts to on the test bed); it leaves every other InferenceService alone. For each one:

- it runs the serving runtime as a local process — the container's ``command`` + ``args``,
  ``python`` being this interpreter, ``--model-uri /mnt/models`` replaced by the local path
  (where KServe's storage initializer would have downloaded it), ``--http-port`` by a free
  loopback port and ``--host 127.0.0.1`` added — with the container's env, logging to
  ``<dir>/kserve/<namespace>_<isvc>.log``. One process stands in for all the predictor's
  replicas;
- once the model answers ready (``/v2/models/<name>/ready``), it creates the ``<isvc>-predictor``
  Deployment (``minReplicas`` replicas of the container, so the real Deployment controller and
  kwok make it available, which the operator's readiness check reads and the operator's HPA
  targets) and the ``<isvc>-predictor`` Service (port 80 → 8080), both owned by the
  InferenceService;
- it registers the process's ``/metrics`` as a Prometheus target through the test bed's file
  service discovery, labelled ``namespace`` and ``modeldeployment`` (the InferenceService's
  ``ml.slipway.dev/deployment`` label) as a pod-scraping config would, when the test bed runs
  Prometheus;
- it writes the local URL into ``status.url``, ``status.address.url`` and
  ``status.components.predictor.url``, and ``PredictorReady``/``Ready`` conditions (True once
  the model is loaded and the Deployment is available; False with the reason when the process
  dies, after which it is restarted with a backoff, as a kubelet would — but a server that never
  gets ready is given up on after three tries, until the predictor changes);
- when the InferenceService is deleted (or its predictor changes), it stops the process
  (SIGTERM, then SIGKILL) and removes the scrape target; the garbage collector removes the
  Deployment and Service.

Processes stay in this process's group, so stopping the test bed stops them too; SIGTERM stops
them first. Run with the project's virtualenv (it needs the ``kubernetes`` client):
``.venv/bin/python hack/local_kserve.py --kubeconfig .testbed/kubeconfig --dir .testbed``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

import testbed as tb

log = logging.getLogger("local-kserve")

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
LABEL_DEPLOYMENT = "ml.slipway.dev/deployment"
RUNTIME_MODULE = "slipway_serving"
SERVICE_PORT, CONTAINER_PORT = 80, 8080
READY_TIMEOUT = 300.0
AVAILABLE_TIMEOUT = 60.0
STOP_GRACE = 10.0
MAX_BACKOFF = 60.0
MAX_FAILURES = 3

Isvc = dict[str, Any]


class NotServable(ValueError):
    """This InferenceService is not one the stand-in can serve (another runtime, or remote storage)."""


def now() -> str:
    """An RFC 3339 timestamp as Kubernetes writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_path(storage_uri: str) -> str:
    """The local folder a ``file://`` or absolute storage URI names (NotServable for remote storage)."""
    parsed = urlparse(storage_uri)
    if parsed.scheme == "file" and parsed.path.startswith("/"):
        return parsed.path
    if parsed.scheme == "" and storage_uri.startswith("/"):
        return storage_uri
    raise NotServable(f"storage {storage_uri!r} is not local (only file:// and absolute paths are served here)")


def predictor_container(isvc: Isvc) -> dict[str, Any]:
    """The predictor's Slipway container (NotServable when the predictor is anything else)."""
    containers = ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or []
    if len(containers) != 1 or RUNTIME_MODULE not in " ".join(map(str, containers[0].get("command") or [])):
        raise NotServable("the predictor is not one Slipway runtime container (python -m slipway_serving)")
    return dict(containers[0])


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {str(e["name"]): str(e.get("value") or "") for e in container.get("env") or [] if "valueFrom" not in e}


def _arg(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _replace_arg(args: list[str], flag: str, value: str) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == flag and i + 1 < len(args):
            skip = True
            continue
        if not a.startswith(flag + "="):
            out.append(a)
    return [*out, flag, value]


@dataclass(frozen=True)
class Plan:
    """How to serve one InferenceService here: the command line, env and what to tell the API."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    port: int
    model_name: str
    storage_uri: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def plan(isvc: Isvc, port: int) -> Plan:
    """The local command for an InferenceService's Slipway container (NotServable if there is none)."""
    container = predictor_container(isvc)
    env = _env(container)
    storage = env.get("STORAGE_URI") or ""
    path = local_path(storage)
    args = _replace_arg([str(a) for a in container.get("args") or []], "--model-uri", path)
    args = _replace_arg(args, "--http-port", str(port))
    args = _replace_arg(args, "--host", "127.0.0.1")
    command = [str(c) for c in container.get("command") or []]
    if re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", command[0]):
        command[0] = sys.executable
    name = _arg(args, "--model-name") or str(isvc["metadata"]["name"])
    return Plan(tuple(command + args), tuple(sorted(env.items())), port, name, storage)


def serving_key(isvc: Isvc) -> str:
    """What, when it changes, means the process must be restarted: the predictor spec."""
    return repr((isvc.get("spec") or {}).get("predictor"))


def owner(isvc: Isvc) -> dict[str, Any]:
    """A controller owner reference to the InferenceService."""
    meta = isvc["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def predictor_labels(isvc: Isvc) -> dict[str, str]:
    """Labels of the predictor Deployment, its pods and Service, as KServe sets them (plus the ISVC's own)."""
    meta = isvc["metadata"]
    extra = ((isvc.get("spec") or {}).get("predictor") or {}).get("labels") or {}
    return {
        **(meta.get("labels") or {}),
        **extra,
        "app": f"isvc.{meta['name']}-predictor",
        "serving.kserve.io/inferenceservice": str(meta["name"]),
        "component": "predictor",
    }


def build_deployment(isvc: Isvc) -> dict[str, Any]:
    """The ``<isvc>-predictor`` Deployment KServe creates in Standard mode (kwok "runs" its pods)."""
    meta, predictor = isvc["metadata"], (isvc.get("spec") or {}).get("predictor") or {}
    name = f"{meta['name']}-predictor"
    labels = predictor_labels(isvc)
    container = predictor_container(isvc)
    container.pop("readinessProbe", None)  # kwok marks the pods ready; the local process is probed instead
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(meta.get("annotations") or {}),
            "ownerReferences": [owner(isvc)],
        },
        "spec": {
            "replicas": int(predictor.get("minReplicas") or 1),
            "selector": {"matchLabels": {"app": labels["app"]}},
            "template": {
                "metadata": {"labels": labels, "annotations": dict(meta.get("annotations") or {})},
                "spec": {"containers": [container]},
            },
        },
    }


def build_service(isvc: Isvc) -> dict[str, Any]:
    """The ``<isvc>-predictor`` Service (port 80 to the container's 8080) the HTTPRoute's backends name."""
    meta = isvc["metadata"]
    labels = predictor_labels(isvc)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{meta['name']}-predictor",
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner(isvc)],
        },
        "spec": {
            "selector": {"app": labels["app"]},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": CONTAINER_PORT, "protocol": "TCP"}],
        },
    }


def conditions(ready: bool, reason: str, message: str) -> list[dict[str, str]]:
    """KServe's conditions of a Standard-mode InferenceService (what the stand-in can vouch for)."""
    status = "True" if ready else "False"
    t = now()
    return [
        {"type": c, "status": status, "reason": reason, "message": message[:1000], "lastTransitionTime": t}
        for c in ("PredictorReady", "Ready")
    ]


@dataclass
class Served:
    """One InferenceService served by a local process, supervised by a thread."""

    namespace: str
    name: str
    uid: str
    key: str
    isvc: Isvc
    stop: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"kserve-{self.namespace}-{self.name}"


class LocalKServe:
    """Watches InferenceServices; one supervisor thread per served one."""

    def __init__(self, api: client.ApiClient, directory: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.dir = directory
        self.logs = directory / "kserve"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state = tb.State(dir=str(directory))
        self.served: dict[str, Served] = {}
        self.skipped: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    # --- API writes ---------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any]) -> None:
        """Create a Deployment or Service; one that exists already is kept (as the controller's own)."""
        ns, kind = manifest["metadata"]["namespace"], manifest["kind"]
        try:
            if kind == "Deployment":
                self.apps.create_namespaced_deployment(ns, manifest)
            else:
                self.core.create_namespaced_service(ns, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def patch_status(self, s: Served, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, s.namespace, PLURAL, s.name, {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s", s.namespace, s.name, exc.reason)

    def available(self, s: Served) -> bool:
        try:
            dep = self.apps.read_namespaced_deployment_status(f"{s.name}-predictor", s.namespace)
        except ApiException:
            return False
        want = int(dep.spec.replicas or 0)
        return want > 0 and int(dep.status.available_replicas or 0) >= want

    # --- scrape targets -------------------------------------------------------------------------

    def add_target(self, s: Served, port: int) -> None:
        if not (self.dir / "prometheus" / "targets").is_dir():
            return  # the test bed runs no Prometheus
        labels = {"namespace": s.namespace, "pod": f"{s.name}-predictor"}
        deployment = (s.isvc["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT)
        if deployment:
            labels["modeldeployment"] = str(deployment)
        tb.add_scrape_target(self.state, s.target, f"127.0.0.1:{port}", labels)

    def remove_target(self, s: Served) -> None:
        if (self.dir / "prometheus" / "targets").is_dir():
            tb.remove_scrape_target(self.state, s.target)

    # --- events -------------------------------------------------------------------------------

    def handle(self, event_type: str, isvc: Isvc) -> None:
        """Start, restart or stop serving an InferenceService after a watch event."""
        meta = isvc["metadata"]
        uid, ns, name = str(meta["uid"]), str(meta["namespace"]), str(meta["name"])
        with self.lock:
            current = self.served.get(uid)
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            if current is not None:
                self.stop(current)
            return
        key = serving_key(isvc)
        if current is not None:
            if current.key == key:
                current.isvc = isvc
                return
            log.info("%s/%s: predictor changed, restarting", ns, name)
            self.stop(current)
        try:
            plan(isvc, 0)
        except NotServable as exc:
            if (uid, key) not in self.skipped:
                self.skipped.add((uid, key))
                log.info("%s/%s: not served here: %s", ns, name, exc)
            return
        s = Served(ns, name, uid, key, isvc)
        s.thread = threading.Thread(target=self.supervise, args=(s,), name=f"isvc-{ns}-{name}", daemon=True)
        with self.lock:
            self.served[uid] = s
        s.thread.start()

    def stop(self, s: Served) -> None:
        """Stop the process of an InferenceService and forget it."""
        s.stop.set()
        _terminate(s.proc)
        self.remove_target(s)
        with self.lock:
            self.served.pop(s.uid, None)
        log.info("%s/%s: stopped", s.namespace, s.name)

    def supervise(self, s: Served) -> None:
        """Run the model server; publish it once ready; restart it with a backoff when it dies.

        A server that never got ready is tried MAX_FAILURES times in a row, then given up on until
        the predictor changes (a model that cannot load will not load on the fourth try either).
        """
        backoff, failures = 5.0, 0
        while not s.stop.is_set():
            p = plan(s.isvc, free_port())
            logfile = self.logs / f"{s.namespace}_{s.name}.log"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "MLFLOW_", "KUBECONFIG"))}
            env.update(dict(p.env), PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
            with logfile.open("ab") as out:
                out.write(f"# {now()} {' '.join(p.argv)}\n".encode())
                out.flush()
                s.proc = subprocess.Popen(
                    p.argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.logs
                )
            if s.stop.is_set():  # stopped while starting: stop() may have missed this process
                _terminate(s.proc)
                break
            log.info("%s/%s: pid %d serving %s on %s", s.namespace, s.name, s.proc.pid, p.storage_uri, p.url)
            self.patch_status(s, {"conditions": conditions(False, "ModelLoading", f"loading {p.storage_uri}")})
            if self.wait_ready(s, p):
                self.publish(s, p)
                backoff, failures = 5.0, 0
                while not s.stop.is_set() and s.proc.poll() is None:
                    s.stop.wait(0.5)
            else:
                failures += 1
            if s.stop.is_set():
                break
            _terminate(s.proc)
            code = s.proc.returncode
            tail = _tail(logfile)
            self.remove_target(s)
            if failures >= MAX_FAILURES:
                log.warning("%s/%s: model server failed %d times; giving up: %s", s.namespace, s.name, failures, tail)
                self.patch_status(s, {"conditions": conditions(False, "ModelServerFailed", f"exit {code}: {tail}")})
                return
            log.warning("%s/%s: model server exited (%s); restarting in %.0fs", s.namespace, s.name, code, backoff)
            self.patch_status(s, {"conditions": conditions(False, "ModelServerExited", f"exit {code}: {tail}")})
            s.stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def wait_ready(self, s: Served, p: Plan) -> bool:
        """Until the model answers ready (True), or the process exits, times out or is stopped (False)."""
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"{p.url}/v2/models/{p.model_name}/ready"
        while time.monotonic() < deadline and not s.stop.is_set():
            if s.proc is None or s.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            s.stop.wait(0.5)
        return False

    def publish(self, s: Served, p: Plan) -> None:
        """The model is loaded: predictor Deployment and Service, scrape target, status."""
        try:
            self.create(build_deployment(s.isvc))
            self.create(build_service(s.isvc))
        except ApiException as exc:
            log.warning("%s/%s: creating the predictor failed: %s", s.namespace, s.name, exc.reason)
        self.add_target(s, p.port)
        status: dict[str, Any] = {
            "url": p.url,
            "address": {"url": p.url},
            "components": {"predictor": {"url": p.url}},
            "deploymentMode": "Standard",
            "observedGeneration": s.isvc["metadata"].get("generation"),
            "conditions": conditions(False, "PredictorNotAvailable", "waiting for the predictor Deployment"),
        }
        self.patch_status(s, status)
        deadline = time.monotonic() + AVAILABLE_TIMEOUT
        while time.monotonic() < deadline and not s.stop.is_set() and not self.available(s):
            s.stop.wait(0.5)
        if self.available(s):
            message = f"model {p.model_name} served by local pid {s.proc.pid if s.proc else '?'} at {p.url}"
            self.patch_status(s, {"conditions": conditions(True, "Ready", message)})
            log.info("%s/%s: ready at %s", s.namespace, s.name, p.url)

    def shutdown(self) -> None:
        """Stop every model server (SIGTERM, then SIGKILL)."""
        with self.lock:
            everything = list(self.served.values())
        for s in everything:
            s.stop.set()
            _terminate(s.proc)
            self.remove_target(s)

    # --- the loop -----------------------------------------------------------------------------

    def run_forever(self) -> None:
        """List, then watch from the list's resourceVersion; relist when the watch expires or breaks."""
        while True:
            try:
                listed = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                seen = set()
                for item in listed.get("items") or []:
                    seen.add(str(item["metadata"]["uid"]))
                    self.handle("ADDED", item)
                with self.lock:
                    gone = [s for uid, s in self.served.items() if uid not in seen]
                for s in gone:
                    self.stop(s)
                stream = watch.Watch().stream(
                    self.custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=60,
                )
                for event in stream:
                    self.handle(str(event["type"]), event["object"])
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("watch failed: %s; relisting", exc.reason)
                    time.sleep(1)
            except Exception as exc:  # a broken connection: relist
                log.warning("watch failed: %s; relisting", exc)
                time.sleep(1)


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=STOP_GRACE)


def _tail(path: Path, lines: int = 2) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_kserve", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--dir", required=True, type=Path, help="the test bed's folder (logs, Prometheus targets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = config.new_client_from_config(config_file=args.kubeconfig)
    kserve = LocalKServe(api, args.dir.resolve())

    def on_term(signum: int, _frame: object) -> None:
        kserve.shutdown()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info("local KServe: serving Slipway-runtime InferenceServices with %s", sys.executable)
    kserve.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
