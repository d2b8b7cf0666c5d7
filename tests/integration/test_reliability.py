"""Reliability on the real test bed: SIGKILL mid-rollout, MLflow/Prometheus/Alertmanager outages, an API server restart.

What each test checks is the behaviour docs/runbook.md documents. The operator always runs for
real (``python -m slipway`` as a subprocess). The SIGKILL seeds run concurrently (each in its own
namespace with its own operator) so that the canary's default 30 s scale-down delay is waited out once,
not once per seed; each seed is still its own parametrised test. ``-s`` prints where each kill
landed and how long things took.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kube_objects import MetricsEndpoint
from operator_fixture import StartOperator, TcpProxy, start_operator
from operator_process import OperatorProcess, free_port
from prometheus_client import Gauge

pytestmark = pytest.mark.integration
__all__ = ["start_operator"]  # a fixture, imported for pytest

T = TypeVar("T")
GROUP, VERSION = "ml.slipway.dev", "v1alpha1"
MODEL = "digits"
MD = "digits"
LABEL_DEPLOYMENT = "ml.slipway.dev/deployment"
LABEL_VERSION = "ml.slipway.dev/version"
NO_MLFLOW = {"SLIPWAY_MLFLOW_URI": "", "MLFLOW_TRACKING_URI": ""}
"""Operators of tests that create ModelVersions by hand must not mirror MLflow over them."""
ALERT_TOKEN = "reliability-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parents[2]


def wait_for(what: str, probe: Callable[[], T], timeout: float, interval: float = 0.25) -> T:
    """Poll until probe() is truthy; returns its value (AssertionError with the last value on timeout)."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = probe()
    return last


# --------------------------------------------------------------------------- the cluster, through the Python client


class Cluster:
    """The objects these tests create and read, through the kubernetes client (one per thread)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.hpa = client.AutoscalingV2Api(self.api)

    def close(self) -> None:
        self.api.close()

    def create_namespace(self) -> str:
        name = f"rel-{uuid.uuid4().hex[:10]}"
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def delete_namespace(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.core.delete_namespace(name)

    # ModelVersions as the registry sync would write them (status through the subresource)
    def model_version(self, ns: str, version: str, aliases: list[str]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelVersion",
            "metadata": {"name": f"{MODEL}-v{version}", "labels": {f"{GROUP}/model": MODEL, LABEL_VERSION: version}},
            "spec": {"model": MODEL, "version": version},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modelversions", body)
        self.set_aliases(ns, version, aliases)

    def set_aliases(self, ns: str, version: str, aliases: list[str]) -> None:
        status = {"aliases": aliases, "stage": "None", "storageUri": f"s3://models/{MODEL}/{version}"}
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, "modelversions", f"{MODEL}-v{version}", {"status": status}
        )

    def move_alias(self, ns: str, old: str, new: str) -> None:
        self.set_aliases(ns, old, [])
        self.set_aliases(ns, new, ["champion"])

    def predictor(self, ns: str, version: str, md: str = MD, replicas: int = 1) -> None:
        """A predictor Deployment with fake pods (kwok), made before KServe's controller makes its own (a selector
        clash KServe reports in an event; the operator reads only the Deployment's available replicas); made at 0
        replicas ahead, a second call scales it."""
        name = f"{md}-v{version}-predictor"
        labels = {"app": name}
        body = {
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "kserve-container", "image": "registry.invalid/serving:1"}]},
                },
            },
        }
        if replicas and self._exists(ns, name):  # made ahead at 0 replicas: scale it
            self.apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": replicas}})
            return
        self.apps.create_namespaced_deployment(ns, body)

    def _exists(self, ns: str, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.apps.read_namespaced_deployment(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def predictor_available(self, ns: str, version: str, md: str = MD) -> bool:
        dep = self.apps.read_namespaced_deployment(f"{md}-v{version}-predictor", ns)
        return bool((dep.status.available_replicas or 0) >= 1)

    def deploy(self, ns: str, strategy: dict[str, Any], md: str = MD, **spec: Any) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": md},
            "spec": {
                "model": {"name": MODEL, "track": {"alias": "champion"}},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
                "strategy": strategy,
                "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
                **spec,
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", body)

    def md(self, ns: str, md: str = MD) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            out: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", md)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return out

    def status(self, ns: str, md: str = MD) -> dict[str, Any]:
        return dict((self.md(ns, md) or {}).get("status") or {})

    def patch_md(self, ns: str, patch: dict[str, Any], md: str = MD) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", md, patch)

    def children(self, ns: str, md: str = MD) -> dict[str, list[dict[str, Any]]]:
        """InferenceServices, HPAs and HTTPRoutes carrying the deployment's label (raw objects)."""
        selector = f"{LABEL_DEPLOYMENT}={md}"
        isvcs = self.custom.list_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", ns, "inferenceservices", label_selector=selector
        )["items"]
        routes = self.custom.list_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", ns, "httproutes", label_selector=selector
        )["items"]
        hpas = self.api.sanitize_for_serialization(
            self.hpa.list_namespaced_horizontal_pod_autoscaler(ns, label_selector=selector)
        )["items"]
        return {"InferenceService": isvcs, "HorizontalPodAutoscaler": hpas, "HTTPRoute": routes}

    def route_weights(self, ns: str, md: str = MD) -> dict[str, int]:
        routes = self.children(ns, md)["HTTPRoute"]
        if not routes:
            return {}
        refs = routes[0]["spec"]["rules"][0]["backendRefs"]
        return {r["name"].removeprefix(f"{md}-v").removesuffix("-predictor"): r.get("weight", 1) for r in refs}

    def delete_md(self, ns: str, md: str = MD) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", md)

    def drop_finalizers(self, ns: str, md: str = MD) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            self.patch_md(ns, {"metadata": {"finalizers": None}}, md)


