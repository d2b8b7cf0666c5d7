"""Approval in the model registry on the real test bed: MLflow's registry, the registry mirror, the operator.

A canary follows the alias ``champion`` and has two approval pauses: one that wants
``validation_status=approved`` and one that wants ``approved_by`` set to anyone. The test moves
the alias to v2 with the MLflow client; the rollout reaches the first pause and stays ``Paused``
(``WaitingForApproval``, the message naming the tag and the version) while nobody approves and
while the tag has another value (the mirror has copied it: the ModelVersion shows it). The test
sets the tags with ``MlflowClient().set_model_version_tag`` as a reviewer would, and the rollout
goes on, through the second pause, to the promotion of v2.

Twice: with the registry polled every second and every version re-read on each poll, and with
the operator's defaults (versions re-read every 60 s, here a 30 s poll) plus MLflow's webhook,
which must deliver the tag long before any poll would.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_objects import ModelDeploymentReader, create_fake_predictor, wait_for
from operator_fixture import WEBHOOK_SECRET, StartOperator, start_operator

pytestmark = pytest.mark.integration
__all__ = ["start_operator"]  # a fixture, imported for pytest

MD = "approved"


@pytest.fixture(scope="module")
def logged_model(mlflow_uri: str) -> str:
    """One small scikit-learn model, to register versions from."""
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("slipway-approval")
    x, y = load_iris(return_X_y=True)
    with mlflow.start_run():
        model = LogisticRegression(max_iter=300).fit(x, y)
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
    return str(info.model_uri)


class Cluster(ModelDeploymentReader):
    def __init__(self, kube_api: Any, namespace: str) -> None:
        super().__init__(kube_api, namespace, MD)

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status().get("conditions") or [] if c.get("type") == type_), None)

    def events(self, reason: str) -> list[str]:
        out = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={MD}")
        return [e.message for e in out.items if e.reason == reason]

    def version_tags(self, version: str) -> dict[str, str]:
        items = self.custom.list_namespaced_custom_object(
            "ml.slipway.dev", "v1alpha1", self.ns, "modelversions", label_selector=f"ml.slipway.dev/version={version}"
        )["items"]
        return dict((items[0].get("status") or {}).get("tags") or {}) if items else {}

    def predictor(self, version: str) -> None:
        """The predictor Deployment KServe's controller would create for a named runtime; kwok runs its pod."""
        create_fake_predictor(self.apps, self.ns, MD, version)

    def body(self, model: str) -> dict[str, Any]:
        steps = [
            {"setWeight": 20},
            {"pause": {"untilApproved": {"tag": "validation_status", "value": "approved"}}},
            {"setWeight": 50},
            {"pause": {"untilApproved": {"tag": "approved_by"}}},
            {"setWeight": 100},
        ]
        body = {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": MD},
            "spec": {
                "model": {"name": model, "track": {"alias": "champion"}},
                "serving": {"runtime": "kserve-mlserver", "modelFormat": "mlflow"},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
                "strategy": {"canary": {"steps": steps, "scaleDownDelaySeconds": 0}},
                "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
            },
        }
        return body

    def deploy(self, model: str) -> None:
        body = self.body(model)
        self.custom.create_namespaced_custom_object("ml.slipway.dev", "v1alpha1", self.ns, "modeldeployments", body)

    def waiting(self) -> dict[str, Any] | None:
        """The status while the rollout is Paused waiting for approval (the reason is the Progressing condition's)."""
        status = self.status()
        progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {})
        return status if status.get("phase") == "Paused" and progressing.get("reason") == "WaitingForApproval" else None


@pytest.fixture
def registry(mlflow_uri: str, logged_model: str) -> Iterator[tuple[Any, str]]:
    import mlflow
    from mlflow import MlflowClient

    name = f"approval-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        mlflow.register_model(logged_model, name)
    client = MlflowClient(mlflow_uri)
    client.set_registered_model_alias(name, "champion", "1")
    yield client, name
    with contextlib.suppress(Exception):
        client.delete_registered_model(name)


