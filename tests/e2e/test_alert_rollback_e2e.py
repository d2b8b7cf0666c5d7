"""Issue 8's "done when", end to end: real serving, real Prometheus and Alertmanager, the operator rolls back.

On the session test bed: the operator (``python -m slipway``, registry sync on the test bed's
MLflow, Alertmanager webhook with a bearer token, no Prometheus poller — so only Alertmanager's
post can roll back), KServe's controller making each InferenceService's predictor, the local
kubelet running its pods (``python -m slipway_serving``), which Prometheus discovers and scrapes.
Prometheus evaluates the shipped rules (``monitoring/rules.py``, every second, ``for`` shortened to 5 s as ``make demo``
does; the shipped rules say 30 s) and sends to Alertmanager, which posts to the operator.

The models are real and registered in MLflow as a data scientist would: a small network trained
on scikit-learn's digits, logged with a signature, an input example and the drift baseline
(``slipway_training.baseline``). v1 is served; moving the alias ``champion`` to v2 starts a
canary at 50 %. ``hack/loadgen.py`` sends held-out digits to the Gateway (Traefik splits them by the route), then
shifted ones (inverted ink). Two stories:

- drift: v2 is the same network; the shifted inputs raise its PSI past 0.25 and
  ``SlipwayModelDrift`` fires;
- errors: v2 is an MLflow pyfunc that raises on inputs outside the ink range it was calibrated
  for, so the runtime answers those requests 500 and ``SlipwayModelErrors`` (5xx ratio > 5 %)
  fires.

Either way: all traffic back on v1 in the HTTPRoute, the ModelDeployment ``RolledBack`` with the
alert named, v2 blocked, the MLflow alias back on v1 (``revertAlias``), and the load generator's
requests after the rollback all on v1. Before the shift, alerts delivered by Alertmanager that
name another deployment, the stable version, another alert or another severity change nothing;
after the rollback, the resolved notification changes nothing either. ``-s`` prints the
latencies: first shifted request → route write, and the operator's alert arrival → route write.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "hack"))

import loadgen  # noqa: E402
from kube_objects import ModelDeploymentReader, wait_for  # noqa: E402
from operator_fixture import StartOperator, start_operator  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402

from bed.addons.gateway import route_gateway, route_host  # noqa: E402
from bed.addons.s3 import s3_credentials  # noqa: E402
from slipway.monitoring import rules  # noqa: E402

pytestmark = pytest.mark.e2e
__all__ = ["start_operator"]  # a fixture, imported for pytest

TOKEN = "e2e-rollback-" + uuid.uuid4().hex
RULES = "slipway-e2e-rollback"
ALERT_FOR = "5s"  # as in `make demo`; the shipped rules hold 30 s
MD = "digits"
INK_LIMIT = 8.0  # held-out digits have a mean ink of at most 6.8 per row; the shifted ones at least 9.5
FRAGILE_MODEL = '''
"""A digits classifier (numpy MLP) that raises on rows whose mean ink is above what it was calibrated for."""
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class Fragile(PythonModel):
    def load_context(self, context):
        w = np.load(context.artifacts["weights"])
        self.w1, self.b1, self.w2, self.b2 = w["w1"], w["b1"], w["w2"], w["b2"]

    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input, dtype=np.float32)
        if (x.mean(axis=1) > INK_LIMIT).any():
            raise ValueError("input ink above the calibrated range")
        h = np.maximum(x @ self.w1 + self.b1, 0)
        z = h @ self.w2 + self.b2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


mlflow.models.set_model(Fragile())
'''


@pytest.fixture(scope="session")
def slipway_crds(testbed: Any) -> None:
    """The Slipway CRDs (operator_fixture's start_operator asks for them)."""
    crds = str(REPO / "crds")
    testbed.run_kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=slipway-crds", "-f", crds)
    testbed.run_kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)


@dataclass(frozen=True)
class Logged:
    """Model URIs in the test bed's MLflow: the trained network, and the pyfunc that fails on shifted inputs."""

    steady: str
    fragile: str