def teardown(cluster: Cluster, ns: str, op: OperatorProcess | None) -> None:
    """Delete the ModelDeployment while an operator runs, then stop it, then the namespace (finalizers an older
    operator left are dropped)."""
    if op is not None and not op.alive():
        op.start()
    cluster.delete_md(ns)
    with contextlib.suppress(AssertionError):
        wait_for("ModelDeployment gone", lambda: cluster.md(ns) is None, 30, 0.5)
    if op is not None:
        op.stop()
    cluster.drop_finalizers(ns)
    cluster.delete_namespace(ns)


# --------------------------------------------------------------------------- (a) SIGKILL at a random point


CANARY = {
    "canary": {
        "steps": [
            {"setWeight": 20},
            {"pause": {"duration": "1s"}},
            {"setWeight": 50},
            {"pause": {"duration": "1s"}},
            {"setWeight": 80},
        ]
    }
}
BLUE_GREEN = {"blueGreen": {"autoPromotionSeconds": 1, "scaleDownDelaySeconds": 2}}
ROLLBACK_ON_ALERTS = {"alerts": {"alertNames": ["SlipwayModelErrors"], "matchLabels": {"severity": "critical"}}}
PAUSED_CANARY = {"canary": {"steps": [{"setWeight": 30}, {"pause": {}}]}}
STRATEGIES: dict[str, dict[str, Any]] = {"canary": CANARY, "blueGreen": BLUE_GREEN, "alert": PAUSED_CANARY}
"""``alert``: a canary paused at 30 % is rolled back by an alert Alertmanager delivers (and redelivers until the
operator answers 2xx, as Alertmanager does); the kills land around that delivery."""
KILL_WINDOWS = {"canary": (0.0, 8.0, 36.0), "blueGreen": (0.0, 6.0, 6.0), "alert": (-0.5, 1.5, 5.0)}
"""Seconds after the alias move (``alert``: after the alert's first delivery) between which the first kill lands
(the steps, on this machine; around the alert's pass), and before which a second one may (the whole rollout: a
canary keeps the old version for the default scaleDownDelaySeconds, 30 s; blue-green 2 s)."""
SEEDS = {
    "canary": (11, 23, 37, 41, 59, 67, 83),
    "blueGreen": (13, 29, 43, 61, 71, 89, 97),
    "alert": (17, 31, 47, 53, 73, 79),
}
"""Twenty seeded runs: seven per rollout strategy, six with an alert delivery among the kill points."""


@dataclass
class RunResult:
    """How one rollout ended, and what happened on the way."""

    final: dict[str, Any]
    kills: list[str] = field(default_factory=list)
    max_per_version: dict[str, int] = field(default_factory=dict)
    strays: set[str] = field(default_factory=set)
    seconds: float = 0.0


class ChildWatch:
    """Samples the children while a rollout runs: at most one object per kind and version, no unexpected names."""

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.cluster, self.ns = cluster, ns
        self.max_per_version: dict[str, int] = {}
        self.strays: set[str] = set()

    def sample(self) -> None:
        allowed = {f"{MD}-v1", f"{MD}-v2"}
        for kind, items in self.cluster.children(self.ns).items():
            per: dict[str, int] = {}
            for item in items:
                name, labels = item["metadata"]["name"], item["metadata"].get("labels") or {}
                key = f"{kind}/{labels.get(LABEL_VERSION, '-')}"
                per[key] = per.get(key, 0) + 1
                if name not in (allowed if kind != "HTTPRoute" else {MD}):
                    self.strays.add(f"{kind}/{name}")
            for key, n in per.items():
                self.max_per_version[key] = max(self.max_per_version.get(key, 0), n)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sample()
            time.sleep(min(0.3, max(left, 0)))


