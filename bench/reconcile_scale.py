"""Reconcile scale: N ModelDeployments reconciled to steady state by the real operator, against raw creates.

    python bench/reconcile_scale.py [--sizes 100,1000] [--concurrency 4] [--timeout 900]

Uses the running test bed (or brings one up with ``hack/testbed`` and takes it down after).
For each size N, in fresh namespaces on the same API server:

1. the ceiling: N plain ConfigMaps created from this process by ``--concurrency`` threads (the
   API server's raw create throughput as this client sees it);
2. the operator (``python -m slipway -n <ns>``, no MLflow, no Prometheus) is started and, once it
   is up, N pairs are created by the same threads: a ModelVersion (created, then its status set as
   the registry sync would: alias ``champion`` and a storage URI) and a ModelDeployment following
   that alias (canary strategy, Gateway API router). The clock runs from the first create until
   every ModelDeployment is ``Succeeded`` for its current generation with its three children
   (InferenceService, HPA, HTTPRoute) in the API server: steady state.

The operator's resident memory is sampled every 0.2 s from ``/proc/<pid>/status`` (VmRSS; the
kernel's high-water mark VmHWM is read too before it is stopped). Prints, per size: the ceiling
(objects/s), the time to steady state, ModelDeployments/s and its ratio to the ceiling, and memory
(idle, peak, per ModelDeployment). A ModelDeployment costs the operator at least six writes (three
children, its status, kopf's finalizer and annotations), so a ratio near 1/6 would mean the
operator keeps up with the API server. Bounded: each size stops at ``--timeout`` seconds and
reports how far it got. Cleans up its namespaces (finalizers kopf left are stripped after the
operator stops).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    GROUP,
    VERSION,
    free_port,
    install_crds,
    spawn_operator,
    stop_process,
    testbed_up,
    wait_operator_ready,
)
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bed import lifecycle

MODEL_LABEL, VERSION_LABEL, DEPLOYMENT_LABEL = f"{GROUP}/model", f"{GROUP}/version", f"{GROUP}/deployment"
CHILDREN = (
    ("serving.kserve.io", "v1beta1", "inferenceservices"),
    ("gateway.networking.k8s.io", "v1", "httproutes"),
)


# -- the operator ------------------------------------------------------------------------------


class Operator:
    """``python -m slipway`` watching one namespace, with its memory sampled from /proc."""

    def __init__(self, kubeconfig: str, namespace: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc = spawn_operator(kubeconfig, namespace, self.port, log)
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

    def drop_namespace(self, namespace: str, plurals: Iterable[str] = ()) -> None:
        """Delete a namespace; first strip finalizers left on our custom objects (their operator is gone)."""
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(namespace)
        for plural in plurals:
            with contextlib.suppress(ApiException):
                items = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
                names = [i["metadata"]["name"] for i in items if i["metadata"].get("finalizers")]

                def strip(i: int, names: list[str] = names, plural: str = plural) -> None:
                    with contextlib.suppress(ApiException):
                        patch = {"metadata": {"finalizers": None}}
                        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, names[i], patch)

                self.in_parallel(strip, len(names))


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


# -- one size ----------------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    ceiling_seconds: float
    create_seconds: float = 0.0
    steady_seconds: float | None = None
    elapsed: float = 0.0
    done: int = 0
    idle_kb: int = 0
    peak_kb: int = 0
    hwm_kb: int = 0
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


def run_size(api: Api, kubeconfig: str, n: int, timeout: float, logs: Path) -> Result:
    ceiling_ns = api.namespace("bench-ceiling")
    try:

        def configmap(i: int) -> None:
            api.core.create_namespaced_config_map(ceiling_ns, {"metadata": {"name": f"cm-{i}"}, "data": {"k": "v"}})

        result = Result(n, api.in_parallel(configmap, n))
    finally:
        api.drop_namespace(ceiling_ns)
    print(f"  ceiling: {n} ConfigMaps in {result.ceiling_seconds:.1f}s", flush=True)

    ns = api.namespace("bench-scale")
    op = Operator(kubeconfig, ns, logs / f"operator-{n}.log")
    try:
        op.wait_ready()
        time.sleep(2)
        result.idle_kb = max(op.samples[-5:] or [0])

        def pair(i: int) -> None:
            mv = model_version(i)
            name = mv["metadata"]["name"]
            api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modelversions", mv)
            status = {"status": {"aliases": ["champion"], "stage": "None", "storageUri": f"s3://models/m{i}/1"}}
            api.custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "modelversions", name, status)
            api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", model_deployment(i))

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
                now = time.monotonic()
                result.elapsed = now - started
                if result.done >= n:
                    result.steady_seconds = now - started
                    break
                if now - last_print > 30:
                    print(f"  … {result.done}/{n} at steady state after {now - started:.0f}s", flush=True)
                    last_print = now
                time.sleep(1.0 if n <= 200 else 3.0)
            else:
                result.note = f"timed out after {timeout:.0f}s"
        except KeyboardInterrupt:
            result.note = f"interrupted after {time.monotonic() - started:.0f}s"
        result.peak_kb = max(op.samples or [0])
        result.hwm_kb = op.high_water_kb()
    finally:
        op.stop()
        api.drop_namespace(ns, ("modeldeployments", "modelversions"))
    return result


def report(r: Result) -> None:
    print(f"\nN = {r.n}")
    ceiling = r.n / r.ceiling_seconds
    print(f"  ceiling (raw creates, {r.n} ConfigMaps):        {r.ceiling_seconds:8.1f} s  {ceiling:8.1f} objects/s")
    print(f"  workload creates (2 creates + 1 patch per pair):  {r.create_seconds:8.1f} s")
    if r.steady_seconds is None:
        rate = r.done / r.elapsed if r.elapsed else 0.0
        print(f"  steady state NOT reached: {r.done}/{r.n} after {r.elapsed:.0f}s ({r.note}): {rate:.2f} MD/s so far")
        print(f"  ratio MD reconciled/s so far ÷ raw creates/s:     {rate / ceiling:8.4f}")
    else:
        rate = r.n / r.steady_seconds
        print(f"  first create → all {r.n} Succeeded with children: {r.steady_seconds:8.1f} s  {rate:8.1f} MD/s")
        print(f"  ratio MD reconciled/s ÷ raw creates/s:            {rate / ceiling:8.3f}")
        print(f"  ratio steady-state time ÷ workload create time:  {r.steady_seconds / r.create_seconds:8.2f}")
    grow = (r.peak_kb - r.idle_kb) / r.n if r.n else 0
    print(
        f"  operator RSS: idle {r.idle_kb / 1024:.0f} MiB, peak sampled {r.peak_kb / 1024:.0f} MiB, "
        f"VmHWM {r.hwm_kb / 1024:.0f} MiB ({grow:.1f} KiB per ModelDeployment over idle)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="comma-separated numbers of ModelDeployments")
    parser.add_argument("--concurrency", type=int, default=4, help="threads creating objects (both phases)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for steady state per size")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    state, ours = testbed_up(())
    install_crds(state)
    api = Api(state.kubeconfig, args.concurrency)
    logs = Path(tempfile.mkdtemp(prefix="slipway-bench-scale-"))
    print(f"reconcile scale: sizes {sizes}, {args.concurrency} creating threads; operator logs in {logs}")
    results = []
    try:
        for n in sizes:
            print(f"\nN = {n} …", flush=True)
            started = time.monotonic()
            results.append(run_size(api, state.kubeconfig, n, args.timeout, logs))
            print(f"  (size {n} took {time.monotonic() - started:.0f}s in all)", flush=True)
    finally:
        api.api.close()
        if ours:
            lifecycle.down()
    for r in results:
        report(r)
    print(json.dumps([r.__dict__ for r in results]))
    return 0 if all(r.steady_seconds is not None for r in results) else 2


if __name__ == "__main__":
    sys.exit(main())
