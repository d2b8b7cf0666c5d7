"""Reconcile scale: N ModelDeployments reconciled to steady state by the real operator, against raw writes.

    python bench/reconcile_scale.py [--sizes 100,1000] [--concurrency 4] [--timeout 900] [--workers 8]
                                    [--ceiling-max 1000]

Uses the running test bed (or brings one up with ``hack/testbed`` and takes it down after).
For each size N, in fresh namespaces on the same API server, in the same run:

1. the ceiling (issue 17): the writes a ModelDeployment needs, made raw by ``--concurrency``
   threads of this process for N ModelDeployments created beforehand (not timed): per deployment
   a server-side apply of its InferenceService, of its HPA and of its HTTPRoute (the manifests the
   operator's builders make for version 1, owner reference included) and a merge patch of its
   status (the status of a first version that succeeded), no reads; and, for comparison with
   earlier runs, N plain ConfigMaps created by the same threads (the old ceiling). The ceiling's
   namespace is then deleted and the bench waits until it is gone;
2. the operator (``python -m slipway -n <ns>``, no MLflow, no Prometheus) is started and, once it
   is up, N pairs are created by the same threads: a ModelVersion (created, then its status set as
   the registry sync would: alias ``champion`` and a storage URI) and a ModelDeployment following
   that alias (canary strategy, Gateway API router). The clock runs from the first create until
   every ModelDeployment is ``Succeeded`` for its current generation with its three children
   (InferenceService, HPA, HTTPRoute) in the API server: steady state.

Storage URIs are ``pvc://bench-models/…`` by default (``--storage-prefix``): the PVC does not
exist, so KServe's predictor pods stay Pending and the test bed's local kubelet starts no storage
initializer or model server for them (with ``s3://`` it would try to run one per deployment; the
operator's steady state does not wait for predictors to be ready on a first version).

Measured over the operator phase: the kube-apiserver's ``apiserver_request_total`` by verb and
resource (what the operator, the bench's creates and polls, KServe's controller and the HPA
controller sent), the operator's work queue (``slipway_workqueue_*`` from its ``/metrics``:
passes, retries, time in passes and waiting, hence how busy its workers were), CPU seconds of
the operator, kube-apiserver and etcd (``/proc/<pid>/stat``), and the operator's resident memory,
sampled every 0.2 s from ``/proc/<pid>/status`` (VmRSS; the kernel's high-water mark VmHWM is
read too before it is stopped). Prints, per size: both ceilings, the time to steady state,
ModelDeployments/s and its ratio to the ceiling (in ModelDeployments/s: the target is ≥ 0.5 at
1,000), the requests per ModelDeployment, the work queue, CPU and memory. Bounded: each size
stops at ``--timeout`` seconds and reports how far it got. Cleans up its namespaces and waits
until each is gone (the operator puts no finalizer on its objects: nothing to strip).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    GROUP,
    VERSION,
    RequestKey,
    apiserver_requests,
    client_requests,
    cpu_seconds,
    free_port,
    install_crds,
    operator_metrics,
    request_name,
    spawn_operator,
    stop_process,
    testbed_up,
    wait_for,
    wait_operator_ready,
    workqueue,
)
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bed import lifecycle
from bed.state import State
from slipway.api.modeldeployment import ModelDeployment
from slipway.builders.hpa import build_hpa
from slipway.builders.httproute import build_http_route
from slipway.builders.inferenceservice import build_inference_service
from slipway.reconcilers.driver import WORKERS
from slipway.reconcilers.modeldeployment import status_of
from slipway.rollout.state import RolloutState

MODEL_LABEL, VERSION_LABEL, DEPLOYMENT_LABEL = f"{GROUP}/model", f"{GROUP}/version", f"{GROUP}/deployment"
CHILDREN = (
    ("serving.kserve.io", "v1beta1", "inferenceservices"),
    ("gateway.networking.k8s.io", "v1", "httproutes"),
)


# -- the operator ------------------------------------------------------------------------------


class Operator:
    """``python -m slipway`` watching one namespace, with its memory sampled from /proc."""

    def __init__(self, kubeconfig: str, namespace: str, log: Path, workers: int) -> None:
        self.port = free_port()
        self.log = log
        self.proc = spawn_operator(kubeconfig, namespace, self.port, log, env={"SLIPWAY_WORKERS": str(workers)})
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _status_kb(self, field: str) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            rss = self._status_kb("VmRSS")
            if rss:
                self.samples.append(rss)

    def wait_ready(self, timeout: float = 120) -> None:
        wait_operator_ready(self.proc, self.port, self.log, "start_driver", timeout)

    def high_water_kb(self) -> int:
        return self._status_kb("VmHWM")

    def stop(self) -> None:
        self._stop.set()
        stop_process(self.proc)


# -- the API server ----------------------------------------------------------------------------


class Api:
    """The kubernetes client with a connection pool as wide as the creating threads."""

    def __init__(self, kubeconfig: str, concurrency: int) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = max(4, concurrency * 2)
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.concurrency = concurrency

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def in_parallel(self, work: Callable[[int], None], n: int) -> float:
        """Run work(0..n-1) on the threads; returns the seconds it took."""
        started = time.monotonic()
        with ThreadPoolExecutor(self.concurrency) as pool:
            for _ in pool.map(work, range(n)):
                pass
        return time.monotonic() - started

    def count(self, group: str, version: str, plural: str, namespace: str) -> int:
        items = self.custom.list_namespaced_custom_object(group, version, namespace, plural)["items"]
        return len(items)

    def hpas(self, namespace: str) -> int:
        return len(client.AutoscalingV2Api(self.api).list_namespaced_horizontal_pod_autoscaler(namespace).items)

    def drop_namespace(self, namespace: str, wait: float = 0.0) -> bool:
        """Delete a namespace; with ``wait``, wait that long for it to be gone (True if it went)."""
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(namespace)
        if not wait:
            return False

        def gone() -> bool:
            try:
                self.core.read_namespace(namespace)
            except ApiException as exc:
                return bool(exc.status == 404)
            return False

        try:
            wait_for(f"namespace {namespace} to go", gone, wait, 1.0)
        except TimeoutError:
            return False
        return True

    def raw(self, method: str, path: str, body: dict[str, Any], content_type: str, query: list[Any]) -> None:
        """One request, its answer read and dropped (no deserialisation: the client costs as little as it can)."""
        response = self.api.call_api(
            path,
            method,
            query_params=query,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=60,
        )[0]
        response.data  # noqa: B018 (read the answer, as a client that uses it would)

    def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply of a namespaced manifest (forced; field manager ``slipway-bench``), as the operator's."""
        meta = manifest["metadata"]
        path = (
            f"/apis/{manifest['apiVersion']}/namespaces/{meta['namespace']}/{PLURALS[manifest['kind']]}/{meta['name']}"
        )
        query = [("fieldManager", "slipway-bench"), ("force", "true")]
        self.raw("PATCH", path, manifest, "application/apply-patch+yaml", query)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge patch of a ModelDeployment's status subresource, as the operator writes it."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/modeldeployments/{name}/status"
        self.raw("PATCH", path, {"status": status}, "application/merge-patch+json", [])