def final_state(cluster: Cluster, ns: str) -> dict[str, Any]:
    """What must be the same after an interrupted and an uninterrupted run."""
    status = cluster.status(ns)
    children = cluster.children(ns)
    return {
        "phase": status.get("phase"),
        "stableVersion": status.get("stableVersion"),
        "canaryVersion": status.get("canaryVersion"),
        "weights": cluster.route_weights(ns),
        "children": {kind: sorted(i["metadata"]["name"] for i in items) for kind, items in children.items()},
        "history": [(h["version"], h["outcome"]) for h in status.get("history") or []],
        "blocked": [b["version"] for b in status.get("blockedVersions") or []],
    }


def finished(cluster: Cluster, ns: str, strategy: str) -> bool:
    status = cluster.status(ns)
    if strategy == "alert":
        return (
            status.get("phase") == "RolledBack"
            and cluster.route_weights(ns) == {"1": 100}
            and [i["metadata"]["name"] for i in cluster.children(ns)["InferenceService"]] == [f"{MD}-v1"]
        )
    return (
        status.get("phase") == "Succeeded"
        and status.get("stableVersion") == "2"
        and cluster.route_weights(ns) == {"2": 100}
        and [i["metadata"]["name"] for i in cluster.children(ns)["InferenceService"]] == [f"{MD}-v2"]
    )


def alert_payload(ns: str, version: str) -> dict[str, Any]:
    """Alertmanager's webhook body for SlipwayModelErrors firing on ``version`` of the deployment."""
    labels = {
        "alertname": "SlipwayModelErrors",
        "namespace": ns,
        "modeldeployment": MD,
        "model_version": version,
        "severity": "critical",
    }
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": {},
        "fingerprint": uuid.uuid4().hex[:16],
        "startsAt": datetime.now(UTC).isoformat(),
    }
    return {"version": "4", "status": "firing", "receiver": "slipway", "groupKey": f"{{}}:{{namespace={ns!r}}}",
            "alerts": [alert]}  # fmt: skip


def deliver(url: str, payload: dict[str, Any]) -> int:
    """One delivery to the operator's Alertmanager webhook: the HTTP status (0: no answer)."""
    request = urllib.request.Request(
        f"{url}/webhooks/alertmanager",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {ALERT_TOKEN}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:  # refused (the operator is down), reset (killed mid-answer), timed out
        return 0


def deliver_until_accepted(op: OperatorProcess, payload: dict[str, Any], after: float = 0.0) -> int:
    """As Alertmanager does: deliver again (every 0.25 s here) until a 2xx; the number of deliveries."""
    time.sleep(after)
    for n in range(1, 481):
        if 200 <= deliver(op.url, payload) < 300:
            return n
        time.sleep(0.25)
    raise AssertionError("the alert was never accepted")


def rollout_run(strategy: str, seed: int | None, kubeconfig: Path, log_dir: Path) -> RunResult:
    """v1 serving, the alias moves to v2, the operator is SIGKILLed (seeded times; never for seed None)."""
    rng = random.Random(seed)
    cluster = Cluster(kubeconfig)
    ns = cluster.create_namespace()
    op = OperatorProcess(kubeconfig, ns, log_dir, env={**NO_MLFLOW, "SLIPWAY_ALERTMANAGER_TOKEN": ALERT_TOKEN})
    watch = ChildWatch(cluster, ns)
    result = RunResult(final={})
    delivery: Future[int] | None = None
    try:
        cluster.model_version(ns, "1", ["champion"])
        cluster.model_version(ns, "2", [])
        cluster.predictor(ns, "1")
        cluster.predictor(ns, "2")
        op.start()
        alerted = {"rollback": ROLLBACK_ON_ALERTS} if strategy == "alert" else {}
        cluster.deploy(ns, STRATEGIES[strategy], **alerted)
        wait_for("v1 Succeeded", lambda: cluster.status(ns).get("phase") == "Succeeded", 120)
        wait_for("predictor v2 available", lambda: cluster.predictor_available(ns, "2"), 60)
        first, steps, whole = KILL_WINDOWS[strategy]
        kill_at = [rng.uniform(first, steps)] if seed is not None else []
        if seed is not None and rng.random() < 0.5:
            kill_at = sorted([*kill_at, rng.uniform(max(first, 0.0), whole)])
        cluster.move_alias(ns, "1", "2")
        if strategy == "alert":
            wait_for("paused at 30%", lambda: cluster.status(ns).get("phase") == "Paused", 60)
        started = time.monotonic()
        if strategy == "alert":  # first delivered half a second from now: a kill may land just before it
            delivery = ThreadPoolExecutor(1).submit(deliver_until_accepted, op, alert_payload(ns, "2"), 0.5)
            started += 0.5
        for at in kill_at:
            watch.sleep(started + at - time.monotonic())
            s = cluster.status(ns)
            where = f"{s.get('phase')} step {s.get('currentStep')} weight {s.get('canaryWeight')}"
            op.kill()
            down = rng.uniform(0, 1.5)
            result.kills.append(f"t={at:.1f}s ({where}), down {down:.1f}s")
            time.sleep(down)
            op.start()

        def done() -> bool:
            watch.sample()
            return finished(cluster, ns, strategy)

        if delivery is not None:
            result.kills.append(f"alert accepted after {delivery.result(timeout=120)} deliveries")
        wait_for("the rollout to finish", done, 150, 0.3)
        result.seconds = time.monotonic() - started
        time.sleep(1.5)  # nothing moves after the end
        watch.sample()
        result.final = final_state(cluster, ns)
        result.max_per_version, result.strays = watch.max_per_version, watch.strays
    except Exception as exc:
        raise AssertionError(f"{strategy} seed {seed}: {exc}\n--- operator log ---\n{op.log_tail(80)}") from exc
    finally:
        teardown(cluster, ns, op)
        cluster.close()
    return result


@pytest.fixture(scope="module")
def kill_campaign(
    testbed: Any, slipway_crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, int | None], Future[RunResult]]]:
    """Every run of the SIGKILL campaign, started at once (a few at a time) and awaited by the tests."""
    logs = tmp_path_factory.mktemp("sigkill-logs")
    runs: list[tuple[str, int | None]] = [(s, None) for s in STRATEGIES]
    runs += [(s, seed) for s in STRATEGIES for seed in SEEDS[s]]
    pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="sigkill")
    futures = {key: pool.submit(rollout_run, key[0], key[1], testbed.kubeconfig, logs) for key in runs}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def _result(future: Future[RunResult]) -> RunResult:
    try:
        return future.result(timeout=420)
    except Exception as exc:
        pytest.fail(f"the run failed: {exc}")


