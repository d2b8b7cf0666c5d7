"""Registry sync against the real test bed: a data scientist changes MLflow, ModelVersions follow.

The operator runs for real (``python -m slipway`` watching the test's namespace). The test
works the registry the way a data scientist does — logs a small scikit-learn model, registers
versions, transitions stages, moves aliases, tags — and watches the ModelVersion objects in the
real kube-apiserver: within one poll interval by polling, within about a second through MLflow's
signed webhook (with a 30 s poll, so the poll cannot be what delivered it), and through an MLflow
outage (a TCP proxy between the operator and MLflow is cut and restored). Measured lags are
printed (``-s`` shows them).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import pytest
from operator_fixture import WEBHOOK_SECRET, StartOperator, TcpProxy, operator, start_operator
from operator_process import OperatorProcess, wait_until

from bed.addons.s3 import s3_env
from slipway.api import GROUP, VERSION

pytestmark = pytest.mark.integration
__all__ = ["operator", "start_operator"]  # fixtures, imported for pytest

T = TypeVar("T")
SLACK = 2.5  # seconds on top of the poll interval: two shared cores, other tests running


@dataclass
class Registry:
    """The MLflow client and one logged model to register versions from."""

    client: Any
    model_uri: str

    def register(self, name: str) -> str:
        import mlflow

        return str(mlflow.register_model(self.model_uri, name).version)

    def stage(self, name: str, version: str, stage: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.client.transition_model_version_stage(name, version, stage)


@pytest.fixture(scope="module")
def registry(mlflow_uri: str) -> Registry:
    """Log one tiny scikit-learn model (iris, logistic regression) as a data scientist would."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("slipway-registry-sync")
    x, y = load_iris(return_X_y=True)
    with mlflow.start_run():
        model = LogisticRegression(max_iter=300).fit(x, y)
        mlflow.log_metric("accuracy", float(model.score(x, y)))
        mlflow.log_param("max_iter", 300)
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
    return Registry(MlflowClient(mlflow_uri), info.model_uri)


@pytest.fixture
def model_name(registry: Registry) -> Iterator[str]:
    name = f"it-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(Exception):  # never registered, or already gone
        registry.client.delete_registered_model(name)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.05) -> tuple[T, float]:
    """Poll until probe returns something truthy; returns it and the seconds it took."""
    start = time.monotonic()
    value = wait_until(probe, timeout, what, interval)
    return value, time.monotonic() - start


class Mirrors:
    """Read ModelVersion objects straight from the API server."""

    def __init__(self, kube_api: Any, namespace: str) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(kube_api)
        self.namespace = namespace

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj: dict[str, Any] = self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "modelversions", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict((self.get(name) or {}).get("status") or {})

    def condition(self, name: str, type_: str = "Synced") -> tuple[str, str]:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == type_:
                return cond["status"], cond["reason"]
        return "", ""

    def names(self) -> list[str]:
        out = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "modelversions")
        return sorted(item["metadata"]["name"] for item in out["items"])


def deploy(kubectl: Callable[..., Any], name: str, model: str, alias: str = "champion") -> None:
    doc = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"name": model, "track": {"alias": alias}}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(doc))


def events(kubectl: Callable[..., Any]) -> list[tuple[str, str, str]]:
    out = json.loads(kubectl("get", "events", "-o", "json").stdout)["items"]
    return [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in out]


