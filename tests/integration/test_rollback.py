"""Alert-driven rollback on the real test bed: MLflow, Prometheus with the shipped rules, Alertmanager, the operator.

The operator runs as a subprocess (``python -m slipway``) with the registry sync on the test
bed's MLflow, where the test registers a model and its versions as a data scientist would. A
drift metric the test serves is scraped by the real Prometheus; the shipped ``SlipwayModelDrift``
rule (``for: 0s``, evaluated every second) fires when it crosses 0.25, and the real Alertmanager
posts to the operator's webhook — or, with no webhook configured, the operator's poller finds the
alert in Prometheus. Latencies are printed (``-s`` shows them): alert arrival → route write as
the operator measured it (from its event), and metric change → route write as the test saw it.

Alertmanager's configuration is global to the test bed: each test points it at its operator
and always points it back at nothing.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from kube_objects import MetricsEndpoint, PredictedModelDeployment, wait_for
from mlflow_models import log_iris_model, two_versions
from operator_fixture import StartOperator, start_operator
from operator_process import OperatorProcess
from prometheus_client import Gauge

from slipway.monitoring import rules

pytestmark = pytest.mark.integration
__all__ = ["start_operator"]  # a fixture, imported for pytest

TOKEN = "rollback-" + uuid.uuid4().hex
MD = "drift"
RULES = "slipway-rollback-test"
TAG = "slipway.rolled-back"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_rules(testbed: Any) -> Iterator[None]:
    """The chart's drift and error rules, firing at once (for 0s) and evaluated every second."""
    testbed.set_rules(RULES, yaml.safe_dump(rules.rule_groups(interval="1s", for_="0s"), sort_keys=False))
    try:
        yield
    finally:
        testbed.set_rules(RULES, "groups: []\n")


@pytest.fixture(scope="module")
def logged_model(mlflow_uri: str) -> str:
    """One small scikit-learn model logged to MLflow, to register versions from."""
    return log_iris_model(mlflow_uri, "slipway-rollback")


@dataclass
class Registry:
    """One registered model with versions 1 and 2, alias champion on v1."""

    client: Any
    name: str

    def alias(self, version: str, alias: str = "champion") -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def alias_target(self, alias: str = "champion") -> str | None:
        return (self.client.get_registered_model(self.name).aliases or {}).get(alias)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.name, version).tags or {})


@pytest.fixture
def registry(mlflow_uri: str, logged_model: str) -> Iterator[Registry]:
    with two_versions(mlflow_uri, logged_model, "rollback") as (client, name):
        yield Registry(client, name)


class Drift(MetricsEndpoint):
    """The serving runtime's drift gauge for one deployment, served by the test and scraped by Prometheus."""

    def __init__(self) -> None:
        super().__init__()
        self.score = Gauge("slipway_model_drift_score", "PSI against the baseline", ["version"], registry=self.registry)


def active_alerts(testbed: Any, namespace: str) -> list[dict[str, Any]]:
    """Alerts Alertmanager holds as active for a namespace (resolved ones are not listed)."""
    url = f"{testbed.alertmanager_url}/api/v2/alerts"
    return list(httpx.get(url, params={"filter": f'namespace="{namespace}"'}, timeout=5).json())


@pytest.fixture
def drift(testbed: Any, namespace: str, shipped_rules: None) -> Iterator[Drift]:
    """The drift gauge, scraped; afterwards no alert of the test is left active in the shared Alertmanager."""
    d = Drift()
    d.score.labels("1").set(0.02)
    d.score.labels("2").set(0.03)
    testbed.add_scrape_target(f"drift-{namespace}", d.address, {"namespace": namespace, "modeldeployment": MD})
    try:
        yield d
    finally:
        d.score.labels("2").set(0.03)  # the rule resolves and Prometheus tells Alertmanager
        wait_for("the test's alerts resolved in Alertmanager", lambda: not active_alerts(testbed, namespace), 60, 0.5)
        d.server.shutdown()


class Cluster(PredictedModelDeployment):
    """Reads and writes on the test bed's API server through the Python client (fast enough to time)."""

    def __init__(self, kube_api: Any, namespace: str) -> None:
        super().__init__(kube_api, namespace, MD)

    def deploy(self, model: str, strategy: dict[str, Any], registry: str) -> None:
        self.create(
            {
                "model": {"name": model, "track": {"alias": "champion"}},
                # a named runtime (MLServer): the operator builds it the same way; the test drives its readiness
                "serving": {"runtime": "kserve-mlserver", "modelFormat": "mlflow"},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
                "strategy": strategy,
                "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
                "rollback": {
                    "alerts": {
                        "alertNames": ["SlipwayModelDrift", "SlipwayModelErrors"],
                        "matchLabels": {"severity": "critical"},
                    },
                    "window": "10m",
                    "registry": registry,
                },
            }
        )