@pytest.mark.parametrize(
    ("strategy", "seed"), [(s, seed) for s in STRATEGIES for seed in SEEDS[s]], ids=lambda v: str(v)
)
def test_sigkill_at_a_random_point_ends_as_an_uninterrupted_rollout(
    kill_campaign: dict[tuple[str, int | None], Future[RunResult]], strategy: str, seed: int
) -> None:
    reference = _result(kill_campaign[(strategy, None)])
    run = _result(kill_campaign[(strategy, seed)])
    print(f"\n{strategy} seed {seed}: kills {run.kills}; finished after {run.seconds:.1f}s")
    print(f"{strategy} uninterrupted: finished after {reference.seconds:.1f}s: {reference.final}")
    if strategy == "alert":
        assert reference.final["phase"] == "RolledBack" and reference.final["blocked"] == ["2"]
        assert reference.final["weights"] == {"1": 100}
    else:
        assert reference.final["phase"] == "Succeeded" and reference.final["history"] == [("2", "Promoted")]
    assert run.final == reference.final, run.kills
    assert all(n == 1 for n in run.max_per_version.values()), f"duplicate children: {run.max_per_version}"
    assert not run.strays, f"unexpected children: {run.strays}"


# ------------------------------------------------------------------- (b) outages of MLflow, Prometheus, Alertmanager


@pytest.fixture
def cluster(testbed: Any) -> Iterator[Cluster]:
    c = Cluster(testbed.kubeconfig)
    yield c
    c.close()


@dataclass
class Registry:
    """A registered model in the test bed's MLflow with versions backed by one run's tiny MLmodel artifact."""

    client: Any
    name: str
    run_id: str

    def new_version(self) -> str:
        source = f"runs:/{self.run_id}/model"
        return str(self.client.create_model_version(self.name, source=source, run_id=self.run_id).version)

    def point(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)


@pytest.fixture
def registry(mlflow_uri: str, tmp_path: Path) -> Iterator[Registry]:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("slipway-reliability")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("slipway-reliability")
    run = client.create_run(experiment_id)
    (tmp_path / "MLmodel").write_text("flavors: {python_function: {loader_module: mlflow.sklearn}}\n")
    client.log_artifact(run.info.run_id, str(tmp_path / "MLmodel"), "model")
    client.set_terminated(run.info.run_id)
    name = f"rel-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    yield Registry(client, name, run.info.run_id)
    with contextlib.suppress(Exception):
        client.delete_registered_model(name)


def mirror_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    """A ModelVersion's status ({} without one), or None when the object does not exist."""
    from kubernetes.client.exceptions import ApiException

    try:
        obj = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "modelversions", name)
    except ApiException:
        return None
    return dict(obj.get("status") or {})


def mirror_condition(cluster: Cluster, ns: str, name: str) -> tuple[str, str]:
    """(status, reason) of a ModelVersion's Synced condition."""
    for cond in (mirror_status(cluster, ns, name) or {}).get("conditions") or []:
        if cond["type"] == "Synced":
            return cond["status"], cond["reason"]
    return "", ""