PLURALS = {
    "InferenceService": "inferenceservices",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "HTTPRoute": "httproutes",
}
POLL_SECONDS = 0.25
"""How often steady state is checked (a list of the ModelDeployments; four times as seldom above 200)."""
STORAGE_PREFIX = "pvc://bench-models"
"""Storage URIs of the bench's models: a PVC that does not exist (predictor pods stay Pending; see the module)."""


def version_status(i: int, prefix: str = STORAGE_PREFIX) -> dict[str, Any]:
    """The status the registry sync would give ModelVersion ``m<i>-v1``: alias ``champion`` and a storage URI."""
    return {"status": {"aliases": ["champion"], "stage": "None", "storageUri": f"{prefix}/m{i}/1"}}


def model_version(i: int) -> dict[str, Any]:
    model = f"m{i}"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelVersion",
        "metadata": {"name": f"{model}-v1", "labels": {MODEL_LABEL: model, VERSION_LABEL: "1"}},
        "spec": {"model": model, "version": "1"},
    }


def model_deployment(i: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": f"md-{i}"},
        "spec": {
            "model": {"name": f"m{i}", "track": {"alias": "champion"}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
        },
    }


# -- the ceiling: what a ModelDeployment needs, written raw ------------------------------------


def needed_writes(
    md: dict[str, Any], uid: str, namespace: str, storage_uri: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The children the operator applies for a first version (the builders' manifests) and its status then."""
    body = {**md, "metadata": {**md["metadata"], "namespace": namespace, "uid": uid, "generation": 1}}
    model = ModelDeployment.model_validate(body)
    children = [
        build_inference_service(model, "1", storage_uri),
        build_hpa(model, "1"),
        build_http_route(model, {"1": 100}),
    ]
    state = RolloutState(phase="Succeeded", reason="FirstVersion", stable_version="1", message="v1 serving all traffic")
    return children, status_of(model, {}, state, "1", stable_ready=False)


def ceiling(api: Api, n: int, prefix: str) -> tuple[float, float]:
    """Seconds for the raw writes N ModelDeployments need, and for N ConfigMaps, in a namespace deleted after."""
    ns = api.namespace("bench-ceiling")
    try:
        writes: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [("", [], {})] * n

        def create(i: int) -> None:  # not timed: the ModelDeployments whose children and status are written
            md = model_deployment(i)
            out = api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", md)
            children, status = needed_writes(md, out["metadata"]["uid"], ns, f"{prefix}/m{i}/1")
            writes[i] = (md["metadata"]["name"], children, status)

        api.in_parallel(create, n)

        def write(i: int) -> None:
            name, children, status = writes[i]
            for manifest in children:
                api.apply(manifest)
            api.patch_status(ns, name, status)

        needed = api.in_parallel(write, n)

        def configmap(i: int) -> None:
            api.core.create_namespaced_config_map(ns, {"metadata": {"name": f"cm-{i}"}, "data": {"k": "v"}})

        configmaps = api.in_parallel(configmap, n)
    finally:
        started = time.monotonic()
        went = api.drop_namespace(ns, wait=300)
        print(f"  ceiling namespace {'deleted' if went else 'NOT gone'} after {time.monotonic() - started:.0f}s")
    return needed, configmaps


# -- one size ----------------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    ceiling_seconds: float | None
    configmap_seconds: float | None
    workers: int = WORKERS
    create_seconds: float = 0.0
    steady_seconds: float | None = None
    elapsed: float = 0.0
    done: int = 0
    idle_kb: int = 0
    peak_kb: int = 0
    hwm_kb: int = 0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    requests: Counter[RequestKey] = field(default_factory=Counter)
    own: Counter[tuple[str, str]] = field(default_factory=Counter)
    queue: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    polls: int = 0
    note: str = ""


def steady(api: Api, namespace: str, n: int) -> int:
    """How many ModelDeployments are Succeeded for their generation with their children there."""
    items = api.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments")["items"]
    done = sum(
        1
        for md in items
        if (md.get("status") or {}).get("phase") == "Succeeded"
        and (md.get("status") or {}).get("observedGeneration") == md["metadata"].get("generation")
    )
    if done < n:
        return done
    children = [api.count(g, v, p, namespace) for g, v, p in CHILDREN] + [api.hpas(namespace)]
    return n if all(c >= n for c in children) else n - 1


def run_size(
    api: Api, state: State, n: int, timeout: float, logs: Path, prefix: str, workers: int, ceiling_max: int
) -> Result:
    if n <= ceiling_max:
        needed, configmaps = ceiling(api, n, prefix)
        print(
            f"  ceiling: the writes of {n} ModelDeployments in {needed:.1f}s; {n} ConfigMaps in {configmaps:.1f}s",
            flush=True,
        )
        result = Result(n, needed, configmaps, workers)
    else:
        print(f"  no ceiling above --ceiling-max {ceiling_max}: convergence and memory only", flush=True)
        result = Result(n, None, None, workers)

    ns = api.namespace("bench-scale")
    op = Operator(state.kubeconfig, ns, logs / f"operator-{n}.log", workers)
    pids = {"operator": op.proc.pid, "kube-apiserver": state.pids["kube-apiserver"], "etcd": state.pids["etcd"]}
    try:
        op.wait_ready()
        time.sleep(2)
        result.idle_kb = max(op.samples[-5:] or [0])

        def pair(i: int) -> None:
            mv = model_version(i)
            name = mv["metadata"]["name"]
            api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modelversions", mv)
            api.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, "modelversions", name, version_status(i, prefix)
            )
            api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", model_deployment(i))

        requests0 = apiserver_requests(api.api)
        metrics0 = operator_metrics(op.port)
        queue0, own0 = workqueue(metrics0), client_requests(metrics0)
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        result.create_seconds = api.in_parallel(pair, n)
        print(f"  created {n} ModelVersions (+status) and ModelDeployments in {result.create_seconds:.1f}s", flush=True)
        deadline, last_print = started + timeout, 0.0
        try:
            while time.monotonic() < deadline:
                if op.proc.poll() is not None:
                    result.note = f"operator exited with {op.proc.returncode}"
                    break
                result.done = steady(api, ns, n)
                result.polls += 1
                now = time.monotonic()
                result.elapsed = now - started
                if result.done >= n:
                    result.steady_seconds = now - started
                    break
                if now - last_print > 30:
                    print(f"  … {result.done}/{n} at steady state after {now - started:.0f}s", flush=True)
                    last_print = now
                time.sleep(POLL_SECONDS if n <= 200 else 4 * POLL_SECONDS)
            else:
                result.note = f"timed out after {timeout:.0f}s"
        except KeyboardInterrupt:
            result.note = f"interrupted after {time.monotonic() - started:.0f}s"
        result.load = os.getloadavg()
        result.cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        result.requests = apiserver_requests(api.api) - requests0
        if op.proc.poll() is None:
            metrics1 = operator_metrics(op.port)
            queue1 = workqueue(metrics1)
            result.own = client_requests(metrics1) - own0
            result.queue = {k: queue1[k] - queue0.get(k, 0.0) for k in queue1}
            result.queue["depth"] = queue1["depth"]
        result.peak_kb = max(op.samples or [0])
        result.hwm_kb = op.high_water_kb()
    finally:
        op.stop()
        started = time.monotonic()  # gone before the next size or bench: its deletion loads the API server
        went = api.drop_namespace(ns, wait=300)
        print(f"  namespace {'deleted' if went else 'NOT gone'} after {time.monotonic() - started:.0f}s", flush=True)
    return result


def report(r: Result, concurrency: int) -> None:
    print(f"\nN = {r.n} (load average at steady state {r.load[0]:.1f} / {r.load[1]:.1f} / {r.load[2]:.1f})")
    ceiling_md = r.n / r.ceiling_seconds if r.ceiling_seconds else None
    if r.ceiling_seconds and ceiling_md and r.configmap_seconds:
        print(
            f"  ceiling: raw writes a ModelDeployment needs (3 applies + 1 status patch), {concurrency} threads: "
            f"{r.ceiling_seconds:8.1f} s  {4 * ceiling_md:8.1f} writes/s  {ceiling_md:8.1f} MD/s"
        )
        print(
            f"  old ceiling: {r.n} ConfigMaps created, {concurrency} threads:                      "
            f"{r.configmap_seconds:8.1f} s  {r.n / r.configmap_seconds:8.1f} objects/s"
        )
    print(f"  workload creates (2 creates + 1 patch per pair):  {r.create_seconds:8.1f} s")
    if r.steady_seconds is None:
        rate = r.done / r.elapsed if r.elapsed else 0.0
        print(f"  steady state NOT reached: {r.done}/{r.n} after {r.elapsed:.0f}s ({r.note}): {rate:.2f} MD/s so far")
        if ceiling_md:
            print(f"  ratio MD/s so far ÷ ceiling MD/s:                 {rate / ceiling_md:8.4f}")
    else:
        rate = r.n / r.steady_seconds
        print(f"  first create → all {r.n} Succeeded with children: {r.steady_seconds:8.1f} s  {rate:8.1f} MD/s")
        if ceiling_md and r.configmap_seconds:
            print(f"  ratio MD/s ÷ ceiling MD/s (target ≥ 0.5 at 1000): {rate / ceiling_md:8.3f}")
            print(f"  ratio MD/s ÷ ConfigMaps/s (the old measure):      {rate / (r.n / r.configmap_seconds):8.3f}")
        print(f"  ratio steady-state time ÷ workload create time:  {r.steady_seconds / r.create_seconds:8.2f}")
    elapsed = r.steady_seconds or r.elapsed
    total = sum(r.requests.values())
    print(f"  API requests, first create to steady state: {total} ({total / r.n:.1f} per MD), by verb and resource")
    print(
        f"  (all clients: the operator, the bench's {3 * r.n} creates and {r.polls} polls, KServe, the HPA controller)"
    )
    for key, count in r.requests.most_common(16):
        print(f"    {request_name(key):60} {count:8d} {count / r.n:7.2f}/MD")
    own = sum(r.own.values())
    print(f"  of them the operator's own (slipway_api_requests_total): {own} ({own / r.n:.2f} per MD)")
    for (verb, kind), count in r.own.most_common(8):
        print(f"    {verb + ' ' + kind:60} {count:8d} {count / r.n:7.2f}/MD")
    q = r.queue
    if q.get("passes"):
        busy = q["work_seconds"] / (r.workers * elapsed) if elapsed else 0.0
        pass_ms, wait_ms = q["work_seconds"] / q["passes"] * 1e3, q["wait_seconds"] / max(q["waits"], 1) * 1e3
        print(
            f"  work queue: {q['passes']:.0f} passes ({q['passes'] / r.n:.2f}/MD), {q['adds']:.0f} adds, "
            f"{q['retries']:.0f} retries, depth {q['depth']:.0f} at the end; a pass took {pass_ms:.0f} ms on "
            f"average, a key waited {wait_ms:.0f} ms; {r.workers} workers busy {busy:.0%} of the time"
        )
    if r.cpu and elapsed:
        print(
            "  CPU over the phase: "
            + ", ".join(f"{name} {sec:.1f} s ({sec / elapsed:.0%} of a core)" for name, sec in r.cpu.items())
        )
    grow = (r.peak_kb - r.idle_kb) / r.n if r.n else 0
    print(
        f"  operator RSS: idle {r.idle_kb / 1024:.0f} MiB, peak sampled {r.peak_kb / 1024:.0f} MiB, "
        f"VmHWM {r.hwm_kb / 1024:.0f} MiB ({grow:.1f} KiB per ModelDeployment over idle)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="comma-separated numbers of ModelDeployments")
    parser.add_argument("--concurrency", type=int, default=4, help="threads writing objects (ceiling and workload)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for steady state per size")
    parser.add_argument("--storage-prefix", default=STORAGE_PREFIX, help="storage URIs of the models (see above)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="the operator's work-queue workers")
    parser.add_argument(
        "--ceiling-max", type=int, default=1000, help="sizes above it skip the ceiling (convergence and memory only)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    state, ours = testbed_up(())
    install_crds(state)
    api = Api(state.kubeconfig, args.concurrency)
    logs = Path(tempfile.mkdtemp(prefix="slipway-bench-scale-"))
    print(
        f"reconcile scale: sizes {sizes}, {args.concurrency} writing threads, {args.workers} operator workers; "
        f"operator logs in {logs}"
    )
    results = []
    try:
        for n in sizes:
            print(f"\nN = {n} …", flush=True)
            started = time.monotonic()
            results.append(
                run_size(api, state, n, args.timeout, logs, args.storage_prefix, args.workers, args.ceiling_max)
            )
            print(f"  (size {n} took {time.monotonic() - started:.0f}s in all)", flush=True)
    finally:
        api.api.close()
        if ours:
            lifecycle.down()
    for r in results:
        report(r, args.concurrency)
    summary = [
        {
            **{k: v for k, v in r.__dict__.items() if k not in ("requests", "own")},
            "requests": {request_name(k): c for k, c in r.requests.items()},
            "own": {f"{verb} {kind}": c for (verb, kind), c in r.own.items()},
        }
        for r in results
    ]
    print(json.dumps(summary))
    return 0 if all(r.steady_seconds is not None for r in results) else 2


if __name__ == "__main__":
    sys.exit(main())