@pytest.fixture
def cli(testbed: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`slipway` run in-process against the test bed, on a console wide enough not to wrap."""
    from typer.testing import CliRunner

    from slipway.cli.main import app

    monkeypatch.setenv("KUBECONFIG", str(testbed.kubeconfig))
    monkeypatch.setenv("COLUMNS", "400")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


@pytest.mark.parametrize("mode", ["poll", "webhook"])
def test_a_pause_waits_for_the_registry_tag_and_goes_on_when_a_reviewer_sets_it(
    mode: str,
    start_operator: StartOperator,
    namespace: str,
    kube_api: Any,
    registry: tuple[Any, str],
    cli: Callable[..., Any],
    tmp_path: Path,
):
    client, name = registry
    cluster = Cluster(kube_api, namespace)
    hook = None
    if mode == "poll":  # every poll re-reads the versions: a tag change shows within about a second
        start_operator(namespace, poll_seconds=1.0, env={"SLIPWAY_MLFLOW_RESYNC_SECONDS": "0"})
        bound = 30.0
    else:  # versions re-read every 60 s by the poll: only the webhook can be this fast
        op = start_operator(namespace, poll_seconds=30.0, env={"SLIPWAY_MLFLOW_RESYNC_SECONDS": "60"})
        hook = client.create_webhook(
            name=f"slipway-{namespace}",
            url=f"{op.url}/webhooks/mlflow",
            events=["model_version_alias.created", "model_version_tag.set"],
            secret=WEBHOOK_SECRET,
        )
        time.sleep(1.5)  # the test bed's MLflow caches its webhook list for 1 s
        bound = 10.0
    cluster.predictor("1")
    cluster.predictor("2")
    cluster.deploy(name)
    try:
        wait_for("v1 serving", lambda: cluster.status().get("phase") == "Succeeded", 120, 0.2)
        client.set_registered_model_alias(name, "champion", "2")

        status = wait_for("v2 waiting for approval", cluster.waiting, 60, 0.2)
        message = status["message"]
        assert status["canaryVersion"] == "2" and status["currentStep"] == 1, status
        assert "validation_status=approved" in message and f"model {name} version 2" in message, message
        assert "slipway promote" in message
        # The pass posts its events after its status write: wait for the event, then check there is one.
        wait_for("the WaitingForApproval event", lambda: cluster.events("WaitingForApproval"), 10, 0.1)
        assert cluster.events("WaitingForApproval") == [message]
        shown = cli("status", MD, "-n", namespace)
        assert shown.exit_code == 0 and "Paused (WaitingForApproval)" in shown.output, shown.output
        assert "validation_status=approved" in shown.output
        path = tmp_path / "md.yaml"
        path.write_text(yaml.safe_dump(cluster.body(name)))
        planned = cli("plan", str(path), "-n", namespace)
        assert planned.exit_code == 0, planned.output
        assert "1: pause until approved (MLflow tag validation_status=approved on v2)" in planned.output

        client.set_model_version_tag(name, "2", "validation_status", "pending")  # not the wanted value
        wait_for(
            "the mirror shows the tag",
            lambda: cluster.version_tags("2").get("validation_status") == "pending",
            bound,
            0.1,
        )
        time.sleep(3)  # several passes, one at least after the ModelVersion changed: still waiting
        status = cluster.status()
        assert cluster.waiting() is not None and status["currentStep"] == 1, status
        assert cluster.weights() == {"1": 80, "2": 20}

        asked = time.monotonic()
        client.set_model_version_tag(name, "2", "validation_status", "approved")
        wait_for("the first approval seen", lambda: cluster.events("Approved"), bound, 0.1)
        first = time.monotonic() - asked
        assert "validation_status=approved" in cluster.events("Approved")[0]
        wait_for("v2 at 50 %", lambda: cluster.weights() == {"1": 50, "2": 50}, 60, 0.2)
        status = wait_for("v2 waiting for the second approval", cluster.waiting, 60, 0.2)
        assert status["currentStep"] == 3 and "approved_by (any value)" in status["message"], status
        time.sleep(2)
        assert cluster.waiting() is not None and cluster.weights() == {"1": 50, "2": 50}

        asked = time.monotonic()
        client.set_model_version_tag(name, "2", "approved_by", "alice")
        wait_for("v2 promoted", lambda: cluster.status().get("stableVersion") == "2", bound + 10, 0.2)
        second = time.monotonic() - asked
        assert any("approved by alice" in m for m in cluster.events("Approved")), cluster.events("Approved")
        wait_for("v2 serving all traffic", lambda: cluster.status().get("phase") == "Succeeded", 60, 0.2)
        assert cluster.weights() == {"2": 100}
        print(f"\n{mode}: tag set -> Approved event {first:.1f}s; tag set -> v2 stable {second:.1f}s")
    finally:
        cluster.delete()
        if hook is not None:
            client.delete_webhook(hook.webhook_id)