def test_mlflow_down_keeps_mirrors_lets_the_rollout_finish_and_starts_no_new_one(
    start_operator: StartOperator, namespace: str, cluster: Cluster, registry: Registry
) -> None:
    ns = namespace
    v1, v2, v3 = registry.new_version(), registry.new_version(), registry.new_version()
    registry.point("champion", v1)
    proxy = TcpProxy.to_url(registry.client.tracking_uri)
    proxy.start()
    try:
        op = start_operator(ns, poll_seconds=1.0, mlflow_uri=proxy.url)
        cluster.predictor(ns, v1)
        body = {"autoPromotionSeconds": 1, "scaleDownDelaySeconds": 2}
        cluster.deploy(ns, {"blueGreen": body}, model={"name": registry.name, "track": {"alias": "champion"}})
        wait_for("v1 Succeeded", lambda: cluster.status(ns).get("stableVersion") == v1, 90)
        cluster.predictor(ns, v2, replicas=0)  # ahead of KServe's own Deployment, no pod yet
        registry.point("champion", v2)
        wait_for("rollout of v2", lambda: cluster.status(ns).get("canaryVersion") == v2, 30)
        wait_for("waiting for the preview", lambda: "waiting for preview" in cluster.status(ns).get("message", ""), 30)
        mirrors = [f"{registry.name}-v{v}" for v in (v1, v2)]
        before = {m: mirror_status(cluster, ns, m) for m in mirrors}

        proxy.stop()  # MLflow is down for the operator from here on
        cut = time.monotonic()
        errors_before = op.metrics().get('slipway_registry_sync_errors_total{reason="unavailable"}', 0.0)
        unavailable = lambda: all(mirror_condition(cluster, ns, m)[1] == "RegistryUnavailable" for m in mirrors)  # noqa: E731
        wait_for("mirrors RegistryUnavailable", unavailable, 30)
        cluster.predictor(ns, v2)  # the running rollout goes on: it needs the cluster, not MLflow
        wait_for(
            "v2 promoted and v1 gone",
            lambda: cluster.status(ns).get("phase") == "Succeeded" and cluster.status(ns).get("stableVersion") == v2,
            90,
        )
        assert cluster.route_weights(ns) == {v2: 100}

        registry.point("champion", v3)  # moved in MLflow while the operator cannot see it
        time.sleep(5)
        status = cluster.status(ns)
        assert status["phase"] == "Succeeded" and status["stableVersion"] == v2 and "canaryVersion" not in status
        assert (mirror_status(cluster, ns, f"{registry.name}-v{v3}") or {}).get("aliases") == [], "v3 not seen yet"
        for m in mirrors:
            during = mirror_status(cluster, ns, m) or {}
            assert mirror_condition(cluster, ns, m) == ("False", "RegistryUnavailable")
            assert "MLflow unavailable" in during["message"]
            for key in ("aliases", "stage", "storageUri", "runId"):
                assert during.get(key) == (before[m] or {}).get(key), key  # the last mirrored state is kept
        down_for = time.monotonic() - cut
        attempts = op.metrics().get('slipway_registry_sync_errors_total{reason="unavailable"}', 0.0) - errors_before
        print(
            f"\nMLflow down {down_for:.0f}s: {attempts:.0f} failed polls of the model (poll interval 1s, backing off)"
        )
        assert attempts <= down_for / 2, "polling backs off while MLflow is down"

        proxy.start()
        back = time.monotonic()
        wait_for(
            "rollout of v3 after MLflow is back",
            lambda: v3 in (cluster.status(ns).get("canaryVersion"), cluster.status(ns).get("stableVersion")),
            90,
        )
        print(f"MLflow back → rollout of v{v3} started after {time.monotonic() - back:.1f}s (backoff)")
        wait_for(
            "mirrors Synced again",
            lambda: all(mirror_condition(cluster, ns, m) == ("True", "Synced") for m in mirrors),
            30,
        )
    finally:
        proxy.stop()
        cluster.delete_md(ns)
        wait_for("ModelDeployment gone", lambda: cluster.md(ns) is None, 30, 0.5)


class Metrics(MetricsEndpoint):
    """A /metrics endpoint served by the test; the test bed's Prometheus scrapes it."""

    def __init__(self) -> None:
        super().__init__()
        self.error_rate = Gauge("slipway_reliability_error_rate", "test", ["version"], registry=self.registry)


@pytest.fixture
def metrics(testbed: Any, namespace: str) -> Iterator[Metrics]:
    m = Metrics()
    job = f"rel-{namespace}"
    testbed.add_scrape_target(job, m.address)
    yield m
    (Path(testbed.dir) / "prometheus" / "targets" / f"{job}.json").unlink(missing_ok=True)
    m.server.shutdown()