@pytest.fixture(scope="session")
def logged(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """Train a small network on digits (a few seconds) and log it twice, each with the drift baseline."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits

    from slipway_training import baseline as bl
    from slipway_training.data import feature_names

    root = tmp_path_factory.mktemp("e2e-models")
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("slipway-e2e-rollback")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs), targets).backward()
        optimizer.step()
    model = torch.nn.Sequential(net, torch.nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        probs = model(inputs[:200]).numpy()
    assert (probs.argmax(axis=1) == y[:200]).mean() > 0.9
    baseline = root / bl.FILENAME
    baseline.write_text(
        bl.dumps(bl.build_baseline(x, [bl.uniform_edges(0, 16, 8)] * 64, feature_names=feature_names()))
    )
    weights = root / "weights.npz"
    layers = [p.detach().numpy() for p in net.parameters()]
    np.savez(weights, w1=layers[0].T, b1=layers[1], w2=layers[2].T, b2=layers[3])
    code = root / "fragile.py"
    code.write_text(FRAGILE_MODEL.replace("INK_LIMIT", repr(INK_LIMIT)))
    signature = infer_signature(x[:200], probs)
    with mlflow.start_run():
        steady = mlflow.pytorch.log_model(model, name="steady", signature=signature, input_example=x[:2])
        mlflow.MlflowClient().log_model_artifact(steady.model_id, str(baseline))
        fragile = mlflow.pyfunc.log_model(
            name="fragile",
            python_model=str(code),
            artifacts={"weights": str(weights)},
            signature=signature,
            input_example=x[:2],
            pip_requirements=["numpy"],
        )
        mlflow.MlflowClient().log_model_artifact(fragile.model_id, str(baseline))
    return Logged(str(steady.model_uri), str(fragile.model_uri))


@pytest.fixture(scope="module")
def shipped_rules(testbed: Any) -> Iterator[None]:
    """The shipped drift and error rules, evaluated every second, ``for`` 5 s."""
    testbed.set_rules(RULES, yaml.safe_dump(rules.rule_groups(interval="1s", for_=ALERT_FOR), sort_keys=False))
    try:
        yield
    finally:
        testbed.set_rules(RULES, "groups: []\n")


class Cluster(ModelDeploymentReader):
    """What the test reads and writes on the API server, through the Python client."""

    def __init__(self, kube_api: Any, namespace: str) -> None:
        super().__init__(kube_api, namespace, MD)

    def ready(self, version: str) -> bool:
        isvc = self._get("serving.kserve.io", "v1beta1", "inferenceservices", f"{MD}-v{version}") or {}
        conditions = (isvc.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def isvcs(self) -> set[str]:
        items = self.custom.list_namespaced_custom_object("serving.kserve.io", "v1beta1", self.ns, "inferenceservices")
        return {i["metadata"]["name"] for i in items["items"]}

    def events(self, reason: str) -> list[str]:
        out = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={MD},reason={reason}")
        return [str(e.message) for e in out.items]

    def deploy(self, model: str, alert: str) -> None:
        self.create(
            {
                "model": {"name": model, "track": {"alias": "champion"}},
                # a drift window the load generator's rate fills in a few seconds
                "serving": {
                    "runtime": "slipway",
                    "protocol": "v2",
                    "env": [{"name": "SLIPWAY_DRIFT_WINDOW", "value": "200"}],
                    "serviceAccountName": "models",  # KServe's storage initializer reads S3 with its Secret
                    "allowPickle": True,  # the errors story's v2 is an MLflow pyfunc (cloudpickled)
                },
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
                "gateway": route_gateway(self.ns, MD),  # the test bed's Traefik
                "rollback": {
                    "alerts": {"alertNames": [alert], "matchLabels": {"severity": "critical"}},
                    "window": "10m",
                    "registry": "revertAlias",
                },
            }
        )

    def delete(self, timeout: float = 60.0) -> None:
        super().delete(timeout)
        with contextlib.suppress(AssertionError):
            wait_for("the model servers stopped", lambda: not self.isvcs(), 60, 0.5)


@dataclass
class Story:
    """One deployment with v1 serving, v2 canary at 50 %, under held-out traffic from the load generator."""

    cluster: Cluster
    operator: OperatorProcess
    load: loadgen.LoadGenerator
    mlflow: Any
    model: str

    def alias(self) -> str | None:
        return (self.mlflow.get_registered_model(self.model).aliases or {}).get("champion")


@pytest.fixture
def story(
    testbed: Any,
    namespace: str,
    kube_api: Any,
    logged: Logged,
    shipped_rules: None,
    start_operator: StartOperator,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[str, str], Story]]:
    """story(v2_model, alert): v1 served at 100 %, then v2 a paused canary at 50 %, traffic flowing."""
    import mlflow
    from mlflow import MlflowClient

    cluster = Cluster(kube_api, namespace)
    made: list[Story] = []
    client = MlflowClient(testbed.mlflow_uri)

    def begin(v2_uri: str, alert: str) -> Story:
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        mlflow.set_tracking_uri(testbed.mlflow_uri)
        mlflow.register_model(logged.steady, name)
        mlflow.register_model(v2_uri, name)
        client.set_registered_model_alias(name, "champion", "1")
        credentials = {"apiVersion": "v1", "kind": "List", "items": s3_credentials(testbed.state)}
        testbed.run_kubectl("apply", "-f", "-", input=json.dumps(credentials), namespace=namespace)
        op = start_operator(namespace, env={"SLIPWAY_ALERTMANAGER_TOKEN": TOKEN})
        testbed.set_alert_webhooks([f"{op.url}/webhooks/alertmanager"], token=TOKEN)
        cluster.deploy(name, alert)
        wait_for("v1 served", lambda: cluster.status().get("phase") == "Succeeded" and cluster.ready("1"), 240, 0.5)
        assert cluster.weights() == {"1": 100}
        gateway = loadgen.Gateway(testbed.state.urls["gateway"], MD, route_host(namespace, MD))
        load = loadgen.LoadGenerator(gateway, rate=8, batch=16, duration=600).start()
        s = Story(cluster, op, load, client, name)
        made.append(s)
        client.set_registered_model_alias(name, "champion", "2")
        wait_for("v2 at 50 %", lambda: cluster.weights() == {"1": 50, "2": 50}, 240, 0.5)
        wait_for("paused", lambda: cluster.status().get("phase") == "Paused", 60, 0.5)
        # in-distribution traffic to both: enough to fill v2's drift window, all answered
        wait_for("v2 serving held-out digits", lambda: ok(load, "2") >= 30, 60, 0.5)
        return s

    try:
        yield begin
    finally:
        for s in made:
            s.load.stop()
            print(f"load generator: {loadgen.summary(s.load.stats)}")
        testbed.set_alert_webhooks([])
        cluster.delete()
        for s in made:
            with contextlib.suppress(Exception):
                client.delete_registered_model(s.model)


def ok(load: loadgen.LoadGenerator, version: str) -> int:
    with load.lock:
        return load.stats.version(version).ok


def prometheus(testbed: Any, query: str) -> dict[str, float]:
    """An instant query: model_version (or version) → value."""
    body = httpx.get(f"{testbed.prometheus_url}/api/v1/query", params={"query": query}, timeout=5).json()
    out = {}
    for r in body["data"]["result"]:
        labels = r["metric"]
        out[labels.get("model_version") or labels.get("version", "")] = float(r["value"][1])
    return out


def active_alerts(testbed: Any, namespace: str) -> list[dict[str, Any]]:
    url = f"{testbed.alertmanager_url}/api/v2/alerts"
    return list(httpx.get(url, params={"filter": f'namespace="{namespace}"'}, timeout=5).json())


def post_alerts(testbed: Any, alerts: list[dict[str, str]], *, resolve: bool = False) -> None:
    """Alerts straight into Alertmanager's API (as Prometheus posts them); resolve=True ends them."""
    now = datetime.now(UTC)
    body = [
        {"labels": labels, "annotations": {"summary": "e2e"}, "startsAt": (now - timedelta(minutes=1)).isoformat()}
        | ({"endsAt": now.isoformat()} if resolve else {})
        for labels in alerts
    ]
    httpx.post(f"{testbed.alertmanager_url}/api/v2/alerts", json=body, timeout=5).raise_for_status()


def alerts_counted(op: OperatorProcess, result: str) -> float:
    return op.metrics().get(f'slipway_alerts_total{{result="{result}",source="alertmanager"}}', 0.0)


def route_write_ms(cluster: Cluster) -> float:
    """The operator's own alert arrival → route write time, from its AlertFiring event."""
    message = wait_for("the AlertFiring event", lambda: cluster.events("AlertFiring"), 30, 0.2)[0]
    found = re.search(r"route written (\d+) ms after the alert arrived", message)
    assert found, message
    return float(found.group(1))


def shift_and_watch_rollback(s: Story, alert: str) -> float:
    """Send shifted digits; wait until the route is back on v1. Returns seconds from the first shifted request."""
    s.load.mode = "shifted"
    first = time.monotonic()
    wait_for("all traffic back on v1", lambda: s.cluster.weights() == {"1": 100}, 120, 0.02)
    back = time.monotonic() - first
    s.load.mode = "held-out"  # the inputs recover (else v1 drifts in turn: an alert about the stable version)
    operator_ms = route_write_ms(s.cluster)
    print(
        f"\n{alert}: first shifted request → route seen back on v1 {back:.2f} s; "
        f"alert arrival → route write (operator) {operator_ms:.0f} ms"
    )
    return back


def assert_rolled_back(s: Story, alert: str) -> dict[str, Any]:
    c = s.cluster
    wait_for("RolledBack", lambda: c.status().get("phase") == "RolledBack", 60, 0.2)
    status = c.status()
    assert status["stableVersion"] == "1" and "canaryVersion" not in status
    assert [(b["version"], b["reason"]) for b in status["blockedVersions"]] == [("2", "AlertFiring")]
    assert status["lastAlert"]["name"] == alert and status["lastAlert"]["labels"]["model_version"] == "2"
    assert status["lastAlert"]["labels"]["namespace"] == c.ns and status["lastAlert"]["labels"]["modeldeployment"] == MD
    degraded = {x["type"]: x for x in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "AlertFiring" and alert in degraded["message"]
    assert alerts_counted(s.operator, "rolled_back") == 1, "Alertmanager's post rolled it back (no poller runs)"
    wait_for("the MLflow alias back on v1", lambda: s.alias() == "1", 60, 0.5)
    wait_for("v2's InferenceService removed", lambda: c.isvcs() == {f"{MD}-v1"}, 60, 0.5)
    # the load generator follows the route: after the rollback (and its 0.25 s re-read), only v1 is asked
    after = time.monotonic() + 0.5
    wait_for("requests after the rollback", lambda: sum(s.load.stats.since(after).values()) >= 10, 30, 0.2)
    assert set(s.load.stats.since(after)) == {"1"}, s.load.stats.since(after)
    return status


def assert_resolution_changes_nothing(testbed: Any, s: Story, status: dict[str, Any]) -> None:
    """v2's series are gone with its server: the alert resolves, Alertmanager says so, nothing moves."""
    wait_for(
        "v2's alert resolved in Alertmanager",
        lambda: not [a for a in active_alerts(testbed, s.cluster.ns) if a["labels"].get("model_version") == "2"],
        90,
        0.5,
    )
    time.sleep(2)  # the resolved notification (group_interval 1 s) reaches the operator
    after = s.cluster.status()
    assert after["phase"] == "RolledBack" and after["blockedVersions"] == status["blockedVersions"]
    assert len(after["history"]) == len(status["history"]) and s.cluster.weights() == {"1": 100}
    assert alerts_counted(s.operator, "rolled_back") == 1


def test_drift_on_the_canary_rolls_back_to_v1(testbed, logged, story):
    s = story(logged.steady, "SlipwayModelDrift")
    c, ns = s.cluster, s.cluster.ns
    drift = prometheus(testbed, f'slipway_model_drift_score{{namespace="{ns}"}}')
    assert drift.get("2", 0.0) < 0.25, f"in-distribution traffic drifts already: {drift}"

    # Through the real Alertmanager, alerts that are not this deployment's canary change nothing.
    base = {"alertname": "SlipwayModelDrift", "namespace": ns, "modeldeployment": MD, "severity": "critical"}
    others = [
        base | {"modeldeployment": "someone-else", "model_version": "2"},  # another deployment: not_watched
        base | {"model_version": "1"},  # the stable version: not under watch
        base | {"model_version": "2", "alertname": "SlipwayModelLatency"},  # not in alertNames
        base | {"model_version": "2", "severity": "warning"},  # not matchLabels
    ]
    post_alerts(testbed, others)
    wait_for(
        "Alertmanager's posts handled",
        lambda: alerts_counted(s.operator, "not_watched") >= 1 and alerts_counted(s.operator, "ignored") >= 3,
        60,
        0.2,
    )
    post_alerts(testbed, others, resolve=True)
    assert c.status()["phase"] == "Paused" and c.weights() == {"1": 50, "2": 50}
    assert "blockedVersions" not in c.status() and s.alias() == "2"

    shift_and_watch_rollback(s, "SlipwayModelDrift")
    status = assert_rolled_back(s, "SlipwayModelDrift")
    assert (
        prometheus(testbed, f'max_over_time(slipway_model_drift_score{{namespace="{ns}",version="2"}}[2m])')["2"] > 0.25
    )
    assert s.load.stats.version("2").errors == 0
    assert_resolution_changes_nothing(testbed, s, status)


def test_errors_on_the_canary_roll_back_to_v1(testbed, logged, story):
    s = story(logged.fragile, "SlipwayModelErrors")
    assert s.load.stats.version("2").errors == 0, "v2 answers held-out digits"
    shift_and_watch_rollback(s, "SlipwayModelErrors")
    status = assert_rolled_back(s, "SlipwayModelErrors")
    codes = s.load.stats.version("2").codes
    assert codes.get("500", 0) > 0, f"v2 failed the shifted inputs with 500: {codes}"
    assert "SlipwayModelErrors" in status["message"]
    assert_resolution_changes_nothing(testbed, s, status)
