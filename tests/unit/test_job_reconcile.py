"""TrainingRun passes with fake clients: Job observation, one step per pass, idempotent restarts, MLflow outages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from slipway.clients.kube import NotOwned, owned_by
from slipway.clients.mlflow_runs import MlflowUnavailable, Registered, RunOutcome, RunRef
from slipway.reconcilers.trainingrun import TrainingRunReconciler, exit_code_note, observe_job
from slipway.tenancy import Tenancy

UID = "5a1c2d3e-0000-4000-8000-000000000007"


def job(*conds: tuple[str, str, str], active: int = 0, owner: str = UID) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits", "ownerReferences": [{"uid": owner}]},
        "status": {
            "startTime": "2026-01-01T10:00:00Z",
            "active": active,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": "2026-01-01T10:01:00Z"}
                for t, r, m in conds
            ],
        },
    }


@pytest.mark.parametrize(
    ("j", "phase", "reason"),
    [
        (job(), "pending", "Pending"),
        (job(active=1), "running", "Running"),
        (job(("SuccessCriteriaMet", "SuccessPolicy", ""), active=1), "succeeded", "SuccessCriteriaMet"),
        (job(("Complete", "", "")), "succeeded", "Complete"),
        (job(("FailureTarget", "PodFailurePolicy", "exit 2"), active=1), "failed", "PodFailurePolicy"),
        (job(("Failed", "DeadlineExceeded", "too slow")), "failed", "DeadlineExceeded"),
    ],
)
def test_observe_job(j, phase, reason):
    state = observe_job(j)
    assert (state.phase, state.reason) == (phase, reason)


def test_exit_code_note_names_the_last_failure():
    def pod(name: str, code: int, at: str) -> dict[str, Any]:
        term = {"exitCode": code, "finishedAt": at}
        return {
            "metadata": {"name": name},
            "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": term}}]},
        }

    pods = [
        pod("a", 3, "2026-01-01T10:00:00Z"),
        pod("b", 4, "2026-01-01T10:00:09Z"),
        pod("c", 0, "2026-01-01T10:00:10Z"),
    ]
    assert exit_code_note(pods) == " (exit code 4 in pod b)"
    assert exit_code_note([]) == ""


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.applied: list[dict[str, Any]] = []

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(manifest)
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = manifest
        return manifest

    def list(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []

    def check_owned(self, manifests: list[dict[str, Any]], uid: str | None) -> None:
        for m in manifests:
            live = self.objects.get((m["kind"], m["metadata"]["name"]))
            if live is not None and not owned_by(live, uid):
                raise NotOwned(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"])


class FakeRuns:
    def __init__(self, metrics: dict[str, float] | None = None) -> None:
        self.metrics = metrics or {"accuracy": 0.97, "loss": 0.1}
        self.status = "FINISHED"
        self.runs = 0
        self.down = False
        self.calls: list[tuple[str, ...]] = []

    async def ensure_run(self, experiment: str, uid: str, run_name: str, tags: dict[str, str]) -> RunRef:
        if self.down:
            raise MlflowUnavailable("connection refused")
        self.runs += 1
        return RunRef("r1", "7", created=True)

    async def outcome(self, run_id: str) -> RunOutcome:
        return RunOutcome(run_id, self.status, self.metrics)

    async def end_run(self, run_id: str, status: str) -> None:
        self.calls.append(("end_run", status))

    async def register(self, model: str, run_id: str, **_: Any) -> Registered:
        self.calls.append(("register", model))
        return Registered(model, "3", "models:/m-1", created=True)

    async def set_alias(self, model: str, alias: str, version: str) -> None:
        self.calls.append(("alias", alias, version))

    async def transition_stage(self, model: str, version: str, stage: str) -> None:
        self.calls.append(("stage", stage, version))


def body(status: dict[str, Any] | None = None, **register: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"framework": "pytorch", "entrypoint": "digits_cnn"}
    if register:
        spec["register"] = register
    return {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "digits", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": spec,
        "status": status or {},
    }


def run_pass(rec: TrainingRunReconciler, b: dict[str, Any], jobs: list[dict[str, Any]] | None = None) -> Any:
    return asyncio.run(rec.reconcile(b, jobs or []))


def reconciler(runs: FakeRuns, kube: FakeKube | None = None) -> TrainingRunReconciler:
    return TrainingRunReconciler(kube or FakeKube(), runs, "http://mlflow:5000")  # type: ignore[arg-type]


def test_the_run_is_recorded_before_the_job_is_created():
    kube, runs = FakeKube(), FakeRuns()
    rec = reconciler(runs, kube)
    first = run_pass(rec, body())
    assert first.status["mlflowRunId"] == "r1" and first.status["phase"] == "Pending"
    assert kube.applied == [] and [e.reason for e in first.events] == ["RunCreated"]
    second = run_pass(rec, body(first.status))
    assert [m["kind"] for m in kube.applied] == ["Job"]
    assert second.status["jobName"] == "digits" and [e.reason for e in second.events] == ["JobCreated"]
    env = {e["name"]: e.get("value") for e in kube.applied[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_RUN_ID"] == "r1"


def test_a_job_created_by_a_pass_killed_before_its_status_write_is_recorded_with_its_event():
    """Killed between the Job's apply and the status write: the next operator records the Job and says so once."""
    kube, runs = FakeKube(), FakeRuns()
    rec = reconciler(runs, kube)
    first = run_pass(rec, body())
    run_pass(rec, body(first.status))  # the Job is applied; this pass's status and event are lost
    after = run_pass(rec, body(first.status), [job()])  # the watch sees it, no pod started yet
    assert len(kube.applied) == 1, "the Job is not applied again"
    assert after.status["jobName"] == "digits" and after.status["phase"] == "Pending"
    assert [e.reason for e in after.events] == ["JobCreated"] and "created before a restart" in after.events[0].message
    again = run_pass(rec, body(after.status), [job()])
    assert again.events == [], "recorded once"


