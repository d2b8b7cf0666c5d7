"""TrainingRun on the real test bed: the operator as a subprocess, the real Job controller, real training, real MLflow.

The Job's pod runs for real: the test bed's local kubelet (``hack/local_kubelet.py``) runs the
pod's command — ``python -m slipway_training.digits_cnn`` with the env the Job carries — as a
local process and reports its exit code, and kube-controller-manager's Job controller completes
or fails the Job from that. The operator then reads the run from the test bed's MLflow server,
gates it and registers it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubectl_scenario import forbid
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from operator_fixture import StartOperator, start_operator
from operator_process import OperatorProcess, wait_until

from slipway.api.trainingrun import TrainingRun
from slipway.builders.job import RunTarget, build_children
from slipway.builders.names import sanitise_model_name
from slipway_training.launch import resolve_env

pytestmark = pytest.mark.integration

__all__ = ["start_operator"]  # the fixture, imported for pytest

TERMINAL = ("Succeeded", "Failed", "Rejected")
TRAIN_TIMEOUT = 480  # two shared cores: importing torch and mlflow alone can take half a minute under load


@dataclass
class Trainer:
    """The operator of the test's namespace, which a test may kill and start again."""

    start: StartOperator
    namespace: str
    op: OperatorProcess

    def restart(self) -> None:
        """SIGKILL (no cleanup, no last status write), then a new operator."""
        self.op.kill()
        self.op = self.start(self.namespace)


@pytest.fixture
def trainer(start_operator: StartOperator, namespace: str, kubectl) -> Iterator[Trainer]:
    t = Trainer(start_operator, namespace, start_operator(namespace))
    yield t
    for line in _events(kubectl):
        print(line)
    # the runs go (their Jobs by owner references) before the next test
    kubectl("delete", "trainingruns", "--all", "--timeout=60s", check=False)


@pytest.fixture
def mlflow(mlflow_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)


def suffix() -> str:
    return uuid.uuid4().hex[:8]


def apply_run(kubectl, name: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "ml.slipway.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name}, "spec": spec}
    kubectl("apply", "-f", "-", input=json.dumps(body))
    return get(kubectl, "trainingrun", name)


def get(kubectl, *args: str) -> dict[str, Any]:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)  # type: ignore[no-any-return]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_until(predicate, timeout, what, interval=0.5)


