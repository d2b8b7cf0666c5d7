"""Promotion requirements on the real test bed: MLflow's registry, the operator, the API server.

A ModelDeployment follows the alias ``champion`` and requires the tag
``validation_status=approved`` and a run metric. The test registers two versions as a data
scientist would and moves the alias with the MLflow client: v1 (approved) is served; the alias
moves to v2, which lacks the tag, and v2 is not rolled out — stable keeps all traffic, no
InferenceService is made for v2, the RequirementsMet condition and a RequirementsNotMet event
name the tag. Then the tag is set on v2 with the MLflow client and the rollout starts by itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kube_objects import PredictedModelDeployment, wait_for
from mlflow_models import log_iris_model, two_versions
from operator_fixture import StartOperator, start_operator

pytestmark = pytest.mark.integration
__all__ = ["start_operator"]  # a fixture, imported for pytest

MD = "gated"
TAG, APPROVED = "validation_status", "approved"


@pytest.fixture(scope="module")
def logged_model(mlflow_uri: str) -> str:
    """One small scikit-learn model logged with an accuracy metric, to register versions from."""
    return log_iris_model(mlflow_uri, "slipway-requirements", accuracy=True)


class Cluster(PredictedModelDeployment):
    def __init__(self, kube_api: Any, namespace: str) -> None:
        super().__init__(kube_api, namespace, MD)

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status().get("conditions") or [] if c.get("type") == type_), None)

    def deploy(self, model: str) -> None:
        self.create(
            {
                "model": {"name": model, "track": {"alias": "champion"}},
                "serving": {"runtime": "kserve-mlserver", "modelFormat": "mlflow"},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]}},
                "gateway": {"parentRefs": [{"name": "ml-gateway"}]},
                "requirements": {
                    "metrics": [{"metric": "accuracy", "min": 0.8}],
                    "tags": [{"key": TAG, "value": APPROVED}],
                },
            }
        )


@pytest.fixture
def registry(mlflow_uri: str, logged_model: str) -> Iterator[tuple[Any, str]]:
    with two_versions(mlflow_uri, logged_model, "gated", {TAG: APPROVED}) as registered:
        yield registered


def test_a_version_missing_a_tag_waits_until_the_tag_is_set(
    start_operator: StartOperator, namespace: str, kube_api: Any, registry: tuple[Any, str]
):
    client, name = registry
    cluster = Cluster(kube_api, namespace)
    # Every poll re-reads the versions, so a tag change shows within a second (no webhook here).
    start_operator(namespace, poll_seconds=1.0, env={"SLIPWAY_MLFLOW_RESYNC_SECONDS": "0"})
    cluster.predictor("1")
    cluster.predictor("2")
    cluster.deploy(name)
    try:
        wait_for("v1 serving", lambda: cluster.status().get("phase") == "Succeeded", 120, 0.2)
        assert cluster.status()["stableVersion"] == "1"
        met = cluster.condition("RequirementsMet")
        assert met is not None and met["status"] == "True", met

        client.set_registered_model_alias(name, "champion", "2")
        cond = wait_for(
            "RequirementsMet False for v2",
            lambda: (c := cluster.condition("RequirementsMet")) and c["status"] == "False" and c,
            60,
            0.2,
        )
        assert cond["reason"] == "RequirementNotMet"
        assert "version 2 is not rolled out" in cond["message"]
        assert "tag validation_status is missing (want approved)" in cond["message"]
        time.sleep(3)  # several passes: still nothing rolls out
        status = cluster.status()
        assert status["trackedVersion"] == "2" and status["stableVersion"] == "1"
        assert status.get("canaryVersion") is None and status["phase"] == "Succeeded"
        assert cluster.weights() == {"1": 100}
        assert cluster.isvc_versions() == {"1"}
        events = [e for e in cluster.events() if e["reason"] == "RequirementsNotMet"]
        assert len(events) == 1 and events[0]["type"] == "Warning" and TAG in events[0]["message"]

        client.set_model_version_tag(name, "2", TAG, APPROVED)
        wait_for("v2's rollout started", lambda: cluster.status().get("canaryVersion") == "2", 60, 0.2)
        wait_for("v2 at 50 %", lambda: cluster.weights() == {"1": 50, "2": 50}, 60, 0.2)
        met = cluster.condition("RequirementsMet")
        assert met is not None and met["status"] == "True" and met["reason"] == "RequirementsMet"
        assert "2" in cluster.isvc_versions()
        assert any(e["reason"] == "RequirementsMet" for e in cluster.events())
    finally:
        cluster.delete()