def test_a_service_of_the_jobs_name_made_by_someone_else_is_not_adopted():
    """Several workers need a headless Service named like the Job: someone else's is named, nothing applied."""
    kube, runs = FakeKube(), FakeRuns()
    kube.objects[("Service", "digits")] = {"kind": "Service", "metadata": {"name": "digits"}}
    b = body({"mlflowRunId": "r1", "phase": "Pending"})
    b["spec"]["workers"] = 2
    out = run_pass(reconciler(runs, kube), b)
    assert kube.applied == [], "nothing applied while a child is someone else's"
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ChildNotOwned" and "Service digits" in ready["message"]
    assert "jobName" not in out.status


def test_success_registers_sets_alias_and_stage():
    runs = FakeRuns()
    b = body(
        {"mlflowRunId": "r1", "jobName": "digits", "phase": "Running"},
        model="Digits_CNN",
        gates=[{"metric": "accuracy", "min": 0.95}],
        alias="candidate",
        stage="Staging",
    )
    out = run_pass(reconciler(runs), b, [job(("Complete", "", ""))])
    assert out.status["phase"] == "Succeeded"
    assert out.status["modelVersion"] == "3" and out.status["modelVersionRef"] == "digits-cnn-v3"
    assert runs.calls == [("register", "Digits_CNN"), ("alias", "candidate", "3"), ("stage", "Staging", "3")]
    assert [e.reason for e in out.events] == ["Trained", "Registered"]


def test_gate_failure_rejects_and_registers_nothing():
    runs = FakeRuns({"accuracy": 0.5})
    b = body({"mlflowRunId": "r1", "jobName": "digits"}, model="m", gates=[{"metric": "accuracy", "min": 0.9}])
    out = run_pass(reconciler(runs), b, [job(("Complete", "", ""))])
    assert out.status["phase"] == "Rejected" and "accuracy=0.5 < min 0.9" in out.status["message"]
    assert runs.calls == []


def test_an_open_run_is_ended_with_the_jobs_outcome():
    runs = FakeRuns()
    runs.status = "RUNNING"
    failed = run_pass(
        reconciler(runs),
        body({"mlflowRunId": "r1", "jobName": "digits"}),
        [job(("Failed", "BackoffLimitExceeded", "x"))],
    )
    assert failed.status["phase"] == "Failed" and "BackoffLimitExceeded" in failed.status["message"]
    assert runs.calls == [("end_run", "FAILED")]


def test_a_deleted_job_fails_the_run_and_a_foreign_job_is_waited_for():
    runs = FakeRuns()
    gone = run_pass(reconciler(runs), body({"mlflowRunId": "r1", "jobName": "digits", "phase": "Running"}))
    assert gone.status["phase"] == "Failed" and gone.status["conditions"][-1]["reason"] == "JobDeleted"
    kube = FakeKube()
    out = run_pass(reconciler(runs, kube), body({"mlflowRunId": "r1"}), [job(owner="someone-else")])
    assert kube.applied == [] and out.status["conditions"][0]["reason"] == "JobConflict"


def test_mlflow_outage_keeps_the_phase_and_warns_once():
    runs = FakeRuns()
    runs.down = True
    rec = reconciler(runs)
    first = run_pass(rec, body())
    assert first.status["phase"] == "Pending" and "mlflowRunId" not in first.status
    assert [e.reason for e in first.events] == ["MlflowUnavailable"]
    again = run_pass(rec, body(first.status))
    assert again.events == []


def test_terminal_runs_are_left_alone():
    status = {"phase": "Succeeded", "mlflowRunId": "r1"}
    out = run_pass(reconciler(FakeRuns()), body(status))
    assert out.status == status and out.events == []


def test_a_run_outside_the_tenancy_policy_is_forbidden_before_mlflow_is_touched():
    policy = Tenancy.parse(json.dumps([{"namespaces": ["ml"], "models": ["ml.*"], "experiments": ["ml"]}]))
    kube, runs = FakeKube(), FakeRuns()
    rec = TrainingRunReconciler(kube, runs, "http://mlflow:5000", tenancy=policy)  # type: ignore[arg-type]
    out = run_pass(rec, body(model="other-team.digits"))
    assert out.status["phase"] == "Failed" and runs.runs == 0 and kube.applied == []
    invalid = next(c for c in out.status["conditions"] if c["type"] == "InvalidSpec")
    assert invalid["reason"] == "Forbidden" and "spec.register.model" in invalid["message"]
    assert [e.reason for e in out.events] == ["Forbidden"]
    assert run_pass(rec, body(model="ml.digits")).status["mlflowRunId"] == "r1"
