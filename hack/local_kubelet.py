"""A stand-in kubelet for the test bed: runs training pods' containers as local processes, so Jobs train for real.

The test bed has no container runtime, and kwok only pretends that pods run. This process
takes over the pods labelled ``ml.slipway.dev/trainingrun`` (kwok is started with
``--disregard-status-with-label-selector`` for that label, so it leaves them alone) once the
scheduler has bound them to a node:

- it runs each container's ``command`` + ``args`` on this machine, ``python`` being the
  interpreter this script runs with (the project's virtualenv), with the environment a kubelet
  would build: literal values with ``$(VAR)`` expansion of earlier variables, and ``fieldRef``
  values (``metadata.name``/``namespace``/``uid``, ``metadata.annotations['…']`` and
  ``metadata.labels['…']`` — the completion index of an Indexed Job's pod —, ``spec.nodeName``,
  ``status.podIP``); ``$(VAR)`` in the command and args is expanded too. Images are ignored:
  the code must be importable by this interpreter. Output goes to ``<dir>/<namespace>_<pod>.log``;
- it reports the pod ``Running`` (pod IP 127.0.0.1, container started), then ``Succeeded`` or
  ``Failed`` with the exit code in ``containerStatuses[].state.terminated``, which is what the
  real Job controller reads to complete or fail the Job and to apply its ``podFailurePolicy``;
- when a pod it runs is deleted (the Job was deleted, failed or hit its deadline), it sends
  SIGTERM to the container's process group (SIGKILL after the grace period, at most
  ``--max-grace`` seconds), reports the exit code and removes the pod, as a kubelet would.

A DNS shim for distributed runs: in a pod with ``spec.subdomain`` (an Indexed Job behind a
headless Service), peer names ``<host>.<subdomain>[.<namespace>[.svc[.cluster.local]]]`` in the
env and args are replaced with 127.0.0.1, so torchrun's rendezvous on pod 0 works between
local processes. Every pod shares the host's ports: two distributed runs at the same time, or
TensorFlow workers (each one listens on the same port), collide. Single-pod Jobs are the
supported case; multi-worker torchrun works when it is the only one.

Pods it was running when it stopped are reported Failed (exit code 137) when it starts again.

Run with the project's virtualenv (it needs the ``kubernetes`` client):
``.venv/bin/python hack/local_kubelet.py --kubeconfig .testbed/kubeconfig --dir .testbed/pods``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("local-kubelet")

LABEL = "ml.slipway.dev/trainingrun"
POD_IP = "127.0.0.1"
LOST_EXIT_CODE = 137
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_MAP_FIELD = re.compile(r"metadata\.(annotations|labels)\['([^']+)'\]")

Pod = dict[str, Any]


def now() -> str:
    """An RFC 3339 timestamp as Kubernetes writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known variables are replaced, ``$$`` is a ``$``, the rest stays."""

    def one(m: re.Match[str]) -> str:
        return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))

    return _REF.sub(one, value)


def field_value(pod: Pod, path: str) -> str:
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
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
    }
    if path not in known:
        raise ValueError(f"fieldRef {path} is not supported by the local kubelet")
    return str(known[path] or "")


def container_env(pod: Pod, container: Mapping[str, Any]) -> dict[str, str]:
    """The container's env as the kubelet builds it (literal values with expansion, fieldRefs)."""
    out: dict[str, str] = {}
    for var in container.get("env") or []:
        name = str(var["name"])
        source = var.get("valueFrom")
        if source is None:
            out[name] = expand(str(var.get("value") or ""), out)
        elif "fieldRef" in source:
            out[name] = field_value(pod, str(source["fieldRef"]["fieldPath"]))
        else:
            raise ValueError(f"env {name}: only fieldRef is supported by the local kubelet, not {sorted(source)}")
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


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded and ``python`` mapped to this interpreter."""
    argv = [expand(str(a), env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    if not container.get("command"):
        raise ValueError("the container has no command: the local kubelet cannot run an image's ENTRYPOINT")
    if re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", argv[0]):
        argv[0] = sys.executable
    return argv


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


class LocalKubelet:
    """Watches the labelled pods and runs them; one thread per pod waits for its processes."""

    def __init__(self, api: client.CoreV1Api, directory: Path, max_grace: float) -> None:
        self.api = api
        self.dir = directory
        self.max_grace = max_grace
        self.pods: dict[str, PodRun] = {}
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
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        uid, ns, name = str(meta["uid"]), *_ns_name(pod)
        with self.lock:
            run = self.pods.get(uid)
        if meta.get("deletionTimestamp"):
            if run is not None:
                self.stop(run, float(meta.get("deletionGracePeriodSeconds") or 30))
            else:
                self.remove(ns, name)
            return
        if run is not None or uid in self.finished or not spec.get("nodeName"):
            return
        if status.get("phase") in ("Succeeded", "Failed"):
            self.finished.add(uid)
            return
        if status.get("phase") == "Running":
            self.finished.add(uid)  # ours from before a restart: its process is gone
            log.warning("pod %s/%s was running when the local kubelet stopped: failing it", ns, name)
            self.patch_status(pod, _terminal(pod, LOST_EXIT_CODE, "the local kubelet restarted", now()))
            return
        self.start(pod)

    def start(self, pod: Pod) -> None:
        ns, name = _ns_name(pod)
        run = PodRun(ns, name, str(pod["metadata"]["uid"]))
        started = now()
        workdir = self.dir / f"{ns}_{name}"
        workdir.mkdir(parents=True, exist_ok=True)
        peers = peer_pattern(pod)
        hostname = pod["spec"].get("hostname") or name
        try:
            for c in pod["spec"]["containers"]:
                env = container_env(pod, c)
                if peers is not None:
                    env = {k: peers.sub(POD_IP, v) for k, v in env.items()}
                argv = command_line(c, env)
                if peers is not None:
                    argv = [peers.sub(POD_IP, a) for a in argv]
                base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR")}
                full_env = {
                    **base,
                    "HOME": str(workdir),
                    "HOSTNAME": hostname,
                    "PYTHONUNBUFFERED": "1",
                    "MPLBACKEND": "Agg",
                    **env,
                }
                logfile = (self.dir / f"{ns}_{name}.log").open("ab")
                logfile.write(f"# {started} {' '.join(argv)}\n".encode())
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
                logfile.close()
                run.containers.append(Running(str(c["name"]), proc, started))
                log.info("pod %s/%s container %s: pid %d: %s", ns, name, c["name"], proc.pid, " ".join(argv))
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
        grace = min(grace, self.max_grace)
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
        for run in runs:
            for r in run.containers:
                _signal(r, signal.SIGKILL)

    # --- the loop -----------------------------------------------------------------------------

    def run_forever(self) -> None:
        """List, then watch from the list's resourceVersion; relist when the watch expires or breaks."""
        while True:
            try:
                listed = self.api.list_pod_for_all_namespaces(label_selector=LABEL)
                for item in listed.items:
                    self.handle(self.serialize(item))
                version = listed.metadata.resource_version
                stream = watch.Watch().stream(
                    self.api.list_pod_for_all_namespaces,
                    label_selector=LABEL,
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
        "podIP": POD_IP,
        "startTime": started,
        "message": message[:1000],
        "conditions": _conditions(False, "PodFailed"),
        "containerStatuses": [
            _container_status(c, {"terminated": term}, False, None) for c in pod["spec"]["containers"]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_kubelet", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--dir", required=True, type=Path, help="pod logs and working directories")
    parser.add_argument("--max-grace", type=float, default=10.0, help="longest wait between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    api = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    kubelet = LocalKubelet(api, args.dir, args.max_grace)

    def on_term(signum: int, _frame: object) -> None:
        kubelet.shutdown()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info("local kubelet: running pods labelled %s with %s", LABEL, sys.executable)
    kubelet.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