def test_polling_mirrors_the_registry(
    operator: OperatorProcess,
    testbed: Any,
    namespace: str,
    kubectl: Any,
    kube_api: Any,
    registry: Registry,
    model_name: str,
) -> None:
    model, poll = model_name, operator.poll_seconds
    mirrors = Mirrors(kube_api, namespace)
    v1, v2 = registry.register(model), registry.register(model)
    registry.client.set_registered_model_alias(model, "champion", v1)
    registry.stage(model, v1, "Staging")
    deploy(kubectl, "digits", model)

    wait_for("both versions mirrored", lambda: mirrors.condition(f"{model}-v2") == ("True", "Synced"), 30)
    wait_for("v1 mirrored", lambda: mirrors.condition(f"{model}-v1") == ("True", "Synced"), 10)
    obj = mirrors.get(f"{model}-v1")
    assert obj is not None
    labels = obj["metadata"]["labels"]
    assert labels["ml.slipway.dev/model"] == model and labels["ml.slipway.dev/version"] == "1"
    assert obj["spec"] == {"model": model, "version": "1"}
    status = obj["status"]
    assert status["stage"] == "Staging" and status["aliases"] == ["champion"]
    assert status["metrics"]["accuracy"] > 0.9 and status["params"] == {"max_iter": "300"} and status["runId"]
    assert status["source"].startswith("models:/m-") and "sklearn" in status["flavors"]
    assert status["storageUri"].startswith("s3://")  # the test bed's MLflow stores artifacts in S3 (versitygw)
    bucket, _, key = status["storageUri"].removeprefix("s3://").partition("/")
    env = s3_env(testbed.state)
    s3 = boto3.client(
        "s3",
        endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    s3.head_object(Bucket=bucket, Key=f"{key.rstrip('/')}/MLmodel")  # KServe-loadable, really
    assert mirrors.condition(f"{model}-v1", "Ready") == ("True", "StorageResolved")

    registry.stage(model, v2, "Production")
    _, lag = wait_for("stage Production", lambda: mirrors.status(f"{model}-v2").get("stage") == "Production", 30)
    print(f"\nstage transition → ModelVersion by polling every {poll:.0f}s: {lag:.2f}s")
    assert lag < poll + SLACK

    registry.client.set_registered_model_alias(model, "champion", v2)
    _, lag = wait_for(
        "alias moved",
        lambda: (
            mirrors.status(f"{model}-v2").get("aliases") == ["champion"]
            and mirrors.status(f"{model}-v1").get("aliases") == []
        ),
        30,
    )
    print(f"alias move → ModelVersion by polling every {poll:.0f}s: {lag:.2f}s")
    assert lag < poll + SLACK

    v3 = registry.register(model)
    _, lag = wait_for("v3 created", lambda: mirrors.condition(f"{model}-v{v3}") == ("True", "Synced"), 30)
    print(f"new version → new ModelVersion by polling: {lag:.2f}s")
    assert lag < poll + SLACK

    found = events(kubectl)
    assert (f"{model}-v2", "StageChanged", "stage None → Production") in found
    assert (f"{model}-v2", "AliasMoved", "alias champion now points at version 2") in found
    assert (f"{model}-v1", "AliasMoved", "alias champion left version 1: moved to version 2") in found

    rv = mirrors.get(f"{model}-v2")["metadata"]["resourceVersion"]  # type: ignore[index]
    before = operator.metrics()
    time.sleep(3 * poll)
    requests = {k: v - before.get(k, 0) for k, v in operator.metrics().items() if "slipway_mlflow_requests_total" in k}
    assert mirrors.get(f"{model}-v2")["metadata"]["resourceVersion"] == rv  # type: ignore[index]  # steady: no writes
    polls = requests['slipway_mlflow_requests_total{method="search_registered_models"}']
    print(f"steady state, 3 poll intervals: {requests}")
    assert 2 <= polls <= 4
    # An unchanged model costs its share of one batched head search; its versions are re-read only
    # once per resync interval (60 s), and run data and artifacts are cached.
    assert sum(requests.values()) - polls <= 1

    registry.client.delete_model_version(model, v1)
    wait_for("v1 NotFound", lambda: mirrors.condition(f"{model}-v1") == ("False", "NotFound"), 30)
    assert mirrors.status(f"{model}-v1")["stage"] == "Staging"  # the last mirrored state is kept, not deleted

    mine = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": "mine"}}
    kubectl("apply", "-f", "-", input=json.dumps({**mine, "spec": {"model": model, "version": "99"}}))
    wait_for("v99 NotFound", lambda: mirrors.condition("mine") == ("False", "NotFound"), 30)
    assert "not in MLflow" in mirrors.status("mine")["message"]

    metrics = operator.metrics()
    assert metrics["slipway_registry_sync_seconds_count"] >= 5
    assert metrics["slipway_registry_tracked_models"] == 1


RESYNCS = 'slipway_mlflow_webhook_deliveries_total{outcome="resync"}'
REJECTED = 'slipway_mlflow_webhook_deliveries_total{outcome="rejected"}'


def _post_webhook(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _signed(secret: str, delivery: str, timestamp: int, body: bytes) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"{delivery}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": str(timestamp),
        "X-MLflow-Signature": "v1," + base64.b64encode(mac).decode(),
    }


def test_signed_webhook_resyncs_faster_than_the_poll(
    start_operator: StartOperator, namespace: str, kubectl: Any, kube_api: Any, registry: Registry, model_name: str
) -> None:
    model = model_name
    op = start_operator(namespace, poll_seconds=30.0)
    mirrors = Mirrors(kube_api, namespace)
    v1, v2 = registry.register(model), registry.register(model)
    registry.client.set_registered_model_alias(model, "champion", v1)
    hook = registry.client.create_webhook(
        name=f"slipway-{namespace}",
        url=f"{op.url}/webhooks/mlflow",
        events=["model_version_alias.created", "model_version_alias.deleted", "model_version_tag.set"],
        secret=WEBHOOK_SECRET,
    )
    try:
        deploy(kubectl, "digits", model)
        wait_for("initial sync", lambda: mirrors.status(f"{model}-v1").get("aliases") == ["champion"], 30)
        synced_at = time.monotonic()
        wait_for("v2 mirrored", lambda: mirrors.condition(f"{model}-v2") == ("True", "Synced"), 10)
        time.sleep(1.5)  # the test bed's MLflow caches its webhook list for 1 s

        registry.client.set_registered_model_alias(model, "champion", v2)
        _, lag = wait_for("alias via webhook", lambda: mirrors.status(f"{model}-v2").get("aliases") == ["champion"], 25)
        print(f"\nalias move → ModelVersion via signed webhook (poll 30s): {lag:.2f}s")
        assert time.monotonic() - synced_at < 25, "too slow to tell the webhook from the 30 s poll"
        assert lag < 2.0
        assert mirrors.status(f"{model}-v1").get("aliases") == []

        registry.client.set_model_version_tag(model, v2, "approved", "yes")
        _, lag = wait_for(
            "tag via webhook", lambda: mirrors.status(f"{model}-v2").get("tags") == {"approved": "yes"}, 25
        )
        print(f"version tag → ModelVersion via signed webhook: {lag:.2f}s")
        assert lag < 2.0

        # Forged and stale deliveries are refused and change nothing. First let the writes of the
        # syncs the real deliveries started finish.
        def v2_version() -> str:
            return str(mirrors.get(f"{model}-v2")["metadata"]["resourceVersion"])  # type: ignore[index]

        def quiet() -> str | None:
            before = v2_version()
            time.sleep(1.0)
            return before if v2_version() == before else None

        rv, _ = wait_for("the registry sync to go quiet", quiet, 15)
        counted = op.metrics()
        body = json.dumps(
            {
                "entity": "model_version_alias",
                "action": "created",
                "data": {"name": model, "alias": "x", "version": "1"},
            }
        ).encode()
        url, now = f"{op.url}/webhooks/mlflow", int(time.time())
        assert _post_webhook(url, body, _signed("not-the-secret", "d-1", now, body)) == 401
        assert _post_webhook(url, body, _signed(WEBHOOK_SECRET, "d-2", now - 600, body)) == 401
        unsigned = {k: v for k, v in _signed(WEBHOOK_SECRET, "d-3", now, body).items() if k != "X-MLflow-Signature"}
        assert _post_webhook(url, body, unsigned) == 401
        assert _post_webhook(url, b"{}", {"X-MLflow-Signature": "v1,AAAA"}) == 400
        time.sleep(0.5)
        after = op.metrics()
        assert after[REJECTED] - counted.get(REJECTED, 0.0) == 4
        assert after[RESYNCS] == counted[RESYNCS], "a refused delivery started a resync"
        assert v2_version() == rv
        assert _post_webhook(url, body, _signed(WEBHOOK_SECRET, "d-4", now, body)) == 200  # the real thing passes
    finally:
        registry.client.delete_webhook(hook.webhook_id)


OUTAGE_SECONDS = 65.0


def test_mlflow_outage_is_reported_and_recovered(
    start_operator: StartOperator, namespace: str, kubectl: Any, kube_api: Any, registry: Registry, model_name: str
) -> None:
    """MLflow gone for over a minute (its port refuses connections): reported, nothing touched, recovered alone."""
    model = model_name
    proxy = TcpProxy.to_url(registry.client.tracking_uri)
    proxy.start()
    try:
        op = start_operator(
            namespace, poll_seconds=1.0, mlflow_uri=proxy.url, env={"SLIPWAY_MLFLOW_MAX_BACKOFF_SECONDS": "8"}
        )
        mirrors = Mirrors(kube_api, namespace)
        v1 = registry.register(model)
        registry.client.set_registered_model_alias(model, "champion", v1)
        deploy(kubectl, "digits", model)
        wait_for("synced", lambda: mirrors.status(f"{model}-v1").get("aliases") == ["champion"], 30)
        before = mirrors.status(f"{model}-v1")
        deployment = json.loads(kubectl("get", "modeldeployment", "digits", "-o", "json").stdout)

        proxy.stop()
        cut = time.monotonic()
        errors = op.metrics().get('slipway_registry_sync_errors_total{reason="unavailable"}', 0.0)
        _, lag = wait_for(
            "RegistryUnavailable", lambda: mirrors.condition(f"{model}-v1") == ("False", "RegistryUnavailable"), 30
        )
        print(f"\nMLflow cut → Synced=False/RegistryUnavailable: {lag:.2f}s")
        registry.stage(model, v1, "Production")  # changes while the operator cannot see MLflow
        v2 = registry.register(model)
        registry.client.set_registered_model_alias(model, "champion", v2)
        while time.monotonic() - cut < OUTAGE_SECONDS:
            during = mirrors.status(f"{model}-v1")
            assert mirrors.condition(f"{model}-v1") == ("False", "RegistryUnavailable")
            assert "MLflow unavailable" in during["message"]
            for key in ("stage", "aliases", "storageUri", "metrics", "runId", "source"):
                assert during[key] == before[key]  # nothing changed
            assert mirrors.names() == [f"{model}-v1"]  # nothing deleted, nothing created
            time.sleep(5)
        now = json.loads(kubectl("get", "modeldeployment", "digits", "-o", "json").stdout)
        assert now["spec"] == deployment["spec"]
        attempts = op.metrics()['slipway_registry_sync_errors_total{reason="unavailable"}'] - errors
        print(f"{OUTAGE_SECONDS:.0f} s outage: {attempts:.0f} failed reads (poll 1 s, backoff capped at 8 s)")
        assert 5 <= attempts <= 20  # it kept trying, backing off instead of hammering once a second

        proxy.start()
        _, lag = wait_for(
            "recovered",
            lambda: (
                mirrors.status(f"{model}-v1").get("stage") == "Production"
                and mirrors.status(f"{model}-v{v2}").get("aliases") == ["champion"]
            ),
            30,
        )
        print(f"MLflow back → in step again by itself: {lag:.2f}s")
        assert lag < 8 + SLACK
        # Synced (a first answer slower than 2 s says RegistrySlow until the next poll)
        wait_for("Synced", lambda: mirrors.condition(f"{model}-v1") == ("True", "Synced"), 20)
        assert mirrors.status(f"{model}-v1")["aliases"] == []
        assert mirrors.names() == sorted([f"{model}-v1", f"{model}-v{v2}"])
    finally:
        proxy.stop()


def test_batched_reads_against_the_real_registry(
    registry: Registry, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's batched heads and versions: chunked filters, paging, quotes in names, missing models."""
    import asyncio

    from slipway.clients import mlflow as client_module
    from slipway.clients.mlflow import MlflowRegistry, name_filters

    tag = uuid.uuid4().hex[:6]
    names = [f"it-batch-{tag}-{i}" for i in range(5)] + [f'it-batch-{tag} it\'s \\ "odd"']
    try:
        for i, name in enumerate(names):
            registry.client.create_registered_model(name)
            for _ in range(i % 3 + 1):
                registry.client.create_model_version(name, source="s3://bucket/model", run_id=None)
        registry.client.set_registered_model_alias(names[1], "champion", "2")
        registry.client.set_registered_model_alias(names[-1], "champion", "1")
        registry.stage(names[2], "3", "Staging")
        registry.client.set_model_version_tag(names[2], "1", "approved", "yes")
        assert len(list(name_filters(names, max_chars=80))) >= 3
        monkeypatch.setattr(client_module, "MAX_FILTER_CHARS", 80)  # several chunks…
        monkeypatch.setattr(client_module, "SEARCH_MODELS_PAGE", 2)  # …and several pages each
        monkeypatch.setattr(client_module, "SEARCH_VERSIONS_PAGE", 2)
        reader = MlflowRegistry(mlflow_uri)
        try:
            heads = asyncio.run(reader.heads([*names, f"it-batch-{tag}-missing"]))
            assert set(heads.heads) == set(names) and heads.requests >= 3
            assert heads.heads[names[1]].aliases == {"champion": "2"} and heads.heads[names[-1]].aliases == {
                "champion": "1"
            }
            assert heads.heads[names[0]].aliases == {} and heads.heads[names[2]].updated_ms
            snaps = asyncio.run(reader.snapshots(heads.heads))
        finally:
            reader.close()
        assert {n: sorted(s.versions, key=int) for n, s in snaps.items()} == {
            n: [str(v) for v in range(1, i % 3 + 2)] for i, n in enumerate(names)
        }
        assert snaps[names[1]].versions["2"].info.aliases == ("champion",)
        assert snaps[names[-1]].versions["1"].info.aliases == ("champion",)
        assert snaps[names[2]].versions["3"].info.stage == "Staging"
        assert snaps[names[2]].versions["1"].info.tags == {"approved": "yes"}
        assert snaps[names[2]].versions["1"].storage_uri == "s3://bucket/model"
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                registry.client.delete_registered_model(name)