def prometheus_has(url: str, query: str) -> bool:
    import httpx

    r = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=5).json()
    return bool(r.get("data", {}).get("result"))


def start_rollout(cluster: Cluster, ns: str, strategy: dict[str, Any], **spec: Any) -> None:
    """v1 serving all traffic, then the alias moves to v2 (both predictors up)."""
    cluster.model_version(ns, "1", ["champion"])
    cluster.model_version(ns, "2", [])
    cluster.predictor(ns, "1")
    cluster.predictor(ns, "2")
    cluster.deploy(ns, strategy, **spec)
    wait_for("v1 Succeeded", lambda: cluster.status(ns).get("phase") == "Succeeded", 90)
    wait_for("predictor v2 available", lambda: cluster.predictor_available(ns, "2"), 60)
    cluster.move_alias(ns, "1", "2")


@pytest.fixture
def operators(
    testbed: Any, slipway_crds: list[str], tmp_path: Path, cluster: Cluster, namespace: str
) -> Iterator[Callable[..., OperatorProcess]]:
    """A factory of operators in the test's namespace (no MLflow); their ModelDeployment is deleted first at the end."""
    started: list[OperatorProcess] = []

    def start(prometheus_url: str = "", **env: str) -> OperatorProcess:
        op = OperatorProcess(testbed.kubeconfig, namespace, tmp_path, prometheus_url, env={**NO_MLFLOW, **env})
        started.append(op.start())
        return op

    yield start
    if any(op.alive() for op in started):
        cluster.delete_md(namespace)
    with contextlib.suppress(AssertionError):
        wait_for("ModelDeployment gone", lambda: cluster.md(namespace) is None, 30, 0.5)
    for op in started:
        op.stop()
        print(f"--- operator log ---\n{op.log_tail(60)}")
    cluster.drop_finalizers(namespace)


def analysis_strategy(job: str, count: int) -> dict[str, Any]:
    query = f'max(slipway_reliability_error_rate{{job="{job}",version="{{{{version}}}}"}})'
    return {
        "canary": {
            "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 60}],
            "analysis": {
                "interval": "1s",
                "failureLimit": 0,
                "count": count,
                "metrics": [{"name": "error-rate", "query": query, "max": 0.1}],
            },
        }
    }


def test_prometheus_down_holds_the_analysis_without_promoting_or_rolling_back(
    testbed: Any, namespace: str, cluster: Cluster, metrics: Metrics, operators: Callable[..., OperatorProcess]
) -> None:
    ns, job = namespace, f"rel-{namespace}"
    metrics.error_rate.labels("2").set(0.01)  # healthy: the analysis would pass
    wait_for(
        "scraped", lambda: prometheus_has(testbed.prometheus_url, f'slipway_reliability_error_rate{{job="{job}"}}'), 60
    )
    proxy = TcpProxy.to_url(testbed.prometheus_url)
    proxy.start()
    try:
        operators(proxy.url)
        start_rollout(cluster, ns, analysis_strategy(job, count=6))
        wait_for(
            "analysis running", lambda: (cluster.status(ns).get("analysis") or {}).get("successful", 0) >= 1, 60, 0.1
        )
        proxy.stop()  # Prometheus is down for the operator from here on

        # A round that read Prometheus before the cut may still be writing; rounds run one at a time,
        # so once one has failed to reach Prometheus the successful count is final.
        def inconclusive() -> int:
            return int((cluster.status(ns).get("analysis") or {}).get("inconclusive", 0))

        wait_for("a round without Prometheus", lambda: inconclusive() >= 1, 60)
        passed = cluster.status(ns)["analysis"]["successful"]
        assert passed < 6, "the analysis finished before the outage; raise count"
        wait_for("inconclusive rounds", lambda: inconclusive() >= 4, 60)
        time.sleep(3)
        status = cluster.status(ns)
        print(f"\nPrometheus down: {status['analysis']}")
        assert status["phase"] == "Progressing" and status["stableVersion"] == "1" and status["canaryVersion"] == "2"
        assert status["canaryWeight"] == 20 and status["currentStep"] == 1, "no promotion without evidence"
        assert status["analysis"]["failed"] == 0 and status["analysis"]["successful"] == passed
        assert status["analysis"]["measurements"][0]["phase"] == "Error"
        assert "unreachable" in status["message"], status["message"]
        assert "blockedVersions" not in status and "history" not in status, "the outage alone rolls nothing back"
        degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
        assert degraded["status"] == "False"
        assert cluster.route_weights(ns) == {"1": 80, "2": 20}

        proxy.start()
        wait_for("promoted once Prometheus answers", lambda: cluster.status(ns).get("stableVersion") == "2", 90)
        assert cluster.status(ns)["history"][-1]["outcome"] == "Promoted"
    finally:
        proxy.stop()