def finished(kubectl, name: str, timeout: float = TRAIN_TIMEOUT) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        st = get(kubectl, "trainingrun", name).get("status") or {}
        return st if st.get("phase") in TERMINAL else None

    return wait_for(status, timeout, f"TrainingRun {name} to finish")  # type: ignore[no-any-return]


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def _events(kubectl) -> list[str]:
    out = kubectl("get", "events", "--sort-by=.metadata.creationTimestamp", "-o", "json", check=False)
    if out.returncode != 0:
        return []
    items = json.loads(out.stdout)["items"]
    return [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']} {e['reason']}: {e['message']}" for e in items]


def reasons(kubectl, name: str) -> list[str]:
    items = json.loads(kubectl("get", "events", "-o", "json").stdout)["items"]
    return [
        e["reason"]
        for e in items
        if (e["involvedObject"]["kind"], e["involvedObject"]["name"]) == ("TrainingRun", name)
    ]


def test_digits_cnn_trains_in_the_job_passes_its_gates_and_is_registered(trainer, kubectl, mlflow, capsys):
    model = f"digits-cnn-{suffix()}"
    experiment = f"slipway-it-{suffix()}"
    created = apply_run(
        kubectl,
        "digits",
        framework="pytorch",
        entrypoint="digits_cnn",
        params={"epochs": "3"},
        experiment=experiment,
        deadlineSeconds=900,
        register={
            "model": model,
            "gates": [{"metric": "accuracy", "min": 0.9}, {"metric": "loss", "max": 1.0}],
            "alias": "candidate",
            "stage": "Staging",
            "tags": {"team": "vision"},
        },
    )
    uid = created["metadata"]["uid"]
    run_id = wait_for(
        lambda: (get(kubectl, "trainingrun", "digits").get("status") or {}).get("mlflowRunId"), 60, "the MLflow run"
    )
    trainer.restart()  # killed right after recording the run: the new operator carries on from status

    status = finished(kubectl, "digits")
    assert status["phase"] == "Succeeded", status
    assert status["mlflowRunId"] == run_id
    runs = mlflow.search_runs([status["experimentId"]], filter_string=f"tags.`slipway.trainingrun.uid` = '{uid}'")
    assert [r.info.run_id for r in runs] == [run_id], "one MLflow run per TrainingRun, even across a restart"

    job = get(kubectl, "job", "digits")
    assert conditions(job["status"]).get("Complete", ("", ""))[0] == "True"
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "slipway_training.digits_cnn"]
    env = resolve_env(container["env"])
    assert env["MLFLOW_RUN_ID"] == run_id and env["MLFLOW_EXPERIMENT_NAME"] == experiment
    assert env["SLIPWAY_PARAM_EPOCHS"] == "3"
    (pod,) = get(kubectl, "pods", "-l", "ml.slipway.dev/trainingrun=digits")["items"]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    assert status["metrics"]["accuracy"] >= 0.9
    assert status["headlineMetric"].startswith("accuracy=")
    assert [(g["metric"], g["passed"]) for g in status["gates"]] == [("accuracy", True), ("loss", True)]
    version = status["modelVersion"]
    assert status["modelVersionRef"] == f"{sanitise_model_name(model)}-v{version}"
    assert conditions(status) == {
        "Ready": ("True", "Succeeded"),
        "Trained": ("True", "Trained"),
        "Registered": ("True", "Registered"),
    }
    expected = {"RunCreated", "JobCreated", "Trained", "Registered"}
    wait_for(lambda: expected <= set(reasons(kubectl, "digits")), 30, f"events {expected}")  # posted after status

    by_alias = mlflow.get_model_version_by_alias(model, "candidate")
    assert by_alias.version == version and by_alias.run_id == run_id
    mv = mlflow.get_model_version(model, version)
    assert mv.current_stage == "Staging"
    assert mv.tags["team"] == "vision" and mv.tags["slipway.trainingrun"].endswith("/digits")
    assert mv.source.startswith("models:/m-")
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    mirror = wait_for(  # the registry sync mirrors the new version under the name status points at
        lambda: kubectl("get", "modelversion", status["modelVersionRef"], "-o", "json", check=False).stdout,
        90,
        f"ModelVersion {status['modelVersionRef']}",
    )
    assert json.loads(mirror)["spec"] == {"model": model, "version": version}

    start, end = (time.strptime(status[k], "%Y-%m-%dT%H:%M:%SZ") for k in ("startTime", "completionTime"))
    with capsys.disabled():
        print(f"\n[digits_cnn] Job ran {time.mktime(end) - time.mktime(start):.0f}s; {status['message']}")


def test_gate_that_cannot_be_met_rejects_the_run_and_registers_nothing(trainer, kubectl, mlflow):
    model = f"digits-gated-{suffix()}"
    log_metric = (
        "import os; from mlflow import MlflowClient; "
        "MlflowClient().log_metric(os.environ['MLFLOW_RUN_ID'], 'accuracy', 0.42)"
    )
    apply_run(
        kubectl,
        "gated",
        framework="custom",
        command=["python", "-c", log_metric],
        experiment=f"slipway-it-{suffix()}",
        register={"model": model, "gates": [{"metric": "accuracy", "min": 0.99}], "alias": "candidate"},
    )
    status = finished(kubectl, "gated")
    assert status["phase"] == "Rejected", status
    assert "accuracy=0.42 < min 0.99" in status["message"]
    assert status["gates"] == [{"metric": "accuracy", "value": 0.42, "passed": False}]
    assert "modelVersion" not in status
    assert conditions(status)["Registered"] == ("False", "GateFailed")
    wait_for(lambda: "GateFailed" in reasons(kubectl, "gated"), 30, "the GateFailed event")
    with pytest.raises(MlflowException):
        mlflow.get_registered_model(model)
    # the command logged but never ended its run: the operator ended it when the Job completed
    assert mlflow.get_run(status["mlflowRunId"]).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("code", "reason"),
    [(3, "BackoffLimitExceeded"), (42, "PodFailurePolicy")],
    ids=["retried-then-failed", "permanent-exit-code"],
)
def test_failing_command_fails_the_run_with_the_jobs_reason(trainer, kubectl, mlflow, code, reason):
    apply_run(
        kubectl,
        "broken",
        framework="custom",
        command=["python", "-c", f"import sys; sys.exit({code})"],
        backoffLimit=1,
        experiment=f"slipway-it-{suffix()}",
        register={"model": f"never-{suffix()}"},
    )
    status = finished(kubectl, "broken", timeout=180)
    assert status["phase"] == "Failed", status
    assert reason in status["message"] and f"exit code {code}" in status["message"], status["message"]
    assert conditions(status)["Trained"] == ("False", reason)
    assert conditions(status)["Registered"] == ("False", "JobFailed")
    wait_for(lambda: "JobFailed" in reasons(kubectl, "broken"), 30, "the JobFailed event")
    pods = get(kubectl, "pods", "-l", "ml.slipway.dev/trainingrun=broken")["items"]
    # exit 3 is retried once (backoffLimit 1); exit 42 fails the Job at once (podFailurePolicy FailJob)
    assert len(pods) == (2 if code == 3 else 1)
    assert mlflow.get_run(status["mlflowRunId"]).info.status == "FAILED"