@pytest.fixture
def cluster(kube_api: Any, namespace: str) -> Cluster:
    return Cluster(kube_api, namespace)


@pytest.fixture
def operator_for(
    start_operator: StartOperator, namespace: str, cluster: Cluster, testbed: Any
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start the operator with the alert settings; at teardown, delete the deployment while it still runs."""
    started: list[OperatorProcess] = []

    def start(*, webhook: bool, poll_prometheus: bool = False) -> OperatorProcess:
        env = {"SLIPWAY_ALERTMANAGER_TOKEN": TOKEN}
        if poll_prometheus:
            env.update(SLIPWAY_PROMETHEUS_URL=testbed.prometheus_url, SLIPWAY_ALERT_POLL_SECONDS="1")
        op = start_operator(namespace, poll_seconds=1.0, env=env)
        started.append(op)
        testbed.set_alert_webhooks([f"{op.url}/webhooks/alertmanager"] if webhook else [], token=TOKEN)
        return op

    try:
        yield start
    finally:
        testbed.set_alert_webhooks([])
        print(json.dumps(cluster.status(), indent=1))
        cluster.delete()


# --- helpers ---------------------------------------------------------------------------------------


def first_version_then_canary(cluster: Cluster, registry: Registry, strategy: dict[str, Any], mode: str) -> None:
    cluster.predictor("1")
    cluster.predictor("2")
    cluster.deploy(registry.name, strategy, mode)
    # status first, then the route: the pass records a decision before it carries it out
    wait_for("v1 serving", lambda: cluster.status().get("phase") == "Succeeded" and cluster.weights(), 120, 0.2)
    assert cluster.status()["stableVersion"] == "1" and cluster.weights() == {"1": 100}
    registry.alias("2")


def route_write_ms(cluster: Cluster) -> float:
    """What the operator measured from the alert's arrival to the route write (in its AlertFiring event)."""
    event = wait_for(
        "the AlertFiring event",
        lambda: next((e for e in cluster.events() if e["reason"] == "AlertFiring"), None),
        30,
        0.2,
    )
    found = re.search(r"route written (\d+) ms after the alert arrived", event["message"])
    assert found, event["message"]
    return float(found.group(1))


def firing_in_prometheus(testbed: Any, namespace: str) -> bool:
    body = httpx.get(f"{testbed.prometheus_url}/api/v1/alerts", timeout=5).json()
    return any(
        a["state"] == "firing"
        and a["labels"].get("namespace") == namespace
        and a["labels"].get("modeldeployment") == MD
        for a in body["data"]["alerts"]
    )


def payload(namespace: str, *, status: str = "firing", md: str = MD, version: str = "2") -> dict[str, Any]:
    labels = {
        "alertname": "SlipwayModelDrift",
        "namespace": namespace,
        "modeldeployment": md,
        "model_version": version,
        "severity": "critical",
    }
    alert = {
        "status": status,
        "labels": labels,
        "annotations": {},
        "startsAt": "2026-11-22T12:00:00Z",
        "fingerprint": uuid.uuid4().hex[:16],
    }
    return {"version": "4", "status": status, "receiver": "slipway", "groupKey": "k", "alerts": [alert]}


# --- the tests -------------------------------------------------------------------------------------


def test_drift_alert_rolls_the_canary_back_through_alertmanager_and_reverts_the_alias(
    testbed, namespace, cluster, registry, drift, operator_for
):
    op = operator_for(webhook=True)
    first_version_then_canary(
        cluster, registry, {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}, "revertAlias"
    )
    wait_for("canary at 50", lambda: cluster.weights() == {"1": 50, "2": 50}, 60, 0.2)
    wait_for("paused", lambda: cluster.status().get("phase") == "Paused", 30, 0.2)

    # What must change nothing: no token, a wrong token, a resolved alert, another deployment's alert.
    # The webhook acts before it answers, so the status right after the answer tells.
    url = f"{op.url}/webhooks/alertmanager"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(url, json=payload(namespace)).status_code == 401
    assert httpx.post(url, json=payload(namespace), headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, json=payload(namespace, status="resolved"), headers=auth).json()["new"] == 0
    # not a deployment this operator watches: dropped (200), or deferred (503) in its first seconds
    assert httpx.post(url, json=payload(namespace, md="other"), headers=auth).status_code in (200, 503)
    assert cluster.status()["phase"] == "Paused" and cluster.weights() == {"1": 50, "2": 50}

    drift.score.labels("2").set(0.9)  # the canary's inputs shift
    shifted = time.monotonic()
    wait_for("all traffic back on v1", lambda: cluster.weights() == {"1": 100}, 60, 0.02)
    seen = time.monotonic() - shifted
    operator_ms = route_write_ms(cluster)
    print(
        f"\nalert arrival → route write (operator): {operator_ms:.0f} ms; drift metric set → route seen: {seen:.2f} s"
    )
    assert operator_ms <= 100, "the aim: within 100 ms of the alert reaching the operator"

    wait_for("RolledBack", lambda: cluster.status().get("phase") == "RolledBack", 30, 0.2)
    status = cluster.status()
    assert status["stableVersion"] == "1" and "canaryVersion" not in status
    assert [(b["version"], b["reason"]) for b in status["blockedVersions"]] == [("2", "AlertFiring")]
    assert status["lastAlert"]["name"] == "SlipwayModelDrift" and status["lastAlert"]["labels"]["model_version"] == "2"
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "AlertFiring"
    assert "SlipwayModelDrift" in degraded["message"] and "SlipwayModelDrift" in status["message"]
    assert status["history"][-1]["outcome"] == "RolledBack" and status["history"][-1]["reason"] == "AlertFiring"
    wait_for("v2's children removed", lambda: cluster.isvc_versions() == {"1"}, 30, 0.2)

    # Registry write-back: v2 tagged, the alias back on v1 — in the real MLflow.
    wait_for("alias back on v1", lambda: registry.alias_target() == "1", 30, 0.2)
    assert registry.tags("2")[TAG].startswith("AlertFiring: SlipwayModelDrift")
    wait_for(
        "AlertFiring, RolledBack and RegistryUpdated events",
        lambda: {"AlertFiring", "RolledBack", "RegistryUpdated"} <= {e["reason"] for e in cluster.events()},
        30,
        0.2,
    )

    # The alias moving back is neither a new rollout nor an unblock.
    wait_for("the alias move mirrored", lambda: cluster.status().get("trackedVersion") == "1", 30, 0.2)
    time.sleep(2)
    after = cluster.status()
    assert after["phase"] == "RolledBack" and after["blockedVersions"] == status["blockedVersions"]
    assert len(after["history"]) == len(status["history"]) and cluster.weights() == {"1": 100}
    metrics = op.metrics()
    assert metrics['slipway_alerts_total{result="rolled_back",source="alertmanager"}'] == 1
    # the operator's own count of its requests: the status writes of the rollout and the rollback among them
    assert metrics['slipway_api_requests_total{kind="ModelDeployment/status",verb="PATCH"}'] >= 3


def test_alert_after_promotion_within_the_window_goes_back_to_the_previous_version(
    testbed, namespace, cluster, registry, drift, operator_for
):
    operator_for(webhook=True)
    strategy = {"blueGreen": {"autoPromotionSeconds": 0, "scaleDownDelaySeconds": 1}}
    first_version_then_canary(cluster, registry, strategy, "tag")
    wait_for("v2 promoted", lambda: cluster.status().get("stableVersion") == "2", 60, 0.2)
    wait_for("v1 scaled down", lambda: cluster.status().get("phase") == "Succeeded", 60, 0.2)
    wait_for("v1's children removed", lambda: cluster.isvc_versions() == {"2"}, 30, 0.2)
    assert cluster.weights() == {"2": 100}

    drift.score.labels("2").set(0.9)  # drift after the promotion, within the 10m window
    shifted = time.monotonic()
    wait_for("all traffic back on v1", lambda: cluster.weights() == {"1": 100}, 60, 0.02)
    print(f"\ndrift metric set → route on the recreated v1: {time.monotonic() - shifted:.2f} s")
    wait_for("RolledBack", lambda: cluster.status().get("phase") == "RolledBack", 30, 0.2)
    status = cluster.status()
    assert status["stableVersion"] == "1" and status["blockedVersions"][0]["version"] == "2"
    assert "within the 10m window" in status["history"][-1]["message"]
    wait_for("v1 up, v2 removed", lambda: cluster.isvc_versions() == {"1"}, 30, 0.2)
    wait_for("v2 tagged in MLflow", lambda: TAG in registry.tags("2"), 30, 0.2)
    assert registry.alias_target() == "2", "registry: tag leaves the alias alone"
    time.sleep(2)
    assert cluster.status()["phase"] == "RolledBack", "the blocked v2 is not rolled out again"


def test_without_the_webhook_the_prometheus_poller_rolls_back_within_one_interval(
    testbed, namespace, cluster, registry, drift, operator_for
):
    op = operator_for(webhook=False, poll_prometheus=True)
    first_version_then_canary(cluster, registry, {"canary": {"steps": [{"setWeight": 30}, {"pause": {}}]}}, "none")
    wait_for("paused at 30", lambda: cluster.weights() == {"1": 70, "2": 30}, 60, 0.2)

    drift.score.labels("2").set(0.9)
    wait_for("the alert firing in Prometheus", lambda: firing_in_prometheus(testbed, namespace), 60, 0.05)
    firing = time.monotonic()
    wait_for("all traffic back on v1", lambda: cluster.weights() == {"1": 100}, 30, 0.02)
    late = time.monotonic() - firing
    print(f"\nfiring in Prometheus → route write seen, poll interval 1 s: {late:.2f} s")
    assert late < 1.0 + 1.5, "one poll interval, plus slack for two loaded cores"
    wait_for("RolledBack", lambda: cluster.status().get("phase") == "RolledBack", 30, 0.2)
    assert registry.tags("2").get(TAG) is None, "registry: none writes nothing back"
    metrics = op.metrics()
    assert metrics['slipway_alerts_total{result="rolled_back",source="prometheus"}'] == 1
    assert metrics["slipway_alert_poll_up"] == 1


def test_mlflow_down_across_a_rollback_and_a_sigkill_the_alias_still_ends_on_stable(
    testbed, namespace, cluster, registry, drift, start_operator
):
    """The write-back the rollback owes is in status: it outlives an MLflow outage and the operator's SIGKILL."""
    from operator_fixture import TcpProxy

    proxy = TcpProxy.to_url(testbed.mlflow_uri)
    proxy.start()
    env = {"SLIPWAY_ALERTMANAGER_TOKEN": TOKEN}
    op = start_operator(namespace, poll_seconds=1.0, mlflow_uri=proxy.url, env=env)
    testbed.set_alert_webhooks([f"{op.url}/webhooks/alertmanager"], token=TOKEN)
    try:
        strategy = {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}
        first_version_then_canary(cluster, registry, strategy, "revertAlias")
        wait_for("canary at 50", lambda: cluster.weights() == {"1": 50, "2": 50}, 60, 0.2)
        wait_for("paused", lambda: cluster.status().get("phase") == "Paused", 30, 0.2)

        proxy.stop()  # MLflow is down for the operator from here on
        drift.score.labels("2").set(0.9)
        wait_for("all traffic back on v1", lambda: cluster.weights() == {"1": 100}, 60, 0.05)
        wait_for("RolledBack", lambda: cluster.status().get("phase") == "RolledBack", 30, 0.2)

        def pending() -> list[dict[str, Any]]:
            return list(cluster.status().get("pendingWriteBacks") or [])

        entry = wait_for(
            "a failed write-back attempt recorded", lambda: (p := pending()) and p[0].get("attempts"), 60, 0.2
        )
        (entry,) = pending()
        print(f"\npending write-back: {entry}")
        assert (entry["model"], entry["version"], entry["restoredVersion"], entry["alias"]) == (
            registry.name,
            "2",
            "1",
            "champion",
        )
        assert entry["lastError"] and entry["reason"].startswith("AlertFiring: SlipwayModelDrift")
        assert registry.alias_target() == "2", "MLflow is down: nothing written yet"

        op.kill()  # no goodbye: only what status holds survives
        op.start().wait_healthy()
        time.sleep(3)
        assert pending() and registry.alias_target() == "2", "still down: still pending"

        proxy.start()  # MLflow is back
        wait_for("alias back on v1", lambda: registry.alias_target() == "1", 90, 0.5)
        wait_for("nothing pending", lambda: not pending(), 30, 0.5)
        assert registry.tags("2")[TAG].startswith("AlertFiring: SlipwayModelDrift")
        reasons = {e["reason"] for e in cluster.events()}
        assert {"RegistryWriteBackPending", "RegistryUpdated"} <= reasons, reasons
        assert cluster.status()["phase"] == "RolledBack" and cluster.weights() == {"1": 100}
    finally:
        testbed.set_alert_webhooks([])
        if proxy._server is None:
            proxy.start()
        print(json.dumps(cluster.status(), indent=1))
        cluster.delete()
        proxy.stop()