def alert_rule(name: str, ns: str, version: str) -> str:
    rule = {
        "alert": "SlipwayModelErrors",
        "expr": "vector(1)",
        "for": "0s",
        "labels": {"namespace": ns, "modeldeployment": MD, "model_version": version, "severity": "critical"},
        "annotations": {"summary": "reliability test"},
    }
    return yaml.safe_dump({"groups": [{"name": name, "rules": [rule]}]})


def firing_since(url: str, ns: str) -> datetime | None:
    """When the test's alert (labelled with the namespace) became active in Prometheus, if it fires."""
    import httpx

    alerts = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    for alert in alerts:
        if alert["state"] == "firing" and alert["labels"].get("namespace") == ns:
            return wall(alert["activeAt"])
    return None


def wall(stamp: str) -> datetime:
    """An RFC 3339 time as Prometheus (nanoseconds) or the operator (microseconds) writes it."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]:0<6}+00:00")


def test_alertmanager_down_prometheus_alerts_still_roll_back_within_one_poll(
    testbed: Any, namespace: str, cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    """Alertmanager delivers nothing to this operator (it is not a receiver of it): the /api/v1/alerts poll must act."""
    ns, poll = namespace, 2.0
    op = operators(testbed.prometheus_url, SLIPWAY_ALERT_POLL_SECONDS=str(poll), SLIPWAY_ALERTMANAGER_TOKEN=ALERT_TOKEN)
    start_rollout(cluster, ns, PAUSED_CANARY, rollback=ROLLBACK_ON_ALERTS)
    wait_for("paused at 30%", lambda: cluster.status(ns).get("phase") == "Paused", 60)
    rules = f"rel-{ns}"
    testbed.set_rules(rules, alert_rule(rules, ns, "2"))
    try:
        wait_for("rolled back", lambda: cluster.status(ns).get("phase") in ("RollingBack", "RolledBack"), 60, 0.1)
        active = firing_since(testbed.prometheus_url, ns)
        assert active is not None
        late = (wall(cluster.status(ns)["blockedVersions"][0]["at"]) - active).total_seconds()
        print(f"\nalert active in Prometheus → rollback, Alertmanager silent, poll {poll:.0f}s: {late:.2f}s")
        assert late <= poll + 3.0, "at most one poll interval late (plus a pass on a loaded machine)"
        wait_for("RolledBack", lambda: cluster.status(ns).get("phase") == "RolledBack", 30)
        status = cluster.status(ns)
        assert status["history"][-1]["reason"] == "AlertFiring" and status["blockedVersions"][0]["version"] == "2"
        assert status["lastAlert"]["name"] == "SlipwayModelErrors"
        assert cluster.route_weights(ns) == {"1": 100}
        # Other operators on the shared test bed poll the same Prometheus and may act first (they read any
        # namespace): say which one did; when it was this one, it was through the Prometheus fallback.
        mine = [line for line in op.log_path.read_text().splitlines() if f"{ns}/{MD}: alert SlipwayModelErrors" in line]
        print(f"rolled back by {'this operator' if mine else 'another operator polling the same Prometheus'}")
        assert all("via prometheus" in line for line in mine)
    finally:
        testbed.set_rules(rules, "groups: []\n")


def test_prometheus_down_an_alert_alertmanager_delivers_still_rolls_back(
    testbed: Any, namespace: str, cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    ns, port = namespace, free_port()
    operators("http://127.0.0.1:9", SLIPWAY_HTTP_PORT=str(port), SLIPWAY_ALERTMANAGER_TOKEN=ALERT_TOKEN)
    start_rollout(cluster, ns, PAUSED_CANARY, rollback=ROLLBACK_ON_ALERTS)
    wait_for("paused at 30%", lambda: cluster.status(ns).get("phase") == "Paused", 60)
    sent = time.monotonic()
    assert deliver(f"http://127.0.0.1:{port}", alert_payload(ns, "2")) == 200
    wait_for("rolled back", lambda: cluster.status(ns).get("phase") in ("RollingBack", "RolledBack"), 30, 0.1)
    print(f"\nAlertmanager delivery → rollback with Prometheus down: {time.monotonic() - sent:.2f}s")
    wait_for("RolledBack", lambda: cluster.status(ns).get("phase") == "RolledBack", 30)
    assert cluster.status(ns)["history"][-1]["reason"] == "AlertFiring"
    assert cluster.route_weights(ns) == {"1": 100}


# --------------------------------------------------------------------------- (c) the API server restarted, etcd kept


@pytest.fixture
def own_testbed(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A separate control plane (its own SLIPWAY_TESTBED_DIR) that this test may break; the shared one is left alone."""
    from bed import lifecycle

    monkeypatch.setenv("SLIPWAY_TESTBED_DIR", str(tmp_path_factory.mktemp("own-testbed")))
    started = time.monotonic()
    state = lifecycle.up(())
    print(f"\nown test bed up in {time.monotonic() - started:.0f}s")
    try:
        crds = subprocess.run(
            [state.kubectl, "--kubeconfig", state.kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert crds.returncode == 0, crds.stderr
        wait_for("the Slipway CRDs Established", lambda: crds_established(Path(state.kubeconfig)), 60, 0.5)
        yield state
    finally:
        lifecycle.down()


def crds_established(kubeconfig: Path) -> bool:
    """Whether every Slipway CRD is Established (``kubectl wait`` fails outright while a CRD has no conditions)."""
    from kubernetes import client, config

    with config.new_client_from_config(config_file=str(kubeconfig)) as api:
        ext = client.ApiextensionsV1Api(api)
        for crd in ("modeldeployments", "modelversions", "trainingruns"):
            try:
                conditions = ext.read_custom_resource_definition(f"{crd}.{GROUP}").status.conditions or []
            except client.exceptions.ApiException:
                return False
            if not any(c.type == "Established" and c.status == "True" for c in conditions):
                return False
    return True


def apiserver_ready(state: Any) -> bool:
    ctx = ssl.create_default_context(cafile=str(Path(state.dir) / "pki" / "ca.crt"))
    request = urllib.request.Request(
        f"{state.urls['apiserver']}/readyz", headers={"Authorization": f"Bearer {state.token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def frozen_call_seconds(state: Any, namespace: str) -> float:
    """How long the operator's Kube client waits on an API server that takes the request and never answers.

    The API server is SIGSTOPped (its socket still accepts), read with a 1 s timeout, then resumed.
    """
    from kubernetes import config

    from slipway.clients.kube import Kube

    kube = Kube(config.new_client_from_config(config_file=str(state.kubeconfig)), timeout=(1.0, 1.0))
    assert kube.get("v1", "Namespace", namespace) is not None  # discovery done while the server answers
    pid = state.pids["kube-apiserver"]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match="timed out"):
            kube.get("v1", "Namespace", namespace)
        return time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
        kube.api_client.close()


def test_apiserver_restart_the_operators_watches_recover(own_testbed: Any, tmp_path: Path) -> None:
    from bed import lifecycle

    kubeconfig = Path(own_testbed.kubeconfig)
    cluster = Cluster(kubeconfig)
    ns = cluster.create_namespace()
    op = OperatorProcess(kubeconfig, ns, tmp_path, env=NO_MLFLOW)
    try:
        cluster.model_version(ns, "1", ["champion"])
        cluster.model_version(ns, "2", [])
        cluster.predictor(ns, "1")
        cluster.predictor(ns, "2")
        op.start()
        cluster.deploy(ns, PAUSED_CANARY)
        wait_for("v1 Succeeded", lambda: cluster.status(ns).get("phase") == "Succeeded", 120)

        frozen = frozen_call_seconds(own_testbed, ns)
        print(f"\na call to the frozen API server failed after {frozen:.1f}s (timeout 1s, urllib3's retries)")
        assert frozen < 10, "a call to an API server that never answers gives up"

        started = time.monotonic()
        lifecycle.restart("kube-apiserver", signal.SIGKILL, own_testbed)  # etcd and its data stay
        wait_for("the API server ready again", lambda: apiserver_ready(own_testbed), 120, 0.5)
        print(f"\nkube-apiserver SIGKILLed and ready again after {time.monotonic() - started:.1f}s")
        cluster.close()
        cluster = Cluster(kubeconfig)

        changed = time.monotonic()
        cluster.patch_md(ns, {"spec": {"autoscaling": {"maxReplicas": 5}}})  # a spec change after the restart

        def hpa_max() -> int:
            hpas = cluster.children(ns)["HorizontalPodAutoscaler"]
            return int(hpas[0]["spec"]["maxReplicas"]) if hpas else 0

        wait_for("the spec change reconciled", lambda: hpa_max() == 5, 120, 0.5)
        generation = (cluster.md(ns) or {})["metadata"]["generation"]
        wait_for("observedGeneration", lambda: cluster.status(ns).get("observedGeneration") == generation, 60)
        print(f"spec change after the restart reconciled in {time.monotonic() - changed:.1f}s")

        cluster.move_alias(ns, "1", "2")  # and the ModelVersion watch: a rollout starts
        wait_for(
            "rollout of v2",
            lambda: cluster.status(ns).get("phase") == "Paused" and cluster.route_weights(ns) == {"1": 70, "2": 30},
            120,
            0.5,
        )
        assert op.alive(), "the operator survived the outage"
    except BaseException:
        print(op.log_tail(120))
        raise
    finally:
        teardown(cluster, ns, op)
        cluster.close()