def test_distributed_torchrun_trains_across_two_local_worker_pods(trainer, kubectl, mlflow):
    model = f"digits-ddp-{suffix()}"
    apply_run(
        kubectl,
        "ddp",
        framework="pytorch",
        entrypoint="digits_cnn",
        workers=2,
        params={"epochs": "3"},
        experiment=f"slipway-it-{suffix()}",
        register={"model": model, "gates": [{"metric": "accuracy", "min": 0.9}], "alias": "candidate"},
    )
    status = finished(kubectl, "ddp")
    assert status["phase"] == "Succeeded", status
    job = get(kubectl, "job", "ddp")
    assert job["spec"]["completionMode"] == "Indexed" and job["status"]["succeeded"] == 2
    svc = get(kubectl, "service", "ddp")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert mlflow.get_run(status["mlflowRunId"]).data.params["world_size"] == "2"
    assert mlflow.get_model_version_by_alias(model, "candidate").version == status["modelVersion"]


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow"])
def test_distributed_job_is_accepted_by_the_real_api_server(kubectl, namespace, framework):
    tr = TrainingRun.model_validate(
        {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": "dist", "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {
                "framework": framework,
                "entrypoint": "digits_cnn" if framework == "pytorch" else "digits_keras",
                "workers": 3,
                "resources": {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": 1}},
            },
        }
    )
    service, job = build_children(tr, RunTarget("http://mlflow:5000", "r" * 32, "digits"))
    for manifest in (service, job):
        out = kubectl("apply", "--server-side", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(manifest))
        stored = json.loads(out.stdout)
        assert stored["kind"] == manifest["kind"]
    stored_job = stored
    assert stored_job["spec"]["completionMode"] == "Indexed"
    assert stored_job["spec"]["successPolicy"]["rules"] == [{"succeededIndexes": "0", "succeededCount": 1}]
    assert stored_job["spec"]["backoffLimitPerIndex"] == 0
    (container,) = stored_job["spec"]["template"]["spec"]["containers"]
    for index in range(3):
        env = resolve_env(container["env"], index)
        if framework == "pytorch":
            assert env["PET_NODE_RANK"] == str(index) and env["PET_MASTER_ADDR"] == "dist-0.dist"
        else:
            assert json.loads(env["TF_CONFIG"])["task"] == {"type": "worker", "index": index}


def test_a_job_the_namespace_quota_refuses_waits_says_why_and_starts_once_allowed(trainer, kubectl, mlflow):
    forbid(kubectl, "no-jobs", "count/jobs.batch")
    apply_run(kubectl, "quota", framework="custom", command=["python", "-c", "pass"], experiment=f"it-{suffix()}")

    def refused() -> dict[str, Any] | None:
        st = get(kubectl, "trainingrun", "quota").get("status") or {}
        return st if conditions(st).get("Ready") == ("False", "ReconcileFailed") else None

    status = wait_for(refused, 60, "the Job refused")
    print(f"\n{status['message']}")
    assert status["phase"] == "Pending" and "exceeded quota: no-jobs" in status["message"], status
    assert status.get("mlflowRunId"), "the MLflow run was created before the Job"
    wait_for(lambda: "ReconcileFailed" in reasons(kubectl, "quota"), 30, "the ReconcileFailed event")
    time.sleep(5)  # passes every 2 s keep failing alike
    assert reasons(kubectl, "quota").count("ReconcileFailed") == 1, "one event, not one per pass"

    kubectl("delete", "resourcequota", "no-jobs")
    status = finished(kubectl, "quota", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert mlflow.get_run(status["mlflowRunId"]).info.status == "FINISHED"
